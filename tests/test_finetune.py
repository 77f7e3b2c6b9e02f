"""The finetune workload: a saved GPT-NeoX trained further with only its last layers trainable, through
the shared loop, in fp32 and in fp16 (autocast float16 + GradScaler on this CPU)."""

import csv
import json
import os
import signal

import pytest
import torch

from orchestrator.errors import UsageError
from orchestrator.paths import RunPaths, read_status
from orchestrator.spec import make_spec
from workloads import interrupt
from workloads.finetune import data as finetune_data
from workloads.finetune.train import main
from workloads.interrupt import RunInterrupted
from workloads.loop import grad_scaler_for, latest_checkpoint

LAYERS = 4


@pytest.fixture(scope="module")
def base_model(tmp_path_factory, data_cache):
    """A tiny GPT-NeoX and its BPE, saved as from_pretrained expects: the stand-in for Pythia."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    directory = tmp_path_factory.mktemp("base") / "neox"
    texts = finetune_data.rendered_texts("kjv", "{text}\n", data_cache)[:3000]
    tokenizer = finetune_data.train_tokenizer(texts, 300, directory)
    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=129, rotary_pct=0.25,
                           tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                           eos_token_id=tokenizer.eos_token_id)
    GPTNeoXForCausalLM(config).save_pretrained(directory)
    return directory, len(tokenizer)


def spec_for(base, **fields):
    directory, vocab = base
    fields = {"label": "ft", "base_model": str(directory), "hidden_dim": 32, "num_layers": LAYERS, "num_heads": 2,
              "intermediate_dim": 64, "vocab_size": vocab, "seq_length": 128, "partition": "local",
              "dataset": "shakespeare_poems", "prompt_template": "Artist: {artist}\nLyrics: {lyrics}\n",
              "train_samples": 8 * 12, "target_effective_batch_size": 8, "learning_rate": 3e-3,
              "precision": "fp32", "eval_interval_steps": 6, "eval_batches": 2, "log_interval_steps": 1, **fields}
    return make_spec("finetune", **fields)


def train_spec(spec, root, data_cache, **options):
    path = root / "specs" / f"{spec.label}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec.to_dict()))
    return main(path, root=root, data_cache=data_cache, **options)


def saved_weights(base_model):
    from transformers import AutoModelForCausalLM

    return {k: v.float() for k, v in AutoModelForCausalLM.from_pretrained(base_model[0]).state_dict().items()}


def trained_weights(spec, root):
    from transformers import AutoModelForCausalLM

    best = RunPaths.of(spec.folder_name, spec.label, root).run_dir / "best_model"
    return {k: v.float() for k, v in AutoModelForCausalLM.from_pretrained(best).state_dict().items()}


def changed(before, after):
    return sorted(k for k in before if not torch.equal(before[k], after[k]))


# ------------------------------------------------------------------ the spec
def test_the_trainable_count_follows_the_layers_and_flags(base_model):
    d, i, v = 32, 64, base_model[1]
    layer = 4 * d + 3 * d * d + 3 * d + d * d + d + d * i + i + i * d + d
    assert spec_for(base_model).trainable_params == 2 * layer
    assert spec_for(base_model, train_final_norm=True, train_head=True).trainable_params == 2 * layer + 2 * d + v * d
    assert spec_for(base_model, train_last_n_layers=1).trainable_params == layer


@pytest.mark.parametrize("fields, message", [
    ({"precision": "fp8"}, "unknown precision 'fp8'"),
    ({"attn_implementation": "flash_attention_2"}, "needs the flash-attn package"),
    ({"attn_implementation": "magic"}, "unknown attn_implementation 'magic'"),
    ({"train_last_n_layers": 5}, r"train_last_n_layers must be in \[0, 4\]"),
    ({"train_last_n_layers": 0}, "nothing would train"),
    ({"base_model": "run:onlyfolder"}, "a run is 'run:<folder>/<label>'"),
    ({"base_model": "scratch"}, "set train_last_n_layers=None"),
    ({"prompt_template": "no fields"}, "must name record fields"),
    ({"dataset": "lyrics"}, "unknown dataset 'lyrics'"),
    ({"num_heads": 3}, "num_heads=3 does not divide hidden_dim=32"),
])
def test_a_bad_finetune_experiment_fails_at_expansion(base_model, fields, message):
    with pytest.raises(UsageError, match=message) as error:
        spec_for(base_model, **fields)
    assert len(str(error.value).splitlines()) == 1


def test_a_run_as_base_model_is_a_dependency(base_model):
    spec = spec_for(base_model, base_model="run:pretrain/neox_tiny")
    assert spec.dependencies() == ("pretrain/neox_tiny",)
    assert spec_for(base_model).dependencies() == ()


def test_a_base_model_of_another_shape_is_refused(base_model, tmp_path, data_cache):
    spec = spec_for(base_model, hidden_dim=64, num_heads=2)
    with pytest.raises(UsageError, match="hidden_dim=64 but the model has 32"):
        train_spec(spec, tmp_path, data_cache)


# ------------------------------------------------------------------ training
def test_only_the_last_two_layers_change_and_frozen_weights_stay_bit_identical(base_model, tmp_path, data_cache,
                                                                                capsys):
    spec = spec_for(base_model)
    assert train_spec(spec, tmp_path, data_cache)["state"] == "completed"
    before, after = saved_weights(base_model), trained_weights(spec, tmp_path)
    moved = changed(before, after)
    assert moved and all(k.startswith(("gpt_neox.layers.2.", "gpt_neox.layers.3.")) for k in moved)
    assert len(moved) == 2 * 12  # every tensor of the two layers (weights and biases)
    assert f"{spec.trainable_params:,} of {spec.total_params:,} parameters trainable" in capsys.readouterr().out
    checkpoint = torch.load(latest_checkpoint(RunPaths.of(spec.folder_name, spec.label, tmp_path)), weights_only=True)
    assert sorted(checkpoint["model"]) == sorted("lm." + k for k in moved)  # the trainable part only


def test_the_flags_add_the_final_norm_and_the_head(base_model, tmp_path, data_cache):
    spec = spec_for(base_model, train_last_n_layers=1, train_final_norm=True, train_head=True)
    train_spec(spec, tmp_path, data_cache)
    moved = changed(saved_weights(base_model), trained_weights(spec, tmp_path))
    assert {k.split(".")[0] if k.startswith("embed_out") or k.startswith("lm_head") else ".".join(k.split(".")[:3])
            for k in moved} == {"gpt_neox.layers.3", "gpt_neox.final_layer_norm.weight", "gpt_neox.final_layer_norm.bias",
                                "lm_head"}


def test_fp16_trains_float32_parameters_under_float16_autocast_with_a_grad_scaler(base_model, tmp_path, data_cache):
    spec = spec_for(base_model, precision="fp16")
    assert train_spec(spec, tmp_path, data_cache)["state"] == "completed"
    paths = RunPaths.of(spec.folder_name, spec.label, tmp_path)
    checkpoint = torch.load(latest_checkpoint(paths), weights_only=True)
    assert checkpoint["scaler"]["scale"] > 0 and all(v.dtype == torch.float32 for v in checkpoint["model"].values())
    with open(paths.metrics_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert all(float(r["loss"]) < 10 for r in rows) and float(rows[-1]["val_loss"]) < float(rows[0]["loss"])
    before = saved_weights(base_model)
    after = trained_weights(spec, tmp_path)
    frozen = [k for k in before if not k.startswith(("gpt_neox.layers.2.", "gpt_neox.layers.3."))]
    # the frozen part was held in float16: bit-identical to the base model's float16 rounding
    assert all(torch.equal(before[k].half().float(), after[k]) for k in frozen)


def test_a_trainable_float16_parameter_is_refused_before_training(base_model):
    spec = spec_for(base_model, precision="fp16")
    model = torch.nn.Linear(2, 2).half()
    with pytest.raises(RuntimeError, match="Attempting to unscale FP16 gradients"):
        grad_scaler_for(spec, model, torch.device("cpu"))


def test_the_run_writes_the_demos_artifacts(base_model, tmp_path, data_cache):
    from transformers import AutoModelForCausalLM

    spec = spec_for(base_model)
    train_spec(spec, tmp_path, data_cache)
    run_dir = RunPaths.of(spec.folder_name, spec.label, tmp_path).run_dir
    history = json.loads((run_dir / "training_history.json").read_text())
    summary = json.loads((run_dir / "training_summary.json").read_text())
    assert [e["step"] for e in history] == [0, 6, 12] and history[0]["val_loss"] > history[-1]["val_loss"]
    assert summary["trainable_params"] == spec.trainable_params and summary["best_val_loss"] == min(
        e["val_loss"] for e in history[1:])
    before = json.loads((run_dir / "demo_outputs" / "before.json").read_text())
    after = json.loads((run_dir / "demo_outputs" / "after.json").read_text())
    assert [g["prompt"] for g in before] == [g["prompt"] for g in after] and before[0]["prompt"].startswith("Artist: ")
    assert (run_dir / "demo_outputs" / "comparison.md").exists()
    AutoModelForCausalLM.from_pretrained(run_dir / "best_model")


def test_a_requeued_run_resumes_as_if_never_stopped(base_model, tmp_path, data_cache):
    spec = spec_for(base_model, checkpoint_interval_steps=100)
    train_spec(spec, tmp_path / "whole", data_cache)

    def stop_at_7(step, model):
        if step == 7:
            os.kill(os.getpid(), signal.SIGUSR2)

    with interrupt.handling_signals(), pytest.raises(RunInterrupted):
        train_spec(spec, tmp_path / "halves", data_cache, on_step=stop_at_7)
    assert read_status(RunPaths.of(spec.folder_name, spec.label, tmp_path / "halves"))["state"] == "interrupted"
    assert train_spec(spec, tmp_path / "halves", data_cache)["state"] == "completed"

    def losses(root):
        with open(RunPaths.of(spec.folder_name, spec.label, root).metrics_csv, newline="") as handle:
            return [float(r["loss"]) for r in csv.DictReader(handle)]

    assert losses(tmp_path / "whole") == pytest.approx(losses(tmp_path / "halves"), rel=1e-6)
    whole, halves = trained_weights(spec, tmp_path / "whole"), trained_weights(spec, tmp_path / "halves")
    assert max((whole[k] - halves[k]).abs().max().item() for k in whole) < 1e-6


def test_gradient_checkpointing_recomputes_the_same_training(base_model, tmp_path, data_cache):
    spec = spec_for(base_model, train_last_n_layers=3)
    train_spec(spec, tmp_path / "plain", data_cache)
    train_spec(spec.replace(gradient_checkpointing=True), tmp_path / "checkpointed", data_cache)
    assert spec.replace(gradient_checkpointing=True).identity == spec.identity  # how, not what

    def losses(root):
        with open(RunPaths.of(spec.folder_name, spec.label, root).metrics_csv, newline="") as handle:
            return [float(r["loss"]) for r in csv.DictReader(handle)]

    assert losses(tmp_path / "plain") == pytest.approx(losses(tmp_path / "checkpointed"), rel=1e-5)


@pytest.mark.slow
def test_two_data_parallel_ranks_train_as_one_rank_accumulating_their_two_batches(base_model, tmp_path, data_cache):
    """Each batch's loss is its mean over its own tokens (as Hugging Face's): 2 ranks x 4 examples
    average two such means, as one rank accumulating 2 x 4 does (8 examples in one batch would
    weigh tokens, not batches, equally)."""
    from test_lstm_ddp import assert_exited, launch, wait

    spec = spec_for(base_model, label="ft_dp")
    train_spec(spec, tmp_path / "one", data_cache, batch_size=4, grad_accum=2)
    (tmp_path / "two").mkdir()
    assert_exited(wait(launch(spec, tmp_path / "two", data_cache, world=2), tmp_path / "two"), 0, tmp_path / "two")
    assert "x 2 ranks" in (tmp_path / "two" / "rank0.log").read_text()
    one, two = trained_weights(spec, tmp_path / "one"), trained_weights(spec, tmp_path / "two")
    difference = max((one[k] - two[k]).abs().max().item() for k in one)
    print(f"finetune, 2 gloo ranks vs 1: largest weight difference {difference:.3g}")
    assert difference < 1e-5
    before = saved_weights(base_model)
    assert changed(before, two) == changed(before, one) and len(changed(before, two)) == 24


def test_bf16_holds_the_frozen_part_in_bfloat16_and_trains_the_rest_in_float32(base_model, tmp_path, data_cache):
    spec = spec_for(base_model, precision="bf16")
    assert train_spec(spec, tmp_path, data_cache)["state"] == "completed"
    checkpoint = torch.load(latest_checkpoint(RunPaths.of(spec.folder_name, spec.label, tmp_path)), weights_only=True)
    assert checkpoint["scaler"] is None and all(v.dtype == torch.float32 for v in checkpoint["model"].values())
    before, after = saved_weights(base_model), trained_weights(spec, tmp_path)
    frozen = [k for k in before if not k.startswith(("gpt_neox.layers.2.", "gpt_neox.layers.3."))]
    assert all(torch.equal(before[k].bfloat16().float(), after[k]) for k in frozen)
    trained = [k for k in before if k not in frozen]
    assert len(trained) == 24 and not any(torch.equal(before[k], after[k]) for k in trained)
