"""Shared test set-up: isolate every test from the user's config, results and caches."""

import pytest


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory):
    """One token cache for the whole run: tokenising a corpus once is enough."""
    return tmp_path_factory.mktemp("data-cache")


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path_factory, data_cache, monkeypatch):
    """No test reads ~/.config/orchestrator or writes ./results by accident."""
    base = tmp_path_factory.mktemp("env")
    monkeypatch.setenv("ORCHESTRATOR_CONFIG_DIR", str(base / "config"))
    monkeypatch.setenv("ORCHESTRATOR_RESULTS_DIR", str(base / "results"))
    monkeypatch.setenv("ORCHESTRATOR_DATA_CACHE", str(data_cache))
    yield base


def pytest_configure(config):
    # Two threads on two shared cores can be many times slower than one.
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def slurm_cluster():
    """The project's single-host Slurm, started (idempotently) once per test run, and stopped
    at the end if this run started it: the machine is left as it was found.

    Needs root (apt-get, daemons). CI runs as root and must not skip: there a failure
    to start is an error. Elsewhere, without root, the Slurm tests are skipped.
    """
    import os
    import subprocess
    from pathlib import Path

    if os.geteuid() != 0 and os.environ.get("CI") != "true":
        pytest.skip("the local Slurm cluster needs root (run the suite as root, as CI does)")
    script = Path(__file__).resolve().parent.parent / "slurm_templates" / "local_cluster.sh"
    before = subprocess.run(["bash", str(script), "status"], capture_output=True, text=True)
    was_running = "slurmctld /run/slurmctld.pid: running" in before.stdout
    result = subprocess.run(["bash", str(script), "start"], capture_output=True, text=True, timeout=600)
    if result.returncode:
        raise RuntimeError(f"local Slurm did not start:\n{result.stderr[-3000:]}")
    yield script
    if not was_running:
        subprocess.run(["bash", str(script), "stop"], capture_output=True, text=True, timeout=300)
