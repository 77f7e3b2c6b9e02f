"""The LSTM model, its spec's parameter count, the matched-N sizing rule and the LSTM registries."""

import math

import pytest
import torch

from experiments.lstm import LSTM_LR_SWEEP, LSTM_SCALING
from experiments.transformer import TRANSFORMER_SCALING
from orchestrator.errors import UsageError
from orchestrator.registry import check_duplicates
from orchestrator.spec import make_spec
from workloads.loop import make_optimizer
from workloads.lstm import (gen_lstm_experim, lstm_non_embedding_params, matched_hidden_dim,
                            relative_mismatch, transformer_non_embedding_params)
from workloads.lstm.model import LSTMLM


def lstm(**fields):
    return make_spec("lstm", **{"hidden_dim": 32, "label": "l", "seq_length": 16, **fields})


ARCHITECTURES = [
    {},
    {"num_layers": 1},
    {"num_layers": 3, "tie_embeddings": False},
    {"embedding_dim": 24, "tie_embeddings": False},
    {"projection_dim": 16},  # tied: the embedding takes the projection's width
    {"projection_dim": 16, "embedding_dim": 20, "tie_embeddings": False, "num_layers": 3},
]


@pytest.mark.parametrize("fields", ARCHITECTURES, ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()) or "default")
def test_the_model_has_exactly_the_parameters_the_spec_counts(fields):
    spec = lstm(**fields)
    model = LSTMLM(spec)
    assert sum(p.numel() for p in model.parameters()) == spec.total_params
    lstm_params = sum(p.numel() for p in model.lstm.parameters())
    assert lstm_params == spec.non_embedding_params


def test_the_head_is_tied_when_the_sizes_allow():
    default = LSTMLM(lstm())
    assert default.head.weight is default.embedding.weight
    tied = LSTMLM(lstm(projection_dim=16))
    assert tied.spec.embedding_dim == 16 and tied.head.weight is tied.embedding.weight
    untied = LSTMLM(lstm(tie_embeddings=False))
    assert untied.head.weight is not untied.embedding.weight
    with pytest.raises(UsageError, match="tie_embeddings needs embedding_dim == the LSTM's output width"):
        lstm(embedding_dim=24)
    with pytest.raises(UsageError, match=r"projection_dim must be in \[1, hidden_dim=32\)"):
        lstm(projection_dim=32)


def test_the_default_spec_counts_two_lstm_layers_with_both_bias_vectors():
    h, v = 128, 256
    spec = make_spec("lstm", hidden_dim=h, label="l")
    assert spec.gpus == 2 and spec.num_layers == 2
    assert spec.param_counts() == (v * h + 2 * (4 * h * 2 * h + 8 * h), v * h)
    assert make_spec("transformer", hidden_dim=h, label="t").gpus == 1


def test_the_first_loss_is_near_uniform_and_the_output_has_the_vocabulary():
    torch.manual_seed(0)
    model = LSTMLM(lstm())
    idx = torch.randint(0, 256, (4, 17))
    assert model(idx[:, :-1]).shape == (4, 16, 256)
    assert model(idx[:, :-1], idx[:, 1:]).item() == pytest.approx(math.log(256), abs=0.3)


def test_a_sequence_does_not_depend_on_the_others_in_its_batch():
    torch.manual_seed(0)
    model = LSTMLM(lstm())
    idx = torch.randint(0, 256, (3, 16))
    together = model(idx)
    alone = torch.cat([model(idx[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_param_groups_hold_every_parameter_once_and_decay_only_matrices():
    spec = lstm(tie_embeddings=False, projection_dim=16, embedding_dim=20)
    model = LSTMLM(spec)
    make_optimizer(spec, model)  # checks: every parameter exactly once
    decay = {id(p) for g in model.param_groups() if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decay) == (p.dim() == 2 and not name.startswith("embedding")), name


def test_the_forget_gate_bias_starts_at_one():
    model = LSTMLM(lstm(num_layers=2))
    h = 32
    for layer in range(2):
        total = getattr(model.lstm, f"bias_ih_l{layer}") + getattr(model.lstm, f"bias_hh_l{layer}")
        assert torch.all(total[h:2 * h] == 1.0)


# ------------------------------------------------------------- matched N
# transformer width -> (its non-embedding N, the matched LSTM's hidden size); N_lstm = 2 (8 h^2 + 8 h)
MATCHED = {32: (24_736, 39), 64: (147_904, 96), 128: (787_584, 224), 256: (4_721_920, 544),
           512: (25_174_528, 1256), 1024: (138_435_584, 2944)}


@pytest.mark.parametrize("width", sorted(MATCHED))
def test_a_matched_lstm_has_the_transformers_non_embedding_n_within_three_percent(width):
    target, hidden = MATCHED[width]
    assert transformer_non_embedding_params(width) == target
    spec = gen_lstm_experim(matched_width=width, label="m")[0]
    assert spec.hidden_dim == hidden and spec.num_layers == 2
    assert spec.non_embedding_params == 2 * (8 * hidden ** 2 + 8 * hidden)
    assert abs(relative_mismatch(spec, width)) < 0.03
    if width >= 64:
        assert hidden % 8 == 0  # tensor-core friendly where that costs < 3 %


def test_the_match_is_the_closest_size_on_its_grid():
    for target in (3_000, 50_000, 787_584, 10 ** 7):
        h = matched_hidden_dim(target, multiple=1, tolerance=0)
        error = abs(lstm_non_embedding_params(h, 2) - target)
        assert error <= abs(lstm_non_embedding_params(h - 1, 2) - target)
        assert error <= abs(lstm_non_embedding_params(h + 1, 2) - target)


def test_the_match_honours_depth_projection_and_transformer_fields():
    deep = gen_lstm_experim(matched_width=256, label="m", num_layers=4)[0]
    assert deep.num_layers == 4 and abs(relative_mismatch(deep, 256)) < 0.03
    projected = gen_lstm_experim(matched_width=256, label="m", projection_dim=256)[0]
    assert projected.embedding_dim == 256 and projected.hidden_dim > 256
    assert abs(relative_mismatch(projected, 256)) < 0.03
    swiglu = gen_lstm_experim(matched_width=128, label="m", transformer_fields={"activation": "swiglu"})[0]
    assert abs(relative_mismatch(swiglu, 128, activation="swiglu")) < 0.03


def test_gen_lstm_experim_needs_exactly_one_size():
    assert gen_lstm_experim(200, label="h200")[0].hidden_dim == 200
    with pytest.raises(UsageError, match="hidden_dim or matched_width"):
        gen_lstm_experim(200, label="x", matched_width=64)
    with pytest.raises(UsageError, match="hidden_dim or matched_width"):
        gen_lstm_experim(label="x")


# --------------------------------------------------------------- registries
def test_lstm_scaling_matches_the_transformer_grid_point_for_point():
    check_duplicates("LSTM_SCALING", LSTM_SCALING)
    transformers = {(s.hidden_dim, s.tokens) for s in TRANSFORMER_SCALING}
    assert len({s.hidden_dim for s in LSTM_SCALING}) >= 4
    for spec in LSTM_SCALING:
        width = int(spec.label.split("_")[1].rstrip("d"))
        assert spec.workload == "lstm" and spec.gpus == 2
        assert abs(relative_mismatch(spec, width)) < 0.03
        assert (width, spec.tokens) in transformers
    for hidden in {s.hidden_dim for s in LSTM_SCALING}:
        assert len({s.tokens for s in LSTM_SCALING if s.hidden_dim == hidden}) >= 3


def test_the_lstm_learning_rate_sweep_covers_each_size_at_several_rates():
    check_duplicates("LSTM_LR_SWEEP", LSTM_LR_SWEEP)
    sizes = {s.hidden_dim for s in LSTM_LR_SWEEP}
    assert len(sizes) >= 3 and {s.folder_name for s in LSTM_LR_SWEEP} == {"lstm_lr_tune_lr_sweep"}
    for hidden in sizes:
        rates = sorted(s.learning_rate for s in LSTM_LR_SWEEP if s.hidden_dim == hidden)
        assert len(rates) == 5 and rates[-1] / rates[0] == pytest.approx(100)
    assert {s.gpus for s in LSTM_LR_SWEEP} == {2}


def test_the_lstm_runs_in_fp32_under_autocast_while_the_head_follows_it():
    model = LSTMLM(lstm())
    seen = {}
    model.lstm.register_forward_hook(lambda module, args, output: seen.update(lstm=output[0].dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.randint(0, 256, (2, 16)))
    assert seen["lstm"] == torch.float32 and logits.dtype == torch.bfloat16
