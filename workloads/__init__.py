"""Workload trainers. Each workload is a package whose ``__init__`` registers its spec.

The ``__init__`` modules are light (no torch): the CLI imports them to expand and plan
experiments. The trainers they name (``Spec.trainer``) import torch when they run.

Adding a workload: a package ``workloads/<name>/`` with a registered
``ExperimentSpec`` subclass, plus one import line below.
"""

from workloads import command, finetune, lmu_asr, lstm, transformer  # noqa: F401  (registration)
