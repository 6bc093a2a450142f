"""Every ``--dry-run`` (sweep, both pipelines, export) checks what its run checks (teacher or student files, the
tracking store, the storage folder) and writes nothing: the working directory, the cache and the data root are the
same file for file (names, sizes, mtimes) afterwards, no Ray is started, no mlflow.db or runs/ appears."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

from orchestrator.export import main as export_main
from orchestrator.sweep.cli import main as sweep_main
from pipelines.ensemble import main as ensemble_main
from pipelines.teachers import main as teachers_main

DIGITS = ["data.dataset=digits", "model.teacher=tiny_teacher", "model.student=tiny_student"]


def snapshot(*folders: Path) -> dict[str, object]:
    """Every file under ``folders`` with its size and mtime, every folder by name."""
    out: dict[str, object] = {}
    for root in folders:
        for dirpath, dirnames, filenames in os.walk(root):
            out.update({os.path.join(dirpath, d): "folder" for d in dirnames})
            for name in filenames:
                stat = os.stat(os.path.join(dirpath, name))
                out[os.path.join(dirpath, name)] = (stat.st_size, stat.st_mtime_ns)
    return out


@pytest.fixture
def places(tmp_path, monkeypatch):
    """A working directory, a cache and a data root of their own, and the inputs the CLIs are given (outside them):
    a plain state_dict of tiny_teacher, a student checkpoint of this tool, a file of random bytes."""
    from orchestrator.config.schema import load_config
    from orchestrator.data import build_data
    from orchestrator.models import build_model
    from orchestrator.teacher.checkpoint import save_model_checkpoint

    cwd, cache, data_root, given = (tmp_path / name for name in ("cwd", "cache", "data", "given"))
    for folder in (cwd, cache, data_root, given):
        folder.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(cache))
    monkeypatch.setenv("DISTILL_DATA_ROOT", str(data_root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    torch.manual_seed(0)
    torch.save(build_model("tiny_teacher", 10, 1).state_dict(), given / "teacher_state_dict.pt")
    data = build_data(load_config(None, ["data.dataset=digits"]).data, 0)
    save_model_checkpoint(given / "student.pt", build_model("tiny_student", 10, 1), "tiny_student", data, {})
    (given / "garbage.pt").write_bytes(os.urandom(4096))
    return {"cwd": cwd, "cache": cache, "data": data_root, "given": given, "tmp": tmp_path}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sweep_argv(p, teacher: Path) -> list[str]:
    return ["--dry-run", *DIGITS, "sweep.search_space=kd", f"teacher.checkpoint={teacher}"]


def ensemble_argv(p, teacher: Path) -> list[str]:
    return ["--dry-run", *DIGITS, f"pipeline.teachers=[{{checkpoint: {teacher}, arch: tiny_teacher}}, tiny_teacher:1]"]


def export_argv(p, student: Path) -> list[str]:
    return [str(student), "--dry-run"]


CLIS = {  # name -> (main, argv builder, the file it is given that is a teacher's or student's)
    "sweep": (sweep_main, sweep_argv, "teacher_state_dict.pt"),
    "ensemble": (ensemble_main, ensemble_argv, "teacher_state_dict.pt"),
    "teachers": (teachers_main, ensemble_argv, "teacher_state_dict.pt"),
    "export": (export_main, export_argv, "student.pt"),
}


@pytest.mark.parametrize("cli", sorted(CLIS))
def test_dry_run_writes_nothing_and_starts_no_ray(cli, places, capsys):
    """A valid given file: exit 0, and the working directory, the cache and the data root are unchanged (a plain
    state_dict teacher is checked in memory, not imported into the cache)."""
    import ray

    main, argv, given = CLIS[cli]
    ray_was_up = ray.is_initialized()  # another test's session Ray may be up; a dry run must not start one
    before = snapshot(places["cwd"], places["cache"], places["data"], places["given"])
    assert main(argv(places, places["given"] / given)) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "dry run: nothing was" in out
    assert snapshot(places["cwd"], places["cache"], places["data"], places["given"]) == before
    assert ray.is_initialized() == ray_was_up
    assert not (places["cwd"] / "mlflow.db").exists() and not (places["cwd"] / "runs").exists()


@pytest.mark.parametrize("cli", sorted(CLIS))
def test_dry_run_refuses_a_garbage_file_with_the_real_reason(cli, places, capsys):
    main, argv, _ = CLIS[cli]
    garbage = places["given"] / "garbage.pt"
    before = snapshot(places["cwd"], places["cache"])
    assert main(argv(places, garbage)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and f"'{garbage}' is not a PyTorch checkpoint" in err, err
    assert "could run code" not in err
    assert snapshot(places["cwd"], places["cache"]) == before


@pytest.mark.parametrize("cli", sorted(CLIS))
def test_dry_run_refuses_an_empty_file_and_a_pickle_payload_without_running_it(cli, places, capsys):
    from test_safe_load import _Payload

    main, argv, _ = CLIS[cli]
    empty, payload, marker = places["given"] / "empty.pt", places["given"] / "payload.pt", places["tmp"] / "code-ran"
    empty.write_bytes(b"")
    torch.save({"arch": "tiny_teacher", "state_dict": {}, "payload": _Payload(marker)}, payload)
    assert main(argv(places, empty)) == 2
    assert f"'{empty}' is empty" in capsys.readouterr().err
    assert main(argv(places, payload)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"'{payload}' holds Python objects" in err and "refused" in err, err
    assert not marker.exists()


@pytest.mark.parametrize("cli", ["sweep", "ensemble", "teachers"])
def test_dry_run_refuses_an_unreachable_tracking_server_naming_tracking_uri(cli, places, capsys):
    main, argv, given = CLIS[cli]
    url = f"http://127.0.0.1:{_free_port()}"
    assert main([*argv(places, places["given"] / given), "--tracking-uri", url]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "config key 'tracking.uri'" in err and url in err and "cannot reach" in err, err


@pytest.mark.parametrize("cli", ["sweep", "ensemble", "teachers"])
def test_dry_run_checks_a_sqlite_store_without_creating_it(cli, places, capsys):
    main, argv, given = CLIS[cli]
    missing = places["tmp"] / "store" / "sub" / "mlflow.db"
    assert main([*argv(places, places["given"] / given), "--tracking-uri", f"sqlite:///{missing}"]) == 0
    assert not (places["tmp"] / "store").exists()
    not_a_db = places["given"] / "notes.db"
    not_a_db.write_text("not a database")
    assert main([*argv(places, places["given"] / given), "--tracking-uri", f"sqlite:///{not_a_db}"]) == 2
    err = capsys.readouterr().err
    assert "config key 'tracking.uri'" in err and "cannot be read as one" in err, err
    assert not_a_db.read_text() == "not a database"


def test_export_dry_run_checks_out_and_mlflow_sources(places, capsys):
    student = str(places["given"] / "student.pt")
    out = places["tmp"] / "new" / "folder" / "mine.onnx"
    assert export_main([student, "--dry-run", "--out", str(out)]) == 0
    assert f"would write {out} (onnx, tiny_student" in capsys.readouterr().out and not (places["tmp"] / "new").exists()
    (places["cwd"] / "taken.onnx").write_bytes(b"mine")
    assert export_main([student, "--dry-run", "--out", "taken.onnx"]) == 2
    assert "already exists; give --force" in capsys.readouterr().err
    url = f"http://127.0.0.1:{_free_port()}"
    assert export_main(["0123456789abcdef0123456789abcdef", "--dry-run", "--tracking-uri", url]) == 2
    assert "cannot reach the MLflow tracking store" in capsys.readouterr().err
    assert sorted(p.name for p in places["cwd"].iterdir()) == ["taken.onnx"]


def test_storage_is_checked_without_being_created(places, capsys):
    storage = places["tmp"] / "later" / "runs"
    argv = ["--dry-run", *DIGITS, "sweep.search_space=kd", "--storage-path", str(storage)]
    assert sweep_main(argv) == 0 and not (places["tmp"] / "later").exists()
    assert ensemble_main(["--dry-run", *DIGITS, "--output-dir", str(storage)]) == 0
    assert teachers_main(["--dry-run", *DIGITS, "--output-dir", str(storage)]) == 0
    assert not (places["tmp"] / "later").exists()
    (places["tmp"] / "a-file").write_text("")
    assert teachers_main(["--dry-run", *DIGITS, "--output-dir", str(places["tmp"] / "a-file" / "out")]) == 2
    assert "pipeline.output_dir" in capsys.readouterr().err


def _fake_fashion_mnist_package(folder: Path) -> Path:
    """A Debian-package-like folder of gzipped IDX files: 200 training and 50 test images of 28x28, 10 classes."""
    import gzip
    import struct

    import numpy as np

    rng = np.random.default_rng(0)
    folder.mkdir()
    for split, n in (("train", 200), ("t10k", 50)):
        images = struct.pack(">IIII", 0x803, n, 28, 28) + rng.integers(0, 256, (n, 28, 28), dtype=np.uint8).tobytes()
        labels = struct.pack(">II", 0x801, n) + (np.arange(n) % 10).astype(np.uint8).tobytes()
        (folder / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(images))
        (folder / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    return folder


def test_dry_run_on_unprovisioned_fashion_mnist_reads_a_temporary_copy(places, monkeypatch, capsys):
    """Fashion-MNIST missing under the data root: the dry run reads it from a temporary copy and says the run will
    provision it; the data root stays empty. The real provisioning then fills it."""
    from orchestrator.data.provision import ensure_fashion_mnist, fashion_mnist_raw_dir

    monkeypatch.setenv("DISTILL_FASHION_MNIST_SYSTEM_DIR", str(_fake_fashion_mnist_package(places["tmp"] / "deb")))
    monkeypatch.setenv("DISTILL_OFFLINE", "1")
    before = snapshot(places["cwd"], places["cache"], places["data"])
    assert teachers_main(["--dry-run", "pipeline.teachers=[tiny_teacher:0]"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert f"Fashion-MNIST is not provisioned under {places['data'].resolve()}; the run provisions it there" in out
    assert snapshot(places["cwd"], places["cache"], places["data"]) == before
    ensure_fashion_mnist(places["data"])  # what the run does
    assert len(list(fashion_mnist_raw_dir(places["data"]).iterdir())) == 4


def test_sweep_dry_run_of_a_student_search_measures_costs_but_caches_none(places, capsys):
    """A space that samples the student: the dry run shows each student's measured cost, and the cost cache (what a
    run fills) stays as it was."""
    space = Path(__file__).parent / "data" / "tiny_front_space.yaml"
    before = snapshot(places["cwd"], places["cache"], places["data"])
    argv = ["--dry-run", *DIGITS, f"sweep.search_space={space}", "sweep.objectives=[val/acc1:max,latency_ms:min]"]
    assert sweep_main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "cost/latency_ms (min)" in out and "dry run: nothing was started" in out
    assert snapshot(places["cwd"], places["cache"], places["data"]) == before
