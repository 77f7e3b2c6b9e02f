"""The user's own configuration, kept outside the package.

Everything lives in one directory, ``$ORCHESTRATOR_CONFIG_DIR`` or ``~/.config/orchestrator``:

    config.yaml           registry_modules: [my_lab.experiments, ~/studies/grid.py]
                          sync_remote: me@cluster.example.org:scaling/results/
    profiles/<name>.yaml  partition profiles: override keys of a shipped one, or add a new one

A missing directory or file means "no overrides". Unknown keys are errors, not ignored.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from orchestrator.errors import UsageError, unknown

CONFIG_KEYS = ("registry_modules", "sync_remote")


def config_dir() -> Path:
    return _config_dir(os.environ.get("ORCHESTRATOR_CONFIG_DIR", ""), os.environ.get("HOME", ""))


@functools.lru_cache(maxsize=None)
def _config_dir(from_environment: str, home: str) -> Path:
    # Keyed by the two variables it reads: every spec asks, through its partition's profile,
    # and building the Path each time was most of the cost of a cached profile look-up.
    return Path(from_environment or Path.home() / ".config" / "orchestrator")


def read_yaml(path: Path) -> dict:
    """A YAML mapping from ``path``; a file that is not a mapping is a usage error."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of keys to values, got {type(data).__name__}")
    return data


@functools.lru_cache(maxsize=None)
def _load_user_config(path: Path) -> dict:
    if not path.is_file():
        return {}
    data = read_yaml(path)
    for key in data:
        if key not in CONFIG_KEYS:
            raise unknown(f"key in {path}:", key, CONFIG_KEYS)
    return data


def user_config() -> dict:
    return _load_user_config(config_dir() / "config.yaml")


def registry_modules() -> list[str]:
    """Modules (dotted names or .py paths) that hold the user's own registries."""
    modules = user_config().get("registry_modules") or []
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise UsageError(f"{config_dir() / 'config.yaml'}: registry_modules must be a list of module names or paths")
    return modules
