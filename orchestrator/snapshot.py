"""A frozen copy of the code a submission runs, so editing the checkout never changes a pending job.

``take`` copies the project's packages (and the user's registry modules) once per submission;
jobs put the copy first on ``PYTHONPATH`` (``pythonpath``). The copy explains itself:
``SNAPSHOT.json`` says where it came from (git commit, dirty or not) and ``git.diff`` holds the
uncommitted changes it contains.

Why PYTHONPATH is enough, and what else is needed: the editable install
(``__editable__*_finder.py`` in site-packages) appends a meta-path finder *after* the standard
path finder, so anything on ``sys.path``, PYTHONPATH included, wins over it. What does beat
PYTHONPATH is the working directory: ``python -m ...`` and ``python -c ...`` put it at
``sys.path[0]``, and jobs start where the user submitted, usually the checkout itself. So jobs
also get ``PYTHONSAFEPATH=1`` (Python >= 3.11), which leaves the working directory off
``sys.path`` (see ``orchestrator.backends``).
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterable

from orchestrator.errors import UsageError

PACKAGES = ("orchestrator", "workloads", "experiments", "analysis", "slurm_templates")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "tests", "results")


def project_root() -> Path:
    """The directory holding the ``orchestrator`` package this process runs."""
    import orchestrator

    return Path(orchestrator.__file__).resolve().parent.parent


def take(dest: Path, registry_modules: Iterable[str] = ()) -> Path:
    """Copy the importable code into ``dest`` once; an existing ``dest`` is returned as it is.

    The copy is built in a hidden sibling and renamed into place, so ``dest`` is either
    complete or absent, never half written.
    """
    dest = Path(dest)
    if dest.exists():
        return dest
    root = project_root()
    sources = [root / name for name in PACKAGES if (root / name).is_dir()]
    sources += [s for s in (_registry_source(m) for m in registry_modules) if s is not None]
    sources = list(dict.fromkeys(sources))  # a module named twice (config and command line) is copied once
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        for source in sources:
            target = partial / source.name
            if target.exists():
                raise UsageError(f"registry module {source} would overwrite {source.name} in the code snapshot")
            if source.is_dir():
                shutil.copytree(source, target, ignore=_IGNORE)
            else:
                shutil.copy2(source, target)
        _write_provenance(partial, root, [s.name for s in sources])
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(partial, 0o777 & ~umask)  # mkdtemp makes it private; lab-mates' jobs may read it
        try:
            os.rename(partial, dest)
        except OSError:
            if not dest.is_dir():
                raise
            shutil.rmtree(partial)  # another process took the same snapshot first
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return dest


def pythonpath(snapshot: Path | None, current: str | None) -> str:
    """PYTHONPATH with the snapshot first and the ``current`` entries after it."""
    if snapshot is None:
        return current or ""
    return os.pathsep.join([str(snapshot), current]) if current else str(snapshot)


def _registry_source(module: str) -> Path | None:
    """The file or top-level package directory of a registry module (None: already copied).

    A dotted name is looked up with ``find_spec`` on its top-level name only, which imports
    nothing (``find_spec("a.b")`` would import ``a``).
    """
    if module.endswith(".py") or "/" in module:
        path = Path(module).expanduser().resolve()
        if not path.is_file():
            raise UsageError(f"registry module file {module!r} does not exist")
        root = project_root()
        if any(path.is_relative_to(root / name) for name in PACKAGES):
            return None
        return path
    top = module.split(".")[0]
    if top in PACKAGES:
        return None
    spec = importlib.util.find_spec(top)
    if spec is None:
        raise UsageError(f"registry module {module!r} not found (is it on PYTHONPATH?)")
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    if spec.origin and Path(spec.origin).is_file():
        return Path(spec.origin)
    raise UsageError(f"registry module {module!r} is not a file or package that can be copied ({spec.origin})")


def _git(root: Path, *args: str) -> str | None:
    # GIT_OPTIONAL_LOCKS=0: `git status` would otherwise rewrite the index under a running git command
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        result = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def _write_provenance(snapshot: Path, root: Path, copied: list[str]) -> None:
    info = {"source": str(root),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": sys.executable, "copied": copied, "git_commit": None, "git_dirty": None}
    head = (_git(root, "rev-parse", "--show-toplevel", "HEAD") or "").split()
    # only when root is the checkout's top: a site-packages inside some repo is not that repo's code
    if len(head) == 2 and Path(head[0]).resolve() == root:
        info["git_commit"] = head[1]
        status = _git(root, "status", "--porcelain")
        info["git_dirty"] = bool(status) if status is not None else None
        if info["git_dirty"]:
            (snapshot / "git.diff").write_text(_git(root, "diff", "HEAD") or "")
    (snapshot / "SNAPSHOT.json").write_text(json.dumps(info, indent=2) + "\n")
