"""Train one LSTM spec: ``main(spec_path, **options)``; options go to ``workloads.loop.train``.

Data parallelism comes from the shared loop and entry point: ``workloads.run`` joins the
process group (env:// variables, exported from SLURM's by the task, or set by torchrun),
the loop wraps the model in DistributedDataParallel and gives each rank its own slice of
every optimizer step's samples.
"""

from __future__ import annotations

from orchestrator.spec import load_spec
from workloads.loop import train
from workloads.lstm.model import LSTMLM


def main(spec_path, **options) -> dict:
    return train(load_spec(spec_path), LSTMLM, **options)
