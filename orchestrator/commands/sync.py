"""Pull a cluster's results home with rsync: metrics, configs and run status by default.

The remote (``user@host:path/results/``) comes from the command line or ``sync_remote`` in
the user config. Nothing local is ever deleted, and an interrupted transfer leaves its
partial files in ``.rsync-partial/``, never in place of a good file.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from orchestrator import config
from orchestrator.errors import UsageError
from orchestrator.paths import results_root

# what a study needs at home: metrics, configs, run state (and the submission records)
SMALL_FILES = ("*.csv", "config_*.json", "status.json", "spec.json", "_submissions/**.json")
RSYNC_EXIT = {
    1: "syntax or usage error", 2: "protocol incompatibility", 3: "error selecting input/output files",
    5: "error starting the client-server protocol", 10: "error in socket I/O", 11: "error in file I/O",
    12: "error in the rsync protocol data stream", 20: "interrupted", 23: "partial transfer due to an error",
    24: "some source files vanished", 30: "timeout", 35: "timeout waiting for the daemon",
    255: "cannot reach the remote host (ssh failed)",
}


def add_arguments(parser) -> None:
    parser.add_argument("remote", nargs="?", default=None,
                        help="user@host:path/results/ (default: sync_remote in the user config)")
    parser.add_argument("--to", type=Path, default=None, help="local results directory (default: ./results)")
    parser.add_argument("--include-checkpoints", action="store_true",
                        help="take everything, checkpoints and logs included")
    parser.add_argument("--dry-run", action="store_true", help="list what would move, move nothing")


def rsync_command(remote: str, local: Path, include_checkpoints: bool, dry_run: bool) -> list[str]:
    cmd = ["rsync", "-az", "--partial-dir=.rsync-partial", "--stats", "--human-readable", "--itemize-changes"]
    if "RSYNC_RSH" not in os.environ:  # never prompt for a password in a batch tool
        cmd += ["-e", "ssh -o BatchMode=yes -o ConnectTimeout=10"]
    if dry_run:
        cmd.append("--dry-run")
    elif sys.stdout.isatty():
        cmd.append("--info=progress2")
    if not include_checkpoints:
        cmd += ["--prune-empty-dirs", "--include=*/"]
        cmd += [f"--include={pattern}" for pattern in SMALL_FILES]
        cmd += ["--exclude=*"]
    return cmd + [remote.rstrip("/") + "/", str(local) + "/"]


def run(args) -> int:
    remote = args.remote or config.user_config().get("sync_remote")
    if not remote:
        raise UsageError("no remote given: pass user@host:path/results/ or set sync_remote in "
                         f"{config.config_dir() / 'config.yaml'}")
    if not shutil.which("rsync"):
        raise UsageError("rsync is not installed (apt-get install rsync, or your system's package)")
    local = args.to or results_root()
    local.mkdir(parents=True, exist_ok=True)
    cmd = rsync_command(remote, local, args.include_checkpoints, args.dry_run)
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if result.returncode:
        why = RSYNC_EXIT.get(result.returncode, f"exit status {result.returncode}")
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        causes = [line for line in lines if not line.startswith("rsync error")]
        detail = (causes or lines or [""])[0]
        if detail.startswith("ssh:"):  # rsync says 255 or 12 depending on when ssh gave up
            why = RSYNC_EXIT[255]
        print(f"error: sync from {remote} failed: {why}" + (f" ({detail})" if detail else ""), file=sys.stderr)
        return 1
    changed = [line.split(" ", 1)[1] for line in result.stdout.splitlines() if line.startswith(">f")]
    moved = re.search(r"Total transferred file size: (.+)", result.stdout)
    verb = "would copy" if args.dry_run else "copied"
    for name in changed if args.dry_run else []:
        print(name)
    print(f"{verb} {len(changed)} files ({moved.group(1).strip() if moved else '0 bytes'}) from {remote} to {local}")
    return 0
