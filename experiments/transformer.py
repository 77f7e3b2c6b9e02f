"""Transformer registries: the scaling study, its learning-rate tuning, activations."""

from orchestrator.builders import create_multi_lr_experiments, gen_experim

# Learning rate per width. 32 and 64 are the seed's tuned values; wider models follow
# the ~1/sqrt(width) trend of that sweep until TRANSFORMER_LR_TUNE_MUP_STANDARD re-tunes them.
OPTIMAL_LR = {32: 1e-2, 64: 10**-2.5, 128: 10**-2.75, 256: 10**-3, 512: 10**-3.25, 1024: 10**-3.5}

TRANSFORMER_SCALING_EXPERIMENTS_OPTIMAL_LR = (
    gen_experim(32, label="vanilla_32d", learning_rate=OPTIMAL_LR[32])
    + gen_experim(64, label="vanilla_64d", learning_rate=OPTIMAL_LR[64])
    + gen_experim(128, label="vanilla_128d", learning_rate=OPTIMAL_LR[128])
    + gen_experim(256, label="vanilla_256d", learning_rate=OPTIMAL_LR[256])
    + gen_experim(512, label="vanilla_512d", learning_rate=OPTIMAL_LR[512])
)

# A Chinchilla-style grid: every width at several tokens-per-parameter ratios, so the
# fit of L(N, D) = E + A/N^alpha + B/D^beta sees N and D vary independently.
SCALING_WIDTHS = (64, 128, 256, 512, 1024)
SCALING_TOKENS_PER_PARAM = (5, 10, 20, 40, 80)

TRANSFORMER_SCALING = [
    spec
    for width in SCALING_WIDTHS
    for ratio in SCALING_TOKENS_PER_PARAM
    for spec in gen_experim(width, label=f"scaling_{width}d_{ratio}tpp", folder_name="transformer_scaling",
                            learning_rate=OPTIMAL_LR[width], tokens_per_param=ratio)
]

# muP against standard parametrisation over a narrow sweep around the tuned rates:
# under muP the best rate should stay put as the width grows.
NARROW_LR_SWEEP = [10**-3.5, 10**-3, 10**-2.5, 10**-2, 10**-1.5]
LR_TUNE_WIDTHS = (32, 64, 128, 256)

TRANSFORMER_LR_TUNE_MUP_STANDARD = create_multi_lr_experiments(
    [spec
     for width in LR_TUNE_WIDTHS
     for use_mup in (True, False)
     for spec in gen_experim(width, label=f"{'mup' if use_mup else 'sp'}_{width}d",
                             folder_name="lr_tune_mup_standard", use_mup=use_mup)],
    NARROW_LR_SWEEP,
)

ACTIVATION_EXPERIMENTS = [
    spec
    for width in (64, 128, 256)
    for activation in ("gelu", "relu", "swiglu")
    for spec in gen_experim(width, label=f"{activation}_{width}d", folder_name="activation",
                            activation=activation, learning_rate=OPTIMAL_LR[width])
]
