"""What a request to `digits serve` may bring, and turning it into ``uint8 [N,1,28,28]``.

Size limits are checked before the work they guard: the body's Content-Length (and a running
count when there is none) before reading it, an image's width × height from its header before
decoding its pixels. Bad input is a :class:`BadInput`, a 4xx naming what is wrong.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np
from fastapi import HTTPException, Request
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.responses import JSONResponse

from digit_utils.errors import DataError
from digit_utils.serve.predictor import SIZE, preprocess


@dataclass(frozen=True)
class Limits:
    """What one request may bring; `digits serve --max-...` overrides each."""

    max_images: int = 64  # images in one request
    max_bytes: int = 20 * 2**20  # the whole request body
    max_pixels: int = 25_000_000  # width × height of one image (a 24-MP phone photo fits)


class BadInput(HTTPException):
    """A 4xx whose detail names what is wrong with the request."""


# --------------------------------------------------------------------------------------------
# Request body: a hard cap on its size


class BodyLimit:
    """ASGI middleware: refuse a body over ``max_bytes`` by its Content-Length, or once that many
    bytes have arrived when the client streams it without one."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def _error(self) -> BadInput:
        return BadInput(413, f"request body over the limit of {self.max_bytes:,} bytes")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            response = JSONResponse({"detail": self._error().detail}, status_code=413)
            return await response(scope, receive, send)
        seen = 0

        async def capped_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise self._error()  # an HTTPException: FastAPI answers it as a 413
            return message

        await self.app(scope, capped_receive, send)


# --------------------------------------------------------------------------------------------
# Turning a request into uint8 [N,1,28,28]


def _reason(e: DataError) -> str:
    """The Predictor's message without its placeholder name for a lone in-memory image."""
    return str(e).removeprefix("#0: ").removeprefix("image: ")


def decode_image(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """An uploaded file as a decoded PIL image; its size is checked from the header first."""
    if not data:
        raise BadInput(422, f"{name}: empty file")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise BadInput(413, f"{name}: image over the limit of {max_pixels:,} pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise BadInput(415, f"{name}: not an image PIL can read") from None
    width, height = img.size
    if width * height > max_pixels:
        raise BadInput(
            413, f"{name}: {width}×{height} image over the limit of {max_pixels:,} pixels"
        )
    try:
        img.load()
    except (OSError, SyntaxError, ValueError):
        raise BadInput(415, f"{name}: truncated or corrupt image") from None
    return img


def mnist_from_uploads(files: list[tuple[str, bytes]], max_pixels: int) -> np.ndarray:
    """``[(name, bytes)]`` -> ``uint8 [N,1,28,28]``, each through the Predictor's preprocessing."""
    out = []
    for name, data in files:
        img = decode_image(data, name, max_pixels)
        try:
            out.append(preprocess(img))
        except DataError as e:
            raise BadInput(422, f"{name}: {_reason(e)}") from None
    return np.stack(out)


def mnist_from_json(body, max_images: int) -> np.ndarray:
    """One 28×28 array of grey values 0..255, or a list of them -> ``uint8 [N,1,28,28]``."""
    shape_error = BadInput(
        422, f"expected a {SIZE}×{SIZE} array of grey values 0..255, or a list of such arrays"
    )
    try:
        a = np.asarray(body, dtype=np.float64)
    except (ValueError, TypeError, RecursionError):  # ragged, strings, objects, nested deep
        raise shape_error from None
    if a.shape == (SIZE, SIZE):
        a = a[None]
    if a.ndim != 3 or a.shape[1:] != (SIZE, SIZE) or len(a) == 0:
        raise BadInput(422, f"{shape_error.detail}; got shape {list(a.shape)}")
    if len(a) > max_images:
        raise BadInput(413, f"too many images: {len(a)} in one request, the limit is {max_images}")
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 255:
        raise BadInput(422, "grey values must be numbers in 0..255 (0 is the background)")
    out = []
    for i, gray in enumerate(a.round().astype(np.uint8)):
        try:
            out.append(preprocess(gray))
        except DataError as e:
            raise BadInput(422, f"images[{i}]: {_reason(e)}") from None
    return np.stack(out)


def parse_json(body: bytes):
    """The request body as JSON; any parse failure (nesting too deep included) is a 400."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadInput(400, "the body is not valid JSON") from None
    except RecursionError:  # e.g. [[[[...]]]] 100,000 deep: Python's parser gives up
        raise BadInput(400, "the body's JSON is nested too deeply") from None


async def read_uploads(request: Request, limits: Limits) -> list[tuple[str, bytes]]:
    """Every file of a multipart form as ``(name, bytes)``, in the order sent."""
    files = []
    async with request.form() as form:  # closes the uploads' temporary files, whatever happens
        for key, value in form.multi_items():
            if not isinstance(value, UploadFile):
                raise BadInput(422, f"form field {key!r} is not a file upload")
            files.append((value.filename or f"files[{len(files)}]", await value.read()))
    if len(files) > limits.max_images:
        raise BadInput(
            413, f"too many images: {len(files)} in one request, the limit is {limits.max_images}"
        )
    return files
