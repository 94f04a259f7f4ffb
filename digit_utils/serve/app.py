"""The prediction API and drawing page behind `digits serve` (FastAPI; uvicorn runs it).

Every image goes through the Predictor's own preprocessing (``predictor.preprocess``; requests
are turned into arrays in :mod:`inputs`) and all the images of one request go through the models
in one forward pass, shared with the requests that arrived while the previous pass ran
(:class:`Batcher`). Bad input is a 4xx with a JSON ``{"detail": "..."}`` naming what is wrong.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse
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
    parse_json,
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

PREDICT_BODY = {  # /predict reads the body itself; this tells /openapi.json what it accepts
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
    # Swagger UI and ReDoc load their scripts from a CDN: blank offline, so /docs is our own page
    app = FastAPI(
        title="digit-recognizer",
        version=__version__,
        summary="Predict digits.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.predictor = predictor
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

    def infer(self, images: np.ndarray, names: list[str], with_image: bool) -> dict:
        probas = self.forward(images)  # (N,10); one pass, perhaps shared with other requests
        predictions = [pred.to_dict() for pred in to_predictions(probas, names)]
        if with_image:  # the 28×28 list is a third of the reply's cost: API clients may skip it
            for pred, image in zip(predictions, images, strict=True):
                pred["image"] = image[0].tolist()
        return {"predictions": predictions}

    def uploads(self, files: list[tuple[str, bytes]], with_image: bool) -> dict:
        images = mnist_from_uploads(files, self.limits.max_pixels)
        return self.infer(images, [name for name, _ in files], with_image)

    def json(self, body: bytes, with_image: bool) -> dict:
        images = mnist_from_json(parse_json(body), self.limits.max_images)
        names = [f"images[{i}]" for i in range(len(images))]
        return self.infer(images, names, with_image)


API_PAGE = """<!doctype html><meta charset="utf-8"><title>digit-recognizer API</title>
<h1>digit-recognizer API</h1>
<p>Swagger UI is off: it loads its scripts from a CDN and shows a blank page offline.
The OpenAPI schema is at <a href="/openapi.json">/openapi.json</a> (any OpenAPI viewer or
client generator reads it); the project's docs/serving.md has curl examples.</p>
<ul><li>POST /predict: image files (multipart, field <code>files</code>) or 28×28 grey values
(JSON); <code>?image=false</code> leaves out the 28×28 image in the reply</li>
<li>GET /health: ready, and what is loaded</li><li>GET /info: runs, accuracy, TTA, limits</li>
</ul><p><a href="/">the drawing page</a></p>"""


def _loaded(predictor: Predictor) -> dict:
    """What is in memory and where it came from, checked now: a run folder deleted while serving
    is reported gone (the models it held still answer, from memory)."""
    runs = [str(r) for r in predictor.runs]
    return {"loaded_from": runs, "gone_from_disk": [r for r in runs if not Path(r).is_dir()]}


def _add_routes(app, predictor: Predictor, answers: _Answers, info: dict, limits: Limits):
    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():
        return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")

    @app.get("/docs", include_in_schema=False)
    def docs():
        return HTMLResponse(API_PAGE)

    @app.get("/health")
    def health() -> dict:
        """Ready once the models are loaded (the app only exists after that), and what is loaded:
        the models in memory and the run folders they came from, those gone since named."""
        return {
            "status": "ready",
            "device": str(predictor.device),
            "models": len(predictor.models),
            **_loaded(predictor),
        }

    @app.get("/info")
    def about() -> dict:
        """The runs in memory (loaded at start-up; ``on_disk`` is checked now), their validation
        accuracy, how they combine, the TTA, the latest submission's choices, the limits."""
        runs = [
            {**run, "on_disk": Path(run["loaded_from"]).is_dir()} if "loaded_from" in run else run
            for run in info.get("runs", [])
        ]
        return {**info, "runs": runs}

    @app.post("/predict", openapi_extra=PREDICT_BODY)
    async def predict(request: Request, image: bool = True) -> dict:
        """Image files (multipart) or 28×28 grey values (JSON) -> one prediction per image, with
        the 28×28 image the models saw unless ``image=false``."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            files = await read_uploads(request, limits)
            if not files:
                raise BadInput(422, "no image in the request: send one or more files")
            return await run_in_threadpool(answers.uploads, files, image)
        if kind == "application/json":
            body = await request.body()
            return await run_in_threadpool(answers.json, body, image)
        raise BadInput(
            415, "send image files as multipart/form-data, or grey values as application/json"
        )
