"""QUICKSTART: a real, small scaling study whose fitted law is constrained, on a 2-core CPU.

Five widths (16 to 96, two layers each, so width alone sets N: 10k to 250k parameters) at
three token budgets (350k, 1.4M, 2.8M) on the Shakespeare text: 15 (N, D) points with
D/N from 1.4 to 270, 12 of them left when `analyze` holds out the largest size to test the
law's extrapolation. About 5 minutes of training, two runs at a time (`show QUICKSTART`
estimates it from this CPU's measured speed).

The design came from a search (the closing note of issue 12 has the numbers):
- Rotary positions: with learned positions these models sit on a plateau near the bigram
  loss (~2.4) for hundreds of steps and leave it at a step that varies with the seed, so
  runs of one size at one budget differed by up to 0.2 nats. Rotary models leave it early
  and their losses fall smoothly with both N and D.
- 16 sequences of 64 tokens a step: at this scale the runs are limited by optimizer steps
  more than by tokens; halving the batch of 32 lowered every loss at the same D.
- A learning rate tuned for each width (a sweep of 4 rates at 700k tokens; the best fall
  roughly as width^-0.7), so no bigger model loses to a smaller one for want of tuning.
- Budgets from 350k tokens: below that every size is still near the bigram plateau and the
  loss hardly depends on N (the data-limited design the old QUICKSTART had).
On this design `analyze` finds E ~1.48, alpha ~0.6, beta ~0.78, N_opt ∝ C^0.56, with every
95% interval within the bounds issue 12 sets (E, alpha, beta within +-50%, a within +-0.2,
N_opt at the middle budget within 3x), no bootstrap resample running off, and the law fitted
without the 96-wide runs predicting their losses within ~1%.
"""

from orchestrator.builders import gen_experim

# width -> learning rate, tuned per width at 700k tokens (rotary, 16 x 64 tokens a step)
QUICKSTART_LEARNING_RATES = {96: 0.0056, 64: 0.0074, 48: 0.009, 32: 0.012, 16: 0.039}
QUICKSTART_TOKENS = (2_800_000, 1_400_000, 350_000)

# largest first: with two runs at a time, the longest ones start early and the study ends sooner
QUICKSTART = [
    spec
    for width, learning_rate in QUICKSTART_LEARNING_RATES.items()
    for tokens in QUICKSTART_TOKENS
    for spec in gen_experim(width, label=f"qs_{width}d_{tokens // 1000}k", folder_name="quickstart",
                            partition="local", num_layers=2, seq_length=64, target_effective_batch_size=16,
                            positional="rotary", learning_rate=learning_rate, train_tokens=tokens,
                            eval_batches=64, checkpoint_interval_steps=1000)
]
