"""Lingua-style experiments: lingua's names and per-GPU batch, and a lingua YAML, become specs;
every key of the YAML is used, listed as ignored, or an error."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.errors import UsageError
from orchestrator.lingua import from_lingua_config, lingua_experim, read_lingua_config
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


def test_an_unknown_key_is_an_error_naming_its_path_with_a_suggestion(tmp_path):
    path = edited(tmp_path, lambda c: c["model"].update(n_layer=c["model"].pop("n_layers")))
    with pytest.raises(UsageError, match=r"unknown lingua key model\.n_layer \(did you mean model\.n_layers\?\)"):
        from_lingua_config(path)


def test_keys_read_but_not_used_are_listed():
    _, ignored = read_lingua_config(FIXTURE)
    assert {"dump_dir", "distributed.model_dtype", "distributed.tp_size", "model.rope_theta", "model.multiple_of",
            "model.n_kv_heads", "data.load_async", "data.add_bos", "checkpoint.eval.every", "checkpoint.dump.keep",
            "profiling.run", "profiling.mem_steps", "eval"} <= set(ignored)
    assert not {"model.dim", "optim.lr", "data.batch_size", "logging.freq", "checkpoint.dump.every"} & set(ignored)


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
