"""The LSTM workload's spec: a stacked nn.LSTM language model, on 2 GPUs by default."""

from __future__ import annotations

import dataclasses

from orchestrator.errors import UsageError
from orchestrator.spec import ExperimentSpec, register_workload


@register_workload("lstm")
@dataclasses.dataclass(frozen=True, init=False)
class LSTMSpec(ExperimentSpec):
    # the embedding width; None means hidden_dim (which lets the output head be tied)
    embedding_dim: int | None = None

    default_gpus = 2
    trainer = "workloads.lstm.train:main"

    def resolve_architecture(self, put) -> None:
        if self.num_layers is None:
            put("num_layers", 2)
        if self.embedding_dim is None:
            put("embedding_dim", self.hidden_dim)
        if self.embedding_dim <= 0:
            raise UsageError(f"embedding_dim must be > 0, got {self.embedding_dim!r}")
        if self.use_mup:
            raise UsageError("use_mup is not defined for the lstm workload")
        if self.tie_embeddings and self.embedding_dim != self.hidden_dim:
            raise UsageError(f"tie_embeddings needs embedding_dim == hidden_dim, "
                             f"got {self.embedding_dim} and {self.hidden_dim}")

    def param_counts(self) -> tuple[int, int]:
        """nn.LSTM layers (two bias vectors each) plus the embedding and a bias-free head."""
        e, h, v = self.embedding_dim, self.hidden_dim, self.vocab_size
        lstm = sum(4 * h * ((e if layer == 0 else h) + h) + 8 * h for layer in range(self.num_layers))
        embedding = v * e + (0 if self.tie_embeddings else v * h)
        return embedding + lstm, embedding

    def activation_bytes_per_sample(self, dtype_bytes: int) -> float:
        """Per step and layer the four gates, cell and hidden state (cuDNN's reserve space)."""
        h, s = self.hidden_dim, self.seq_length
        logits = s * self.vocab_size * (dtype_bytes + 8)
        return self.num_layers * s * 8 * h * dtype_bytes + s * self.embedding_dim * dtype_bytes + logits
