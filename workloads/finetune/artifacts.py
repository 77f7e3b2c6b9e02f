"""What a fine-tuning run leaves in its run directory for people, beside the loop's CSV and
checkpoints: demo generations before and after, the best model in ``save_pretrained`` layout,
and the history and summary as JSON. Every file is written atomically (a temp file renamed into
place) and ``best_model/`` is swapped in whole, so a reader never sees a half-written one.

The functions take the Hugging Face model itself (a ``PreTrainedModel``), not the loop's wrapper
around it, and run on rank 0 only.

    run_dir/
      demo_outputs/before.json, after.json, comparison.md
      best_model/   config.json, model.safetensors, tokenizer files, metadata.json
      training_history.json, training_summary.json
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
from pathlib import Path

from orchestrator.paths import atomic_write_json, atomic_write_text

DEMO_DIR = "demo_outputs"
DEMO_STAGES = ("before", "after")
COMPARISON_MD = "comparison.md"
BEST_MODEL = "best_model"
METADATA_JSON = "metadata.json"
HISTORY_JSON = "training_history.json"
SUMMARY_JSON = "training_summary.json"


def demo_generations(model, tokenizer, prompts, max_new_tokens: int = 40, device="cpu") -> list[dict]:
    """Greedy completions of each prompt (``{"prompt", "completion"}``): deterministic, so the
    before and after files differ only by what training changed. One prompt at a time: no
    padding, so no question of which side to pad. The model's train/eval mode is restored."""
    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    generations = []
    try:
        with torch.no_grad():
            for prompt in prompts:
                encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(device)
                output = model.generate(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"],
                                        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                        pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id)
                completion = tokenizer.decode(output[0, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
                generations.append({"prompt": prompt, "completion": completion})
    finally:
        model.train(was_training)
    return generations


def write_demo_outputs(run_dir: Path, stage: str, generations: list[dict]) -> Path:
    """``demo_outputs/{stage}.json``; once both stages exist, also ``comparison.md``."""
    if stage not in DEMO_STAGES:
        raise ValueError(f"unknown demo stage {stage!r}; known: {', '.join(DEMO_STAGES)}")
    folder = Path(run_dir) / DEMO_DIR
    path = folder / f"{stage}.json"
    atomic_write_json(path, list(generations))
    stages = {s: folder / f"{s}.json" for s in DEMO_STAGES}
    if all(p.exists() for p in stages.values()):
        before, after = (json.loads(stages[s].read_text()) for s in DEMO_STAGES)
        atomic_write_text(folder / COMPARISON_MD, comparison_markdown(before, after))
    return path


def _fenced(text: str) -> str:
    """A fenced block longer than any backtick run in ``text``, so a completion cannot close it."""
    fence = "`" * max(3, _longest_backticks(text) + 1)
    return f"{fence}text\n{text}\n{fence}"


def _longest_backticks(text: str) -> int:
    best = run = 0
    for char in text:
        run = run + 1 if char == "`" else 0
        best = max(best, run)
    return best


def comparison_markdown(before: list[dict], after: list[dict]) -> str:
    """Prompt, completion before and after fine-tuning, prompt by prompt (matched by prompt)."""
    after_by_prompt = {g["prompt"]: g["completion"] for g in after}
    prompts = list(dict.fromkeys([g["prompt"] for g in before] + [g["prompt"] for g in after]))
    before_by_prompt = {g["prompt"]: g["completion"] for g in before}
    lines = ["# Demo generations before and after fine-tuning", "",
             "Greedy decoding; the completion follows the prompt.", ""]
    for n, prompt in enumerate(prompts, 1):
        lines += [f"## Prompt {n}", "", _fenced(prompt), ""]
        for stage, completions in (("Before", before_by_prompt), ("After", after_by_prompt)):
            completion = completions.get(prompt)
            lines += [f"**{stage}:**", "", _fenced(completion) if completion is not None else "(not generated)", ""]
    return "\n".join(lines)


def save_best_model(run_dir: Path, model, tokenizer, metadata: dict) -> Path:
    """``best_model/``: the model (safetensors) and tokenizer in ``save_pretrained`` layout and
    ``metadata.json``, built in a temp folder beside it and swapped in by two renames (the old
    one aside, the new one in), then the old one deleted. Between the renames ``best_model/``
    is briefly absent, never partial. Leftovers of an interrupted swap are removed first."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    target = run_dir / BEST_MODEL
    for stale in run_dir.glob(f".{BEST_MODEL}.*"):
        shutil.rmtree(stale, ignore_errors=True)
    token = secrets.token_hex(4)
    new, old = run_dir / f".{BEST_MODEL}.{token}.new", run_dir / f".{BEST_MODEL}.{token}.old"
    try:
        model.save_pretrained(new)
        tokenizer.save_pretrained(new)
        atomic_write_json(new / METADATA_JSON, _finite(metadata))
        _fsync_tree(new)
        if target.exists():
            os.rename(target, old)
        os.rename(new, target)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        if old.exists() and not target.exists():
            os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return target


def _fsync_tree(folder: Path) -> None:
    """The files' bytes on disk before the rename publishes them (save_pretrained does not fsync)."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _finite(value):
    """JSON has no NaN or infinity: they become null; numpy and torch scalars become numbers."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if not isinstance(value, (str, bytes, int, float, type(None))) and hasattr(value, "item"):
        try:
            value = value.item()  # a numpy or torch scalar
        except (ValueError, RuntimeError):  # an array of several: left to json's default=str
            pass
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_history(run_dir: Path, entries: list[dict]) -> Path:
    """``training_history.json``: one dict per evaluation (epoch, step, train_loss, val_loss,
    learning_rate, samples_per_s, ...), rewritten whole each time."""
    path = Path(run_dir) / HISTORY_JSON
    atomic_write_json(path, _finite(list(entries)))
    return path


def write_summary(run_dir: Path, summary: dict) -> Path:
    """``training_summary.json``: the run in one dict, written at the end."""
    path = Path(run_dir) / SUMMARY_JSON
    atomic_write_json(path, _finite(dict(summary)))
    return path
