"""Experiments that start from another's output (a fine-tune of a pretraining run): which must
wait, for what, and how the local backend waits.

A spec names what it needs with ``spec.dependencies()`` (``folder_name/label`` run names). At
submit time each dependency is one of: completed (nothing to wait for), submitted now (the
dependent goes in a later array: Slurm starts it with ``--dependency=afterok`` on the tasks it
needs and cancels it if one of them fails, ``--kill-on-invalid-dep=yes``; the local backend's
array waits for their run directories to say ``completed``), or neither (queued or running in an
earlier submission, failed, not submitted): then the dependent is not submitted, and ``submit``
says why.
"""

from __future__ import annotations

import time

from orchestrator.paths import RunPaths, read_status

POLL_S = 2.0
FAILED_STATES = ("failed", "diverged", "cancelled", "timeout")


class DependencyFailed(RuntimeError):
    pass


def blocked_reason(spec, decisions_by_run: dict) -> str | None:
    """Why ``spec`` cannot be submitted now, or None. ``decisions_by_run``: run name -> the
    submit decision of every experiment in the registry (with ``action`` and ``state``)."""
    for name in spec.dependencies():
        decision = decisions_by_run.get(name)
        if decision is None:
            folder, _, label = name.partition("/")
            state = (read_status(RunPaths.of(folder, label)) or {}).get("state")
            if state != "completed":
                return f"needs {name}, which is not in this registry and has not completed ({state or 'no run'})"
        elif decision.action in ("submit", "completed"):
            continue
        elif decision.action == "active":
            return f"needs {name}, which is {decision.state} in an earlier submission: submit again when it completes"
        elif decision.action == "blocked":
            return f"needs {name}, which is blocked"
        else:
            return f"needs {name}, which is {decision.state} and not submitted now ({decision.action})"
    return None


def waves(specs) -> dict[str, int]:
    """identity -> how many dependencies deep the spec is among ``specs`` (0: needs none of them)."""
    by_run = {spec.run_name: spec for spec in specs}
    depth: dict[str, int] = {}

    def wave(spec, seen=()) -> int:
        if spec.identity not in depth:
            if spec.run_name in seen:
                raise ValueError(f"a dependency cycle through {spec.run_name}")
            needs = [by_run[name] for name in spec.dependencies() if name in by_run]
            depth[spec.identity] = 1 + max((wave(s, seen + (spec.run_name,)) for s in needs), default=-1)
        return depth[spec.identity]

    for spec in specs:
        wave(spec)
    return depth


def wait_for(run_names, poll_s: float = POLL_S, once: bool = False) -> None:
    """Until every run says ``completed``; a run that ends otherwise raises ``DependencyFailed``
    (``once``: look once, and raise ``TimeoutError`` if one is still going)."""
    pending = list(run_names)
    while pending:
        for name in list(pending):
            folder, _, label = name.partition("/")
            state = (read_status(RunPaths.of(folder, label)) or {}).get("state")
            if state == "completed":
                pending.remove(name)
            elif state in FAILED_STATES:
                raise DependencyFailed(f"{name}, which it starts from, ended {state}")
        if pending and once:
            raise TimeoutError(f"still waiting for {', '.join(pending)}")
        if pending:
            time.sleep(poll_s)
