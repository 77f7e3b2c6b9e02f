"""Transcripts as CTC targets: a 29-symbol alphabet, greedy decoding and error counts.

Index 0 is the CTC blank, 1 the space, 2 the apostrophe, 3..28 the letters a..z. Text is
normalised before it is encoded (lowercase, only ``[a-z' ]``, single spaces), so LibriSpeech's
uppercase transcripts and free-form audiofolder captions map onto the same symbols.
"""

from __future__ import annotations

import re

import numpy as np

BLANK = 0
ALPHABET = ("<blank>", " ", "'", *"abcdefghijklmnopqrstuvwxyz")
NUM_SYMBOLS = len(ALPHABET)  # 29
_INDEX = {symbol: i for i, symbol in enumerate(ALPHABET) if i != BLANK}
_DROPPED = re.compile(r"[^a-z' ]+")
_SPACES = re.compile(r" +")


def normalize(text: str) -> str:
    """Lowercase, ``[a-z' ]`` only, single spaces, no leading or trailing space.

    Any other character (punctuation, digits, hyphens, accented letters) becomes a space, so
    ``"to-morrow"`` is two words rather than one invented one.
    """
    return _SPACES.sub(" ", _DROPPED.sub(" ", text.lower())).strip()


def encode(text: str) -> np.ndarray:
    """The normalised text as symbol indices (int64, never the blank)."""
    return np.fromiter((_INDEX[c] for c in normalize(text)), dtype=np.int64)


def decode(ids) -> str:
    """Symbol indices back to text; blanks are skipped."""
    return "".join(ALPHABET[i] for i in np.asarray(ids, dtype=np.int64).ravel().tolist() if i != BLANK)


def greedy_ctc_decode(log_probs, lengths=None) -> list[np.ndarray]:
    """Best-path decoding: argmax per frame, collapse repeats, drop blanks.

    ``log_probs``: (T, C) for one utterance or (B, T, C) for a batch (numpy or torch; scores of
    any monotone kind work, only the argmax is used); ``lengths`` (B,) counts each utterance's
    valid frames (all T when omitted). Always returns a list of int64 id arrays, one per
    utterance (a list of one for a (T, C) input).
    """
    if hasattr(log_probs, "detach"):  # a torch tensor, possibly on a GPU: argmax there, copy ids only
        best = log_probs.detach().argmax(-1).cpu().numpy()
    else:
        best = np.asarray(log_probs).argmax(-1)
    if best.ndim == 1:
        best = best[None]
    if lengths is None:
        lengths = np.full(len(best), best.shape[1])
    elif hasattr(lengths, "detach"):
        lengths = lengths.detach().cpu().numpy()
    out = []
    for path, length in zip(best, np.asarray(lengths).tolist()):
        path = path[:length].astype(np.int64)
        keep = np.ones(len(path), dtype=bool)
        keep[1:] = path[1:] != path[:-1]
        path = path[keep]
        out.append(path[path != BLANK])
    return out


def error_counts(refs: list[str], hyps: list[str]) -> tuple[int, int, int, int]:
    """``(char_edits, ref_chars, word_edits, ref_words)`` summed over the pairs.

    Counts, not rates, so that batches and ranks can be summed before dividing (CER =
    char_edits / ref_chars). Both sides are normalised first; spaces count as characters, as in
    ``jiwer.cer``. Empty hypotheses (all deletions) and empty references (all insertions) work.
    """
    import jiwer

    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if not refs:
        return 0, 0, 0, 0
    refs = [normalize(r) for r in refs]
    hyps = [normalize(h) for h in hyps]
    chars = jiwer.process_characters(refs, hyps)
    words = jiwer.process_words(refs, hyps)
    return (chars.substitutions + chars.deletions + chars.insertions,
            chars.hits + chars.substitutions + chars.deletions,
            words.substitutions + words.deletions + words.insertions,
            words.hits + words.substitutions + words.deletions)
