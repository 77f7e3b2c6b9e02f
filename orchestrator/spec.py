"""ExperimentSpec: one validated, resolved, hashable experiment.

A spec is built from keyword fields (``make_spec(workload="transformer", hidden_dim=64,
label=...)``). Construction is strict: unknown keys and invalid values raise
``UsageError`` naming the bad key or value. Fields left as ``None`` that have a rule
(``num_layers``, ``num_heads``, ``warmup_steps``, resources, the token budget) are
resolved at construction, so a spec is always concrete and its JSON round-trips.

Workloads are pluggable: each workload is a subclass registered with
``@register_workload("name")`` that adds its own fields, its parameter count and its
activation-memory estimate (see ``workloads/``).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any, ClassVar

from orchestrator.errors import UsageError, unknown

SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
BUILTIN_DATASETS = ("shakespeare", "kjv")
LR_SCHEDULES = ("warmup_cosine", "warmup_constant")
FSDP_MODES = ("none", "no_shard", "full_shard")
MUP_LR_RULES = ("paper", "sqrt")
DEFAULT_TOKENS_PER_PARAM = 20.0
IDENTITY_LENGTH = 12
SOURCE_SUFFIXES = (".jsonl", ".jsonl.gz")
# A mixture cuts its sample stream into blocks that hold at least one sample's worth of the
# rarest source (workloads/mixture.py): a smaller share would need blocks of millions of samples.
MIN_SOURCE_SHARE = 2.0 ** -20

# Fields that say where output goes and how a run executes, not what it computes:
# they never change the identity hash. Two specs that differ only here are duplicates.
NON_SCIENTIFIC_FIELDS = frozenset({
    "label", "folder_name", "partition", "gpus", "time_min", "mem_gb", "cpus_per_gpu",
    "checkpoint_interval_steps", "compile", "fsdp",
})
# Scientific fields added after version 1. While such a field is at its default it is left out
# of the identity, so a spec that does not use it keeps the hash it had before the field existed
# (and keeps its finished runs). A new field goes here, with a default that means "as before".
ADDED_FIELDS = frozenset({"sources", "mlp_hidden_dim", "method", "val_batch_size", "attribution_dataset"})

WORKLOADS: dict[str, type[ExperimentSpec]] = {}


def register_workload(name: str):
    """Class decorator: ``@register_workload("lstm") class LSTMSpec(ExperimentSpec)``."""

    def register(cls):
        if name in WORKLOADS and WORKLOADS[name] is not cls:
            raise ValueError(f"workload {name!r} is registered twice")
        cls.workload_name = name
        WORKLOADS[name] = cls
        return cls

    return register


def workloads() -> dict[str, type[ExperimentSpec]]:
    import workloads as _builtin  # noqa: F401  (registers the shipped workloads)

    return WORKLOADS


@dataclasses.dataclass(frozen=True, init=False)
class ExperimentSpec:
    # identity and output
    version: int = 1
    workload: str = ""
    label: str = dataclasses.field(default=None)  # required
    folder_name: str | None = None
    # model
    hidden_dim: int = dataclasses.field(default=None)  # required
    num_layers: int | None = None
    seq_length: int = 512
    vocab_size: int = 256
    tie_embeddings: bool = True
    use_mup: bool = False
    mup_base_width: int = 32
    # optimisation
    learning_rate: float = 1e-3
    lr_schedule: str = "warmup_cosine"
    warmup_steps: int | None = None
    lr_min_ratio: float = 0.1
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip: float | None = 1.0
    target_effective_batch_size: int = 128
    # token budget: train_tokens, or tokens_per_param x total parameters (Chinchilla: 20)
    train_tokens: int | None = None
    tokens_per_param: float | None = None
    seed: int = 0
    dataset: str = "shakespeare"
    # lingua-style mixture: folder name under the `dataset` directory -> weight
    sources: dict[str, float] | None = None
    eval_interval_steps: int | None = None
    eval_batches: int = 8
    log_interval_steps: int = 10
    # resources: never part of the identity
    partition: str = "sphinx"
    gpus: int | None = None
    time_min: int | None = None
    mem_gb: int | None = None
    cpus_per_gpu: int | None = None
    checkpoint_interval_steps: int = 500
    compile: bool = False
    # data parallelism across a run's GPUs: "none" is DDP; FSDP2 without or with sharding, as in
    # lingua's fsdp_type. How the work is split, not what is computed: not in the identity.
    fsdp: str = "none"

    workload_name: ClassVar[str] = ""
    default_gpus: ClassVar[int] = 1
    # fields of this class that say how it runs, not what it computes (never in the identity)
    non_scientific_fields: ClassVar[frozenset] = NON_SCIENTIFIC_FIELDS
    # fields of ExperimentSpec this workload does not have (a command has no learning rate):
    # giving one is an unknown-field error, and they are not in its JSON
    omitted_fields: ClassVar[frozenset] = frozenset()
    # one process per GPU, started by the backend (srun's tasks, local ranks); False: one
    # process per run that starts whatever it needs itself (a command running torchrun)
    process_per_gpu: ClassVar[bool] = True
    # the trainer runs torch in this process (the command workload's supervisor does not)
    trains_in_process: ClassVar[bool] = True
    # "module:function" that trains one spec, given the path of its JSON
    trainer: ClassVar[str] = ""

    # ----------------------------------------------------------------- construction
    def __init__(self, **fields: Any):
        cls = type(self)
        rules = _field_rules(cls)
        for key in fields:
            if key not in rules:
                names = cls.field_names()
                close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise UsageError(
                    f"unknown experiment field {key!r}{hint}; valid fields: {', '.join(sorted(names))}")
        fields.setdefault("workload", cls.workload_name)
        if fields["workload"] != cls.workload_name:
            raise UsageError(f"{cls.__name__} is the {cls.workload_name!r} workload, not {fields['workload']!r}")
        # a default is valid by construction (None on a required field is not: _coerce says so);
        # one __dict__ update, not a frozen __setattr__ per field: registries hold thousands
        vars(self).update({name: _coerce(name, fields.get(name), type_str) if name in fields or default is None
                           else default for name, (default, type_str) in rules.items()})
        object.__setattr__(self, "_given", frozenset(fields))
        self._resolve()

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(_field_rules(cls))

    def replace(self, **changes: Any) -> ExperimentSpec:
        """A new spec from the fields this one was *given* plus ``changes``.

        Fields that were resolved by a rule (depth from width, a budget from a ratio)
        are resolved again, so ``spec.replace(hidden_dim=128)`` gets the right depth.
        Prefer this to ``dataclasses.replace``, which would carry them over stale.
        """
        given = {name: getattr(self, name) for name in self._given}
        return type(self)(**{**given, **changes})

    def _resolve(self) -> None:
        def put(name, value):
            object.__setattr__(self, name, value)

        self._resolve_names(put)
        for name in ("version", "hidden_dim", "seq_length", "vocab_size", "mup_base_width",
                     "target_effective_batch_size", "eval_batches", "log_interval_steps",
                     "checkpoint_interval_steps"):
            _check_positive(name, getattr(self, name))
        for name in ("num_layers", "train_tokens", "tokens_per_param", "eval_interval_steps"):
            if getattr(self, name) is not None:
                _check_positive(name, getattr(self, name))
        self._check_optimisation()
        _check_choice("fsdp", self.fsdp, FSDP_MODES)
        check_dataset(self.dataset)
        _check_sources(self.dataset, self.sources)

        self.resolve_architecture(put)

        if self.train_tokens is not None and self.tokens_per_param is not None:
            raise UsageError("give train_tokens or tokens_per_param, not both "
                             f"(got {self.train_tokens!r} and {self.tokens_per_param!r})")
        if self.train_tokens is None and self.tokens_per_param is None:
            put("tokens_per_param", DEFAULT_TOKENS_PER_PARAM)
        self._resolve_schedule_and_resources(put)

    def _resolve_schedule_and_resources(self, put) -> None:
        """Warmup and evaluation interval from the optimizer steps, then the resources; shared by
        every trained workload (its ``optimizer_steps`` is resolvable by now)."""
        steps = self.optimizer_steps
        if self.warmup_steps is None:
            put("warmup_steps", max(1, round(0.05 * steps)) if steps > 1 else 0)
        if self.warmup_steps < 0 or self.warmup_steps >= max(steps, 1):
            raise UsageError(f"warmup_steps must be in [0, {steps}) for {steps} optimizer steps, "
                             f"got {self.warmup_steps!r}")
        if self.eval_interval_steps is None:
            put("eval_interval_steps", max(1, steps // 10))

        self._resolve_resources(put)

        if self.target_effective_batch_size % self.gpus:
            raise UsageError(f"target_effective_batch_size {self.target_effective_batch_size} is not "
                             f"divisible by gpus={self.gpus}")

    def _check_optimisation(self) -> None:
        """The optimiser's and the schedule's fields, and the seed: the same for every trained workload."""
        for name in ("learning_rate", "adam_eps"):
            _check_positive(name, getattr(self, name))
        if self.grad_clip is not None:
            _check_positive("grad_clip", self.grad_clip)
        if self.seed < 0:
            raise UsageError(f"seed must be >= 0, got {self.seed!r}")
        if not 0 <= self.lr_min_ratio <= 1:
            raise UsageError(f"lr_min_ratio must be in [0, 1], got {self.lr_min_ratio!r}")
        if self.weight_decay < 0:
            raise UsageError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise UsageError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        _check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)

    def _resolve_names(self, put) -> None:
        _check_safe_name("label", self.label)
        if self.folder_name is None:
            put("folder_name", self.workload)
        _check_safe_name("folder_name", self.folder_name)

    def _resolve_resources(self, put) -> None:
        from orchestrator.profiles import get_profile

        for name in ("gpus", "time_min", "mem_gb", "cpus_per_gpu"):
            if getattr(self, name) is not None:
                _check_positive(name, getattr(self, name))
        profile = get_profile(self.partition)
        if self.gpus is None:
            put("gpus", min(self.default_gpus, profile.max_gpus_per_job))
        if self.gpus > profile.max_gpus_per_job:
            raise UsageError(f"gpus={self.gpus} exceeds partition {profile.name!r}'s "
                             f"{profile.max_gpus_per_job} GPUs per job")
        if self.time_min is None:
            put("time_min", profile.default_time_min)
        if self.time_min > profile.max_time_min:
            raise UsageError(f"time_min={self.time_min} exceeds partition {profile.name!r}'s "
                             f"limit of {profile.max_time_min} min")
        if self.mem_gb is None:
            put("mem_gb", profile.mem_gb)
        if self.cpus_per_gpu is None:
            put("cpus_per_gpu", profile.cpus_per_gpu)

    # ------------------------------------------------------- workload-specific hooks
    def resolve_architecture(self, put) -> None:
        """Fill in and check the workload's architecture fields."""
        raise NotImplementedError

    def param_counts(self) -> tuple[int, int]:
        """(total parameters, embedding parameters), exactly as the trainer builds them."""
        raise NotImplementedError

    def activation_bytes_per_sample(self, dtype_bytes: int) -> float:
        """Activation memory kept for backward by one sequence, for the batch planner."""
        raise NotImplementedError

    def dependencies(self) -> tuple[str, ...]:
        """Experiments (``folder_name/label``) that must complete before this one starts (a fine-tune
        of another experiment's model): ``submit`` orders them, Slurm with ``afterok``."""
        return ()

    # ------------------------------------------------------------- derived numbers
    @property
    def total_params(self) -> int:
        return self.param_counts()[0]

    @property
    def non_embedding_params(self) -> int:
        total, embedding = self.param_counts()
        return total - embedding

    def flops_per_token(self) -> float:
        """Training FLOPs per token for MFU and CPU time estimates: 6 N (every weight's
        multiply-add, forward and backward). A workload with more (attention) overrides it."""
        return 6.0 * self.total_params

    @property
    def tokens_per_sample(self) -> float:
        """D units in one sample (a window's predicted tokens; a speech workload's mean frames)."""
        return self.seq_length

    @property
    def tokens_per_step(self) -> int:
        return self.target_effective_batch_size * self.seq_length

    @property
    def optimizer_steps(self) -> int:
        """Steps needed to reach the token budget (the last step may overshoot it)."""
        budget = self.train_tokens
        if budget is None:
            budget = self.tokens_per_param * self.total_params
        return max(1, math.ceil(budget / self.tokens_per_step))

    @property
    def tokens(self) -> int:
        """D: tokens actually trained on, the trainer's ``tokens_processed`` at the end."""
        return self.optimizer_steps * self.tokens_per_step

    @property
    def flops(self) -> float:
        """C = 6 N D with N = total parameters (as in Hoffmann et al. 2022)."""
        return 6.0 * self.total_params * self.tokens

    def derived(self) -> dict[str, Any]:
        return {
            "total_params": self.total_params,
            "non_embedding_params": self.non_embedding_params,
            "tokens": self.tokens,
            "optimizer_steps": self.optimizer_steps,
            "tokens_per_step": self.tokens_per_step,
            "flops": self.flops,
            "flops_formula": "6 * total_params * tokens",
        }

    # ------------------------------------------------------------------ identity
    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.field_names()}

    def scientific_fields(self) -> dict[str, Any]:
        rules = _field_rules(type(self))
        return {k: v for k, v in self.to_dict().items() if k not in self.non_scientific_fields
                and not (k in ADDED_FIELDS and v == rules[k][0])}

    @functools.cached_property
    def identity(self) -> str:
        """Short hash of the resolved scientific fields: the same in every process.

        Cached on the instance: a spec never changes after construction, and a registry
        check, a plan and a status each ask for it once per spec.
        """
        canonical = json.dumps(self.scientific_fields(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:IDENTITY_LENGTH]

    @property
    def run_name(self) -> str:
        return f"{self.folder_name}/{self.label}"


def make_spec(workload: str = "transformer", **fields: Any) -> ExperimentSpec:
    known = workloads()
    if workload not in known:
        raise unknown("workload", workload, known)
    return known[workload](**fields)


def spec_from_dict(data: dict[str, Any]) -> ExperimentSpec:
    data = dict(data)
    return make_spec(data.pop("workload", "transformer"), **data)


def load_spec(path) -> ExperimentSpec:
    """The spec in a JSON file (``spec.to_dict()``, or under a "spec" key); a file that cannot
    be read is one error naming it."""
    from pathlib import Path

    try:
        data = json.loads(Path(path).read_bytes())
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, found {type(data).__name__}")
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: unreadable spec ({type(exc).__name__}: {exc})") from None
    return spec_from_dict(data.get("spec", data))


# ---------------------------------------------------------------------- checks
@functools.cache
def _field_rules(cls) -> dict[str, tuple[Any, str]]:
    """Field name -> (default, annotation as text), worked out once per spec class.

    ``dataclasses.fields`` walks the class every call; a 1,000-experiment registry
    would walk it for every spec and again for every ``to_dict``.
    """
    return {f.name: (f.default, f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type)))
            for f in dataclasses.fields(cls) if f.name not in cls.omitted_fields}


def _coerce(name: str, value: Any, type_str: str) -> Any:
    """Check ``value`` against a field annotation such as ``'int | None'``.

    Integral floats are accepted for int fields (researchers write ``train_tokens=2e9``);
    ints are accepted for float fields. Nothing else is converted.
    """
    if value is None:
        if "None" in type_str:
            return None
        raise UsageError(f"experiment field {name!r} is required")
    base = type_str.split("|", 1)[0].strip()
    if base == "bool":
        if isinstance(value, bool):
            return value
    elif base == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif base == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif base == "str":
        if isinstance(value, str):
            return value
    elif base == "dict[str, float]":
        if isinstance(value, dict) and all(isinstance(k, str) for k in value) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()):
            return Weights(sorted((k, float(v)) for k, v in value.items()))
    elif base == "dict[str, str]":
        if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            return Frozen(sorted(value.items()))
    elif base == "dict":  # a JSON-like mapping (a config file): str keys, nested plain values
        if isinstance(value, dict):
            return _freeze(name, value)
    else:  # pragma: no cover - a new field type needs a rule here
        raise TypeError(f"no rule to check field {name!r} of type {type_str}")
    raise UsageError(f"experiment field {name!r} must be {type_str}, got {value!r}")


def _check_positive(name: str, value) -> None:
    if not value > 0:
        raise UsageError(f"{name} must be > 0, got {value!r}")


def _check_choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise unknown(name, value, choices)


def _check_safe_name(name: str, value: str) -> None:
    if not SAFE_NAME.match(value) or ".." in value:
        raise UsageError(f"{name} {value!r} may only use the characters [A-Za-z0-9._-] and must not contain '..'")


def check_dataset(value: str, name: str = "dataset") -> None:
    """A built-in corpus name, or a path (with a '/') to a directory of text/jsonl files.

    A path is checked by the trainer on the machine where it runs (it may exist only
    on the cluster); a bare name must be a built-in one, so a typo fails here.
    """
    if "/" in value:
        return
    if value not in BUILTIN_DATASETS:
        raise unknown(name, value, BUILTIN_DATASETS)


def _check_sources(dataset: str, sources: Weights | None) -> None:
    """Weights that make a mixture, over folders of the ``dataset`` directory.

    The folders are checked only where the directory exists (it may exist only on the
    cluster); the trainer checks them again where it runs.
    """
    if sources is None:
        return
    if "/" not in dataset:
        raise UsageError(f"sources need dataset to be a directory (a path with a '/') holding one "
                         f"folder per source, got dataset={dataset!r}")
    if not sources:
        raise UsageError("sources must name at least one source folder, got {}")
    for name, weight in sources.items():
        if not SAFE_NAME.match(name) or name in (".", ".."):
            raise UsageError(f"source {name!r} must be a folder name (characters [A-Za-z0-9._-])")
        if not (math.isfinite(weight) and weight > 0):
            raise UsageError(f"source {name!r} needs a finite weight > 0, got {weight!r}")
    total = math.fsum(sources.values())
    for name, weight in sources.items():
        if weight / total < MIN_SOURCE_SHARE:
            raise UsageError(f"source {name!r} has {weight / total:.3g} of the total weight; "
                             f"the smallest share a mixture supports is {MIN_SOURCE_SHARE:.3g}")
    root = Path(dataset).expanduser()
    if root.is_dir():
        source_shards(root, sources, first_only=True)


def source_shards(root: Path, names, first_only: bool = False) -> dict[str, list[Path]]:
    """Each source's ``root/<source>/*.jsonl(.gz)`` shards in sorted order (only one each with
    ``first_only``: enough to check a spec), or a one-line UsageError."""
    folders = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    shards = {}
    for name in names:
        if name not in folders:
            raise UsageError(f"{unknown('source', name, folders)} (the folders of {root})")
        found = []
        with os.scandir(root / name) as entries:
            for entry in entries:
                if entry.name.endswith(SOURCE_SUFFIXES) and entry.is_file():
                    found.append(Path(entry.path))
                    if first_only:
                        break
        if not found:
            raise UsageError(f"source folder {root / name} holds no {'/'.join(SOURCE_SUFFIXES)} files")
        shards[name] = sorted(found)
    return shards


class Frozen(dict):
    """A read-only mapping: a frozen spec may hold it, hash it and write it as a JSON object."""

    def _read_only(self, *args, **kwargs):
        raise TypeError("a spec's mappings are read-only; use spec.replace(...)")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _read_only

    def __hash__(self):
        return hash(json.dumps(self, sort_keys=True))

    def __reduce__(self):
        return type(self), (thaw(self),)


class Weights(Frozen):
    """A read-only ``{source: weight}``, sorted by name."""


def _freeze(name: str, value, where: str = ""):
    """A JSON-like value made read-only (mappings Frozen, lists tuples), or a UsageError naming
    the first key whose value JSON cannot hold."""
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise UsageError(f"experiment field {name!r}: key {key!r}{where and ' under ' + where} is not a string")
        return Frozen((key, _freeze(name, item, f"{where}.{key}" if where else key)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(name, item, f"{where}[{i}]") for i, item in enumerate(value))
    if value is None or isinstance(value, (str, bool, int)) or (isinstance(value, float) and math.isfinite(value)):
        return value
    raise UsageError(f"experiment field {name!r}: {where or 'the value'} is {value!r}; a config holds only "
                     "mappings, lists, strings, numbers, booleans and null")


def thaw(value):
    """Plain dicts and lists again (for yaml.safe_dump, which refuses tuples and dict subclasses)."""
    if isinstance(value, dict):
        return {key: thaw(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(item) for item in value]
    return value
