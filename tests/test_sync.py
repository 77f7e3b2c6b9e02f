"""sync: rsync between two local directories, and over SSH to an sshd on the loopback address."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def apt_install(*packages):
    if os.geteuid() != 0:
        pytest.skip(f"needs {', '.join(packages)} (install them, or run as root as CI does)")
    subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], check=True,
                   capture_output=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


@pytest.fixture(scope="module")
def rsync():
    missing = [p for p, tool in (("rsync", "rsync"), ("openssh-client", "ssh")) if not shutil.which(tool)]
    if missing:
        apt_install(*missing)
    return shutil.which("rsync")


def make_cluster_results(root: Path) -> Path:
    run = root / "scaling" / "run_a"
    (run / "checkpoints").mkdir(parents=True)
    (root / "scaling" / "run_a.csv").write_text("optimizer_step,loss\n1,5.5\n2,5.1\n")
    (root / "scaling" / "config_run_a.json").write_text('{"identity": "abc"}\n')
    (run / "status.json").write_text('{"state": "completed"}\n')
    (run / "spec.json").write_text('{"label": "run_a"}\n')
    (run / "checkpoints" / "step_00000002.pt").write_bytes(os.urandom(50_000))
    (root / "_submitit" / "x").mkdir(parents=True)
    (root / "_submitit" / "x" / "1_0_log.out").write_text("log\n")
    return root


def sync(*args, env=None):
    return subprocess.run([sys.executable, "-m", "orchestrator", "sync", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


SMALL = {"scaling/run_a.csv", "scaling/config_run_a.json", "scaling/run_a/status.json", "scaling/run_a/spec.json"}


def test_sync_takes_metrics_configs_and_status_and_a_second_sync_moves_nothing(tmp_path, rsync):
    remote = make_cluster_results(tmp_path / "cluster")
    home = tmp_path / "home"
    dry = sync(str(remote), "--to", str(home), "--dry-run")
    assert dry.returncode == 0 and "would copy 4 files" in dry.stdout and not home.joinpath("scaling").exists()
    first = sync(str(remote), "--to", str(home))
    assert first.returncode == 0 and "copied 4 files" in first.stdout
    assert files_under(home) == SMALL
    second = sync(str(remote), "--to", str(home))
    assert second.returncode == 0 and "copied 0 files" in second.stdout


def test_include_checkpoints_takes_everything(tmp_path, rsync):
    remote = make_cluster_results(tmp_path / "cluster")
    result = sync(str(remote), "--to", str(tmp_path / "home"), "--include-checkpoints")
    assert result.returncode == 0
    assert files_under(tmp_path / "home") == files_under(remote)


def test_nothing_local_is_deleted_or_clobbered_by_a_failed_sync(tmp_path, rsync):
    home = tmp_path / "home"
    (home / "scaling").mkdir(parents=True)
    (home / "scaling" / "mine.csv").write_text("kept\n")
    result = sync(str(tmp_path / "no_such_dir"), "--to", str(home))
    assert result.returncode != 0 and "No such file or directory" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert (home / "scaling" / "mine.csv").read_text() == "kept\n"
    remote = make_cluster_results(tmp_path / "cluster")
    assert sync(str(remote), "--to", str(home)).returncode == 0
    assert (home / "scaling" / "mine.csv").read_text() == "kept\n"


def test_an_unreachable_host_is_a_clear_error(tmp_path, rsync):
    result = sync("nobody@host.invalid:results/", "--to", str(tmp_path / "home"))
    assert result.returncode != 0 and "cannot reach the remote host" in result.stderr


def test_no_remote_is_a_usage_error(tmp_path):
    result = sync("--to", str(tmp_path))
    assert result.returncode == 2 and "no remote given" in result.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def sshd(tmp_path, rsync):
    """An sshd on 127.0.0.1 that accepts one throwaway key; stopped after the test."""
    if not Path("/usr/sbin/sshd").exists():
        apt_install("openssh-server", "openssh-client")
    keys = tmp_path / "ssh"
    keys.mkdir(mode=0o700)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "host_key")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "client_key")], check=True)
    shutil.copy(keys / "client_key.pub", keys / "authorized_keys")
    port = free_port()
    (keys / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {keys / 'host_key'}\n"
        f"AuthorizedKeysFile {keys / 'authorized_keys'}\nPidFile {keys / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        "PermitRootLogin prohibit-password\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    server = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(keys / "sshd_config")],
                              stderr=subprocess.PIPE, text=True)
    rsh = (f"ssh -p {port} -i {keys / 'client_key'} -o BatchMode=yes -o StrictHostKeyChecking=no "
           f"-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR")
    deadline = time.monotonic() + 20
    while subprocess.run([*rsh.split(), "127.0.0.1", "true"], capture_output=True).returncode:
        if time.monotonic() > deadline or server.poll() is not None:
            server.kill()
            raise RuntimeError(f"sshd did not come up: {server.stderr.read() if server.poll() is not None else ''}")
        time.sleep(0.2)
    yield {"RSYNC_RSH": rsh}
    server.terminate()
    server.wait(timeout=10)


def test_sync_over_ssh_and_a_second_sync_moves_nothing(tmp_path, sshd):
    remote = make_cluster_results(tmp_path / "cluster")
    user = os.environ.get("USER") or "root"
    address = f"{user}@127.0.0.1:{remote}/"
    home = tmp_path / "home"
    first = sync(address, "--to", str(home), env=sshd)
    assert first.returncode == 0, first.stderr
    assert "copied 4 files" in first.stdout and files_under(home) == SMALL
    second = sync(address, "--to", str(home), env=sshd)
    assert second.returncode == 0 and "copied 0 files" in second.stdout
