"""The transformer workload's spec: a GPT-style decoder sized from its width."""

from __future__ import annotations

import dataclasses
import math

from orchestrator.errors import UsageError, unknown
from orchestrator.spec import MUP_LR_RULES, ExperimentSpec, register_workload

ACTIVATIONS = ("gelu", "relu", "swiglu")
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

    default_gpus = 1
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
        the loss and its gradient.
        """
        d, s = self.hidden_dim, self.seq_length
        mlp_saved = 3 * self.mlp_hidden if self.activation == "swiglu" else 2 * self.mlp_hidden
        per_layer = s * (9 * d + mlp_saved) * dtype_bytes
        logits = s * self.vocab_size * (dtype_bytes + 8)
        return (self.num_layers + 1) * per_layer + logits + 2 * s * d * dtype_bytes
