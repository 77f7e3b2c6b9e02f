"""Helpers that researchers write registries with: each returns a list, so registries are sums."""

from __future__ import annotations

from typing import Iterable

from orchestrator.spec import ExperimentSpec, make_spec
# lingua's names and per-GPU batch (orchestrator/lingua.py): builders too, exported with these
from orchestrator.lingua import from_lingua_config, lingua_experim  # noqa: F401


def gen_experim(hidden_dim: int, label: str, folder_name: str | None = None,
                **overrides) -> list[ExperimentSpec]:
    """One experiment at ``hidden_dim``, as a one-element list: ``gen_experim(64, label="vanilla_64d")``.

    Depth and heads follow the width unless given; ``workload="lstm"`` (or any
    registered workload) picks another trainer.
    """
    return [make_spec(hidden_dim=hidden_dim, label=label, folder_name=folder_name, **overrides)]


def lr_tag(learning_rate: float) -> str:
    """A filesystem-safe rendering: 3 significant digits, ``p`` for the point, ``e-N`` exponent.

    0.001 -> ``1e-3``, 10**-2.5 -> ``3p16e-3``, 0.02 -> ``2e-2``, 1.5 -> ``1p5e0``.
    """
    mantissa, exponent = f"{learning_rate:.2e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".").replace(".", "p")
    return f"{mantissa}e{int(exponent)}"


def create_multi_lr_experiments(experiments: Iterable[ExperimentSpec],
                                learning_rates: Iterable[float]) -> list[ExperimentSpec]:
    """One copy of each experiment per learning rate.

    Labels get the suffix ``_lr_<lr_tag(lr)>`` and the output folder becomes
    ``<folder_name>_lr_sweep``, so a sweep never mixes with the runs it was made from.
    """
    rates = list(learning_rates)
    return [
        spec.replace(learning_rate=lr, label=f"{spec.label}_lr_{lr_tag(lr)}",
                     folder_name=f"{spec.folder_name}_lr_sweep")
        for spec in experiments
        for lr in rates
    ]
