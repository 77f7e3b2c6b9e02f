"""The transformer workload's spec: a GPT-style decoder sized from its width."""

from __future__ import annotations

import dataclasses
import math

from orchestrator.errors import UsageError, unknown
from orchestrator.spec import (MUP_LR_RULES, NON_SCIENTIFIC_FIELDS, ExperimentSpec, check_dataset,
                               register_workload)

ACTIVATIONS = ("gelu", "relu", "swiglu")
METHODS = ("regular", "graddotprod")
POSITIONS = ("learned", "rotary")
BASE_WIDTH, BASE_LAYERS = 32, 2


def default_num_layers(hidden_dim: int) -> int:
    """Depth grows with width^0.5: 2 layers at width 32, 4 at 128, 8 at 512, 23 at 4096."""
    return max(1, round(BASE_LAYERS * math.sqrt(hidden_dim / BASE_WIDTH)))


def default_num_heads(hidden_dim: int) -> int:
    """Head size hidden_dim/4 clamped to [8, 64]: 4 heads up to width 256, then width/64.

    When that does not divide the width, the next larger head count that does.
    """
    head_dim = min(64, max(8, hidden_dim // 4))
    heads = max(1, -(-hidden_dim // head_dim))
    while hidden_dim % heads:
        heads += 1
    return heads


def swiglu_hidden(hidden_dim: int) -> int:
    """8d/3 rounded up to a multiple of 8: three d x h matrices ~ the 8 d^2 of a 4d MLP."""
    return 8 * math.ceil(8 * hidden_dim / 3 / 8)


@register_workload("transformer")
@dataclasses.dataclass(frozen=True, init=False)
class TransformerSpec(ExperimentSpec):
    num_heads: int | None = None
    activation: str = "gelu"
    positional: str = "learned"
    # standard parametrisation init: N(0, init_std); None means 1/sqrt(fan_in)
    init_std: float | None = 0.02
    # muP learning-rate rule: "paper" (Tensor Programs V: lr * base/width for hidden
    # matrices) or "sqrt" (older studies: lr / sqrt(width/base) for every scaled group)
    mup_lr_rule: str = "paper"
    # the MLP's hidden width; None is the rule (swiglu_hidden(d) for swiglu, else 4d). Left as
    # None, not resolved: a spec that does not set it keeps its identity (spec.ADDED_FIELDS)
    mlp_hidden_dim: int | None = None
    # data attribution (workloads/attribution.py): "graddotprod" also logs, at every step, each
    # training sample's gradient dot product with the gradient of ``val_batch_size`` rows of
    # ``attribution_dataset`` (the data that defines "useful"), every ``dot_prod_save_interval``
    # steps to grad_dotprods/; the training itself is "regular"'s
    method: str = "regular"
    val_batch_size: int | None = None
    attribution_dataset: str | None = None
    dot_prod_save_interval: int = 10

    default_gpus = 1
    # when the log is flushed, not what it holds
    non_scientific_fields = NON_SCIENTIFIC_FIELDS | frozenset({"dot_prod_save_interval"})
    trainer = "workloads.transformer.train:main"

    def resolve_architecture(self, put) -> None:
        if self.num_layers is None:
            put("num_layers", default_num_layers(self.hidden_dim))
        if self.num_heads is None:
            put("num_heads", default_num_heads(self.hidden_dim))
        if self.num_heads <= 0 or self.hidden_dim % self.num_heads:
            raise UsageError(f"num_heads={self.num_heads} does not divide hidden_dim={self.hidden_dim}")
        if self.activation not in ACTIVATIONS:
            raise unknown("activation", self.activation, ACTIVATIONS)
        if self.positional not in POSITIONS:
            raise unknown("positional", self.positional, POSITIONS)
        if self.mup_lr_rule not in MUP_LR_RULES:
            raise unknown("mup_lr_rule", self.mup_lr_rule, MUP_LR_RULES)
        if self.mlp_hidden_dim is not None and self.mlp_hidden_dim <= 0:
            raise UsageError(f"mlp_hidden_dim must be > 0 (or None for the default width), got {self.mlp_hidden_dim!r}")
        if self.positional == "rotary" and (self.hidden_dim // self.num_heads) % 2:
            raise UsageError(f"rotary positions need an even head size, got {self.hidden_dim // self.num_heads}")
        self._check_attribution()

    def _check_attribution(self) -> None:
        """GradDotProd's fields: all given with ``method="graddotprod"`` (no defaults for the data
        that defines "useful"), none without it."""
        if self.method not in METHODS:
            raise unknown("method", self.method, METHODS)
        if self.dot_prod_save_interval <= 0:
            raise UsageError(f"dot_prod_save_interval must be > 0, got {self.dot_prod_save_interval!r}")
        if self.method == "regular":
            for name in ("val_batch_size", "attribution_dataset"):
                if getattr(self, name) is not None:
                    raise UsageError(f"{name}={getattr(self, name)!r} is for method='graddotprod'; "
                                     f"this experiment has method='regular'")
            return
        if self.attribution_dataset is None:
            raise UsageError("method='graddotprod' needs attribution_dataset: the validation data whose "
                             "gradient defines a useful sample (a built-in corpus or a directory)")
        check_dataset(self.attribution_dataset, "attribution_dataset")
        if self.val_batch_size is None or self.val_batch_size <= 0:
            raise UsageError(f"method='graddotprod' needs val_batch_size > 0 (validation rows per "
                             f"optimizer step), got {self.val_batch_size!r}")
        if self.compile:
            raise UsageError("method='graddotprod' does not run under compile=True (its hooks see "
                             "the eager modules); set compile=False")
        if self.fsdp != "none":
            raise UsageError(f"method='graddotprod' needs whole parameters on every rank: fsdp must be "
                             f"'none' (DDP), got {self.fsdp!r}")
    def _resolve_schedule_and_resources(self, put) -> None:
        super()._resolve_schedule_and_resources(put)
        if self.method == "graddotprod" and self.val_batch_size % self.gpus:
            raise UsageError(f"val_batch_size={self.val_batch_size} is not divisible by gpus={self.gpus}: "
                             f"each rank takes an equal share of the validation rows")

    @property
    def mlp_hidden(self) -> int:
        """The MLP's hidden width as built: ``mlp_hidden_dim``, or the rule when it is None."""
        if self.mlp_hidden_dim is not None:
            return self.mlp_hidden_dim
        return swiglu_hidden(self.hidden_dim) if self.activation == "swiglu" else 4 * self.hidden_dim

    def param_counts(self) -> tuple[int, int]:
        """No biases in linear layers; LayerNorm with a weight and no bias.

        Embedding parameters: the token embedding, learned positions, and the output
        head when it is not tied (vocabulary and position matrices, as in Kaplan et al.).
        """
        d, v = self.hidden_dim, self.vocab_size
        mlp = (3 if self.activation == "swiglu" else 2) * d * self.mlp_hidden
        block = 2 * d + 4 * d * d + mlp
        embedding = v * d + (self.seq_length * d if self.positional == "learned" else 0)
        embedding += 0 if self.tie_embeddings else v * d
        return embedding + self.num_layers * block + d, embedding

    def flops_per_token(self) -> int:
        """Training FLOPs per token, PaLM's convention (Chowdhery et al. 2022, appendix B):
        6 N + 12 L d T.

        6 N counts every weight's multiply-add forward and backward, with N the parameters
        *without* the position embeddings (a lookup, not a matrix product; the token
        embedding stays in, as it is the tied output head). 12 L d T counts the attention
        scores and their weighted values (forward and backward, the causal half not
        discounted), which 6 N leaves out and which matter at the small widths of a CPU
        study. The metrics CSV's MFU and ``show``'s CPU estimates both use this.
        """
        d, L, T = self.hidden_dim, self.num_layers, self.seq_length
        positions = T * d if self.positional == "learned" else 0
        return 6 * (self.total_params - positions) + 12 * L * d * T

    def activation_bytes_per_sample(self, dtype_bytes: int) -> float:
        """Per token and layer, ~ 9d + 2 MLP widths saved (fused attention, no s^2 term).

        Plus one extra layer for backward temporaries and the logits, kept in fp32 for
        the loss and its gradient. GradDotProd keeps the output gradients of every Linear and
        LayerNorm (per layer 3d + d + the MLP's two outputs + 2d) and the head's until its dots
        are taken; its validation rows (a few against the batch) are left out.
        """
        d, s = self.hidden_dim, self.seq_length
        mlp_saved = 3 * self.mlp_hidden if self.activation == "swiglu" else 2 * self.mlp_hidden
        per_layer = s * (9 * d + mlp_saved) * dtype_bytes
        logits = s * self.vocab_size * (dtype_bytes + 8)
        total = (self.num_layers + 1) * per_layer + logits + 2 * s * d * dtype_bytes
        if self.method == "graddotprod":  # every hooked module's output gradient, held until the dots
            fc_out = 2 * self.mlp_hidden if self.activation == "swiglu" else self.mlp_hidden
            total += s * (self.num_layers * (7 * d + fc_out) + d + self.vocab_size) * dtype_bytes
        return total
