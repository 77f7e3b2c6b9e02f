"""Find registries by name: module-level UPPER_CASE lists of ExperimentSpec.

Registries live in the modules of the ``experiments`` package, plus the user's own
modules: ``--registry-module`` on the command line, or ``registry_modules`` in the user
config (see ``orchestrator.config``). A module is a dotted name or a path to a .py file.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import traceback
from pathlib import Path
from types import ModuleType
from typing import Iterable

from orchestrator import config
from orchestrator.errors import UsageError, unknown
from orchestrator.spec import ExperimentSpec


def _import(name: str) -> ModuleType:
    if name.endswith(".py") or "/" in name:
        path = Path(name).expanduser().resolve()
        if not path.is_file():
            raise UsageError(f"registry module file {name!r} does not exist")
        module_name = f"_registry_{path.stem}_{abs(hash(str(path))):x}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise UsageError(_import_failure(name, module_name, exc)) from None
        return module
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise UsageError(f"registry module {name!r} not found (is it on PYTHONPATH?)") from None
        raise UsageError(_import_failure(name, name, exc)) from None
    except Exception as exc:
        raise UsageError(_import_failure(name, name, exc)) from None


def _import_failure(name: str, module_name: str, exc: Exception) -> str:
    """One line saying where a user's module broke: its traceback is about their file, not ours.

    The line is the innermost frame running the module's own code (found by the module's
    ``__name__`` in the frame's globals, which also covers functions the module defines and
    calls); when no frame is the module's (its package's ``__init__`` failed, say), the last.
    """
    if isinstance(exc, SyntaxError):
        return f"registry module {exc.filename}, line {exc.lineno}: {type(exc).__name__}: {exc.msg}"
    message = " ".join(str(exc).split())  # one line, whatever the exception's text
    error = message if isinstance(exc, UsageError) else f"{type(exc).__name__}: {message}"
    frames = list(traceback.walk_tb(exc.__traceback__))
    own = [(frame, line) for frame, line in frames if frame.f_globals.get("__name__") == module_name]
    if own:
        frame, line = own[-1]
        return f"registry module {frame.f_code.co_filename}, line {line}: {error}"
    frame, line = frames[-1]
    return f"registry module {name} ({frame.f_code.co_filename}, line {line}): {error}"


def _modules(extra_modules: Iterable[str]) -> list[ModuleType]:
    import experiments

    names = [f"experiments.{m.name}" for m in pkgutil.iter_modules(experiments.__path__)
             if not m.name.startswith("_")]
    names += config.registry_modules() + list(extra_modules)
    return [_import(name) for name in names]


def _is_registry(name: str, value) -> bool:
    return (name.isupper() and isinstance(value, list) and value
            and all(isinstance(item, ExperimentSpec) for item in value))


def all_registries(extra_modules: Iterable[str] = ()) -> dict[str, list[ExperimentSpec]]:
    """Every registry by name; a name defined by two modules is an error."""
    found: dict[str, tuple[str, list[ExperimentSpec]]] = {}
    for module in _modules(extra_modules):
        for name, value in vars(module).items():
            if not _is_registry(name, value):
                continue
            if name in found and found[name][1] is not value:
                raise UsageError(f"registry {name} is defined in both {found[name][0]} and {module.__name__}")
            found[name] = (module.__name__, value)
    return {name: value for name, (_, value) in found.items()}


def load_registry(name: str, extra_modules: Iterable[str] = ()) -> list[ExperimentSpec]:
    registries = all_registries(extra_modules)
    if name not in registries:
        raise unknown("registry", name, registries)
    specs = registries[name]
    check_duplicates(name, specs)
    return specs


def check_duplicates(name: str, specs: list[ExperimentSpec]) -> None:
    """Two specs with one identity, or one output (folder/label) with two identities: error."""
    by_identity: dict[str, ExperimentSpec] = {}
    by_output: dict[str, ExperimentSpec] = {}
    for spec in specs:
        if spec.identity in by_identity:
            first = by_identity[spec.identity]
            raise UsageError(f"registry {name}: {first.run_name} and {spec.run_name} are the same "
                             f"experiment (identity {spec.identity})")
        by_identity[spec.identity] = spec
        if spec.run_name in by_output:
            first = by_output[spec.run_name]
            a, b = first.to_dict(), spec.to_dict()
            differ = [field for field in a if a[field] != b.get(field)]
            shown = ", ".join(f"{field}: {a[field]!r} vs {b.get(field)!r}" for field in differ[:5])
            more = f" and {len(differ) - 5} more" if len(differ) > 5 else ""
            example = f'label=f"{spec.label}_{{{differ[0]}}}"' if differ else "a label of its own"
            raise UsageError(f"registry {name}: two different experiments write {spec.run_name} "
                             f"(identities {first.identity} and {spec.identity}; they differ in {shown}{more}): "
                             f"give each variant its own label, e.g. {example}")
        by_output[spec.run_name] = spec
