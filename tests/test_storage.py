"""A storage URI: where Ray's records go, trial inputs uploaded once and fetched once per node, checkpoints read
back on the driver; against moto's S3 server (the two-node test: tests/test_cluster_no_shared_fs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.infra import storage
def test_a_uri_keeps_the_sweep_folder_local_and_ray_under_the_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.local_root("s3://bkt/runs") == tmp_path / "runs" and storage.local_root(None) == tmp_path / "runs"
    assert storage.local_root("/data/sweeps") == Path("/data/sweeps")
    folder = tmp_path / "runs" / "tiny-20260101-000000"
    assert storage.location("s3://bkt/runs/", folder) == "s3://bkt/runs/tiny-20260101-000000"
    assert storage.location("s3://bkt/runs", folder / "confirm") == "s3://bkt/runs/tiny-20260101-000000/confirm"
    assert storage.location(str(tmp_path / "runs"), folder) == str(folder)  # a folder: Ray's folder is the sweep's
    assert storage.split("s3://bkt/runs/tiny-1") == ("s3://bkt/runs", "tiny-1")
    assert storage.inputs_uri("s3://bkt/runs/tiny-1") == "s3://bkt/runs/tiny-1/inputs"
    assert storage.inputs_uri(str(folder)) == ""


@pytest.fixture
def s3(tmp_path, monkeypatch):
    """moto's S3 server in this process on 127.0.0.1, one empty bucket; the environment pyarrow and Ray read."""
    import boto3
    from moto.server import ThreadedMotoServer

    from test_compare import _free_port

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    creds = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    for key, value in {**creds, "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="bkt")
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path / "node-cache"))
    yield client
    server.stop()


def test_a_storage_uri_pyarrow_cannot_open_exits_2_naming_the_key(tmp_path, monkeypatch, capsys):
    from test_sweep import tiny_args

    from orchestrator.sweep.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["--dry-run", *tiny_args(tmp_path, "--storage-path", "s4://bucket/runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "sweep.storage_path" in err and "s4://bucket/runs" in err
    assert "Unrecognized filesystem type" in err and "\n" not in err
    assert not (tmp_path / "runs").exists()


def test_a_reachable_storage_uri_is_accepted_up_front(tmp_path, s3):
    from orchestrator.run.preflight import check_storage

    check_storage("s3://bkt/runs")  # moto's bucket; the driver's ./runs is probed too (nothing created)


def test_inputs_are_uploaded_once_and_fetched_once_per_node(tmp_path, s3):
    teacher = tmp_path / "driver" / "teacher.pt"
    views = tmp_path / "driver" / "views-seed1"
    (views / "epoch1").mkdir(parents=True)
    teacher.write_bytes(b"weights")
    (views / "epoch1" / "logits.bin").write_bytes(b"\x01\x02")
    dest = "s3://bkt/runs/tiny-1/inputs"

    other = tmp_path / "elsewhere" / "teacher.pt"  # a second teacher of the same file name
    other.parent.mkdir()
    other.write_bytes(b"other weights")
    uris = storage.publish([str(teacher), str(views), "runs:/abc/teacher", str(other)], dest)
    assert uris[2] == "runs:/abc/teacher"  # MLflow URIs as they are
    assert [u.rpartition("/")[0] for u in uris[:2]] == [dest, dest] and uris[0] != uris[3]
    assert uris[0].endswith("-teacher.pt") and uris[1].endswith("-views-seed1") and uris[3].endswith("-teacher.pt")
    read = lambda uri: s3.get_object(Bucket="bkt", Key=uri.removeprefix("s3://bkt/"))["Body"].read()  # noqa: E731
    assert read(f"{uris[1]}/epoch1/logits.bin") == b"\x01\x02" and read(uris[3]) == b"other weights"
    teacher.write_bytes(b"changed")
    assert storage.publish([str(teacher)], dest) == uris[:1]  # a complete upload is kept
    assert read(uris[0]) == b"weights"

    local = storage.fetch_under(uris, dest)
    assert local[2] == "runs:/abc/teacher"
    assert Path(local[0]).read_bytes() == b"weights" and Path(local[0]).is_relative_to(tmp_path / "node-cache")
    assert (Path(local[1]) / "epoch1" / "logits.bin").read_bytes() == b"\x01\x02"
    s3.delete_object(Bucket="bkt", Key=uris[0].removeprefix("s3://bkt/"))
    assert storage.fetch(uris[0]) == local[0]  # downloaded once per node, then read from its cache
    assert storage.fetch_under([str(teacher)], dest) == [str(teacher)]  # not an upload of this sweep: as it is
    with pytest.raises(FileNotFoundError, match="other.pt is not in the sweep's storage"):
        storage.fetch(f"{dest}/other.pt")


def test_a_checkpoint_on_the_storage_is_copied_to_the_driver_once(tmp_path, s3):
    s3.put_object(Bucket="bkt", Key="runs/tiny-1/trial_a/checkpoint_000001/student.pt", Body=b"s")
    fs_path = "bkt/runs/tiny-1/trial_a/checkpoint_000001"  # as Ray reports it: a path on the storage's filesystem
    local = storage.local_copy(fs_path, "s3://bkt/runs", tmp_path / "dl")
    assert local == tmp_path / "dl" / "trial_a" / "checkpoint_000001" and (local / "student.pt").read_bytes() == b"s"
    s3.delete_object(Bucket="bkt", Key="runs/tiny-1/trial_a/checkpoint_000001/student.pt")
    assert storage.local_copy(fs_path, "s3://bkt/runs", tmp_path / "dl") == local  # once
    on_disk = tmp_path / "runs" / "checkpoint_000002"
    on_disk.mkdir(parents=True)
    assert storage.local_copy(str(on_disk), str(tmp_path / "runs"), tmp_path / "dl") == on_disk  # a local folder


def test_the_student_files_of_a_finished_job_are_read_from_the_storage(tmp_path, s3):
    """A confirmation job that finished before its driver died: its checkpoints' student files, from the bucket."""
    for key in ("runs/t/trial_x/checkpoint_000001/student.pt", "runs/t/trial_x/checkpoint_000002/student.pt",
                "runs/t/trial_x/checkpoint_000002/state.pt", "runs/t/trial_x/result.json"):
        s3.put_object(Bucket="bkt", Key=key, Body=key.encode())
    pairs = storage.checkpoint_files(["bkt/runs/t/trial_x", "s3://bkt/runs/t/train/none"], "s3://bkt/runs", "student.pt",
                                     tmp_path)
    assert pairs == [(tmp_path / "0", "bkt/runs/t/trial_x"), (tmp_path / "1", "bkt/runs/t/train/none")]
    got = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert got == ["0/checkpoint_000001/student.pt", "0/checkpoint_000002/student.pt"]  # students only


def test_a_view_cache_task_reads_its_teacher_from_the_storage_and_puts_its_views_there(tmp_path, s3):
    """What the Ray task that builds a teacher's view caches does on whichever node it lands (run here, in-process)."""
    from test_sweep_views import choice

    from orchestrator.models import build_model
    from orchestrator.teacher_outputs import build_teacher_views
    from orchestrator.teacher_outputs import TeacherViews
    from orchestrator.teacher.checkpoint import save_model_checkpoint

    views, cfg, data = choice("data.augment=true", "train.in_process=false")
    path = tmp_path / "driver" / "teacher.pt"
    save_model_checkpoint(path, build_model("tiny_teacher", data.num_classes, data.in_channels), "tiny_teacher", data,
                          {})
    inputs = "s3://bkt/runs/tiny-1/inputs"
    [teacher] = storage.publish([str(path)], inputs)
    path.unlink()  # the task's node has no such file
    folders, built, _ = build_teacher_views(teacher, cfg, views, None, False, 1, data, inputs=inputs)
    assert built == 2 * len(views.seeds) and all(f.startswith(inputs + "/") for f in folders)
    assert [TeacherViews(storage.fetch(f)).meta.seed for f in folders] == list(views.seeds)


def test_a_dataset_missing_on_a_node_names_the_node(ray_session, tmp_path):
    from orchestrator.config.schema import DataConfig, load_config
    from orchestrator.data import DatasetNotFoundError
    from orchestrator.run.worker import data_on_this_node

    cfg = load_config(None, [])
    cfg.data = DataConfig(dataset="imagefolder", root=str(tmp_path / "nothing"))
    with pytest.raises(DatasetNotFoundError) as info:
        data_on_this_node(cfg, 0)
    node = ray_session.get_runtime_context().get_node_id()
    message = str(info.value)
    assert f"on Ray node {node}" in message and "imagefolder" in message and "on that node" in message
    assert "\n" not in message


def test_the_storage_benchmark_runs_and_prints_its_line(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path / "cache"))
    import storage_inputs

    (tmp_path / "teacher.pt").write_bytes(b"\0" * 2**20)
    assert storage_inputs.main([str(tmp_path / "teacher.pt")]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("1.0 MiB: upload ") and "first fetch on a node" in line and "cached" in line
    assert storage_inputs.main(["--journal-kib", "4"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("sweep folder copy at a Tune save, journal 4 KiB: ") and "nothing changed" in line
