"""A GPT-style decoder built from a TransformerSpec, with optional muP.

Token embedding, learned or rotary positions, pre-LN blocks (causal
``scaled_dot_product_attention``, MLP with gelu, relu or swiglu), final norm, and an output
head tied to the embedding when ``tie_embeddings`` is set. No biases anywhere and LayerNorm
without a bias, so the parameter count is exactly ``spec.param_counts()``.

Standard parametrisation (SP): every matrix and embedding starts as N(0, init_std), GPT-2's
0.02 by default. With ``init_std=None`` the std is 1/sqrt(fan_in): ``in_features`` for a
Linear, the table size for an embedding (its input is one-hot). Norm weights start at 1.

muP (``use_mup``; Tensor Programs V, Adam), relative to the same architecture at width
``mup_base_width`` with the same number of heads (so the head size scales with width):

    hidden matrices     init std * sqrt(base/width)   Adam lr * base/width   ("sqrt": lr / sqrt(width/base))
    embeddings, norms   unchanged                     lr
    untied output head  unchanged                     lr                     ("sqrt": lr / sqrt(width/base))
    tied embedding      unchanged                     lr                     ("sqrt": geometric mean of both)
    logits              * base/width (readout multiplier, tied or not)
    attention scores    * sqrt(base_head_dim) / head_dim instead of 1 / sqrt(head_dim)

Every factor is exactly 1 at ``width == base``, so there muP and SP build the same model
and take the same first step. Learning-rate factors travel as ``lr_scale`` in the
optimizer groups (``GPT.param_groups``); the shared loop multiplies the scheduled rate by them.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Rotary(nn.Module):
    """Rotary position embedding (GPT-NeoX layout: the head's two halves are rotated as pairs)."""

    def __init__(self, head_dim: int, seq_length: int, base: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(seq_length, dtype=torch.float32), inv_freq)
        # not persistent: derived from the spec, so they stay out of checkpoints
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x):  # (B, heads, T, head_dim)
        T = x.size(-2)
        cos, sin = self.cos[:T], self.sin[:T]
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, spec, width_mult: float):
        super().__init__()
        d, self.n_head = spec.hidden_dim, spec.num_heads
        head_dim = d // self.n_head
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.rotary = Rotary(head_dim, spec.seq_length) if spec.positional == "rotary" else None
        # muP: 1/head_dim, scaled to equal 1/sqrt(head_dim) at the base width
        # (sqrt(base_head_dim)/head_dim, written so that the factor is exactly 1 there)
        self.scale = head_dim ** -0.5 * (1.0 / width_mult) ** 0.5

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if self.rotary is not None:
            q, k = self.rotary(q), self.rotary(k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, spec):
        super().__init__()
        d, h = spec.hidden_dim, spec.mlp_hidden
        self.activation = spec.activation
        # swiglu: gate and value in one matrix; the default h = 8d/3 keeps 3dh close to the 8d^2
        # of a 4d MLP (spec.mlp_hidden_dim overrides it, as lingua's multiple_of rounding does)
        self.fc = nn.Linear(d, 2 * h if self.activation == "swiglu" else h, bias=False)
        self.proj = nn.Linear(h, d, bias=False)

    def forward(self, x):
        if self.activation == "swiglu":
            gate, value = self.fc(x).chunk(2, dim=-1)
            return self.proj(F.silu(gate) * value)
        act = F.gelu if self.activation == "gelu" else F.relu
        return self.proj(act(self.fc(x)))


class Block(nn.Module):
    def __init__(self, spec, width_mult: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(spec.hidden_dim, bias=False)
        self.attn = CausalSelfAttention(spec, width_mult)
        self.ln_2 = nn.LayerNorm(spec.hidden_dim, bias=False)
        self.mlp = MLP(spec)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.spec = spec
        d, V = spec.hidden_dim, spec.vocab_size
        self.width_mult = d / spec.mup_base_width if spec.use_mup else 1.0
        self.wte = nn.Embedding(V, d)
        self.wpe = nn.Embedding(spec.seq_length, d) if spec.positional == "learned" else None
        self.blocks = nn.ModuleList(Block(spec, self.width_mult) for _ in range(spec.num_layers))
        self.ln_f = nn.LayerNorm(d, bias=False)
        self.lm_head = nn.Linear(d, V, bias=False)
        if spec.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.output_mult = 1.0 / self.width_mult
        self._init_weights()

    def _init_weights(self):
        spec = self.spec

        def sp_std(fan_in):
            return spec.init_std if spec.init_std is not None else fan_in ** -0.5

        for module in self.modules():
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, sp_std(module.num_embeddings))
            elif isinstance(module, nn.Linear) and module is not self.lm_head:
                # hidden matrix: SP's std at the base model's fan-in, scaled by 1/sqrt(fan_in)
                base_fan_in = module.in_features / self.width_mult
                std = sp_std(base_fan_in) * (base_fan_in / module.in_features) ** 0.5
                nn.init.normal_(module.weight, 0.0, std)
        if not spec.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, 0.0, sp_std(spec.hidden_dim))

    def forward(self, idx, targets=None, per_row: bool = False):
        """Logits (B, T, V), or the mean cross-entropy when ``targets`` are given: over all
        tokens, or with ``per_row`` each row's mean over its tokens, (B,) (GradDotProd needs
        the training and validation rows' losses apart)."""
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(idx.size(1), device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        if self.output_mult != 1.0:
            logits = logits * self.output_mult
        if targets is None:
            return logits
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 up; float64 stays
        if per_row:
            return F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").mean(1)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))

    def fsdp_units(self) -> list[nn.Module]:
        """FSDP's units: one per block, so one block's parameters are gathered at a time."""
        return list(self.blocks)

    def param_groups(self) -> list[dict]:
        """AdamW groups: ``lr_scale`` multiplies the scheduled rate; no decay on embeddings and norms."""
        spec, m = self.spec, self.width_mult
        if not spec.use_mup:
            hidden_lr = head_lr = 1.0
        elif spec.mup_lr_rule == "paper":
            hidden_lr, head_lr = 1.0 / m, 1.0
        else:  # "sqrt": every width-scaled rate is lr / sqrt(width/base)
            hidden_lr = head_lr = 1.0 / math.sqrt(m)
        # a tied matrix is the embedding (paper); "sqrt" takes the geometric mean of both rates
        wte_lr = math.sqrt(1.0 * head_lr) if spec.tie_embeddings and spec.mup_lr_rule == "sqrt" else 1.0
        hidden = [mod.weight for mod in self.blocks.modules() if isinstance(mod, nn.Linear)]
        norms = [mod.weight for mod in self.modules() if isinstance(mod, nn.LayerNorm)]
        groups = [
            {"name": "hidden", "params": hidden, "weight_decay": spec.weight_decay, "lr_scale": hidden_lr},
            {"name": "token_embedding", "params": [self.wte.weight], "weight_decay": 0.0, "lr_scale": wte_lr},
            {"name": "norm", "params": norms, "weight_decay": 0.0, "lr_scale": 1.0},
        ]
        if self.wpe is not None:
            groups.append({"name": "position_embedding", "params": [self.wpe.weight],
                           "weight_decay": 0.0, "lr_scale": 1.0})
        if not spec.tie_embeddings:
            groups.append({"name": "head", "params": [self.lm_head.weight],
                           "weight_decay": spec.weight_decay, "lr_scale": head_lr})
        return groups
