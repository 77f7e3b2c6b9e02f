"""Fine-tuning data and artifacts: record corpora, templates, tokens and their cache, the split,
reproducible padded batches, and the demo, best-model and history files of a run."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from orchestrator.errors import UsageError
from workloads.finetune import artifacts
from workloads.finetune import data
from workloads.finetune.data import RecordData

LYRICS = "Artist: {artist}\nLyrics: {lyrics}\n"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A small byte-level BPE trained on the poems (about a second)."""
    texts = data.rendered_texts("shakespeare_poems", LYRICS)
    return data.train_tokenizer(texts, 384, tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def tiny_lm(tokenizer):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    config = GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                           vocab_size=len(tokenizer), max_position_embeddings=128,
                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return GPTNeoXForCausalLM(config)


def examples_of(*lengths, start=1):
    return [np.arange(start, start + n, dtype=np.uint16) for n in lengths]


# ---------------------------------------------------------------------- corpora
def test_kjv_records_are_verses_with_their_fields():
    records = data.load_records("kjv")
    assert len(records) == 31103
    assert records[0] == {"citation": "Genesis 1:1", "book": "Genesis", "chapter": 1, "verse": 1,
                          "text": "In the beginning God created the heaven and the earth."}
    assert data.render(records[:1], "{citation}: {text}") == [
        "Genesis 1:1: In the beginning God created the heaven and the earth."]


def test_shakespeare_poems_are_sonnets_stanzas_and_songs():
    records = data.load_records("shakespeare_poems")
    assert len(records) == 517 and records == data.load_records("shakespeare_poems")
    assert all(set(r) == {"artist", "title", "lyrics"} and r["lyrics"] for r in records)
    by_artist = {}
    for r in records:
        by_artist.setdefault(r["artist"], []).append(r)
    assert len(by_artist["Sonnets"]) == 154 and len(by_artist["The Rape of Lucrece"]) == 265
    assert len(by_artist["A Lover's Complaint"]) == 47 and len(by_artist["The Passionate Pilgrim"]) == 13
    sonnet = by_artist["Sonnets"][17]
    assert sonnet["title"] == "Sonnet 18"
    assert sonnet["lyrics"].startswith("Shall I compare thee to a summer's day?\n")
    assert sonnet["lyrics"].endswith("So long lives this, and this gives life to thee.")
    assert all(r["lyrics"].count("\n") == 6 for r in by_artist["The Rape of Lucrece"])  # rhyme royal
    songs = {r["title"]: r for r in records if r["artist"] == "As You Like It"}
    assert songs["Under the greenwood tree"]["lyrics"].endswith("But winter and rough weather.")
    text = "\n".join(r["lyrics"] for r in records)
    for header in ("by William Shakespeare", "THE ARGUMENT", "Gutenberg", "SONG", "JAQUES"):
        assert header not in text


def test_render_fills_named_fields_and_missing_values_are_empty():
    records = [{"artist": "A", "lyrics": "la la", "year": 1999}, {"artist": "B", "lyrics": None}]
    assert data.render(records, "{artist} ({year}): {lyrics}") == ["A (1999): la la", "B (): "]
    assert data.template_fields("{a}{b.x}{a}{c[0]:>3}") == ["a", "b", "c"]


def test_a_template_naming_a_missing_field_is_a_one_line_usage_error():
    with pytest.raises(UsageError) as error:
        data.render(data.load_records("shakespeare_poems")[:3], "Artist: {artist}\nSong: {song}\n")
    message = str(error.value)
    assert "'song'" in message and "artist, title, lyrics" in message and "\n" not in message


@pytest.mark.parametrize("template", ["{}", "{0}", "{artist", "}"])
def test_a_template_without_named_fields_is_a_usage_error(template):
    with pytest.raises(UsageError, match="prompt_template"):
        data.template_fields(template)


def test_csv_jsonl_and_parquet_files_load_with_their_fields(tmp_path):
    import datasets

    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "songs.csv").write_text('artist,lyrics\nA,"line one\nline two"\nB,hey\n')
    (tmp_path / "lines.jsonl").write_text('{"artist": "C", "lyrics": "x"}\n{"artist": "D", "lyrics": "y"}\n')
    (tmp_path / "pq").mkdir()
    parquet = datasets.Dataset.from_dict({"artist": ["E"], "lyrics": ["z"], "n": [3]})
    parquet.to_parquet(str(tmp_path / "pq" / "a.parquet"))
    cache = tmp_path / "cache"
    assert data.render(data.load_records(str(tmp_path / "csv"), cache), "{artist}: {lyrics}") == [
        "A: line one\nline two", "B: hey"]
    assert data.render(data.load_records(str(tmp_path / "lines.jsonl"), cache), "{artist}{lyrics}") == ["Cx", "Dy"]
    records = data.load_records(str(tmp_path / "pq"), cache)
    assert records.column_names == ["artist", "lyrics", "n"] and data.render(records, "{artist}{n}") == ["E3"]
    assert (cache / "hf_datasets").is_dir()


def test_a_bad_dataset_path_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="neither a record corpus"):
        data.load_records(str(tmp_path / "missing"))
    (tmp_path / "a.csv").write_text("x\n1\n")
    (tmp_path / "b.jsonl").write_text('{"x": 1}\n')
    with pytest.raises(UsageError, match="mixes csv and json"):
        data.load_records(str(tmp_path))


def test_demo_prompts_are_the_template_up_to_its_last_field():
    records = [{"artist": "A", "lyrics": "x"}, {"artist": "A", "lyrics": "y"}, {"artist": "B", "lyrics": "z"}]
    assert data.prompt_prefix(LYRICS, records[0]) == "Artist: A\nLyrics:"
    assert data.prompt_prefix("{{{artist}}} {lyrics}", records[0]) == "{A}"
    assert data.demo_prompts(records, LYRICS, count=4) == ["Artist: A\nLyrics:", "Artist: B\nLyrics:"]


# ------------------------------------------------------------------------ tokens
def test_trained_tokenizer_round_trips_and_reloads(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    text = "Shall I compare thee to a summer's day?\n  Ünïcode — naïve\t<tab> 1234"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.eos_token == tokenizer.pad_token == tokenizer.bos_token == "<|endoftext|>"
    assert len(tokenizer) == 384
    again = data.train_tokenizer(data.rendered_texts("shakespeare_poems", LYRICS), 384, tmp_path / "again")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "again")
    assert loaded.encode(text) == again.encode(text) == tokenizer.encode(text)
    assert data.tokenizer_fingerprint(loaded) == data.tokenizer_fingerprint(tokenizer)


def test_tokenize_truncates_appends_eos_and_drops_empty_texts(tokenizer):
    eos = tokenizer.eos_token_id
    short, long = "Shall I", "Shall I compare thee to a summer's day? " * 5
    examples = data.tokenize([short, "", long], tokenizer, max_tokens=10)
    assert len(examples) == 2
    assert examples[0].tolist() == tokenizer.encode(short) + [eos]
    assert examples[1].tolist() == tokenizer.encode(long)[:9] + [eos]


def test_token_cache_is_reused_and_a_new_template_is_a_new_entry(tokenizer, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = data.load_examples("shakespeare_poems", LYRICS, tokenizer, 65, cache)
    files = sorted(cache.glob("records-shakespeare_poems-*.npy"))
    assert len(files) == 2 and len(first) == 517 and max(map(len, first)) == 65
    stamps = [f.stat().st_mtime_ns for f in files]
    monkeypatch.setattr(data, "tokenize", lambda *a: pytest.fail("tokenised again"))
    again = data.load_examples("shakespeare_poems", LYRICS, tokenizer, 65, cache)
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert all(np.array_equal(a, b) for a, b in zip(first, again)) and isinstance(again[0], np.memmap)
    monkeypatch.undo()
    data.load_examples("shakespeare_poems", "{title}\n{lyrics}", tokenizer, 65, cache)
    data.load_examples("shakespeare_poems", LYRICS, tokenizer, 33, cache)
    assert len(list(cache.glob("records-shakespeare_poems-*.offsets.npy"))) == 3


def test_token_cache_goes_under_orchestrator_data_cache_and_follows_file_changes(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("ORCHESTRATOR_DATA_CACHE", str(tmp_path / "tokens"))
    corpus = tmp_path / "songs.jsonl"
    corpus.write_text('{"lyrics": "one"}\n{"lyrics": "two"}\n')
    assert len(data.load_examples(str(corpus), "{lyrics}", tokenizer, 8)) == 2
    corpus.write_text('{"lyrics": "one"}\n{"lyrics": "two"}\n{"lyrics": "three"}\n')
    assert len(data.load_examples(str(corpus), "{lyrics}", tokenizer, 8)) == 3
    assert len(list((tmp_path / "tokens").glob("records-songs.jsonl-*.offsets.npy"))) == 2


# ----------------------------------------------------------- split and batches
def test_for_spec_splits_the_examples_disjointly_and_reproducibly(tokenizer, data_cache):
    spec = SimpleNamespace(dataset="shakespeare_poems", prompt_template=LYRICS, seq_length=64, seed=5)
    loaded = RecordData.for_spec(spec, tokenizer, data_cache)
    assert (loaded.n_train, loaded.n_val) == (491, 26)  # 5 % of 517
    train = {bytes(e) for e in loaded.examples}
    val = {bytes(e) for e in loaded.val_examples}
    assert not train & val and len(train) + len(val) == 517  # the poems have no duplicate stanza
    assert loaded.pad_id == tokenizer.pad_token_id
    assert loaded.train_examples_tokens == sum(len(e) for e in loaded.examples)
    again = RecordData.for_spec(spec, tokenizer, data_cache)
    assert {bytes(e) for e in again.val_examples} == val
    other = RecordData.for_spec(SimpleNamespace(**{**vars(spec), "seed": 6}), tokenizer, data_cache)
    assert {bytes(e) for e in other.val_examples} != val


def test_split_holds_out_at_least_one_and_at_most_2000_examples():
    assert [len(v) for _, v in (data.split_indices(n, 0) for n in (2, 10, 100, 100_000))] == [1, 1, 5, 2000]
    train, val = data.split_indices(1000, 0)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(1000))
    with pytest.raises(UsageError, match="too few"):
        data.split_indices(1, 0)


def test_a_corpus_of_one_record_is_a_usage_error(tokenizer, tmp_path):
    corpus = tmp_path / "one.csv"
    corpus.write_text("lyrics\nla\n")
    spec = SimpleNamespace(dataset=str(corpus), prompt_template="{lyrics}", seq_length=16, seed=0)
    with pytest.raises(UsageError, match="1 non-empty record"):
        RecordData.for_spec(spec, tokenizer, tmp_path / "cache")


def test_batches_depend_only_on_seed_and_sample_index():
    examples = examples_of(*range(2, 12))
    loaded = RecordData(examples, examples_of(3), seed=1, pad_id=0)
    whole = loaded.train_batch(0, 30)
    parts = RecordData(examples, examples_of(3), seed=1, pad_id=0).train_batch(17, 5)
    assert all(np.array_equal(a, b) for a, b in zip(whole[17:22], parts))
    ids = loaded.example_ids(0, 30)
    for epoch in range(3):  # every example once per epoch, in a new order each time
        assert sorted(ids[epoch * 10:(epoch + 1) * 10].tolist()) == list(range(10))
    assert ids[:10].tolist() != ids[10:20].tolist()
    assert ids[:10].tolist() == np.random.default_rng([1, 0]).permutation(10).tolist()
    assert RecordData(examples, examples_of(3), seed=2, pad_id=0).example_ids(0, 10).tolist() != ids[:10].tolist()


def test_validation_set_is_fixed_and_shared_out_over_ranks():
    loaded = RecordData(examples_of(4), examples_of(*range(2, 22)), seed=0, pad_id=0)

    def flat(batches):
        return [len(e) for batch in batches for e in batch]

    everything = flat(loaded.val_batches(8, 3))
    assert len(everything) == 8 and everything == flat(loaded.val_batches(8, 5))
    shares = [flat(loaded.val_batches(8, 3, rank, 3)) for rank in range(3)]
    assert sorted(sum(shares, [])) == sorted(everything) and [len(s) for s in shares] == [3, 3, 2]
    assert len(flat(loaded.val_batches(1000, 7))) == 20
    assert [len(b) for b in loaded.val_batches(8, 3)] == [3, 3, 2]


def test_inputs_are_right_padded_with_labels_masked():
    loaded = RecordData(examples_of(4), examples_of(2), seed=0, pad_id=7)
    batch = [np.array([5, 6, 9], dtype=np.uint16), np.array([4], dtype=np.uint16), np.array([1, 2, 3, 8, 9])]
    input_ids, attention_mask, labels = loaded.inputs(batch, "cpu")
    assert input_ids.dtype == labels.dtype == torch.int64
    assert input_ids.tolist() == [[5, 6, 9, 7, 7], [4, 7, 7, 7, 7], [1, 2, 3, 8, 9]]
    assert attention_mask.tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert labels.tolist() == [[5, 6, 9, -100, -100], [4, -100, -100, -100, -100], [1, 2, 3, 8, 9]]
    assert loaded.units(batch) == 2 + 0 + 4


def test_units_count_the_tokens_a_causal_lm_loss_averages_over(tokenizer, tiny_lm):
    examples = data.tokenize(["Shall I compare thee", "to a summer's day?", "Thou"], tokenizer, 64)
    loaded = RecordData(examples, examples[:1], seed=0, pad_id=tokenizer.pad_token_id)
    input_ids, attention_mask, labels = loaded.inputs(examples, "cpu")
    with torch.no_grad():
        output = tiny_lm(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    token_losses = torch.nn.functional.cross_entropy(
        output.logits[:, :-1].reshape(-1, output.logits.shape[-1]), labels[:, 1:].reshape(-1),
        ignore_index=-100, reduction="sum")
    assert (labels[:, 1:] != -100).sum().item() == loaded.units(examples)
    assert torch.allclose(output.loss * loaded.units(examples), token_losses, rtol=1e-5)


# ------------------------------------------------------------------- artifacts
def test_demo_generations_are_greedy_deterministic_and_restore_the_mode(tokenizer, tiny_lm):
    prompts = ["Artist: Sonnets\nLyrics:", "Shall I"]
    tiny_lm.train()
    first = artifacts.demo_generations(tiny_lm, tokenizer, prompts, max_new_tokens=12)
    assert tiny_lm.training
    assert first == artifacts.demo_generations(tiny_lm, tokenizer, prompts, max_new_tokens=12)
    assert [g["prompt"] for g in first] == prompts and all(g["completion"] for g in first)


def test_demo_outputs_and_their_comparison(tmp_path):
    before = [{"prompt": "Shall I", "completion": " eat"}, {"prompt": "O", "completion": " ```x"}]
    after = [{"prompt": "Shall I", "completion": " compare thee"}, {"prompt": "O", "completion": " mistress"}]
    artifacts.write_demo_outputs(tmp_path, "before", before)
    assert not (tmp_path / "demo_outputs" / "comparison.md").exists()
    artifacts.write_demo_outputs(tmp_path, "after", after)
    assert json.loads((tmp_path / "demo_outputs" / "before.json").read_text()) == before
    assert json.loads((tmp_path / "demo_outputs" / "after.json").read_text()) == after
    comparison = (tmp_path / "demo_outputs" / "comparison.md").read_text()
    assert comparison.index("Shall I") < comparison.index(" eat") < comparison.index(" compare thee")
    assert "````text\n ```x\n````" in comparison  # a completion cannot close its fence
    with pytest.raises(ValueError, match="stage"):
        artifacts.write_demo_outputs(tmp_path, "during", before)


def test_save_best_model_replaces_the_previous_one_whole(tokenizer, tiny_lm, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    artifacts.save_best_model(tmp_path, tiny_lm, tokenizer, {"step": 10, "val_loss": 5.0})
    with torch.no_grad():
        for p in tiny_lm.gpt_neox.layers[-1].parameters():
            p.add_(0.01)
    target = artifacts.save_best_model(tmp_path, tiny_lm, tokenizer, {"step": 20, "val_loss": np.float32(4.5)})
    assert target == tmp_path / "best_model"
    assert json.loads((target / "metadata.json").read_text()) == {"step": 20, "val_loss": 4.5}
    assert (target / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_model"]  # no temp or old folder left
    loaded = AutoModelForCausalLM.from_pretrained(target).eval()
    x = torch.tensor([tokenizer.encode("Shall I compare thee")])
    tiny_lm.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, tiny_lm(x).logits)
    assert AutoTokenizer.from_pretrained(target).encode("Shall I") == tokenizer.encode("Shall I")


def test_history_and_summary_are_json_without_nan(tmp_path):
    entries = [{"epoch": 0, "step": 0, "train_loss": float("nan"), "val_loss": 5.0},
               {"epoch": 1.0, "step": 8, "train_loss": np.float32(4.0), "val_loss": 3.5, "learning_rate": 1e-4,
                "samples_per_s": 12.5}]
    artifacts.write_history(tmp_path, entries)
    artifacts.write_summary(tmp_path, {"best_val_loss": 3.5, "steps": 8, "diverged": float("inf")})
    history = json.loads((tmp_path / "training_history.json").read_text())
    assert history[0]["train_loss"] is None and history[1]["train_loss"] == 4.0 and history[1]["step"] == 8
    assert json.loads((tmp_path / "training_summary.json").read_text()) == {
        "best_val_loss": 3.5, "steps": 8, "diverged": None}
