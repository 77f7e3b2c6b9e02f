"""Lingua-style experiments: the lab's lingua configs (``apps/main/train.py config=run.yaml``) as specs.

``lingua_experim`` takes lingua's names (``dim``, ``n_layers``, ``steps``, a *per-GPU*
``batch_size``...) and returns a one-element list of specs, like ``gen_experim``.
``from_lingua_config`` reads a lingua YAML into the same call. Every key of the YAML is
accounted for: it sets a spec field, or it is checked and listed as ignored (it changes
nothing we compute: logging, profiling, prefetching...), or it is an error (a typo, or a
value we cannot honour: another tokenizer, tensor parallelism, grouped-query attention).

The SwiGLU hidden size is lingua's (``lingua_ffn_hidden``: ``int(8d/3)``, times
``ffn_dim_multiplier``, rounded up to ``multiple_of``; 1536 at d=512), set as the spec's
``mlp_hidden_dim``, so the parameter count is lingua's but for the two rows below.

What stays different from lingua's LMTransformer, whatever the config says:
- vocabulary 256, not 258: lingua's bytes tokenizer adds BOS (256) and EOS (257) to every
  document; our byte data has no document markers (``data.add_bos``/``add_eos`` are listed).
  That is 2d parameters fewer in the token embedding and 2d fewer again in the untied output
  head (lingua's default): 27,533,824 here for lingua's 27,535,872 at d=512, 8 layers.
- LayerNorm without bias, not RMSNorm (the same parameter count); untruncated normal init
  at 1/sqrt(fan_in) (``init_std=None``: lingua's dim^-0.5 and hidden^-0.5, except the
  token embedding, 1/sqrt(vocab) here).
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any, Mapping

from orchestrator.errors import UsageError, note_once
from orchestrator.spec import ExperimentSpec, make_spec

BYTE_VOCAB = 256
# lingua's ByteTokenizer: 256 bytes + BOS + EOS; -1 is "take it from the tokenizer"
LINGUA_BYTE_VOCABS = (-1, 258, BYTE_VOCAB)
LINGUA_ROPE_THETA = 10000.0  # our rotary base (workloads/transformer/model.py)
LINGUA_MULTIPLE_OF = 256  # BaseTransformerArgs.multiple_of
DEFAULT_FOLDER = "lingua"

# lingua's dataclass defaults for the keys we read, used where the YAML leaves a key out
# (TrainArgs, OptimArgs, DataArgs, LMTransformerArgs, DistributedArgs, CheckpointArgs, LoggingArgs).
LINGUA_DEFAULTS: dict[str, Any] = {
    "name": "lingua", "steps": 1000, "seed": 42, "grad_acc_steps": 1,
    "optim.lr": 3e-4, "optim.warmup": 2000, "optim.lr_min_ratio": 0.1, "optim.clip": 1.0,
    "optim.weight_decay": 0.1, "optim.beta1": 0.9, "optim.beta2": 0.95, "optim.epsilon": 1e-8,
    "optim.scheduler": "cosine", "optim.cosine_theta": 1.0, "optim.cycle_length": 1.0,
    "model.dim": 512, "model.n_layers": 8, "model.weight_tying": False,
    "model.multiple_of": LINGUA_MULTIPLE_OF, "model.ffn_dim_multiplier": None,
    "model.init_base_std": None, "model.init_std_factor": "disabled",
    "model.rope_theta": LINGUA_ROPE_THETA, "model.vocab_size": -1,
    "data.batch_size": 2, "data.seq_len": 2048, "data.n_views": 2, "data.tokenizer.name": "bytes",
    "distributed.fsdp_type": "no_shard", "distributed.compile": False, "distributed.tp_size": 1,
    "distributed.model_dtype": "bf16", "distributed.num_nodes": 1,
    "checkpoint.dump.every": 1000, "logging.freq": 10,
}

# Every key a lingua TrainArgs YAML may hold, as a dotted path. Free-form values (env
# variables, eval tasks, wandb settings, the source -> weight mapping) are one key each: we do
# not look inside them.
KNOWN_KEYS = frozenset({
    "name", "dump_dir", "seed", "grad_acc_steps", "gc_collect_freq", "probe_freq", "steps",
    "async_eval_gpus", "eval", "env",
    # the lab's fork: document masks we do not implement
    "intradoc_mask", "doc_separator", "dynamic_mask",
    "optim.lr", "optim.weight_decay", "optim.epsilon", "optim.beta1", "optim.beta2", "optim.clip",
    "optim.scheduler", "optim.warmup", "optim.lr_min_ratio", "optim.cycle_length",
    "optim.cosine_theta", "optim.annealing_step", "optim.decay_fraction", "optim.exp_factor",
    "model.dim", "model.n_layers", "model.head_dim", "model.n_heads", "model.n_kv_heads",
    "model.ffn_dim_multiplier", "model.multiple_of", "model.norm_eps", "model.rope_theta",
    "model.init_base_std", "model.init_std_factor", "model.max_seqlen", "model.seed",
    "model.vocab_size", "model.weight_tying", "model.sliding_window",
    "data.root_dir", "data.sources", "data.batch_size", "data.seq_len", "data.n_views",
    "data.seed", "data.add_bos", "data.add_eos", "data.load_async", "data.prefetch_size",
    "data.tokenizer.name", "data.tokenizer.path",
    "distributed.dp_shard", "distributed.dp_replicate", "distributed.tp_size",
    "distributed.selective_activation_checkpointing", "distributed.compile",
    "distributed.fsdp_type", "distributed.model_dtype", "distributed.float8_recipe",
    "distributed.float8_filter", "distributed.matmul_allow_tf32", "distributed.detect_anomaly",
    "distributed.compile_cache_size_limit", "distributed.spawn_method",
    "distributed.num_nodes", "distributed.gpus_per_node",
    "checkpoint.dump.every", "checkpoint.dump.keep", "checkpoint.eval.every", "checkpoint.eval.keep",
    "checkpoint.path", "checkpoint.init_ckpt_path", "checkpoint.continue_training_from_init",
    "profiling.run", "profiling.trace_folder", "profiling.mem_warmup", "profiling.mem_steps",
    "profiling.profile_warmup", "profiling.profile_steps",
    "logging.freq", "logging.acc_freq", "logging.wandb",
})
_SECTIONS = frozenset(path.rsplit(".", i)[0] for path in KNOWN_KEYS for i in (1, 2) if path.count(".") >= i)


def lingua_ffn_hidden(dim: int, multiple_of: int = LINGUA_MULTIPLE_OF,
                      ffn_dim_multiplier: float | None = None) -> int:
    """SwiGLU hidden width of lingua's FeedForward (lingua/transformer.py), built from 4 * dim.

    2/3 of 4d truncated, then scaled by ``ffn_dim_multiplier`` and truncated again, then rounded
    *up* to ``multiple_of``: 1536 at d=512, where our default rule (``swiglu_hidden``) gives 1368.
    """
    if not (isinstance(multiple_of, int) and not isinstance(multiple_of, bool) and multiple_of > 0):
        raise UsageError(f"multiple_of must be a positive integer, got {multiple_of!r}")
    if ffn_dim_multiplier is not None and not (isinstance(ffn_dim_multiplier, (int, float))
                                               and not isinstance(ffn_dim_multiplier, bool)
                                               and math.isfinite(ffn_dim_multiplier) and ffn_dim_multiplier > 0):
        raise UsageError(f"ffn_dim_multiplier must be a number > 0 or None, got {ffn_dim_multiplier!r}")
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    # a multiplier small enough to truncate to 0 leaves 0: the spec refuses that width
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def lingua_experim(dim: int = 512, n_layers: int = 8, n_heads: int = 8, steps: int = 500,
                   batch_size: int = 8, seq_len: int = 2048, lr: float = 3e-4, warmup: int = 100,
                   lr_min_ratio: float = 0.1, clip: float = 1.0,
                   sources: Mapping[str, float] | None = None, *, data_root: str,
                   gpus: int = 1, partition: str = "sphinx", fsdp: str = "no_shard", compile: bool = False,
                   grad_acc_steps: int = 1, log_freq: int = 10, checkpoint_every: int = 5000,
                   weight_tying: bool = False, multiple_of: int = LINGUA_MULTIPLE_OF,
                   ffn_dim_multiplier: float | None = None, label: str,
                   folder_name: str | None = DEFAULT_FOLDER, **overrides) -> list[ExperimentSpec]:
    """One lingua run as a one-element list of specs, in lingua's names and units.

    ``batch_size`` is per GPU, as in lingua, so a step trains ``batch_size x gpus x
    grad_acc_steps`` sequences; the token budget is exactly ``steps`` such steps.
    ``data_root`` holds one folder of ``*.jsonl`` shards per source (lingua's ``root_dir``).
    ``multiple_of`` and ``ffn_dim_multiplier`` size the SwiGLU as lingua does (``lingua_ffn_hidden``).
    Any other spec field can be given in ``overrides`` (``seed=...``, ``weight_decay=...``).
    """
    for name, value in (("steps", steps), ("batch_size", batch_size), ("gpus", gpus),
                        ("grad_acc_steps", grad_acc_steps), ("seq_len", seq_len)):
        if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            raise UsageError(f"{name} must be a positive integer, got {value!r}")
    sequences = batch_size * gpus * grad_acc_steps
    fields = dict(
        hidden_dim=dim, num_layers=n_layers, num_heads=n_heads, seq_length=seq_len,
        vocab_size=BYTE_VOCAB, activation="swiglu", positional="rotary", tie_embeddings=weight_tying,
        mlp_hidden_dim=lingua_ffn_hidden(dim, multiple_of, ffn_dim_multiplier),
        init_std=None, learning_rate=lr, lr_schedule="warmup_cosine", warmup_steps=warmup,
        lr_min_ratio=lr_min_ratio, grad_clip=clip, target_effective_batch_size=sequences,
        train_tokens=steps * sequences * seq_len, dataset=data_root,
        sources=dict(sources if sources is not None else {"fineweb_edu_10bt_shuffled": 100.0}),
        log_interval_steps=log_freq, checkpoint_interval_steps=checkpoint_every,
        gpus=gpus, partition=partition, fsdp=fsdp, compile=compile,
    )
    return [make_spec(label=label, folder_name=folder_name, **{**fields, **overrides})]


def read_lingua_config(path, *, label: str | None = None, folder_name: str | None = DEFAULT_FOLDER,
                       partition: str = "sphinx", gpus: int | None = None,
                       **overrides) -> tuple[dict[str, Any], list[str]]:
    """``lingua_experim``'s keyword arguments for a lingua YAML, and the key paths it ignores.

    ``gpus`` is how many processes ``torchrun`` starts (lingua reads it from the world
    size, not the YAML); by default ``distributed.gpus_per_node`` where the lab's fork
    writes it, else 1. ``label`` defaults to the config's ``name``.
    """
    from orchestrator.config import read_yaml

    path = Path(path).expanduser()
    given = _flatten(read_yaml(path))
    for key in given:
        _check_known(path, key)
    value = _Reader(path, given)

    _require(value, "tokenizer", value.str("data.tokenizer.name") == "bytes",
             "data.tokenizer.name", "bytes (a byte-level vocabulary of 256)")
    _require(value, "tensor parallelism", value.int("distributed.tp_size") == 1, "distributed.tp_size", "1")
    _require(value, "multi-node runs", value.int("distributed.num_nodes") == 1, "distributed.num_nodes",
             "1 (one node per run)")
    _require(value, "model dtype", value.str("distributed.model_dtype") == "bf16", "distributed.model_dtype",
             "bf16 (our CUDA runs train under bf16 autocast)")
    _require(value, "float8", value.get("distributed.float8_recipe") is None, "distributed.float8_recipe", "null")
    n_heads, dim = value.int("model.n_heads", required=True), value.int("model.dim")
    if n_heads <= 0:
        raise UsageError(f"{path}: model.n_heads must be > 0, got {n_heads!r}")
    _require(value, "grouped-query attention", value.get("model.n_kv_heads") in (None, n_heads),
             "model.n_kv_heads", f"null or n_heads ({n_heads}): our attention has one key/value head per query head")
    _require(value, "head size", value.get("model.head_dim") in (None, dim // n_heads),
             "model.head_dim", f"null or dim / n_heads ({dim // n_heads})")
    for key, what in (("model.sliding_window", "sliding-window attention"),
                      ("checkpoint.init_ckpt_path", "starting from a checkpoint")):
        _require(value, what, value.get(key) is None, key, "null")
    for key in ("intradoc_mask", "dynamic_mask"):
        _require(value, "document masks", value.get(key) in (None, False), key, "false")
    _require(value, "rotary base", value.float("model.rope_theta") == LINGUA_ROPE_THETA, "model.rope_theta",
             f"{LINGUA_ROPE_THETA:g}")
    _require(value, "vocabulary", value.int("model.vocab_size") in LINGUA_BYTE_VOCABS, "model.vocab_size",
             f"{', '.join(map(str, LINGUA_BYTE_VOCABS))} (bytes; we train on {BYTE_VOCAB})")
    _require(value, "init", value.str("model.init_std_factor") == "disabled", "model.init_std_factor", "disabled")
    _require(value, "next-token views", value.int("data.n_views") == 2, "data.n_views",
             "2 (input and next-token target)")
    _require(value, "schedule", value.str("optim.scheduler") == "cosine", "optim.scheduler",
             "cosine (warmup_cosine: linear warmup, cosine to lr x lr_min_ratio)")
    for key in ("optim.cosine_theta", "optim.cycle_length"):
        _require(value, "cosine shape", value.float(key) == 1.0, key, "1.0 (one half-cosine over the run)")

    # a key that only passed a check sets nothing: it is listed with the ignored ones, except the
    # two that choose what lingua_experim fixes (the byte vocabulary, the cosine schedule)
    value.read = {"data.tokenizer.name", "optim.scheduler"} & value.read
    n_heads, dim = value.int("model.n_heads"), value.int("model.dim")
    sources = value.get("data.sources", required=True)
    if not isinstance(sources, dict) or not sources:
        raise UsageError(f"{path}: data.sources must map source folders to weights, got {sources!r}")
    init_std = value.get("model.init_base_std")
    ffn_dim_multiplier = value.get("model.ffn_dim_multiplier")
    kwargs = dict(
        dim=dim, n_layers=value.int("model.n_layers"), n_heads=n_heads, steps=value.int("steps"),
        batch_size=value.int("data.batch_size"), seq_len=value.int("data.seq_len"),
        lr=value.float("optim.lr"), warmup=value.int("optim.warmup"),
        lr_min_ratio=value.float("optim.lr_min_ratio"), clip=value.float("optim.clip"),
        sources={str(k): _number(path, f"data.sources.{k}", w) for k, w in sources.items()},
        data_root=value.str("data.root_dir", required=True),
        gpus=gpus if gpus is not None else value.int("distributed.gpus_per_node", default=1),
        partition=partition, fsdp=value.str("distributed.fsdp_type"), compile=value.bool("distributed.compile"),
        grad_acc_steps=value.int("grad_acc_steps"), log_freq=value.int("logging.freq"),
        checkpoint_every=value.int("checkpoint.dump.every"), weight_tying=value.bool("model.weight_tying"),
        multiple_of=value.int("model.multiple_of"),
        ffn_dim_multiplier=None if ffn_dim_multiplier is None
        else _number(path, "model.ffn_dim_multiplier", ffn_dim_multiplier),
        label=label if label is not None else value.str("name"), folder_name=folder_name,
        seed=value.int("seed"), weight_decay=value.float("optim.weight_decay"),
        adam_beta1=value.float("optim.beta1"), adam_beta2=value.float("optim.beta2"),
        adam_eps=value.float("optim.epsilon"),
    )
    if init_std is not None:
        kwargs["init_std"] = _number(path, "model.init_base_std", init_std)
    return {**kwargs, **overrides}, value.unread()


def from_lingua_config(path, *, label: str | None = None, folder_name: str | None = DEFAULT_FOLDER,
                       partition: str = "sphinx", gpus: int | None = None, quiet: bool = False,
                       **overrides) -> list[ExperimentSpec]:
    """A lingua YAML as a one-element list of specs: ``lingua_experim`` of its values.

    The keys it ignores are named in one ``note:`` line on stderr (``quiet=True`` drops the
    line; ``read_lingua_config`` returns them as a list).
    """
    kwargs, ignored = read_lingua_config(path, label=label, folder_name=folder_name, partition=partition,
                                         gpus=gpus, **overrides)
    if ignored and not quiet:
        note_once(f"{path}: lingua keys read but not used: {', '.join(ignored)}")
    return lingua_experim(**kwargs)


# ------------------------------------------------------------------ reading
class _Reader:
    """Typed look-ups of dotted keys, with lingua's defaults, remembering which keys were used."""

    def __init__(self, path: Path, given: dict[str, Any]):
        self.path, self.given, self.read = path, given, set()

    def get(self, key: str, required: bool = False, default: Any = None):
        if key in self.given:
            self.read.add(key)
            return self.given[key]
        if required:
            raise UsageError(f"{self.path}: lingua config needs {key}")
        return LINGUA_DEFAULTS.get(key, default)

    def int(self, key: str, required: bool = False, default: Any = None) -> int:
        raw = self.get(key, required, default)
        if isinstance(raw, float) and raw.is_integer():
            raw = int(raw)
        if not isinstance(raw, int) or isinstance(raw, bool):
            raise UsageError(f"{self.path}: {key} must be an integer, got {raw!r}")
        return raw

    def float(self, key: str, required: bool = False) -> float:
        return _number(self.path, key, self.get(key, required))

    def str(self, key: str, required: bool = False) -> str:
        raw = self.get(key, required)
        if not isinstance(raw, str):
            raise UsageError(f"{self.path}: {key} must be a string, got {raw!r}")
        return raw

    def bool(self, key: str) -> bool:
        raw = self.get(key)
        if not isinstance(raw, bool):
            raise UsageError(f"{self.path}: {key} must be true or false, got {raw!r}")
        return raw

    def unread(self) -> list[str]:
        return sorted(key for key in self.given if key not in self.read)


def _number(path, key: str, raw) -> float:
    # lingua loads YAML with OmegaConf, which reads 3e-4 as a number; PyYAML reads it as a string
    if isinstance(raw, str):
        try:
            raw = float(raw)
        except ValueError:
            pass
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
        raise UsageError(f"{path}: {key} must be a number, got {raw!r}")
    return float(raw)


def _require(reader: _Reader, what: str, ok: bool, key: str, supported: str) -> None:
    if not ok:
        raise UsageError(f"{reader.path}: unsupported {what}: {key}={reader.given.get(key)!r}; supported: {supported}")


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """``{"model": {"dim": 512}}`` -> ``{"model.dim": 512}``; free-form values stay whole.
    An empty section (``profiling:``) holds no keys."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if dotted in _SECTIONS and (isinstance(value, dict) or value is None):
            flat.update(_flatten(value or {}, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def _check_known(path: Path, key: str) -> None:
    if key in KNOWN_KEYS:
        return
    if key in _SECTIONS:
        raise UsageError(f"{path}: lingua key {key} must be a mapping")
    candidates = sorted(KNOWN_KEYS)
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    section = key.rsplit(".", 1)[0] if "." in key else None
    siblings = [k.rsplit(".", 1)[1] for k in candidates if "." in k and k.rsplit(".", 1)[0] == section] \
        if section else [k for k in candidates if "." not in k]
    raise UsageError(f"{path}: unknown lingua key {key}{hint}; known{f' in {section}' if section else ''}: "
                     f"{', '.join(siblings) or '(none)'}")


# ------------------------------------------------------------ lingua itself, run as a command
LINGUA_COMMAND = "torchrun --nproc_per_node={gpus} --standalone -m apps.main.train config={config_path}"
LINGUA_TOKENIZER_VOCAB = 258  # lingua's bytes tokenizer: 256 bytes, BOS, EOS


def lingua_param_count(dim: int, n_layers: int, n_heads: int, n_kv_heads: int | None = None,
                       vocab_size: int = LINGUA_TOKENIZER_VOCAB, weight_tying: bool = False,
                       multiple_of: int = LINGUA_MULTIPLE_OF, ffn_dim_multiplier: float | None = None) -> tuple[int, int]:
    """(total, embedding) parameters of lingua's LMTransformer: token embedding (and an untied
    output head), per layer wq and wo (d x d), wk and wv (d x kv_heads x head_dim), the SwiGLU's
    three d x hidden matrices and two RMSNorm weights, and the final norm."""
    head_dim = dim // n_heads
    kv = (n_kv_heads or n_heads) * head_dim
    hidden = lingua_ffn_hidden(dim, multiple_of, ffn_dim_multiplier)
    layer = 2 * dim * dim + 2 * dim * kv + 3 * dim * hidden + 2 * dim
    embedding = vocab_size * dim * (1 if weight_tying else 2)
    return embedding + n_layers * layer + dim, embedding


def lingua_command_experim(config, *, workdir: str, label: str, gpus: int = 1, partition: str = "sphinx",
                           command: str = LINGUA_COMMAND, folder_name: str | None = "lingua_command",
                           **fields) -> list[ExperimentSpec]:
    """The lab's lingua fork itself, run as it is on its own YAML (the ``command`` workload).

    ``config`` is a lingua YAML path or mapping; the run directory gets a copy with ``dump_dir``
    (where lingua writes ``metrics.jsonl`` and its checkpoints) and ``name`` pointed at the run,
    so status, retry and analyze see it like any run. Steps come from ``steps``, the tokens of a
    step from ``data.batch_size x data.seq_len x gpus x grad_acc_steps``, and N from the model
    section (``lingua_param_count``), for ``analyze``. Nothing else is read or checked: lingua
    reads the rest. ``fields`` go to the spec (``env=``, ``time_min=``, ``mem_gb=``...).
    """
    import yaml

    if isinstance(config, (str, Path)):
        try:
            loaded = yaml.safe_load(Path(config).expanduser().read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise UsageError(f"{config}: unreadable lingua config ({type(exc).__name__}: {exc})") from None
    else:
        loaded = config
    if not isinstance(loaded, dict):
        raise UsageError(f"a lingua config must be a mapping, got {type(loaded).__name__}")
    try:
        model, data = loaded["model"], loaded["data"]
        steps = int(loaded["steps"])
        tokens_per_step = (int(data["batch_size"]) * int(data["seq_len"]) * gpus
                           * int(loaded.get("grad_acc_steps") or 1))
        vocab = model.get("vocab_size")
        total, embedding = lingua_param_count(
            int(model["dim"]), int(model["n_layers"]), int(model["n_heads"]), model.get("n_kv_heads"),
            LINGUA_TOKENIZER_VOCAB if vocab in (None, -1) else int(vocab), bool(model.get("weight_tying", False)),
            int(model.get("multiple_of", LINGUA_MULTIPLE_OF)), model.get("ffn_dim_multiplier"))
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"lingua config needs steps, data.batch_size, data.seq_len and model.dim, n_layers, "
                         f"n_heads as numbers ({type(exc).__name__}: {exc})") from None
    run_config = {**loaded, "dump_dir": "{run_dir}", "name": label}
    from workloads.command import command_experim

    return command_experim(command, label=label, folder_name=folder_name, workdir=workdir, config=run_config,
                           steps=steps, gpus=gpus, partition=partition, params=total, embedding_params=embedding,
                           tokens_per_step=tokens_per_step, metrics_format="lingua", **fields)
