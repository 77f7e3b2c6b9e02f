"""An LSTM language model built from an LSTMSpec.

Token embedding -> stacked ``nn.LSTM`` (``batch_first``; with ``proj_size`` when the spec has a
``projection_dim``) -> bias-free output head, tied to the embedding when the spec ties it (the
spec allows that only when the sizes match). No dropout: single-epoch scaling runs do not
overfit. The parameter count is exactly ``spec.param_counts()``.

Initialisation: PyTorch's LSTM default, U(-1/sqrt(h), 1/sqrt(h)), except that the forget
gate's bias starts at 1 (Jozefowicz et al. 2015: gradients survive early training). The
embedding starts as N(0, 0.5): inputs of order one. The usual word-level U(-0.1, 0.1)
(Zaremba et al. 2014) starves a tied byte-level model of input: on Shakespeare at h=64
it sat at the unigram loss (3.3 nats) for 300 steps where N(0, 0.5) was at 2.2; with the
head tied, the first loss is still close to ln(vocab_size). An untied head keeps
nn.Linear's default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

Precision: the LSTM itself runs in fp32 (TF32 tensor cores on a GPU) even inside the loop's
bf16 autocast: autocast's cuDNN RNN wrapper casts to float16, not to autocast's dtype, and the
loop has no gradient scaler for fp16. The head (and its logits) still follow autocast.

The shared loop (``workloads.loop``) trains it: it needs ``forward(idx, targets)`` returning
the mean cross-entropy and ``param_groups()``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

EMBEDDING_INIT_STD = 0.5
FORGET_BIAS = 1.0


class LSTMLM(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.spec = spec
        V, e, h = spec.vocab_size, spec.embedding_dim, spec.hidden_dim
        self.embedding = nn.Embedding(V, e)
        self.lstm = nn.LSTM(e, h, num_layers=spec.num_layers, batch_first=True,
                            proj_size=spec.projection_dim or 0)
        self.head = nn.Linear(spec.output_dim, V, bias=False)
        if spec.tie_embeddings:
            self.head.weight = self.embedding.weight
        self._init_weights()

    def _init_weights(self):
        nn.init.normal_(self.embedding.weight, 0.0, EMBEDDING_INIT_STD)
        h = self.spec.hidden_dim
        with torch.no_grad():
            for name, param in self.lstm.named_parameters():
                if name.startswith("bias_ih"):  # gates are ordered input, forget, cell, output
                    param[h:2 * h].fill_(FORGET_BIAS)
                elif name.startswith("bias_hh"):
                    param[h:2 * h].zero_()

    def forward(self, idx, targets=None):
        """Logits (B, T, V), or the mean cross-entropy when ``targets`` are given.

        Every sequence starts from a zero state (no state carried between batches), so a
        batch depends only on its samples, whatever rank or micro-batch it lands in.
        """
        x = self.embedding(idx)
        with torch.autocast(x.device.type, enabled=False):
            output, _ = self.lstm(x.float())
        logits = self.head(output)
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))

    def param_groups(self) -> list[dict]:
        """AdamW groups: weight decay on the LSTM matrices and an untied head; none on biases and the embedding."""
        spec = self.spec
        matrices = [p for name, p in self.lstm.named_parameters() if name.startswith("weight")]
        biases = [p for name, p in self.lstm.named_parameters() if name.startswith("bias")]
        groups = [
            {"name": "lstm", "params": matrices, "weight_decay": spec.weight_decay, "lr_scale": 1.0},
            {"name": "lstm_bias", "params": biases, "weight_decay": 0.0, "lr_scale": 1.0},
            {"name": "token_embedding", "params": [self.embedding.weight], "weight_decay": 0.0, "lr_scale": 1.0},
        ]
        if not spec.tie_embeddings:
            groups.append({"name": "head", "params": [self.head.weight],
                           "weight_decay": spec.weight_decay, "lr_scale": 1.0})
        return groups
