"""The LSTM workload's spec: a stacked nn.LSTM language model, on 2 GPUs by default,
and the rule that sizes it to match a transformer (``matched_hidden_dim``, ``gen_lstm_experim``).

Architecture (``workloads/lstm/model.py``): token embedding (width ``embedding_dim``), a stacked
``nn.LSTM`` (``num_layers`` x ``hidden_dim``), optionally with a projection of every layer's
output to ``projection_dim`` (LSTMP, Sak et al. 2014: ``nn.LSTM(proj_size=...)``), and a bias-free
output head. The head is tied to the embedding when ``tie_embeddings`` and the LSTM's output
width (``projection_dim`` or ``hidden_dim``) equals ``embedding_dim``, which is the default.
"""

from __future__ import annotations

import dataclasses

from orchestrator.errors import UsageError
from orchestrator.spec import ExperimentSpec, make_spec, register_workload

DEFAULT_LSTM_LAYERS = 2
# hidden sizes are rounded to this multiple (tensor cores) when that costs at most
# MATCH_TOLERANCE of the target size; below ~width 48 a multiple of 8 is too coarse
HIDDEN_MULTIPLE = 8
MATCH_TOLERANCE = 0.03


def lstm_layer_params(input_dim: int, hidden_dim: int, projection_dim: int | None = None) -> int:
    """One ``nn.LSTM`` layer: W_ih (4h x in), W_hh (4h x out), b_ih and b_hh (4h each), W_hr (p x h)."""
    out = projection_dim or hidden_dim
    return 4 * hidden_dim * (input_dim + out) + 8 * hidden_dim + (out * hidden_dim if projection_dim else 0)


def lstm_non_embedding_params(hidden_dim: int, num_layers: int, embedding_dim: int | None = None,
                              projection_dim: int | None = None) -> int:
    """Parameters of the LSTM stack: everything but the embedding and the output head.

    ``embedding_dim=None`` means the default: the output width, so the head can be tied.
    """
    out = projection_dim or hidden_dim
    first_input = embedding_dim or out
    return sum(lstm_layer_params(first_input if layer == 0 else out, hidden_dim, projection_dim)
               for layer in range(num_layers))


@register_workload("lstm")
@dataclasses.dataclass(frozen=True, init=False)
class LSTMSpec(ExperimentSpec):
    # the embedding width; None means the LSTM's output width (which lets the head be tied)
    embedding_dim: int | None = None
    # nn.LSTM's proj_size: every layer's output h_t is projected to this width; None: no projection
    projection_dim: int | None = None

    default_gpus = 2
    trainer = "workloads.lstm.train:main"

    @property
    def output_dim(self) -> int:
        """Width of the LSTM's output, the input of the head."""
        return self.projection_dim or self.hidden_dim

    def resolve_architecture(self, put) -> None:
        if self.num_layers is None:
            put("num_layers", DEFAULT_LSTM_LAYERS)
        if self.projection_dim is not None and not 0 < self.projection_dim < self.hidden_dim:
            raise UsageError(f"projection_dim must be in [1, hidden_dim={self.hidden_dim}) "
                             f"(nn.LSTM's proj_size), got {self.projection_dim!r}")
        if self.embedding_dim is None:
            put("embedding_dim", self.output_dim)
        if self.embedding_dim <= 0:
            raise UsageError(f"embedding_dim must be > 0, got {self.embedding_dim!r}")
        if self.use_mup:
            raise UsageError("use_mup is not defined for the lstm workload")
        if self.tie_embeddings and self.embedding_dim != self.output_dim:
            raise UsageError(f"tie_embeddings needs embedding_dim == the LSTM's output width "
                             f"(projection_dim or hidden_dim), got {self.embedding_dim} and {self.output_dim}; "
                             f"set tie_embeddings=False or change the sizes")

    def param_counts(self) -> tuple[int, int]:
        """nn.LSTM layers (two bias vectors each, W_hr with a projection), the embedding, a bias-free head.

        Embedding parameters, as for the transformer: the token embedding, and the head when untied.
        """
        e, v = self.embedding_dim, self.vocab_size
        lstm = lstm_non_embedding_params(self.hidden_dim, self.num_layers, e, self.projection_dim)
        embedding = v * e + (0 if self.tie_embeddings else v * self.output_dim)
        return embedding + lstm, embedding

    def activation_bytes_per_sample(self, dtype_bytes: int) -> float:
        """Per step and layer the four gates, cell and hidden state (cuDNN's reserve space).

        Always fp32: the model runs its LSTM outside autocast (see ``workloads/lstm/model.py``).
        """
        h, s = self.hidden_dim, self.seq_length
        logits = s * self.vocab_size * (dtype_bytes + 8)
        per_layer = s * (8 * h + (self.projection_dim or 0)) * 4
        return self.num_layers * per_layer + s * self.embedding_dim * 4 + logits


# ----------------------------------------------------------- matching a transformer
def transformer_non_embedding_params(width: int, **transformer_fields) -> int:
    """N of the transformer at ``width`` (its default depth, heads and MLP unless given)."""
    return make_spec("transformer", hidden_dim=width, label="matched", **transformer_fields).non_embedding_params


def matched_hidden_dim(target: int, num_layers: int = DEFAULT_LSTM_LAYERS, embedding_dim: int | None = None,
                       projection_dim: int | None = None, multiple: int = HIDDEN_MULTIPLE,
                       tolerance: float = MATCH_TOLERANCE) -> int:
    """The hidden size whose LSTM stack has ``target`` non-embedding parameters, as near as can be.

    Rule: the depth is fixed (2 layers unless given: deep LSTMs train worse and run
    slower, so size goes into the width), and the hidden size is the multiple of
    ``multiple`` (8) whose non-embedding N is closest to ``target``, if that is within
    ``tolerance`` (3 %) of it; otherwise (small widths, where steps of 8 are too coarse)
    the closest integer. With the defaults (tied, no projection) N = layers * (8 h^2 + 8 h).
    """
    if target <= 0:
        raise UsageError(f"the target parameter count must be > 0, got {target!r}")

    def size(h):
        return lstm_non_embedding_params(h, num_layers, embedding_dim, projection_dim)

    low = (projection_dim or 0) + 1  # the smallest valid hidden size
    high = low
    while size(high) < target:  # N grows with h: bracket the solution, then bisect
        low, high = high, 2 * high
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if size(mid) < target else (low, mid)
    exact = min((low, high), key=lambda h: abs(size(h) - target))
    rounded = [h for h in (multiple * (exact // multiple), multiple * (exact // multiple + 1))
               if h > (projection_dim or 0)]
    best = min(rounded, key=lambda h: abs(size(h) - target), default=exact)
    return best if abs(size(best) - target) <= tolerance * target else exact


def gen_lstm_experim(hidden_dim: int | None = None, label: str | None = None, folder_name: str | None = None, *,
                     matched_width: int | None = None, transformer_fields: dict | None = None,
                     **overrides) -> list[ExperimentSpec]:
    """One LSTM experiment, as a one-element list, like ``gen_experim``.

    ``gen_lstm_experim(256, label=...)`` sets the hidden size itself;
    ``gen_lstm_experim(matched_width=128, label=...)`` sizes the LSTM so that its
    non-embedding N matches the transformer of width 128 (``matched_hidden_dim``; the
    transformer's fields can be given in ``transformer_fields``). ``num_layers``,
    ``embedding_dim`` and ``projection_dim`` in ``overrides`` enter the match.
    """
    if (hidden_dim is None) == (matched_width is None):
        raise UsageError(f"give hidden_dim or matched_width, not both or neither "
                         f"(got {hidden_dim!r} and {matched_width!r})")
    if label is None:
        raise UsageError("experiment field 'label' is required")
    if hidden_dim is None:
        target = transformer_non_embedding_params(matched_width, **(transformer_fields or {}))
        hidden_dim = matched_hidden_dim(target, overrides.get("num_layers") or DEFAULT_LSTM_LAYERS,
                                        overrides.get("embedding_dim"), overrides.get("projection_dim"))
    return [make_spec("lstm", hidden_dim=hidden_dim, label=label, folder_name=folder_name, **overrides)]


def relative_mismatch(lstm: ExperimentSpec, width: int, **transformer_fields) -> float:
    """(N_lstm - N_transformer) / N_transformer for non-embedding N."""
    target = transformer_non_embedding_params(width, **transformer_fields)
    return lstm.non_embedding_params / target - 1


__all__ = ["LSTMSpec", "gen_lstm_experim", "matched_hidden_dim", "lstm_non_embedding_params",
           "transformer_non_embedding_params", "relative_mismatch"]
