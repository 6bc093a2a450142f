"""A storage path on a full filesystem: one clear error naming it, before anything starts; no half-written
checkpoint left for a resume to trust. A real tiny tmpfs when this process may mount one (root), and the same
checks with ENOSPC simulated everywhere."""

from __future__ import annotations

import errno
import shutil
import subprocess
from collections import namedtuple

import pytest
import torch

from orchestrator.infra import atomic_files
from orchestrator.run import preflight
from orchestrator.infra.atomic_files import atomic_torch_save
from orchestrator.config.schema import ConfigError
from orchestrator.infra.safe_load import load_tensors
from orchestrator.sweep.cli import main
from orchestrator.run.worker import StorageFullError, disk_full_is_clear

TINY = ["data.dataset=digits", "model.teacher=tiny_teacher", "model.student=tiny_student", "sweep.search_space=kd"]


@pytest.fixture
def full_fs(tmp_path):
    """A 2 MiB tmpfs, filled up; skipped where mounting is not allowed (not root, no mount namespace)."""
    mount = tmp_path / "full"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); "
                    "test_enospc_simulated_* cover the same paths")
    try:
        atomic_torch_save({"epoch": torch.tensor(1)}, mount / "state.pt")  # a complete checkpoint from before
        with open(mount / "filler", "wb") as handle, pytest.raises(OSError) as info:
            handle.write(b"\0" * (4 << 20))
            handle.flush()
        assert info.value.errno == errno.ENOSPC
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)  # lazy: even if a handle is still open


def _one_clear_error(capsys, path) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "sweep.storage_path" in err and str(path) in err, err
    return err


def test_storage_on_a_full_tmpfs_exits_2_before_anything_starts(full_fs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    storage = full_fs / "runs"
    for extra in (["--dry-run"], []):
        assert main([*extra, *TINY, "--storage-path", str(storage), "--num-samples", "1"]) == 2
        assert "No space left on device" in _one_clear_error(capsys, storage)
    assert not (tmp_path / "mlflow.db").exists() and not storage.exists()


def test_checkpoint_write_on_a_full_tmpfs_keeps_the_last_complete_one(full_fs):
    with pytest.raises(OSError) as info:
        atomic_torch_save({"epoch": torch.tensor(2), "weights": torch.zeros(1 << 20)}, full_fs / "state.pt")
    assert info.value.errno == errno.ENOSPC or "No space left" in str(info.value)
    assert int(load_tensors(full_fs / "state.pt", "trial checkpoint")["epoch"]) == 1  # the old one, whole
    assert sorted(p.name for p in full_fs.iterdir()) == ["filler", "state.pt"]  # no temporary file left


def test_enospc_simulated_in_the_storage_probe_and_free_space(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    storage = tmp_path / "runs"
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: Usage(10**9, 10**9 - 5 * 10**6, 5 * 10**6))
    assert main(["--dry-run", *TINY, "--storage-path", str(storage)]) == 2
    assert "at least 100 MB free" in (err := _one_clear_error(capsys, storage)) and "5.0 MB free" in err

    def no_space(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(preflight.os, "fsync", no_space)
    with pytest.raises(ConfigError, match=r"sweep.storage_path.*No space left on device") as info:
        preflight.check_storage(str(storage))
    assert info.value.key == "sweep.storage_path"
    assert list(tmp_path.glob(".distill-write-probe-*")) == []  # the probe is removed


def test_enospc_simulated_in_a_checkpoint_write_leaves_nothing_half_written(tmp_path, monkeypatch):
    target = tmp_path / "state.pt"
    atomic_torch_save({"epoch": torch.tensor(1)}, target)

    def full_at_sync(fd):  # where a full disk often shows: the data went out, the sync fails
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic_files.os, "fsync", full_at_sync)
    with pytest.raises(StorageFullError, match="epoch 2 .*No space left.*sweep.storage_path.*--resume"):
        with disk_full_is_clear(2):
            atomic_torch_save({"epoch": torch.tensor(2)}, target)
    monkeypatch.undo()
    assert int(load_tensors(target, "trial checkpoint")["epoch"]) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]
    with pytest.raises(ValueError), disk_full_is_clear(2):  # other errors pass through unchanged
        raise ValueError("not a disk problem")
