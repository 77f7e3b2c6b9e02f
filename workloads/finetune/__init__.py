"""The finetune workload: a pretrained causal LM (GPT-NeoX, as Pythia) trained further with only its
last layers trainable, through the shared loop.

- ``base_model``: ``"scratch"`` (a new GPT-NeoX of the spec's shape, with a byte-level BPE
  tokenizer of ``vocab_size`` trained on the training text: a pretraining run), ``"run:<folder>/
  <label>"`` (another experiment's ``best_model/``: ``submit`` runs that one first), a local
  directory in ``save_pretrained`` layout (a path starting with ``/``, ``./``, ``../`` or ``~``), or
  a Hugging Face hub id (``EleutherAI/pythia-410m``; on clusters that reach the hub or have it in
  their HF cache; nothing is downloaded here). The shape fields (``hidden_dim``, ``num_layers``,
  ``num_heads``, ``intermediate_dim``, ``vocab_size``) describe the base model: they size N, the
  plan and ``show``, and the trainer refuses a model that differs.
- Trainable part: the last ``train_last_n_layers`` transformer layers (None: every parameter, a
  pretraining run), plus the final layer norm (``train_final_norm``) and the output head
  (``train_head``); the rest is frozen, held in the training precision.
- ``precision``: ``"fp16"`` (autocast float16 and a GradScaler; the trainable parameters and
  their AdamW state in float32), ``"bf16"`` (autocast bfloat16) or ``"fp32"``.
- Data: ``dataset`` is a record corpus (``kjv``, ``shakespeare_poems``: shipped stand-ins) or a
  CSV/JSONL/parquet file or directory; each record is rendered through ``prompt_template``
  (``"Artist: {artist}\\nLyrics: {lyrics}\\n"``), tokenised with the model's tokenizer to at most
  ``seq_length + 1`` tokens, padded per batch (``workloads/finetune/data.py``).
- Budget: ``train_samples`` examples (e.g. 2 epochs x the training split); D counts the real,
  unpadded target tokens.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import string

from orchestrator.errors import UsageError, unknown
from orchestrator.spec import NON_SCIENTIFIC_FIELDS, SAFE_NAME, ExperimentSpec, make_spec, register_workload

PRECISIONS = ("fp16", "bf16", "fp32")
ATTENTION = ("sdpa", "eager", "flash_attention_2")
SCRATCH, RUN_PREFIX = "scratch", "run:"
RECORD_CORPORA = ("kjv", "shakespeare_poems")


def base_model_kind(base_model: str) -> str:
    """"scratch", "run", "directory" or "hub"."""
    if base_model == SCRATCH:
        return "scratch"
    if base_model.startswith(RUN_PREFIX):
        return "run"
    if base_model.startswith(("/", "./", "../", "~")):
        return "directory"
    return "hub"


@register_workload("finetune")
@dataclasses.dataclass(frozen=True, init=False)
class FinetuneSpec(ExperimentSpec):
    base_model: str = dataclasses.field(default=None)  # required
    num_heads: int | None = None
    intermediate_dim: int | None = None  # None: 4 x hidden_dim
    rotary_pct: float = 0.25
    tie_embeddings: bool = False  # Pythia's head is its own matrix
    vocab_size: int = 1024
    train_last_n_layers: int | None = 2
    train_final_norm: bool = False
    train_head: bool = False
    precision: str = "fp16"
    prompt_template: str = "{text}\n"
    train_samples: int = dataclasses.field(default=None)  # required: examples trained on
    learning_rate: float = 2e-4
    target_effective_batch_size: int = 64
    gradient_checkpointing: bool = False
    attn_implementation: str = "sdpa"
    dataset: str = "kjv"

    trainer = "workloads.finetune.train:main"
    omitted_fields = frozenset({"train_tokens", "tokens_per_param", "use_mup", "mup_base_width", "sources"})
    # how the activations are kept and which kernel computes attention: not what is computed
    non_scientific_fields = NON_SCIENTIFIC_FIELDS | frozenset({"gradient_checkpointing", "attn_implementation"})

    def _resolve(self) -> None:
        def put(name, value):
            object.__setattr__(self, name, value)

        self._resolve_names(put)
        for name in ("version", "hidden_dim", "seq_length", "vocab_size", "target_effective_batch_size",
                     "eval_batches", "log_interval_steps", "checkpoint_interval_steps", "train_samples"):
            if not getattr(self, name) > 0:
                raise UsageError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("num_layers", "num_heads"):
            if getattr(self, name) is None or getattr(self, name) <= 0:
                raise UsageError(f"give {name} (> 0) of the base model {self.base_model!r}, got {getattr(self, name)!r}")
        if self.hidden_dim % self.num_heads:
            raise UsageError(f"num_heads={self.num_heads} does not divide hidden_dim={self.hidden_dim}")
        if self.intermediate_dim is None:
            put("intermediate_dim", 4 * self.hidden_dim)
        if not 0 < self.rotary_pct <= 1:
            raise UsageError(f"rotary_pct must be in (0, 1], got {self.rotary_pct!r}")
        self._check_optimisation()
        self._check_base_model()
        if self.train_last_n_layers is not None and not 0 <= self.train_last_n_layers <= self.num_layers:
            raise UsageError(f"train_last_n_layers must be in [0, {self.num_layers}] (or None: all), "
                             f"got {self.train_last_n_layers!r}")
        if self.trainable_params == 0:
            raise UsageError("nothing would train: give train_last_n_layers > 0, train_final_norm or train_head")
        if self.precision not in PRECISIONS:
            raise unknown("precision", self.precision, PRECISIONS)
        self._check_attention()
        if self.fsdp != "none":
            raise UsageError(f"finetune trains with DDP (fsdp='none'); got fsdp={self.fsdp!r}")
        if self.compile:
            raise UsageError("finetune does not run under compile=True; set compile=False")
        self._check_data()
        self._resolve_schedule_and_resources(put)

    def _check_base_model(self) -> None:
        if not isinstance(self.base_model, str) or not self.base_model.strip():
            raise UsageError(f"base_model must name a model, got {self.base_model!r}")
        kind = base_model_kind(self.base_model)
        if kind == "run":
            folder, _, label = self.base_model[len(RUN_PREFIX):].partition("/")
            if not (SAFE_NAME.match(folder or "-") and SAFE_NAME.match(label or "-") and folder and label):
                raise UsageError(f"base_model {self.base_model!r}: a run is 'run:<folder>/<label>', "
                                 f"e.g. 'run:pretrain/neox_tiny'")
        if kind == "scratch" and self.train_last_n_layers is not None:
            raise UsageError("base_model='scratch' trains a new model whole: set train_last_n_layers=None "
                             f"(got {self.train_last_n_layers})")

    def _check_attention(self) -> None:
        if self.attn_implementation not in ATTENTION:
            raise unknown("attn_implementation", self.attn_implementation, ATTENTION)
        if self.attn_implementation == "flash_attention_2":
            if importlib.util.find_spec("flash_attn") is None:
                raise UsageError("attn_implementation='flash_attention_2' needs the flash-attn package, which "
                                 "is not installed here; use 'sdpa'")
            if self.precision == "fp32":
                raise UsageError("flash_attention_2 runs in fp16 or bf16, not precision='fp32'")

    def _check_data(self) -> None:
        if "/" not in self.dataset and self.dataset not in RECORD_CORPORA:
            raise unknown("dataset", self.dataset, RECORD_CORPORA + ("a path to CSV/JSONL/parquet files",))
        try:
            fields = [name for _, name, _, _ in string.Formatter().parse(self.prompt_template) if name is not None]
        except ValueError as exc:
            raise UsageError(f"prompt_template {self.prompt_template!r} is not a format string: {exc}") from None
        if not fields or any(not name.isidentifier() for name in fields):
            raise UsageError(f"prompt_template {self.prompt_template!r} must name record fields as {{field}}, "
                             f"e.g. 'Artist: {{artist}}\\nLyrics: {{lyrics}}\\n'")

    # ----------------------------------------------------------------- the base model
    @property
    def base_kind(self) -> str:
        return base_model_kind(self.base_model)

    def dependencies(self) -> tuple[str, ...]:
        """Experiments (``folder/label``) that must have completed before this one starts."""
        return (self.base_model[len(RUN_PREFIX):],) if self.base_kind == "run" else ()

    # ------------------------------------------------------------------- sizes
    def _layer_params(self) -> int:
        """Two LayerNorms (weight, bias), attention (fused qkv, dense) and MLP, all with biases."""
        d, i = self.hidden_dim, self.intermediate_dim
        return 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * i + i) + (i * d + d)

    def param_counts(self) -> tuple[int, int]:
        d, v = self.hidden_dim, self.vocab_size
        embedding = v * d + (0 if self.tie_embeddings else v * d)
        return embedding + self.num_layers * self._layer_params() + 2 * d, embedding

    @property
    def trainable_layers(self) -> int:
        return self.num_layers if self.train_last_n_layers is None else self.train_last_n_layers

    @property
    def trainable_params(self) -> int:
        """What the optimizer updates (the trainer checks the model agrees)."""
        if self.train_last_n_layers is None:
            return self.total_params
        d, v = self.hidden_dim, self.vocab_size
        head = v * d if self.train_head else 0  # tied: the embedding, trained through the head
        return self.train_last_n_layers * self._layer_params() + (2 * d if self.train_final_norm else 0) + head

    @property
    def tokens_per_step(self) -> int:
        """An upper bound: every example at ``seq_length`` predicted tokens (the CSV counts the real ones)."""
        return self.target_effective_batch_size * self.seq_length

    @property
    def optimizer_steps(self) -> int:
        return max(1, math.ceil(self.train_samples / self.target_effective_batch_size))

    def flops_per_token(self) -> float:
        """A forward of every layer (2 N and the attention scores, 4 L d T) and a backward of the
        trainable ones only (4 N_trainable, 8 L_trainable d T): frozen layers before the first
        trainable one need no backward at all."""
        d, T = self.hidden_dim, self.seq_length
        return (2.0 * self.total_params + 4.0 * self.trainable_params
                + 4 * self.num_layers * d * T + 8 * self.trainable_layers * d * T)

    def activation_bytes_per_sample(self, dtype_bytes: int) -> float:
        """Saved for backward by the trainable layers only (frozen ones keep nothing), per token
        ~ 9d + 2 MLP widths a layer (one with gradient checkpointing), plus the fp32 logits."""
        d, s, i = self.hidden_dim, self.seq_length, self.intermediate_dim
        layers = self.trainable_layers if not self.gradient_checkpointing else min(1, self.trainable_layers)
        per_layer = s * (9 * d + 2 * i) * dtype_bytes
        logits = s * self.vocab_size * (dtype_bytes + 8)
        return (layers + 1) * per_layer + logits


def gen_finetune_experim(base_model: str, label: str, folder_name: str | None = None,
                         **fields) -> list[ExperimentSpec]:
    """One fine-tuning experiment, as a one-element list like ``gen_experim``."""
    return [make_spec("finetune", base_model=base_model, label=label, folder_name=folder_name, **fields)]


__all__ = ["FinetuneSpec", "gen_finetune_experim", "base_model_kind"]
