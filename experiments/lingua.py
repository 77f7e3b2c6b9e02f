"""Lingua-style registries (issue 13): the lab's byte-level lingua runs, as specs.

Parameter counts in the comments are lingua's (258 byte tokens, untied output). Ours use
lingua's SwiGLU width (``multiple_of`` 256) and 256 byte tokens, so they are 4d smaller
(27,533,824 for 27,535,872 at d=512; orchestrator/lingua.py says why):
``python -m orchestrator show LINGUA_SCALING`` prints them.
"""

import os

from orchestrator.lingua import lingua_experim

# Where the jsonl shards live on the cluster: one folder per source (lingua's data.root_dir).
# Spec validation only looks inside it where it exists, so a path that exists only on the
# cluster is fine here; set LINGUA_DATA_ROOT to point the registries elsewhere.
LINGUA_DATA_ROOT = os.environ.get("LINGUA_DATA_ROOT", "/data/lingua")

# lingua's small config, 27.5M parameters: as the lab runs it on one A100, and on a miso node
LINGUA_SMALL = (
    lingua_experim(512, 8, 8, steps=500, data_root=LINGUA_DATA_ROOT, gpus=1, partition="sphinx",
                   label="lingua_27m_sphinx_1gpu", folder_name="lingua_small")
    + lingua_experim(512, 8, 8, steps=500, data_root=LINGUA_DATA_ROOT, gpus=8, partition="miso",
                     label="lingua_27m_miso_8gpu", folder_name="lingua_small")
)

# A size ladder on one miso node (8 H200, batch 8 per GPU: 131,072 tokens a step), every size
# at the same 25,000 steps (3.28B tokens, ~21 tokens per parameter at the largest), head size 64.
# (dim, layers, heads): lingua's parameter count
SCALING_SHAPES = {
    "27m": (512, 8, 8),      # 27.5M
    "41m": (640, 8, 10),     # 41.0M
    "85m": (768, 12, 12),    # 85.4M
    "155m": (1024, 12, 16),  # 154.7M
}
SCALING_STEPS = 25_000

LINGUA_SCALING = [
    spec
    for name, (dim, layers, heads) in SCALING_SHAPES.items()
    for spec in lingua_experim(dim, layers, heads, steps=SCALING_STEPS, data_root=LINGUA_DATA_ROOT, gpus=8,
                               partition="miso", label=f"lingua_{name}", folder_name="lingua_scaling")
]
