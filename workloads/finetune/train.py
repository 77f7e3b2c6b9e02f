"""Fine-tune one spec: ``main(spec_path, **options)``; options go to ``workloads.loop.train``.

The tokenizer comes with the base model; a model built from scratch gets a byte-level BPE of
``vocab_size`` trained on the corpus's rendered text, kept in the run directory (``tokenizer/``)
so a resumed run tokenises as the first start did.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from orchestrator.paths import RunPaths
from orchestrator.spec import load_spec
from workloads.finetune import data as finetune_data
from workloads.finetune.model import FinetuneModel, base_model_path
from workloads.loop import train

TOKENIZER_DIR = "tokenizer"


def load_tokenizer(spec, root=None):
    from transformers import AutoTokenizer

    if spec.base_kind != "scratch":
        return AutoTokenizer.from_pretrained(base_model_path(spec, root))
    directory = RunPaths.of(spec.folder_name, spec.label, root).run_dir / TOKENIZER_DIR
    if not (directory / "tokenizer.json").exists():
        directory.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory.parent, prefix=".tokenizer.") as tmp:
            finetune_data.train_tokenizer(finetune_data.corpus_texts(spec), spec.vocab_size, Path(tmp) / "t")
            try:
                (Path(tmp) / "t").rename(directory)  # atomic; a rank that lost the race uses the winner's
            except OSError:
                shutil.rmtree(Path(tmp) / "t", ignore_errors=True)
    return AutoTokenizer.from_pretrained(directory)


def main(spec_path, root=None, **options) -> dict:
    spec = load_spec(spec_path)
    tokenizer = load_tokenizer(spec, root)
    loaded = {}

    def load_data(spec, cache):
        loaded["data"] = finetune_data.RecordData.for_spec(spec, tokenizer, cache)
        return loaded["data"]

    def build_model(spec):
        model = FinetuneModel(spec, tokenizer, root)
        model.train_examples = loaded["data"].n_train
        records = finetune_data.load_records(spec.dataset, options.get("data_cache"))
        model.demo_prompts = tuple(finetune_data.demo_prompts(records, spec.prompt_template))
        return model

    return train(spec, build_model, load_data=load_data, root=root, **options)
