"""python -m orchestrator.predict: Top-k classes of image files from an exported ONNX student, from the file alone.

Uses only onnxruntime, numpy, Pillow and the file's own metadata (written by
``python -m orchestrator.export``: input size, channel order, mean/std,
whether the graph normalises, class names). It imports nothing else of this
package, so it also runs as a plain script next to the model
(``python predict.py student.onnx photos/``) where the package is not installed.

Each image is converted to the file's channel order ("L" greyscale or "RGB"),
brought to its input size S x S as its ``resize`` says (the training run's
``data.resize``; bilinear): ``resize_then_center_crop`` (shorter side to S, then
the central S x S), ``resize`` (squashed to S x S) or ``center_crop`` (the
central S x S, zero-padded where smaller); a file without ``resize`` is
squashed. This is the image-folder evaluation transform pixel for pixel. Then it
is scaled to [0, 1] and, when the graph does not normalise itself, normalised
with the file's mean and std.
Prints one line per image: the path, then the top-k ``class probability``
pairs (softmax of the logits), tab-separated.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
REQUIRED = ("input_size", "channel_order", "class_names", "preprocessing_in_graph", "mean", "std")
RESIZE_POLICIES = ("resize_then_center_crop", "resize", "center_crop")  # orchestrator.data.transforms.RESIZE_POLICIES


class PredictError(ValueError):
    """A model or image that cannot be used; the message says which and why."""


def open_model(path: Path) -> tuple[onnxruntime.InferenceSession, dict]:
    """(session, metadata with JSON values decoded) of an ONNX file written by the export."""
    if not path.is_file():
        raise PredictError(f"no such model file: '{path}'")
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own errors for a file that is not ONNX
        raise PredictError(f"'{path}' is not an ONNX model onnxruntime can load ({exc})") from exc
    raw = session.get_modelmeta().custom_metadata_map
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise PredictError(f"'{path}' lacks the metadata {missing}; export it with python -m orchestrator.export")
    resize = raw.get("resize", "resize")
    if resize not in RESIZE_POLICIES:
        raise PredictError(f"'{path}' names the resize policy {resize!r}; this predict knows {list(RESIZE_POLICIES)}")
    return session, {"resize": resize, **{k: (raw[k] if k == "channel_order" else json.loads(raw[k])) for k in REQUIRED}}


def fit_image(image: Image.Image, size: int, resize: str) -> Image.Image:
    """``image`` brought to ``size`` x ``size`` as ``resize`` says, with the same arithmetic as torchvision's
    v2 ``Resize``/``CenterCrop`` on PIL images (what training and evaluation used)."""
    width, height = image.size
    if resize == "resize":
        return image if (width, height) == (size, size) else image.resize((size, size), Image.Resampling.BILINEAR)
    if resize == "resize_then_center_crop":
        short, long = min(width, height), max(width, height)
        new_long = int(size * long / short)
        new = (size, new_long) if width <= height else (new_long, size)
        if new != (width, height):
            image = image.resize(new, Image.Resampling.BILINEAR)
        width, height = image.size
    if width < size or height < size:  # zero-pad the short sides (left/top get the smaller half)
        padded = Image.new(image.mode, (max(width, size), max(height, size)))
        padded.paste(image, (max(size - width, 0) // 2, max(size - height, 0) // 2))
        image, (width, height) = padded, padded.size
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def image_files(inputs: list[str]) -> list[Path]:
    """The files given, and the image files (by suffix, sorted) in the folders given."""
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            files.append(item)
        else:
            raise PredictError(f"no such image file or folder: '{item}'")
    if not files:
        raise PredictError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {inputs}")
    return files


def load_image(path: Path, meta: dict) -> np.ndarray:
    """(C, H, W) float32: the image as the model takes it (see the module doc)."""
    channels, height, width = meta["input_size"]
    try:
        with Image.open(path) as image:
            image = fit_image(image.convert(meta["channel_order"]), height, meta["resize"])
            x = np.asarray(image, dtype=np.float32).reshape(height, width, channels).transpose(2, 0, 1) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise PredictError(f"'{path}' is not an image Pillow can read ({exc})") from exc
    if not meta["preprocessing_in_graph"]:
        mean, std = (np.asarray(meta[k], dtype=np.float32).reshape(-1, 1, 1) for k in ("mean", "std"))
        x = (x - mean) / std
    return x.astype(np.float32)


def probabilities(session: onnxruntime.InferenceSession, meta: dict, files: list[Path], batch: int = 64) -> np.ndarray:
    """(N, K) softmax probabilities of ``files``, ``batch`` images per run."""
    out = []
    for start in range(0, len(files), batch):
        x = np.stack([load_image(f, meta) for f in files[start:start + batch]])
        logits = session.run(None, {session.get_inputs()[0].name: x})[0]
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        out.append(e / e.sum(axis=1, keepdims=True))
    return np.concatenate(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.predict",
                                     description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    parser.add_argument("model", help="an ONNX file written by python -m orchestrator.export")
    parser.add_argument("images", nargs="+", help="image files and/or folders of them")
    parser.add_argument("--top-k", type=int, default=3, help="classes shown per image (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        print(f"error: --top-k must be >= 1, got {args.top_k}", file=sys.stderr)
        return 2
    try:
        session, meta = open_model(Path(args.model))
        files = image_files(args.images)
        probs = probabilities(session, meta, files)
    except PredictError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    names = meta["class_names"]
    for path, p in zip(files, probs):
        top = np.argsort(-p, kind="stable")[: args.top_k]
        print("\t".join([str(path), *(f"{names[k]} {p[k]:.4f}" for k in top)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
