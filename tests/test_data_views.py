"""The augmentation stream: each view a pure function of (seed, epoch, index) (orchestrator/data/views.py)."""

from __future__ import annotations

import torch

from orchestrator.config.schema import DataConfig
from orchestrator.data import build_data, make_loader, set_epoch
from orchestrator.data.loaders import SeededSampler, ViewKeys
from orchestrator.data.transforms import CropFlip


def digits(augment: bool):
    return build_data(DataConfig(dataset="digits", augment=augment), 0)


def test_view_params_are_a_function_of_the_key_alone():
    aug = CropFlip(28, 2, flip=True)
    idx = torch.arange(1000)
    top, left, flip = aug.view_params(3, 1, idx.numpy())
    # any subset, in any order, in any batch: the same parameters per index
    pick = torch.tensor([917, 4, 4, 500, 0])
    t2, l2, f2 = aug.view_params(3, 1, pick.numpy())
    assert torch.equal(t2, top[pick]) and torch.equal(l2, left[pick]) and torch.equal(f2, flip[pick])
    # broadcast keys, as the loader gives them
    t3, _, _ = aug.view_params(torch.full((5,), 3).numpy(), torch.full((5,), 1).numpy(), pick.numpy())
    assert torch.equal(t3, t2)
    # another seed or epoch: other views
    assert not torch.equal(aug.view_params(4, 1, idx.numpy())[0], top)
    assert not torch.equal(aug.view_params(3, 2, idx.numpy())[0], top)
    assert not torch.equal(left, top)  # the parameters are independent streams


def test_view_params_follow_the_random_crop_flip_distribution():
    aug = CropFlip(32, 4, flip=True)
    n, span = 45_000, 9
    top, left, flip = aug.view_params(0, 0, torch.arange(n).numpy())
    for values in (top, left):
        assert values.min() == 0 and values.max() == span - 1
        counts = torch.bincount(values, minlength=span).float()
        chi2 = float(((counts - n / span) ** 2 / (n / span)).sum())
        assert chi2 < 30, chi2  # 8 degrees of freedom: P(chi2 > 30) < 0.001
    assert abs(float(flip.float().mean()) - 0.5) < 0.01
    # the pair (top, left) is not correlated either
    assert abs(float(torch.corrcoef(torch.stack([top.float(), left.float()]))[0, 1])) < 0.02
    assert not CropFlip(8, 1, flip=False).view_params(0, 0, torch.arange(50).numpy())[2].any()


def test_augmented_loader_gives_the_keyed_views():
    b = digits(augment=True)
    loader = make_loader(b.train, 64, shuffle=True, seed=7)
    assert isinstance(loader.sampler, ViewKeys)
    for epoch in (0, 2):
        set_epoch(loader, epoch)
        images, labels, indices = next(iter(loader))
        assert torch.equal(images, b.train.view_images(7, epoch, indices))
        assert torch.equal(labels, b.train_labels[indices])
    # batch size, worker processes and the torch RNG do not change a sample's view
    torch.manual_seed(99)
    other = make_loader(b.train, 200, shuffle=True, seed=7, num_workers=1)
    set_epoch(other, 2)
    images, _, indices = next(iter(other))
    assert torch.equal(images, b.train.view_images(7, 2, indices))
    # views differ from epoch to epoch and from the un-augmented image
    i = torch.arange(40)
    assert not torch.equal(b.train.view_images(7, 0, i), b.train.view_images(7, 1, i))
    assert not torch.equal(b.train.view_images(7, 0, i), b.train_eval.__getitems__(i.tolist()).images)


def test_unaugmented_loader_is_unchanged():
    b = digits(augment=False)
    loader = make_loader(b.train, 64, shuffle=True, seed=7)
    assert isinstance(loader.sampler, SeededSampler)
    images, _, indices = next(iter(loader))
    assert torch.equal(images, b.train_eval.__getitems__(indices.tolist()).images)
