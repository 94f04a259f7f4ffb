"""The prediction API and drawing page behind `digits serve` (FastAPI; uvicorn runs it).

Every image goes through the Predictor's own preprocessing (``predictor.preprocess``; requests
are turned into arrays in :mod:`inputs`) and all the images of one request go through the models
in one forward pass, shared with the requests that arrived while the previous pass ran
(:class:`Batcher`). Bad input is a 4xx with a JSON ``{"detail": "..."}`` naming what is wrong.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from digit_utils import __version__
from digit_utils.paths import PACKAGE_DIR
from digit_utils.serve.inputs import (
    BadInput,
    BodyLimit,
    Limits,
    mnist_from_json,
    mnist_from_uploads,
    read_uploads,
)
from digit_utils.serve.predictor import SIZE, Predictor, to_predictions

STATIC_DIR = PACKAGE_DIR / "serve" / "static"  # the drawing page; package data, see pyproject.toml


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
    _add_routes(app, predictor, _Answers(forward, limits), info, limits)
    return app


@dataclass
class _Answers:
    """A request's images through the shared forward pass. Decoding, preprocessing and the pass
    run in one worker thread per request, off the event loop."""

    forward: Batcher
    limits: Limits

    def infer(self, images: np.ndarray, names: list[str]) -> dict:
        probas = self.forward(images)  # (N,10); one pass, perhaps shared with other requests
        predictions = []
        for pred, image in zip(to_predictions(probas, names), images, strict=True):
            predictions.append({**pred.to_dict(), "image": image[0].tolist()})
        return {"predictions": predictions}

    def uploads(self, files: list[tuple[str, bytes]]) -> dict:
        images = mnist_from_uploads(files, self.limits.max_pixels)
        return self.infer(images, [name for name, _ in files])

    def json(self, body) -> dict:
        images = mnist_from_json(body, self.limits.max_images)
        return self.infer(images, [f"images[{i}]" for i in range(len(images))])


def _add_routes(app, predictor: Predictor, answers: _Answers, info: dict, limits: Limits):
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
            files = await read_uploads(request, limits)
            if not files:
                raise BadInput(422, "no image in the request: send one or more files")
            return await run_in_threadpool(answers.uploads, files)
        if kind == "application/json":
            try:
                body = json.loads(await request.body())
            except (ValueError, UnicodeDecodeError):
                raise BadInput(400, "the body is not valid JSON") from None
            return await run_in_threadpool(answers.json, body)
        raise BadInput(
            415, "send image files as multipart/form-data, or grey values as application/json"
        )
