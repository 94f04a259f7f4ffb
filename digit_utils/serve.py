"""The prediction API and drawing page behind `digits serve` (FastAPI; uvicorn runs it).

Every image goes through the Predictor's own preprocessing (``predictor.preprocess``) and all the
images of one request go through the models in one forward pass, shared with the requests that
arrived while the previous pass ran (:class:`Batcher`). Bad input is a 4xx with a JSON
``{"detail": "..."}`` naming what is wrong; size limits are checked before the work they guard:
the body's Content-Length (and a running count when there is none) before reading it, an image's
width × height from its header before decoding its pixels.

(Just over 300 lines: the app, its input limits and the shared forward pass are one request path.)
"""

from __future__ import annotations

import io
import json
import threading
from dataclasses import asdict, dataclass

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.responses import JSONResponse

from . import __version__
from .errors import DataError
from .paths import PACKAGE_DIR
from .predictor import SIZE, Predictor, preprocess, to_predictions

STATIC_DIR = PACKAGE_DIR / "static"  # the drawing page; package data, see pyproject.toml


@dataclass(frozen=True)
class Limits:
    """What one request may bring; `digits serve --max-...` overrides each."""

    max_images: int = 64  # images in one request
    max_bytes: int = 20 * 2**20  # the whole request body
    max_pixels: int = 25_000_000  # width × height of one image (a 24-MP phone photo fits)


class BadInput(HTTPException):
    """A 4xx whose detail names what is wrong with the request."""


# --------------------------------------------------------------------------------------------
# Forward passes shared by concurrent requests


class Batcher:
    """One forward pass at a time, shared: a request that finds the model busy waits, and the
    next pass takes every waiting request's images at once (up to ``max_batch``). On a small CPU
    eight one-image requests then cost about one pass instead of eight in a row."""

    def __init__(self, forward, max_batch: int):
        self.forward, self.max_batch = forward, max_batch
        self.cond = threading.Condition()
        self.queue: list[dict] = []
        self.busy = False

    def _take(self) -> list[dict]:
        batch = [self.queue.pop(0)]
        n = len(batch[0]["images"])
        while self.queue and n + len(self.queue[0]["images"]) <= self.max_batch:
            batch.append(self.queue.pop(0))
            n += len(batch[-1]["images"])
        return batch

    def _run(self, batch: list[dict]) -> None:
        try:
            probas = self.forward(np.concatenate([job["images"] for job in batch]))
            ends = np.cumsum([len(job["images"]) for job in batch])
            for job, part in zip(batch, np.split(probas, ends[:-1]), strict=True):
                job["result"] = part
        except Exception as e:  # each waiting request gets the error, none hangs
            for job in batch:
                job["error"] = e

    def __call__(self, images: np.ndarray) -> np.ndarray:
        job = {"images": images, "result": None, "error": None, "done": False}
        with self.cond:
            self.queue.append(job)
            while not job["done"]:
                if self.busy:
                    self.cond.wait()
                    continue
                batch, self.busy = self._take(), True  # this thread runs the next pass
                self.cond.release()
                try:
                    self._run(batch)
                finally:
                    self.cond.acquire()
                    for done in batch:
                        done["done"] = True
                    self.busy = False
                    self.cond.notify_all()
        if job["error"] is not None:
            raise job["error"]
        return job["result"]


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
    except (ValueError, TypeError):  # ragged lists, strings, objects
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


async def _read_uploads(request: Request, limits: Limits) -> list[tuple[str, bytes]]:
    """Every file of a multipart form as ``(name, bytes)``, in the order sent."""
    form = await request.form()
    files = []
    for key, value in form.multi_items():
        if not isinstance(value, UploadFile):
            raise BadInput(422, f"form field {key!r} is not a file upload")
        files.append((value.filename or f"files[{len(files)}]", await value.read()))
    if len(files) > limits.max_images:
        raise BadInput(
            413, f"too many images: {len(files)} in one request, the limit is {limits.max_images}"
        )
    return files


# --------------------------------------------------------------------------------------------
# The app

PREDICT_BODY = {  # /predict reads the body itself; this tells /docs what it accepts
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            },
            "application/json": {
                "schema": {
                    "description": "one 28×28 array of grey values 0..255, or a list of them",
                    "type": "array",
                    "items": {"type": "array"},
                }
            },
        },
    }
}


def create_app(predictor: Predictor, *, info: dict | None = None, limits: Limits | None = None):
    """The FastAPI app around an already loaded Predictor (requests never reload it)."""
    limits = limits or Limits()
    app = FastAPI(title="digit-recognizer", version=__version__, summary="Predict digits.")
    app.add_middleware(BodyLimit, max_bytes=limits.max_bytes)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    forward = Batcher(predictor.predict_images, max_batch=max(limits.max_images, 64))
    predictor.predict_images(np.zeros((1, 1, SIZE, SIZE), np.uint8))  # warm-up, off the clock
    info = {**(info or {}), "version": __version__, "limits": asdict(limits)}

    def infer(images: np.ndarray, names: list[str]) -> dict:
        probas = forward(images)  # (N,10); one pass, perhaps shared with other requests
        predictions = []
        for pred, image in zip(to_predictions(probas, names), images, strict=True):
            predictions.append({**pred.to_dict(), "image": image[0].tolist()})
        return {"predictions": predictions}

    # Decoding, preprocessing and the forward pass run in one worker thread per request, off
    # the event loop.
    def answer_uploads(files: list[tuple[str, bytes]]) -> dict:
        return infer(mnist_from_uploads(files, limits.max_pixels), [name for name, _ in files])

    def answer_json(body) -> dict:
        images = mnist_from_json(body, limits.max_images)
        return infer(images, [f"images[{i}]" for i in range(len(images))])

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/health")
    def health() -> dict:
        """Ready once the models are loaded (the app only exists after that)."""
        return {
            "status": "ready",
            "device": str(predictor.device),
            "models": len(predictor.models),
        }

    @app.get("/info")
    def about() -> dict:
        """The runs served, their validation accuracy, how they combine, the package version."""
        return info

    @app.post("/predict", openapi_extra=PREDICT_BODY)
    async def predict(request: Request) -> dict:
        """Image files (multipart) or 28×28 grey values (JSON) -> one prediction per image."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            files = await _read_uploads(request, limits)
            if not files:
                raise BadInput(422, "no image in the request: send one or more files")
            return await run_in_threadpool(answer_uploads, files)
        if kind == "application/json":
            try:
                body = json.loads(await request.body())
            except (ValueError, UnicodeDecodeError):
                raise BadInput(400, "the body is not valid JSON") from None
            return await run_in_threadpool(answer_json, body)
        raise BadInput(
            415, "send image files as multipart/form-data, or grey values as application/json"
        )

    return app
