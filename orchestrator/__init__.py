"""Run scaling-law studies on SLURM (or this machine): specs -> plan -> jobs -> runs -> fits.

Researchers write registries with ``experiments.gen_experim`` and
``experiments.create_multi_lr_experiments``; the CLI is ``python -m orchestrator``.
"""

__version__ = "0.1.0"
