"""Every CUDA path of the toolkit, checked and measured in one short run (issue 17).

    python benchmarks/gpu_suite.py --out gpu_suite.json     # one GPU: about 8 minutes on an H200
    python benchmarks/gpu_suite.py --smoke --out smoke.json  # CPU, tiny sizes: CI runs it so it never rots

Each case trains through the real trainer (``workloads.run``, the shared loop) for a few steps in
a temporary results folder and reads its own metrics CSV after the warm-up rows: tokens/s,
samples/s, MFU (``spec.flops_per_token()``: 6 N + 12 L d T per token for the transformer, N without
the position embeddings, against the partition profile's peak: miso's 989 TFLOP/s bf16 dense for
an H100/H200, stated in the table), step time (median and spread) and the peak allocated memory,
which the memory planner's estimate for the same batch is divided by. A case that fails is a row
with its one-line error, not the end of the suite.

Cases: the transformer in bf16 at lingua's 27.5M shape (d 512, 8 layers, T 2048, batch 8) and at
GPT-2 small's (768 x 12, T 1024; 85M parameters with our 256 byte tokens, not GPT-2's 124M), at the
largest batch the planner allows, eager and compiled; the planner at 4 widths x 2 lengths; the
LSTM (cuDNN; fp32 outside autocast); LMU ASR (synthetic speech: needs espeak-ng and sox);
GradDotProd against regular training at the same shape; FP16 fine-tuning of a saved GPT-NeoX with
and without gradient checkpointing. ``--only NAME`` runs the cases whose name contains it.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
import time
import traceback
from pathlib import Path

WARMUP_ROWS = 1  # the row of step 1 (and a compiled run's first logged interval) is left out


def run_case(spec, steps_logged: int, data_cache, build=None, **options) -> dict:
    """Train ``spec`` through its workload's trainer; the CSV's medians after the warm-up."""
    import torch

    from orchestrator.paths import RunPaths
    from orchestrator.planner import estimate_memory
    from orchestrator.profiles import get_profile
    from workloads.loop import resolve_batch

    with tempfile.TemporaryDirectory() as root:
        path = Path(root) / "spec.json"
        path.write_text(json.dumps(spec.to_dict()))
        started = time.perf_counter()
        if build is not None:
            build(Path(root))
        from workloads.run import run

        status = run(path, root=root, data_cache=data_cache, **options)
        wall = time.perf_counter() - started
        with open(RunPaths.of(spec.folder_name, spec.label, root).metrics_csv, newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if r["tokens_per_s"]]
    if status.get("state") != "completed":
        raise RuntimeError(f"the run ended {status.get('state')}: {status.get('error', '')}")
    timed = rows[WARMUP_ROWS:] or rows
    plan = resolve_batch(spec, 1, options.get("batch_size"), options.get("grad_accum"))

    def median(column):
        values = [float(r[column]) for r in timed if r.get(column)]
        return statistics.median(values) if values else None

    steps = [float(r["step_time_s"]) for r in timed]
    measured = median("peak_mem_allocated_gb")
    estimate = estimate_memory(spec, get_profile(spec.partition)).peak_gb(plan.batch_size)
    return {"batch": plan.batch_size, "accum": plan.grad_accum, "tokens_per_s": median("tokens_per_s"),
            "samples_per_s": median("samples_per_s"), "mfu": median("mfu"), "step_time_s": median("step_time_s"),
            "step_spread": (max(steps) - min(steps)) / statistics.median(steps) if len(steps) > 1 else 0.0,
            "peak_mem_gb": measured, "estimate_gb": round(estimate, 3),
            "memory_ratio": round(estimate / measured, 3) if measured else None, "wall_s": round(wall, 1),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}


def transformer(label, smoke, steps, **fields):
    from orchestrator.spec import make_spec

    base = dict(partition="local" if smoke else "miso", gpus=1, log_interval_steps=max(1, steps // 4),
                eval_interval_steps=10 ** 6, checkpoint_interval_steps=10 ** 6, warmup_steps=1)
    fields = {**base, **fields}
    batch = fields.pop("batch", None)
    if batch is None:  # the planner's largest batch for one GPU
        from orchestrator.planner import plan_batch

        batch = plan_batch(make_spec("transformer", label=label, train_tokens=10 ** 9, target_effective_batch_size=512,
                                     **fields)).batch_size
    tokens = steps * batch * fields["seq_length"]
    return make_spec("transformer", label=label, train_tokens=tokens, target_effective_batch_size=batch, **fields)


def cases(smoke: bool) -> list[tuple[str, callable]]:
    """(name, function returning the case's result dict)."""
    from orchestrator.spec import make_spec

    steps = 4 if smoke else 40
    small = dict(hidden_dim=32, num_layers=2, num_heads=2, seq_length=64, batch=4) if smoke else {}
    lingua = small or dict(hidden_dim=512, num_layers=8, num_heads=8, seq_length=2048, activation="swiglu",
                           positional="rotary", tie_embeddings=False, batch=8)
    gpt2 = small or dict(hidden_dim=768, num_layers=12, num_heads=12, seq_length=1024)
    found = []
    for name, shape in (("lingua27m", lingua), ("gpt2_small", gpt2)):
        for compiled in (False, True):
            if smoke and compiled:
                continue  # compiling on a 2-core CPU takes minutes: the GPU run covers it
            label = f"{name}_{'compiled' if compiled else 'eager'}"
            found.append((f"transformer {label}", lambda shape=shape, label=label, compiled=compiled, data_cache=None:
                          run_case(transformer(label, smoke, steps, compile=compiled, **shape), steps, data_cache)))
    widths = (32, 48) if smoke else (256, 512, 1024, 2048)
    lengths = (32,) if smoke else (512, 2048)
    for width in widths:
        for length in lengths:
            found.append((f"planner d{width} T{length}", lambda width=width, length=length, data_cache=None: run_case(
                transformer(f"plan_{width}_{length}", smoke, 3 if smoke else 8, hidden_dim=width, seq_length=length),
                3 if smoke else 8, data_cache)))

    def lstm(data_cache=None):
        width, length = (32, 32) if smoke else (1024, 512)
        spec = make_spec("lstm", label="lstm", hidden_dim=width, num_layers=2, seq_length=length, gpus=1,
                         partition="local" if smoke else "miso", target_effective_batch_size=8 if smoke else 64,
                         train_tokens=(8 if smoke else 64) * length * steps, log_interval_steps=max(1, steps // 4),
                         eval_interval_steps=10 ** 6, warmup_steps=1)
        return run_case(spec, steps, data_cache)

    def asr(data_cache=None):
        from workloads.lmu_asr import gen_lmu_asr_experim

        width = 64 if smoke else 512
        spec = gen_lmu_asr_experim(width, label="asr", num_layers=2 if smoke else 4, memory_dim=16 if smoke else 256,
                                   frame_stack=3, partition="local" if smoke else "miso", gpus=1,
                                   target_effective_batch_size=4 if smoke else 32, speech_train_utterances=8 if smoke else 400,
                                   speech_dev_utterances=2 if smoke else 20,
                                   train_hours=(4 if smoke else 32) * steps * 2.5 / 3600,
                                   log_interval_steps=max(1, steps // 4), eval_interval_steps=10 ** 6, warmup_steps=1)[0]
        return run_case(spec, steps, data_cache)

    def graddot(data_cache=None):
        shape = small or dict(hidden_dim=768, num_layers=12, num_heads=12, seq_length=1024, batch=16)
        regular = run_case(transformer("regular", smoke, steps, **shape), steps, data_cache)
        attributed = run_case(transformer("graddot", smoke, steps, method="graddotprod", val_batch_size=2,
                                          attribution_dataset="shakespeare", **shape), steps, data_cache)
        attributed["overhead"] = round(regular["step_time_s"] and attributed["step_time_s"] / regular["step_time_s"] - 1, 3)
        attributed["regular_tokens_per_s"] = regular["tokens_per_s"]
        return attributed

    def finetune(checkpointing, data_cache=None):
        from workloads.finetune import gen_finetune_experim

        width, layers, heads, vocab = (32, 4, 2, 300) if smoke else (1024, 8, 16, 1024)
        spec = gen_finetune_experim("./base", label="ft", hidden_dim=width, num_layers=layers, num_heads=heads,
                                    vocab_size=vocab, seq_length=128 if smoke else 512, precision="fp16",
                                    gradient_checkpointing=checkpointing, partition="local" if smoke else "miso",
                                    gpus=1, dataset="shakespeare_poems",
                                    prompt_template="Artist: {artist}\nLyrics: {lyrics}\n",
                                    target_effective_batch_size=8 if smoke else 24, train_samples=(8 if smoke else 24) * steps,
                                    log_interval_steps=max(1, steps // 4), eval_interval_steps=10 ** 6, warmup_steps=1)[0]

        def build(root: Path):  # a randomly initialised GPT-NeoX saved as from_pretrained reads it
            import os

            from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

            from workloads.finetune import data

            os.chdir(root)
            texts = data.rendered_texts("kjv", "{text}\n", data_cache)[:3000]
            tokenizer = data.train_tokenizer(texts, vocab, root / "base")
            config = GPTNeoXConfig(vocab_size=len(tokenizer), hidden_size=width, num_hidden_layers=layers,
                                   num_attention_heads=heads, intermediate_size=4 * width,
                                   max_position_embeddings=spec.seq_length + 1, tie_word_embeddings=False,
                                   bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
            GPTNeoXForCausalLM(config).save_pretrained(root / "base")

        cwd = Path.cwd()
        try:
            return run_case(spec, steps, data_cache, build=build)
        finally:
            import os

            os.chdir(cwd)

    found += [("lstm", lstm), ("lmu_asr", asr), ("graddotprod", graddot),
              ("finetune fp16", lambda data_cache=None: finetune(False, data_cache)),
              ("finetune fp16 + checkpointing", lambda data_cache=None: finetune(True, data_cache))]
    return found


COLUMNS = ("case", "status", "batch", "tokens_per_s", "samples_per_s", "mfu", "step_time_s", "step_spread",
           "peak_mem_gb", "estimate_gb", "memory_ratio", "overhead", "wall_s")


def table(results: list[dict]) -> str:
    def cell(value):
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    rows = [[cell(r.get(c)) for c in COLUMNS] for r in results]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows]
    for r in results:
        if r["status"] != "ok":
            lines.append(f"{r['case']}: {r['error']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (CI)")
    parser.add_argument("--out", default="gpu_suite.json", help="where to write the JSON (default gpu_suite.json)")
    parser.add_argument("--only", help="run the cases whose name contains this")
    parser.add_argument("--data-cache", help="token cache directory (default: $ORCHESTRATOR_DATA_CACHE)")
    args = parser.parse_args()

    import torch

    if args.smoke:
        torch.set_num_threads(1)
    elif not torch.cuda.is_available():
        parser.error("no CUDA device here: run with --smoke on a CPU")
    results = []
    for name, case in cases(args.smoke):
        if args.only and args.only not in name:
            continue
        started = time.perf_counter()
        try:
            results.append({"case": name, "status": "ok", **case(data_cache=args.data_cache)})
        except Exception as exc:  # one case's failure is a row; the others still run
            results.append({"case": name, "status": "failed", "error": f"{type(exc).__name__}: {exc}".splitlines()[0],
                            "traceback": traceback.format_exc()[-2000:], "wall_s": round(time.perf_counter() - started, 1)})
        print(f"{name}: {results[-1]['status']} ({results[-1]['wall_s']} s)", flush=True)
    from orchestrator.profiles import get_profile

    report = {"smoke": args.smoke, "torch": torch.__version__,
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "peak_tflops": get_profile("miso").peak_flops_per_gpu / 1e12, "results": results}
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"\n{report['device']}, torch {report['torch']}; MFU against {report['peak_tflops']:g} TFLOP/s bf16 dense "
          f"(miso's profile){' - smoke sizes on the CPU: the numbers mean nothing' if args.smoke else ''}")
    print(table(results))
    print(f"wrote {args.out}")
    return 1 if any(r["status"] != "ok" for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
