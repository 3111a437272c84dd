"""Outputs are never lost or replaced by surprise: a command refuses an output that is not a regular file (a FIFO, a
device, a folder, a link: `pgolf.cli.check_output`); `write_atomic` writes with the process's umask (mkstemp's 0600
hid bundles and run files from other users); `train --force` moves the old run aside and removes it only once the
new run finishes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from core.run import write_atomic
from pgolf.cli import main


def test_outputs_that_are_not_regular_files_are_never_replaced(tmp_path: Path, capsys) -> None:
    fifo, folder, link = tmp_path / "fifo.py", tmp_path / "folder", tmp_path / "link.py"
    os.mkfifo(fifo)
    folder.mkdir()
    (tmp_path / "target").write_text("kept")
    link.symlink_to(tmp_path / "target")
    for path in (fifo, link):
        assert main(["bundle", "-o", str(path), "--force"]) == 2
        assert "not a regular file (-o)" in capsys.readouterr().err
    assert main(["bench", "--recipe", "baseline", "--smoke", "--json", str(folder), "--force"]) == 2
    assert "not a regular file (--json)" in capsys.readouterr().err
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and folder.is_dir() and link.is_symlink()
    assert (tmp_path / "target").read_text() == "kept" and sorted(p.name for p in tmp_path.iterdir()) == [
        "fifo.py", "folder", "link.py", "target"]  # no temporary file left


def test_write_atomic_follows_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "a", b"1")
        os.umask(0o077)
        write_atomic(tmp_path / "b", b"1")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o600


def test_train_force_keeps_the_old_run_until_the_new_one_finishes(tmp_path: Path, tiny_core, tiny_data,
                                                                   monkeypatch) -> None:
    argv = ["train", *[a for s in tiny_core for a in ("--set", s)], "--data", str(tiny_data),
            "--set", f"core.out_dir={tmp_path}", "--set", "core.run_id=r", "--set", "core.iterations=2"]
    assert main(argv) == 0
    run = tmp_path / "r"
    old = (run / "final_model.ptz").read_bytes()

    import core.train

    def broken(*args, **kwargs):
        raise RuntimeError("the new run broke")

    with monkeypatch.context() as m:
        m.setattr(core.train, "timed_loop", broken)
        assert main([*argv, "--force"]) != 0
    assert (run / ".replaced" / "final_model.ptz").read_bytes() == old  # the replaced run is kept
    assert main([*argv, "--force", "--set", "core.seed=7"]) == 0
    assert not (run / ".replaced").exists() and (run / "final_model.ptz").is_file()
