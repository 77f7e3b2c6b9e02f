"""Train one transformer spec: ``main(spec_path, **options)``; options go to ``workloads.loop.train``."""

from __future__ import annotations

from orchestrator.spec import load_spec
from workloads.loop import train
from workloads.transformer.model import GPT


def main(spec_path, **options) -> dict:
    return train(load_spec(spec_path), GPT, **options)
