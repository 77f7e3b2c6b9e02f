"""The lmu_asr workload: speech recognition with a Legendre Memory Unit encoder and a CTC head.

Architecture (``workloads/lmu_asr/model.py``): 80-band log-mel frames (16 kHz, 25 ms window,
10 ms hop; ``features.py``), normalised per utterance, SpecAugment while training, optionally
``frame_stack`` frames stacked into one step (``80 x frame_stack`` features, ``frame_stack``
times fewer steps); a linear input projection to ``hidden_dim``; ``num_layers`` pre-norm
residual blocks ``x + dropout(LMU(LayerNorm(x)))`` whose LMU is the recurrent cell (``encoder=
"lmu"``, any length, Voelker et al. 2019) or the parallel LMUFFT (``"lmufft"``, Chilkuri and
Eliasmith 2021) with a memory of order ``memory_dim`` over a window of ``theta`` steps
(``bidirectional``: half the width reads the utterance backwards); a final LayerNorm and a linear
head over 29 symbols (CTC blank, space, apostrophe, a-z; ``text.py``), trained with CTC and
decoded greedily.

Budget and accounting: D is **10 ms input frames** (before stacking) of training audio, the
``tokens_processed`` column; ``train_hours`` of audio is the budget, turned into optimizer steps
with the training subset's mean utterance duration (``mean_utterance_s``: known for the synthetic
``speech`` corpus, to be given for a directory). N is every trained parameter; the "embedding"
parameters (left out of non-embedding N) are the input projection and the head, the two layers
whose size follows the features and the alphabet rather than the width. ``ctc_loss`` (also the
standard ``loss``) is nn.CTCLoss's ``mean``: per target symbol, averaged over utterances.

Data (``dataset``): ``"speech"`` is a corpus synthesised here with espeak-ng (``speech.py``,
``speech_train_utterances`` + ``speech_dev_utterances``, subsets ``train``/``dev``); otherwise a
directory in LibriSpeech layout or an audio folder with ``metadata.csv`` (``audio.py``), with
``train_subset`` / ``val_subset`` (LibriSpeech: ``train-clean-100`` / ``dev-clean``).
"""

from __future__ import annotations

import dataclasses
import math

from orchestrator.errors import UsageError, unknown
from orchestrator.spec import ExperimentSpec, make_spec, register_workload

ENCODERS = ("lmu", "lmufft")
N_MELS = 80
NUM_SYMBOLS = 29
FRAMES_PER_S = 100  # 10 ms hop
SPEECH_DATASET = "speech"
# the mean training utterance of the synthetic corpus (default builder, seed 0; measured by
# tests/test_lmu_asr.py against the built corpus): 2.508 s
SPEECH_MEAN_UTTERANCE_S = 2.508
DEFAULT_LAYERS = 4
# ExperimentSpec fields a speech model does not have (text windows, vocabularies, muP, token budgets)
TEXT_FIELDS = frozenset({"seq_length", "vocab_size", "tie_embeddings", "use_mup", "mup_base_width", "train_tokens",
                         "tokens_per_param", "sources"})


def lmu_layer_params(input_size: int, hidden_size: int, memory_size: int, memory_channels: int, fft: bool) -> int:
    """One LMU layer (``workloads/lmu_asr/lmu.py``): encoders e_x (and, recurrent, e_h, e_m) without
    bias, W_x, W_m (and W_h) and one hidden bias; the fixed A, B are buffers."""
    c, n, h, d = memory_channels, input_size, hidden_size, memory_size
    if fft:
        return c * n + h * (n + c * d) + h
    return c * (n + h + c * d) + h * (n + h + c * d) + h


@register_workload("lmu_asr")
@dataclasses.dataclass(frozen=True, init=False)
class LMUASRSpec(ExperimentSpec):
    hidden_dim: int = 512
    memory_dim: int = 256
    memory_channels: int = 1
    theta: float | None = None  # memory window in encoder steps; None: one second of audio
    encoder: str = "lmufft"
    bidirectional: bool = False
    frame_stack: int = 1
    dropout: float = 0.1
    spec_augment: bool = True
    freq_masks: int = 2
    freq_mask_bands: int = 27
    time_masks: int = 2
    time_mask_ratio: float = 0.05
    dataset: str = SPEECH_DATASET
    train_subset: str | None = None
    val_subset: str | None = None
    speech_train_utterances: int = 1000
    speech_dev_utterances: int = 200
    max_frames: int | None = None  # training utterances longer than this (10 ms frames) are left out
    train_hours: float = dataclasses.field(default=None)  # required: D, hours of audio trained on
    mean_utterance_s: float | None = None

    trainer = "workloads.lmu_asr.train:main"
    omitted_fields = TEXT_FIELDS
    loss_name = "ctc_loss"
    eval_columns = ("val_cer", "val_wer")

    def _resolve(self) -> None:
        def put(name, value):
            object.__setattr__(self, name, value)

        self._resolve_names(put)
        for name in ("version", "hidden_dim", "memory_dim", "memory_channels", "frame_stack",
                     "target_effective_batch_size", "eval_batches", "log_interval_steps",
                     "checkpoint_interval_steps", "train_hours", "speech_train_utterances", "speech_dev_utterances"):
            if not getattr(self, name) > 0:
                raise UsageError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("num_layers", "theta", "warmup_steps", "eval_interval_steps", "max_frames", "mean_utterance_s"):
            value = getattr(self, name)
            if value is not None and not (value > 0 or (name == "warmup_steps" and value == 0)):
                raise UsageError(f"{name} must be > 0, got {value!r}")
        for name in ("dropout", "time_mask_ratio"):
            if not 0 <= getattr(self, name) < 1:
                raise UsageError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        for name in ("freq_masks", "freq_mask_bands", "time_masks"):
            if getattr(self, name) < 0:
                raise UsageError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.freq_mask_bands > N_MELS:
            raise UsageError(f"freq_mask_bands must be at most {N_MELS}, got {self.freq_mask_bands}")
        if self.encoder not in ENCODERS:
            raise unknown("encoder", self.encoder, ENCODERS)
        if self.bidirectional and self.hidden_dim % 2:
            raise UsageError(f"a bidirectional encoder splits hidden_dim in two directions: it must be even, "
                             f"got {self.hidden_dim}")
        self._check_optimisation()
        if self.fsdp != "none":
            raise UsageError(f"lmu_asr trains with DDP (fsdp='none'); got fsdp={self.fsdp!r}")

        if self.num_layers is None:
            put("num_layers", DEFAULT_LAYERS)
        if self.theta is None:
            put("theta", FRAMES_PER_S / self.frame_stack)
        speech = self.dataset == SPEECH_DATASET
        if not speech and "/" not in self.dataset:
            raise UsageError(f"lmu_asr's dataset is {SPEECH_DATASET!r} (synthetic speech) or a directory (a path "
                             f"with a '/') in LibriSpeech layout or with a metadata.csv, got {self.dataset!r}")
        if self.train_subset is None:
            put("train_subset", "train" if speech else "train-clean-100")
        if self.val_subset is None:
            put("val_subset", "dev" if speech else "dev-clean")
        if self.mean_utterance_s is None:
            if not speech:
                raise UsageError(f"give mean_utterance_s for dataset {self.dataset!r}: the mean duration in seconds "
                                 f"of {self.train_subset}'s utterances (12.7 for LibriSpeech train-clean-100), which "
                                 f"turns train_hours into optimizer steps")
            put("mean_utterance_s", SPEECH_MEAN_UTTERANCE_S)

        self._resolve_schedule_and_resources(put)

    # ------------------------------------------------------------------- sizes
    @property
    def input_size(self) -> int:
        return N_MELS * self.frame_stack

    def param_counts(self) -> tuple[int, int]:
        h, fft = self.hidden_dim, self.encoder == "lmufft"
        directions = 2 if self.bidirectional else 1
        layer = directions * lmu_layer_params(h, h // directions, self.memory_dim, self.memory_channels, fft) + 2 * h
        embedding = (self.input_size + 1) * h + (h + 1) * NUM_SYMBOLS
        return embedding + self.num_layers * layer + 2 * h, embedding

    @property
    def tokens_per_sample(self) -> float:
        """Mean 10 ms frames of a training utterance."""
        return self.mean_utterance_s * FRAMES_PER_S

    @property
    def tokens_per_step(self) -> int:
        return round(self.target_effective_batch_size * self.tokens_per_sample)

    @property
    def optimizer_steps(self) -> int:
        return max(1, math.ceil(self.train_hours * 3600 / (self.target_effective_batch_size * self.mean_utterance_s)))

    @property
    def tokens(self) -> int:
        """Planned D: frames of the planned steps at the mean utterance length (the CSV has the real count)."""
        return self.optimizer_steps * self.tokens_per_step

    def flops_per_token(self) -> float:
        """6 N per encoder step, of which there is one per ``frame_stack`` input frames (D's unit);
        the LMUFFT's convolution (O(T log T) per memory) is left out."""
        return 6.0 * self.total_params / self.frame_stack

    def activation_bytes_per_sample(self, dtype_bytes: int) -> float:
        """A rough peak for the planner: an utterance of 3x the mean length; per layer the block's
        input, norm, memory (kept in fp32 for the FFT, twice as complex spectra) and output."""
        steps = 3 * self.tokens_per_sample / self.frame_stack
        h, memory = self.hidden_dim, self.memory_dim * self.memory_channels * (2 if self.bidirectional else 1)
        per_layer = steps * (4 * h * dtype_bytes + memory * 4 * 3)
        return self.num_layers * per_layer + steps * (self.input_size * 4 + NUM_SYMBOLS * (dtype_bytes + 8))


def gen_lmu_asr_experim(hidden_dim: int = 512, label: str | None = None, folder_name: str | None = None,
                        **fields) -> list[ExperimentSpec]:
    """One speech experiment, as a one-element list like ``gen_experim``."""
    if label is None:
        raise UsageError("experiment field 'label' is required")
    return [make_spec("lmu_asr", hidden_dim=hidden_dim, label=label, folder_name=folder_name, **fields)]


__all__ = ["LMUASRSpec", "gen_lmu_asr_experim", "lmu_layer_params"]
