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
