"""Reading ImageFolder trees and decoding any image file to RGB, shared by the .beton writer and
`ImageFolderDataModule` so both see the same pixels and the same class indices.

    from resnext_lit.data.images import list_classes, list_image_folder, load_rgb
    classes = list_classes("~/imagenet/train")            # sorted folder names, as torchvision
    samples = list_image_folder("~/imagenet/train", classes)   # [(path, class index), ...]
    rgb = load_rgb(samples[0][0], max_side=500)            # uint8 [H, W, 3]

`export_imagefolder` goes the other way: arrays in memory -> a JPEG ImageFolder tree.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import UserError

# torchvision's IMG_EXTENSIONS: the same files count as images here and in torchvision.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
EXPORT_JPEG_QUALITY = 95


class BadImage(Exception):
    """A file that cannot be decoded to an image; `str(err)` is the reason for the report."""


def list_classes(root: str | os.PathLike) -> list[str]:
    """Class names of an ImageFolder tree: its sub-folder names, sorted (torchvision's rule, so
    class indices agree with `torchvision.datasets.ImageFolder`)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"image folder {root} does not exist or is not a folder")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise UserError(f"image folder {root} has no class sub-folders "
                        "(expected ROOT/<class>/<image>)")
    return classes


def image_files(folder: str) -> list[str]:
    """Every image file under `folder` (sub-folders too), by extension, in sorted order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()  # os.walk order is the file system's; sorting makes record order stable
        found += [os.path.join(dirpath, name) for name in sorted(filenames)
                  if name.lower().endswith(IMAGE_EXTENSIONS)]
    return found


def list_image_folder(root: str | os.PathLike, classes: list[str]) -> list[tuple[str, int]]:
    """`(path, class index)` for every image file under ROOT/<class>/, classes in `classes`
    order (pass the train split's classes for val, so both splits share indices)."""
    root = Path(root).expanduser()
    present = list_classes(root)
    unknown = sorted(set(present) - set(classes))
    if unknown:
        raise UserError(f"{root} has class folders that are not in the class list: "
                        f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    samples = []
    for index, name in enumerate(classes):
        if name not in present:
            continue  # a val split may lack a class; its count in the sidecar says so
        files = image_files(str(root / name))
        if not files:
            raise UserError(f"class folder {root / name} has no image files "
                            f"({'/'.join(IMAGE_EXTENSIONS)})")
        samples += [(path, index) for path in files]
    return samples


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # PIL warns when palette transparency goes straight to RGB
    # Alpha is dropped, as torchvision's loader does (`convert("RGB")`): the baseline's pixels.
    return image.convert("RGB")


def load_rgb(path: str | os.PathLike, max_side: int | None = None) -> np.ndarray:
    """Decode `path` by content (a PNG named .jpg is fine) to uint8 RGB [H, W, 3].

    CMYK, grayscale, palette and RGBA images are converted to RGB. With `max_side`, images whose
    longer side exceeds it are shrunk to it (cv2 INTER_AREA, FFCV's resizer); JPEGs are first
    decoded at a reduced DCT scale, which makes huge photos cheap. Raises `BadImage` with the
    reason for zero-byte, truncated or undecodable files.
    """
    try:
        if os.path.getsize(path) == 0:
            raise BadImage("zero-byte file")
        with Image.open(path) as image:
            if max_side and max(image.size) > max_side:
                scale = max_side / max(image.size)
                # draft() only shrinks by 1/2, 1/4, 1/8 while staying >= the requested size.
                image.draft(image.mode, (int(np.ceil(image.width * scale)),
                                         int(np.ceil(image.height * scale))))
            image.load()  # decode everything now: truncation surfaces here, not in a worker
            rgb = np.array(_to_rgb(image), dtype=np.uint8)  # a writable copy (torch wants one)
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not an image file PIL can identify") from None
    except Image.DecompressionBombError as err:
        raise BadImage(f"too many pixels ({err})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise BadImage(f"cannot decode: {err}") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise BadImage(f"decoded to shape {rgb.shape}, not RGB")
    height, width = rgb.shape[:2]
    if max_side and max(height, width) > max_side:
        scale = max_side / max(height, width)
        size = (max(1, int(width * scale)), max(1, int(height * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    return rgb


def export_imagefolder(images_uint8_nhwc, labels, class_names: list[str],
                       root: str | os.PathLike, quality: int = EXPORT_JPEG_QUALITY) -> Path:
    """Write in-memory images as a JPEG ImageFolder: ROOT/<class name>/<index>.jpg.

    `images_uint8_nhwc`: uint8 [N, H, W, 3] or [N, H, W] (grayscale); `labels`: N class indices
    into `class_names`. Every class gets a folder (even an empty one is an error for the writer,
    so pass only classes that occur). Returns ROOT.
    """
    images = np.asarray(images_uint8_nhwc)
    labels = np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) != len(labels):
        # Arrays from the caller's code, not a user's file or flag: a bug, with its traceback.
        raise ValueError(f"export_imagefolder wants uint8 [N,H,W(,3)] images and N labels, got "
                         f"{images.dtype} {images.shape} and {labels.shape}")
    root = Path(root)
    for name in class_names:
        (root / name).mkdir(parents=True, exist_ok=True)
    digits = len(str(len(images)))
    for index, (image, label) in enumerate(zip(images, labels)):
        path = root / class_names[int(label)] / f"{index:0{digits}d}.jpg"
        Image.fromarray(image).save(path, quality=quality)
    return root
