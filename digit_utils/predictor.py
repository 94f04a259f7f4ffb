"""Classify your own digit images with one trained run or an ensemble of runs.

``preprocess`` makes a photo or scan look like an MNIST digit: grayscale; invert when the
background is light; crop to the ink's bounding box; scale the longest side to 20 px keeping the
aspect ratio; paste into 28×28 so that the centre of mass sits at the centre, as MNIST was made.
Images that already are 28×28 with a black background pass through untouched.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ConfigError, DataError

SIZE = 28
BOX = 20  # MNIST scaled each digit's longest side to 20 px
CENTRE = 14.0  # MNIST's mean centre of mass in (row, column) pixel indices, measured
MIN_CONTRAST = 32  # grey levels between ink and background below which an image counts as blank
NOISE_FLOOR = 0.2  # after stretching the ink to 255, fainter pixels are paper texture -> 0
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, as PIL's "L" mode


@dataclass(frozen=True)
class Prediction:
    """One image's predicted digit, its probability and all ten probabilities."""

    digit: int
    confidence: float
    probabilities: tuple[float, ...]  # ten, in digit order
    source: str = ""  # file name or "#i" for in-memory inputs

    def top(self, k: int = 3) -> list[tuple[int, float]]:
        """The k most likely digits with their probabilities, best first."""
        order = np.argsort(self.probabilities, kind="stable")[::-1][:k]
        return [(int(d), self.probabilities[d]) for d in order]

    def to_dict(self) -> dict:
        return {**asdict(self), "probabilities": list(self.probabilities)}


# --------------------------------------------------------------------------------------------
# Turning any input into grayscale arrays


def _from_pil(img: Image.Image) -> np.ndarray:
    """Grayscale float32 [H,W] in 0..255; transparency is laid on white, like paper."""
    img = ImageOps.exif_transpose(img)  # phone photos store their rotation in EXIF
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return np.asarray(img.convert("L"), dtype=np.float32)


def _from_file(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError("file not found", file=path)
    try:
        with Image.open(path) as img:
            img.load()
            return _from_pil(img)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"not an image PIL can read ({e.__class__.__name__})", file=path) from None


def _to_gray(a: np.ndarray, where: str) -> np.ndarray:
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
        if a.shape[2] == 4:  # lay transparent pixels on white
            alpha = a[..., 3:] / 255.0
            rgb = rgb * alpha + 255.0 * (1 - alpha)
        a = rgb @ LUMA
    if a.ndim != 2 or min(a.shape) == 0:
        raise DataError(f"{where}: expected an image [H,W] or [H,W,C], got shape {a.shape}")
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 255:
        raise DataError(f"{where}: pixel values must lie in 0..255 (or 0..1 for floats)")
    return a


def _split(x) -> tuple[list[tuple[str, np.ndarray]], bool]:
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
        return [(str(x), _from_file(Path(x)))], True
    if isinstance(x, Image.Image):
        return [("#0", _from_pil(x))], True
    if isinstance(x, list | tuple):
        if not x:
            raise DataError("images: got an empty list")
        items = []
        for i, item in enumerate(x):
            sub, single = _split(item)
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
        return [("#0", _to_gray(x, "image"))], True
    if x.ndim == 3 and shape[0] == 1:
        return [("#0", _to_gray(x[0], "image"))], True
    if x.ndim == 3 or (x.ndim == 4 and shape[1] == 1):
        return [
            (f"#{i}", _to_gray(a.reshape(a.shape[-2:]), f"images[{i}]")) for i, a in enumerate(x)
        ], False
    if x.ndim == 4 and shape[-1] in channels:
        return [(f"#{i}", _to_gray(a, f"images[{i}]")) for i, a in enumerate(x)], False
    raise DataError(
        f"images: cannot read an array of shape {shape} as images; use [H,W], [H,W,C], "
        "[N,H,W] or [N,1,H,W]"
    )


# --------------------------------------------------------------------------------------------
# Making a grayscale image MNIST-like


def _border(a: np.ndarray) -> np.ndarray:
    """The outer frame, about 5% of the side thick: the best guess at the background."""
    t = max(1, round(0.05 * min(a.shape)))
    return np.concatenate([a[:t].ravel(), a[-t:].ravel(), a[:, :t].ravel(), a[:, -t:].ravel()])


def is_mnist_style(gray: np.ndarray) -> bool:
    """28×28 with a black background: leave it exactly as it is."""
    return gray.shape == (SIZE, SIZE) and float(np.median(_border(gray))) == 0.0


def _mnist_like(gray: np.ndarray, where: str) -> np.ndarray:
    if is_mnist_style(gray):
        if gray.max() < MIN_CONTRAST:
            raise DataError(f"{where}: blank image (no ink on the black background)")
        return gray.round().astype(np.uint8)[None]
    if np.median(_border(gray)) > 127:  # dark ink on light paper -> MNIST's light on black
        gray = 255.0 - gray
    ink = np.clip(gray - np.median(_border(gray)), 0, None)
    if ink.max() < MIN_CONTRAST:
        raise DataError(f"{where}: blank image (no ink stands out from the background)")
    ink = ink * (255.0 / ink.max())
    ink[ink < NOISE_FLOOR * 255] = 0
    rows, cols = np.nonzero(ink.any(axis=1))[0], np.nonzero(ink.any(axis=0))[0]
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = crop.shape
    scale = BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # PIL wants (width, height)
    small = np.asarray(
        Image.fromarray(crop.astype(np.uint8)).resize(size, Image.Resampling.LANCZOS),
        dtype=np.float32,
    )
    small = np.clip(small * (255.0 / max(small.max(), 1.0)), 0, 255)  # resampling dims strokes
    yy, xx = np.indices(small.shape)
    mass = small.sum()
    if mass == 0:  # a speck that vanished in the resize
        raise DataError(f"{where}: blank image (the only ink is a speck)")
    cy, cx = (yy * small).sum() / mass, (xx * small).sum() / mass
    # Integer offsets that bring the centre of mass to CENTRE, kept inside the canvas.
    top = int(np.clip(round(CENTRE - cy), 0, SIZE - small.shape[0]))
    left = int(np.clip(round(CENTRE - cx), 0, SIZE - small.shape[1]))
    out = np.zeros((SIZE, SIZE), np.float32)
    out[top : top + small.shape[0], left : left + small.shape[1]] = small
    return out.round().astype(np.uint8)[None]


def preprocess(image) -> np.ndarray:
    """One image (path, PIL, array or tensor) as an MNIST-like ``uint8 [1,28,28]``."""
    items, single = _split(image)
    if not single:
        raise DataError(f"image: expected one image, got a batch of {len(items)}")
    name, gray = items[0]
    return _mnist_like(gray, name)


def load_images(x) -> tuple[np.ndarray, list[str], bool]:
    """Any accepted input as MNIST-like ``uint8 [N,1,28,28]``, names, and whether it was single."""
    items, single = _split(x)
    images = np.stack([_mnist_like(gray, name) for name, gray in items])
    return images, [name for name, _ in items], single


# --------------------------------------------------------------------------------------------
# The Predictor


class Predictor:
    """One model, or several averaged (soft voting), applied to your own images."""

    def __init__(self, models: Sequence, *, tta: int = 0, device=None, runs: Sequence = ()):
        if not models:
            raise ConfigError("models: need at least one model")
        self.models, self.tta, self.device, self.runs = list(models), tta, device, list(runs)

    @classmethod
    def from_run(
        cls, runs, *, which: str = "last", tta: int = 0, device: str | None = None
    ) -> Predictor:
        """Load one run folder, or several (an ensemble by soft averaging)."""
        from .devices import resolve_device
        from .runs import load_run

        runs = [Path(runs)] if isinstance(runs, str | Path) else [Path(r) for r in runs]
        device = resolve_device(device)
        models = [load_run(run, which=which, device=device)[0] for run in runs]
        return cls(models, tta=tta, device=device, runs=runs)

    def predict_images(self, images: np.ndarray) -> np.ndarray:
        """``uint8 [N,1,28,28] -> float32 [N,10]``, averaged over the models."""
        from .predict import predict_proba

        probas = [predict_proba(m, images, tta=self.tta, device=self.device) for m in self.models]
        return np.mean(probas, axis=0, dtype=np.float32)

    def predict(self, x) -> Prediction | list[Prediction]:
        """Predict a path, PIL image, array or tensor (one, or a batch / list of them)."""
        images, names, single = load_images(x)
        out = to_predictions(self.predict_images(images), names)
        return out[0] if single else out


def to_predictions(probas: np.ndarray, names: Sequence[str]) -> list[Prediction]:
    """``float32 [N,10]`` probabilities and N names as Predictions."""
    return [
        Prediction(int(p.argmax()), float(p.max()), tuple(float(v) for v in p), name)
        for name, p in zip(names, probas, strict=True)
    ]


def plot_prediction(image: np.ndarray, prediction: Prediction):
    """The preprocessed ``[1,28,28]`` image beside its ten probability bars; returns the Figure."""
    import matplotlib.pyplot as plt

    fig, (ax_img, ax_bar) = plt.subplots(
        1, 2, figsize=(6, 2.6), gridspec_kw={"width_ratios": [1, 1.6]}
    )
    ax_img.imshow(np.asarray(image).reshape(SIZE, SIZE), cmap="gray", vmin=0, vmax=255)
    ax_img.set_title(f"{Path(prediction.source).name}: {prediction.digit}")
    ax_img.axis("off")
    colours = ["tab:blue" if d == prediction.digit else "tab:gray" for d in range(10)]
    ax_bar.bar(range(10), prediction.probabilities, color=colours)
    ax_bar.set_xticks(range(10))
    ax_bar.set_ylim(0, 1)
    ax_bar.set_ylabel("probability")
    ax_bar.set_title(f"confidence {prediction.confidence:.1%}")
    fig.tight_layout()
    return fig
