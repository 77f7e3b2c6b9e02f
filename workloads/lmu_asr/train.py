"""Train one lmu_asr spec: ``main(spec_path, **options)``; options go to ``workloads.loop.train``."""

from __future__ import annotations

from pathlib import Path

import torch.distributed as dist

from orchestrator.spec import load_spec
from workloads.lmu_asr import SPEECH_DATASET
from workloads.lmu_asr.audio import SpeechData
from workloads.lmu_asr.model import SpeechRecognizer
from workloads.loop import train


def augment_options(spec) -> dict | None:
    if not spec.spec_augment:
        return None
    return {"freq_masks": spec.freq_masks, "freq_width": spec.freq_mask_bands, "time_masks": spec.time_masks,
            "time_width_ratio": spec.time_mask_ratio}


def corpus_root(spec, cache: Path | None) -> Path:
    if spec.dataset == SPEECH_DATASET:
        from workloads.lmu_asr.speech import build_speech_corpus

        return build_speech_corpus(spec.speech_train_utterances, spec.speech_dev_utterances, cache=cache)
    return Path(spec.dataset).expanduser()


def load_data(spec, cache: Path | None = None) -> SpeechData:
    """The spec's utterances as features. With several ranks, rank 0 synthesises the corpus and
    builds the feature caches first; the others then read them."""
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    def load():
        return SpeechData.for_source(corpus_root(spec, cache), spec.train_subset, spec.val_subset, seed=spec.seed,
                                     stack=spec.frame_stack, augment=augment_options(spec),
                                     max_frames=spec.max_frames, cache=cache)

    if not distributed:
        return load()
    data = load() if dist.get_rank() == 0 else None
    dist.barrier()
    return data if data is not None else load()


def main(spec_path, **options) -> dict:
    return train(load_spec(spec_path), SpeechRecognizer, load_data=load_data, **options)
