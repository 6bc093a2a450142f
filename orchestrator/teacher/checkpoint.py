"""Teacher checkpoints (file path, TorchScript or MLflow model URI): imported, checked and loaded frozen.

This tool's checkpoint file is a dict ``{"arch", "num_classes", "in_channels",
"dataset", "image_size", "resize", "state_dict", "metrics"}`` (plus ``"normalize"``
for an imported teacher with its own input normalisation; files written before
``image_size`` existed lack it and ``resize``) written atomically and read with
``weights_only=True``. ``teacher.checkpoint`` also accepts what users have:

- a plain ``state_dict`` (or a dict holding one under ``state_dict``, ``model``,
  ``model_state_dict`` or ``net``) of ``model.teacher`` (a registry name,
  ``tv_<name>`` or ``timm:<name>``): imported once into this tool's format
  (:func:`import_teacher`, cached by content);
- a TorchScript file, loaded with ``torch.jit.load``: it is code, so give only
  files you trust;
- an MLflow URI (``runs:/<id>/teacher``, ``models:/<name>/<version>``, ...) of an artifact folder holding
  ``checkpoint.pt`` (as :func:`orchestrator.infra.tracking.log_checkpoint` logs teachers), or of a file: either
  of the two tensor-only formats above, downloaded and read like a path. An ``mlflow.pytorch`` model (a
  pickled module, which could run code when loaded) is refused with how to re-log it.

Modules that return logits only get them as their embedding too (see
:mod:`orchestrator.models.wrapped`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from orchestrator.infra.atomic_files import atomic_torch_save
from orchestrator.infra.cache_dir import default_cache_dir
from orchestrator.config.schema import Config, normalize_stats
from orchestrator.data import DataBundle
from orchestrator.models import ModelOutput
from orchestrator.models.base import freeze
from orchestrator.models.pretrained import pretrained_stats
from orchestrator.models.weights import load_weights
from orchestrator.models.wrapped import OutputAdapter, Renormalize
from orchestrator.infra.safe_load import CheckpointFileError, load_tensors

URI_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/", "s3://", "gs://", "file://")
STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "net")  # where a dict may hold a state_dict


class TeacherCheckpointError(ValueError):
    """A teacher checkpoint is missing or does not fit the data/model configuration."""


def save_model_checkpoint(path: Path, model: nn.Module, arch: str, data: DataBundle, metrics: dict) -> None:
    atomic_torch_save(
        {
            "arch": arch,
            "num_classes": data.num_classes,
            "in_channels": data.in_channels,
            "dataset": data.name,
            "image_size": data.image_size,
            "resize": data.resize,
            "state_dict": model.state_dict(),
            "metrics": dict(metrics),
        },
        path,
    )


def is_torchscript(path: str | Path) -> bool:
    """A TorchScript archive (a zip with a ``code/`` folder), as written by ``torch.jit.save``."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def _read(path: Path, shown: str | None = None) -> object:
    """The tensors in ``path``; messages name it ``shown`` if given (e.g. the URI it was downloaded from)."""
    name = shown or path
    if not path.is_file():
        raise TeacherCheckpointError(f"teacher checkpoint '{name}' does not exist; give teacher.checkpoint=<file or MLflow URI>")
    try:
        return load_tensors(path, "teacher checkpoint")
    except CheckpointFileError as exc:
        raise TeacherCheckpointError(str(exc).replace(str(path), str(name))) from exc
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        raise TeacherCheckpointError(
            f"teacher checkpoint '{name}' cannot be read as tensors only (weights_only) ({exc}); give this tool's "
            "checkpoint, a state_dict, a TorchScript file or an MLflow URI of a checkpoint"
        ) from exc


def plain_state_dict(obj: object) -> dict[str, torch.Tensor] | None:
    """The state_dict in ``obj`` (itself, or under a common key; DDP's ``module.`` prefix dropped), or None."""
    if isinstance(obj, dict) and not ("arch" in obj and "state_dict" in obj):
        inner = next((obj[k] for k in STATE_DICT_KEYS if isinstance(obj.get(k), dict)), obj)
        if inner and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in inner.items()):
            return {k.removeprefix("module."): v for k, v in inner.items()}
    return None


def load_model_checkpoint(path: str | Path, num_classes: int, in_channels: int, shown: str | None = None,
                          image_size: int | None = None) -> nn.Module:
    """Rebuild a model from this tool's checkpoint file and check it fits ``num_classes``/``in_channels`` (and
    ``image_size``, when given and the file records its own; ``shown``: how messages name the file, e.g. the
    URI it came from)."""
    ckpt = _read(Path(path), shown)
    path = shown or path
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "arch" not in ckpt:
        hint = "import it with model.teacher=<its architecture>" if plain_state_dict(ckpt) else "write it with this tool"
        raise TeacherCheckpointError(f"teacher checkpoint '{path}' lacks 'arch'/'state_dict'; {hint}")
    if ckpt["num_classes"] != num_classes or ckpt["in_channels"] != in_channels:
        raise TeacherCheckpointError(
            f"teacher checkpoint '{path}' was trained for {ckpt['num_classes']} classes and {ckpt['in_channels']} "
            f"input channels (dataset {ckpt.get('dataset')}); this run's data has {num_classes} classes and "
            f"{in_channels} channels. Use a teacher trained on this dataset, or drop teacher.checkpoint to train one."
        )
    trained_size = ckpt.get("image_size")
    if image_size is not None and trained_size is not None and trained_size != image_size:
        raise TeacherCheckpointError(
            f"teacher checkpoint '{path}' was trained on {trained_size}x{trained_size} images; this run's data is "
            f"{image_size}x{image_size}. Set data.image_size={trained_size}, or use a teacher trained at {image_size}."
        )
    try:
        model = load_weights(ckpt["arch"], ckpt["state_dict"], num_classes, in_channels)
    except ValueError as exc:
        raise TeacherCheckpointError(f"teacher checkpoint '{path}': {exc}") from exc
    norm = ckpt.get("normalize")
    return Renormalize(model, **norm, channels=in_channels) if norm else model


def load_teacher(source: str, num_classes: int, in_channels: int, image_size: int = 28) -> nn.Module:
    """A frozen teacher from this tool's checkpoint (a path or an MLflow URI) or a TorchScript file."""
    if source.startswith(URI_SCHEMES):
        with tempfile.TemporaryDirectory() as tmp:
            return freeze(load_model_checkpoint(uri_checkpoint(source, tmp), num_classes, in_channels, shown=source,
                                                image_size=image_size))
    if not (Path(source).is_file() and is_torchscript(source)):
        return freeze(load_model_checkpoint(source, num_classes, in_channels, image_size=image_size))
    model = torch.jit.load(source, map_location="cpu")  # code the user trusts (see the module doc)
    probe = torch.zeros(1, in_channels, image_size, image_size)
    try:
        with torch.no_grad():
            wrapped = model if isinstance(model.eval()(probe), ModelOutput) else OutputAdapter(model, probe)
    except Exception as exc:  # noqa: BLE001
        raise TeacherCheckpointError(
            f"teacher '{source}' does not accept {in_channels}x{image_size}x{image_size} images, or returns neither "
            f"logits (B, K) nor (features, embedding, logits): {exc}"
        ) from exc
    _check_outputs(wrapped, source, num_classes, in_channels, image_size)
    return freeze(wrapped)


def uri_checkpoint(source: str, folder: str | Path) -> Path:
    """The tensor-only checkpoint file the MLflow URI ``source`` names, downloaded into ``folder``: the
    artifact itself if it is a file, else ``<artifact>/checkpoint.pt``. An ``mlflow.pytorch`` model folder
    (``MLmodel`` and a pickled module) is refused without reading it."""
    import mlflow.artifacts

    from orchestrator.infra.tracking import CHECKPOINT_ARTIFACT

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a file of a few MB: no bar
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(folder)))
    except Exception as exc:  # noqa: BLE001 - every failure means the same to the user
        raise TeacherCheckpointError(f"cannot download teacher from MLflow URI '{source}': {exc}") from exc
    if local.is_file():
        return local
    if (local / CHECKPOINT_ARTIFACT).is_file():
        return local / CHECKPOINT_ARTIFACT
    if (local / "MLmodel").is_file():
        raise TeacherCheckpointError(
            f"teacher '{source}' is an MLflow model without {CHECKPOINT_ARTIFACT} (an mlflow.pytorch model is a "
            "pickled module, which could run code when loaded); refused. Re-log it as tensors: if you trust it, "
            "load it with mlflow.pytorch.load_model, torch.save its state_dict() to a file and give that file as "
            "teacher.checkpoint with model.teacher=<its architecture>, or log the file as the run's artifact "
            f"<name>/{CHECKPOINT_ARTIFACT} and use runs:/<run id>/<name>"
        )
    raise TeacherCheckpointError(f"teacher '{source}' holds no {CHECKPOINT_ARTIFACT}; log the teacher with this tool")


def _teacher_stats(normalize: str, arch: str, ckpt: dict) -> tuple | None:
    """The teacher's own (mean, std): explicit, its architecture's pretrained config, declared in the
    checkpoint dict (``mean``/``std``, with ``auto``), or None (the data's normalisation)."""
    explicit = normalize_stats(normalize)
    if explicit:
        return explicit
    if normalize == "pretrained":
        try:
            return pretrained_stats(arch)
        except ValueError as exc:
            raise TeacherCheckpointError(f"teacher.normalize=pretrained: {exc}") from exc
    if normalize == "auto" and "mean" in ckpt and "std" in ckpt:
        return tuple(ckpt["mean"]), tuple(ckpt["std"])
    return None


def _given_state_dict(source: str, arch: str | None, normalize: str, arch_key: str) -> tuple[dict, dict] | None:
    """(the file's contents, its state_dict) if the local file ``source`` is a plain state_dict of ``arch``;
    None for anything :func:`load_teacher` reads as it is (this tool's checkpoint, TorchScript, a missing file)."""
    if not Path(source).is_file() or is_torchscript(source):
        if normalize not in ("auto", "data"):
            raise TeacherCheckpointError(
                f"teacher.normalize={normalize} applies to state_dict teachers; '{source}' must normalise its inputs itself"
            )
        return None
    obj = _read(Path(source))
    state_dict = plain_state_dict(obj)
    if state_dict is None:
        return None
    if arch is None:
        raise TeacherCheckpointError(f"teacher checkpoint '{source}' is a plain state_dict; set {arch_key}=<the "
                                     "architecture it was saved from>")
    return obj, state_dict


def _imported_checkpoint(source: str, obj: dict, state_dict: dict, arch: str, data: DataBundle, normalize: str,
                         arch_key: str) -> tuple[dict, nn.Module]:
    """(this tool's checkpoint dict, the model) of the plain state_dict ``state_dict`` of ``arch`` (strict load;
    mismatched keys are one error listing the first few), with the teacher's own normalisation if it has one."""
    stats = _teacher_stats(normalize, arch, obj)
    try:
        model = load_weights(arch, state_dict, data.num_classes, data.in_channels)
    except ValueError as exc:
        raise TeacherCheckpointError(
            f"teacher checkpoint '{source}' (a plain state_dict): {exc}. Set {arch_key}=<the architecture it was "
            "saved from>: a registry name, tv_<torchvision name> or timm:<timm name>"
        ) from exc
    ckpt = {"arch": arch, "num_classes": data.num_classes, "in_channels": data.in_channels, "dataset": data.name,
            "state_dict": model.state_dict(), "metrics": {}, "source": str(source)}
    if stats:
        ckpt["normalize"] = {"data_mean": data.mean, "data_std": data.std, "mean": stats[0], "std": stats[1]}
    return ckpt, model


def import_teacher(
    source: str, arch: str | None, data: DataBundle, normalize: str = "auto", arch_key: str = "model.teacher"
) -> str:
    """``source`` as a checkpoint :func:`load_teacher` reads: a plain state_dict of ``arch`` is loaded
    (strict; mismatched keys are one error listing the first few), wrapped with its own normalisation
    and saved in this tool's format under ``<cache>/teachers/imported`` (keyed by content); anything
    else is returned as it is. A state_dict behind an MLflow URI is imported the same way."""
    if source.startswith(URI_SCHEMES):
        with tempfile.TemporaryDirectory() as tmp:
            local = str(uri_checkpoint(source, tmp))
            try:
                imported = import_teacher(local, arch, data, normalize, arch_key)
            except TeacherCheckpointError as exc:
                raise TeacherCheckpointError(str(exc).replace(local, source)) from exc
        return source if imported == local else imported
    given = _given_state_dict(source, arch, normalize, arch_key)
    if given is None:
        return source
    digest = hashlib.sha256(Path(source).read_bytes())
    digest.update(json.dumps([arch, normalize, data.num_classes, data.in_channels, data.mean, data.std]).encode())
    path = default_cache_dir() / "teachers" / "imported" / f"{Path(source).stem}-{digest.hexdigest()[:12]}.pt"
    if path.is_file():
        return str(path)
    ckpt, _ = _imported_checkpoint(source, *given, arch, data, normalize, arch_key)
    atomic_torch_save(ckpt, path)
    return str(path)


def checked_teacher(
    source: str, arch: str | None, data: DataBundle, normalize: str = "auto", arch_key: str = "model.teacher"
) -> nn.Module:
    """The frozen teacher ``source`` gives, refused for the same reasons as :func:`import_teacher` then
    :func:`load_teacher` refuse it, but built in memory: nothing is written (no imported copy in the cache).
    What a dry run checks a given teacher with."""
    if source.startswith(URI_SCHEMES):
        with tempfile.TemporaryDirectory() as tmp:
            local = str(uri_checkpoint(source, tmp))
            try:
                return checked_teacher(local, arch, data, normalize, arch_key)
            except TeacherCheckpointError as exc:
                raise TeacherCheckpointError(str(exc).replace(local, source)) from exc
    given = _given_state_dict(source, arch, normalize, arch_key)
    if given is None:
        return load_teacher(source, data.num_classes, data.in_channels, data.image_size)
    ckpt, model = _imported_checkpoint(source, *given, arch, data, normalize, arch_key)
    norm = ckpt.get("normalize")
    return freeze(Renormalize(model, **norm, channels=data.in_channels) if norm else model)


def resolve_teacher(cfg: Config, data: DataBundle) -> str:
    """``teacher.checkpoint`` imported if needed and checked against the data; the source to distil from."""
    source = import_teacher(cfg.teacher.checkpoint, cfg.model.teacher, data, cfg.teacher.normalize)
    load_teacher(source, data.num_classes, data.in_channels, data.image_size)
    return source


def _check_outputs(model: nn.Module, source: str, num_classes: int, in_channels: int, image_size: int) -> None:
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, in_channels, image_size, image_size))
        logits = out.logits
    except Exception as exc:  # noqa: BLE001
        raise TeacherCheckpointError(
            f"teacher '{source}' does not accept {in_channels}x{image_size}x{image_size} images or does not return "
            f"ModelOutput: {exc}"
        ) from exc
    if logits.shape[1] != num_classes:
        raise TeacherCheckpointError(f"teacher '{source}' predicts {logits.shape[1]} classes; the data has {num_classes}")
