"""Partition profiles: what the planner and the submitter know about each partition.

The shipped profiles are ``slurm_templates/<name>.yaml``; a user's
``<config dir>/profiles/<name>.yaml`` overrides keys of a shipped one or adds a new
partition (see ``orchestrator.config``). A ``kubernetes`` partition's profile also says where
its pods run (``KubernetesSettings``); the manifests themselves are ``orchestrator.kubernetes``'s.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

from orchestrator import config
from orchestrator.errors import UsageError, unknown

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "slurm_templates"
BACKENDS = ("slurm", "local", "kubernetes")
GPU_REQUESTS = ("gres", "gpus_per_task", "none")
# How a multi-GPU run of a built-in workload starts its ranks on Slurm. "srun": one task per GPU,
# started and bound by Slurm (the default: each rank gets its GPU and CPUs from the scheduler, and
# Slurm's signals reach every rank). "torchrun": one task holding all the run's GPUs, which runs
# torchrun (for clusters whose per-task GPU binding hides the other ranks' GPUs from each rank, so
# NCCL cannot use its peer-to-peer paths between them, or to launch exactly as lingua's users do).
LAUNCHERS = ("srun", "torchrun")
DEFAULT_MAX_REQUEUES = 3  # time-limit requeues of a run unless --max-requeues says otherwise


@dataclasses.dataclass(frozen=True)
class CpuThroughput:
    """How fast one training process (one thread) runs on a CPU partition, as measured by
    ``benchmarks/cpu_throughput.py``; ``show`` estimates a local run's wall time from it.

    Small transformers on a CPU are far from FLOP-bound: per token there is a fixed cost
    (Python, kernel launches, the optimizer over many small tensors) beside the arithmetic, so
    seconds per token = overhead + FLOPs per token / sustained FLOP/s. A run adds a fixed
    start-up (interpreter, torch import, data, model, final checkpoint) and its evaluations,
    whose forward-only tokens cost ``eval_token_cost`` of a training token.
    """

    overhead_us_per_token: float
    gflops_per_s: float
    eval_token_cost: float
    startup_s: float
    measured: str  # how, where and when: shown under every table that uses these numbers

    def seconds_per_token(self, flops_per_token: float) -> float:
        return self.overhead_us_per_token * 1e-6 + flops_per_token / (self.gflops_per_s * 1e9)


CPU_THROUGHPUT_FIELDS = tuple(f.name for f in dataclasses.fields(CpuThroughput))


@dataclasses.dataclass(frozen=True)
class KubernetesSettings:
    """Where a ``kubernetes`` partition's pods run and what they see. Pass-through values
    (``tolerations``, ``env``, ``annotations``) are checked by the manifest's validation
    (``orchestrator.kubernetes.validate``), not here.

    ``results_dir`` is the results root as the pods see it, on one of the ``volumes``: submit
    writes each spec.json under this machine's results root, which must be that same
    PersistentVolumeClaim (e.g. a workbench that mounts it), so paths under the one map to the
    other.
    """

    namespace: str
    image: str
    results_dir: str
    volumes: tuple  # ({"claim": PVC name, "mount": path, "read_only": bool, "sub_path": str|None}, ...)
    gpu_resource: str | None = "nvidia.com/gpu"  # the extended resource a GPU is; None: no GPUs
    image_pull_policy: str = "IfNotPresent"
    service_account: str | None = None
    env: dict = dataclasses.field(default_factory=dict)          # extra container environment
    annotations: dict = dataclasses.field(default_factory=dict)  # on each pod (metrics scrapers, ...)
    tolerations: tuple = ()  # e.g. OpenShift's GPU nodes' nvidia.com/gpu taint
    kubernetes_version: str = "1.31"  # the cluster's, for validating pod templates


KUBERNETES_FIELDS = tuple(f.name for f in dataclasses.fields(KubernetesSettings))
KUBERNETES_REQUIRED = ("namespace", "image", "results_dir", "volumes")
VOLUME_FIELDS = ("claim", "mount", "read_only", "sub_path")


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    description: str
    backend: str
    account: str | None
    gpu_type: str
    gpu_mem_gb: float
    peak_bf16_tflops: float
    max_gpus_per_job: int
    gpu_request: str
    mem_gb: int
    cpus_per_gpu: int
    default_time_min: int
    max_time_min: int
    log_dir: str | None  # where scheduler logs go; None: under the results root
    cpu_throughput: CpuThroughput | None = None  # measured CPU speed (local partitions); optional
    launcher: str = "srun"  # how a multi-GPU run starts its ranks (LAUNCHERS); optional
    kubernetes: KubernetesSettings | None = None  # where the pods run (backend kubernetes only)

    @property
    def peak_flops_per_gpu(self) -> float:
        return self.peak_bf16_tflops * 1e12


FIELDS = tuple(f.name for f in dataclasses.fields(Profile) if f.name != "name")
OPTIONAL_FIELDS = ("cpu_throughput", "launcher", "kubernetes")


def _shipped_dir() -> Path:
    # Installed non-editable, slurm_templates is a package next to orchestrator.
    if SHIPPED_DIR.is_dir():
        return SHIPPED_DIR
    import slurm_templates

    return Path(slurm_templates.__file__).parent


def _build(name: str, data: dict, sources: list[Path]) -> Profile:
    where = " + ".join(str(s) for s in sources)
    for key in data:
        if key not in FIELDS:
            raise unknown(f"profile key in {where}:", key, FIELDS)
    missing = [k for k in FIELDS if k not in data and k not in OPTIONAL_FIELDS]
    if missing:
        raise UsageError(f"profile {name!r} ({where}) is missing: {', '.join(missing)}")
    if data["backend"] not in BACKENDS:
        raise unknown(f"backend in profile {name!r}:", data["backend"], BACKENDS)
    if data["gpu_request"] not in GPU_REQUESTS:
        raise unknown(f"gpu_request in profile {name!r}:", data["gpu_request"], GPU_REQUESTS)
    if data.get("launcher", "srun") not in LAUNCHERS:
        raise unknown(f"launcher in profile {name!r}:", data["launcher"], LAUNCHERS)
    for key in ("gpu_mem_gb", "peak_bf16_tflops", "max_gpus_per_job", "mem_gb", "cpus_per_gpu",
                "default_time_min", "max_time_min"):
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise UsageError(f"profile {name!r}: {key} must be a positive number, got {value!r}")
    if data["log_dir"] is not None and not isinstance(data["log_dir"], str):
        raise UsageError(f"profile {name!r}: log_dir must be a path or null, got {data['log_dir']!r}")
    if data.get("cpu_throughput") is not None:
        data = {**data, "cpu_throughput": _cpu_throughput(name, where, data["cpu_throughput"])}
    if (data["backend"] == "kubernetes") != (data.get("kubernetes") is not None):
        raise UsageError(f"profile {name!r} ({where}): a 'kubernetes' block goes with backend kubernetes, "
                         f"and only there (backend is {data['backend']!r})")
    if data.get("kubernetes") is not None:
        data = {**data, "kubernetes": _kubernetes(name, where, data["kubernetes"])}
    return Profile(name=name, **data)


def _check_section(name: str, where: str, section: str, value, fields, required) -> None:
    """A profile's nested mapping: only known keys, every required one."""
    if not isinstance(value, dict):
        raise UsageError(f"profile {name!r}: {section} must be a mapping of {', '.join(fields)}, got {value!r}")
    for key in value:
        if key not in fields:
            raise unknown(f"{section} key in {where}:", key, fields)
    missing = [k for k in required if k not in value]
    if missing:
        raise UsageError(f"profile {name!r} ({where}): {section} is missing: {', '.join(missing)}")


def _kubernetes(name: str, where: str, value) -> KubernetesSettings:
    def bad(key, what):
        return UsageError(f"profile {name!r}: kubernetes.{key} must be {what}, got {value.get(key)!r}")

    _check_section(name, where, "kubernetes", value, KUBERNETES_FIELDS, KUBERNETES_REQUIRED)
    for key in ("namespace", "image", "results_dir", "image_pull_policy", "kubernetes_version"):
        if key in value and not (isinstance(value[key], str) and value[key].strip()):
            raise bad(key, "a non-empty string")
    for key in ("gpu_resource", "service_account"):
        if value.get(key) is not None and not (isinstance(value[key], str) and value[key].strip()):
            raise bad(key, "a non-empty string or null")
    for key in ("env", "annotations"):  # YAML reads `true` and `8000` as a bool and an int: quote them
        mapping = value.get(key) or {}
        if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                    for k, v in mapping.items()):
            raise bad(key, "a mapping of strings to strings (quote numbers and booleans)")
    if not isinstance(value.get("tolerations") or [], list):
        raise bad("tolerations", "a list of tolerations")
    volumes = value["volumes"]
    if not isinstance(volumes, list) or not volumes:
        raise bad("volumes", "a list of {claim, mount, read_only, sub_path} mappings")
    for volume in volumes:
        if not isinstance(volume, dict) or any(k not in VOLUME_FIELDS for k in volume) \
                or not isinstance(volume.get("claim"), str) or not str(volume.get("mount", "")).startswith("/") \
                or not isinstance(volume.get("read_only", False), bool):
            raise UsageError(f"profile {name!r}: each of kubernetes.volumes needs claim (a PVC name) and mount "
                             f"(an absolute path), optionally read_only (true/false) and sub_path; got {volume!r}")
    results_dir = value["results_dir"]
    if not any(_under(results_dir, v["mount"]) and not v.get("read_only") for v in volumes):
        raise bad("results_dir", "an absolute path under a writable mount of kubernetes.volumes "
                                 f"({', '.join(v['mount'] for v in volumes)})")
    return KubernetesSettings(**{**value, "volumes": tuple(volumes),
                                 "tolerations": tuple(value.get("tolerations") or ()),
                                 "env": value.get("env") or {}, "annotations": value.get("annotations") or {}})


def _under(path: str, mount: str) -> bool:
    return path.startswith("/") and (path.rstrip("/") + "/").startswith(mount.rstrip("/") + "/")


def _cpu_throughput(name: str, where: str, value) -> CpuThroughput:
    _check_section(name, where, "cpu_throughput", value, CPU_THROUGHPUT_FIELDS, CPU_THROUGHPUT_FIELDS)
    for key in CPU_THROUGHPUT_FIELDS[:-1]:
        number = value[key]
        if isinstance(number, bool) or not isinstance(number, (int, float)) or number < 0 or (
                key == "gflops_per_s" and number == 0):
            raise UsageError(f"profile {name!r}: cpu_throughput.{key} must be a "
                             f"{'positive' if key == 'gflops_per_s' else 'non-negative'} number, got {number!r}")
    if not isinstance(value["measured"], str) or not value["measured"].strip():
        raise UsageError(f"profile {name!r}: cpu_throughput.measured must say how the numbers were measured")
    return CpuThroughput(**{k: value[k] if k == "measured" else float(value[k]) for k in CPU_THROUGHPUT_FIELDS})


@functools.lru_cache(maxsize=None)
def _load_all(config_dir: Path) -> dict[str, Profile]:
    """Read and check every profile once per config directory: each spec asks for its own."""
    raw: dict[str, tuple[dict, list[Path]]] = {}
    for directory in (_shipped_dir(), config_dir / "profiles"):
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.yaml")):
            data, sources = raw.get(path.stem, ({}, []))
            override = config.read_yaml(path)
            if isinstance(data.get("kubernetes"), dict) and isinstance(override.get("kubernetes"), dict):
                # a user's namespace or image replaces that key, not the shipped block
                override = {**override, "kubernetes": {**data["kubernetes"], **override["kubernetes"]}}
            raw[path.stem] = ({**data, **override}, sources + [path])
    return {name: _build(name, data, sources) for name, (data, sources) in raw.items()}


def all_profiles() -> dict[str, Profile]:
    return _load_all(config.config_dir())


def get_profile(name: str) -> Profile:
    profiles = all_profiles()
    if name not in profiles:
        raise unknown("partition", name, profiles)
    return profiles[name]
