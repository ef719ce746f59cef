"""One order per (seed, epoch) on any number of processes, and FFCV crops and flips that are a
function of (seed, epoch, sample): `resnext_lit.data.order`, `resnext_lit.data.seeded_crop`.

    .venv/bin/python -m pytest -q tests/test_seeded_data.py

The loaders are real: FFCV `_TrainLoader`s over the demo's digit betons (written once here) and
torch DataLoaders over the digits, with the rank and world size a DDP run would give them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from resnext_lit.data import ffcv as ffcv_module
from resnext_lit.data import order as order_module
from resnext_lit.data.digits import DigitsDataModule
from resnext_lit.data.ffcv import FFCVDataModule
from resnext_lit.data.order import GlobalOrderSampler, epoch_permutation, rank_order
from resnext_lit.data.seeded_crop import FLIP_DRAW, sample_stream, seeded_crop, uniform
from resnext_lit.errors import UserError

PER_STEP = 32  # the global batch of these tests


@pytest.fixture(scope="module")
def digit_betons(tmp_path_factory) -> tuple[str, str]:
    from resnext_lit.data.beton import write_beton
    from resnext_lit.data.digits import export

    root = tmp_path_factory.mktemp("digits")
    export(str(root))
    return tuple(str(write_beton(root / split, root / f"{split}.beton", workers=2,
                                 progress=False).beton) for split in ("train", "val"))


def ffcv_epoch(betons, monkeypatch, epoch=0, seed=0, world=1, rank=0, skip=0, res=32,
               **settings) -> tuple[torch.Tensor, torch.Tensor]:
    """All (images, labels) of one training epoch of rank `rank` of `world`, `skip` steps in."""
    monkeypatch.setattr(ffcv_module, "rank_and_world", lambda trainer: (rank, world))
    settings = {"num_workers": 2, **settings}
    data = FFCVDataModule(*betons, batch_size=PER_STEP // world, res=res, seed=seed, **settings)
    loader = data.train_dataloader()
    loader.next_epoch = epoch  # no Trainer here: the loader's own epoch counter
    loader.skip_batches(skip)
    batches = [(x.clone(), y.clone()) for x, y in loader]
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


# -- the order ---------------------------------------------------------------------------------
def test_each_step_holds_the_same_images_on_1_2_and_4_processes():
    n, per_step = 1000, 32
    one = rank_order(7, 3, n, per_step, 0, 1).reshape(-1, per_step)
    for world in (2, 4):
        ranks = [rank_order(7, 3, n, per_step // world, r, world).reshape(-1, per_step // world)
                 for r in range(world)]
        assert np.array_equal(np.concatenate(ranks, axis=1), one)  # step by step, in order
    assert len(one) == n // per_step and len(set(one.ravel())) == one.size  # each image once
    assert np.array_equal(one.ravel(), epoch_permutation(7, 3, n)[:one.size])
    assert not np.array_equal(one, rank_order(7, 4, n, per_step, 0, 1).reshape(-1, per_step))
    assert not np.array_equal(one, rank_order(8, 3, n, per_step, 0, 1).reshape(-1, per_step))


def test_a_set_smaller_than_one_global_batch_is_one_line():
    with pytest.raises(UserError, match="10 training images hold no full global batch of 16"):
        rank_order(0, 0, 10, 8, 0, 2)


def test_torch_loaders_split_each_step_of_the_global_order_over_the_ranks(monkeypatch):
    data = DigitsDataModule(batch_size=PER_STEP, image_size=8, padding=0)
    data.setup("fit")

    def epoch_indices(world: int, rank: int) -> list[int]:
        sampler = GlobalOrderSampler(data.train_set, world, rank, PER_STEP // world, seed=5)
        sampler.set_epoch(2)
        return list(sampler)

    one = np.array(epoch_indices(1, 0)).reshape(-1, PER_STEP)
    two = [np.array(epoch_indices(2, r)).reshape(-1, PER_STEP // 2) for r in range(2)]
    assert np.array_equal(np.concatenate(two, axis=1), one)
    monkeypatch.setenv("PL_GLOBAL_SEED", "5")  # the run's seed, as seed_everything sets it
    loader = data.train_dataloader()
    assert isinstance(loader.sampler, GlobalOrderSampler) and loader.sampler.seed == 5
    assert len(loader) == len(data.train_set) // PER_STEP and order_module.run_seed() == 5


# -- FFCV's crops and flips --------------------------------------------------------------------
@pytest.mark.slow  # FFCV compiles each loader (seconds)
def test_ffcv_batches_are_the_same_whatever_threads_batches_ahead_and_start(digit_betons,
                                                                            monkeypatch):
    images, labels = ffcv_epoch(digit_betons, monkeypatch, epoch=1, num_workers=1,
                                batches_ahead=1)
    again, again_labels = ffcv_epoch(digit_betons, monkeypatch, epoch=1, num_workers=2,
                                     batches_ahead=3)
    assert torch.equal(images, again) and torch.equal(labels, again_labels)
    resumed, _ = ffcv_epoch(digit_betons, monkeypatch, epoch=1, num_workers=2, skip=5)
    assert torch.equal(resumed, images[5 * PER_STEP:])  # a resume 5 steps in: the same rest
    other_seed, _ = ffcv_epoch(digit_betons, monkeypatch, epoch=1, seed=1)
    next_epoch, _ = ffcv_epoch(digit_betons, monkeypatch, epoch=2)
    assert not torch.equal(images, other_seed) and not torch.equal(images, next_epoch)


@pytest.mark.slow  # FFCV compiles each loader (seconds)
def test_ffcv_ranks_decode_the_images_one_process_decodes(digit_betons, monkeypatch):
    one, one_labels = ffcv_epoch(digit_betons, monkeypatch, epoch=3)
    steps = len(one) // PER_STEP
    parts = [ffcv_epoch(digit_betons, monkeypatch, epoch=3, world=2, rank=r) for r in range(2)]
    two = torch.cat([x.reshape(steps, PER_STEP // 2, *x.shape[1:]) for x, _ in parts], dim=1)
    labels = torch.cat([y.reshape(steps, -1) for _, y in parts], dim=1)
    assert torch.equal(two.reshape(one.shape), one) and torch.equal(labels.ravel(), one_labels)


@pytest.mark.slow  # FFCV compiles each loader (seconds)
def test_ffcv_resolution_changes_the_size_not_the_draws(digit_betons, monkeypatch):
    """Progressive resizing: another resolution is another size of the same crops."""
    small, _ = ffcv_epoch(digit_betons, monkeypatch, epoch=0, res=32)
    large, _ = ffcv_epoch(digit_betons, monkeypatch, epoch=0, res=64)
    assert large.shape[-1] == 64 and small.shape[-1] == 32
    down = torch.nn.functional.interpolate(large.float(), size=32, mode="area")
    assert (down - small.float()).abs().mean() < 8  # same crop and flip, resampled


def test_seeded_crops_stay_inside_and_flip_half_the_images():
    scale, log_ratio = np.array([0.08, 1.0]), np.log(np.array([3 / 4, 4 / 3]))
    areas, flips = [], 0
    for height, width in ((375, 500), (500, 333), (40, 300), (17, 17)):
        for i in range(500):
            stream = np.uint64(sample_stream(np.uint64(12345), np.uint64(i)))
            top, left, h, w = seeded_crop(np.uint32(height), np.uint32(width), scale,
                                          log_ratio, stream)
            assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
            assert h >= 1 and w >= 1
            areas.append(h * w / (height * width))
            flips += uniform(stream, FLIP_DRAW) < 0.5
    assert 0.4 < flips / 2000 < 0.6
    assert min(areas) < 0.15 and max(areas) > 0.9  # the Inception range, 8%-100%
