"""Lingua-style experiments: lingua's names and per-GPU batch, and a lingua YAML, become specs;
every key of the YAML is used, listed as ignored, or an error."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.errors import UsageError
from orchestrator.lingua import from_lingua_config, lingua_experim, lingua_ffn_hidden, read_lingua_config
from orchestrator.registry import load_registry

FIXTURE = Path(__file__).parent / "fixtures" / "lingua_run.yaml"
# what the fixture says, in lingua_experim's arguments
FIXTURE_RUN = dict(dim=512, n_layers=8, n_heads=8, steps=500, batch_size=8, seq_len=2048, lr=3e-4, warmup=100,
                   lr_min_ratio=0.1, clip=1.0, sources={"fineweb_edu_10bt_shuffled": 100.0},
                   data_root="/data/lingua", gpus=1, partition="sphinx", fsdp="no_shard", compile=False,
                   log_freq=10, checkpoint_every=5000, label="bytes_27m", seed=777)


def edited(tmp_path, edit) -> Path:
    """The fixture with ``edit(config)`` applied, written to a new file."""
    config = yaml.safe_load(FIXTURE.read_text())
    edit(config)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_yaml_becomes_the_spec_lingua_experim_makes_of_the_same_values():
    [spec] = from_lingua_config(FIXTURE, quiet=True)
    assert spec == lingua_experim(**FIXTURE_RUN)[0]
    assert spec.identity == lingua_experim(**FIXTURE_RUN)[0].identity


def test_lingua_names_map_to_spec_fields():
    [spec] = lingua_experim(**FIXTURE_RUN)
    assert (spec.hidden_dim, spec.num_layers, spec.num_heads, spec.seq_length) == (512, 8, 8, 2048)
    assert (spec.learning_rate, spec.warmup_steps, spec.lr_min_ratio, spec.grad_clip) == (3e-4, 100, 0.1, 1.0)
    assert (spec.log_interval_steps, spec.checkpoint_interval_steps, spec.seed) == (10, 5000, 777)
    assert (spec.fsdp, spec.compile, spec.gpus, spec.partition) == ("no_shard", False, 1, "sphinx")
    assert (spec.positional, spec.activation, spec.tie_embeddings, spec.vocab_size) == ("rotary", "swiglu", False, 256)
    assert spec.dataset == "/data/lingua" and dict(spec.sources) == {"fineweb_edu_10bt_shuffled": 100.0}


@pytest.mark.parametrize("gpus, partition, grad_acc_steps", [(1, "sphinx", 1), (8, "miso", 1), (8, "miso", 4)])
def test_steps_are_optimizer_steps_and_the_batch_is_per_gpu(gpus, partition, grad_acc_steps):
    [spec] = lingua_experim(steps=500, batch_size=8, seq_len=2048, gpus=gpus, partition=partition,
                            grad_acc_steps=grad_acc_steps, data_root="/data/lingua", label="x")
    assert spec.optimizer_steps == 500
    assert spec.target_effective_batch_size == 8 * gpus * grad_acc_steps
    assert spec.tokens_per_step == 8 * gpus * grad_acc_steps * 2048
    assert spec.tokens == 500 * spec.tokens_per_step


# ---------------------------------------------------------------- SwiGLU width
@pytest.mark.parametrize("dim, multiple_of, multiplier, hidden", [
    (512, 256, None, 1536),     # lingua's 27.5M config; our default rule gives 1368
    (640, 256, None, 1792),
    (768, 256, None, 2048),     # int(8d/3) is already a multiple of 256
    (1024, 256, None, 2816),
    (4096, 256, None, 11008),   # Llama 2 7B
    (4096, 1024, 1.3, 14336),   # Llama 3 8B: int(1.3 * 10922), rounded up to 1024
    (512, 64, 1.3, 1792),       # int(1.3 * 1365) = 1774, rounded up to 64
])
def test_the_swiglu_width_is_lingua_feedforward_rule(dim, multiple_of, multiplier, hidden):
    assert lingua_ffn_hidden(dim, multiple_of, multiplier) == hidden


def test_lingua_experim_builds_lingua_swiglu_width():
    [spec] = lingua_experim(**FIXTURE_RUN)
    assert spec.mlp_hidden_dim == spec.mlp_hidden == 1536
    [narrow] = lingua_experim(**FIXTURE_RUN, multiple_of=8)
    assert narrow.mlp_hidden == 1368
    [wide] = lingua_experim(**FIXTURE_RUN, ffn_dim_multiplier=1.5)
    assert wide.mlp_hidden == 2048  # int(1.5 * 1365) = 2047


@pytest.mark.parametrize("args, message", [
    ({"multiple_of": 0}, "multiple_of must be a positive integer, got 0"),
    ({"ffn_dim_multiplier": -1.0}, "ffn_dim_multiplier must be a number > 0 or None, got -1.0"),
])
def test_a_bad_swiglu_argument_is_an_error_naming_it(args, message):
    with pytest.raises(UsageError, match=message):
        lingua_experim(**FIXTURE_RUN, **args)


def test_the_27m_config_has_lingua_parameter_count_but_for_bos_and_eos():
    # lingua's LMTransformer at dim 512, 8 layers, its 258 byte tokens, untied output, RMSNorm
    d, layers, hidden, vocab = 512, 8, 1536, 258
    lingua = 2 * vocab * d + layers * (4 * d * d + 3 * d * hidden + 2 * d) + d
    assert lingua == 27_535_872
    [spec] = lingua_experim(**FIXTURE_RUN)
    assert spec.total_params == lingua - 2 * 2 * d == 27_533_824
    torch = pytest.importorskip("torch")
    from workloads.transformer.model import GPT

    with torch.device("meta"):
        model = GPT(spec)
    assert sum(p.numel() for p in model.parameters()) == spec.total_params


def test_the_yaml_sets_the_swiglu_width(tmp_path):
    [spec] = from_lingua_config(FIXTURE, quiet=True)
    assert spec.mlp_hidden_dim == 1536
    path = edited(tmp_path, lambda c: c["model"].update(multiple_of=64, ffn_dim_multiplier=1.3))
    [spec] = from_lingua_config(path, quiet=True)
    assert spec.mlp_hidden_dim == 1792
    _, ignored = read_lingua_config(path)
    assert not {"model.multiple_of", "model.ffn_dim_multiplier"} & set(ignored)
    default = edited(tmp_path, lambda c: c["model"].pop("multiple_of"))
    assert from_lingua_config(default, quiet=True)[0].mlp_hidden_dim == 1536


def test_an_unknown_key_is_an_error_naming_its_path_with_a_suggestion(tmp_path):
    path = edited(tmp_path, lambda c: c["model"].update(n_layer=c["model"].pop("n_layers")))
    with pytest.raises(UsageError, match=r"unknown lingua key model\.n_layer \(did you mean model\.n_layers\?\)"):
        from_lingua_config(path)


def test_keys_read_but_not_used_are_listed():
    _, ignored = read_lingua_config(FIXTURE)
    assert {"dump_dir", "distributed.model_dtype", "distributed.tp_size", "model.rope_theta",
            "model.n_kv_heads", "data.load_async", "data.add_bos", "checkpoint.eval.every", "checkpoint.dump.keep",
            "profiling.run", "profiling.mem_steps", "eval"} <= set(ignored)
    assert not {"model.dim", "model.multiple_of", "optim.lr", "data.batch_size", "logging.freq",
                "checkpoint.dump.every"} & set(ignored)


def test_from_lingua_config_names_the_ignored_keys_on_stderr(capsys):
    from_lingua_config(FIXTURE)
    assert "lingua keys read but not used: " in capsys.readouterr().err


@pytest.mark.parametrize("section, key, value, message", [
    ("data.tokenizer", "name", "tiktoken",
     r"unsupported tokenizer: data\.tokenizer\.name='tiktoken'; supported: bytes"),
    ("distributed", "tp_size", 2, r"unsupported tensor parallelism: distributed\.tp_size=2; supported: 1"),
    ("model", "n_kv_heads", 2, r"unsupported grouped-query attention: model\.n_kv_heads=2"),
    ("model", "rope_theta", 500000.0, r"unsupported rotary base: model\.rope_theta=500000\.0; supported: 10000"),
    ("optim", "scheduler", "wsd", r"unsupported schedule: optim\.scheduler='wsd'; supported: cosine"),
])
def test_a_value_we_cannot_honour_is_an_error_naming_it_and_what_is_supported(tmp_path, section, key, value, message):
    def edit(config):
        node = config
        for part in section.split("."):
            node = node[part]
        node[key] = value

    with pytest.raises(UsageError, match=message):
        from_lingua_config(edited(tmp_path, edit))


def test_a_missing_key_takes_lingua_default_and_gpus_come_from_the_call(tmp_path):
    path = edited(tmp_path, lambda c: c.pop("seed"))
    [spec] = from_lingua_config(path, gpus=8, partition="miso", quiet=True)
    assert spec.seed == 42 and spec.gpus == 8 and spec.optimizer_steps == 500


def test_lingua_registries_expand_and_show_fits_them(isolated_environment):
    small, scaling = load_registry("LINGUA_SMALL"), load_registry("LINGUA_SCALING")
    assert {(s.partition, s.gpus) for s in small} == {("sphinx", 1), ("miso", 8)}
    assert len({s.label for s in small}) == 2
    assert len({s.tokens for s in scaling}) == 1 and len({s.total_params for s in scaling}) == 4
    for name in ("LINGUA_SMALL", "LINGUA_SCALING"):
        result = subprocess.run([sys.executable, "-m", "orchestrator", "show", name],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "no fit" not in result.stdout


def test_the_registry_data_root_follows_the_environment(tmp_path):
    env = {**os.environ, "LINGUA_DATA_ROOT": str(tmp_path / "fineweb")}
    result = subprocess.run([sys.executable, "-c", "import experiments.lingua as m; "
                             "print({s.dataset for s in m.LINGUA_SMALL})"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.stdout.strip() == repr({str(tmp_path / "fineweb")}), result.stderr
