"""The code snapshot: what a pending job imports, whatever happens to the checkout meanwhile."""

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import snapshot
from orchestrator.backends import code_environment
from orchestrator.errors import UsageError

REPO = snapshot.project_root()


def imported_from(module: str, cwd: Path, env: dict) -> Path:
    """Where a fresh interpreter (this venv, with the editable install) imports ``module`` from."""
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    out = subprocess.run([sys.executable, "-c", f"import {module}; print({module}.__file__)"], cwd=cwd,
                         env={**base, **env}, capture_output=True, text=True, check=True).stdout
    return Path(out.strip()).resolve()


@pytest.fixture(scope="module")
def code(tmp_path_factory):
    return snapshot.take(tmp_path_factory.mktemp("snap") / "code")


def test_snapshot_holds_the_project_packages(code):
    for package in snapshot.PACKAGES:
        assert (code / package / "__init__.py").is_file()
    assert (code / "orchestrator" / "commands" / "submit.py").is_file()
    assert (code / "slurm_templates" / "sphinx.yaml").is_file()


def test_snapshot_leaves_out_caches_and_tests(tmp_path, monkeypatch):
    project = tmp_path / "project"
    for junk in ("orchestrator/__pycache__/x.cpython-311.pyc", "orchestrator/stale.pyc", "workloads/tests/t.py",
                 "workloads/results/r.csv"):
        (project / junk).parent.mkdir(parents=True, exist_ok=True)
        (project / junk).write_text("junk")
    (project / "orchestrator" / "__init__.py").write_text("")
    (project / "workloads" / "__init__.py").write_text("")
    monkeypatch.setattr(snapshot, "project_root", lambda: project)
    code = snapshot.take(tmp_path / "code")
    names = {p.name for p in code.rglob("*")}
    assert {"orchestrator", "workloads", "__init__.py"} <= names
    assert "__pycache__" not in names and "tests" not in names and "results" not in names
    assert not list(code.rglob("*.pyc"))


def test_pythonpath_puts_the_snapshot_first():
    assert snapshot.pythonpath(Path("/snap"), "/a:/b") == "/snap:/a:/b"
    assert snapshot.pythonpath(Path("/snap"), None) == "/snap"
    assert snapshot.pythonpath(Path("/snap"), "") == "/snap"
    assert snapshot.pythonpath(None, "/a:/b") == "/a:/b"
    assert snapshot.pythonpath(None, None) == ""


def test_editable_install_loses_to_pythonpath(code, tmp_path):
    # the editable finder is appended to sys.meta_path, after the path finder that reads PYTHONPATH
    assert imported_from("orchestrator", tmp_path, {}) == REPO / "orchestrator" / "__init__.py"
    assert imported_from("orchestrator", tmp_path, {"PYTHONPATH": str(code)}) == code / "orchestrator" / "__init__.py"


def test_working_directory_beats_pythonpath_without_safe_path(code):
    """Why jobs also get PYTHONSAFEPATH: submitted from the checkout, a job starts in it."""
    assert imported_from("orchestrator", REPO, {"PYTHONPATH": str(code)}) == REPO / "orchestrator" / "__init__.py"


def test_code_environment_imports_from_the_snapshot_even_in_the_checkout(code):
    with code_environment(code):
        env = {key: os.environ[key] for key in ("PYTHONPATH", "PYTHONSAFEPATH")}
    assert imported_from("orchestrator", REPO, env) == code / "orchestrator" / "__init__.py"
    assert imported_from("workloads", REPO, env) == code / "workloads" / "__init__.py"


def test_registry_module_by_path_is_copied_as_a_file(tmp_path):
    module = tmp_path / "src" / "my_registry.py"
    module.parent.mkdir()
    module.write_text("MINE = []\n")
    code = snapshot.take(tmp_path / "code", [str(module), str(module)])
    assert (code / "my_registry.py").read_text() == "MINE = []\n"


def test_two_registry_files_with_one_name_are_an_error(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "reg.py").write_text("R = []\n")
    with pytest.raises(UsageError, match="would overwrite reg.py"):
        snapshot.take(tmp_path / "code", [str(tmp_path / "a" / "reg.py"), str(tmp_path / "b" / "reg.py")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_registry_module_by_dotted_name_copies_its_package_without_importing_it(tmp_path, monkeypatch):
    package = tmp_path / "src" / "mylab"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('imported')\n")
    (package / "registries.py").write_text("MINE = []\n")
    (tmp_path / "src" / "solo.py").write_text("SOLO = []\n")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    code = snapshot.take(tmp_path / "code", ["mylab.registries", "solo", "experiments.quickstart"])
    assert (code / "mylab" / "registries.py").is_file() and (code / "solo.py").is_file()
    assert "mylab" not in sys.modules


def test_unknown_registry_module_names_it(tmp_path):
    with pytest.raises(UsageError, match="no_such_lab"):
        snapshot.take(tmp_path / "code", ["no_such_lab.registries"])
    assert list(tmp_path.iterdir()) == []


def test_taking_it_again_returns_the_existing_snapshot(code):
    first = (code / "SNAPSHOT.json").read_text()
    assert snapshot.take(code) == code
    assert (code / "SNAPSHOT.json").read_text() == first


def test_a_failure_leaves_no_partial_snapshot(tmp_path, monkeypatch):
    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(snapshot, "_write_provenance", crash)
    with pytest.raises(OSError, match="disk full"):
        snapshot.take(tmp_path / "code")
    assert list(tmp_path.iterdir()) == []


def test_snapshot_json_records_where_the_code_came_from(code):
    info = json.loads((code / "SNAPSHOT.json").read_text())
    assert info["source"] == str(REPO)
    assert info["python"] == sys.executable
    assert datetime.datetime.fromisoformat(info["created"]).tzinfo is not None
    assert set(info["copied"]) == set(snapshot.PACKAGES)
    assert {"git_commit", "git_dirty"} <= set(info)


def _fake_project(root: Path) -> Path:
    (root / "orchestrator").mkdir(parents=True)
    (root / "orchestrator" / "__init__.py").write_text("VERSION = 1\n")
    return root


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          capture_output=True, text=True, check=True).stdout


def test_a_dirty_checkout_records_its_commit_and_diff(tmp_path, monkeypatch):
    root = _fake_project(tmp_path / "project")
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "first")
    (root / "orchestrator" / "__init__.py").write_text("VERSION = 2\n")
    monkeypatch.setattr(snapshot, "project_root", lambda: root)
    code = snapshot.take(tmp_path / "code")
    info = json.loads((code / "SNAPSHOT.json").read_text())
    assert info["git_commit"] == _git(root, "rev-parse", "HEAD").strip() and info["git_dirty"] is True
    assert "+VERSION = 2" in (code / "git.diff").read_text()
    assert (code / "orchestrator" / "__init__.py").read_text() == "VERSION = 2\n"


def test_a_clean_checkout_has_no_diff(tmp_path, monkeypatch):
    root = _fake_project(tmp_path / "project")
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "first")
    monkeypatch.setattr(snapshot, "project_root", lambda: root)
    code = snapshot.take(tmp_path / "code")
    assert json.loads((code / "SNAPSHOT.json").read_text())["git_dirty"] is False
    assert not (code / "git.diff").exists()


def test_code_below_the_top_of_a_repo_has_no_commit(tmp_path, monkeypatch):
    """Code installed in a .venv inside some repo is not that repo's commit."""
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "commit", "-q", "--allow-empty", "-m", "outer")
    root = _fake_project(tmp_path / ".venv" / "site-packages")
    monkeypatch.setattr(snapshot, "project_root", lambda: root)
    info = json.loads((snapshot.take(tmp_path / "code") / "SNAPSHOT.json").read_text())
    assert info["git_commit"] is None and info["git_dirty"] is None


def test_taking_a_snapshot_is_fast(tmp_path):
    import time

    start = time.perf_counter()
    snapshot.take(tmp_path / "code")
    assert time.perf_counter() - start < 1.0
