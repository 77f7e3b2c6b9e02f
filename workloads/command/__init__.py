"""The command workload: an existing trainer (a lingua fork, an ASR repo) run as it is, under
the same registry, arrays, status, retry and analysis as the built-in workloads.

    command_experim("torchrun --nproc_per_node={gpus} --standalone -m apps.main.train config={config_path}",
                    label="lingua_27m", workdir="~/lingua", config={"dump_dir": "{run_dir}", ...},
                    steps=500, gpus=8, partition="miso", params=27_500_000, tokens_per_step=131_072)

A spec names a command template, a working directory, an environment, and optionally a config
mapping written into the run directory (``config.yaml`` or ``config.json``) for the command to
read. ``{name}`` placeholders in the command, the environment's values, the config's strings and
``metrics_file`` are filled in when the run starts (``PLACEHOLDERS``); an unknown one is an error
when the spec is made. Write ``{{`` and ``}}`` for literal braces (``${{HOME}}`` in a shell command).

Identity: the command, the config (and its format), the seed and the code's git commit
(``code_commit``; read from ``workdir`` when the spec is made there, with ``+dirty-<hash of the
diff>`` for uncommitted changes). The job checks that ``workdir`` is still at that commit
before it starts the command, so a run's results always belong to the code its identity names.
Where ``workdir`` exists only on the cluster, give ``code_commit`` yourself or leave it out
(then the commit a run used is recorded in its config JSON, not in the identity).

Metrics: the command writes its own log (``metrics_format``: ``lingua``'s ``metrics.jsonl``, or
any ``jsonl`` / ``csv`` with ``metrics_keys`` mapping our columns to its keys); the supervisor
(``workloads/command/run.py``) tails it into the standard metrics CSV, so ``status`` shows the
live loss and ``analyze`` fits commands' runs. For ``analyze``, give ``params`` (N) and let the
command's log carry the tokens, or give ``tokens_per_step``.

Resources: one process per run, not one per GPU: the command gets all of the run's GPUs in one
Slurm task and starts its ranks itself (torchrun), as lingua's own launcher does.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import string
import subprocess
from pathlib import Path

from orchestrator.errors import UsageError, unknown
from orchestrator.spec import NON_SCIENTIFIC_FIELDS, ExperimentSpec, make_spec, register_workload

CONFIG_FORMATS = ("yaml", "json")
METRICS_FORMATS = ("lingua", "jsonl", "csv")
DEFAULT_METRICS_FILES = {"lingua": "metrics.jsonl", "jsonl": "metrics.jsonl", "csv": "metrics.csv"}
PLACEHOLDERS = {
    "gpus": "the run's GPUs (torchrun's --nproc_per_node)",
    "cpus_per_gpu": "CPU cores per GPU",
    "seed": "the spec's seed",
    "steps": "the planned optimizer steps",
    "label": "the run's label",
    "run_dir": "the run directory (absolute)",
    "config_path": "the config file written into the run directory (needs a config)",
    "checkpoint_dir": "<run_dir>/checkpoints",
    "metrics_path": "the metrics file the supervisor reads",
    "workdir": "the working directory the command runs in",
    "python": "the Python interpreter running the supervisor",
}
# the ExperimentSpec fields a command has: who it is, its seed, and the resources it runs on
KEPT_BASE_FIELDS = ("version", "workload", "label", "folder_name", "seed", "partition", "gpus", "time_min",
                    "mem_gb", "cpus_per_gpu")


@register_workload("command")
@dataclasses.dataclass(frozen=True, init=False)
class CommandSpec(ExperimentSpec):
    command: str = dataclasses.field(default=None)  # required
    steps: int = dataclasses.field(default=None)  # required: the planned optimizer steps
    workdir: str | None = None
    env: dict[str, str] | None = None
    config: dict | None = None
    config_format: str = "yaml"
    metrics_format: str = "lingua"
    metrics_file: str | None = None  # relative to the run directory; default per format
    metrics_keys: dict[str, str] | None = None  # our CSV column -> the command's key or column
    params: int | None = None  # N (total parameters) for analyze and MFU
    embedding_params: int = 0
    tokens_per_step: int | None = None  # D per optimizer step, where the metrics carry no tokens
    code_commit: str | None = None

    trainer = "workloads.command.run:train"
    process_per_gpu = False
    trains_in_process = False
    omitted_fields = frozenset(f.name for f in dataclasses.fields(ExperimentSpec)) - frozenset(KEPT_BASE_FIELDS)
    non_scientific_fields = NON_SCIENTIFIC_FIELDS | frozenset({
        "steps", "workdir", "env", "metrics_format", "metrics_file", "metrics_keys", "params", "embedding_params",
        "tokens_per_step"})

    def _resolve(self) -> None:
        def put(name, value):
            object.__setattr__(self, name, value)

        from workloads.command.metrics import check_keys

        self._resolve_names(put)
        if not self.command.strip():
            raise UsageError("command must not be empty")
        for name in ("version", "steps"):
            if not getattr(self, name) > 0:
                raise UsageError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("params", "tokens_per_step"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise UsageError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.seed < 0:
            raise UsageError(f"seed must be >= 0, got {self.seed!r}")
        if not 0 <= self.embedding_params < (self.params or float("inf")):
            raise UsageError(f"embedding_params must be in [0, params), got {self.embedding_params!r}")
        if self.config_format not in CONFIG_FORMATS:
            raise unknown("config_format", self.config_format, CONFIG_FORMATS)
        if self.metrics_format not in METRICS_FORMATS:
            raise unknown("metrics_format", self.metrics_format, METRICS_FORMATS)
        if self.metrics_file is None:
            put("metrics_file", DEFAULT_METRICS_FILES[self.metrics_format])
        check_keys(self.metrics_format, self.metrics_keys, self.tokens_per_step)
        for where, template in templates(self):
            check_placeholders(where, template, has_config=self.config is not None)
        if "{metrics_path}" in self.metrics_file:
            raise UsageError("metrics_file cannot use {metrics_path}: it is what defines it")
        if self.workdir is not None and self.code_commit is None:
            put("code_commit", code_commit(self.workdir))
        self._resolve_resources(put)

    # ------------------------------------------------- what the toolkit reads of a spec
    def param_counts(self) -> tuple[int | None, int | None]:
        return self.params, (self.embedding_params if self.params else None)

    @property
    def non_embedding_params(self) -> int | None:
        return self.params - self.embedding_params if self.params else None

    def flops_per_token(self) -> float | None:
        return 6.0 * self.params if self.params else None

    @property
    def optimizer_steps(self) -> int:
        return self.steps

    @property
    def tokens(self) -> int | None:
        return self.steps * self.tokens_per_step if self.tokens_per_step else None

    @property
    def flops(self) -> float | None:
        return 6.0 * self.params * self.tokens if self.params and self.tokens else None

    def activation_bytes_per_sample(self, dtype_bytes: int) -> float:
        raise NotImplementedError("a command plans its own batches")


def templates(spec: CommandSpec):
    """(where, text) of every string that may hold placeholders."""
    yield "command", spec.command
    yield "metrics_file", spec.metrics_file
    for key, value in (spec.env or {}).items():
        yield f"env[{key!r}]", value
    yield from _config_strings(spec.config, "config")


def _config_strings(value, where: str):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _config_strings(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _config_strings(item, f"{where}[{i}]")
    elif isinstance(value, str):
        yield where, value


def check_placeholders(where: str, template: str, has_config: bool = True) -> None:
    """Raise a UsageError for a malformed template or a ``{name}`` that is not a placeholder."""
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)
                  if name is not None]
    except ValueError as exc:
        raise UsageError(f"{where}: {exc} in {template!r} (write {{{{ and }}}} for literal braces)") from None
    for name, format_spec, conversion in fields:
        if name not in PLACEHOLDERS:
            raise UsageError(f"{where}: {unknown('placeholder', '{' + name + '}', PLACEHOLDERS)} "
                             f"(write {{{{ and }}}} for literal braces)")
        if format_spec or conversion:
            raise UsageError(f"{where}: placeholder {{{name}}} takes no format or conversion, got {template!r}")
        if name == "config_path" and not has_config:
            raise UsageError(f"{where} uses {{config_path}} but the spec has no config")


def fill(template: str, values: dict, quote=None) -> str:
    """``template`` with its placeholders replaced (each value passed through ``quote`` if given)."""
    return template.format_map({key: quote(str(value)) if quote else value for key, value in values.items()})


@functools.cache
def code_commit(workdir: str) -> str | None:
    """The git commit of ``workdir`` (``+dirty-<8 hex of git diff HEAD>`` with uncommitted
    changes to tracked files), or None when it is not a git checkout on this machine."""
    path = Path(workdir).expanduser()
    if not path.is_dir():
        return None

    def git(*args):
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True, timeout=30)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode:
            return None
        commit = head.stdout.decode().strip()
        diff = git("diff", "HEAD", "--binary")
    except (OSError, subprocess.SubprocessError):
        return None
    if diff.returncode == 0 and diff.stdout:
        commit += "+dirty-" + hashlib.sha256(diff.stdout).hexdigest()[:8]
    return commit


def command_experim(command: str, label: str | None = None, folder_name: str | None = None,
                    **fields) -> list[ExperimentSpec]:
    """One command experiment, as a one-element list like ``gen_experim``."""
    if label is None:
        raise UsageError("experiment field 'label' is required")
    if "workdir" in fields and fields["workdir"] is not None:
        fields["workdir"] = os.fspath(fields["workdir"])
    return [make_spec("command", command=command, label=label, folder_name=folder_name, **fields)]


__all__ = ["CommandSpec", "command_experim", "PLACEHOLDERS", "METRICS_FORMATS"]
