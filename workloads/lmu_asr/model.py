"""The speech recogniser: log-mel frames -> LMU encoder -> CTC over 29 symbols (see ``__init__``).

``forward(features, feature_lengths, targets, target_lengths)`` returns the CTC loss (the shared
loop's contract); ``eval_counts`` decodes greedily and counts character and word errors for
``val_cer`` / ``val_wer``; ``transcribe`` gives the text.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from workloads.lmu_asr import NUM_SYMBOLS
from workloads.lmu_asr.lmu import LMU, LMUFFT, reverse_padded
from workloads.lmu_asr.text import BLANK, decode, error_counts, greedy_ctc_decode


class Block(nn.Module):
    """x + dropout(LMU(LayerNorm(x))); bidirectional: half the width reads the sequence backwards."""

    def __init__(self, spec):
        super().__init__()
        h = spec.hidden_dim
        layer = LMUFFT if spec.encoder == "lmufft" else LMU
        width = h // 2 if spec.bidirectional else h
        self.norm = nn.LayerNorm(h)
        self.forward_lmu = layer(h, width, spec.memory_dim, spec.theta, spec.memory_channels)
        self.backward_lmu = layer(h, width, spec.memory_dim, spec.theta, spec.memory_channels) \
            if spec.bidirectional else None
        self.drop = nn.Dropout(spec.dropout)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        out = self.forward_lmu(y, lengths)
        if self.backward_lmu is not None:
            back = reverse_padded(self.backward_lmu(reverse_padded(y, lengths), lengths), lengths)
            out = torch.cat([out, back], dim=-1)
        return x + self.drop(out)


class SpeechRecognizer(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.spec = spec
        self.input = nn.Linear(spec.input_size, spec.hidden_dim)
        self.blocks = nn.ModuleList(Block(spec) for _ in range(spec.num_layers))
        self.norm = nn.LayerNorm(spec.hidden_dim)
        self.head = nn.Linear(spec.hidden_dim, NUM_SYMBOLS)

    def log_probs(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(batch, time, symbols) log-probabilities, in float32 whatever the autocast."""
        x = self.input(features)
        for block in self.blocks:
            x = block(x, lengths)
        return F.log_softmax(self.head(self.norm(x)).float(), dim=-1)

    def forward(self, features, feature_lengths, targets, target_lengths) -> torch.Tensor:
        """CTC loss per target symbol, averaged over the utterances (nn.CTCLoss's "mean")."""
        log_probs = self.log_probs(features, feature_lengths)
        return F.ctc_loss(log_probs.transpose(0, 1), targets, feature_lengths, target_lengths, blank=BLANK,
                          reduction="mean", zero_infinity=True)

    @torch.no_grad()
    def transcribe(self, features, feature_lengths) -> list[str]:
        log_probs = self.log_probs(features, feature_lengths)
        return [decode(ids) for ids in greedy_ctc_decode(log_probs.cpu(), feature_lengths.cpu())]

    @torch.no_grad()
    def eval_counts(self, features, feature_lengths, targets, target_lengths) -> dict[str, tuple[int, int]]:
        """Greedy-decoded errors against the references: {"val_cer": (character edits, reference
        characters), "val_wer": (word edits, reference words)}, to be summed over batches and ranks."""
        hyps = self.transcribe(features, feature_lengths)
        refs = [decode(t[:n]) for t, n in zip(targets.cpu().tolist(), target_lengths.cpu().tolist())]
        char_edits, chars, word_edits, words = error_counts(refs, hyps)
        return {"val_cer": (char_edits, chars), "val_wer": (word_edits, words)}

    def param_groups(self) -> list[dict]:
        """AdamW groups: decay on the weight matrices; none on biases and norms."""
        matrices = [p for p in self.parameters() if p.dim() >= 2]
        others = [p for p in self.parameters() if p.dim() < 2]
        return [{"name": "matrices", "params": matrices, "weight_decay": self.spec.weight_decay, "lr_scale": 1.0},
                {"name": "vectors", "params": others, "weight_decay": 0.0, "lr_scale": 1.0}]
