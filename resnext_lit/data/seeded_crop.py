"""The training crop and flip of FFCV's decoder as a pure function of (seed, epoch, sample).

    decoder = SeededRandomResizedCrop((176, 176), scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                                      flip=True, seed=0)
    decoder.epoch = 3     # FFCVDataModule's loader sets it at every epoch start

FFCV's `RandomResizedCropRGBImageDecoder` and `RandomHorizontalFlip` draw from numba's
per-thread generators, which nothing seeds: a seed does not fix an FFCV run, and a resumed run
is not the uninterrupted one (libffcv/ffcv issues "seed is not working"; its seeding pull
request was never merged). Here every number a sample's augmentation needs is a counter-based
hash (splitmix64, Steele et al. 2014) of the epoch's key and the sample's index in the .beton:
no generator state, so the pixels of sample i in epoch e are the same whatever the decoding
threads, `batches_ahead`, the number of processes, or the step a resumed run starts at; another
seed gives other crops. The crop is the Inception crop of Szegedy et al. (the paper's Sec. 4),
drawn as FFCV draws it (10 tries of a random area share and log-uniform aspect, then the centre
crop), and the flip mirrors half the images in place.

The decode itself is FFCV's (libffcv's `imdecode` and `resize_crop`, `RandomResizedCrop
RGBImageDecoder.generate_code` of ffcv 1.0.2 re-stated with the seeded crop; pinned by
tests/test_internals_data.py). Numba freezes values a compiled function closes over, so the
epoch's key reaches the compiled code at run time in a one-number buffer that FFCV allocates
with the epoch's other buffers and `fill_epoch_key` writes before the epoch's first batch; the
resolution reaches it the same way, as the output buffer's size (`ProgressiveResizing`).
"""

from __future__ import annotations

import numpy as np
from ffcv.fields.rgb_image import IMAGE_MODES, RandomResizedCropRGBImageDecoder
from ffcv.libffcv import imdecode, resize_crop
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from numba import njit

GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # splitmix64's increment: 2^64 / the golden ratio
CROP_TRIES = 10  # then the centre crop (Szegedy et al.; FFCV and torchvision)
FLIP_DRAW = np.uint64(4 * CROP_TRIES)  # the flip's number comes after every crop try's four


def epoch_key(seed: int, epoch: int) -> np.uint64:
    """The key of epoch `epoch` of a run seeded `seed` (any two differ)."""
    return np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0]


@njit(nogil=True, cache=False)
def mix64(z):
    """splitmix64's finaliser: a bijection of uint64 whose outputs look independent."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(nogil=True, cache=False)
def uniform(stream, draw):
    """The `draw`-th number in [0, 1) of a sample's stream (53 random bits, as a double)."""
    return np.float64(mix64(stream + (draw + np.uint64(1)) * GOLDEN) >> np.uint64(11)) \
        * (1.0 / 9007199254740992.0)


@njit(nogil=True, cache=False)
def sample_stream(key, index):
    """The stream of sample `index` in the epoch of `key`."""
    return mix64(key ^ mix64(index * GOLDEN + np.uint64(1)))


@njit(nogil=True, cache=False)
def seeded_crop(height, width, scale, log_ratio, stream):
    """(top, left, h, w) of the Inception crop of a `height` x `width` image, drawn from
    `stream`: FFCV's `get_random_crop` with the stream's numbers for numba's generator."""
    area = height * width
    for attempt in range(CROP_TRIES):
        draw = np.uint64(4 * attempt)
        target_area = area * (scale[0] + (scale[1] - scale[0]) * uniform(stream, draw))
        aspect = np.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0])
                        * uniform(stream, draw + np.uint64(1)))
        w = int(round(np.sqrt(target_area * aspect)))
        h = int(round(np.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(uniform(stream, draw + np.uint64(2)) * (height - h + 1))
            left = int(uniform(stream, draw + np.uint64(3)) * (width - w + 1))
            return top, left, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < np.exp(log_ratio[0]):
        w = width
        h = int(round(w / np.exp(log_ratio[0])))
    elif in_ratio > np.exp(log_ratio[1]):
        h = height
        w = int(round(h * np.exp(log_ratio[1])))
    else:
        w = width
        h = height
    return (height - h) // 2, (width - w) // 2, h, w


@njit(nogil=True, cache=False)
def mirror(image) -> None:
    """Flip an H x W x C image left-right in place."""
    height, width, channels = image.shape
    for row in range(height):
        for col in range(width // 2):
            other = width - 1 - col
            for c in range(channels):
                image[row, col, c], image[row, other, c] = image[row, other, c], image[row, col, c]


class SeededRandomResizedCrop(RandomResizedCropRGBImageDecoder):
    """FFCV's RandomResizedCrop decoder (and, with `flip`, a horizontal flip of half the
    images) whose draws are a function of (seed, epoch, sample index); see above. Set `epoch`
    before each epoch; `fill_epoch_key` puts it where the compiled code reads it."""

    def __init__(self, output_size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip: bool = True,
                 seed: int = 0):
        super().__init__(output_size, scale=scale, ratio=ratio)
        self.flip, self.seed, self.epoch = flip, seed, 0

    def declare_state_and_memory(self, previous_state):
        state, (destination, temporary) = super().declare_state_and_memory(previous_state)
        return state, (destination, temporary, AllocationQuery((1,), np.dtype(np.uint64)))

    def fill_epoch_key(self, buffers) -> None:
        """Write this epoch's key into the buffers FFCV allocated for this decoder's epoch
        (destination, temporary, key), before any batch of the epoch is decoded."""
        buffers[2][...] = epoch_key(self.seed, self.epoch)

    def generate_code(self):
        jpg = IMAGE_MODES["jpg"]
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        imdecode_c = Compiler.compile(imdecode)
        resize_crop_c = Compiler.compile(resize_crop)
        scale = np.array(self.scale, dtype=np.float64)
        log_ratio = np.log(np.array(self.ratio, dtype=np.float64))
        flip = self.flip

        def decode(batch_indices, my_storage, metadata, storage_state):
            destination, temp_storage, keys = my_storage
            key = keys[0, 0]
            for dst_ix in my_range(len(batch_indices)):
                source_ix = batch_indices[dst_ix]
                field = metadata[source_ix]
                image_data = mem_read(field["data_ptr"], storage_state)
                height = np.uint32(field["height"])
                width = np.uint32(field["width"])
                if field["mode"] == jpg:
                    temp_buffer = temp_storage[dst_ix]
                    imdecode_c(image_data, temp_buffer,
                               height, width, height, width, 0, 0, 1, 1, False, False)
                    selected_size = 3 * height * width
                    temp_buffer = temp_buffer.reshape(-1)[:selected_size]
                    temp_buffer = temp_buffer.reshape(height, width, 3)
                else:
                    temp_buffer = image_data.reshape(height, width, 3)
                stream = sample_stream(key, np.uint64(source_ix))
                i, j, h, w = seeded_crop(height, width, scale, log_ratio, stream)
                resize_crop_c(temp_buffer, i, i + h, j, j + w, destination[dst_ix])
                if flip and uniform(stream, FLIP_DRAW) < 0.5:
                    mirror(destination[dst_ix])
            return destination[:len(batch_indices)]

        decode.is_parallel = True
        return decode
