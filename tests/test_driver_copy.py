"""The sweep folder's copy in a URI storage (orchestrator.sweep.driver_copy): uploaded, restored into a ./runs
that lacks it, found through <uri>/<name>.latest; here on a file:// URI (pyarrow's local filesystem), the
S3 path in tests/test_cluster_no_shared_fs.py."""

import pickle

import pytest

from orchestrator.sweep import driver_copy
from orchestrator.sweep.folder import OPTUNA_JOURNAL, STATE_FILE, find_folder, open_folder


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    (tmp_path / "driver").mkdir()
    monkeypatch.chdir(tmp_path / "driver")
    return f"file://{tmp_path / 'bucket'}"


def make_sweep(uri: str, name: str = "demo"):
    from orchestrator.infra.storage import local_root

    folder, state = open_folder(local_root(uri), name, None)
    (folder / STATE_FILE).write_text('{"parent_run_id": "abc"}')
    (folder / "config.yaml").write_text("name: demo\n")
    (folder / OPTUNA_JOURNAL).write_text("journal line 1\n")
    (folder / "leaderboard.csv").write_text("not a resume file\n")
    return folder


def test_a_resume_restores_the_folder_from_the_storage_when_runs_lost_it(bucket, tmp_path):
    folder = make_sweep(bucket)
    driver_copy.point_latest(folder, bucket, "demo")
    driver_copy.upload(folder, bucket)
    saved = {p.name: p.read_bytes() for p in folder.iterdir() if p.name in driver_copy.RESUME_FILES}
    assert sorted(saved) == sorted([STATE_FILE, "config.yaml", OPTUNA_JOURNAL])
    assert (tmp_path / "bucket" / "demo.latest").read_text() == folder.name

    import shutil
    shutil.rmtree(tmp_path / "driver" / "runs")  # a new machine: no ./runs at all
    assert driver_copy.restore(bucket, "demo", "latest") == "latest"
    found = find_folder(tmp_path / "driver" / "runs", "demo", "latest")
    assert found == folder
    assert {p.name: p.read_bytes() for p in found.iterdir()} == saved  # the resume files, nothing else


@pytest.mark.parametrize("given", ["/home/someone/else/runs/{name}", "{bucket}/{name}/", "runs/{name}"])
def test_a_named_folder_resumes_under_this_drivers_runs(bucket, tmp_path, given):
    """The path the interrupted sweep printed (another machine's, or the folder's URI): its name is what counts."""
    import shutil

    folder = make_sweep(bucket)
    driver_copy.upload(folder, bucket)
    shutil.rmtree(folder)
    resume = driver_copy.restore(bucket, "demo", given.format(name=folder.name, bucket=bucket))
    assert resume == str(tmp_path / "driver" / "runs" / folder.name)
    assert find_folder(tmp_path / "driver" / "runs", "demo", resume) == folder


def test_a_folder_on_disk_is_left_as_it_is(bucket):
    folder = make_sweep(bucket)
    driver_copy.upload(folder, bucket)
    (folder / OPTUNA_JOURNAL).write_text("journal line 1\nline 2, newer than the copy\n")
    assert driver_copy.restore(bucket, "demo", str(folder)) == str(folder)
    assert (folder / OPTUNA_JOURNAL).read_text().endswith("newer than the copy\n")


def test_nothing_in_the_storage_leaves_the_resume_to_fail_as_before(bucket, tmp_path):
    assert driver_copy.restore(bucket, "demo", "/elsewhere/demo-1") == "/elsewhere/demo-1"
    assert driver_copy.restore(bucket, "demo", "latest") == "latest"
    with pytest.raises(FileNotFoundError, match="no earlier sweep named 'demo'"):
        find_folder(tmp_path / "driver" / "runs", "demo", "latest")


def test_tunes_save_uploads_the_latest_journal(bucket, tmp_path):
    """Tune pickles its callbacks with the run and calls get_state inside every state save."""
    folder = make_sweep(bucket)
    [callback] = driver_copy.callbacks(bucket, folder / "confirm")  # a stage's Tune folder: the sweep's copy
    callback = pickle.loads(pickle.dumps(callback))
    (folder / OPTUNA_JOURNAL).write_text("journal line 1\nline 2\n")
    assert callback.get_state() is None  # nothing for Tune to keep
    copy = tmp_path / "bucket" / folder.name / "driver" / OPTUNA_JOURNAL
    assert copy.read_text() == "journal line 1\nline 2\n"


def test_a_local_storage_copies_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = make_sweep(str(tmp_path / "runs"))
    driver_copy.upload(folder, str(tmp_path / "runs"))
    driver_copy.point_latest(folder, None, "demo")
    assert driver_copy.restore(str(tmp_path / "runs"), "demo", "/x/demo-1") == "/x/demo-1"
    assert driver_copy.callbacks(str(tmp_path / "runs"), folder) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


def test_a_file_is_copied_again_only_when_it_changed(bucket, tmp_path):
    folder = make_sweep(bucket)
    driver_copy.upload(folder, bucket)
    copy = tmp_path / "bucket" / folder.name / "driver"
    (copy / "config.yaml").write_text("tampered in the bucket\n")  # unchanged on the driver: not copied again
    (folder / OPTUNA_JOURNAL).write_text("journal line 1\nline 2\n")
    driver_copy.upload(folder, bucket)
    assert (copy / "config.yaml").read_text() == "tampered in the bucket\n"
    assert (copy / OPTUNA_JOURNAL).read_text() == "journal line 1\nline 2\n"
