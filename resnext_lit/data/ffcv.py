"""`FFCVDataModule`: .beton files -> uint8 NCHW batches, fast, and exact under DDP.

    python -m resnext_lit fit --config configs/imagenet_paper.yaml \
        --config configs/data/imagenet_ffcv.yaml

    dm = FFCVDataModule("betons/train.beton", "betons/val.beton", batch_size=256, num_workers=8)
    dm.num_classes                      # from the writer's sidecar, checked against the file

Betons written elsewhere (ffcv-imagenet's `write_imagenet.py`: FFCV's writer with an `image`
RGBImageField and a `label` IntField, e.g. train_500_0.50_90.ffcv) load without a sidecar: the
classes are their labels 0..max (named by index, or by `classes`), read from FFCV's metadata
table, and one line on stderr says the file is not checked against a sidecar
(`python -m resnext_lit write-beton --adopt FILE` writes one; see `sidecar`).

Train: the Inception crop (8%-100% of the area, aspect 3/4-4/3, as the paper's Sec. 4 via
Szegedy et al.) at `res`, then a horizontal flip of half the images, decoded by FFCV's
`imdecode` and `resize_crop`; each image's crop and flip are a function of (seed, epoch, its
index) (`seeded_crop.SeededRandomResizedCrop`), so a seed fixes the pixels of every batch. Val:
the center square of side `val_crop_ratio` x the shorter side, resized to `val_res` (default
224/256 = `CROP_RATIO`: the paper's 224 crop of the image resized to 256; Table 5's 320 px test
is configs/eval/table5_320.yaml). Both hand out uint8 [N, 3, H, W] (a channels-last view) and
int64 [N]; the LightningModule normalises on the device. `batch_size` is per process (per GPU).

Epoch e trains one permutation of the training set drawn from (seed, e), step s its images
[s*B, (s+1)*B) with B the global batch, split over the ranks (`resnext_lit.data.order`): the
same images per step on any number of processes, so a mid-epoch checkpoint resumes exactly on
another. Validation gives each rank a contiguous unpadded slice (`distributed.rank_slice`), so
`val/top1_err` is the error of the whole split. Loaders are built in the dataloader hooks (the
process group exists by then), each with fresh op lists because FFCV keeps state in the ops it
is given. FFCV reuses its batch buffers a few batches after handing them out; Lightning 2.6
fetches the next batch of a sized loader only after the last hook that sees the current one
(`tests/test_ffcv_datamodule.py` records it), so one batch is in use at a time and FFCV's own
queue length is safe.

`ProgressiveResizing` (ffcv-imagenet's low-res-first training) is a callback:
    trainer: {callbacks: [{class_path: resnext_lit.data.ffcv.ProgressiveResizing,
                           init_args: {min_res: 160, max_res: 192, start_ramp: 65, end_ramp: 76}}]}
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

import numba
import numpy as np
from ffcv.fields.basics import IntDecoder
from ffcv.fields.rgb_image import CenterCropRGBImageDecoder
from ffcv.loader import Loader, OrderOption
from ffcv.loader.epoch_iterator import EpochIterator
from ffcv.pipeline.compiler import Compiler
from ffcv.transforms import Squeeze, ToTensor, ToTorchImage
from jsonargparse.typing import NonNegativeInt, PositiveInt
from lightning import Callback, LightningDataModule
from lightning.fabric.utilities.rank_zero import rank_zero_only

from ..errors import UserError
from . import CROP_RATIO, IMAGENET_MEAN, IMAGENET_STD, INCEPTION_RATIO, INCEPTION_SCALE, check_args
from .beton.sidecar import read_beton_info, read_unchecked_info, resolve_classes, sidecar_path
from .distributed import rank_and_world, rank_slice
from .order import rank_order, run_seed
from .seeded_crop import SeededRandomResizedCrop
from .workers import clip_workers, usable_cores

RES_STEP = 32  # progressive resizing moves in multiples of this (ffcv-imagenet)
ORDERS = {"random": OrderOption.RANDOM, "quasi_random": OrderOption.QUASI_RANDOM}


class _StoppableEpoch(EpochIterator):
    """FFCV's epoch iterator that can be ended before its last batch, and that hands the seeded
    decoder its epoch's key before the first batch.

    FFCV has no public hook for the iterator class, so this relies on EpochIterator's
    internals, checked against ffcv 1.0.2 (tests/test_internals_data.py): `run` takes the
    batches from `iter_ixes`, puts each in `output_queue` with a 0.5 s timeout, returning once
    `terminate_event` is set, and at the end puts the `None` sentinel with no timeout; `close`
    releases the epoch's memory; `__init__` allocates the epoch's buffers
    (`memory_allocations`, by the graph's node ids) and then starts the thread."""

    def start(self) -> None:
        for op in getattr(self.loader, "seeded_ops", ()):  # see `seeded_crop`
            (node,) = self.loader.graph.operation_to_node[op]
            op.fill_epoch_key(self.memory_allocations["operation"][node.id])
        super().start()

    def stop(self) -> None:
        """End an epoch its consumer left unfinished (`limit_train_batches`, a resume that
        remade the iterator, an evaluation loop that iterated twice): FFCV's producer would
        otherwise wait forever on its full queue, holding its buffers, and its end-of-epoch
        sentinel waits with no timeout at all. So: no batch after the one it is decoding, and
        the queue emptied until the producer has left (at most that one batch more)."""
        self.terminate_event.set()
        self.iter_ixes = iter(())  # the producer's next `next()` ends the epoch
        while self.is_alive():
            while not self.output_queue.empty():
                self.output_queue.get_nowait()  # room for its last put, sentinel or batch
            self.join(timeout=0.05)
        self.close()


class _LightningLoader(Loader):
    """FFCV's Loader whose epochs run on `_StoppableEpoch` (its __iter__, re-stated), one
    epoch at a time: a new epoch stops the previous one if it is still producing.

    `__iter__` re-states `ffcv.loader.Loader.__iter__` of ffcv 1.0.2 (no hook picks the
    iterator class); tests/test_internals_data.py fails when FFCV's changes."""

    _epoch: _StoppableEpoch | None = None
    _skip = 0  # batches at the start of the next epoch that are not read (a mid-epoch resume)

    def skip_batches(self, batches: int) -> None:
        """Start the next epoch `batches` batches in, without reading or decoding them: a run
        resumed mid-epoch (`resnext_lit.training.resume.ExactResume`) already trained on them.
        The epoch's order is FFCV's own, sliced, so the rest is what it would have been."""
        self._skip = batches

    def epoch_order(self) -> np.ndarray:
        """The indices of the next epoch's batches, in order (FFCV's own order here)."""
        return self.next_traversal_order()[:len(self) * self.batch_size]

    def __iter__(self):
        if self._epoch is not None:
            self._epoch.stop()
        Compiler.set_num_threads(self.num_workers)
        order = self.epoch_order()
        self.next_epoch += 1
        if self.code is None or self.recompile:
            self.generate_code()
        skip, self._skip = self._skip * self.batch_size, 0
        self._epoch = _StoppableEpoch(self, order[skip:])
        return self._epoch


class _TrainLoader(_LightningLoader):
    """An FFCV Loader that, at every epoch start, takes the epoch from the Trainer (the order
    and the augmentations are the epoch's, also after a resume) and the decode resolution from
    the DataModule (so `ProgressiveResizing` can change it). With the "random" order, epoch e
    is this rank's part of the epoch's global order (`resnext_lit.data.order`): the same
    images per step on any number of processes."""

    def __init__(self, *args, datamodule: FFCVDataModule, decoder: SeededRandomResizedCrop,
                 rank: int, world: int, seed: int, global_order: bool, **kwargs):
        self._datamodule, self._decoder = datamodule, decoder
        self.seeded_ops = (decoder,)
        self._rank, self._world, self._seed, self._global = rank, world, seed, global_order
        super().__init__(*args, **kwargs)

    def __len__(self) -> int:
        if not self._global:
            return super().__len__()
        return len(self.indices) // (self.batch_size * self._world)

    def epoch_order(self) -> np.ndarray:
        if not self._global:
            return super().epoch_order()
        return self.indices[rank_order(self._seed, self.next_epoch, len(self.indices),
                                       self.batch_size, self._rank, self._world)]

    def __iter__(self):
        trainer = self._datamodule.trainer
        if trainer is not None:
            self.next_epoch = trainer.current_epoch
        res = self._datamodule.train_res(self.next_epoch)
        # FFCV sizes the batch buffers from the decoder at every epoch start and its compiled
        # code is size-agnostic, so a new resolution needs no recompilation (ffcv-imagenet sets
        # `output_size` the same way; checked against ffcv 1.0.2 in test_internals_data.py).
        self._decoder.output_size = (res, res)
        self._decoder.epoch = self.next_epoch
        return super().__iter__()


class FFCVDataModule(LightningDataModule):
    """Train and val .beton files written by `python -m resnext_lit write-beton`.

    Args:
        train_path, val_path: the .beton files (any extension). With its `.json` sidecar a
            file is checked against it; without one it needs FFCV's image/label fields, and
            is only checked for its layout. `validate` and `test` need only `val_path`.
        batch_size: images per process per step (derived from the recipe's global batch by
            the CLI); val_batch_size defaults to it.
        res: train resolution (`image_size`); `ProgressiveResizing` overrides it per epoch.
        val_res: validation resolution (`val_image_size`): the center crop is resized to it.
        val_crop_ratio: side of the val center square / the image's shorter side, in (0, 1].
            224/256 (`CROP_RATIO`: fb.resnet.torch's Scale(256) + CenterCrop(224), ffcv-imagenet's
            DEFAULT_CROP_RATIO) is the 224 center crop of the image resized to 256 on its
            shorter side; 1.0 keeps the whole center square (our reading of the 320 px test of
            He et al. 2016, arXiv:1603.05027, that the paper's Table 5 follows).
        crop_scale: area range of the random crop (paper: 0.08-1).
        flip: random horizontal flip in training.
        num_workers: FFCV decoding threads per process, capped at the usable cores.
        order: "random" (the global order above), or "quasi_random" (FFCV's own order, which
            reads less from disk; needs os_cache=False and one process).
        os_cache: let the OS page cache hold the file (else FFCV's own process cache).
        batches_ahead: batches FFCV decodes in advance (its queue length, >= 1).
        seed: the order's and the augmentations' seed (None: the run's, `seed_everything`):
            epoch e's order and each image's crop and flip follow from (seed, e) alone.
        classes: class names (a list, a train ImageFolder, a sidecar, or a text file with one
            name first on each line, as ImageNet's LOC_synset_mapping.txt) for betons without a
            sidecar; default their label indices "0".."N-1", N = the largest label + 1 of
            either split. A sidecar's own list must agree with it.
    """

    mean, std = IMAGENET_MEAN, IMAGENET_STD  # linked into the model, which normalises

    def __init__(self, train_path: str | None = None, val_path: str | None = None,
                 batch_size: PositiveInt = 256,
                 val_batch_size: PositiveInt | None = None, res: PositiveInt = 224,
                 val_res: PositiveInt = 224, val_crop_ratio: float = CROP_RATIO,
                 crop_scale: tuple[float, float] = INCEPTION_SCALE,
                 flip: bool = True, num_workers: PositiveInt = 8,
                 order: Literal["random", "quasi_random"] = "random", os_cache: bool = True,
                 batches_ahead: PositiveInt = 3, seed: NonNegativeInt | None = None,
                 classes: list[str] | str | None = None):
        super().__init__()
        check_args(crop_scale, val_crop_ratio, res=res, val_res=val_res,
                            batch_size=batch_size, val_batch_size=val_batch_size,
                            batches_ahead=batches_ahead, num_workers=num_workers)
        if order not in ORDERS:
            raise UserError(f"data.order must be one of {', '.join(ORDERS)}, got {order!r}")
        if order == "quasi_random" and os_cache:
            raise UserError("data.order=quasi_random needs data.os_cache=false "
                            "(FFCV plans its reads over its own page cache)")
        if val_path is None:
            raise UserError("data.val_path is required (a .beton file; train_path too, to fit)")
        self.save_hyperparameters()
        # Without a train split (validate, test), the val split names the classes.
        train_info, val_info = _split_infos(train_path or val_path, val_path, classes)
        if val_info["classes"] != train_info["classes"]:
            raise UserError(f"{val_path} was written with other classes than {train_path} "
                            f"({len(val_info['classes'])} vs {len(train_info['classes'])}); "
                            "write val with --train or --classes pointing at the train split")
        self.num_classes: int = len(train_info["classes"])
        self.classes: list[str] = train_info["classes"]
        # What tables call the data: the writer's --dataset (`resnext_lit.facts.dataset_name`).
        self.dataset: str | None = train_info.get("dataset") or val_info.get("dataset")
        self.class_counts: list[int] = train_info["class_counts"]  # train images per class
        self.num_train = train_info["num_records"] if train_path else None
        self.num_val = val_info["num_records"]
        self.image_size: int = res
        self.val_image_size: int = val_res
        self.val_crop_ratio: float = val_crop_ratio
        self.batch_size: int = batch_size
        # FFCV hands num_workers to numba, which refuses more threads than it was started with.
        cores = min(usable_cores(), numba.config.NUMBA_NUM_THREADS)
        self.num_workers = clip_workers(num_workers, cores)
        self.res_schedule = None  # set by ProgressiveResizing: epoch -> resolution

    def train_res(self, epoch: int) -> int:
        return self.res_schedule(epoch) if self.res_schedule else self.hparams.res

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.train_path is None:
            raise UserError("fit needs data.train_path (a .beton file); validate and test need "
                            "only data.val_path")
        _, world = rank_and_world(self.trainer)
        if self.hparams.order == "quasi_random" and world > 1:
            raise UserError("data.order=quasi_random works on one process only (FFCV); "
                            "use data.order=random under DDP")

    def _common(self) -> dict:
        hp = self.hparams
        return dict(num_workers=self.num_workers, os_cache=hp.os_cache,
                    batches_ahead=hp.batches_ahead)

    @staticmethod
    def _label_ops() -> list:
        return [IntDecoder(), ToTensor(), Squeeze(1)]  # [N, 1] int64 -> [N]

    def train_dataloader(self) -> Loader:
        hp = self.hparams
        rank, world = rank_and_world(self.trainer)
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        res = self.train_res(epoch)
        seed = run_seed() if hp.seed is None else hp.seed
        decoder = SeededRandomResizedCrop((res, res), scale=tuple(hp.crop_scale),
                                          ratio=INCEPTION_RATIO, flip=hp.flip, seed=seed)
        # Numba ops before ToTensor; ToTorchImage is a free NHWC->NCHW view. Every rank reads
        # the whole file's index and takes its part of each step itself (`_TrainLoader`).
        return _TrainLoader(hp.train_path, batch_size=self.batch_size, order=ORDERS[hp.order],
                            seed=seed, drop_last=True,
                            pipelines={"image": [decoder, ToTensor(), ToTorchImage()],
                                       "label": self._label_ops()},
                            datamodule=self, decoder=decoder, rank=rank, world=world,
                            global_order=hp.order == "random", **self._common())

    def val_dataloader(self) -> Loader:
        hp = self.hparams
        rank, world = rank_and_world(self.trainer)
        share = rank_slice(self.num_val, rank, world)
        crop = CenterCropRGBImageDecoder((hp.val_res, hp.val_res), ratio=hp.val_crop_ratio)
        image_ops = [crop, ToTensor(), ToTorchImage()]
        # distributed=False plus this rank's indices: FFCV's distributed mode pads with duplicates.
        return _LightningLoader(hp.val_path, batch_size=hp.val_batch_size or self.batch_size,
                                order=OrderOption.SEQUENTIAL, drop_last=False,
                                indices=np.arange(share.start, share.stop, dtype=np.uint64),
                                pipelines={"image": image_ops, "label": self._label_ops()},
                                **self._common())

    test_dataloader = val_dataloader
    # The val split; FFCV's loader is no torch DataLoader, so the prediction writer numbers its
    # rows from the loader's `indices`, which the sequential order walks in turn.
    predict_dataloader = val_dataloader

    def sample_name(self, index: int) -> str:
        return f"{Path(self.hparams.val_path).name}[{index}]"


def _split_infos(train_path, val_path, classes) -> tuple[dict, dict]:
    """(train, val) info: from the sidecar where there is one, else from the file's labels,
    named by `classes`, else by a sidecar of the other split, else by index (the longer list:
    one split may lack the last classes). Prints the unchecked line once per file."""
    paths = (Path(train_path).expanduser(), Path(val_path).expanduser())
    checked = [read_beton_info(p) if sidecar_path(p).is_file() else None for p in paths]
    if classes is not None:
        names = resolve_classes(classes)
        for path, info in zip(paths, checked):
            if info is not None and info["classes"] != names:
                raise UserError(f"data.classes ({len(names)} names) differs from the classes "
                                f"in the sidecar of {path} ({len(info['classes'])})")
    else:
        names = next((info["classes"] for info in checked if info is not None), None)
    infos = [info or read_unchecked_info(p, names) for p, info in zip(paths, checked)]
    if names is None:
        count = max(len(info["classes"]) for info in infos)
        for info in infos:
            info["class_counts"] += [0] * (count - len(info["classes"]))
            info["classes"] = [str(i) for i in range(count)]
    for path in dict.fromkeys(p for p, info in zip(paths, checked) if info is None):
        _note_unchecked(path)
    return infos[0], infos[1]


@rank_zero_only  # every DDP process builds the DataModule: one line per file, not per GPU
def _note_unchecked(path: Path) -> None:
    print(f"note: {path} has no sidecar, so it is not checked against one; classes from its "
          f"labels (`python -m resnext_lit write-beton --adopt {path}` writes a sidecar)",
          file=sys.stderr)


# ffcv-imagenet's ResNet-50 ramps (rn50_configs/rn50_<epochs>_epochs.yaml): epochs -> (start, end).
FFCV_IMAGENET_RAMPS = {16: (11, 13), 24: (17, 20), 32: (23, 27), 40: (29, 34), 56: (41, 48),
                       88: (65, 76)}


class ProgressiveResizing(Callback):
    """Train at `min_res` up to epoch `start_ramp`, then grow linearly to `max_res` at epoch
    `end_ramp`, in multiples of 32 px (ffcv-imagenet; low resolution early is cheaper and costs
    little accuracy). Without `start_ramp`/`end_ramp`, the ramp is ffcv-imagenet's for
    `trainer.max_epochs` (`FFCV_IMAGENET_RAMPS`: 16, 24, 32, 40, 56 or 88 epochs). Needs
    `FFCVDataModule`; logs `train/res` every epoch."""

    def __init__(self, min_res: PositiveInt, max_res: PositiveInt,
                 start_ramp: NonNegativeInt | None = None, end_ramp: NonNegativeInt | None = None):
        super().__init__()
        if min_res % RES_STEP or max_res % RES_STEP or not 0 < min_res <= max_res:
            raise UserError(f"ProgressiveResizing: min_res ({min_res}) <= max_res ({max_res}) "
                            f"must be positive multiples of {RES_STEP}")
        if (start_ramp is None) != (end_ramp is None) or (
                start_ramp is not None and not 0 <= start_ramp <= end_ramp):
            raise UserError(f"ProgressiveResizing: need 0 <= start_ramp ({start_ramp}) <= "
                            f"end_ramp ({end_ramp}), or neither (ffcv-imagenet's ramp)")
        self.min_res, self.max_res = min_res, max_res
        self.start_ramp, self.end_ramp = start_ramp, end_ramp

    def ramp_for(self, max_epochs: int) -> tuple[int, int]:
        """(start_ramp, end_ramp): as given, else ffcv-imagenet's for a run of `max_epochs`."""
        if self.start_ramp is not None:
            return self.start_ramp, self.end_ramp
        if max_epochs not in FFCV_IMAGENET_RAMPS:
            raise UserError(f"ProgressiveResizing: ffcv-imagenet has no ramp for "
                            f"trainer.max_epochs={max_epochs} (it has "
                            f"{', '.join(map(str, FFCV_IMAGENET_RAMPS))}); give start_ramp "
                            "and end_ramp")
        return FFCV_IMAGENET_RAMPS[max_epochs]

    def resolution(self, epoch: int) -> int:
        if epoch <= self.start_ramp:
            return self.min_res
        if epoch >= self.end_ramp:
            return self.max_res
        progress = (epoch - self.start_ramp) / (self.end_ramp - self.start_ramp)
        res = self.min_res + progress * (self.max_res - self.min_res)
        return int(round(res / RES_STEP)) * RES_STEP

    def setup(self, trainer, pl_module, stage: str) -> None:
        if not isinstance(trainer.datamodule, FFCVDataModule):
            raise UserError("ProgressiveResizing needs data: FFCVDataModule, got "
                            f"{type(trainer.datamodule).__name__}")
        if self.start_ramp is None and trainer.fast_dev_run:  # a smoke run: min_res, no ramp
            self.start_ramp = self.end_ramp = 1
        self.start_ramp, self.end_ramp = self.ramp_for(trainer.max_epochs)
        trainer.datamodule.res_schedule = self.resolution

    def schedule(self, max_epochs: int):
        """epoch -> resolution for a run of `max_epochs` (before `setup` has fixed the ramp)."""
        ramped = ProgressiveResizing(self.min_res, self.max_res, *self.ramp_for(max_epochs))
        return ramped.resolution

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        pl_module.log("train/res", float(self.resolution(trainer.current_epoch)))
