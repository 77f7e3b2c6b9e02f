"""Experiment registries: every UPPER_CASE list of specs in a module here is a registry.

    from experiments import gen_experim, create_multi_lr_experiments

    MY_STUDY = gen_experim(64, label="vanilla_64d", learning_rate=1e-3) + \\
               gen_experim(128, label="vanilla_128d", learning_rate=10**-3.5)

Your own registries can live outside this package: see README ("Your own registries").
"""

from orchestrator.builders import (  # noqa: F401
    create_multi_lr_experiments, from_lingua_config, gen_experim, lingua_experim, lr_tag)
