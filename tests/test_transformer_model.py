"""The GPT model: parameter counts against the spec, causality, and muP."""

import math

import pytest
import torch
import torch.nn as nn

from orchestrator.spec import make_spec
from workloads.loop import make_optimizer, set_lr
from workloads.transformer.model import GPT, Rotary


def spec_for(**fields):
    fields = {"hidden_dim": 32, "num_layers": 2, "seq_length": 32, "label": "m", "partition": "local",
              "train_tokens": 10_000, **fields}
    return make_spec("transformer", **fields)


def embedding_numel(model):
    tables = [model.wte.weight] + ([model.wpe.weight] if model.wpe is not None else [])
    if model.lm_head.weight is not model.wte.weight:
        tables.append(model.lm_head.weight)
    return sum(t.numel() for t in tables)


@pytest.mark.parametrize("width", [32, 48, 96])
@pytest.mark.parametrize("activation", ["gelu", "relu", "swiglu"])
@pytest.mark.parametrize("positional", ["learned", "rotary"])
@pytest.mark.parametrize("tie", [True, False])
def test_parameter_count_equals_the_spec(width, activation, positional, tie):
    spec = spec_for(hidden_dim=width, activation=activation, positional=positional, tie_embeddings=tie)
    model = GPT(spec)
    total, embedding = spec.param_counts()
    assert sum(p.numel() for p in model.parameters()) == total
    assert embedding_numel(model) == embedding
    assert all(not isinstance(m, nn.Linear) or m.bias is None for m in model.modules())
    assert all(not isinstance(m, nn.LayerNorm) or m.bias is None for m in model.modules())


@pytest.mark.parametrize("activation", ["gelu", "relu", "swiglu"])
@pytest.mark.parametrize("mlp_hidden_dim", [20, 100])
def test_a_given_mlp_width_is_built_and_counted(activation, mlp_hidden_dim):
    # the trainer refuses a model whose parameter count differs from spec.total_params
    spec = spec_for(hidden_dim=48, activation=activation, mlp_hidden_dim=mlp_hidden_dim, tie_embeddings=False)
    model = GPT(spec)
    assert sum(p.numel() for p in model.parameters()) == spec.total_params
    assert spec.total_params != spec_for(hidden_dim=48, activation=activation, tie_embeddings=False).total_params
    mlp = model.blocks[0].mlp
    assert mlp.fc.out_features == (2 if activation == "swiglu" else 1) * mlp_hidden_dim
    assert mlp.proj.in_features == mlp_hidden_dim
    assert model(torch.randint(0, 256, (2, 8))).shape == (2, 8, 256)


def test_tied_head_shares_the_embedding_matrix():
    model = GPT(spec_for(tie_embeddings=True))
    assert model.lm_head.weight is model.wte.weight
    untied = GPT(spec_for(tie_embeddings=False))
    assert untied.lm_head.weight is not untied.wte.weight


def test_swiglu_mlp_uses_the_spec_width():
    spec = spec_for(hidden_dim=48, activation="swiglu")
    mlp = GPT(spec).blocks[0].mlp
    assert mlp.fc.out_features == 2 * spec.mlp_hidden == 2 * 128
    assert mlp.proj.in_features == spec.mlp_hidden


@pytest.mark.parametrize("positional", ["learned", "rotary"])
def test_logits_do_not_depend_on_later_tokens(positional):
    torch.manual_seed(0)
    model = GPT(spec_for(positional=positional)).eval()
    idx = torch.randint(0, 256, (2, 32))
    changed = idx.clone()
    changed[:, 20:] = (changed[:, 20:] + 1) % 256
    with torch.no_grad():
        a, b = model(idx), model(changed)
    assert a.shape == (2, 32, 256)
    torch.testing.assert_close(a[:, :20], b[:, :20])
    assert not torch.allclose(a[:, 20:], b[:, 20:])


def test_rotary_scores_depend_only_on_the_relative_position():
    rotary = Rotary(head_dim=8, seq_length=16)
    q, k = torch.randn(8), torch.randn(8)
    seq = lambda v: v.expand(1, 1, 16, 8)  # noqa: E731  the same vector at every position
    rq, rk = rotary(seq(q))[0, 0], rotary(seq(k))[0, 0]
    torch.testing.assert_close(rq[3] @ rk[1], rq[12] @ rk[10])
    torch.testing.assert_close(rq.norm(dim=-1), q.norm().expand(16))
    assert not torch.allclose(rq[3] @ rk[1], rq[3] @ rk[2])


def test_loss_is_the_mean_cross_entropy_of_the_logits():
    model = GPT(spec_for())
    idx, targets = torch.randint(0, 256, (2, 32)), torch.randint(0, 256, (2, 32))
    expected = nn.functional.cross_entropy(model(idx).view(-1, 256), targets.view(-1))
    torch.testing.assert_close(model(idx, targets), expected)


# -------------------------------------------------------------------------- muP
@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("rule", ["paper", "sqrt"])
def test_mup_at_the_base_width_is_the_standard_model_and_step(tie, rule):
    def one_step(use_mup):
        spec = spec_for(hidden_dim=64, mup_base_width=64, use_mup=use_mup, mup_lr_rule=rule,
                        tie_embeddings=tie, learning_rate=1e-2)
        torch.manual_seed(0)
        model = GPT(spec)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        optimizer = make_optimizer(spec, model)
        set_lr(optimizer, spec.learning_rate)
        torch.manual_seed(1)
        idx = torch.randint(0, 256, (4, 33))
        model(idx[:, :-1], idx[:, 1:]).backward()
        optimizer.step()
        return before, model.state_dict()

    sp_before, sp_after = one_step(False)
    mup_before, mup_after = one_step(True)
    for name in sp_before:
        assert torch.equal(sp_before[name], mup_before[name]), name
        assert torch.equal(sp_after[name], mup_after[name]), name
        assert not torch.equal(sp_before[name], sp_after[name]), name


def lr_scales(**fields):
    return {g["name"]: g["lr_scale"] for g in GPT(spec_for(**fields)).param_groups()}


def test_mup_paper_rule_scales_only_hidden_learning_rates():
    scales = lr_scales(hidden_dim=128, mup_base_width=32, use_mup=True, tie_embeddings=False)
    assert scales == {"hidden": 0.25, "token_embedding": 1.0, "norm": 1.0, "position_embedding": 1.0,
                      "head": 1.0}
    assert lr_scales(hidden_dim=128, mup_base_width=32, use_mup=True)["token_embedding"] == 1.0


def test_mup_sqrt_rule_scales_hidden_and_head_and_takes_the_geometric_mean_when_tied():
    untied = lr_scales(hidden_dim=128, mup_base_width=32, use_mup=True, mup_lr_rule="sqrt", tie_embeddings=False)
    assert untied["hidden"] == untied["head"] == 0.5
    assert untied["token_embedding"] == untied["norm"] == 1.0
    tied = lr_scales(hidden_dim=128, mup_base_width=32, use_mup=True, mup_lr_rule="sqrt")
    assert tied["token_embedding"] == pytest.approx(math.sqrt(1.0 * 0.5))
    assert "head" not in tied


def test_no_weight_decay_on_embeddings_and_norms():
    groups = GPT(spec_for(tie_embeddings=False, weight_decay=0.1)).param_groups()
    decay = {g["name"]: g["weight_decay"] for g in groups}
    assert decay == {"hidden": 0.1, "head": 0.1, "token_embedding": 0.0, "norm": 0.0, "position_embedding": 0.0}


def test_mup_scales_hidden_init_readout_and_attention():
    torch.manual_seed(0)
    model = GPT(spec_for(hidden_dim=512, num_heads=4, mup_base_width=32, use_mup=True))
    assert model.output_mult == 32 / 512
    assert model.blocks[0].mlp.fc.weight.std().item() == pytest.approx(0.02 * math.sqrt(32 / 512), rel=0.02)
    assert model.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    head_dim, base_head_dim = 128, 8
    assert model.blocks[0].attn.scale == pytest.approx(math.sqrt(base_head_dim) / head_dim)


def test_init_std_none_means_one_over_sqrt_fan_in():
    torch.manual_seed(0)
    model = GPT(spec_for(hidden_dim=256, init_std=None, tie_embeddings=False))
    assert model.blocks[0].mlp.proj.weight.std().item() == pytest.approx(1 / math.sqrt(1024), rel=0.02)
    assert model.lm_head.weight.std().item() == pytest.approx(1 / math.sqrt(256), rel=0.05)
    assert model.wte.weight.std().item() == pytest.approx(1 / math.sqrt(256), rel=0.05)


COORD_WIDTHS = (32, 64, 128, 256, 512)


def coordinate_rms(width, use_mup, steps=4, lr=1e-2):
    """RMS of every block's output and of the logits after a few Adam steps on one batch."""
    spec = spec_for(hidden_dim=width, num_heads=4, num_layers=2, seq_length=32, use_mup=use_mup,
                    mup_base_width=32, learning_rate=lr, weight_decay=0.0)
    torch.manual_seed(0)
    model = GPT(spec)
    optimizer = make_optimizer(spec, model)
    set_lr(optimizer, lr)
    generator = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 256, (8, 33), generator=generator)
    for _ in range(steps):
        model(idx[:, :-1], idx[:, 1:]).backward()
        optimizer.step()
        optimizer.zero_grad()
    outputs = []
    hooks = [b.register_forward_hook(lambda m, i, o: outputs.append(o)) for b in model.blocks]
    with torch.no_grad():
        logits = model(idx[:, :-1])
    for hook in hooks:
        hook.remove()
    return [o.pow(2).mean().sqrt().item() for o in outputs] + [logits.pow(2).mean().sqrt().item()]


def test_mup_coordinates_stay_put_across_widths_and_standard_ones_grow():
    mup = {w: coordinate_rms(w, True) for w in COORD_WIDTHS}
    sp = {w: coordinate_rms(w, False) for w in COORD_WIDTHS}
    for i, name in enumerate(["block 0", "block 1", "logits"]):
        mup_values = [mup[w][i] for w in COORD_WIDTHS]
        sp_values = [sp[w][i] for w in COORD_WIDTHS]
        print(f"{name}: muP {['%.3g' % v for v in mup_values]}  SP {['%.3g' % v for v in sp_values]}")
        assert max(mup_values) / min(mup_values) < 2.0, (name, mup_values)
        assert sp_values[-1] / sp_values[0] > 4.0, (name, sp_values)
        assert all(b > a for a, b in zip(sp_values, sp_values[1:])), (name, sp_values)
