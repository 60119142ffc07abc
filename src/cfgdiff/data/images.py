"""Decoding one image file into the stored uint8 layout [C, H, W], the same way for every format.

Image folders, EDM zips and Hugging Face sets decode their files here; array formats (IDX, CIFAR, .npz) come
here too when ``image_size`` or ``channels`` asks for a change, so the same picture gives the same stored
bytes whatever format carried it.

* Channels. ``channels=1``: PIL's ``convert("L")`` (ITU-R 601-2 luma, L = (19595 R + 38470 G + 7471 B + 2^15) >> 16);
  ``channels=3``: ``convert("RGB")`` (grayscale replicated). Alpha is dropped (not composited); palette images
  are expanded first; 16-bit grayscale is scaled to 8 bits, v8 = round(v16 · 255/65535). ``channels=None``
  keeps 1 channel when every image is grayscale (modes 1, L, LA, I, I;16) and 3 otherwise.
* Size. ``image_size=s``: resize so the shorter side is s (the longer side becomes round(long · s / short);
  Lanczos, as EDM's dataset_tool), then crop the centre s×s (offset floor((side - s) / 2)). An image whose size
  is already s×s is left untouched, so no resampling touches data that needs none.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from cfgdiff.data.cache import CacheEntry, build_entry, content_key, load_entry
from cfgdiff.data.dataset import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N"})
_16BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


def is_image_name(name: str) -> bool:
    """True for the file extensions read as images (case-insensitive)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def open_image(data: bytes | Path, where: str):
    """A PIL image (header read, pixels not yet) from a path or bytes; ``DataError`` naming ``where`` otherwise."""
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise DataError(f"{where}: not a readable image ({_reason(err)})") from None


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def channels_of_mode(mode: str) -> int:
    """1 for grayscale PIL modes, 3 for everything else."""
    return 1 if mode in GRAY_MODES else 3


def infer_channels(modes: Iterable[str]) -> int:
    """1 when every mode is grayscale, else 3."""
    return 1 if all(channels_of_mode(m) == 1 for m in modes) else 3


def _to_mode(img, channels: int):
    """The image in mode "L" (channels 1) or "RGB" (channels 3)."""
    target = "L" if channels == 1 else "RGB"
    if img.mode == target:
        return img
    if img.mode in _16BIT_MODES:
        v = np.asarray(img, dtype=np.int64)
        if v.max(initial=0) > 255 or img.mode != "I":  # 16-bit range: scale to 8 bits, rounding
            v = (np.clip(v, 0, 65535) * 255 + 32767) // 65535
        from PIL import Image

        img = Image.fromarray(v.astype(np.uint8))  # 2-D uint8: mode "L"
        return img if target == "L" else img.convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    return img.convert(target)


def resize_center_crop(img, image_size: int):
    """Shorter side to ``image_size`` (Lanczos), then the centre ``image_size``×``image_size`` crop."""
    from PIL import Image

    w, h = img.size
    s = image_size
    if (w, h) == (s, s):
        return img
    if min(w, h) != s:
        scale = s / min(w, h)
        new_w = s if w <= h else max(s, round(w * scale))
        new_h = s if h < w else max(s, round(h * scale))
        img = img.resize((new_w, new_h), Image.Resampling.LANCZOS)
        w, h = img.size
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s))


def image_to_array(img, *, channels: int, image_size: int | None, where: str) -> np.ndarray:
    """A PIL image as uint8 [C, H, W] (see the module docstring); ``DataError`` naming ``where`` if it cannot
    be decoded (a truncated or corrupt file fails here, when the pixels are read)."""
    try:
        img.load()
        img = _to_mode(img, channels)
        if image_size is not None:
            img = resize_center_crop(img, image_size)
        a = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise DataError(f"{where}: corrupt or unreadable image ({_reason(err)})") from None
    return a[None] if a.ndim == 2 else np.ascontiguousarray(a.transpose(2, 0, 1))


def decode_image(data: bytes | Path, *, channels: int, image_size: int | None, where: str) -> np.ndarray:
    """Open and decode one image file (path or bytes) to uint8 [C, H, W]."""
    with open_image(data, where) as img:
        return image_to_array(img, channels=channels, image_size=image_size, where=where)


def transform_array(images: np.ndarray, *, channels: int | None, image_size: int | None) -> np.ndarray:
    """uint8 [N, C, H, W] through the same PIL path as decoded files (only when a change is asked for)."""
    from PIL import Image

    n, c, h, w = images.shape
    out_c = c if channels is None else channels
    same_size = image_size is None or (h, w) == (image_size, image_size)
    if out_c == c and same_size:
        return images
    out_hw = (h, w) if image_size is None else (image_size, image_size)
    out = np.empty((n, out_c, *out_hw), dtype=np.uint8)
    for i in range(n):
        img = Image.fromarray(images[i, 0] if c == 1 else np.ascontiguousarray(images[i].transpose(1, 2, 0)))
        out[i] = image_to_array(img, channels=out_c, image_size=image_size, where=f"image {i}")
    return out


ImageItem = tuple[str, Callable[[], "bytes | Path"]]  # (name shown in errors, a function giving the file)


def decode_to_cache(fmt: str, description: dict, items: Sequence[ImageItem], labels: np.ndarray, *,
                    image_size: int | None, channels: int | None, meta: dict | None = None) -> CacheEntry:
    """Every image of ``items`` decoded once into the data cache (``cfgdiff.data.cache``), or the entry made
    before for the same files and options.

    Without ``image_size`` all images must have one size (``DataError`` naming two that differ otherwise);
    without ``channels`` the channel count is inferred from the image modes (see the module docstring). Both
    need a first pass over the headers (cheap: no pixels are decoded).
    """
    key = content_key({"format": fmt, **description, "image_size": image_size, "channels": channels})
    entry = load_entry(fmt, key)
    if entry is not None:
        return entry
    if not items:
        raise DataError(f"{description.get('path', fmt)}: no images")
    first_size = None
    modes: set[str] = set()
    if image_size is None or channels is None:
        for name, get in items:
            with open_image(get(), name) as img:
                size, mode = img.size, img.mode
            modes.add(mode)
            if first_size is None:
                first_size = (name, size)
            elif image_size is None and size != first_size[1]:
                raise DataError(f"images of different sizes: {first_size[0]} is {first_size[1][0]}x{first_size[1][1]}, "
                                f"{name} is {size[0]}x{size[1]}; pass --image-size (DataSpec.image_size) to resize "
                                "them to one size")
    c = channels if channels is not None else infer_channels(modes)
    if image_size is not None:
        h = w = image_size
    else:
        w, h = first_size[1]

    def fill(out: np.ndarray) -> None:
        for i, (name, get) in enumerate(items):
            out[i] = decode_image(get(), channels=c, image_size=image_size, where=name)

    return build_entry(fmt, key, shape=(len(items), c, h, w), labels=np.asarray(labels, dtype=np.int64),
                       meta={"format": fmt, **(meta or {})}, fill=fill)
