"""Sources mixed by weight: shards -> per-source token caches -> a schedule addressed by sample index."""

import gzip
import json
import tracemalloc

import numpy as np
import pytest

from orchestrator.errors import UsageError
from orchestrator.spec import make_spec
from workloads import data
from workloads.data import ByteTokenizer, TokenData, load_source_tokens
from workloads.mixture import MixtureData, Schedule

SEQ = 8  # records are 9 bytes ("A0000012\n"): every window of 9 tokens holds one source letter


def write_source(root, name, letter, records, shards=1, gz=False):
    """``records`` records ``<letter><number:07d>`` in ``shards`` jsonl files under root/name."""
    folder = root / name
    folder.mkdir(parents=True)
    lines = [json.dumps({"text": f"{letter}{i:07d}", "id": i}) + "\n" for i in range(records)]
    per = -(-records // shards)
    for n in range(shards):
        text = "".join(lines[n * per:(n + 1) * per])
        if gz:
            (folder / f"part_{n:03d}.jsonl.gz").write_bytes(gzip.compress(text.encode()))
        else:
            (folder / f"part_{n:03d}.jsonl").write_text(text)
    return folder


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCHESTRATOR_DATA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def mixture(root, sources, seed=0):
    spec = make_spec("transformer", hidden_dim=32, label="mix", partition="local", seq_length=SEQ,
                     train_tokens=10_000, seed=seed, dataset=str(root), sources=sources)
    return TokenData.for_spec(spec)


def letters(rows):
    """The source letter of each row (the one uppercase byte a 9-token window holds)."""
    upper = (rows >= ord("A")) & (rows <= ord("Z"))
    assert (upper.sum(axis=1) == 1).all()
    return [chr(row[mask][0]) for row, mask in zip(rows, upper)]


@pytest.fixture
def corpus(tmp_path, cache):
    root = tmp_path / "root"
    write_source(root, "web", "W", 20_000, shards=3)
    write_source(root, "code", "C", 8_000, shards=2, gz=True)
    write_source(root, "books", "B", 8_000)
    return root


# ------------------------------------------------------------------ reading, cache
def test_a_source_is_its_shards_records_in_order_gzip_included(tmp_path, cache):
    folder = write_source(tmp_path / "root", "code", "C", 10, shards=3, gz=True)
    (folder / "README.md").write_text("not a shard")
    (folder / "part_000.jsonl.gz").write_bytes(gzip.compress(b'{"text": "first"}\n\n{"text": ""}\n'))
    shards = sorted(folder.glob("*.jsonl.gz"))
    tokens = load_source_tokens(tmp_path / "root", "code", shards, ByteTokenizer())
    assert isinstance(tokens, np.memmap)
    assert bytes(tokens) == b"first\n\n" + b"".join(b"C%07d\n" % i for i in range(4, 10))


def test_each_source_is_tokenised_once_and_the_cache_reused(corpus, cache, monkeypatch):
    first = mixture(corpus, {"web": 3, "code": 1})
    assert sorted(p.name.split("-")[0] for p in cache.glob("*.bin")) == ["root.code", "root.web"]
    monkeypatch.setattr(data, "_build_source", lambda *args: pytest.fail("a source was tokenised twice"))
    again = mixture(corpus, {"web": 3, "code": 1})
    np.testing.assert_array_equal(first.train_batch(0, 64), again.train_batch(0, 64))
    assert [p.name for p in cache.iterdir() if p.name.endswith(".tmp")] == []


def test_building_a_source_holds_one_chunk_not_the_corpus(tmp_path, cache):
    folder = tmp_path / "root" / "big"
    folder.mkdir(parents=True)
    text = "x" * 999
    for n in range(4):  # 4 shards of 5 MB
        (folder / f"part_{n}.jsonl").write_text((json.dumps({"text": text}) + "\n") * 5_000)
    tracemalloc.start()
    try:
        tokens = load_source_tokens(tmp_path / "root", "big", sorted(folder.iterdir()), ByteTokenizer())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(tokens) == 20_000 * 1000
    assert peak < 8 * data.SOURCE_CHUNK_CHARS < len(tokens) / 2


@pytest.mark.parametrize("line, message", [
    ('{"text": broken', r"part_000.jsonl:2: not a JSON record"),
    ('{"body": "x"}', r"part_000.jsonl:2: jsonl records need a 'text' string field; found body"),
    ('["text"]', r"part_000.jsonl:2: .*found list"),
])
def test_a_bad_record_is_a_usage_error_naming_its_file_and_line(tmp_path, cache, line, message):
    folder = write_source(tmp_path / "root", "web", "W", 1)
    with open(folder / "part_000.jsonl", "a") as shard:
        shard.write(line + "\n")
    with pytest.raises(UsageError, match=message) as error:
        mixture(tmp_path / "root", {"web": 1})
    assert "\n" not in str(error.value)


def test_a_build_that_fails_midway_leaves_no_torn_cache_and_the_next_is_whole(tmp_path, cache, monkeypatch):
    """A source tokenised chunk by chunk dies after its first chunk (a bad record, a full disk, a
    kill): nothing is left in the cache (no partial .bin, no temp file), and the next start
    tokenises the whole source."""
    folder = write_source(tmp_path / "root", "web", "W", 40, shards=2)
    expected = load_source_tokens(tmp_path / "root", "web", sorted(folder.glob("*.jsonl")), ByteTokenizer(),
                                  tmp_path / "reference")
    monkeypatch.setattr(data, "SOURCE_CHUNK_CHARS", 64)  # several chunks
    real = data._stream_jsonl

    def dies_after_one_chunk(shards, chunk_chars=64):
        chunks = real(shards, chunk_chars)
        yield next(chunks)
        raise OSError("No space left on device")

    monkeypatch.setattr(data, "_stream_jsonl", dies_after_one_chunk)
    with pytest.raises(OSError, match="No space left"):
        mixture(tmp_path / "root", {"web": 1})
    assert list(cache.iterdir()) == []
    monkeypatch.setattr(data, "_stream_jsonl", real)
    rebuilt = mixture(tmp_path / "root", {"web": 1}).sources[0]
    np.testing.assert_array_equal(np.concatenate([rebuilt.train, rebuilt.val]), expected)


def test_a_source_too_small_for_a_sequence_is_named(tmp_path, cache):
    write_source(tmp_path / "root", "web", "W", 1000)
    write_source(tmp_path / "root", "tiny", "T", 1)
    with pytest.raises(UsageError, match="source 'tiny': the corpus has 9 tokens"):
        mixture(tmp_path / "root", {"web": 1, "tiny": 1})


# ------------------------------------------------------------------ the schedule
@pytest.mark.parametrize("weights", [{"web": 100.0, "code": 25.0}, {"web": 3, "code": 1, "books": 1}])
@pytest.mark.parametrize("first", [0, 12_345, 10**9])
def test_sources_are_drawn_in_proportion_to_their_weights(corpus, weights, first):
    rows = mixture(corpus, weights).train_batch(first, 10_000)
    found = letters(rows)
    total = sum(weights.values())
    for name, weight in weights.items():
        share = found.count(name[0].upper()) / len(found)
        assert abs(share - weight / total) < 0.01, (name, share)


def test_source_counts_are_exact_at_every_block_edge_and_never_shrink():
    for weights in ([100, 25], [3, 1, 1], [1, 1e-3, 0.3, 7], [1, 2 ** -19]):
        schedule = Schedule(weights, seed=0)
        shares = np.array(weights) / sum(weights)
        previous = schedule.counts(0)
        for b in range(1, 200):
            counts = schedule.counts(b * schedule.block)
            assert counts.sum() == b * schedule.block and (counts >= previous).all()
            assert (abs(counts - b * schedule.block * shares) < 1).all()
            previous = counts


def test_each_source_index_is_used_once_in_order_of_blocks():
    schedule = Schedule([3, 1, 1], seed=4)
    sources, within = schedule.assign(np.arange(5 * schedule.block + 17))
    for s in range(3):
        np.testing.assert_array_equal(np.sort(within[sources == s]), np.arange((sources == s).sum()))


def step_samples(mix, steps, world, accum, batch):
    """The samples a run with this split reads, by global index (the loop's formula)."""
    effective = world * accum * batch
    seen = {}
    for step in range(1, steps + 1):
        for rank in range(world):
            for micro in range(accum):
                first = (step - 1) * effective + (rank * accum + micro) * batch
                for i, row in enumerate(mix.train_batch(first, batch)):
                    seen[first + i] = row
    return np.stack([seen[i] for i in sorted(seen)])


def test_a_sample_depends_only_on_its_index_not_on_ranks_or_micro_batches(corpus):
    weights = {"web": 100.0, "code": 25.0}
    one_rank = step_samples(mixture(corpus, weights), 300, world=1, accum=1, batch=8)
    for world, accum, batch in [(2, 1, 4), (1, 2, 4), (2, 2, 2), (1, 1, 2400)]:
        np.testing.assert_array_equal(step_samples(mixture(corpus, weights), 2400 // (world * accum * batch),
                                                   world, accum, batch), one_rank)
    assert set(letters(one_rank)) == {"W", "C"}
    other_seed = mixture(corpus, weights, seed=1).train_batch(0, 2400)
    assert letters(other_seed) != letters(one_rank)  # the seed draws the order of sources too


def test_a_resumed_run_sees_the_samples_of_an_uninterrupted_one(corpus):
    weights = {"web": 3, "code": 1, "books": 1}
    uninterrupted = mixture(corpus, weights)
    batches = [uninterrupted.train_batch(first, 64) for first in range(0, 12 * 1024, 64)]
    resumed = mixture(corpus, weights)  # a fresh process: no blocks or permutations cached
    for first in (5_000, 5_056, 64 * 150):  # mid-block, and a batch that straddles two blocks
        np.testing.assert_array_equal(resumed.train_batch(first, 64), np.concatenate(batches)[first:first + 64])


def test_a_small_source_repeats_without_changing_the_big_sources_order(tmp_path, cache):
    one, other = tmp_path / "one", tmp_path / "other"
    for root, small in ((one, 40), (other, 400)):
        write_source(root, "web", "W", 20_000)
        write_source(root, "tiny", "T", small)
    weights = {"web": 4, "tiny": 1}
    a, b = mixture(one, weights), mixture(other, weights)
    rows_a, rows_b = a.train_batch(0, 5_000), b.train_batch(0, 5_000)
    is_web = np.array(letters(rows_a)) == "W"
    np.testing.assert_array_equal(is_web, np.array(letters(rows_b)) == "W")
    np.testing.assert_array_equal(rows_a[is_web], rows_b[is_web])
    assert len({bytes(r) for r in rows_a[is_web]}) == is_web.sum()  # 4 000 of 21 k windows: no repeat

    tiny = rows_a[~is_web]
    windows = a.sources[a.names.index("tiny")].train_windows
    assert len(tiny) > 10 * windows
    assert len({bytes(r) for r in tiny[:windows]}) == windows  # each epoch visits every window once
    assert len({bytes(r) for r in tiny}) == windows
    assert not np.array_equal(tiny[:windows], tiny[windows:2 * windows])  # a fresh order per epoch


# ------------------------------------------------------------------ validation
def test_validation_draws_each_sources_tail_by_the_weights(corpus):
    mix = mixture(corpus, {"web": 100.0, "code": 25.0})
    rows = np.concatenate(list(mix.val_batches(200, 16)))
    assert rows.shape == (200, SEQ + 1)
    found = letters(rows)
    assert (found.count("W"), found.count("C")) == (160, 40)
    for row, letter in zip(rows, found):
        source = mix.sources[mix.names.index({"W": "web", "C": "code"}[letter])]
        assert bytes(row.astype(np.uint8)) in bytes(source.val)
    train = mix.train_batch(0, 5_000)
    assert not {bytes(r) for r in train} & {bytes(r) for r in rows}
    np.testing.assert_array_equal(np.concatenate(list(mix.val_batches(200, 7))), rows)
    ranks = [np.concatenate(list(mix.val_batches(200, 16, rank=r, world_size=2))) for r in (0, 1)]
    assert sorted(map(bytes, np.concatenate(ranks))) == sorted(map(bytes, rows))


def test_for_spec_is_a_mixture_only_with_sources(corpus):
    assert isinstance(mixture(corpus, {"web": 1}), MixtureData)
    plain = make_spec("transformer", hidden_dim=32, label="p", partition="local", seq_length=SEQ,
                      train_tokens=10_000, dataset=str(corpus / "web"))
    assert type(TokenData.for_spec(plain)) is TokenData


def test_a_missing_root_or_source_fails_before_training(tmp_path, corpus):
    spec = make_spec("transformer", hidden_dim=32, label="m", partition="local", seq_length=SEQ,
                     train_tokens=10_000, dataset=str(tmp_path / "elsewhere"), sources={"web": 1})
    with pytest.raises(UsageError, match="does not exist"):
        TokenData.for_spec(spec)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(UsageError, match="unknown source 'web'; known: [(]none[)]"):
        TokenData.for_spec(spec)
