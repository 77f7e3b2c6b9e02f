"""Run files: written whole or not at all, and readable by whoever the umask lets read them."""

import os
import stat

import pytest

from orchestrator.paths import atomic_file, atomic_write_text


@pytest.fixture
def umask():
    """Set the process umask for one test; the old one comes back whatever happens."""
    saved = os.umask(0o022)
    yield os.umask
    os.umask(saved)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)],
                         ids=["umask022", "umask002", "umask077"])
def test_a_written_file_gets_0666_less_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    path = tmp_path / "run" / "status.json"
    atomic_write_text(path, "{}\n")
    with atomic_file(tmp_path / "metrics.bin", "wb") as handle:
        handle.write(b"\x00")
    for written in (path, tmp_path / "metrics.bin"):
        assert stat.S_IMODE(written.stat().st_mode) == expected


def test_an_error_inside_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "config_a.json"
    path.write_text("old\n")
    with pytest.raises(RuntimeError, match="half-way"):
        with atomic_file(path) as handle:
            handle.write("new, but only half")
            raise RuntimeError("half-way")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config_a.json"]


def test_a_rewrite_replaces_the_whole_file(tmp_path):
    path = tmp_path / "a.csv"
    atomic_write_text(path, "step,loss\n1,2.0\n")
    atomic_write_text(path, "step,loss\n")
    assert path.read_text() == "step,loss\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv"]
