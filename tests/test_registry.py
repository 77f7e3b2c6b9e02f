"""Registries: seed-style sums, learning-rate sweeps, lookup by name, user modules (and broken ones), duplicates."""

import os
import subprocess
import sys
import textwrap

import pytest

from experiments import create_multi_lr_experiments, gen_experim, lr_tag
from orchestrator.errors import UsageError
from orchestrator.registry import all_registries, check_duplicates, load_registry

SHIPPED = ("TRANSFORMER_SCALING", "TRANSFORMER_SCALING_EXPERIMENTS_OPTIMAL_LR", "TRANSFORMER_LR_TUNE_MUP_STANDARD",
           "ACTIVATION_EXPERIMENTS", "LSTM_SCALING", "QUICKSTART")


def test_seed_style_registries_are_sums_of_lists():
    registry = (gen_experim(32, label="vanilla_32d", learning_rate=1e-2)
                + gen_experim(64, label="vanilla_64d", learning_rate=10**-2.5)
                + gen_experim(128, label="vanilla_128d", folder_name="wide", num_layers=6))
    assert [s.label for s in registry] == ["vanilla_32d", "vanilla_64d", "vanilla_128d"]
    assert [s.hidden_dim for s in registry] == [32, 64, 128]
    assert registry[1].learning_rate == 10**-2.5
    assert registry[2].folder_name == "wide" and registry[2].num_layers == 6
    check_duplicates("SUM", registry)


@pytest.mark.parametrize("lr, tag", [(1e-3, "1e-3"), (10**-2.5, "3p16e-3"), (0.02, "2e-2"), (1.5, "1p5e0"),
                                     (3e-4, "3e-4"), (1e-10, "1e-10")])
def test_lr_tag_is_filesystem_safe_and_readable(lr, tag):
    assert lr_tag(lr) == tag


def test_multi_lr_sweep_labels_folders_and_rates():
    base = gen_experim(64, label="vanilla_64d", folder_name="scaling") + gen_experim(128, label="vanilla_128d")
    sweep = create_multi_lr_experiments(base, [1e-3, 10**-2.5])
    assert [(s.label, s.folder_name, s.learning_rate) for s in sweep] == [
        ("vanilla_64d_lr_1e-3", "scaling_lr_sweep", 1e-3),
        ("vanilla_64d_lr_3p16e-3", "scaling_lr_sweep", 10**-2.5),
        ("vanilla_128d_lr_1e-3", "transformer_lr_sweep", 1e-3),
        ("vanilla_128d_lr_3p16e-3", "transformer_lr_sweep", 10**-2.5),
    ]
    assert sweep[0].num_layers == base[0].num_layers
    check_duplicates("SWEEP", sweep)


def test_every_shipped_registry_is_found_by_name_and_valid():
    registries = all_registries()
    assert set(SHIPPED) <= set(registries)
    for name in SHIPPED:
        assert load_registry(name)


def test_transformer_scaling_varies_model_size_and_tokens_independently():
    specs = load_registry("TRANSFORMER_SCALING")
    widths = {s.hidden_dim for s in specs}
    assert len(widths) >= 4
    for width in widths:
        assert len({s.tokens for s in specs if s.hidden_dim == width}) >= 3


def test_quickstart_is_small_enough_for_a_laptop_cpu():
    specs = load_registry("QUICKSTART")
    assert {s.partition for s in specs} == {"local"}
    assert len({s.hidden_dim for s in specs}) >= 4 and len({s.tokens for s in specs}) >= 3
    assert sum(s.tokens for s in specs) <= 30e6 and max(s.total_params for s in specs) <= 300_000


def test_lstm_registry_uses_two_gpus():
    assert {s.gpus for s in load_registry("LSTM_SCALING")} == {2}


def test_unknown_registry_suggests_close_names():
    with pytest.raises(UsageError, match="unknown registry 'TRANSFORMER_SCALNG'.*did you mean 'TRANSFORMER_SCALING'"):
        load_registry("TRANSFORMER_SCALNG")


def test_unknown_registry_suggestions_ignore_case():
    with pytest.raises(UsageError, match="unknown registry 'quickstart' \\(did you mean 'QUICKSTART'\\?\\)"):
        load_registry("quickstart")


def test_the_same_experiment_twice_is_an_error():
    twice = gen_experim(64, label="a") + gen_experim(64, label="b")
    with pytest.raises(UsageError, match="transformer/a and transformer/b are the same experiment"):
        check_duplicates("R", twice)
    same_list = gen_experim(64, label="a")
    with pytest.raises(UsageError, match="same experiment"):
        check_duplicates("R", same_list + same_list)


def test_one_label_in_one_folder_with_two_identities_is_an_error():
    clash = gen_experim(64, label="a", learning_rate=1e-3) + gen_experim(64, label="a", learning_rate=2e-3)
    with pytest.raises(UsageError, match="two different experiments write transformer/a"):
        check_duplicates("R", clash)
    check_duplicates("R", gen_experim(64, label="a") + gen_experim(128, label="a", folder_name="other"))


def test_a_label_clash_names_the_fields_that_differ_and_suggests_a_label():
    clash = gen_experim(64, label="16d", activation="gelu") + gen_experim(64, label="16d", activation="relu")
    with pytest.raises(UsageError) as error:
        check_duplicates("R", clash)
    assert "they differ in activation: 'gelu' vs 'relu')" in str(error.value)
    assert str(error.value).endswith('give each variant its own label, e.g. label=f"16d_{activation}"')


def test_a_label_clash_lists_at_most_five_differing_fields():
    clash = gen_experim(64, label="a") + gen_experim(256, label="a", learning_rate=0.5, activation="relu")
    with pytest.raises(UsageError) as error:
        check_duplicates("R", clash)
    shown = str(error.value).split("they differ in ")[1].split(")")[0]
    assert shown.count(" vs ") == 5 and " more" in shown


USER_MODULE = textwrap.dedent("""
    from experiments import gen_experim
    MY_STUDY = gen_experim(32, label="mine_32d") + gen_experim(48, label="mine_48d")
    NOT_A_REGISTRY = [1, 2, 3]
    lowercase_list = gen_experim(16, label="ignored")
""")


def test_user_registry_from_a_module_path(tmp_path):
    path = tmp_path / "my_grid.py"
    path.write_text(USER_MODULE)
    specs = load_registry("MY_STUDY", [str(path)])
    assert [s.label for s in specs] == ["mine_32d", "mine_48d"]
    assert "NOT_A_REGISTRY" not in all_registries([str(path)])
    assert "lowercase_list" not in all_registries([str(path)])


def test_user_registry_from_the_config_file(tmp_path, monkeypatch, isolated_environment):
    (tmp_path / "lab_grids.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    config_dir = isolated_environment / "config"
    config_dir.mkdir()
    (config_dir / "config.yaml").write_text("registry_modules: [lab_grids]\n")
    assert len(load_registry("MY_STUDY")) == 2


def test_a_bad_config_key_or_missing_module_is_an_error(isolated_environment):
    config_dir = isolated_environment / "config"
    config_dir.mkdir()
    (config_dir / "config.yaml").write_text("registry_module: [x]\n")
    with pytest.raises(UsageError, match="'registry_module'.*did you mean 'registry_modules'"):
        all_registries()
    (config_dir / "config.yaml").write_text("registry_modules: [no_such_module_here]\n")
    with pytest.raises(UsageError, match="'no_such_module_here' not found"):
        all_registries()


BROKEN_MODULES = {  # (source, the line that breaks, what the error says)
    "syntax": ("from experiments import gen_experim\n\nGRID = [\n    gen_experim(32)\n    gen_experim(64)]\n",
               4, "SyntaxError"),
    "name": ("from experiments import gen_experim\n\nX = 1\nGRID = gen_experimm(32)\n",
             4, "NameError: name 'gen_experimm' is not defined"),
    "in_a_helper": ("from experiments import gen_experim\n\ndef grid():\n    return [1 / 0]\n\nGRID = grid()\n",
                    4, "ZeroDivisionError: division by zero"),
    "bad_field": ("from experiments import gen_experim\nGRID = gen_experim(32, label='a', hiden_dim=3)\n",
                  2, "unknown experiment field 'hiden_dim'"),
}


def list_with_module(module: str, pythonpath=None):
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "orchestrator", "--registry-module", module, "list"],
                          capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize("as_path", [True, False], ids=["path", "dotted"])
@pytest.mark.parametrize("kind", BROKEN_MODULES)
def test_a_broken_user_module_is_one_line_naming_its_file_and_line(tmp_path, kind, as_path):
    source, line, error = BROKEN_MODULES[kind]
    path = tmp_path / f"broken_grid_{kind}.py"
    path.write_text(source)
    result = list_with_module(str(path)) if as_path else list_with_module(path.stem, pythonpath=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: registry module {path}, line {line}: "), result.stderr
    assert error in result.stderr


def test_a_missing_dotted_module_is_still_not_found():
    result = list_with_module("no_such_registry_module_here")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr == "error: registry module 'no_such_registry_module_here' not found (is it on PYTHONPATH?)\n"


def test_a_broken_module_in_the_config_file_names_its_line(tmp_path, monkeypatch, isolated_environment):
    (tmp_path / "lab_broken_grids.py").write_text(BROKEN_MODULES["name"][0])
    monkeypatch.syspath_prepend(str(tmp_path))
    config_dir = isolated_environment / "config"
    config_dir.mkdir()
    (config_dir / "config.yaml").write_text("registry_modules: [lab_broken_grids]\n")
    with pytest.raises(UsageError, match=r"lab_broken_grids\.py, line 4: NameError: name 'gen_experimm'"):
        all_registries()
