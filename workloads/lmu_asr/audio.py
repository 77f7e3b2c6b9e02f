"""Speech data for every ASR run: corpus -> log-mel features (cached on disk) -> batches.

- Sources: a LibriSpeech-layout directory (``<root>/<subset>/<speaker>/<chapter>/`` holding
  ``*.flac``/``*.wav`` and ``<speaker>-<chapter>.trans.txt`` lines ``ID TRANSCRIPT``; the
  synthetic ``speech`` corpus has this layout), or a Hugging Face audiofolder subset
  (``<root>/<subset>/metadata.csv`` with ``file_name`` and ``transcription`` columns, file names
  relative to the csv). Utterances are ordered by id; an audiofolder utterance's id is its file
  name without the extension. Audio is decoded with soundfile (no torchcodec, which ``datasets``
  5.x would need to decode audio itself); it must be 16 kHz (other rates are refused, not
  resampled); several channels are averaged.
- Cache: one directory per (subset's audio files and transcripts, feature parameters) under
  ``$ORCHESTRATOR_DATA_CACHE/asr/``: ``features.npy`` (all frames of all utterances
  concatenated, float16, (frames, 80)), ``frame_offsets.npy``, ``targets.npy`` (encoded
  transcripts concatenated, uint8), ``target_offsets.npy``, ``num_samples.npy`` and
  ``meta.json``, written in a temporary directory and renamed into place (``meta.json`` last).
  The features are written straight into a memory-mapped file, utterance by utterance, by
  ``datasets.Dataset.map`` workers, and read back memory-mapped: LibriSpeech's 100 hours (36M
  frames, 5.8 GB at float16) never have to fit in memory. A cache that fails its shape checks is
  rebuilt. Raw log-mels are cached; per-utterance normalisation, SpecAugment and stacking happen
  per batch, so they are not part of the key.
- Batches: sample i of the infinite training stream depends only on (seed, i): epoch i // n
  visits the utterances in a seeded permutation, sorted by length (times a random factor
  within +-5 %) within blocks of ``BUCKET`` positions, whose ``CHUNK``-sized pieces are then put
  in a seeded order. Consecutive samples thus have similar lengths (little padding for batches
  of up to ``CHUNK``; less than unsorted batches above that), and a resumed run, or any split
  into micro-batches and ranks, sees the same samples. SpecAugment's masks come from a
  generator seeded by (seed, i), so a sample always gets the same ones.
- CTC cannot align an utterance with fewer (stacked) frames than its targets need (one per
  symbol plus one blank between repeated symbols): such training utterances are dropped when the
  data is loaded (``stack`` is a load-time choice) and counted in ``SpeechData.dropped``. The
  validation set keeps every utterance, so it is the same set whatever ``stack`` is.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import inspect
import json
import math
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orchestrator.errors import UsageError
from workloads.lmu_asr import features as F
from workloads.lmu_asr.text import decode, encode

ASR_CACHE_FORMAT = 1
FEATURE_DTYPE = np.float16  # log-mels lie in [-14, 20]: float16's step there is < 0.016, far below a band's spread
AUDIO_SUFFIXES = (".flac", ".wav")
DEFAULT_AUGMENT = {"freq_masks": 2, "freq_width": 27, "time_masks": 2, "time_width_ratio": 0.05}
AUGMENT_KEYS = tuple(name for name in inspect.signature(F.spec_augment).parameters if name not in ("features", "rng"))
MAP_BATCH = 32  # utterances per datasets.map call while building a cache
_PERMUTATION, _AUGMENT = 0, 1  # keys the two random streams apart: [seed, stream, epoch or sample]


@dataclass(frozen=True)
class Utterance:
    id: str
    path: Path
    transcript: str


# ------------------------------------------------------------------------- sources
def list_utterances(root: Path, subset: str) -> list[Utterance]:
    """A subset's utterances, by id, from a LibriSpeech-layout tree or an audiofolder."""
    root = Path(root).expanduser()
    directory = root / subset
    if not directory.is_dir():
        known = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise UsageError(f"no subset {subset!r} in {root}; known: {', '.join(known) or '(none)'}")
    if (directory / "metadata.csv").is_file():
        utterances = _audiofolder(directory / "metadata.csv")
    else:
        utterances = _librispeech(directory)
    if not utterances:
        raise UsageError(f"{directory} holds no utterances: expected a metadata.csv (audiofolder) or "
                         f"<speaker>/<chapter>/*.trans.txt (LibriSpeech layout)")
    ids = [u.id for u in utterances]
    if len(set(ids)) != len(ids):
        twice = sorted({i for i in ids if ids.count(i) > 1})[:3]
        raise UsageError(f"{directory}: utterance ids occur twice: {', '.join(twice)}")
    return sorted(utterances, key=lambda u: u.id)


def _librispeech(directory: Path) -> list[Utterance]:
    utterances = []
    for listing in sorted(directory.rglob("*.trans.txt")):
        for number, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            uid, _, transcript = line.strip().partition(" ")
            audio = [listing.parent / f"{uid}{suffix}" for suffix in AUDIO_SUFFIXES]
            found = [p for p in audio if p.is_file()]
            if not found:
                raise UsageError(f"{listing}:{number}: no audio for {uid!r} "
                                 f"(looked for {', '.join(p.name for p in audio)})")
            utterances.append(Utterance(uid, found[0], transcript))
    return utterances


def _audiofolder(metadata: Path) -> list[Utterance]:
    # csv, not datasets.load_dataset("csv"): it would write an Arrow copy of a small file to read it once
    with open(metadata, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        text_column = next((c for c in ("transcription", "text", "sentence") if c in columns), None)
        if "file_name" not in columns or text_column is None:
            raise UsageError(f"{metadata} needs the columns file_name and transcription; it has {', '.join(columns)}")
        utterances = []
        for row in reader:
            path = metadata.parent / row["file_name"]
            if not path.is_file():
                raise UsageError(f"{metadata}: {row['file_name']} does not exist")
            name = Path(row["file_name"]).name
            utterances.append(Utterance(name[:-len(Path(name).suffix)] if Path(name).suffix else name, path,
                                        row[text_column]))
    return utterances


# -------------------------------------------------------------------- feature cache
class FeatureSet:
    """One subset's cached features and targets, memory-mapped."""

    FILES = ("features.npy", "frame_offsets.npy", "targets.npy", "target_offsets.npy", "num_samples.npy")

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.meta = json.loads((self.directory / "meta.json").read_text())
        arrays = {name: np.load(self.directory / name, mmap_mode="r") for name in self.FILES}
        self.feats = arrays["features.npy"]
        self.frame_offsets = np.asarray(arrays["frame_offsets.npy"])
        self.targets = np.asarray(arrays["targets.npy"])
        self.target_offsets = np.asarray(arrays["target_offsets.npy"])
        self.num_samples = np.asarray(arrays["num_samples.npy"])
        self.ids = self.meta["ids"]
        n = len(self.ids)
        if (len(self.frame_offsets) != n + 1 or len(self.target_offsets) != n + 1 or len(self.num_samples) != n
                or self.feats.shape != (self.frame_offsets[-1], F.N_MELS)
                or self.targets.shape != (self.target_offsets[-1],)):
            raise ValueError(f"inconsistent feature cache {self.directory}")
        self.lengths = np.diff(self.frame_offsets)
        self.target_lengths = np.diff(self.target_offsets)

    def __len__(self) -> int:
        return len(self.ids)

    def features(self, i: int) -> np.ndarray:
        return np.asarray(self.feats[self.frame_offsets[i]:self.frame_offsets[i + 1]], dtype=np.float32)

    def target(self, i: int) -> np.ndarray:
        return self.targets[self.target_offsets[i]:self.target_offsets[i + 1]].astype(np.int64)


def cache_root(cache: Path | None = None) -> Path:
    from workloads.data import cache_dir

    return Path(cache or cache_dir()) / "asr"


def load_features(root: Path, subset: str, cache: Path | None = None) -> FeatureSet:
    """The subset's features, computed on first use (and again if the cache is damaged)."""
    utterances = list_utterances(root, subset)
    stats = [[str(u.path.resolve()), u.path.stat().st_size, u.path.stat().st_mtime_ns] for u in utterances]
    texts = hashlib.sha256("".join(f"{u.id}\t{u.transcript}\n" for u in utterances).encode()).hexdigest()
    key = json.dumps({"format": ASR_CACHE_FORMAT, "features": F.FEATURE_PARAMS,
                      "dtype": np.dtype(FEATURE_DTYPE).name, "files": stats, "transcripts": texts}, sort_keys=True)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{Path(root).name}.{subset}")
    final = cache_root(cache) / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    found = _open(final)
    if found is not None:
        return found
    final.parent.mkdir(parents=True, exist_ok=True)
    with _lock(final.parent / f".{final.name}.lock"):
        found = _open(final)  # built by another process while this one waited
        if found is None:
            _build(utterances, final)
            found = FeatureSet(final)
    return found


def _open(directory: Path) -> FeatureSet | None:
    if not (directory / "meta.json").is_file():
        return None
    try:
        return FeatureSet(directory)
    except (OSError, ValueError, KeyError):  # torn or tampered with: rebuild
        return None


@contextlib.contextmanager
def _lock(path: Path):
    """One builder per cache entry at a time (ranks of one run all ask for it); the others wait
    and then find it built. Without a working flock (some network file systems) each builds its
    own copy and the renames keep one, which is still correct."""
    import fcntl

    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:
            pass
        yield


def _build(utterances: list[Utterance], final: Path) -> None:
    import soundfile

    num_samples = np.empty(len(utterances), dtype=np.int64)
    for k, u in enumerate(utterances):
        try:
            info = soundfile.info(str(u.path))
        except (RuntimeError, soundfile.LibsndfileError) as exc:
            raise UsageError(f"cannot read {u.path}: {exc}") from None
        if info.samplerate != F.SAMPLE_RATE:
            raise UsageError(f"{u.path} is sampled at {info.samplerate} Hz; lmu_asr reads {F.SAMPLE_RATE} Hz audio "
                             f"(convert it, e.g. sox in.flac -r {F.SAMPLE_RATE} out.flac)")
        num_samples[k] = info.frames
    frames = np.array([F.num_frames(n) for n in num_samples], dtype=np.int64)
    frame_offsets = np.concatenate([[0], np.cumsum(frames)])
    encoded = [encode(u.transcript) for u in utterances]
    target_offsets = np.concatenate([[0], np.cumsum([len(t) for t in encoded], dtype=np.int64)])

    tmp = final.parent / f".{final.name}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir(parents=True)
    try:
        np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=FEATURE_DTYPE,
                                  shape=(int(frame_offsets[-1]), F.N_MELS)).flush()
        _compute_features([str(u.path) for u in utterances], frame_offsets, tmp / "features.npy")
        np.save(tmp / "frame_offsets.npy", frame_offsets)
        np.save(tmp / "targets.npy", np.concatenate([np.zeros(0, np.uint8)] + [t.astype(np.uint8) for t in encoded]))
        np.save(tmp / "target_offsets.npy", target_offsets)
        np.save(tmp / "num_samples.npy", num_samples)
        meta = {"format": ASR_CACHE_FORMAT, "features": F.FEATURE_PARAMS, "dtype": np.dtype(FEATURE_DTYPE).name,
                "ids": [u.id for u in utterances], "source": str(utterances[0].path.parent),
                "hours": round(float(num_samples.sum()) / F.SAMPLE_RATE / 3600, 3)}
        (tmp / "meta.json").write_text(json.dumps(meta))
        for name in (*FeatureSet.FILES, "meta.json"):  # on disk before the rename makes them visible
            with open(tmp / name, "rb+") as handle:
                os.fsync(handle.fileno())
        if final.exists():  # a damaged copy: move it aside first, rename cannot replace a full directory
            old = final.parent / f".{final.name}.{secrets.token_hex(4)}.old"
            os.rename(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _featurize(batch: dict, features_path: str, in_worker: bool) -> dict:
    """datasets.map function: decode, compute and write one batch of utterances' log-mels."""
    import soundfile

    if in_worker:  # a forked worker: one thread each, the processes are the parallelism
        import torch

        torch.set_num_threads(1)
    out = np.load(features_path, mmap_mode="r+")
    for path, start, stop in zip(batch["path"], batch["start"], batch["stop"]):
        wave, _ = soundfile.read(path, dtype="float32", always_2d=True)
        mel = F.log_mel(wave.mean(axis=1))
        if len(mel) != stop - start:
            raise RuntimeError(f"{path}: {len(mel)} frames, expected {stop - start} (did the file change?)")
        out[start:stop] = mel
    out.flush()
    return {"frames": [stop - start for start, stop in zip(batch["start"], batch["stop"])]}


def _compute_features(paths: list[str], offsets: np.ndarray, features_path: Path) -> None:
    import datasets

    table = datasets.Dataset.from_dict({"path": paths, "start": offsets[:-1], "stop": offsets[1:]})
    datasets.disable_progress_bars()  # a job's log is no terminal: one line says what is built
    print(f"lmu_asr: computing log-mel features of {len(paths)} utterances into {features_path.parent}", flush=True)
    procs = min(len(os.sched_getaffinity(0)), math.ceil(len(paths) / (4 * MAP_BATCH)))
    table.map(_featurize, batched=True, batch_size=MAP_BATCH, num_proc=procs if procs > 1 else None,
              fn_kwargs={"features_path": str(features_path), "in_worker": procs > 1},
              remove_columns=table.column_names, keep_in_memory=True, load_from_cache_file=False,
              desc="log-mel features")


# ------------------------------------------------------------------------ batches
@dataclass
class SpeechBatch:
    """Padded arrays of ``len(batch)`` utterances (features after normalisation, augmentation and
    stacking). ``frames`` is what the batch adds to D: its 10 ms input frames before stacking,
    padding excluded. ``utterances``: each sample's index in its subset (ids: ``FeatureSet.ids``)."""

    features: np.ndarray  # float32 (B, T_max, 80 * stack)
    feature_lengths: np.ndarray  # int64 (B,), stacked frames
    targets: np.ndarray  # int64 (B, L_max), padded with 0 (the blank)
    target_lengths: np.ndarray  # int64 (B,)
    frames: int
    utterances: np.ndarray  # int64 (B,)

    def __len__(self) -> int:
        return len(self.feature_lengths)

    def transcripts(self) -> list[str]:
        return [decode(t[:n]) for t, n in zip(self.targets, self.target_lengths)]


def ctc_min_frames(targets: np.ndarray, target_offsets: np.ndarray) -> np.ndarray:
    """Frames CTC needs per utterance: one per symbol plus a blank between equal neighbours."""
    repeats = np.zeros(len(target_offsets) - 1, dtype=np.int64)
    if len(targets) > 1:
        same = np.flatnonzero(targets[1:] == targets[:-1])  # pair (k, k+1), k+1 in the same utterance?
        owner = np.searchsorted(target_offsets, same + 1, side="right") - 1
        inside = same >= target_offsets[owner]
        np.add.at(repeats, owner[inside], 1)
    return np.diff(target_offsets) + repeats


class SpeechData:
    """Training stream and validation set of one corpus, addressed reproducibly (see the module)."""

    BUCKET = 512  # positions sorted by length together
    CHUNK = 64  # pieces of a block shuffled as units: batches up to this size stay in one piece
    # lengths are compared after a random factor of exp(+-JITTER), so that an epoch's batches are
    # not the same groups again when a whole corpus fits in one block. On the 1,000-utterance
    # synthetic corpus, batches of 8: padding 4.4 % (26 % unsorted, 1 % at JITTER 0) and 5 % of
    # the pairs batched together in one epoch meet again in the next (27 % at JITTER 0).
    JITTER = 0.05

    def __init__(self, train: FeatureSet, val: FeatureSet, *, seed: int, stack: int = 1,
                 augment: dict | None = DEFAULT_AUGMENT, max_frames: int | None = None):
        if stack < 1:
            raise UsageError(f"stack must be >= 1, got {stack}")
        unknown = sorted(set(augment or ()) - set(AUGMENT_KEYS))
        if unknown:
            raise UsageError(f"unknown augment option {unknown[0]!r}; known: {', '.join(AUGMENT_KEYS)}")
        self.train, self.val, self.seed, self.stack = train, val, seed, stack
        self.augment = dict(augment) if augment is not None else None
        fits = F.stacked_length(train.lengths, stack) >= ctc_min_frames(train.targets, train.target_offsets)
        short_enough = train.lengths <= max_frames if max_frames is not None else np.ones(len(train), bool)
        self.train_rows = np.flatnonzero(fits & short_enough)
        self.dropped = {"ctc_too_few_frames": int((~fits).sum()),
                        "longer_than_max_frames": int((fits & ~short_enough).sum())}
        val_fits = F.stacked_length(val.lengths, stack) >= ctc_min_frames(val.targets, val.target_offsets)
        self.val_unalignable = int((~val_fits).sum())  # kept: the validation set never depends on stack
        if not len(self.train_rows):
            raise UsageError(f"no training utterance is left (of {len(train)}): dropped {self.dropped}")
        if any(self.dropped.values()):
            print(f"lmu_asr: training on {len(self.train_rows)} of {len(train)} utterances; dropped "
                  + ", ".join(f"{v} ({k})" for k, v in self.dropped.items() if v), flush=True)
        self._lengths = train.lengths[self.train_rows]
        self._orders: dict[int, np.ndarray] = {}

    @classmethod
    def for_source(cls, root, train_subset: str, val_subset: str, *, seed: int, stack: int = 1,
                   augment: dict | None = DEFAULT_AUGMENT, max_frames: int | None = None,
                   cache: Path | None = None) -> "SpeechData":
        """``augment``: spec_augment's options (missing ones take its defaults; ``{}``: all its
        defaults); None turns SpecAugment off.
        ``max_frames``: training utterances longer than this many 10 ms frames are left out."""
        return cls(load_features(root, train_subset, cache), load_features(root, val_subset, cache),
                   seed=seed, stack=stack, augment=augment, max_frames=max_frames)

    # what the training loop asks of the data
    @property
    def num_train(self) -> int:
        return len(self.train_rows)

    @property
    def num_val(self) -> int:
        return len(self.val)

    @property
    def feature_dim(self) -> int:
        return F.N_MELS * self.stack

    @property
    def mean_utterance_s(self) -> float:
        return float(self.train.num_samples[self.train_rows].mean()) / F.SAMPLE_RATE

    @staticmethod
    def inputs(batch: SpeechBatch, device) -> tuple:
        import torch

        return tuple(torch.from_numpy(a).to(device, non_blocking=True) for a in
                     (batch.features, batch.feature_lengths, batch.targets, batch.target_lengths))

    @staticmethod
    def units(batch: SpeechBatch) -> int:
        return batch.frames

    def _order(self, epoch: int) -> np.ndarray:
        """Epoch ``epoch``'s visiting order: rows of ``train_rows``' lengths, bucketed."""
        if epoch not in self._orders:
            if len(self._orders) > 1:  # a batch spans at most two epochs
                self._orders.pop(min(self._orders))
            rng = np.random.default_rng([self.seed, _PERMUTATION, epoch])
            perm = rng.permutation(len(self._lengths))
            keys = np.log(np.maximum(self._lengths[perm], 1)) + rng.uniform(-self.JITTER, self.JITTER, len(perm))
            for start in range(0, len(perm), self.BUCKET):
                block = perm[start:start + self.BUCKET]
                block = block[np.argsort(keys[start:start + self.BUCKET], kind="stable")]
                pieces = [block[k:k + self.CHUNK] for k in range(0, len(block), self.CHUNK)]
                perm[start:start + self.BUCKET] = np.concatenate([pieces[k] for k in rng.permutation(len(pieces))])
            self._orders[epoch] = perm
        return self._orders[epoch]

    def train_utterances(self, samples) -> np.ndarray:
        """The training utterances (indices into the train subset) at these stream positions."""
        samples = np.asarray(samples, dtype=np.int64)
        epochs, positions = np.divmod(samples, len(self.train_rows))
        rows = np.empty_like(samples)
        for epoch in np.unique(epochs):
            here = epochs == epoch
            rows[here] = self._order(int(epoch))[positions[here]]
        return self.train_rows[rows]

    def train_batch(self, first_sample: int, count: int) -> SpeechBatch:
        """Samples ``first_sample .. first_sample + count - 1`` of the training stream."""
        samples = np.arange(first_sample, first_sample + count)
        rngs = ([np.random.default_rng([self.seed, _AUGMENT, int(i)]) for i in samples]
                if self.augment is not None else [None] * count)
        return self._collate(self.train, self.train_utterances(samples), rngs)

    def val_batches(self, num_utterances: int | None, batch_size: int, rank: int = 0, world_size: int = 1):
        """This rank's share of a fixed validation set (all utterances, or ``num_utterances``
        spread evenly over the subset), sorted by length; no augmentation."""
        n = len(self.val)
        count = n if num_utterances is None else min(num_utterances, n)
        chosen = np.unique(np.linspace(0, n - 1, count).round().astype(np.int64))
        chosen = chosen[np.argsort(self.val.lengths[chosen], kind="stable")]
        mine = chosen[rank::world_size]
        for i in range(0, len(mine), batch_size):
            rows = mine[i:i + batch_size]
            yield self._collate(self.val, rows, [None] * len(rows))

    def _collate(self, subset: FeatureSet, rows: np.ndarray, rngs: list) -> SpeechBatch:
        feats, targets = [], []
        for row, rng in zip(rows.tolist(), rngs):
            x = F.normalize_utterance(subset.features(row))
            if rng is not None:
                x = F.spec_augment(x, rng, **self.augment)
            feats.append(F.stack_frames(x, self.stack))
            targets.append(subset.target(row))
        lengths = np.array([len(x) for x in feats], dtype=np.int64)
        target_lengths = np.array([len(t) for t in targets], dtype=np.int64)
        batch = np.zeros((len(rows), lengths.max(initial=0), self.feature_dim), dtype=np.float32)
        padded = np.zeros((len(rows), target_lengths.max(initial=0)), dtype=np.int64)
        for k, (x, t) in enumerate(zip(feats, targets)):
            batch[k, :len(x)] = x
            padded[k, :len(t)] = t
        return SpeechBatch(batch, lengths, padded, target_lengths, int(subset.lengths[rows].sum()),
                           np.asarray(rows, dtype=np.int64))
