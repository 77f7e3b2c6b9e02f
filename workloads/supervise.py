"""A job whose work is another program (a command, torchrun): its whole process tree is ours to
signal and to wait for.

Why a tree, not a process group: torchrun starts each worker in a session of its own, so a
signal to torchrun's group never reaches the ranks, and torchrun itself dies of SIGUSR2 (it does
not handle it), leaving its workers to finish their checkpoint alone. So the supervisor

- makes itself a child subreaper (``PR_SET_CHILD_SUBREAPER``): a worker whose parent died is
  re-parented to the supervisor, not to init, and stays in its tree;
- forwards every stop signal to every descendant (``forward``), whatever its session;
- after the program exits, waits for the descendants still running (a rank writing its
  checkpoint) before it says how the run ended (``wait_for_descendants``), and stops those that
  outlive ``ORPHAN_WAIT_S``.

The program's first process gets SIGKILL when the supervisor dies (``PR_SET_PDEATHSIG``); on Slurm
the job step's process tracking takes the rest. Linux only (``/proc``, ``prctl``); elsewhere the
prctl calls do nothing and ``descendants`` finds none.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time

from workloads import interrupt

PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36
ORPHAN_WAIT_S = 120


def _prctl(option: int, value: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _die_with_parent() -> None:
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def start(argv: list[str], **popen) -> subprocess.Popen:
    """``argv`` in a session of its own (a terminal's Ctrl-C or a signal to our group is not
    its), killed if this process dies, with this process as the subreaper of its tree."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    return subprocess.Popen(argv, start_new_session=True, preexec_fn=_die_with_parent, **popen)


def descendants(root: int | None = None) -> list[int]:
    """Every live process below ``root`` (this one), from /proc's parent links."""
    root = os.getpid() if root is None else root
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else ():
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()  # after "pid (comm) ": state, ppid, ...
        if fields[0] != b"Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for pid in children.get(todo.pop(), ()):
            found.append(pid)
            todo.append(pid)
    return found


def signal_tree(signum: int) -> list[int]:
    """Send ``signum`` to every descendant; the pids it reached."""
    reached = []
    for pid in descendants():
        try:
            os.kill(pid, signum)
            reached.append(pid)
        except ProcessLookupError:
            pass
    return reached


def forward(forwarded: list[int]) -> list[int]:
    """Send every descendant each stop signal received since the last call (appended to
    ``forwarded``); the signals sent now. A ``request_stop()`` without a signal is sent as SIGTERM."""
    new = []
    for signum in interrupt.received()[len(forwarded):]:
        signum = signum or signal.SIGTERM
        forwarded.append(signum)
        if signal_tree(signum):
            new.append(signum)
    return new


def _reap() -> None:
    """Collect the exit statuses of re-parented descendants (none of them is a Popen we hold)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def wait_for_descendants(forwarded: list[int], timeout_s: float = ORPHAN_WAIT_S, poll_s: float = 0.2) -> list[str]:
    """Once the program has exited (and been waited for): wait until its tree is gone, forwarding
    stop signals as they come; after ``timeout_s``, SIGTERM then SIGKILL what is left. The
    names of the processes that had to be stopped."""
    deadline = time.monotonic() + timeout_s
    while True:
        _reap()
        forward(forwarded)
        left = descendants()
        if not left:
            return []
        if time.monotonic() > deadline:
            break
        time.sleep(poll_s)
    names = [_name(pid) for pid in left]
    for signum, grace_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 5)):
        signal_tree(signum)
        end = time.monotonic() + grace_s
        while descendants() and time.monotonic() < end:
            _reap()
            time.sleep(poll_s)
    _reap()
    return names


def _name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            command = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return str(pid)
    return f"{pid} ({command[:120]})"
