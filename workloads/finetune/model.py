"""The fine-tuning workload's model: a transformers GPT-NeoX causal LM, loaded or built, its trainable
part chosen and held in float32, wrapped for the shared loop (``workloads/loop.py``).

Precision: the frozen part is held in the training precision (float16 for ``fp16``, bfloat16 for
``bf16``: half the memory of a float32 copy, and what autocast would cast it to anyway), the
trainable part in float32, so AdamW's state is float32 and GradScaler unscales float32 gradients.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from orchestrator.errors import UsageError
from orchestrator.paths import RunPaths
from workloads.finetune import artifacts

HOLD_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
BEST_MODEL = "best_model"


def base_model_path(spec, root=None) -> str:
    """Where ``from_pretrained`` finds the base model (a directory or a hub id); a run's
    ``best_model/``, which must exist: the run it names has completed."""
    kind = spec.base_kind
    if kind == "run":
        folder, _, label = spec.base_model[len("run:"):].partition("/")
        path = RunPaths.of(folder, label, root).run_dir / BEST_MODEL
        if not (path / "config.json").exists():
            raise UsageError(f"base_model {spec.base_model!r}: {path} holds no model; has that experiment "
                             f"completed (submit runs it first)?")
        return str(path)
    if kind == "directory":
        path = Path(spec.base_model).expanduser()
        if not (path / "config.json").exists():
            raise UsageError(f"base_model {spec.base_model!r} is not a save_pretrained directory (no config.json)")
        return str(path)
    return spec.base_model


def new_config(spec, tokenizer):
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=spec.vocab_size, hidden_size=spec.hidden_dim, num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads, intermediate_size=spec.intermediate_dim, rotary_pct=spec.rotary_pct,
        max_position_embeddings=spec.seq_length + 1, use_parallel_residual=True,
        tie_word_embeddings=spec.tie_embeddings, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id)


def load_language_model(spec, tokenizer, root=None):
    """The base model as the spec describes it, or a UsageError saying how it differs."""
    from transformers import AutoModelForCausalLM

    hold = HOLD_DTYPES[spec.precision]
    if spec.base_kind == "scratch":
        torch.manual_seed(spec.seed)
        lm = AutoModelForCausalLM.from_config(new_config(spec, tokenizer), attn_implementation=spec.attn_implementation)
    else:
        lm = AutoModelForCausalLM.from_pretrained(base_model_path(spec, root), dtype=hold,
                                                  attn_implementation=spec.attn_implementation)
    config = lm.config
    found = {"hidden_dim": config.hidden_size, "num_layers": config.num_hidden_layers,
             "num_heads": config.num_attention_heads, "intermediate_dim": config.intermediate_size,
             "vocab_size": config.vocab_size, "tie_embeddings": bool(config.tie_word_embeddings)}
    wrong = {k: (getattr(spec, k), v) for k, v in found.items() if getattr(spec, k) != v}
    if config.model_type != "gpt_neox":
        raise UsageError(f"base_model {spec.base_model!r} is a {config.model_type!r} model; finetune trains GPT-NeoX")
    if wrong:
        raise UsageError(f"base_model {spec.base_model!r} does not match the spec: "
                         + ", ".join(f"{k}={spec_value} but the model has {value}"
                                     for k, (spec_value, value) in wrong.items()))
    return lm


def trainable_names(spec, lm) -> list[str]:
    """The parameters the spec trains: the last layers, and the final norm and head by flag."""
    if spec.train_last_n_layers is None:
        return [name for name, _ in lm.named_parameters()]
    first = spec.num_layers - spec.train_last_n_layers
    layers = tuple(f"gpt_neox.layers.{i}." for i in range(first, spec.num_layers))
    names = [name for name, _ in lm.named_parameters() if name.startswith(layers)]
    if spec.train_final_norm:
        names += [name for name, _ in lm.named_parameters() if name.startswith("gpt_neox.final_layer_norm.")]
    if spec.train_head:
        head = lm.get_output_embeddings().weight
        names += [name for name, p in lm.named_parameters() if p is head]
    return names


class FinetuneModel(nn.Module):
    """The loop's model: ``forward(input_ids, attention_mask, labels)`` returns the mean token loss;
    ``param_groups()`` holds the trainable parameters; the hooks write the demo's artifacts."""

    def __init__(self, spec, tokenizer, root=None):
        super().__init__()
        self.spec, self.tokenizer = spec, tokenizer
        self.lm = load_language_model(spec, tokenizer, root)
        trained = set(trainable_names(spec, self.lm))
        hold = HOLD_DTYPES[spec.precision]
        for name, p in self.lm.named_parameters():
            p.requires_grad_(name in trained)
            p.data = p.data.to(torch.float32 if name in trained else hold)
        count = sum(p.numel() for p in self.lm.parameters() if p.requires_grad)
        if count != spec.trainable_params:
            raise RuntimeError(f"{count} trainable parameters, but the spec counts {spec.trainable_params}")
        if spec.gradient_checkpointing:
            self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.lm.config.use_cache = False
        self.trainable_count = count
        self._history: list[dict] = []
        self._best: float | None = None

    def forward(self, input_ids, attention_mask, labels):
        return self.lm(input_ids=input_ids, attention_mask=attention_mask, labels=labels, use_cache=False).loss

    def param_groups(self) -> list[dict]:
        """AdamW groups over the trainable parameters: no decay on biases and norms."""
        decay, plain = [], []
        for p in self.lm.parameters():
            if p.requires_grad:
                (decay if p.dim() >= 2 else plain).append(p)
        return [{"name": "decay", "params": decay, "weight_decay": self.spec.weight_decay, "lr_scale": 1.0},
                {"name": "no_decay", "params": plain, "weight_decay": 0.0, "lr_scale": 1.0}]

    # ----------------------------------------------------------- artifact hooks
    def _demo(self, paths, stage: str) -> None:
        device = next(self.lm.parameters()).device
        hold = HOLD_DTYPES[self.spec.precision]  # mixed float16/float32 weights: generate as training runs
        with torch.autocast(device.type, dtype=hold, enabled=hold != torch.float32):
            generations = artifacts.demo_generations(self.lm, self.tokenizer, list(self.demo_prompts), device=device)
        artifacts.write_demo_outputs(paths.run_dir, stage, generations)

    def on_start(self, paths, start_step: int, before: dict | None) -> None:
        print(f"{self.spec.run_name}: {self.trainable_count:,} of {self.spec.total_params:,} parameters "
              f"trainable ({self.spec.precision})", flush=True)
        history = paths.run_dir / "training_history.json"
        if start_step and history.exists():  # resumed: the entries up to the checkpoint
            import json

            self._history = [e for e in json.loads(history.read_text()) if e["step"] <= start_step]
            self._best = min((e["val_loss"] for e in self._history if e["step"]), default=None)
        if before is not None:
            self._history = [{"step": 0, "epoch": 0.0, "train_loss": None, "val_loss": before["val_loss"],
                              "learning_rate": None, "grad_norm": None, "samples_per_s": None}]
            artifacts.write_history(paths.run_dir, self._history)
        if start_step == 0 or not (paths.run_dir / "demo_outputs" / "before.json").exists():
            self._demo(paths, "before")

    def on_evaluation(self, paths, step: int, row: dict) -> None:
        spec = self.spec
        entry = {"step": step, "epoch": round(step * spec.target_effective_batch_size / self.train_examples, 3),
                 "train_loss": row["loss"], "val_loss": row["val_loss"], "learning_rate": row["learning_rate"],
                 "grad_norm": row.get("grad_norm"), "samples_per_s": row.get("samples_per_s")}
        self._history.append(entry)
        artifacts.write_history(paths.run_dir, self._history)
        if self._best is None or row["val_loss"] < self._best:
            self._best = row["val_loss"]
            artifacts.save_best_model(paths.run_dir, self.lm, self.tokenizer,
                                      {"step": step, "val_loss": row["val_loss"], "epoch": entry["epoch"]})

    def on_end(self, paths, last: dict) -> None:
        self._demo(paths, "after")
        spec = self.spec
        artifacts.write_summary(paths.run_dir, {
            "spec": spec.to_dict(), "base_model": spec.base_model, "trainable_params": self.trainable_count,
            "total_params": spec.total_params, "precision": spec.precision,
            "train_examples": self.train_examples, "epochs": round(spec.optimizer_steps * spec.target_effective_batch_size
                                                                   / self.train_examples, 3),
            "best_val_loss": self._best, "final_val_loss": float(last["val_loss"]),
            "first_val_loss": self._history[0]["val_loss"] if self._history else None,
            "final_train_loss": float(last["loss"]), "steps": int(last["optimizer_step"]),
            "tokens_processed": int(last["tokens_processed"]), "elapsed_s": float(last["elapsed_s"])})

    # set by the trainer from the data: the training split's size (epochs) and prompts from its records
    train_examples = 1
    demo_prompts: tuple[str, ...] = ()
