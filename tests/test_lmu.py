"""The Legendre Memory Unit layers: the memory system, its two evaluations, and the layers' contracts."""

import numpy as np
import pytest
import torch
from scipy.signal import cont2discrete

from workloads.lmu_asr.lmu import (
    LMU,
    LMUFFT,
    discretize,
    lmu_matrices,
    lmu_param_count,
    memory_recurrent,
    reverse_padded,
    shifted_legendre,
)

F64 = torch.float64
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _rand(*shape, dtype=F64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype).to(device)


# ----------------------------------------------------------------------------- the memory system

def test_lmu_matrices_follow_the_paper_for_order_3():
    A, B = lmu_matrices(3, theta=2.0)
    np.testing.assert_array_equal(A * 2.0, [[-1, -1, -1], [3, -3, -3], [-5, 5, -5]])
    np.testing.assert_array_equal(B * 2.0, [1, -3, 5])


@pytest.mark.parametrize("order,theta", [(64, 100.0), (6, 3.5)])
def test_discretisation_matches_scipy_zero_order_hold(order, theta):
    A, B = lmu_matrices(order, theta)
    Ad, Bd = discretize(A, B)
    Ad_ref, Bd_ref, *_ = cont2discrete((A, B[:, None], np.eye(order), np.zeros((order, 1))),
                                       dt=1.0, method="zoh")
    np.testing.assert_allclose(Ad, Ad_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(Bd, Bd_ref[:, 0], rtol=0, atol=1e-12)
    # A is invertible, which gives an independent closed form: Bd = A^-1 (Ad - I) B.
    np.testing.assert_allclose(Bd, np.linalg.solve(A, (Ad - np.eye(order)) @ B), rtol=0, atol=1e-10)


@pytest.mark.parametrize("order,theta,T", [(64, 100.0, 300), (128, 200.0, 500), (5, 7.0, 33)])
def test_recurrent_and_fft_memories_agree_in_float64(order, theta, T):
    layer = LMUFFT(4, 8, order, theta, memory_channels=2, dtype=F64)
    u = _rand(3, T, 2)
    m_fft = layer.memory(u)
    m_rec = memory_recurrent(u, layer.Ad, layer.Bd)
    assert m_fft.shape == (3, T, 2, order)
    assert (m_fft - m_rec).abs().max().item() < 1e-12


def test_lmufft_forward_equals_its_recurrent_and_step_paths_in_float64():
    layer = LMUFFT(5, 16, 64, 100.0, dtype=F64)
    x = _rand(2, 300, 5)
    h = layer(x)
    torch.testing.assert_close(layer.recurrent(x), h, rtol=0, atol=1e-12)
    m, steps = None, []
    for t in range(x.shape[1]):
        h_t, m = layer.step(x[:, t], m)
        steps.append(h_t)
    torch.testing.assert_close(torch.stack(steps, dim=1), h, rtol=0, atol=1e-12)


@pytest.mark.parametrize("delay", [0.5, 1.0])
def test_memory_reconstructs_the_input_theta_prime_steps_ago(delay):
    # u(t - θ') ≈ Σ_i P̃_i(θ'/θ) m_i(t) (Voelker et al. 2019, eq. 3). The zero-order hold treats
    # sample u_t as held over [t, t+1), which delays a smooth signal by a further half step.
    order, theta, T = 32, 100.0, 600
    signal = lambda t: (np.sin(2 * np.pi * t / 250) + 0.5 * np.sin(2 * np.pi * t / 170 + 1)
                        + 0.3 * np.sin(2 * np.pi * t / 110 + 2))
    t = np.arange(T)
    Ad, Bd = discretize(*lmu_matrices(order, theta))
    u = torch.tensor(signal(t))[None, :, None]
    m = memory_recurrent(u, torch.tensor(Ad), torch.tensor(Bd))[0, :, 0].numpy()
    late = t >= 2 * theta                   # after the start-up transient has left the window
    reconstructed = m[late] @ shifted_legendre(order, delay)
    expected = signal(t[late] - delay * theta + 0.5)
    assert np.abs(reconstructed - expected).max() < 2e-3 * np.abs(expected).max()


# ----------------------------------------------------------------------------- parameter count

@pytest.mark.parametrize("n,h,d,c", [(80, 256, 64, 1), (3, 5, 7, 2), (1, 1, 1, 1), (40, 128, 32, 4)])
def test_param_count_formula_equals_the_modules(n, h, d, c):
    lmu = LMU(n, h, d, theta=10.0, memory_channels=c)
    fft = LMUFFT(n, h, d, theta=10.0, memory_channels=c)
    assert lmu_param_count(n, h, d, c) == sum(p.numel() for p in lmu.parameters())
    assert lmu_param_count(n, h, d, c, fft=True) == sum(p.numel() for p in fft.parameters())


def test_fixed_matrices_are_buffers_not_parameters_nor_checkpointed():
    layer = LMU(3, 4, 8, theta=5.0)
    names = {name for name, _ in layer.named_parameters()}
    assert not any(name.endswith(("Ad", "Bd")) for name in names)
    assert not any(key.endswith(("Ad", "Bd")) for key in layer.state_dict())
    assert layer.cell.Ad.shape == (8, 8) and layer.cell.Bd.shape == (8,)


# ----------------------------------------------------------------------------- lengths and reversal

@pytest.mark.parametrize("layer_cls", [LMU, LMUFFT])
def test_padding_does_not_change_valid_outputs(layer_cls):
    torch.manual_seed(0)
    layer = layer_cls(3, 8, 16, theta=10.0, dtype=F64)
    lengths = torch.tensor([20, 13, 1])
    x = _rand(3, 20, 3)
    x = torch.where(torch.arange(20)[None, :, None] < lengths[:, None, None], x, 0.0)
    h = layer(x, lengths)
    garbage = torch.cat([x, 1e3 * _rand(3, 17, 3, seed=1)], dim=1)
    garbage[1, 13:] = 1e3                   # padding inside the batch's length is garbage too
    h_padded = layer(garbage, lengths)
    for i, L in enumerate(lengths.tolist()):
        torch.testing.assert_close(h_padded[i, :L], h[i, :L], rtol=0, atol=1e-12)
        # each sequence alone, unpadded, gives the same outputs
        torch.testing.assert_close(layer(x[i:i + 1, :L])[0], h[i, :L], rtol=0, atol=1e-12)
    assert h_padded.shape == (3, 37, 8)
    assert (h_padded[1, 13:] == 0).all() and (h_padded[2, 1:] == 0).all()


def test_reverse_padded_reverses_within_each_length_and_round_trips():
    x = torch.arange(12.0).reshape(2, 6, 1).repeat(1, 1, 2)
    lengths = torch.tensor([6, 4])
    r = reverse_padded(x, lengths)
    assert r[0, :, 0].tolist() == [5, 4, 3, 2, 1, 0]
    assert r[1, :, 0].tolist() == [9, 8, 7, 6, 10, 11]   # padding stays at the end
    torch.testing.assert_close(reverse_padded(r, lengths), x)


def test_lengths_out_of_range_are_rejected_with_the_valid_range():
    layer = LMUFFT(3, 4, 8, theta=5.0)
    with pytest.raises(ValueError, match=r"\[0, 6\]"):
        layer(torch.zeros(2, 6, 3), torch.tensor([7, 2]))


# ----------------------------------------------------------------------------- training

@pytest.mark.parametrize("layer_cls", [LMU, LMUFFT])
def test_gradients_reach_the_encoders(layer_cls):
    torch.manual_seed(0)
    layer = layer_cls(3, 8, 16, theta=10.0)
    layer(torch.randn(2, 25, 3), torch.tensor([25, 11])).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_both_layers_run_in_each_dtype_and_device(device, dtype, atol):
    torch.manual_seed(0)
    x = torch.randn(2, 40, 3, dtype=dtype, device=device)
    for layer_cls in (LMU, LMUFFT):
        layer = layer_cls(3, 8, 16, theta=10.0, device=device, dtype=dtype)
        h = layer(x)
        assert h.dtype == dtype and h.device.type == device and torch.isfinite(h).all()
    torch.testing.assert_close(layer.recurrent(x), h, rtol=0, atol=atol)


@pytest.mark.parametrize("device", DEVICES)
def test_lmufft_under_bf16_autocast_stays_close_to_float32(device):
    torch.manual_seed(0)
    layer = LMUFFT(16, 32, 32, theta=50.0, device=device)
    x = torch.randn(4, 123, 16, device=device)         # 123: not a power of two
    with torch.autocast(device, dtype=torch.bfloat16):
        h = layer(x)
        h.float().square().mean().backward()
    assert h.dtype == torch.bfloat16
    assert (h.float() - layer(x)).abs().max() < 0.05    # bf16 keeps ~3 significant digits
    assert layer.e_x.weight.grad.abs().sum() > 0
