"""Any image input (path, PIL image, array or tensor) as grayscale float32 [H,W] in 0..255.

Limits are documented and enforced here: an image over ``MAX_PIXELS`` is refused before it is
decoded, so a 144-megapixel photo costs neither gigabytes nor PIL's decompression-bomb warning.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from digit_utils.errors import DataError, DataWarning
from digit_utils.paths import not_a_file

# 64 megapixels: a full-resolution 48/50-MP phone photo passes, 108/144/200-MP modes do not.
MAX_PIXELS = 64_000_000
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, as PIL's "L" mode


def _check_size(width: int, height: int, where) -> None:
    if width * height > MAX_PIXELS:
        raise DataError(
            f"{where}: {width}×{height} is {width * height / 1e6:.0f} megapixels, over the "
            f"{MAX_PIXELS / 1e6:.0f}-megapixel limit (digit_utils.serve.images.MAX_PIXELS); "
            "scale it down first"
        )


def _on_background(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Lay transparent pixels on the colour that contrasts with the drawing: dark strokes on
    white, like paper; white strokes (a drawing app's default on a dark theme) on black."""
    weight = alpha.sum()
    ink = float((rgb @ LUMA * alpha[..., 0]).sum() / weight) if weight else 0.0
    paper = 0.0 if ink > 127 else 255.0
    return rgb * alpha + paper * (1 - alpha)


def from_pil(img: Image.Image) -> np.ndarray:
    """Grayscale float32 [H,W] in 0..255 from a PIL image of any mode."""
    img = ImageOps.exif_transpose(img)  # phone photos store their rotation in EXIF
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        # 16-bit (or wider) grey: scale to 0..255; convert("L") would clip everything above 255
        a = np.asarray(img, dtype=np.float32)
        top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        return np.clip(a * (255.0 / top), 0, 255)
    if img.mode in ("RGBA", "LA") and img.getchannel("A").getextrema()[0] == 255:
        return np.asarray(img.convert("L"), dtype=np.float32)  # opaque (a canvas): no blending
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
        return _on_background(rgba[..., :3], rgba[..., 3:] / 255.0) @ LUMA
    return np.asarray(img.convert("L"), dtype=np.float32)


def from_file(path: Path) -> np.ndarray:
    if path.is_dir() and not path.is_symlink():
        raise DataError(f"{path}: is a folder, not an image file")
    if not path.is_file():
        raise DataError(not_a_file(path), file=path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we check below
            img = Image.open(path)
        with img:
            _check_size(*img.size, path)
            if (frames := getattr(img, "n_frames", 1)) > 1:
                warnings.warn(
                    f"{path}: an animated image of {frames} frames; using the first",
                    DataWarning,
                    stacklevel=2,
                )
            img.load()
            gray = from_pil(img)
    except Image.DecompressionBombError:
        raise DataError(f"{path}: over PIL's own pixel limit; scale it down first") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"not an image PIL can read ({e.__class__.__name__})", file=path) from None
    if not np.isfinite(gray).all():  # a float TIFF can hold NaN or infinity
        raise DataError("has pixels that are not numbers (NaN or infinity)", file=path)
    return gray


def to_gray(a: np.ndarray, where: str) -> np.ndarray:
    """One image array ([H,W], [H,W,1|3|4]) as grayscale float32 [H,W] in 0..255."""
    a = np.asarray(a)
    if a.dtype == bool:
        a = a * 255.0
    elif a.dtype.kind == "f" and a.size and np.nanmax(a) <= 1.0:
        a = a * 255.0  # a float image in [0, 1], e.g. from torchvision's ToTensor
    a = a.astype(np.float32)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    elif a.ndim == 3 and a.shape[2] in (3, 4):
        rgb = a[..., :3]
        if a.shape[2] == 4:
            rgb = _on_background(rgb, np.clip(a[..., 3:] / 255.0, 0, 1))
        a = rgb @ LUMA
    if a.ndim != 2 or min(a.shape) == 0:
        raise DataError(f"{where}: expected an image [H,W] or [H,W,C], got shape {a.shape}")
    _check_size(a.shape[1], a.shape[0], where)
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 255:
        raise DataError(f"{where}: pixel values must lie in 0..255 (or 0..1 for floats)")
    return a


def split(x) -> tuple[list[tuple[str, np.ndarray]], bool]:
    """Inputs -> ([(name, gray [H,W])], was_single).

    Arrays follow numpy's layout: [H,W], [H,W,C] or [1,H,W] is one image; [N,H,W], [N,1,H,W]
    or [N,H,W,C] a batch. Tensors follow torch's: [C,H,W] (C = 1 or 3) is one image, [N,C,H,W]
    a batch.
    """
    torch = sys.modules.get("torch")  # a tensor can only exist if torch was imported
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
        if x.ndim == 3 and x.shape[0] not in (1, 3):  # [4,H,W]: RGBA or 4 digits? refuse
            raise DataError(
                f"image: a 3-D tensor is one [C,H,W] image, got shape {tuple(x.shape)}; "
                "pass a batch as [N,1,H,W]"
            )
        if x.ndim in (3, 4):
            x = np.moveaxis(x, -3, -1)  # channels last, like every other input
    if isinstance(x, str | Path):
        return [(str(x), from_file(Path(x)))], True
    if isinstance(x, Image.Image):
        return [("#0", from_pil(x))], True
    if isinstance(x, list | tuple):
        if not x:
            raise DataError("images: got an empty list")
        items = []
        for i, item in enumerate(x):
            sub, single = split(item)
            if not single:
                raise DataError(f"images[{i}]: a list must hold single images, got a batch")
            name, gray = sub[0]
            items.append((name if name != "#0" else f"#{i}", gray))
        return items, False
    if not isinstance(x, np.ndarray):
        raise DataError(
            f"images: expected a path, PIL image, numpy array or tensor, got {type(x).__name__}"
        )
    shape, channels = x.shape, (1, 3, 4)
    if x.ndim == 2 or (x.ndim == 3 and shape[-1] in channels):
        return [("#0", to_gray(x, "image"))], True
    if x.ndim == 3 and shape[0] == 1:
        return [("#0", to_gray(x[0], "image"))], True
    if x.ndim == 3 or (x.ndim == 4 and shape[1] == 1):
        return [
            (f"#{i}", to_gray(a.reshape(a.shape[-2:]), f"images[{i}]")) for i, a in enumerate(x)
        ], False
    if x.ndim == 4 and shape[-1] in channels:
        return [(f"#{i}", to_gray(a, f"images[{i}]")) for i, a in enumerate(x)], False
    raise DataError(
        f"images: cannot read an array of shape {shape} as images; use [H,W], [H,W,C], "
        "[N,H,W] or [N,1,H,W]"
    )
