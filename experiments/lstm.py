"""LSTM registries: the second architecture, trained with DDP on 2 GPUs per experiment."""

from orchestrator.builders import gen_experim

LSTM_SCALING = [
    spec
    for hidden in (64, 128, 256, 512)
    for ratio in (10, 20, 40)
    for spec in gen_experim(hidden, label=f"lstm_{hidden}h_{ratio}tpp", folder_name="lstm_scaling",
                            workload="lstm", partition="miso", learning_rate=2e-3, tokens_per_param=ratio)
]
