"""ExperimentSpec: strict construction, defaults, identity, derived numbers, pluggable workloads."""

import dataclasses
import json
import math
import subprocess
import sys

import pytest

from orchestrator.errors import UsageError
from orchestrator.spec import (ADDED_FIELDS, NON_SCIENTIFIC_FIELDS, WORKLOADS, ExperimentSpec, load_spec,
                               make_spec, register_workload, spec_from_dict)


def spec(**fields):
    return make_spec(**{"hidden_dim": 64, "label": "vanilla_64d", **fields})


def test_unknown_key_names_the_key_the_closest_valid_one_and_the_full_list():
    with pytest.raises(UsageError) as err:
        spec(learnig_rate=1e-3)
    message = str(err.value)
    assert "'learnig_rate'" in message
    assert "did you mean 'learning_rate'" in message
    for field in ("hidden_dim", "num_heads", "target_effective_batch_size", "partition", "warmup_steps"):
        assert field in message
    assert "\n" not in message


@pytest.mark.parametrize("fields, bad", [
    ({"num_heads": 5}, "num_heads=5"),
    ({"learning_rate": 0}, "learning_rate"),
    ({"learning_rate": -1e-3}, "-0.001"),
    ({"activation": "gleu"}, "'gleu'"),
    ({"label": "bad/label"}, "'bad/label'"),
    ({"label": "a..b"}, "'a..b'"),
    ({"label": "space here"}, "'space here'"),
    ({"folder_name": "../escape"}, "'../escape'"),
    ({"hidden_dim": "64"}, "'64'"),
    ({"hidden_dim": 0}, "hidden_dim"),
    ({"seq_length": 64.5}, "64.5"),
    ({"tie_embeddings": 1}, "tie_embeddings"),
    ({"partition": "sphnix"}, "'sphnix'"),
    ({"dataset": "shakspeare"}, "'shakspeare'"),
    ({"lr_min_ratio": 1.5}, "1.5"),
    ({"gpus": 9}, "gpus=9"),
    ({"train_tokens": 1e6, "tokens_per_param": 20}, "not both"),
    ({"warmup_steps": 10**6}, "warmup_steps"),
    ({"positional": "alibi"}, "'alibi'"),
    ({"mup_lr_rule": "magic"}, "'magic'"),
    ({"mlp_hidden_dim": 0}, "mlp_hidden_dim must be > 0"),
    ({"mlp_hidden_dim": -8}, "-8"),
    ({"mlp_hidden_dim": 96.5}, "96.5"),
])
def test_invalid_values_are_rejected_with_the_bad_value_named(fields, bad):
    with pytest.raises(UsageError) as err:
        spec(**fields)
    assert bad in str(err.value)


def test_required_fields():
    with pytest.raises(UsageError, match="'label' is required"):
        make_spec(hidden_dim=64)


def test_defaults_follow_the_seed():
    s = spec()
    assert (s.seq_length, s.target_effective_batch_size, s.tie_embeddings, s.mup_base_width) == (512, 128, True, 32)
    assert s.vocab_size == 256 and s.tokens_per_param == 20 and s.train_tokens is None
    assert s.partition == "sphinx" and s.gpus == 1 and s.time_min > 0 and s.mem_gb > 0


def test_depth_grows_with_the_square_root_of_width_and_heads_divide_width():
    widths = [16, 32, 48, 64, 96, 128, 256, 512, 768, 1000, 1024, 2048, 4096]
    specs = [spec(hidden_dim=w) for w in widths]
    layers = [s.num_layers for s in specs]
    assert layers == sorted(layers) and layers[widths.index(32)] == 2 and layers[widths.index(128)] == 4
    for w, s in zip(widths, specs):
        assert s.num_layers == max(1, round(2 * math.sqrt(w / 32)))
        assert w % s.num_heads == 0
        assert 8 <= w // s.num_heads <= 64 or w < 32


def test_integral_floats_are_accepted_for_integer_fields():
    assert spec(train_tokens=2e6).train_tokens == 2_000_000


def test_derived_numbers():
    s = spec(seq_length=128, target_effective_batch_size=16, train_tokens=1_000_000)
    assert s.tokens_per_step == 16 * 128
    assert s.optimizer_steps == math.ceil(1_000_000 / (16 * 128))
    assert s.tokens == s.optimizer_steps * 16 * 128 >= 1_000_000
    assert s.flops == 6 * s.total_params * s.tokens
    assert s.total_params > s.non_embedding_params > 0
    ratio = spec(tokens_per_param=20)
    assert ratio.tokens >= 20 * ratio.total_params > ratio.tokens - ratio.tokens_per_step


def test_parameter_counts_by_hand():
    s = spec(hidden_dim=64, num_layers=2, seq_length=128, activation="gelu")
    block = 2 * 64 + 4 * 64 * 64 + 2 * 64 * 256
    embedding = 256 * 64 + 128 * 64
    assert s.param_counts() == (embedding + 2 * block + 64, embedding)
    untied = spec(hidden_dim=64, num_layers=2, seq_length=128, tie_embeddings=False)
    assert untied.total_params == s.total_params + 256 * 64
    assert untied.non_embedding_params == s.non_embedding_params
    rotary = spec(hidden_dim=64, num_layers=2, seq_length=128, positional="rotary")
    assert rotary.total_params == s.total_params - 128 * 64
    swiglu = spec(hidden_dim=64, activation="swiglu")
    assert abs(swiglu.non_embedding_params / spec(hidden_dim=64).non_embedding_params - 1) < 0.05


def test_a_given_mlp_width_replaces_the_rule_in_every_count():
    gelu = spec(hidden_dim=64, num_layers=2, seq_length=128, mlp_hidden_dim=100)
    assert gelu.mlp_hidden == 100 and spec(hidden_dim=64).mlp_hidden == 256
    assert gelu.non_embedding_params == 2 * (2 * 64 + 4 * 64 * 64 + 2 * 64 * 100) + 64
    swiglu = spec(hidden_dim=64, num_layers=2, seq_length=128, activation="swiglu", mlp_hidden_dim=100)
    assert spec(hidden_dim=64, activation="swiglu").mlp_hidden == 176
    assert swiglu.non_embedding_params == 2 * (2 * 64 + 4 * 64 * 64 + 3 * 64 * 100) + 64
    default = spec(hidden_dim=64, num_layers=2, seq_length=128)
    assert gelu.flops_per_token() - default.flops_per_token() == 6 * (gelu.total_params - default.total_params)
    assert gelu.activation_bytes_per_sample(2) < default.activation_bytes_per_sample(2)


def test_json_round_trip_keeps_the_spec_and_its_identity():
    for s in (spec(), spec(train_tokens=123_456, use_mup=True), make_spec("lstm", hidden_dim=32, label="l")):
        again = spec_from_dict(json.loads(json.dumps(s.to_dict())))
        assert again == s and again.identity == s.identity


def test_replace_resolves_rule_based_fields_again():
    wide = spec(hidden_dim=32).replace(hidden_dim=512)
    assert wide.num_layers == spec(hidden_dim=512).num_layers
    assert wide.identity == spec(hidden_dim=512).identity
    assert spec().replace(num_layers=7).num_layers == 7


IDENTITY_SCRIPT = """
from orchestrator.spec import make_spec
print(make_spec(hidden_dim=64, label="vanilla_64d", learning_rate=10**-2.5).identity)
"""


def test_identity_is_the_same_across_processes():
    outputs = {subprocess.run([sys.executable, "-c", IDENTITY_SCRIPT], capture_output=True, text=True,
                              check=True, env={"PYTHONHASHSEED": str(seed), "PATH": ""}).stdout.strip()
               for seed in (1, 2, 3)}
    assert outputs == {spec(learning_rate=10**-2.5).identity}
    assert len(outputs.pop()) == 12


# One other valid value per scientific field: a new field must be added here.
CHANGED_SCIENCE = {
    "version": 2, "workload": None, "hidden_dim": 128, "num_layers": 5, "seq_length": 256, "vocab_size": 512,
    "tie_embeddings": False, "use_mup": True, "mup_base_width": 64, "learning_rate": 2e-3,
    "lr_schedule": "warmup_constant", "warmup_steps": 2, "lr_min_ratio": 0.0, "weight_decay": 0.0,
    "adam_beta1": 0.8, "adam_beta2": 0.99, "adam_eps": 1e-6, "grad_clip": None, "target_effective_batch_size": 64,
    "train_tokens": 10**6, "tokens_per_param": 10, "seed": 1, "dataset": "kjv", "eval_interval_steps": 3,
    "eval_batches": 4, "log_interval_steps": 1, "num_heads": 8, "activation": "swiglu", "positional": "rotary",
    "init_std": None, "mup_lr_rule": "sqrt", "sources": {"web": 1.0}, "mlp_hidden_dim": 96,
    "method": "graddotprod", "val_batch_size": 4, "attribution_dataset": "kjv",
}
# the attribution fields come together: their base is a GradDotProd experiment
ATTRIBUTED = {"method": "graddotprod", "val_batch_size": 2, "attribution_dataset": "shakespeare"}
CHANGED_RESOURCES = {
    "label": "other", "folder_name": "elsewhere", "partition": "miso", "gpus": 2, "time_min": 30,
    "mem_gb": 100, "cpus_per_gpu": 3, "checkpoint_interval_steps": 7, "compile": True, "fsdp": "full_shard",
    "dot_prod_save_interval": 3,
}


def test_every_field_is_either_scientific_or_a_resource():
    fields = set(spec().to_dict())
    assert set(CHANGED_RESOURCES) == spec().non_scientific_fields
    assert NON_SCIENTIFIC_FIELDS == spec().non_scientific_fields - {"dot_prod_save_interval"}
    assert fields == set(CHANGED_SCIENCE) | set(CHANGED_RESOURCES)


@pytest.mark.parametrize("field", sorted(k for k in CHANGED_SCIENCE if k != "workload"))
def test_any_scientific_field_changes_the_identity(field):
    base = spec(dataset="/cluster/mix") if field == "sources" else spec()
    changes = {field: CHANGED_SCIENCE[field]}
    if field == "method":
        changes = ATTRIBUTED
    elif field in ATTRIBUTED:
        base = spec(**ATTRIBUTED)
    if field == "train_tokens":
        changes["tokens_per_param"] = None
    assert base.replace(**changes).identity != base.identity


def test_the_workload_is_part_of_the_identity():
    assert make_spec("lstm", hidden_dim=64, label="x").identity != spec(label="x").identity


@pytest.mark.parametrize("field", sorted(CHANGED_RESOURCES))
def test_resources_and_names_do_not_change_the_identity(field):
    base = spec()
    assert base.replace(**{field: CHANGED_RESOURCES[field]}).identity == base.identity


def test_workloads_are_pluggable_with_their_own_validated_fields():
    @register_workload("toy_probe")
    @dataclasses.dataclass(frozen=True, init=False)
    class ToyProbeSpec(ExperimentSpec):
        probe_layer: int = 0
        trainer = "tests.nowhere:main"

        def resolve_architecture(self, put):
            if self.num_layers is None:
                put("num_layers", 1)
            if self.probe_layer >= self.num_layers:
                raise UsageError(f"probe_layer {self.probe_layer} is beyond num_layers {self.num_layers}")

        def param_counts(self):
            return self.hidden_dim * self.vocab_size, 0

        def activation_bytes_per_sample(self, dtype_bytes):
            return self.hidden_dim * self.seq_length * dtype_bytes

    try:
        toy = make_spec("toy_probe", hidden_dim=8, label="toy", num_layers=3, probe_layer=2)
        assert toy.workload == "toy_probe" and toy.total_params == 8 * 256 and toy.folder_name == "toy_probe"
        with pytest.raises(UsageError, match="probe_layer 5"):
            make_spec("toy_probe", hidden_dim=8, label="toy", probe_layer=5)
        with pytest.raises(UsageError, match="'num_heads'"):
            make_spec("toy_probe", hidden_dim=8, label="toy", num_heads=2)
    finally:
        WORKLOADS.pop("toy_probe")


def test_unknown_workload():
    with pytest.raises(UsageError, match="unknown workload 'transfromer'.*did you mean 'transformer'"):
        make_spec("transfromer", hidden_dim=64, label="x")


def test_lstm_defaults_to_two_gpus_and_ties_its_head():
    lstm = make_spec("lstm", hidden_dim=128, label="l")
    assert lstm.gpus == 2 and lstm.num_layers == 2 and lstm.embedding_dim == 128
    h, v = 128, 256
    assert lstm.total_params == v * h + 2 * (4 * h * 2 * h + 8 * h)
    with pytest.raises(UsageError, match="tie_embeddings"):
        make_spec("lstm", hidden_dim=128, embedding_dim=64, label="l")


@pytest.mark.parametrize("text", ['{"spec": {"hidden_dim": 6', "[1, 2]", ""])
def test_an_unreadable_spec_json_is_one_error_naming_the_file(tmp_path, text):
    from orchestrator.spec import load_spec

    path = tmp_path / "spec.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"^{path}: unreadable spec") as error:
        load_spec(path)
    assert len(str(error.value).splitlines()) == 1 and path.read_text() == text


# ------------------------------------------------------------------ fields added later
def test_identities_from_before_added_fields_never_change():
    # Computed at commit eb043bc, before `sources` existed. These values must NEVER change:
    # finished runs are found by identity, so a new hash would orphan every user's results.
    # A new field belongs in ADDED_FIELDS with a default that keeps it out of the hash.
    assert spec().identity == "71e383ffd555"
    assert make_spec("lstm", hidden_dim=64, label="l").identity == "61a4753d449c"
    assert spec(dataset="/data/root").identity == "72666f8320b7"


def test_added_fields_count_only_once_set():
    assert ADDED_FIELDS <= set(spec().to_dict())
    assert "sources" not in spec().scientific_fields()
    mixed = spec(dataset="/data/root", sources={"web": 1.0})
    assert mixed.scientific_fields()["sources"] == {"web": 1.0}
    assert mixed.identity != spec(dataset="/data/root").identity
    assert mixed.replace(sources=None).identity == spec(dataset="/data/root").identity


def test_mlp_hidden_dim_counts_only_once_set():
    assert "mlp_hidden_dim" in ADDED_FIELDS and "mlp_hidden_dim" not in spec().scientific_fields()
    assert spec(mlp_hidden_dim=None).identity == spec().identity == "71e383ffd555"
    wide = spec(mlp_hidden_dim=96)
    assert wide.scientific_fields()["mlp_hidden_dim"] == 96
    assert wide.identity != spec().identity
    assert wide.replace(mlp_hidden_dim=None).identity == spec().identity


def test_mlp_hidden_dim_survives_spec_json(tmp_path):
    for s in (spec(mlp_hidden_dim=96), spec(activation="swiglu", mlp_hidden_dim=1536), spec()):
        (tmp_path / "spec.json").write_text(json.dumps({"spec": s.to_dict()}))
        again = load_spec(tmp_path / "spec.json")
        assert again == s and again.identity == s.identity and again.mlp_hidden_dim == s.mlp_hidden_dim


def test_sources_are_sorted_read_only_and_survive_spec_json(tmp_path):
    mixed = spec(dataset="/data/root", sources={"web": 100, "code": 25.0})
    assert list(mixed.sources.items()) == [("code", 25.0), ("web", 100.0)]
    assert mixed.identity == spec(dataset="/data/root", sources={"code": 25, "web": 100.0}).identity
    with pytest.raises(TypeError, match="read-only"):
        mixed.sources["web"] = 1.0
    assert hash(mixed) == hash(spec(dataset="/data/root", sources={"code": 25, "web": 100}))
    (tmp_path / "spec.json").write_text(json.dumps({"spec": mixed.to_dict()}))
    again = load_spec(tmp_path / "spec.json")
    assert again == mixed and again.identity == mixed.identity and again.sources == {"code": 25.0, "web": 100.0}


@pytest.mark.parametrize("fields, message", [
    ({"sources": {"web": 1.0}}, "sources need dataset to be a directory.*dataset='shakespeare'"),
    ({"dataset": "/d", "sources": {}}, "at least one source"),
    ({"dataset": "/d", "sources": {"web": 0}}, "source 'web' needs a finite weight > 0, got 0.0"),
    ({"dataset": "/d", "sources": {"web": -2.5}}, "got -2.5"),
    ({"dataset": "/d", "sources": {"web": float("inf")}}, "got inf"),
    ({"dataset": "/d", "sources": {"web": float("nan")}}, "got nan"),
    ({"dataset": "/d", "sources": {"web": True}}, "'sources' must be dict"),
    ({"dataset": "/d", "sources": {"web": "1"}}, "'sources' must be dict"),
    ({"dataset": "/d", "sources": ["web"]}, "'sources' must be dict"),
    ({"dataset": "/d", "sources": {"../web": 1}}, "source '../web' must be a folder name"),
    ({"dataset": "/d", "sources": {"web": 1, "rare": 1e-9}}, "source 'rare' has 1e-09 of the total weight"),
])
def test_bad_sources_are_one_line_errors(fields, message):
    with pytest.raises(UsageError, match=message) as error:
        spec(**fields)
    assert "\n" not in str(error.value)


def test_sources_must_be_folders_of_shards_where_the_dataset_exists(tmp_path):
    for name in ("fineweb_edu", "code"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "part_0.jsonl.gz").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no shard")
    assert spec(dataset=str(tmp_path), sources={"fineweb_edu": 100, "code": 25}).sources["code"] == 25.0
    with pytest.raises(UsageError) as error:
        spec(dataset=str(tmp_path), sources={"fineweb_edu": 100, "fineweb": 25})
    message = str(error.value)
    assert message.startswith("unknown source 'fineweb' (did you mean 'fineweb_edu'?); "
                              "known: code, empty, fineweb_edu") and "\n" not in message
    with pytest.raises(UsageError, match="holds no .jsonl/.jsonl.gz files"):
        spec(dataset=str(tmp_path), sources={"empty": 1})
    # a directory that is not here (it may exist only on the cluster) is checked where it runs
    assert spec(dataset=str(tmp_path / "on_the_cluster"), sources={"anything": 1}).sources
