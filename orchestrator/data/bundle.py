"""What a training run gets from the data side: :class:`DataBundle`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from orchestrator.data.transforms import DEFAULT_RESIZE


@dataclass
class DataBundle:
    """Everything a training run needs from the data side (see the package doc)."""

    train: Dataset
    train_eval: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: int
    train_labels: torch.Tensor  # (N,) the train split's labels; UNLABELLED (-1) where data.labeled_fraction hides them
    name: str
    classes: tuple[str, ...] = ()
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    resize: str = DEFAULT_RESIZE  # data.resize: how predict fits an image of another size (and imagefolder does)
