"""The ghost engine: per-sample gradient dots with a validation gradient, against torch.func."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from orchestrator.spec import make_spec
from workloads.graddot import GradDot
from workloads.transformer.model import GPT

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop")  # vmap of CPU attention

V, D, T = 11, 8, 5


class TinyLM(nn.Module):
    """Learned positions, biased LayerNorms and Linears, an MLP called twice, a head tied or not."""

    def __init__(self, tie: bool):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, D), nn.Embedding(T, D)
        self.ln_1, self.ln_2, self.ln_f = nn.LayerNorm(D), nn.LayerNorm(D), nn.LayerNorm(D)
        self.qkv, self.proj = nn.Linear(D, 3 * D), nn.Linear(D, D, bias=False)
        self.fc, self.out = nn.Linear(D, 2 * D), nn.Linear(2 * D, D)
        self.head = nn.Linear(D, V)
        if tie:
            self.head.weight = self.wte.weight

    def forward(self, idx):
        B, L = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(L))
        q, k, v = self.qkv(self.ln_1(x)).view(B, L, 3, 2, D // 2).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, L, D))
        for _ in range(2):  # the same MLP twice: every one of its parameters has two uses
            x = x + self.out(F.gelu(self.fc(self.ln_2(x))))
        return self.head(self.ln_f(x))


def tiny(tie=True, seed=0):
    torch.manual_seed(seed)
    return TinyLM(tie).double()


def gpt(tie):
    spec = make_spec("transformer", hidden_dim=16, num_layers=2, num_heads=2, seq_length=T, vocab_size=V,
                     tie_embeddings=tie, label="m", partition="local", train_tokens=10_000)
    torch.manual_seed(0)
    return GPT(spec).double()


def row_losses(model, idx, targets):
    logits = model(idx)
    return F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").mean(1)


def batch(rows, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (rows, T), generator=g), torch.randint(0, V, (rows, T), generator=g)


def engine_step(engine, model, idx, targets, n, m, train_scale=1.0):
    """loss = train_scale * mean over the training rows + mean over the validation rows."""
    with engine.step(n, m):
        losses = row_losses(model, idx, targets)
        loss = train_scale * losses[:n].mean() + (losses[n:].mean() if m else 0.0)
    loss.backward()
    return engine.finish()


def per_sample_grads(model, idx, targets, scale):
    """Each row's gradient of scale * (its mean token loss), by vmap(grad(...))."""
    params = {k: p.detach() for k, p in model.named_parameters()}

    def loss(params, x, y):
        return scale * F.cross_entropy(functional_call(model, params, (x[None],))[0], y)

    return vmap(grad(loss), in_dims=(None, 0, 0))(params, idx, targets)


def val_grad(model, idx, targets):
    model.zero_grad(set_to_none=True)
    row_losses(model, idx, targets).mean().backward()
    G = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return G


def reference_dots(per_sample, G):
    return sum(per_sample[k].flatten(1) @ G[k].flatten() for k in G)


def assert_exact(dots, expected):
    relative = ((dots - expected).abs() / expected.abs()).max().item()
    assert relative <= 1e-8, (dots, expected)


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("n_val", [1, 3])
def test_dots_equal_per_sample_gradients_dotted_with_the_validation_gradient(tie, n_val):
    model, (idx, targets), n = tiny(tie), batch(4 + n_val), 4
    G = val_grad(model, idx[n:], targets[n:])
    expected = reference_dots(per_sample_grads(model, idx[:n], targets[:n], 1 / n), G)
    dots, val_sq_norm = engine_step(GradDot(model), model, idx, targets, n, n_val)
    assert_exact(dots, expected)
    torch.testing.assert_close(val_sq_norm, sum(g.pow(2).sum() for g in G.values()), rtol=1e-12, atol=0)


@pytest.mark.parametrize("route", ["materialised", "gram"])
def test_both_routes_are_exact_with_tied_and_repeated_uses(route):
    model, (idx, targets), n = tiny(tie=True), batch(6), 4
    expected = reference_dots(per_sample_grads(model, idx[:n], targets[:n], 1 / n),
                              val_grad(model, idx[n:], targets[n:]))
    engine = GradDot(model, route=route)
    dots, _ = engine_step(engine, model, idx, targets, n, 2)
    assert {r for _, r in engine.last_routes} == {route}
    assert_exact(dots, expected)


def test_auto_route_takes_the_cheaper_one():
    model, (idx, targets) = tiny(tie=False), batch(5)
    engine = GradDot(model)
    engine_step(engine, model, idx, targets, 4, 1)
    routes = dict(engine.last_routes)
    assert routes["wte.weight"] == "materialised"  # a gather beats any Gram matrix
    assert routes["qkv.weight"] == "gram"  # n T m S (2i + 2o + 1) = 6500 < 2 n T o i = 7680 FLOPs
    assert routes["fc.weight"] == "materialised"  # two uses: twice the Gram matrices, 9800 > 5120


def test_grad_holds_the_training_rows_gradient_after_finish():
    model, (idx, targets), n = tiny(), batch(7), 4
    row_losses(model, idx[:n], targets[:n]).mean().backward()
    expected = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    engine_step(GradDot(model), model, idx, targets, n, 3)
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[k], rtol=0, atol=1e-12)


def test_later_micro_steps_use_the_first_micro_steps_validation_gradient():
    model, (idx, targets), n = tiny(), batch(8), 3
    first, second, val = slice(0, n), slice(n, 2 * n), slice(2 * n, 8)
    G = val_grad(model, idx[val], targets[val])
    (row_losses(model, idx[first], targets[first]).mean() / 2
     + row_losses(model, idx[second], targets[second]).mean() / 2).backward()
    accumulated = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    engine = GradDot(model)
    rows = torch.cat([torch.arange(0, n), torch.arange(2 * n, 8)])
    engine_step(engine, model, idx[rows], targets[rows], n, 2, train_scale=0.5)
    dots, _ = engine_step(engine, model, idx[second], targets[second], n, 0, train_scale=0.5)
    assert_exact(dots, reference_dots(per_sample_grads(model, idx[second], targets[second], 0.5 / n), G))
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, accumulated[k], rtol=0, atol=1e-12)


def test_a_micro_step_without_validation_rows_after_an_optimizer_step_is_refused():
    model, (idx, targets) = tiny(), batch(5)
    engine = GradDot(model)
    engine_step(engine, model, idx, targets, 4, 1)
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    with pytest.raises(RuntimeError, match="parameters changed"):
        with engine.step(4, 0):
            pass


def test_a_parameter_outside_supported_modules_is_refused_by_name():
    model = tiny()
    model.temperature = nn.Parameter(torch.ones((), dtype=torch.float64))
    with pytest.raises(ValueError, match="'temperature' \\(in a TinyLM\\)"):
        GradDot(model)


def test_a_supported_parameter_used_outside_its_module_is_caught():
    class FunctionalHead(TinyLM):
        def forward(self, idx):
            return super().forward(idx) + F.linear(self.wte(idx), self.wte.weight)

    torch.manual_seed(0)
    model, (idx, targets) = FunctionalHead(tie=False).double(), batch(5)
    with pytest.raises(RuntimeError, match="'wte.weight' gets gradient that the GradDot hooks do not see"):
        engine_step(GradDot(model), model, idx, targets, 4, 1)


def test_saved_tensors_are_freed_and_hooks_removed():
    model, (idx, targets) = tiny(), batch(5)
    engine = GradDot(model)
    engine_step(engine, model, idx, targets, 4, 1)
    assert engine._calls is None
    engine.close()
    with engine.step(4, 1):
        model(idx)
    assert engine._calls == [] and engine._val is None


@pytest.mark.parametrize("tie", [True, False])
def test_the_project_gpt_is_exact(tie):
    model, (idx, targets), n = gpt(tie), batch(6), 4
    expected = reference_dots(per_sample_grads(model, idx[:n], targets[:n], 1 / n),
                              val_grad(model, idx[n:], targets[n:]))
    dots, _ = engine_step(GradDot(model), model, idx, targets, n, 2)
    assert_exact(dots, expected)


@pytest.mark.parametrize("model_fn", [tiny, gpt], ids=["tiny", "gpt"])
@pytest.mark.parametrize("route,reduce", [("materialised", None), ("gram", None), ("auto", lambda val: val)])
def test_steady_state_steps_that_dot_in_backward_are_exact(model_fn, route, reduce):
    """After the verifying steps, a parameter is dotted in backward once all its uses are in (a tied
    head waits for the embedding, a twice-called MLP for its second call); with a reduction, in finish."""
    model, (idx, targets), n = model_fn(True), batch(6), 4
    G = val_grad(model, idx[n:], targets[n:])
    expected = reference_dots(per_sample_grads(model, idx[:n], targets[:n], 1 / n), G)
    row_losses(model, idx[:n], targets[:n]).mean().backward()
    train_grad = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    dots, val_sq_norm = engine_step(GradDot(model, route=route, reduce_val_gradient=reduce, verify_steps=0),
                                    model, idx, targets, n, 2)
    assert_exact(dots, expected)
    torch.testing.assert_close(val_sq_norm, sum(g.pow(2).sum() for g in G.values()), rtol=1e-12, atol=0)
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, train_grad[k], rtol=0, atol=1e-12)


@pytest.mark.parametrize("verify_steps", [0, 1])
def test_a_second_backward_in_one_step_is_refused(verify_steps):
    model, (idx, targets) = tiny(), batch(5)
    engine = GradDot(model, verify_steps=verify_steps)
    with engine.step(4, 1):
        losses = row_losses(model, idx, targets)
    losses[:4].mean().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="call backward once between step\\(\\) and finish\\(\\)"):
        losses[4:].mean().backward()
