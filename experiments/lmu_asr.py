"""Speech recognition registries (issue 14): the lab's LMU + CTC recogniser as specs.

On the cluster the data is a local copy of LibriSpeech (``LIBRISPEECH_ROOT``, default
``/data/librispeech``, holding ``train-clean-100/``, ``dev-clean/``, ``test-clean/``); train-clean-100
is 100.6 hours in 28,539 utterances, 12.69 s on average. ``ASR_CPU`` and the ``_CPU`` registries run
on a laptop on the synthetic ``speech`` corpus (espeak-ng).
"""

import os

from workloads.lmu_asr import gen_lmu_asr_experim

LIBRISPEECH_ROOT = os.environ.get("LIBRISPEECH_ROOT", "/data/librispeech")
LIBRISPEECH = dict(dataset=LIBRISPEECH_ROOT, train_subset="train-clean-100", val_subset="dev-clean",
                   mean_utterance_s=12.69)
# the seed's model: 4 layers of 512 hidden units with a memory of order 256 (window 1 s), over
# 80-band log-mels stacked by 3 (30 ms steps); 32 utterances a GPU a step (~6.8 min of audio)
SEED_MODEL = dict(hidden_dim=512, num_layers=4, memory_dim=256, memory_channels=1, frame_stack=3, encoder="lmufft",
                  bidirectional=True, dropout=0.1)
PER_GPU_BATCH = 32
BASE_LR = 1e-3  # at one GPU; scaled linearly with the GPUs (and the batch)
EPOCHS = 50  # of train-clean-100: 5,030 hours of audio


def librispeech_run(gpus: int, label: str, folder_name: str, partition: str, width: int = 512,
                    hours: float = EPOCHS * 100.6, **fields):
    return gen_lmu_asr_experim(**{**SEED_MODEL, "hidden_dim": width}, **LIBRISPEECH, label=label,
                               folder_name=folder_name, partition=partition, gpus=gpus,
                               target_effective_batch_size=PER_GPU_BATCH * gpus, learning_rate=BASE_LR * gpus,
                               train_hours=hours, **fields)


# the seed's model on one A100, 50 epochs of clean-100
LMU_ASR_SMALL = librispeech_run(1, "lmu_asr_4x512_sphinx", "lmu_asr_small", "sphinx", time_min=2880)

# the same on 1, 2, 4 and 8 H200s of miso: the global batch and the learning rate grow with the GPUs
LMU_ASR_MULTI_GPU = [spec for gpus in (1, 2, 4, 8)
                     for spec in librispeech_run(gpus, f"lmu_asr_4x512_{gpus}gpu", "lmu_asr_multi_gpu", "miso",
                                                 time_min=2880)]

# widths x hours of audio on one H200 each, for analyze: N from 0.3M to 5M, D from 5 to 50 epochs
LMU_ASR_SCALING = [spec for width in (128, 256, 384, 512) for epochs in (5, 15, 50)
                   for spec in librispeech_run(1, f"lmu_asr_{width}w_{epochs}ep", "lmu_asr_scaling", "miso",
                                               width=width, hours=epochs * 100.6, time_min=2880)]

# ---------------------------------------------------------------------------- on a CPU
# what a laptop's CPU trains in about 2 minutes (2 threads) on the synthetic corpus (1,000
# utterances, 42 min of audio; 200 held out): a bidirectional LMUFFT encoder over 30 ms steps,
# 3 x 192 with 8 memories of order 32; 20 hours of audio (about 28 epochs) reach ~27 % CER
CPU_MODEL = dict(hidden_dim=192, num_layers=3, memory_dim=32, memory_channels=8, frame_stack=3, encoder="lmufft",
                 bidirectional=True, dropout=0.1, partition="local", target_effective_batch_size=16,
                 learning_rate=3e-3, eval_batches=4, log_interval_steps=100)
ASR_CPU = dict(CPU_MODEL, label="asr_cpu", folder_name="lmu_asr_cpu", train_hours=20, cpus_per_gpu=2)
LMU_ASR_CPU = gen_lmu_asr_experim(**ASR_CPU)

# a tiny scaling study: 4 widths x 3 hours of audio, one CPU process each (a few minutes with 2 at once)
LMU_ASR_SCALING_CPU = [spec for width in (32, 64, 96, 128) for hours in (2.0, 4.0, 8.0)
                       for spec in gen_lmu_asr_experim(**{**CPU_MODEL, "hidden_dim": width, "num_layers": 2,
                                                          "memory_dim": 16, "memory_channels": 4,
                                                          "learning_rate": 3e-3, "log_interval_steps": 20,
                                                          "eval_batches": 2},
                                                       label=f"asr_{width}w_{hours:g}h", folder_name="lmu_asr_scaling_cpu",
                                                       train_hours=hours)]
