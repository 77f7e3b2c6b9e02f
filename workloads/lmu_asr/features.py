"""Log-mel features, per-utterance normalisation, SpecAugment and frame stacking.

Features are 80 log-mel bands every 10 ms from 16 kHz audio: ``torch.stft`` with a 512-point
FFT over 25 ms (400-sample) periodic Hann windows, an HTK mel filterbank from 0 to 8 kHz
(unnormalised triangles, as torchaudio's ``melscale_fbanks(norm=None, mel_scale="htk")``) on
the power spectrum, then ``log(x + 1e-6)``. torchaudio is not used: it does not import with this
torch.

``center=True`` (reflect padding): frame t is centred on sample 160 t, an utterance of N samples
has ``1 + N // 160`` frames, and the last samples get a whole window rather than being cut off,
the convention of Whisper, torchaudio and librosa.
"""

from __future__ import annotations

import math

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 512
WIN_LENGTH = 400
HOP_LENGTH = 160
N_MELS = 80
F_MIN = 0.0
F_MAX = 8000.0
LOG_FLOOR = 1e-6
# reflect padding needs more samples than it pads; shorter clips are zero-padded to this first
MIN_SAMPLES = N_FFT // 2 + 1

FEATURE_PARAMS = {"sample_rate": SAMPLE_RATE, "n_fft": N_FFT, "win_length": WIN_LENGTH,
                  "hop_length": HOP_LENGTH, "n_mels": N_MELS, "f_min": F_MIN, "f_max": F_MAX,
                  "window": "hann-periodic", "center": True, "power": 2.0, "log_floor": LOG_FLOOR,
                  "mel_scale": "htk"}


def hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_freqs: int = N_FFT // 2 + 1, n_mels: int = N_MELS, sample_rate: int = SAMPLE_RATE,
                   f_min: float = F_MIN, f_max: float = F_MAX) -> np.ndarray:
    """HTK triangular filters, (n_freqs, n_mels) float32: filter m rises linearly from the
    frequency of mel point m to 1 at point m + 1 and falls to 0 at point m + 2, the
    ``n_mels + 2`` points evenly spaced in mel between ``f_min`` and ``f_max``."""
    freqs = np.linspace(0.0, sample_rate / 2, n_freqs)
    points = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    lower, centre, upper = points[:-2], points[1:-1], points[2:]
    rising = (freqs[:, None] - lower) / (centre - lower)
    falling = (upper - freqs[:, None]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


_FILTERBANK = None


def num_frames(num_samples: int) -> int:
    """Frames ``log_mel`` gives for a clip of ``num_samples`` samples."""
    return 1 + max(int(num_samples), MIN_SAMPLES) // HOP_LENGTH


def log_mel(waveform: np.ndarray) -> np.ndarray:
    """(T, 80) float32 log-mel features of a mono 16 kHz waveform (floats in [-1, 1])."""
    import torch

    global _FILTERBANK
    if _FILTERBANK is None:
        _FILTERBANK = torch.from_numpy(mel_filterbank())
    wave = torch.as_tensor(np.asarray(waveform, dtype=np.float32))
    if wave.ndim != 1:
        raise ValueError(f"log_mel takes one mono waveform, got shape {tuple(wave.shape)}")
    if len(wave) < MIN_SAMPLES:
        wave = torch.nn.functional.pad(wave, (0, MIN_SAMPLES - len(wave)))
    spec = torch.stft(wave, n_fft=N_FFT, hop_length=HOP_LENGTH, win_length=WIN_LENGTH,
                      window=torch.hann_window(WIN_LENGTH), center=True, pad_mode="reflect",
                      return_complex=True)
    power = spec.real.square() + spec.imag.square()  # (freqs, T)
    return torch.log(power.T @ _FILTERBANK + LOG_FLOOR).numpy()


def normalize_utterance(features: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Each band to zero mean and unit variance over the utterance's frames (float32 copy):
    removes the channel (voice, gain) as far as a per-band offset and scale can."""
    features = np.asarray(features, dtype=np.float32)
    mean = features.mean(axis=0, keepdims=True)
    std = features.std(axis=0, keepdims=True)
    return (features - mean) / (std + eps)


def spec_augment(features: np.ndarray, rng: np.random.Generator, freq_masks: int = 2, freq_width: int = 27,
                 time_masks: int = 2, time_width_ratio: float = 0.05, max_time_width: int | None = None,
                 mask_value: float = 0.0) -> np.ndarray:
    """SpecAugment without time warping (Park et al. 2019; time widths relative to the utterance
    as in Park et al. 2020): ``freq_masks`` bands of width uniform in [0, freq_width] and
    ``time_masks`` spans of width uniform in [0, time_width_ratio * T] (capped by
    ``max_time_width``) set to ``mask_value`` (0 = the mean after ``normalize_utterance``).

    For training only; the masks depend only on ``rng``, so a sample whose generator is seeded
    by its index always gets the same ones. Returns a copy.
    """
    out = np.array(features, dtype=np.float32, copy=True)
    frames, bands = out.shape
    for _ in range(freq_masks):
        width = int(rng.integers(0, min(freq_width, bands) + 1))
        start = int(rng.integers(0, bands - width + 1))
        out[:, start:start + width] = mask_value
    limit = int(time_width_ratio * frames)
    if max_time_width is not None:
        limit = min(limit, max_time_width)
    for _ in range(time_masks):
        width = int(rng.integers(0, limit + 1))
        start = int(rng.integers(0, frames - width + 1))
        out[start:start + width] = mask_value
    return out


def stacked_length(length, stack: int):
    """``ceil(length / stack)``: frames left after ``stack_frames`` (ints or int arrays)."""
    return -(-length // stack)


def stack_frames(features: np.ndarray, stack: int) -> np.ndarray:
    """(T, F) -> (ceil(T / stack), F * stack): each output frame is ``stack`` consecutive input
    frames side by side; the last one is zero-padded when T is not a multiple of ``stack``."""
    if stack == 1:
        return features
    frames, bands = features.shape
    out_frames = math.ceil(frames / stack)
    padded = np.zeros((out_frames * stack, bands), dtype=features.dtype)
    padded[:frames] = features
    return padded.reshape(out_frames, stack * bands)
