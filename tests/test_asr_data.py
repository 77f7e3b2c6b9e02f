"""Speech data for lmu_asr: text, features, the synthetic corpus, the feature cache and batches."""

import csv
import math
import os
import re
import shutil

import numpy as np
import pytest

from orchestrator.errors import UsageError
from workloads.lmu_asr import audio, features, speech
from workloads.lmu_asr.audio import SpeechData, list_utterances, load_features
from workloads.lmu_asr.text import ALPHABET, decode, encode, error_counts, greedy_ctc_decode, normalize

NUM_TRAIN, NUM_DEV = 32, 8


# ------------------------------------------------------------------------------ text
def test_alphabet_is_blank_space_apostrophe_then_letters():
    assert len(ALPHABET) == 29
    assert ALPHABET[:4] == ("<blank>", " ", "'", "a") and ALPHABET[-1] == "z"


def test_text_is_normalised_and_round_trips():
    assert normalize("  O, Romeo!  'Tis   TO-MORROW 3 times ") == "o romeo 'tis to morrow times"
    ids = encode("Don't STOP")
    assert ids.dtype == np.int64 and ids.tolist() == [6, 17, 16, 2, 22, 1, 21, 22, 17, 18]
    assert decode(ids) == "don't stop"


def test_greedy_ctc_decode_collapses_repeats_and_drops_blanks():
    a, b, c = (ALPHABET.index(x) for x in "abc")
    path = [a, a, 0, a, b, b, 0, 0, c]
    log_probs = np.log(np.full((len(path), 29), 0.01))
    log_probs[np.arange(len(path)), path] = 0.0
    assert decode(greedy_ctc_decode(log_probs)[0]) == "aabc"

    torch = pytest.importorskip("torch")
    batch = torch.from_numpy(np.stack([log_probs, log_probs]))
    first, second = greedy_ctc_decode(batch, torch.tensor([9, 4]))
    assert decode(first) == "aabc" and decode(second) == "aa"


def _edit_distance(ref, hyp) -> int:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def test_error_counts_are_sums_of_plain_edit_distances():
    rng = np.random.default_rng(0)
    words = ["to", "be", "or", "not", "the", "question", "a"]
    refs = [" ".join(rng.choice(words, rng.integers(1, 8))) for _ in range(30)] + ["", "to be"]
    hyps = [" ".join(rng.choice(words, rng.integers(0, 8))) for _ in range(30)] + ["not", ""]
    expected = (sum(_edit_distance(r, h) for r, h in zip(refs, hyps)), sum(len(r) for r in refs),
                sum(_edit_distance(r.split(), h.split()) for r, h in zip(refs, hyps)),
                sum(len(r.split()) for r in refs))
    assert error_counts(refs, hyps) == expected
    assert error_counts([], []) == (0, 0, 0, 0)


# -------------------------------------------------------------------------- features
def test_mel_filterbank_matches_the_htk_formula():
    def mel(hz):
        return 2595 * math.log10(1 + hz / 700)

    def hz(m):
        return 700 * (10 ** (m / 2595) - 1)

    top = mel(8000)
    points = [hz(top * i / 81) for i in range(82)]
    expected = np.zeros((257, 80))
    for m in range(80):
        lo, mid, hi = points[m:m + 3]
        for k in range(257):
            f = k * 16000 / 512
            if lo < f <= mid:
                expected[k, m] = (f - lo) / (mid - lo)
            elif mid < f < hi:
                expected[k, m] = (hi - f) / (hi - mid)
    bank = features.mel_filterbank()
    assert bank.shape == (257, 80) and bank.dtype == np.float32
    np.testing.assert_allclose(bank, expected, atol=1e-6)
    assert abs(features.hz_to_mel(1000.0) - 1000.0) < 0.02  # 1000 Hz is about 1000 mel on the HTK scale
    assert (bank.max(axis=0) > 0).all()  # no empty band


def test_log_mel_has_one_frame_per_10_ms_and_peaks_at_the_tone():
    t = np.arange(16000) / 16000
    mel = features.log_mel(0.5 * np.sin(2 * np.pi * 1000 * t))
    assert mel.shape == (101, 80) and mel.dtype == np.float32
    centres = features.mel_to_hz(np.linspace(0, features.hz_to_mel(8000), 82))[1:-1]
    assert abs(centres[np.median(mel.argmax(axis=1)).astype(int)] - 1000) < 60
    for n in (100, 256, 257, 1599, 1600, 48001):
        assert len(features.log_mel(np.zeros(n))) == features.num_frames(n)
    assert features.num_frames(1600) == 11


def test_spec_augment_is_deterministic_given_the_generator():
    x = np.random.default_rng(0).normal(size=(300, 80)).astype(np.float32)
    kept = x.copy()
    one = features.spec_augment(x, np.random.default_rng(7))
    np.testing.assert_array_equal(one, features.spec_augment(x, np.random.default_rng(7)))
    assert not np.array_equal(one, features.spec_augment(x, np.random.default_rng(8)))
    np.testing.assert_array_equal(x, kept)  # the input is left alone
    masked = one == 0  # whole bands and whole spans of frames, nothing else
    assert masked.any() and (masked == (masked.all(axis=0)[None, :] | masked.all(axis=1)[:, None])).all()


def test_stack_frames_concatenates_neighbours_and_rounds_lengths_up():
    x = np.arange(7 * 2, dtype=np.float32).reshape(7, 2)
    stacked = features.stack_frames(x, 3)
    assert stacked.shape == (3, 6)
    np.testing.assert_array_equal(stacked[0], x[0:3].ravel())
    np.testing.assert_array_equal(stacked[2], [12, 13, 0, 0, 0, 0])
    assert features.stacked_length(7, 3) == 3
    np.testing.assert_array_equal(features.stacked_length(np.array([1, 3, 4, 6]), 3), [1, 1, 2, 2])
    assert features.stack_frames(x, 1) is x


# ------------------------------------------------------------------- synthetic corpus
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small synthetic corpus, built once for this module."""
    if (shutil.which("espeak-ng") is None or shutil.which("sox") is None) and os.environ.get("CI") != "true":
        pytest.skip(f"needs espeak-ng and sox: {speech.TOOLS_INSTALL}")
    return speech.build_speech_corpus(NUM_TRAIN, NUM_DEV, seed=0, cache=tmp_path_factory.mktemp("speech"))


def test_missing_synthesis_tools_are_named_with_their_packages(monkeypatch, tmp_path):
    monkeypatch.setattr(speech.shutil, "which", lambda tool: None)
    with pytest.raises(UsageError, match="apt-get install -y espeak-ng sox libsox-fmt-all"):
        speech.build_speech_corpus(2, 1, cache=tmp_path)


def test_synthetic_corpus_is_in_librispeech_layout(corpus):
    import soundfile

    manifest = speech.load_manifest(corpus)
    assert len(manifest["utterances"]) == NUM_TRAIN + NUM_DEV
    for subset, count in (("train", NUM_TRAIN), ("dev", NUM_DEV)):
        flacs = sorted((corpus / subset).glob("*/*/*.flac"))
        assert len(flacs) == count
        for flac in flacs:
            speaker, chapter = flac.parent.parent.name, flac.parent.name
            assert re.fullmatch(rf"{speaker}-{chapter}-\d{{4}}\.flac", flac.name)
            info = soundfile.info(str(flac))
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        for listing in (corpus / subset).glob("*/*/*.trans.txt"):
            for line in listing.read_text().splitlines():
                uid, text = line.split(" ", 1)
                assert (listing.parent / f"{uid}.flac").is_file() and re.fullmatch(r"[A-Z' ]+", text)
    train = {u.transcript for u in list_utterances(corpus, "train")}
    dev = {u.transcript for u in list_utterances(corpus, "dev")}
    assert len(train) == NUM_TRAIN and not train & dev  # different sentences
    assert all(4 <= len(t.split()) <= 9 and len(t) <= 60 for t in train | dev)
    assert all(u["duration_s"] > 0.5 for u in manifest["utterances"])


def test_synthetic_corpus_is_the_same_bytes_with_the_same_seed(corpus, tmp_path):
    again = speech.build_speech_corpus(NUM_TRAIN, NUM_DEV, seed=0, cache=tmp_path)
    assert again.name == corpus.name
    files = sorted(p.relative_to(corpus) for p in corpus.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((corpus / f).read_bytes() == (again / f).read_bytes() for f in files)
    assert speech.build_speech_corpus(NUM_TRAIN, NUM_DEV, seed=0, cache=tmp_path) == again  # cached


# ---------------------------------------------------------------------- feature cache
def test_feature_cache_is_reused_and_a_torn_one_rebuilt(corpus, tmp_path, monkeypatch):
    first = load_features(corpus, "dev", tmp_path)
    assert first.directory.parent == tmp_path / "asr" and len(first) == NUM_DEV
    reference = np.array(first.feats)
    build = audio._build
    monkeypatch.setattr(audio, "_build", lambda *args: pytest.fail("the cache was built twice"))
    again = load_features(corpus, "dev", tmp_path)
    assert again.directory == first.directory

    with open(first.directory / "features.npy", "r+b") as handle:  # a half-written file
        handle.truncate(os.path.getsize(first.directory / "features.npy") // 2)
    calls = []
    monkeypatch.setattr(audio, "_build", lambda *args: calls.append(1) or build(*args))
    rebuilt = load_features(corpus, "dev", tmp_path)
    assert calls == [1]
    np.testing.assert_array_equal(np.array(rebuilt.feats), reference)


def test_cached_features_are_the_log_mels_of_the_audio(corpus, tmp_path):
    import soundfile

    cached = load_features(corpus, "dev", tmp_path)
    first = list_utterances(corpus, "dev")[0]
    wave, rate = soundfile.read(str(first.path), dtype="float32")
    expected = features.log_mel(wave)
    assert rate == 16000 and cached.ids[0] == first.id
    np.testing.assert_allclose(cached.features(0), expected, atol=0.02)  # float16 storage
    assert decode(cached.target(0)) == normalize(first.transcript)


def test_audio_at_another_rate_is_refused(tmp_path):
    import soundfile

    chapter = tmp_path / "corpus" / "train" / "1" / "1"
    chapter.mkdir(parents=True)
    soundfile.write(str(chapter / "1-1-0000.flac"), np.zeros(8000, dtype=np.float32), 8000)
    (chapter / "1-1.trans.txt").write_text("1-1-0000 HELLO\n")
    with pytest.raises(UsageError, match="8000 Hz; lmu_asr reads 16000 Hz"):
        load_features(tmp_path / "corpus", "train", tmp_path / "cache")


def test_audiofolder_loads_the_same_utterances_as_the_librispeech_layout(corpus, tmp_path):
    folder = tmp_path / "af" / "dev"
    folder.mkdir(parents=True)
    with open(folder / "metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "transcription"])
        for u in reversed(list_utterances(corpus, "dev")):
            shutil.copy(u.path, folder / u.path.name)
            writer.writerow([u.path.name, u.transcript.lower()])
    ls, af = load_features(corpus, "dev", tmp_path / "cache"), load_features(tmp_path / "af", "dev", tmp_path / "cache")
    assert ls.directory != af.directory and ls.ids == af.ids
    np.testing.assert_array_equal(np.array(ls.feats), np.array(af.feats))
    np.testing.assert_array_equal(ls.targets, af.targets)


# --------------------------------------------------------------------------- batches
@pytest.fixture(scope="module")
def asr_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("asr-cache")


def _data(corpus, cache, **kwargs):
    return SpeechData.for_source(corpus, "train", "dev", cache=cache, **{"seed": 0, **kwargs})


def _samples(batch):
    return [(batch.features[k, :n].tobytes(), batch.targets[k, :m].tobytes())
            for k, (n, m) in enumerate(zip(batch.feature_lengths, batch.target_lengths))]


def test_train_samples_depend_only_on_seed_and_index(corpus, asr_cache):
    a, b = _data(corpus, asr_cache), _data(corpus, asr_cache)
    forward = [s for first in range(0, 80, 8) for s in _samples(a.train_batch(first, 8))]  # 2.5 epochs
    backward = [s for i in reversed(range(80)) for s in _samples(b.train_batch(i, 1))][::-1]
    assert forward == backward
    other = _data(corpus, asr_cache, seed=1)
    assert [s for s in _samples(other.train_batch(0, 8))] != forward[:8]


def test_each_epoch_visits_every_training_utterance_once(corpus, asr_cache):
    data = _data(corpus, asr_cache)
    assert data.num_train == NUM_TRAIN and data.feature_dim == 80
    for epoch in range(3):
        seen = data.train_utterances(np.arange(epoch * NUM_TRAIN, (epoch + 1) * NUM_TRAIN))
        assert sorted(seen.tolist()) == list(range(NUM_TRAIN))


def test_batch_holds_padded_features_targets_and_input_frames(corpus, asr_cache):
    data = _data(corpus, asr_cache, stack=3)
    batch = data.train_batch(5, 4)
    assert len(batch) == 4 and batch.features.dtype == np.float32
    assert batch.features.shape == (4, batch.feature_lengths.max(), 240)
    raw = data.train.lengths[batch.utterances]
    np.testing.assert_array_equal(batch.feature_lengths, -(-raw // 3))
    assert batch.frames == raw.sum() == data.units(batch)
    assert batch.targets.dtype == np.int64 and batch.targets.shape == (4, batch.target_lengths.max())
    assert batch.transcripts() == [decode(data.train.target(u)) for u in batch.utterances]
    features_t, lengths_t, targets_t, target_lengths_t = data.inputs(batch, "cpu")
    assert tuple(features_t.shape) == batch.features.shape and str(lengths_t.dtype) == "torch.int64"
    durations = [u["duration_s"] for u in speech.load_manifest(corpus)["utterances"] if u["subset"] == "train"]
    assert data.mean_utterance_s == pytest.approx(np.mean(durations), abs=1e-3)


def test_consecutive_samples_have_similar_lengths(corpus, asr_cache):
    data = _data(corpus, asr_cache, augment=None)
    rng = np.random.default_rng(0)

    def padding(lengths):  # padded frames / real frames, over batches of 4
        groups = lengths.reshape(-1, 4)
        return (groups.max(axis=1) * 4).sum() / groups.sum() - 1

    bucketed = padding(data.train.lengths[data.train_utterances(np.arange(4 * NUM_TRAIN))])
    shuffled = np.mean([padding(rng.permutation(data.train.lengths)) for _ in range(20)])
    assert bucketed < 0.5 * shuffled


def test_spec_augment_applies_to_training_batches_only(corpus, asr_cache):
    plain, augmented = _data(corpus, asr_cache, augment=None), _data(corpus, asr_cache)
    assert not np.array_equal(plain.train_batch(0, 4).features, augmented.train_batch(0, 4).features)
    for x, y in zip(plain.val_batches(None, 3), augmented.val_batches(None, 3)):
        np.testing.assert_array_equal(x.features, y.features)
    with pytest.raises(UsageError, match="unknown augment option 'freq_mask'; known: freq_masks"):
        _data(corpus, asr_cache, augment={"freq_mask": 1})


def test_validation_set_is_fixed_and_split_by_rank(corpus, asr_cache):
    data = _data(corpus, asr_cache)
    everything = [u for b in data.val_batches(None, 3) for u in b.utterances.tolist()]
    assert sorted(everything) == list(range(NUM_DEV))
    lengths = data.val.lengths[everything]
    assert (np.diff(lengths) >= 0).all()  # sorted by length: little padding
    shares = [[u for b in data.val_batches(None, 2, rank, 3) for u in b.utterances.tolist()] for rank in range(3)]
    assert sorted(sum(shares, [])) == sorted(everything) and sum(map(len, shares)) == NUM_DEV
    assert [u for b in _data(corpus, asr_cache, seed=5).val_batches(None, 3) for u in b.utterances] == everything
    assert len({u for b in data.val_batches(5, 2) for u in b.utterances.tolist()}) == 5


def test_utterances_ctc_cannot_align_are_dropped_from_training(corpus, asr_cache):
    train = load_features(corpus, "train", asr_cache)
    needed = audio.ctc_min_frames(train.targets, train.target_offsets)
    # the least stacking at which some utterances have fewer frames than CTC needs
    stack = next(s for s in range(2, 50) if (-(-train.lengths // s) < needed).any())
    fits = -(-train.lengths // stack) >= needed
    data = _data(corpus, asr_cache, stack=stack)
    assert data.dropped["ctc_too_few_frames"] == (~fits).sum() > 0
    assert data.num_train == fits.sum()
    assert set(data.train_utterances(np.arange(3 * data.num_train)).tolist()) == set(np.flatnonzero(fits).tolist())
    assert audio.ctc_min_frames(np.array([3, 3, 4, 5, 5, 5]), np.array([0, 1, 4, 6])).tolist() == [1, 3, 3]
