"""The FFCV internals resnext_lit/data relies on, pinned: these fail when FFCV changes them.

    .venv/bin/python -m pytest -q tests/test_internals_data.py

FFCV 1.0.2 offers no public hook for what these serve (the loader's queue length and iterator
class, the writer's progress bar, signals and clean-up), so the code uses its internals, as
checked against ffcv 1.0.2. A failure here means: re-read the FFCV source named in the message,
fix the code that relies on it, then update the pinned hash. Cheap: no loader runs, no JIT.
"""

from __future__ import annotations

import hashlib
import inspect
import multiprocessing

import pytest
import tqdm
from ffcv import writer
from ffcv.fields.rgb_image import ResizedCropRGBImageDecoder, get_random_crop
from ffcv.loader.epoch_iterator import EpochIterator
from ffcv.loader.loader import Loader
from ffcv.pipeline.graph import Graph

# FFCV function -> (SHA-256 prefix of its source in ffcv 1.0.2, our code that relies on it).
PINNED = {
    Loader.__iter__: ("3e74843d4b0a0f91", "data/ffcv.py: _LightningLoader.__iter__ re-states it"),
    Loader.next_traversal_order: ("cd6d99b16c0dcf7c", "data/ffcv.py: _TrainLoader sets "
                                  "next_epoch, which seeds the epoch's order"),
    EpochIterator.__init__: ("fd27c309f0f583d2", "data/ffcv.py: _StoppableEpoch.stop sets "
                             "terminate_event, which __init__ makes"),
    EpochIterator.run: ("98ba340cc4fb0887", "data/ffcv.py: _StoppableEpoch.stop sets "
                        "terminate_event, which run checks between 0.5 s put timeouts"),
    EpochIterator.close: ("368b471a13cf39bf", "data/ffcv.py: _StoppableEpoch.stop"),
    ResizedCropRGBImageDecoder.generate_code: ("7fd26b6fd29e4ab5", "data/seeded_crop.py: "
                                               "SeededRandomResizedCrop.generate_code re-states "
                                               "it with the seeded crop and flip"),
    ResizedCropRGBImageDecoder.declare_state_and_memory: (
        "89e8fe60c9550967", "data/seeded_crop.py: adds the epoch key's buffer to its two"),
    get_random_crop: ("d79d75c3efeb1f93", "data/seeded_crop.py: seeded_crop draws as it draws"),
    Graph.__init__: ("d16be0761537ec41", "data/ffcv.py: _StoppableEpoch.start finds the seeded "
                     "decoder's node in operation_to_node"),
    Graph.allocate_memory: ("a06fba8865f02e04", "data/ffcv.py: _StoppableEpoch.start fills the "
                            "key into memory_allocations['operation'][node id]"),
    writer.DatasetWriter.prepare: ("48134cfcd7b4e796", "data/beton/processes.py: Writer.prepare "
                                   "holds SIGTERM while it makes metadata_sm, unlinked on failure"),
    writer.DatasetWriter._write_common: ("a0776d37f1306ba2", "data/beton/processes.py: patches "
                                         "ffcv.writer.tqdm; watches its Process workers"),
}


@pytest.mark.parametrize("function", PINNED, ids=lambda f: f.__qualname__)
def test_ffcv_source_is_the_one_we_rely_on(function):
    expected, user = PINNED[function]
    digest = hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]
    assert digest == expected, (f"{function.__module__}.{function.__qualname__} changed since "
                                f"ffcv 1.0.2: re-check {user}, then pin {digest}")


def test_the_writer_looks_up_what_processes_py_patches_and_watches():
    # `ffcv.writer.tqdm = bar` works only while DatasetWriter reads the module global.
    assert writer.tqdm is tqdm.tqdm
    assert "tqdm" in writer.DatasetWriter._write_common.__code__.co_names
    # The watchdog knows FFCV's workers from the log `_on_fork` (os.register_at_fork) opens in
    # each, which only runs in them if the default start method forks.
    assert writer.Process is multiprocessing.Process
    assert multiprocessing.get_all_start_methods()[0] == "fork"  # the first is the default


def test_the_decoder_output_size_is_read_per_epoch_not_compiled_in():
    """ProgressiveResizing sets `output_size` between epochs: the buffers must be sized from it
    (declare_state_and_memory, run by every EpochIterator) and the compiled code must not."""
    assert "self.output_size" in inspect.getsource(
        ResizedCropRGBImageDecoder.declare_state_and_memory)
    assert "output_size" not in inspect.getsource(ResizedCropRGBImageDecoder.generate_code)
    assert "allocate_memory" in inspect.getsource(EpochIterator.__init__)


def test_the_epoch_iterator_starts_itself_once_its_buffers_exist():
    """`_StoppableEpoch.start` writes the seeded decoder's key into the epoch's buffers before
    the first batch: `__init__` must allocate them, then call `self.start()`, last."""
    body = inspect.getsource(EpochIterator.__init__).rstrip().splitlines()
    assert body[-1].strip() == "self.start()"
    assert any("self.memory_allocations = " in line for line in body[:-1])
