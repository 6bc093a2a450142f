"""Bring your own teacher: torchvision/timm state_dicts, TorchScript files and MLflow URIs of checkpoints."""

from __future__ import annotations

import pytest
import torch
import torchvision
from mlflow.tracking import MlflowClient

from orchestrator.models import build_model
from orchestrator.models.pretrained import pretrained_stats
from orchestrator.models.weights import load_weights
from orchestrator.models.wrapped import Renormalize
from orchestrator.sweep.cli import main
from test_sweep import TINY, runs_by_kind, tiny_args


def test_torchvision_state_dict_loads_exactly_and_adapts_to_one_channel():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(load_weights("tv_resnet18", net.state_dict(), 10, 3).eval()(x).logits, net(x))
        gray = load_weights("tv_resnet18", net.state_dict(), 10, 1).eval()
        # RGB filters summed: a grey image gives what the RGB model gives on three equal channels
        g = torch.randn(2, 1, 8, 8)
        assert torch.allclose(gray(g).logits, net(g.expand(-1, 3, -1, -1)), atol=1e-5)


def test_timm_models_follow_the_contract_on_8x8_digits():
    import timm

    model = build_model("timm:resnet18", num_classes=10, in_channels=1)
    out = model(torch.randn(2, 1, 8, 8))
    assert out.logits.shape == (2, 10) and out.embedding.shape == (2, model.embedding_dim) and out.features
    net = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    loaded = load_weights("timm:resnet18", net.state_dict(), 10, 3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x).logits, net(x), atol=1e-5)
    assert pretrained_stats("timm:resnet18")[0] == (0.485, 0.456, 0.406)
    with pytest.raises(ValueError, match="unknown timm model"):
        build_model("timm:no_such_net", 10, 1)


def test_renormalize_feeds_the_model_its_own_normalisation():
    seen = []

    class Probe(torch.nn.Module):
        embedding_dim = 1

        def forward(self, x):
            seen.append(x)
            return x

    raw = torch.rand(2, 1, 4, 4)
    wrapped = Renormalize(Probe(), (0.3,), (0.4,), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), channels=1)
    wrapped((raw - 0.3) / 0.4)
    mean, std = sum((0.485, 0.456, 0.406)) / 3, sum((0.229, 0.224, 0.225)) / 3
    assert torch.allclose(seen[0], (raw - mean) / std, atol=1e-6)


def _timm_with_a_stray_key():
    import timm

    state = timm.create_model("resnet18", pretrained=False, num_classes=10).state_dict()
    del state["fc.bias"]
    return {**state, "head.weight": torch.zeros(1)}, "timm:resnet18", ["missing keys (1): fc.bias", "unexpected keys (1): head.weight"]


def _torchvision_as_tiny_teacher():
    state = torchvision.models.resnet18(num_classes=10).state_dict()
    return state, "tiny_teacher", ["missing keys (14)", "unexpected keys (122): conv1.weight"]


@pytest.mark.parametrize("make", [_torchvision_as_tiny_teacher, _timm_with_a_stray_key], ids=["tv-as-tiny", "timm-keys"])
def test_state_dict_that_does_not_fit_exits_2_listing_keys(make, tmp_path, monkeypatch, capsys, isolated_cache):
    monkeypatch.chdir(tmp_path)
    state, arch, expected = make()
    torch.save(state, tmp_path / "teacher.pt")
    assert main(["--dry-run", *TINY, f"teacher.checkpoint={tmp_path / 'teacher.pt'}", f"model.teacher={arch}"]) == 2
    err = capsys.readouterr().err
    assert all(e in err for e in expected) and "model.teacher=" in err, err
    assert err.count("\n") == 1  # one message
    assert not (tmp_path / "runs").exists()


def _tv_state_dict(path):
    torch.save({"state_dict": torchvision.models.resnet18(num_classes=10).state_dict()}, path)
    return ["model.teacher=tv_resnet18", "teacher.normalize=pretrained"]


def _timm_state_dict(path):
    import timm

    net = timm.create_model("resnet18", pretrained=False, num_classes=10)
    torch.save({"model": net.state_dict(), "mean": [0.5], "std": [0.25]}, path)  # declares its own mean/std
    return ["model.teacher=timm:resnet18"]


def _torchscript(path):
    from orchestrator.export import LogitsOnly

    teacher = LogitsOnly(build_model("tiny_teacher", 10, 1)).eval()  # a classifier returning logits only
    torch.jit.save(torch.jit.trace(teacher, torch.zeros(2, 1, 8, 8)), str(path))
    return []


def _mlflow_uri(path):
    """A torchvision state_dict logged to MLflow as ``teacher/checkpoint.pt``: imported like a file."""
    import mlflow

    torch.save({"state_dict": torchvision.models.resnet18(num_classes=10).state_dict()}, path.parent / "checkpoint.pt")
    with mlflow.start_run(experiment_id=mlflow.create_experiment("users-teachers")) as run:
        mlflow.log_artifact(str(path.parent / "checkpoint.pt"), "teacher")
    return [f"teacher.checkpoint=runs:/{run.info.run_id}/teacher", "model.teacher=tv_resnet18"]


@pytest.mark.slow
@pytest.mark.parametrize("make", [_tv_state_dict, _timm_state_dict, _torchscript, _mlflow_uri],
                         ids=["torchvision-state-dict", "timm-state-dict", "torchscript", "mlflow-uri"])
def test_one_trial_sweep_with_a_users_teacher(make, ray_session, isolated_cache, tmp_path, sqlite_store, monkeypatch, capsys):
    import mlflow

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    path = tmp_path / "teacher.pt"
    extra = [f"teacher.checkpoint={path}", *make(path)]
    args = tiny_args(tmp_path, *extra, "sweep.baseline=false", "sweep.confirm.top_k=0", "train.epochs=1",
                     "export.formats=[onnx]", samples=1)  # the trial reads the teacher: no confirmation jobs
    assert main(args) == 0, capsys.readouterr().err
    assert "export onnx:" in capsys.readouterr().out
    (parent,) = runs_by_kind(uri)["sweep"]
    assert parent.info.status == "FINISHED" and "teacher/test_acc1" in parent.data.metrics
    (version,) = MlflowClient(uri).search_model_versions("name='distill-student'")
    assert float(version.tags["export.onnx.latency_ms_b1"]) > 0
    assert float(version.tags["export.onnx.max_abs_diff"]) <= float(version.tags["export.onnx.tolerance"])


@pytest.mark.parametrize("extra, key, allowed", [
    (["model.teacher=tv_resnet18", "teacher.weights=IMAGENET1K_V9"], "teacher.weights", "IMAGENET1K_V1"),
    (["teacher.weights=DEFAULT"], "teacher.weights", "'tiny_teacher' is not a tv_<name> or timm:<name> model"),
    (["model.teacher=tv_resnet18", "teacher.weights=DEFAULT", "teacher.checkpoint=t.pt"], "teacher.weights",
     "null when teacher.checkpoint is given"),
    (["model.student=timm:resnet18", "model.student_weights=no_such_tag"], "model.student_weights", "a1_in1k"),
], ids=["unknown-tv-name", "registry-model", "with-checkpoint", "unknown-timm-tag"])
def test_weights_that_cannot_apply_exit_2_naming_the_key(extra, key, allowed, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--dry-run", *TINY, *extra]) == 2
    err = capsys.readouterr().err
    assert f"config key '{key}'" in err and allowed in err, err


def _offline_torchvision(monkeypatch, tmp_path):
    from urllib.error import URLError

    def no_network(url, *args, **kwargs):
        calls.append(url)
        raise URLError("[Errno -3] Temporary failure in name resolution")

    calls: list[str] = []
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return ["model.teacher=tv_resnet18", "teacher.weights=DEFAULT"], tmp_path / "hub" / "checkpoints", calls


def _offline_timm(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return ["model.student=timm:resnet18", "model.student_weights=pretrained"], tmp_path / "hub", None


@pytest.mark.parametrize("offline", [_offline_torchvision, _offline_timm], ids=["torchvision", "timm"])
def test_weights_not_cached_offline_exit_2_with_one_message(offline, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    extra, cache, calls = offline(monkeypatch, tmp_path)
    assert main(["--dry-run", *TINY, *extra]) == 2
    err = capsys.readouterr().err
    assert "could not be downloaded" in err and str(cache) in err, err
    assert "teacher.checkpoint=" in err and "TORCH_HOME" in err and "HF_HOME" in err, err
    assert err.count("\n") == 1  # one message
    assert calls is None or calls  # torchvision really tried its download


def test_cached_torchvision_weights_load_with_a_fresh_head_and_their_stats(tmp_path, monkeypatch):
    from orchestrator.models.pretrained import build_with_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    published = torchvision.models.resnet18().state_dict()  # stands in for the file in the cache
    cached = tmp_path / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    torch.save(published, cached)
    model = build_with_weights("tv_resnet18", 10, 1, "DEFAULT")
    assert torch.equal(model.state_dict()["body.layer4.1.conv2.weight"], published["layer4.1.conv2.weight"])
    assert torch.allclose(model.state_dict()["body.conv1.weight"], published["conv1.weight"].sum(1, keepdim=True))
    assert model.fc.out_features == 10
    assert pretrained_stats("tv_resnet18", "IMAGENET1K_V1") == (tuple(weights.transforms().mean), tuple(weights.transforms().std))


def test_pipeline_imports_a_given_plain_state_dict_like_the_sweep(tmp_path, sqlite_store, isolated_cache):
    from mlflow.tracking import MlflowClient as Client

    from orchestrator.data import build_data
    from orchestrator.teacher.checkpoint import TeacherCheckpointError, load_model_checkpoint
    from orchestrator.config.schema import load_pipeline_config
    from pipelines.teachers import ensure_teachers

    state = build_model("tiny_teacher", 10, 1).state_dict()
    torch.save({"model": state}, tmp_path / "users.pt")
    given = f"checkpoint: {tmp_path / 'users.pt'}"
    client = Client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    pcfg = load_pipeline_config(None, ["data.dataset=digits", f"pipeline.teachers=[{{{given}, arch: tiny_teacher}}]"])
    data = build_data(pcfg.data, pcfg.seed)
    (entry,) = ensure_teachers(pcfg, "", client, "0", data=data)
    assert entry["source"] != str(tmp_path / "users.pt")  # imported into this tool's format
    model = load_model_checkpoint(entry["source"], data.num_classes, data.in_channels)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    with pytest.raises(TeacherCheckpointError, match=r"pipeline.teachers.0.arch="):
        ensure_teachers(load_pipeline_config(None, ["data.dataset=digits", f"pipeline.teachers=[{{{given}}}]"]), "",
                        client, "0", data=data)
