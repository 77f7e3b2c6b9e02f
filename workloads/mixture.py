"""Sources mixed by weight, as in Meta's lingua: which source each training sample comes from.

A spec with ``sources={"fineweb_edu": 100.0, "code": 25.0}`` trains on ``dataset/<source>/
*.jsonl(.gz)``; each sample is drawn from source s with probability w_s / sum(w). As for a
single corpus, sample i depends only on (seed, i), never on what was asked before, so a resumed
run, and any split of a step into ranks and micro-batches, sees the same samples.

Which source (``Schedule``): the stream is cut into blocks of B samples (a power of two, at
least 1024 and at least 1 / the smallest share). With sources in name order and C_s the
cumulative share of sources 0..s, the first n samples hold exactly

    c_s(n) = floor(n C_s) - floor(n C_{s-1})

samples of source s at every block boundary n = bB (exact rational arithmetic: no rounding
drift however long the run). That is within one sample of n w_s / sum(w), and c_s grows by at
least 0 per block because B w_s / sum(w) >= 1. Block b holds c_s((b+1)B) - c_s(bB) samples of
each source, in an order drawn from ``default_rng([seed, MIX_STREAM, b])``. So proportions are
exact at block edges and, inside a block, off by a draw without replacement from B samples
(a few samples, not growing with the run); independent draws would be off by
sqrt(n p (1 - p)): 40 samples (0.4 %) after 10 k samples at 80:20, and growing.

Which window: sample i is the k-th sample of its source, k = c_s(bB) + (samples of s before
i in block b), a closed form. The source's own ``TokenData`` maps k to a window exactly as a
single corpus would, with epochs and permutations keyed by (seed, source name): a small source
repeats (a fresh permutation each epoch) while a large one does not, and neither changes the
other's order. Validation: each source's held-out tail, ``num_sequences`` shared out by the
same counts.
"""

from __future__ import annotations

import hashlib
import itertools
from fractions import Fraction
from pathlib import Path

import numpy as np

from orchestrator.errors import UsageError
from orchestrator.spec import source_shards
from workloads.data import TokenBatches, TokenData, get_tokenizer, load_source_tokens

MIN_BLOCK = 1024
MIX_STREAM = 0x6D6978  # "mix": keys the block orders apart from the sources' permutations
CACHED_BLOCKS = 4
SOURCE_SHIFT = 40  # an example id is source << 40 | window: 10^12 windows per source


def stream_key(name: str) -> int:
    """A source's permutation key: from its name, so adding a source changes no other's order."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")


class Schedule:
    """Sample index -> (source number, index within that source), from the weights and seed."""

    def __init__(self, weights: list[float], seed: int):
        total = sum(Fraction(w) for w in weights)
        shares = [Fraction(w) / total for w in weights]
        self.cumulative = list(itertools.accumulate(shares))
        self.block = MIN_BLOCK
        while self.block * min(shares) < 1:
            self.block *= 2
        self.seed = seed
        self._blocks: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def counts(self, n: int) -> np.ndarray:
        """c_s(n): samples of each source among the first n, at a block edge (sums to n)."""
        edges = [0] + [(n * c.numerator) // c.denominator for c in self.cumulative]
        return np.diff(np.asarray(edges, dtype=np.int64))

    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        if b not in self._blocks:
            if len(self._blocks) >= CACHED_BLOCKS:
                self._blocks.pop(next(iter(self._blocks)))
            before = self.counts(b * self.block)
            here = self.counts((b + 1) * self.block) - before
            order = np.random.default_rng([self.seed, MIX_STREAM, b]).permutation(
                np.repeat(np.arange(len(here)), here))
            within = np.empty(self.block, dtype=np.int64)
            for s in range(len(here)):
                at = np.flatnonzero(order == s)
                within[at] = before[s] + np.arange(len(at))
            self._blocks[b] = order, within
        return self._blocks[b]

    def assign(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(source, index within the source) of each sample index."""
        blocks, offsets = np.divmod(np.asarray(samples, dtype=np.int64), self.block)
        sources, within = np.empty_like(blocks), np.empty_like(blocks)
        for b in np.unique(blocks):
            order, index = self._block(int(b))
            here = blocks == b
            sources[here], within[here] = order[offsets[here]], index[offsets[here]]
        return sources, within


class MixtureData(TokenBatches):
    """``TokenData``'s batch methods over several sources mixed by weight."""

    def __init__(self, sources: dict[str, TokenData], weights: dict[str, float], seed: int):
        self.names = sorted(weights)
        self.sources = [sources[name] for name in self.names]
        self.seq_length = self.sources[0].seq_length
        self.schedule = Schedule([weights[name] for name in self.names], seed)

    @classmethod
    def for_spec(cls, spec, cache: Path | None = None) -> MixtureData:
        root = Path(spec.dataset).expanduser()
        if not root.is_dir():
            raise UsageError(f"dataset directory {spec.dataset!r} does not exist (or is not a directory)")
        tokenizer = get_tokenizer(spec)
        data = {}
        for name, shards in source_shards(root, spec.sources).items():
            tokens = load_source_tokens(root, name, shards, tokenizer, cache)
            try:
                data[name] = TokenData(tokens, spec.seq_length, spec.seed, stream=(stream_key(name),))
            except UsageError as exc:
                raise UsageError(f"source {name!r}: {exc}") from None
        return cls(data, spec.sources, spec.seed)

    def _gather(self, sources: np.ndarray, rows) -> np.ndarray:
        out = np.empty((len(sources), self.seq_length + 1), dtype=np.int64)
        for s in np.unique(sources):
            here = sources == s
            out[here] = rows(self.sources[s], here)
        return out

    def train_batch(self, first_sample: int, batch_size: int) -> np.ndarray:
        """Samples ``first_sample .. first_sample + batch_size - 1`` of the mixed stream, (B, T+1)."""
        sources, within = self.schedule.assign(np.arange(first_sample, first_sample + batch_size))
        return self._gather(sources, lambda data, here: data.train_samples(within[here]))

    def example_ids(self, first_sample: int, batch_size: int) -> np.ndarray:
        """The example of each sample: ``source << SOURCE_SHIFT | window`` within that source."""
        sources, within = self.schedule.assign(np.arange(first_sample, first_sample + batch_size))
        ids = np.empty(batch_size, dtype=np.int64)
        for s in np.unique(sources):
            here = sources == s
            ids[here] = (int(s) << SOURCE_SHIFT) | self.sources[s].window_ids(within[here])
        return ids

    def examples(self, example_ids) -> np.ndarray:
        ids = np.asarray(example_ids, dtype=np.int64)
        sources, windows = ids >> SOURCE_SHIFT, ids & ((1 << SOURCE_SHIFT) - 1)
        return self._gather(sources, lambda data, here: data.examples(windows[here]))

    def val_batches(self, num_sequences: int, batch_size: int, rank: int = 0, world_size: int = 1):
        """A fixed validation set: ``num_sequences`` windows shared out by the weights, each
        source's spread over its held-out tail (repeating windows where a tail is shorter than
        its share, so the weights hold); this rank's share."""
        sources, windows = [], []
        for s, (data, count) in enumerate(zip(self.sources, self.schedule.counts(num_sequences))):
            sources.append(np.full(count, s))
            windows.append(np.linspace(0, data.val_windows - 1, count).round().astype(np.int64))
        sources, windows = np.concatenate(sources)[rank::world_size], np.concatenate(windows)[rank::world_size]
        for i in range(0, len(sources), batch_size):
            part = windows[i:i + batch_size]
            yield self._gather(sources[i:i + batch_size], lambda data, here: data._windows(data.val, part[here]))
