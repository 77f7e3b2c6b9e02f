"""LSTM registries: the second architecture, trained with DDP on 2 GPUs per experiment.

Every LSTM here is sized to match a transformer of ``experiments.transformer``: its
non-embedding N is that of the transformer at width ``w`` (2 LSTM layers, the hidden size
solved for; ``workloads.lstm.matched_hidden_dim``), and its token budget D is that
transformer's budget at the same tokens-per-parameter ratio. So the LSTM's and the
transformer's (N, D) grids coincide, and the two laws can be fitted side by side.
The labels name the transformer width they match: ``lstm_128d_20tpp`` has hidden size 224.

    transformer width (layers)   its N non-emb   LSTM 2 x hidden   LSTM N non-emb   mismatch
                  64 (3)              147,904          96             148,992         +0.7 %
                 128 (4)              787,584         224             806,400         +2.4 %
                 256 (6)            4,721,920         544           4,743,680         +0.5 %
                 512 (8)           25,174,528        1256          25,260,672         +0.3 %
                1024 (11)         138,435,584        2944         138,721,280         +0.2 %
"""

from orchestrator.builders import create_multi_lr_experiments
from orchestrator.spec import make_spec
from workloads.lstm import gen_lstm_experim, matched_hidden_dim  # noqa: F401  (for registry modules)

LSTM_WIDTHS = (64, 128, 256, 512)              # the transformer widths matched
LSTM_TOKENS_PER_PARAM = (10, 20, 40)           # of the matched transformer's parameters
# Not tuned yet: LSTM_LR_SWEEP measures the rate per size; until then one rate for all.
LSTM_LR = {64: 2e-3, 128: 2e-3, 256: 2e-3, 512: 2e-3}


def transformer_tokens(width: int, tokens_per_param: float) -> int:
    """D of the transformer at ``width`` trained at ``tokens_per_param`` (its own total N)."""
    return make_spec("transformer", hidden_dim=width, label="matched", tokens_per_param=tokens_per_param).tokens


LSTM_SCALING = [
    spec
    for width in LSTM_WIDTHS
    for ratio in LSTM_TOKENS_PER_PARAM
    for spec in gen_lstm_experim(matched_width=width, label=f"lstm_{width}d_{ratio}tpp", folder_name="lstm_scaling",
                                 partition="miso", learning_rate=LSTM_LR[width],
                                 train_tokens=transformer_tokens(width, ratio))
]

# The same sizes at 20 tokens per parameter over the transformer's narrow sweep (x sqrt(10) steps).
LSTM_LR_SWEEP = create_multi_lr_experiments(
    [spec
     for width in LSTM_WIDTHS[:3]
     for spec in gen_lstm_experim(matched_width=width, label=f"lstm_{width}d", folder_name="lstm_lr_tune",
                                  partition="miso", train_tokens=transformer_tokens(width, 20))],
    [10**-3.5, 10**-3, 10**-2.5, 10**-2, 10**-1.5],
)
