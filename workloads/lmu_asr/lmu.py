"""Legendre Memory Units: the recurrent cell and its parallel (FFT) variant, in plain PyTorch.

Written from the papers' equations: Voelker, Kajić and Eliasmith (2019), "Legendre Memory Units:
Continuous-Time Representation in Recurrent Neural Networks", and Chilkuri and Eliasmith (2021),
"Parallelizing Legendre Memory Unit Training".

The memory is a fixed linear system of order d whose state m(t) holds the Legendre coefficients of
the last theta time units of its input u:

    u(t - θ') ≈ Σ_i P̃_i(θ'/θ) m_i(t),  0 ≤ θ' ≤ θ,  P̃_i(r) = P_i(2r - 1) (shifted Legendre).

A and B are not trained: the memory is optimal for its window by construction, so learning only
decides what goes into it (the encoders) and what is read out of it (the hidden layer).

- ``LMU`` (``LMUCell``): the 2019 cell. u is fed back from h and m, so it runs step by step.
- ``LMUFFT``: the 2021 variant. u depends on the input only, so the memory of a whole sequence is
  one causal convolution with the memory's impulse response, done by FFT: it trains in parallel
  and runs as the same recurrence at inference (``step``, ``recurrent``).

Time is counted in steps: theta is a number of steps and the system is discretised with dt = 1.

Variable lengths: pad at the end and pass ``lengths``. Both layers are causal, so padding can
never change a valid output; outputs at padded steps are set to zero so that whatever reads them
(a pooling, a time reversal) sees nothing. A bidirectional model runs a second layer on
``reverse_padded(x, lengths)`` and reverses its output back the same way.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import scipy.linalg
import torch
import torch.nn as nn


# ----------------------------------------------------------------------------- the memory system

def lmu_matrices(order: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Continuous-time (A, B) of the Legendre memory, float64, shapes (d, d) and (d,).

    These are the Padé approximants of a pure delay of theta, written in the Legendre basis
    (Voelker et al. 2019, eq. 2); dividing by theta sets the window length.
    """
    if order < 1 or theta <= 0:
        raise ValueError(f"need order >= 1 and theta > 0; got order={order}, theta={theta}")
    i = np.arange(order)[:, None]
    j = np.arange(order)[None, :]
    # (-1)**(i - j + 1) for i >= j: +1 when i - j is odd, -1 when even.
    A = np.where(i < j, -1.0, (-1.0) ** (i - j + 1)) * (2 * i + 1)
    B = (2 * np.arange(order) + 1) * (-1.0) ** np.arange(order)
    return A / theta, B / theta


def discretize(A: np.ndarray, B: np.ndarray, dt: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Zero-order hold (Ad, Bd) in float64: the input is held constant over each step.

    exp of the block matrix [[A, B], [0, 0]] * dt is [[Ad, Bd], [0, 1]]. This needs no inverse
    of A and is exact for a piecewise-constant input; its price is that a smooth input comes out
    of the memory delayed by half a step (the hold's own delay).
    """
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64).reshape(-1)
    d = A.shape[0]
    block = np.zeros((d + 1, d + 1))
    block[:d, :d] = A * dt
    block[:d, d] = B * dt
    E = scipy.linalg.expm(block)
    return E[:d, :d], E[:d, d]


def impulse_response(Ad: np.ndarray, Bd: np.ndarray, length: int) -> np.ndarray:
    """H[k] = Ad^k Bd for k < length, float64 (length, d): m_t = Σ_k H[k] u_{t-k}.

    Repeated multiplication in float64 rather than matrix powers: length matrix-vector products
    are cheap, and each H[k] is then as accurate as the recurrence that it replaces.
    """
    H = np.empty((length, Bd.shape[0]))
    v = np.asarray(Bd, dtype=np.float64)
    for k in range(length):
        H[k] = v
        v = Ad @ v
    return H


def shifted_legendre(order: int, r: float) -> np.ndarray:
    """P̃_i(r) = P_i(2r - 1) for i < order: the read-out weights for a delay of r * theta."""
    return np.polynomial.legendre.legvander(np.asarray([2.0 * r - 1.0]), order - 1)[0]


def memory_recurrent(u: torch.Tensor, Ad: torch.Tensor, Bd: torch.Tensor) -> torch.Tensor:
    """Memory of u (batch, time, channels) as the recurrence m_t = Ad m_{t-1} + Bd u_t, m_{-1} = 0.

    Returns (batch, time, channels, d): one independent memory of order d per channel.
    """
    m = u.new_zeros(u.shape[0], u.shape[2], Ad.shape[0])
    out = []
    for t in range(u.shape[1]):
        m = m @ Ad.T + u[:, t, :, None] * Bd
        out.append(m)
    return torch.stack(out, dim=1)


def fft_size(length: int) -> int:
    """The smallest power of two >= 2 * length.

    Any size >= 2T - 1 avoids wrap-around of the circular convolution; a power of two is the size
    every FFT library is fastest at, and it keeps the filter spectra cached by ``LMUFFT`` to a
    handful when utterance lengths vary from batch to batch.
    """
    return 1 << (2 * length - 1).bit_length()


def memory_fft(u: torch.Tensor, H_f: torch.Tensor, n: int) -> torch.Tensor:
    """The same memory as ``memory_recurrent``, as a causal convolution done by FFT.

    u: (batch, T, channels) real; H_f: (d, n // 2 + 1), the rfft of length n of the impulse
    response H (d, n // 2) with n // 2 >= T. Zero-padding both to n >= 2T leaves the first T
    outputs of the circular convolution equal to the linear (causal) one.
    """
    T = u.shape[1]
    U = torch.fft.rfft(u.transpose(1, 2), n=n)                      # (B, c, F)
    m = torch.fft.irfft(U[:, :, None, :] * H_f, n=n)[..., :T]        # (B, c, d, T)
    return m.permute(0, 3, 1, 2)                                     # (B, T, c, d)


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence of x (batch, time, ...) within its own length; padding stays at the end.

    Its own inverse. Flipping the whole time axis instead would put the padding first, and a
    causal layer would then run through it before reaching the data.
    """
    B, T = x.shape[:2]
    lengths = _check_lengths(lengths, B, T, x.device)
    t = torch.arange(T, device=x.device)[None, :]
    L = lengths[:, None]
    index = torch.where(t < L, L - 1 - t, t)                         # (B, T)
    index = index.reshape(B, T, *([1] * (x.dim() - 2))).expand_as(x)
    return torch.gather(x, 1, index)


def _check_lengths(lengths, batch: int, T: int, device) -> torch.Tensor:
    lengths = torch.as_tensor(lengths, device=device)
    if lengths.shape != (batch,) or lengths.is_floating_point():
        raise ValueError(f"lengths must be {batch} integers, one per sequence; "
                         f"got shape {tuple(lengths.shape)}, dtype {lengths.dtype}")
    lo, hi = int(lengths.min()), int(lengths.max())
    if lo < 0 or hi > T:
        raise ValueError(f"lengths must lie in [0, {T}] (the padded length); got min {lo}, max {hi}")
    return lengths


def _zero_padding(h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    valid = torch.arange(h.shape[1], device=h.device)[None, :] < lengths[:, None]
    return h * valid[..., None].to(h.dtype)


def _memory_buffers(module: nn.Module, memory_size: int, theta: float, device, dtype) -> None:
    # Built from float64 in the module's dtype, so a float64 module gets them to full precision.
    # Not persistent: they follow from (memory_size, theta), and a checkpoint holds only what was
    # trained.
    Ad, Bd = discretize(*lmu_matrices(memory_size, theta))
    module.register_buffer("Ad", torch.tensor(Ad, device=device, dtype=dtype), persistent=False)
    module.register_buffer("Bd", torch.tensor(Bd, device=device, dtype=dtype), persistent=False)


# ----------------------------------------------------------------------------- parameter count

def lmu_param_count(input_size: int, hidden_size: int, memory_size: int,
                    memory_channels: int = 1, fft: bool = False) -> int:
    """Trainable parameters of ``LMU`` (fft=False) or ``LMUFFT`` (fft=True), biases included.

    With n = input_size, h = hidden_size, d = memory_size, c = memory_channels:

    - LMU:    c * (n + h + c*d)   encoders e_x, e_h, e_m (no biases)
            + h * (n + h + c*d)   W_x, W_h, W_m
            + h                   the hidden bias b
    - LMUFFT: c * n               encoder e_x (no bias)
            + h * (n + c*d)       W_x, W_m
            + h                   the hidden bias b

    The fixed Ad and Bd are buffers, not parameters, and are not counted.
    """
    n, h, c, d = input_size, hidden_size, memory_channels, memory_size
    if fft:
        return c * n + h * (n + c * d) + h
    return c * (n + h + c * d) + h * (n + h + c * d) + h


# ----------------------------------------------------------------------------- the 2019 cell

class LMUCell(nn.Module):
    """One step of the LMU (Voelker et al. 2019):

        u_t = e_x x_t + e_h h_{t-1} + e_m m_{t-1}            (memory_channels values)
        m_t = Ad m_{t-1} + Bd u_t                             (one memory of order d per channel)
        h_t = f(W_x x_t + W_h h_{t-1} + W_m m_t + b)

    The paper uses one channel; more give the hidden layer several windows' worth of features at
    the cost of c*d memory state. Weights start at nn.Linear's default, U(±1/sqrt(fan_in)):
    m_0 is the window's mean of u and every m_i is of the order of u, so that default already
    gives pre-activations of order one.
    """

    def __init__(self, input_size: int, hidden_size: int, memory_size: int, theta: float,
                 memory_channels: int = 1, activation: Callable = torch.tanh,
                 device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        n, h, d, c = input_size, hidden_size, memory_size, memory_channels
        self.input_size, self.hidden_size = n, h
        self.memory_size, self.memory_channels, self.theta = d, c, theta
        self.activation = activation
        self.e_x = nn.Linear(n, c, bias=False, **kw)
        self.e_h = nn.Linear(h, c, bias=False, **kw)
        self.e_m = nn.Linear(c * d, c, bias=False, **kw)
        self.W_x = nn.Linear(n, h, bias=True, **kw)                  # carries b
        self.W_h = nn.Linear(h, h, bias=False, **kw)
        self.W_m = nn.Linear(c * d, h, bias=False, **kw)
        _memory_buffers(self, d, theta, device, dtype or torch.get_default_dtype())

    def initial_state(self, batch: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = like.new_zeros(batch, self.hidden_size)
        m = like.new_zeros(batch, self.memory_channels, self.memory_size)
        return h, m

    def forward(self, x_t: torch.Tensor, state=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(h_t, m_t) from x_t (batch, input_size) and state (h_{t-1}, m_{t-1}) (zeros if None)."""
        if state is None:
            state = self.initial_state(x_t.shape[0], x_t)
        return self.recur(self.e_x(x_t), self.W_x(x_t), state)

    def recur(self, ex_t, wx_t, state):
        """One step given the input's projections e_x x_t and W_x x_t + b.

        Split out so that ``LMU`` projects the whole input sequence in one matrix product and
        only the feedback stays in the loop.
        """
        h, m = state
        u = ex_t + self.e_h(h) + self.e_m(m.flatten(1))
        m = m @ self.Ad.T + u[..., None] * self.Bd
        h = self.activation(wx_t + self.W_h(h) + self.W_m(m.flatten(1)))
        return h, m


class LMU(nn.Module):
    """The LMU over a sequence: (batch, time, input_size) -> every h_t, (batch, time, hidden_size).

    A Python loop over time: the feedback into u makes the memory input depend on the previous
    step. Use ``LMUFFT`` when training speed matters.
    """

    def __init__(self, input_size: int, hidden_size: int, memory_size: int, theta: float,
                 memory_channels: int = 1, activation: Callable = torch.tanh,
                 device=None, dtype=None):
        super().__init__()
        self.cell = LMUCell(input_size, hidden_size, memory_size, theta, memory_channels,
                            activation, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, lengths=None) -> torch.Tensor:
        B, T = x.shape[:2]
        steps = T
        if lengths is not None:
            lengths = _check_lengths(lengths, B, T, x.device)
            steps = int(lengths.max())       # nothing valid lies beyond the longest sequence
        cell = self.cell
        ex, wx = cell.e_x(x), cell.W_x(x)
        state = cell.initial_state(B, wx)
        hs = []
        for t in range(steps):
            state = cell.recur(ex[:, t], wx[:, t], state)
            hs.append(state[0])
        h = torch.stack(hs, dim=1) if hs else wx.new_zeros(B, 0, cell.hidden_size)
        if lengths is None:
            return h
        h = torch.cat([h, h.new_zeros(B, T - steps, cell.hidden_size)], dim=1)
        return _zero_padding(h, lengths)


# ----------------------------------------------------------------------------- the 2021 variant

class LMUFFT(nn.Module):
    """The parallel LMU (Chilkuri and Eliasmith 2021):

        u_t = f_u(e_x x_t)                   from the input only: no feedback
        m   = H * u                          causal convolution, H = [Bd, Ad Bd, Ad^2 Bd, ...]
        h_t = f(W_m m_t + W_x x_t + b)

    ``forward`` computes m for all steps at once by FFT; ``step`` and ``recurrent`` compute the
    same m as the recurrence m_t = Ad m_{t-1} + Bd u_t, for streaming inference.

    Precision: the FFT runs in float32 (float64 for a float64 input), with autocast disabled
    around it. Under autocast(bf16) the linear layers follow autocast and the memory is cast up
    for the FFT: PyTorch has no bfloat16 FFT, cuFFT's float16 needs power-of-two sizes, and a
    memory summed over hundreds of steps in half precision loses its low-order digits anyway.

    The filter spectrum rfft(H) is cached per (FFT size, device, dtype), computed from H in
    float64. FFT sizes are powers of two (``fft_size``), so varying lengths reuse a few entries.
    """

    def __init__(self, input_size: int, hidden_size: int, memory_size: int, theta: float,
                 memory_channels: int = 1, activation: Callable = torch.tanh,
                 u_activation: Callable | None = None, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        n, h, d, c = input_size, hidden_size, memory_size, memory_channels
        self.input_size, self.hidden_size = n, h
        self.memory_size, self.memory_channels, self.theta = d, c, theta
        self.activation = activation
        self.u_activation = u_activation                             # None: identity
        self.e_x = nn.Linear(n, c, bias=False, **kw)
        self.W_x = nn.Linear(n, h, bias=True, **kw)                  # carries b
        self.W_m = nn.Linear(c * d, h, bias=False, **kw)
        _memory_buffers(self, d, theta, device, dtype or torch.get_default_dtype())
        self._spectra: dict[tuple, torch.Tensor] = {}

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """u (batch, time, memory_channels) from the input alone."""
        u = self.e_x(x)
        return u if self.u_activation is None else self.u_activation(u)

    def memory(self, u: torch.Tensor) -> torch.Tensor:
        """m (batch, time, channels, d) for u (batch, time, channels), by FFT, in >= float32."""
        dtype = torch.promote_types(u.dtype, torch.float32)
        n = fft_size(u.shape[1])
        with torch.autocast(u.device.type, enabled=False):
            return memory_fft(u.to(dtype), self._spectrum(n, u.device, dtype), n)

    def memory_recurrent(self, u: torch.Tensor) -> torch.Tensor:
        """The same m as ``memory``, step by step."""
        dtype = torch.promote_types(u.dtype, torch.float32)
        with torch.autocast(u.device.type, enabled=False):
            return memory_recurrent(u.to(dtype), self.Ad.to(dtype), self.Bd.to(dtype))

    def read_out(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return self.activation(self.W_m(m.flatten(-2)) + self.W_x(x))

    def forward(self, x: torch.Tensor, lengths=None) -> torch.Tensor:
        """(batch, time, input_size) -> every h_t, (batch, time, hidden_size)."""
        h = self.read_out(x, self.memory(self.encode(x)))
        if lengths is None:
            return h
        return _zero_padding(h, _check_lengths(lengths, x.shape[0], x.shape[1], x.device))

    def step(self, x_t: torch.Tensor, m=None) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of streaming inference: (h_t, m_t) from x_t (batch, input_size) and m_{t-1}."""
        u = self.encode(x_t)
        dtype = torch.promote_types(u.dtype, torch.float32)
        if m is None:
            m = u.new_zeros(x_t.shape[0], self.memory_channels, self.memory_size, dtype=dtype)
        with torch.autocast(u.device.type, enabled=False):
            m = m @ self.Ad.to(dtype).T + u.to(dtype)[..., None] * self.Bd.to(dtype)
        return self.read_out(x_t, m), m

    def recurrent(self, x: torch.Tensor, lengths=None) -> torch.Tensor:
        """``forward`` evaluated as the recurrence, as it runs at inference."""
        h = self.read_out(x, self.memory_recurrent(self.encode(x)))
        if lengths is None:
            return h
        return _zero_padding(h, _check_lengths(lengths, x.shape[0], x.shape[1], x.device))

    def _spectrum(self, n: int, device, dtype) -> torch.Tensor:
        key = (n, device, dtype)
        if key not in self._spectra:
            # From the buffers, so the FFT path follows the same Ad and Bd as the recurrence.
            Ad = self.Ad.detach().to("cpu", torch.float64).numpy()
            Bd = self.Bd.detach().to("cpu", torch.float64).numpy()
            H = torch.from_numpy(impulse_response(Ad, Bd, n // 2)).T  # (d, n/2)
            self._spectra[key] = torch.fft.rfft(H, n=n).to(device, dtype.to_complex())
        return self._spectra[key]
