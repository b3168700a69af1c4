"""files.py: a write that fails at any point leaves the old file, whole, and no litter."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from trpo_pipeline.rl.files import atomic_output, atomic_write, file_mode


def test_a_write_that_fails_midway_leaves_the_old_content(tmp_path: Path) -> None:
    path = atomic_write(tmp_path / "train_metrics.json", '{"updates": 1}\n')
    with pytest.raises(RuntimeError), atomic_output(path) as f:
        f.write('{"updates": 2, "episo')  # half a file ...
        raise RuntimeError("disk full")  # ... then the writer dies
    assert path.read_text() == '{"updates": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train_metrics.json"]


def test_a_failed_flush_to_disk_leaves_the_old_content(tmp_path: Path, monkeypatch) -> None:
    path = atomic_write(tmp_path / "report.md", "old\n")

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        atomic_write(path, "new\n" * 1000)
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_a_killed_writer_leaves_the_old_file_whole(tmp_path: Path) -> None:
    """SIGKILL in the middle of a large write: the target is the old file, byte for byte."""
    path = tmp_path / "learning_curve.csv"
    old = b"update,env_steps\n" + b"1,512\n" * 1000
    atomic_write(path, old)
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from trpo_pipeline.rl.files import atomic_output\n"
            "with atomic_output(sys.argv[1], 'wb') as f:\n"
            "    f.write(b'x' * 1_000_000); f.flush()\n"
            "    print('writing', flush=True); time.sleep(60)\n",
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout.readline().strip() == "writing"
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    assert path.read_bytes() == old
    leftovers = [p.name for p in tmp_path.iterdir() if p != path]
    assert all(name.startswith(".learning_curve.csv.") for name in leftovers)  # hidden temp


def test_files_get_the_permissions_open_would_give(tmp_path: Path) -> None:
    umask = os.umask(0o027)
    try:
        path = atomic_write(tmp_path / "config.yaml", "a: 1\n")
        assert stat.S_IMODE(path.stat().st_mode) == 0o640 == file_mode()
    finally:
        os.umask(umask)
    path = atomic_write(path, b"a: 2\n")  # replacing keeps the usual mode too
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert path.read_bytes() == b"a: 2\n"


def test_only_whole_file_modes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="whole files"), atomic_output(tmp_path / "x", "a"):
        pass
