"""Experiment registries: every UPPER_CASE list of specs in a module here is a registry.

    from experiments import gen_experim, create_multi_lr_experiments

    MY_STUDY = gen_experim(64, label="vanilla_64d", learning_rate=1e-3) + \\
               gen_experim(128, label="vanilla_128d", learning_rate=10**-3.5)

Your own registries can live outside this package: see README ("Your own registries").
"""

from orchestrator.builders import create_multi_lr_experiments, gen_experim, lr_tag  # noqa: F401
