"""The training loop every workload shares: data, forward, backward, step, log, and nothing else.

A workload hands ``train`` a spec, a function building its model and (unless it is text) a
function loading its data. The contract, the same for text and speech:

- data: ``train_batch(first_sample, count)`` (samples ``first..first+count-1`` of the training
  stream; sample i depends only on the seed and i), ``val_batches(num, batch_size, rank, world)``
  (a fixed validation set, this rank's share), ``inputs(batch, device)`` (the tensors the model
  is called with) and ``units(batch)`` (what the batch adds to D: predicted tokens for text,
  10 ms input frames for speech); ``len(batch)`` samples.
- model: an ``nn.Module`` whose ``forward(*inputs)`` returns the batch's mean loss (cross-entropy,
  CTC) and whose ``param_groups()`` returns AdamW groups (``params``, ``weight_decay``,
  ``lr_scale``); an optional ``fsdp_units()`` lists the submodules FSDP shards one by one (without
  it, the root alone); an optional ``eval_counts(*inputs)`` returns ``{column: (errors, total)}``
  summed over the validation set and the ranks into the ratio columns (``val_cer``, ``val_wer``).
- optional artifact hooks of the model, called on rank 0 with the run's ``RunPaths``:
  ``on_start(paths, start_step, metrics)`` before the first step (with the untrained model's
  validation metrics on a fresh start, None on a resume), ``on_evaluation(paths, step, row)`` after
  each row with a validation loss, ``on_end(paths, last_row)`` when the run completes (the
  fine-tuning workload writes its best model, history and demo generations there).
- precision: ``spec.precision`` where the workload has one (``fp16``: float16 autocast and a
  GradScaler, whose state is checkpointed; ``bf16``; ``fp32``), else bf16 autocast on CUDA.
  Only trainable parameters (``requires_grad``) are optimised and checkpointed: a frozen part is
  rebuilt from the base model on resume.
- spec: ``loss_name`` (e.g. ``"ctc_loss"``) repeats ``loss`` and ``val_loss`` under that name,
  and ``eval_columns`` names the ratio columns; both are appended to ``COLUMNS``.

Accounting. One optimizer step takes ``batch_size * grad_accum`` samples on each of
``world_size`` ranks; sample ``i`` of the training stream is used by step
``i // effective_batch``, whatever the split into micro-batches and ranks. ``tokens_processed``
is D: the ``units`` of every batch so far, all ranks (text: ``step * batch_size * grad_accum *
world_size * seq_length``; speech: the input frames), kept in checkpoints, and
``theoretical_flops_chinchilla = 6 * total_params * tokens_processed``, on every row.

Metrics CSV (``COLUMNS``; new columns are only ever appended, readers go by name). One row at
step 1, every ``log_interval_steps``, at every evaluation and at the last step:

- ``optimizer_step``, ``tokens_processed``, ``theoretical_flops_chinchilla``: the accounting above.
- ``loss``: this step's training loss, the mean over ranks; ``val_loss`` at evaluation steps.
- ``learning_rate`` (the base rate; groups scale it), ``grad_norm`` (before clipping).
- ``tokens_per_s``: tokens of all ranks over the interval since the previous row, per second;
  ``tokens_per_s_per_gpu`` the same per rank (per GPU; on a CPU, per process).
- ``mfu``: model FLOPs utilisation, ``tokens_per_s * spec.flops_per_token() / (ranks * peak)``,
  the peak being ``peak_flops_per_gpu`` of the partition's profile (bf16 dense; the ``local``
  profile's is a rough CPU number, so a CPU run's MFU compares only with other CPU runs).
- ``step_time_s``: mean wall seconds per optimizer step over the interval; ``data_wait_s``: of
  those, the mean seconds spent reading a step's batches from the token cache (host time; the
  copy to the device is left out: from pageable memory it may wait for the device).
  Rates and step times count training only: the evaluation, the CSV row and checkpoint writes
  between two rows are left out (``elapsed_s`` has them). All are rank 0's clocks: DDP keeps
  the ranks in step.
- ``peak_mem_allocated_gb``, ``peak_mem_reserved_gb``: on CUDA, rank 0's
  ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` since the previous row
  (including this row's evaluation), reset after every row; empty on a CPU, which has no
  such counters. ``peak_rss_gb``: rank 0's process peak resident memory since it started
  (``getrusage``; never reset), on every device.
- ``ranks``: the world size; ``elapsed_s``: training seconds since the run first started,
  resumed runs included; ``samples_per_s``: samples (sequences, utterances, examples) of all
  ranks per second over the interval, as ``tokens_per_s``.

Timing adds no device synchronisation: the clock is read at logged steps only, after the
loss has been fetched from the device (which waits for the step), and the batch timer reads
host clocks around host work.

Outputs (names from ``orchestrator.paths``): the metrics CSV is appended as rows are
logged and rewritten atomically on resume (dropping rows past the checkpoint) and at the
end; status.json and the config JSON are written atomically; status.json is updated at
start, at every evaluation and checkpoint, and at the end.

Data parallelism (``spec.fsdp``; one rank needs none and gets no wrapper):

- ``"none"``: DDP around the (compiled) model; on CUDA, bf16 autocast.
- ``"full_shard"``: FSDP2 (``torch.distributed.fsdp.fully_shard``) on a 1-D mesh of all ranks,
  first on each of the model's ``fsdp_units()`` (the transformer's blocks), then on the root:
  parameters, gradients and optimizer state sharded, parameters re-gathered for backward.
- ``"no_shard"``: the same FSDP2 calls on a 2-D (replicate=world, shard=1) HSDP mesh with
  ``reshard_after_forward=False``: every rank keeps the whole model and optimizer state and
  gradients are all-reduced, as FSDP1's ``NO_SHARD``. (lingua's ``no_shard`` with its default
  ``dp_shard=1`` is ``reshard_after_forward=False`` on a 1-D mesh, which still shards the
  parameters at rest, ZeRO-2-like; ours is the replicate its name promises, and the public API.)
  With FSDP on CUDA, ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`` instead of
  autocast. Gradient accumulation skips the gradient sync on all but the last micro-batch in
  every mode. ``clip_grad_norm_`` works on FSDP2's DTensor gradients (the norm is over the
  whole model).

Data attribution (``spec.method == "graddotprod"``): each micro-step's forward and backward
go through ``workloads.attribution`` (validation rows in the first, per-row losses from the
model's ``forward(..., per_row=True)``), which leaves the training rows' gradient in ``.grad``
and logs every sample's dot product with the validation gradient; everything after the backward
(clipping, the step, the CSV, checkpoints) is the regular loop's. The log is saved before each
checkpoint and cut back to it on resume.

``spec.compile``: ``torch.compile`` of the model (before DDP, after FSDP). The first optimizer
step of each start includes the compilation; it is timed alone (``compile_s`` in status.json
and the log) and left out of the rate columns of the row that would contain it.

Faults. A checkpoint (model, optimizer, RNG, step; the data position and the learning rate
follow from the step) is written atomically every ``checkpoint_interval_steps``, at the
end, and when a stop is requested (``workloads.interrupt``), after which ``RunInterrupted``
is raised. With FSDP the ranks gather full CPU state dicts (``torch.distributed.checkpoint``'s
``get_model_state_dict`` and ``get_optimizer_state_dict``) that rank 0 writes in the one-file
format of DDP and single-rank runs, so a run with any ``fsdp`` mode and any number of ranks
resumes any checkpoint of its experiment. Starting again resumes from the latest checkpoint; a
completed or diverged run (status.json, same identity) is not trained again. A non-finite training loss
stops the run as ``diverged``; it is checked at every logged step over all steps since the
previous one, which avoids a device sync per step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import resource
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)

from orchestrator.errors import UsageError
from orchestrator.paths import RunPaths, atomic_write_json, read_status
from orchestrator.planner import BatchPlan, estimate_memory, plan_batch
from orchestrator.profiles import get_profile
from workloads import interrupt
from workloads.attribution import Attribution, load_attribution_data
from workloads.data import TokenData
from workloads.runfiles import COLUMNS, FINAL_STATES, MetricsCSV, git_commit, spec_identity, write_status  # noqa: F401

# --------------------------------------------------------------- optimisation
def lr_at(spec, step: int) -> float:
    """The base learning rate of optimizer step ``step`` (1-based): linear warmup, then
    constant or cosine down to ``lr_min_ratio * lr`` at the last step."""
    lr, warmup, total = spec.learning_rate, spec.warmup_steps, spec.optimizer_steps
    if step <= warmup:
        return lr * step / warmup
    if spec.lr_schedule == "warmup_constant":
        return lr
    progress = (step - warmup) / max(1, total - warmup)
    lr_min = lr * spec.lr_min_ratio
    return lr_min + 0.5 * (lr - lr_min) * (1.0 + math.cos(math.pi * progress))


def make_optimizer(spec, model, device=None) -> torch.optim.AdamW:
    groups = model.param_groups()
    grouped = [p for g in groups for p in g["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    if len({id(p) for p in grouped}) != len(grouped) or {id(p) for p in grouped} != trainable:
        raise RuntimeError("param_groups() must hold every trainable parameter of the model exactly once")
    fused = device is not None and torch.device(device).type == "cuda"
    return torch.optim.AdamW(groups, lr=spec.learning_rate, betas=(spec.adam_beta1, spec.adam_beta2),
                             eps=spec.adam_eps, fused=fused or None)


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]


def resolve_batch(spec, world_size: int = 1, batch_size: int | None = None,
                  grad_accum: int | None = None) -> BatchPlan:
    """The planner's batch for this world size, or the caller's (tests, benchmarks).

    If fewer ranks run than planned, their share goes into accumulation, so the
    effective batch (and the result) stays the same.
    """
    plan = plan_batch(spec)
    per_rank, rest = divmod(spec.target_effective_batch_size, world_size)
    batch_size = batch_size or math.gcd(plan.batch_size, per_rank)
    grad_accum = grad_accum or per_rank // batch_size
    if rest or batch_size * grad_accum != per_rank:
        raise UsageError(f"batch_size={batch_size} x grad_accum={grad_accum} x world_size={world_size} "
                         f"!= target_effective_batch_size={spec.target_effective_batch_size}")
    peak = estimate_memory(spec, get_profile(spec.partition)).peak_gb(batch_size)
    return dataclasses.replace(plan, batch_size=batch_size, grad_accum=grad_accum,
                               data_parallel=world_size, peak_memory_gb=peak)


# ---------------------------------------------------------------- throughput
def interval_metrics(steps: int, seconds: float, data_wait_s: float, units: float, world: int,
                     flops_per_token: float, peak_flops_per_gpu: float) -> dict:
    """The rate columns of one CSV row from ``steps`` optimizer steps that took ``seconds`` and
    trained ``units`` tokens (frames) on all ranks.

    MFU is computed from the rounded ``tokens_per_s`` that the row shows, so the CSV is
    consistent with itself.
    """
    step_time = seconds / steps
    rate = round(units / seconds, 1)
    return {"tokens_per_s": rate, "tokens_per_s_per_gpu": round(rate / world, 1),
            "mfu": float(f"{rate * flops_per_token / (world * peak_flops_per_gpu):.6g}"),
            "step_time_s": round(step_time, 6), "data_wait_s": round(data_wait_s / steps, 6), "ranks": world}


def peak_memory(device) -> dict:
    """Peak memory columns; on CUDA the device's peak counters are reset for the next interval."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    row = {"peak_rss_gb": round(rss * (1 if os.uname().sysname == "Darwin" else 1024) / 1e9, 3)}
    if device.type == "cuda":
        row["peak_mem_allocated_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 3)
        row["peak_mem_reserved_gb"] = round(torch.cuda.max_memory_reserved(device) / 1e9, 3)
        torch.cuda.reset_peak_memory_stats(device)
    return row


# ---------------------------------------------------------------- checkpoints
def latest_checkpoint(paths: RunPaths) -> Path | None:
    found = sorted(paths.checkpoint_dir.glob("step_*.pt"))
    return found[-1] if found else None


FULL_ON_RANK_0 = StateDictOptions(full_state_dict=True, cpu_offload=True)


def _parameter_names(model, optimizer) -> list[str]:
    """The model's name of each optimizer parameter, in ``optimizer.state_dict()``'s numbering."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def frozen_names(model) -> set[str]:
    return {name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}


def training_state(model, optimizer, sharded: bool) -> tuple[dict, dict]:
    """Model and optimizer state dicts as a single process has them (plain tensors, parameters
    numbered in the optimizer's order).

    ``sharded`` (FSDP): a collective every rank calls; rank 0 gets the full tensors on the CPU,
    the other ranks empty dicts.
    """
    if not sharded:
        frozen = frozen_names(model)  # rebuilt from the base model on resume: not saved
        return {k: v for k, v in model.state_dict().items() if k not in frozen}, optimizer.state_dict()
    model_state = get_model_state_dict(model, options=FULL_ON_RANK_0)
    by_name = get_optimizer_state_dict(model, optimizer, options=FULL_ON_RANK_0)
    if not by_name:
        return model_state, {}
    index = {name: i for i, name in enumerate(_parameter_names(model, optimizer))}
    optimizer_state = {"state": {index[name]: value for name, value in by_name["state"].items()},
                       "param_groups": [{**group, "params": [index[n] for n in group["params"]]}
                                        for group in by_name["param_groups"]]}
    return model_state, optimizer_state


def save_checkpoint(paths: RunPaths, spec, step: int, model_state: dict, optimizer_state: dict,
                    elapsed_s: float, units: int, scaler=None) -> Path:
    state = {
        "identity": spec.identity, "optimizer_step": step, "elapsed_s": elapsed_s, "units_processed": units,
        "model": model_state, "optimizer": optimizer_state,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
    }
    path = paths.checkpoint_dir / f"step_{step:08d}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)
    for old in paths.checkpoint_dir.glob("step_*.pt"):
        if old != path:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(paths: RunPaths, spec, model, optimizer, sharded: bool = False,
                    scaler=None) -> tuple[int, float, int | None]:
    """Restore the latest checkpoint; (optimizer step, elapsed seconds, units of D so far; None in
    a checkpoint from before D was counted), (0, 0.0, 0) if none.

    Every rank reads the file; with ``sharded`` (FSDP) each keeps its shard of it.
    """
    path = latest_checkpoint(paths)
    if path is None:
        return 0, 0.0, 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["identity"] != spec.identity:
        raise UsageError(f"{path} belongs to experiment {state['identity']}, not {spec.identity} "
                         f"({spec.run_name}); use another label or remove {paths.run_dir}")
    if sharded:
        names = _parameter_names(model, optimizer)
        saved = state["optimizer"]
        by_name = {"state": {names[i]: value for i, value in saved["state"].items()},
                   "param_groups": [{**group, "params": [names[i] for i in group["params"]]}
                                    for group in saved["param_groups"]]}
        full = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, state["model"], options=full)
        set_optimizer_state_dict(model, optimizer, by_name, options=full)
    else:
        frozen = frozen_names(model)
        missing, unexpected = model.load_state_dict(state["model"], strict=not frozen)
        if unexpected or set(missing) - frozen:
            raise RuntimeError(f"{path} does not match the model: missing {sorted(set(missing) - frozen)[:5]}, "
                               f"unexpected {sorted(unexpected)[:5]}")
        optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state["optimizer_step"], state["elapsed_s"], state.get("units_processed")


# ----------------------------------------------------------------- the loop
def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce(tensor: torch.Tensor, world: int, op=None) -> torch.Tensor:
    if world > 1:
        dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM)
    return tensor


AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}


def autocast_for(spec, device):
    """The forward's autocast: ``spec.precision`` where the workload has one (fp16, bf16, fp32, on
    any device), else bf16 on CUDA and none on a CPU."""
    precision = getattr(spec, "precision", None)
    dtype = AUTOCAST_DTYPES[precision] if precision else (torch.bfloat16 if device.type == "cuda" else None)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def grad_scaler_for(spec, model, device):
    """fp16 needs loss scaling; the scaler unscales float32 gradients only, so a trainable float16
    parameter (a model loaded in fp16 and trained as it is) is refused here, not mid-step."""
    if getattr(spec, "precision", None) != "fp16":
        return None
    half = [name for name, p in model.named_parameters() if p.requires_grad and p.dtype != torch.float32]
    if half:
        raise RuntimeError(f"precision='fp16' trains float32 parameters under float16 autocast, but "
                           f"{len(half)} trainable parameters are not float32 (e.g. {half[0]!r}: "
                           f"{dict(model.named_parameters())[half[0]].dtype}); GradScaler would fail with "
                           f"'Attempting to unscale FP16 gradients'. Keep the trainable part in float32")
    return torch.amp.GradScaler(device.type)


def parallelize(model, spec, device, world: int):
    """Wrap ``model`` for ``world`` data-parallel ranks as ``spec.fsdp`` says (see the module
    docstring); (the module to call for training, autocast context, whether it is sharded).

    FSDP changes ``model`` in place (its parameters become DTensors), so the optimizer must be
    built afterwards; DDP wraps it and leaves ``model`` as it was.
    """
    cuda = device.type == "cuda"
    if world == 1 or spec.fsdp == "none":
        forward = torch.compile(model) if spec.compile else model
        if world > 1:
            forward = torch.nn.parallel.DistributedDataParallel(forward, device_ids=[device.index] if cuda else None)
        return forward, autocast_for(spec, device), False
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if spec.fsdp == "full_shard":
        mesh, reshard = init_device_mesh(device.type, (world,), mesh_dim_names=("shard",)), True
    else:  # "no_shard": replicate over all ranks, shard over one
        mesh, reshard = init_device_mesh(device.type, (world, 1), mesh_dim_names=("replicate", "shard")), False
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if cuda
              else MixedPrecisionPolicy())
    units = model.fsdp_units() if hasattr(model, "fsdp_units") else []
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
    # the root's parameters are needed first in backward: never resharded after forward
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=False)
    forward = torch.compile(model) if spec.compile else model
    return forward, contextlib.nullcontext(), True


def _gradient_sync(forward, sharded: bool, sync: bool):
    """A context in which backward all-reduces (DDP) or reduces (FSDP) gradients only if ``sync``."""
    if sync:
        return contextlib.nullcontext()
    if not sharded:
        return forward.no_sync()
    root = getattr(forward, "_orig_mod", forward)  # under torch.compile

    @contextlib.contextmanager
    def unsynced():
        root.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            root.set_requires_gradient_sync(True)
    return unsynced()


def _sum_units(units: int, device, world: int) -> int:
    """This rank's D units summed over the ranks (a collective when there are several)."""
    if world == 1:
        return units
    return round(_all_reduce(torch.tensor([float(units)], device=device, dtype=torch.float64), world).item())


def _value(tensor: torch.Tensor) -> float:
    """A scalar that may be an FSDP DTensor (the total gradient norm)."""
    return (tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor).item()


@torch.no_grad()
def evaluate(model, data, spec, batch_size: int, device, autocast, rank=0, world=1) -> dict:
    """Validation metrics over the fixed validation set (eval_batches effective batches of
    samples): ``val_loss``, the mean over samples, and each ``eval_counts`` ratio. The loss is
    summed on the device (no sync per batch); error counts are host numbers."""
    model.eval()
    names = tuple(getattr(spec, "eval_columns", ()))
    total = torch.zeros(2, device=device, dtype=torch.float64)
    counts = [0.0] * (2 * len(names))
    for batch in data.val_batches(spec.eval_batches * spec.target_effective_batch_size, batch_size, rank, world):
        inputs = data.inputs(batch, device)
        with autocast:
            loss = model(*inputs)
        total += torch.stack([loss.double() * len(batch), torch.tensor(len(batch), device=device, dtype=torch.float64)])
        if names:
            found = model.eval_counts(*inputs)
            counts = [a + float(b) for a, b in zip(counts, (x for name in names for x in found[name]))]
    model.train()
    total = _all_reduce(torch.cat([total, torch.tensor(counts, device=device, dtype=torch.float64)]), world).tolist()
    metrics = {"val_loss": total[0] / total[1]}
    for i, name in enumerate(names):
        errors, count = total[2 + 2 * i], total[3 + 2 * i]
        metrics[name] = errors / count if count else None
    return metrics


def train(spec, build_model, *, load_data=TokenData.for_spec, root=None, batch_size=None, grad_accum=None,
          device=None, data_cache=None, on_step=None) -> dict:
    """Train ``spec`` to its token budget, resuming if a checkpoint exists; return the final status.

    ``load_data(spec, data_cache)``: the workload's data (text by default).
    ``on_step(step, model)`` is called after every optimizer step (a test hook).
    Raises ``RunInterrupted`` after checkpointing when a stop is requested.
    """
    paths = RunPaths.of(spec.folder_name, spec.label, root)
    rank, world = _world()
    status = read_status(paths) or {}
    if status.get("identity", spec.identity) != spec.identity:
        if status.get("state") in FINAL_STATES or latest_checkpoint(paths):
            raise UsageError(f"{paths.run_dir} holds experiment {status['identity']}, not {spec.identity} "
                             f"({spec.run_name}); use another label or remove the directory")
        status = {}  # a different experiment that never got far: start this one afresh
    if status.get("state") in FINAL_STATES:
        print(f"{spec.run_name}: already {status['state']} ({paths.status_json})", flush=True)
        return status
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    progress = {"step": 0}
    try:
        plan = resolve_batch(spec, world, batch_size, grad_accum)
        data = load_data(spec, data_cache)  # a bad dataset fails here, before any training
        val_data = load_attribution_data(spec, data_cache) if _attributed(spec) else None
        return _train(spec, build_model, paths, plan, data, val_data, device, rank, world, on_step, progress)
    except interrupt.RunInterrupted:
        raise
    except BaseException as exc:
        if rank == 0:
            write_status(paths, spec, "failed", progress["step"], error=f"{type(exc).__name__}: {exc}",
                         traceback=traceback.format_exc()[-4000:])
        raise


def _attributed(spec) -> bool:
    return getattr(spec, "method", "regular") == "graddotprod"


def _hook(model, name: str, *args) -> None:
    """A model's optional artifact hook (rank 0; see the module docstring)."""
    hook = getattr(model, name, None)
    if hook is not None:
        hook(*args)


def _train(spec, build_model, paths, plan, data, val_data, device, rank, world, on_step, progress) -> dict:
    torch.manual_seed(spec.seed)
    model = build_model(spec).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    if n_params != spec.total_params:
        raise RuntimeError(f"the model has {n_params} parameters but the spec counts {spec.total_params}")
    forward, autocast, sharded = parallelize(model, spec, device, world)
    optimizer = make_optimizer(spec, model, device)
    scaler = grad_scaler_for(spec, model, device)
    start_step, elapsed_before, units_before = load_checkpoint(paths, spec, model, optimizer, sharded, scaler)
    progress["step"] = start_step
    attribution = (Attribution(spec, model, paths, data, val_data, rank, world, device, start_step)
                   if _attributed(spec) else None)
    B, A, total = plan.batch_size, plan.grad_accum, spec.optimizer_steps
    effective = B * A * world
    if units_before is None:  # a text run's checkpoint from before D was counted: it is exact
        units_before = start_step * effective * spec.seq_length
    flops_per_token, peak_flops = spec.flops_per_token(), get_profile(spec.partition).peak_flops_per_gpu
    loss_name, eval_columns = getattr(spec, "loss_name", None), tuple(getattr(spec, "eval_columns", ()))
    columns = COLUMNS + ((loss_name, f"val_{loss_name}") if loss_name else ()) + eval_columns

    csv_log = None
    if rank == 0:
        paths.run_dir.mkdir(parents=True, exist_ok=True)
        if spec_identity(paths.spec_json) != spec.identity:  # keep the submitter's copy if it is ours
            atomic_write_json(paths.spec_json, {"spec": spec.to_dict()})
        atomic_write_json(paths.config_json, {
            "spec": spec.to_dict(), "identity": spec.identity, "derived": spec.derived(),
            "plan": plan.to_dict(), "torch_version": torch.__version__, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "git_commit": git_commit(), "code": str(Path(__file__).resolve().parent.parent)})
        csv_log = MetricsCSV(paths.metrics_csv, start_step, columns)
        write_status(paths, spec, "running", start_step, resumed_from=start_step or None)
        print(f"{spec.run_name}: {n_params:,} parameters, {total} steps of {effective} samples "
              f"(batch {B} x accum {A} x {world} ranks"
              + (f", {'DDP' if spec.fsdp == 'none' else 'FSDP2 ' + spec.fsdp}" if world > 1 else "")
              + f") on {device}"
              + (f", resumed at step {start_step}" if start_step else ""), flush=True)

    params = [p for p in model.parameters() if p.requires_grad]
    if hasattr(model, "on_start"):  # the base model's validation metrics, before any step
        before = evaluate(model, data, spec, B, device, autocast, rank, world) if start_step == 0 else None
        if rank == 0:
            model.on_start(paths, start_step, before)
    interval_loss = torch.zeros((), device=device)
    loop_start = mark = time.perf_counter()
    logged_step, paused, data_wait = start_step, 0.0, 0.0  # since the previous row: paused = checkpoint writes
    units_total, pending_units = units_before, 0  # D of all ranks at the last sum; this rank's since
    timed_from, compile_s, timed_units = start_step, None, 0  # the rates count steps after timed_from
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(start_step + 1, total + 1):
        lr = lr_at(spec, step)
        set_lr(optimizer, lr)
        evaluate_now = step % spec.eval_interval_steps == 0 or step == total
        log_now = step == 1 or step % spec.log_interval_steps == 0 or evaluate_now

        step_loss = torch.zeros((), device=device)
        for micro in range(A):
            first = (step - 1) * effective + (rank * A + micro) * B
            fetch = time.perf_counter()
            host_batch = data.train_batch(first, B)
            data_wait += time.perf_counter() - fetch
            pending_units += data.units(host_batch)
            inputs = data.inputs(host_batch, device)
            with _gradient_sync(forward, sharded, world == 1 or micro == A - 1):
                if attribution is not None:  # the same gradient, and every sample's dot product
                    loss = attribution.backward(forward, autocast, inputs, first, micro, A)
                else:
                    with autocast:
                        loss = forward(*inputs) / A
                    (loss if scaler is None else scaler.scale(loss)).backward()
            step_loss += loss.detach()
        if scaler is not None:
            scaler.unscale_(optimizer)  # clip and log the true gradient; a step with inf/nan is skipped
        if spec.grad_clip is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, spec.grad_clip)
        elif log_now:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        if scaler is None:
            optimizer.step()
        else:
            scaler.step(optimizer)
            scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if attribution is not None:
            attribution.end_step(step, lr)
        interval_loss += step_loss
        progress["step"] = step
        if spec.compile and compile_s is None:  # the first step compiles: timed alone, left out of the rates
            step_loss.item()  # waits for the step
            now = time.perf_counter()
            compile_s, timed_from, mark, data_wait = round(now - mark, 3), step, now, 0.0
            units_total, pending_units = units_total + _sum_units(pending_units, device, world), 0
            timed_units = 0
            if rank == 0:
                print(f"{spec.run_name}: compiled; first step took {compile_s:.1f} s", flush=True)
                write_status(paths, spec, "running", step, compile_s=compile_s)

        if log_now:
            sums = _all_reduce(torch.stack([step_loss.double(), interval_loss.double(),
                                            torch.tensor(float(pending_units), device=device, dtype=torch.float64)]),
                               world).tolist()
            loss_value, diverged = sums[0] / world, not math.isfinite(sums[1])
            interval_units, pending_units = round(sums[2]), 0
            units_total += interval_units
            timed_units += interval_units
            interval_loss.zero_()
            now = time.perf_counter()
            tokens = units_total
            row = {"optimizer_step": step, "tokens_processed": tokens, "loss": loss_value,
                   "learning_rate": lr, "grad_norm": _value(grad_norm),
                   "theoretical_flops_chinchilla": 6 * n_params * tokens,
                   "elapsed_s": round(elapsed_before + now - loop_start, 3), "ranks": world}
            if step > timed_from:  # not a row of the compiling step alone
                row.update(interval_metrics(step - timed_from, now - mark - paused, data_wait, timed_units,
                                            world, flops_per_token, peak_flops))
                row["samples_per_s"] = round((step - timed_from) * effective / (now - mark - paused), 2)
            if evaluate_now and not diverged:
                row.update(evaluate(model, data, spec, B, device, autocast, rank, world))
            if loss_name:
                row[loss_name], row[f"val_{loss_name}"] = row["loss"], row.get("val_loss")
            row.update(peak_memory(device))
            if rank == 0:
                csv_log.append(row)
                if row.get("val_loss") is not None:
                    _hook(model, "on_evaluation", paths, step, row)
                print(f"{spec.run_name} step {step}/{total} loss {loss_value:.4f}"
                      + (f" val {row['val_loss']:.4f}" if row.get("val_loss") is not None else "")
                      + f" lr {lr:.3g}"
                      + (f" {row['tokens_per_s']:.0f} tok/s mfu {row['mfu']:.2%}" if "mfu" in row else ""),
                      flush=True)
                if row.get("val_loss") is not None and step < total:
                    write_status(paths, spec, "running", step, val_loss=row["val_loss"],
                                 **({"compile_s": compile_s} if compile_s is not None else {}))
            if diverged:
                if attribution is not None:
                    attribution.close(completed=False)
                if rank == 0:
                    csv_log.close()
                    return write_status(paths, spec, "diverged", step,  # the loss itself may be NaN: not JSON
                                        error=f"non-finite training loss in optimizer steps {logged_step + 1}..{step} "
                                              f"(loss {loss_value} at step {step})")
                return {"state": "diverged", "optimizer_step": step}
            logged_step, mark, paused, data_wait = step, time.perf_counter(), 0.0, 0.0
            timed_from, timed_units = step, 0

        if on_step is not None:
            on_step(step, model)
        signum = interrupt.stop_requested()
        if world > 1:  # a signal may reach only some ranks; all must stop at the same step
            flag = _all_reduce(torch.tensor([-1 if signum is None else signum], device=device), world,
                               dist.ReduceOp.MAX)
            signum = None if flag.item() < 0 else int(flag.item())
        if step < total and (signum is not None or step % spec.checkpoint_interval_steps == 0):
            pause_start = time.perf_counter()
            elapsed = elapsed_before + pause_start - loop_start
            units_at_step = units_total + _sum_units(pending_units, device, world)  # a collective
            if attribution is not None:  # the log reaches the step before the checkpoint says it is done
                attribution.flush()
            state = training_state(model, optimizer, sharded)  # with FSDP a collective
            if rank == 0:
                checkpoint = save_checkpoint(paths, spec, step, *state, elapsed, units_at_step, scaler)
                if signum is None:
                    write_status(paths, spec, "running", step, checkpoint=checkpoint.name)
                else:
                    write_status(paths, spec, "interrupted", step, checkpoint=checkpoint.name,
                                 interrupted_by=interrupt.signal_name(signum),
                                 reason=f"stopped by {interrupt.signal_name(signum)} after step {step} "
                                        f"(checkpoint {checkpoint.name})")
            if world > 1:
                dist.barrier()
            paused += time.perf_counter() - pause_start
            if signum is not None:
                if rank == 0:
                    csv_log.close()
                raise interrupt.RunInterrupted(step, signum)

    elapsed = elapsed_before + time.perf_counter() - loop_start
    units_total += _sum_units(pending_units, device, world)  # nothing pending: the last step logs
    state = training_state(model, optimizer, sharded) if start_step < total else None
    if attribution is not None:
        attribution.close(completed=True)
    if rank != 0:
        return {"state": "completed", "optimizer_step": total}
    if state is not None:
        save_checkpoint(paths, spec, total, *state, elapsed, units_total, scaler)
    csv_log.close()
    last = csv_log.rows[-1]
    _hook(model, "on_end", paths, last)
    return write_status(paths, spec, "completed", total, val_loss=float(last["val_loss"]),
                        loss=float(last["loss"]), tokens_processed=int(last["tokens_processed"]),
                        elapsed_s=float(last["elapsed_s"]),
                        **({"compile_s": compile_s} if compile_s is not None else {}))
