"""Atomic outputs: a kill between any two filesystem steps leaves a complete old or new output at its path, and the
next write cleans what the kill left behind. Kills are simulated by the ``kills`` fixture (``conftest.py``).
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hf_dynmask.commands import atomic
from hf_dynmask.commands.atomic import atomic_path, check_writable, clean_stale, write_json


def write_version(folder: Path, version: str) -> None:
    """A folder whose every file names its version: complete iff all files are there and agree."""
    folder.mkdir()
    for name in ("config.json", "model.safetensors", "README.md"):
        (folder / name).write_text(f"{version}/{name}")
    (folder / "code").mkdir()
    (folder / "code" / "modeling.py").write_text(f"{version}/code")


def version_of(folder: Path) -> str:
    """The version of a complete folder (fails on a missing, partial or mixed one)."""
    assert folder.is_dir(), f"no folder at {folder}"
    files = {p.relative_to(folder).as_posix(): p.read_text() for p in folder.rglob("*") if p.is_file()}
    assert set(files) == {"config.json", "model.safetensors", "README.md", "code/modeling.py"}, files
    versions = {text.split("/")[0] for text in files.values()}
    assert len(versions) == 1, files
    return versions.pop()


def replace_folder(path: Path, version: str) -> None:
    with atomic_path(path) as tmp:
        write_version(tmp, version)


def steps_of(monkeypatch, kills, action) -> list[str]:
    with monkeypatch.context() as patch:
        switch = kills.Switch(patch)
        action()
    return switch.steps


def no_exchange(monkeypatch):
    def refuse(a, b):
        raise OSError(errno.EINVAL, "no exchange on this file system")

    monkeypatch.setattr(atomic, "_exchange", refuse)


# -- folders ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
def test_folder_replacement_survives_a_kill_at_every_step(tmp_path, monkeypatch, kills, exchange):
    if exchange and not atomic.exchange_supported(tmp_path):
        pytest.skip("this system or file system has no atomic exchange of folders")
    if not exchange:
        no_exchange(monkeypatch)
    probe = tmp_path / "probe"
    replace_folder(probe / "out", "v0")
    steps = steps_of(monkeypatch, kills, lambda: replace_folder(probe / "out", "v1"))
    assert (steps.count("rename") == 0) == exchange and "fsync" in steps
    for k in range(len(steps) + 1):
        folder = tmp_path / f"kill-{k}"
        path = folder / "out"
        replace_folder(path, "old")
        with monkeypatch.context() as patch:
            kills.Switch(patch, kill_at=k)
            try:
                replace_folder(path, "new")
            except kills.Killed:
                pass
        if exchange:
            assert version_of(path) in ("old", "new"), k  # at every instant a complete folder is at its path
        else:
            clean_stale(path)  # the two renames leave a window; the next write restores the old folder first
            assert version_of(path) in ("old", "new"), k
        replace_folder(path, "next")  # the next run: cleans what the kill left, then writes
        assert version_of(path) == "next"
        assert [p.name for p in folder.iterdir()] == ["out"], (k, steps[k : k + 1])


def test_a_kill_between_the_two_renames_is_restored_by_the_next_write(tmp_path, monkeypatch, kills):
    no_exchange(monkeypatch)
    path = tmp_path / "out"
    replace_folder(path, "old")
    steps = steps_of(monkeypatch, kills, lambda: replace_folder(path, "old"))
    second_rename = [i for i, step in enumerate(steps) if step == "rename"][1]
    with monkeypatch.context() as patch:
        kills.Switch(patch, kill_at=second_rename)
        with pytest.raises(kills.Killed):
            replace_folder(path, "new")
    assert not path.exists() and any(p.name.endswith(".old") for p in tmp_path.iterdir())
    staging = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # the complete new copy, never moved in
    assert clean_stale(path) == staging
    assert version_of(path) == "old" and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_stale_temporaries_of_exited_processes_are_removed_and_live_ones_kept(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(done.stdout)
    path = tmp_path / "out"
    write_version(path, "current")
    (tmp_path / f".out.{dead}.abcd1234.tmp").mkdir()  # an interrupted staging folder
    (tmp_path / f".out.{dead}.old").mkdir()  # an old copy moved aside
    (tmp_path / f".out.{dead}.zz_99xy.tmp").write_text("half a file")
    live = tmp_path / ".out.1.abcd1234.tmp"  # pid 1 is always alive: another process is writing
    live.mkdir()
    other = tmp_path / f".other.{dead}.abcd1234.tmp"  # another output's temporary
    other.mkdir()
    removed = clean_stale(path)
    assert len(removed) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", live.name, other.name])
    assert version_of(path) == "current"


def test_replacing_a_folder_keeps_nothing_else(tmp_path):
    path = tmp_path / "model"
    for version in ("first", "second"):
        replace_folder(path, version)
    assert version_of(path) == "second" and [p.name for p in tmp_path.iterdir()] == ["model"]
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.mkdir()
        raise RuntimeError("crash while writing")
    assert version_of(path) == "second" and [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_link_to_a_folder_stays_a_link(tmp_path):
    target = tmp_path / "real"
    write_version(target, "old")
    link = tmp_path / "link"
    link.symlink_to(target)
    replace_folder(link, "new")
    assert link.is_symlink() and version_of(link) == "new" and version_of(target) == "new"


# -- files -----------------------------------------------------------------------------------------------------------


def test_file_replacement_survives_a_kill_at_every_step(tmp_path, monkeypatch, kills):
    steps = steps_of(monkeypatch, kills, lambda: write_json(tmp_path / "probe.json", {"v": 0}))
    for k in range(len(steps) + 1):
        path = tmp_path / f"kill-{k}" / "out.json"
        write_json(path, {"v": "old", "payload": list(range(100))})
        with monkeypatch.context() as patch:
            kills.Switch(patch, kill_at=k)
            try:
                write_json(path, {"v": "new", "payload": list(range(100))})
            except kills.Killed:
                pass
        assert json.loads(path.read_text())["v"] in ("old", "new")
        write_json(path, {"v": "next"})
        assert [p.name for p in path.parent.iterdir()] == ["out.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"old": True})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text('{"half": ')
        raise RuntimeError("crash while writing")
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


# -- checking before the work ----------------------------------------------------------------------------------------


def test_check_writable(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        check_writable(tmp_path / "file" / "out.json")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_writable(tmp_path / "missing" / "out.json")
    check_writable(tmp_path / "missing" / "out.json", create_parents=True)
    check_writable(tmp_path / "out.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "missing"]  # the probe is gone


def test_check_writable_tries_rather_than_trusting_permissions(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        try:
            (locked / "probe").write_text("")
        except OSError:
            place = locked  # not root: permissions hold
        else:
            (locked / "probe").unlink()  # root ignores permissions; a read-only file system does not
            place = Path("/proc/self")
            if not place.is_dir():
                pytest.skip("no place that even root cannot write to")
        with pytest.raises(OSError, match="cannot write to"):
            check_writable(place / "out.json")
    finally:
        locked.chmod(0o700)
