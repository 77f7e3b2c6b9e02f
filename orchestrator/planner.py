"""Memory model and batch planner: per-step batch and gradient accumulation for a GPU.

The planner keeps ``batch_size * grad_accum * data_parallel == target_effective_batch_size``
exactly and picks the largest per-step batch whose estimated peak memory fits in a
conservative fraction of the GPU (the seed's fractions: 0.6, 0.45 from width 64,
0.35 from width 128), because the estimate ignores allocator fragmentation and
library workspaces.
"""

from __future__ import annotations

import dataclasses

from orchestrator.errors import UsageError
from orchestrator.profiles import Profile, get_profile
from orchestrator.spec import ExperimentSpec

GB = 1e9
# (minimum width, fraction of GPU memory the estimate may use), widest match wins
DEFAULT_MEMORY_FRACTIONS: tuple[tuple[int, float], ...] = ((0, 0.6), (64, 0.45), (128, 0.35))
# fp32 master weights, fp32 gradients, two fp32 Adam moments, a bf16 copy for autocast
BYTES_PER_PARAM_GPU = 4 + 4 + 8 + 2
BYTES_PER_PARAM_CPU = 4 + 4 + 8
# CUDA context, cuBLAS/cuDNN workspaces, allocator slack
FRAMEWORK_OVERHEAD_GB = 1.0


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    static_gb: float           # weights, gradients, optimizer state, framework overhead
    per_sample_gb: float       # activations kept for backward, per sequence

    def peak_gb(self, batch_size: int) -> float:
        return self.static_gb + batch_size * self.per_sample_gb


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    batch_size: int            # sequences per forward/backward on one GPU
    grad_accum: int            # micro-steps per optimizer step
    data_parallel: int         # ranks (GPUs) sharing the effective batch
    peak_memory_gb: float      # estimate at batch_size
    memory_budget_gb: float    # memory_fraction * gpu_mem_gb
    memory_fraction: float
    gpu_mem_gb: float

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size * self.grad_accum * self.data_parallel

    def to_dict(self) -> dict:
        # the fields are plain numbers: asdict's recursive deep copy would only cost time
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def memory_fraction(hidden_dim: int, fractions=DEFAULT_MEMORY_FRACTIONS) -> float:
    chosen = None
    for min_width, fraction in sorted(fractions):
        if hidden_dim >= min_width:
            chosen = fraction
    if chosen is None or not 0 < chosen <= 1:
        raise UsageError(f"no valid memory fraction for width {hidden_dim} in {fractions!r}")
    return chosen


def estimate_memory(spec: ExperimentSpec, profile: Profile) -> MemoryEstimate:
    on_cpu = profile.gpu_type == "cpu"
    dtype_bytes = 4 if on_cpu else 2  # fp32 on CPU, bf16 autocast on GPUs
    per_param = BYTES_PER_PARAM_CPU if on_cpu else BYTES_PER_PARAM_GPU
    overhead = 0.0 if on_cpu else FRAMEWORK_OVERHEAD_GB
    # frozen parameters (a fine-tune) are held in the training precision, with no gradient or Adam state
    trainable = getattr(spec, "trainable_params", spec.total_params)
    frozen_bytes = (spec.total_params - trainable) * dtype_bytes
    return MemoryEstimate(
        static_gb=(trainable * per_param + frozen_bytes) / GB + overhead,
        per_sample_gb=spec.activation_bytes_per_sample(dtype_bytes) / GB,
    )


def divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(n ** 0.5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def plan_batch(spec: ExperimentSpec, profile: Profile | None = None,
               fractions=DEFAULT_MEMORY_FRACTIONS) -> BatchPlan:
    """The largest per-GPU batch dividing the per-rank batch that fits the memory budget."""
    profile = profile or get_profile(spec.partition)
    ranks = spec.gpus
    per_rank = spec.target_effective_batch_size // ranks
    fraction = memory_fraction(spec.hidden_dim, fractions)
    budget = fraction * profile.gpu_mem_gb
    estimate = estimate_memory(spec, profile)
    fitting = [b for b in divisors(per_rank) if estimate.peak_gb(b) <= budget]
    if not fitting:
        raise UsageError(
            f"{spec.run_name} does not fit on partition {profile.name!r} even at batch 1: "
            f"needs ~{estimate.peak_gb(1):.1f} GB, budget {budget:.1f} GB "
            f"({fraction:.0%} of {profile.gpu_mem_gb} GB)")
    batch = max(fitting)
    return BatchPlan(batch_size=batch, grad_accum=per_rank // batch, data_parallel=ranks,
                     peak_memory_gb=estimate.peak_gb(batch), memory_budget_gb=budget,
                     memory_fraction=fraction, gpu_mem_gb=profile.gpu_mem_gb)
