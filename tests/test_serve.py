"""`digits serve`: the API through FastAPI's TestClient, every bad input, the run selection, a
clean stop on SIGTERM/SIGINT, and the drawing page driven by a real headless Chromium."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from conftest import REPO, sample_arrays, train_tiny
from digit_utils import cli, paths
from digit_utils.serve import predictor as predictor_module
from digit_utils.serve.app import Batcher, create_app
from digit_utils.serve.inputs import Limits
from digit_utils.serve.launch import DEFAULT_SOURCE, describe
from digit_utils.serve.predictor import Predictor, is_clean_drawing, preprocess

# fast_cnn for 3 epochs on 1,800 sample rows: ~96% in a few CPU seconds. No label smoothing, so
# that the digits it knows come out with confidence near 1.
RECIPE = {"model": "fast_cnn", "epochs": 3, "batch_size": 64, "lr": 3e-3, "label_smoothing": 0.0}
SMALL = Limits(max_images=8, max_bytes=300_000, max_pixels=1_000_000)  # cheap to exceed
CANVAS, PEN = 280, 20  # the page's drawing buffer and pen width (static/serve.js)


@pytest.fixture(scope="module")
def world(tmp_path_factory, sample_dir):
    """A tiny trained run, its Predictor, and sample test digits it gets right with confidence."""
    images, labels, test_images, test_labels = sample_arrays(sample_dir)
    run = tmp_path_factory.mktemp("serve") / "fast"
    train_tiny(RECIPE, images, labels, run, seed=0, val_fraction=0.1, name="fast")
    predictor = Predictor.from_run(run, device="cpu")
    proba = predictor.predict_images(test_images[:300])
    sure = np.nonzero((proba.argmax(1) == test_labels[:300]) & (proba.max(1) > 0.95))[0]
    assert len(sure) >= 20, "the tiny run should be sure of many test digits"
    return {
        "run": run,
        "predictor": predictor,
        "digits": test_images[sure],
        "labels": test_labels[sure],
    }


@pytest.fixture(scope="module")
def client(world):
    return TestClient(create_app(world["predictor"], info={"runs": []}, limits=SMALL))


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def photo(digit: np.ndarray) -> np.ndarray:
    """A 28×28 MNIST digit as dark ink on light paper, 8× larger and off-centre."""
    big = np.asarray(Image.fromarray(digit).resize((224, 224), Image.Resampling.BICUBIC))
    paper = np.full((300, 400), 230, np.uint8)
    paper[40:264, 150:374] = np.minimum(230, 255 - big)
    return paper


def uploads(arrays, names=None) -> list:
    names = names or [f"d{i}.png" for i in range(len(arrays))]
    return [("files", (n, png(a), "image/png")) for n, a in zip(names, arrays, strict=True)]


# --------------------------------------------------------------------------------------------
# The API


def test_health_info_docs_and_page(world, client):
    assert client.get("/health").json() == {
        "status": "ready",
        "device": "cpu",
        "models": 1,
        "loaded_from": [str(world["run"])],
        "gone_from_disk": [],
    }
    info = client.get("/info").json()
    assert info["version"] and info["limits"]["max_images"] == 8
    docs = client.get("/docs")  # Swagger UI would fetch its scripts from a CDN: blank offline
    assert docs.status_code == 200 and "/openapi.json" in docs.text and "://" not in docs.text
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg")
    body = client.get("/openapi.json").json()["paths"]["/predict"]["post"]["requestBody"]
    assert set(body["content"]) == {"multipart/form-data", "application/json"}
    page = client.get("/")
    assert page.status_code == 200 and '<canvas id="pad"' in page.text
    for text in (page.text, *(client.get(f"/static/{f}").text for f in ("serve.js", "serve.css"))):
        assert "//" not in text.replace("// ", "")  # nothing from elsewhere: it works offline
    assert client.get("/static/serve.js").headers["content-type"].startswith("text/javascript")


def test_a_batch_keeps_its_order_and_matches_the_predictor(world, client, tmp_path):
    digits, labels = world["digits"][:6, 0], world["labels"][:6]
    files = [tmp_path / f"{i}.png" for i in range(len(digits))]
    for f, d in zip(files, digits, strict=True):
        f.write_bytes(png(d))
    got = client.post("/predict", files=uploads(digits, [f.name for f in files])).json()
    preds = got["predictions"]
    assert [p["digit"] for p in preds] == labels.tolist()
    assert [p["source"] for p in preds] == [f.name for f in files]
    expected = world["predictor"].predict(files)
    for p, e, d in zip(preds, expected, digits, strict=True):
        assert p["digit"] == e.digit and len(p["probabilities"]) == 10
        np.testing.assert_allclose(p["probabilities"], e.probabilities, atol=1e-5)
        assert p["confidence"] == pytest.approx(max(p["probabilities"]))
        np.testing.assert_array_equal(p["image"], d)  # MNIST-style input is left untouched
    as_json = client.post("/predict", json=digits.tolist()).json()["predictions"]
    np.testing.assert_allclose(
        [p["probabilities"] for p in as_json], [p["probabilities"] for p in preds], atol=1e-6
    )
    one = client.post("/predict", json=digits[0].tolist()).json()["predictions"]
    assert len(one) == 1 and one[0]["digit"] == labels[0] and one[0]["source"] == "images[0]"


def test_concurrent_requests_share_forward_passes_and_each_gets_its_own_rows():
    """While one pass runs, waiting requests queue; the next pass takes them all at once."""
    started, release, sizes = threading.Event(), threading.Event(), []

    def forward(images):
        sizes.append(len(images))
        if len(sizes) == 1:
            started.set()
            assert release.wait(10)  # hold the first pass until the others are queued
        return images.reshape(len(images), -1)[:, :10].astype(np.float32)

    batcher = Batcher(forward, max_batch=64)
    inputs = [np.full((n, 1, 28, 28), i, np.uint8) for i, n in enumerate([1, 2, 3, 1])]
    results = [None] * len(inputs)

    def call(i):
        results[i] = batcher(inputs[i])

    first = threading.Thread(target=call, args=(0,))
    first.start()
    assert started.wait(10)
    others = [threading.Thread(target=call, args=(i,)) for i in (1, 2, 3)]
    for t in others:
        t.start()
    deadline = time.monotonic() + 10
    while len(batcher.queue) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    release.set()
    for t in [first, *others]:
        t.join(10)
    assert sizes == [1, 6]  # two passes for four requests
    for i, got in enumerate(results):
        assert got.shape == (len(inputs[i]), 10) and (got == i).all()


def test_a_failed_pass_fails_every_request_in_it():
    def forward(images):
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        Batcher(forward, max_batch=8)(np.zeros((1, 1, 28, 28), np.uint8))


def test_a_photo_goes_through_the_predictors_preprocessing(world, client):
    paper = photo(world["digits"][1, 0])
    jpeg = io.BytesIO()
    Image.fromarray(paper).convert("RGB").save(jpeg, format="JPEG", quality=92)
    files = [("files", ("photo.jpg", jpeg.getvalue(), "image/jpeg"))]
    (pred,) = client.post("/predict", files=files).json()["predictions"]
    with Image.open(io.BytesIO(jpeg.getvalue())) as img:
        img.load()
        seen = preprocess(img)
    np.testing.assert_array_equal(pred["image"], seen[0])
    assert pred["digit"] == world["labels"][1]


def test_the_image_in_the_reply_is_optional(world, client):
    digit = world["digits"][0, 0]
    with_image = client.post("/predict", files=uploads([digit])).json()["predictions"][0]
    without = client.post("/predict?image=false", files=uploads([digit])).json()["predictions"]
    assert "image" in with_image and "image" not in without[0]
    assert without[0]["probabilities"] == pytest.approx(with_image["probabilities"])
    as_json = client.post("/predict?image=false", json=digit.tolist()).json()["predictions"]
    assert "image" not in as_json[0] and as_json[0]["digit"] == with_image["digit"]


def test_uploads_leave_no_temporary_file_open(world, client):
    """Starlette spools each upload to a temporary file; an unclosed form warns once per request
    (`Unclosed file <SpooledTemporaryFile>`) when the garbage collector finds it."""
    unraisable, hook = [], sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        for _ in range(3):
            client.post("/predict", files=uploads([world["digits"][0, 0]]))
        client.post("/predict", data={"files": "x"}, files=uploads([world["digits"][0, 0]]))
        gc.collect()
    finally:
        sys.unraisablehook = hook
    assert [str(u.exc_value) for u in unraisable] == []


def test_health_and_info_say_what_is_loaded_when_its_folder_is_gone(world, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(world["run"], run)
    info = describe([run], "--run", tta=0)
    app = TestClient(create_app(Predictor.from_run(run, device="cpu"), info=info))
    assert app.get("/info").json()["runs"][0]["on_disk"] is True
    shutil.rmtree(run)
    health = app.get("/health").json()
    assert health["status"] == "ready"  # the models are in memory and still answer
    assert health["loaded_from"] == health["gone_from_disk"] == [str(run)]
    (row,) = app.get("/info").json()["runs"]
    assert row["loaded_from"] == str(run) and row["on_disk"] is False
    assert app.post("/predict", json=world["digits"][0, 0].tolist()).status_code == 200


def test_a_clean_drawing_takes_the_fast_path_to_the_same_image(world, monkeypatch):
    """The page's canvas (one exact white, black strokes) skips the photo's background estimate,
    and comes out as the full preprocessing makes it."""
    strokes, _ = digit_to_draw(world)
    canvas = drawn(strokes)
    assert is_clean_drawing(canvas.astype(np.float32))
    fast = preprocess(canvas)
    monkeypatch.setattr(predictor_module, "is_clean_drawing", lambda gray: False)
    full = preprocess(canvas)
    assert np.abs(fast.astype(int) - full).max() <= 2
    assert not is_clean_drawing(photo(world["digits"][0, 0]).astype(np.float32))


def huge_header_png(side: int) -> bytes:
    """A PNG whose header claims side × side pixels (its data would not fill them)."""
    raw = bytearray(png(np.zeros((8, 8), np.uint8)))
    ihdr = raw[12:29]  # b"IHDR" + 13 bytes of fields
    ihdr[4:12] = struct.pack(">II", side, side)
    raw[12:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(raw)


def one_file(name: str, body: bytes, kind: str = "image/png") -> dict:
    return {"files": [("files", (name, body, kind))]}


def raw(body: bytes, kind: str = "application/json") -> dict:
    return {"content": body, "headers": {"content-type": kind}}


def bad_requests(world) -> list:
    """(request, status, part of the message) for each kind of bad input."""
    digit = world["digits"][0, 0]
    grid = "28×28 array of grey values"
    return [
        (one_file("notes.txt", b"hello", "text/plain"), 415, "notes.txt: not an image"),
        (one_file("empty.png", b""), 422, "empty.png: empty file"),
        ({"files": uploads([np.full((60, 40), 250, np.uint8)])}, 422, "d0.png: blank image"),
        (one_file("cut.png", png(digit)[:60]), 415, "cut.png: truncated or corrupt"),
        (one_file("big.png", huge_header_png(2000)), 413, "big.png: 2000×2000 image over the"),
        (one_file("bomb.png", huge_header_png(50_000)), 413, "bomb.png: image over the limit"),
        ({"files": uploads([np.zeros((1200, 1000), np.uint8)])}, 413, "of 1,000,000 pixels"),
        (
            {"files": uploads([digit] * 9)},
            413,
            "too many images: 9 in one request, the limit is 8",
        ),
        ({"data": {"files": "x"}, "files": uploads([digit])}, 422, "'files' is not a file upload"),
        ({"json": [[1, 2], [3, 4]]}, 422, "got shape [2, 2]"),
        ({"json": [[0] * 28] * 27 + [[0] * 5]}, 422, grid),
        ({"json": [["a"] * 28] * 28}, 422, grid),
        ({"json": {"image": digit.tolist()}}, 422, grid),
        ({"json": (digit.astype(int) + 100).tolist()}, 422, "must be numbers in 0..255"),
        ({"json": [[0] * 28] * 28}, 422, "images[0]: blank image"),
        ({"json": [digit.tolist()] * 9}, 413, "too many images: 9"),
        (raw(b"{not json"), 400, "not valid JSON"),
        (raw(b"[" * 100_000 + b"]" * 100_000), 400, "nested too deeply"),
        ({"json": json.loads("[" * 900 + "]" * 900)}, 422, grid),
        (raw(b"hello", "text/plain"), 415, "multipart/form-data"),
        (raw(b"x" * 400_000), 413, "request body over the limit of 300,000 bytes"),
    ]


def test_every_bad_input_is_a_4xx_naming_the_problem(world, client):
    for kwargs, status, message in bad_requests(world):
        response = client.post("/predict", **kwargs)
        assert response.status_code == status, (kwargs.keys(), response.text)
        assert message in response.json()["detail"], response.text


def test_a_streamed_body_is_cut_off_at_the_limit(client):
    """No Content-Length: the server counts the bytes as they arrive and stops at the limit."""
    reads, sent = [], []

    async def receive():  # an endless body in 10 kB chunks
        reads.append(1)
        return {"type": "http.request", "body": b"[" * 10_000, "more_body": True}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/predict", "raw_path": b"/predict", "root_path": "",
        "query_string": b"", "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }  # fmt: skip
    asyncio.run(client.app(scope, receive, send))
    assert sent[0]["status"] == 413
    assert b"over the limit of 300,000 bytes" in sent[1]["body"]
    assert len(reads) == 31  # 300,000 bytes are 30 chunks; the 31st is one too many


# --------------------------------------------------------------------------------------------
# Which runs `digits serve` loads


def test_no_trained_run_says_how_to_train_one(capsys):
    assert cli.main(["serve"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no trained run") and "make pipeline" in err


def test_a_busy_port_or_a_bad_address_is_one_line_before_any_model_loads(world, capsys):
    run = ["--run", str(world["run"]), "--device", "cpu"]  # would load, were the port not checked
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cases = [
            (
                ["--port", str(port)],
                f"--port {port}: cannot listen there (Address already in use)",
            ),
            (["--port", "70000"], "--port 70000: a port is a number from 0 to 65535"),
            (["--host", "999.1.1.1"], "--host 999.1.1.1: not an address to listen on"),
        ]
        for args, named in cases:
            capsys.readouterr()
            assert cli.main(["serve", *args, *run]) == 1
            err = capsys.readouterr().err
            assert err.startswith("error: --") and named in err and err.count("\n") == 1, err


def test_info_describes_the_runs_and_the_pipelines_choice(world):
    accuracy = json.loads((world["run"] / "metrics.json").read_text())["final_val_acc"]
    info = describe([world["run"]], "--run", tta=2)
    assert info["ensemble"] == "single model" and info["tta"] == 2 and "pipeline" not in info
    assert info["runs"] == [
        {
            "name": "fast",
            "loaded_from": str(world["run"]),
            "model": "fast_cnn",
            "cv_accuracy": accuracy,
        }
    ]
    submission = {"method": "stack", "cv_accuracy": 0.9, "tta": 4}
    (paths.outputs_dir() / "submission.json").parent.mkdir(parents=True)
    (paths.outputs_dir() / "submission.json").write_text(json.dumps(submission))
    info = describe([world["run"], world["run"]], DEFAULT_SOURCE, tta=0)
    assert info["ensemble"] == "soft average" and info["pipeline"] == submission


# --------------------------------------------------------------------------------------------
# A real server process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("sig, named", [(signal.SIGTERM, True), (signal.SIGINT, False)])
def test_the_server_stops_cleanly_on_a_signal(world, sig, named):
    """A real `digits serve` process: with --run and two worker processes, or with the run list
    a pipeline recorded and one process."""
    run = world["run"]
    if not named:  # outputs/ as 04_train_cnn leaves it (the test's own project root)
        run = paths.outputs_dir() / "runs" / "fast"
        shutil.copytree(world["run"], run)
        (paths.outputs_dir() / "04_train_cnn").mkdir()
        listing = {"models": {"fast-s0": ["runs/fast"]}}
        (paths.outputs_dir() / "04_train_cnn" / paths.RUN_LIST).write_text(json.dumps(listing))
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "digit_utils.cli",
        "serve",
        "--port",
        str(port),
        "--device",
        "cpu",
        "--workers",
        "2" if named else "1",
    ]
    proc = subprocess.Popen(
        [*cmd, *(["--run", str(run)] if named else [])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        for _ in range(4):  # a few uploads: their temporary files must be closed, not warned of
            files = uploads([world["digits"][0, 0]])
            assert httpx.post(f"http://127.0.0.1:{port}/predict", files=files).status_code == 200
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in out + err and "Unclosed" not in err
    assert len([line for line in (out + err).splitlines() if "POST /predict" in line]) == 4
    source = "--run" if named else DEFAULT_SOURCE
    assert f"serving 1 run(s) ({source}): {run} on cpu" in err
    assert "Finished server process" in err and err.rstrip().endswith("stopped")


# --------------------------------------------------------------------------------------------
# The drawing page in a real browser

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def find_chromium() -> str | None:
    candidates = [
        os.environ.get("DIGITS_CHROMIUM"),
        "chromium",
        "chromium-browser",
        "google-chrome",
    ]
    return next((shutil.which(c) for c in candidates if c and shutil.which(c)), None)


@pytest.fixture(scope="module")
def page_url(world):
    """A real uvicorn server in a thread on a free loopback port."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    info = {
        "runs": [{"name": "fast", "model": "fast_cnn", "cv_accuracy": 0.961}],
        "ensemble": "single model",
        "tta": 0,
        "pipeline": {"method": "average", "cv_accuracy": 0.9934, "tta": 2},
    }
    app = create_app(world["predictor"], info=info)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    exe = find_chromium()
    if exe is None:
        pytest.skip(
            "no Chromium found: `apt-get install -y chromium chromium-driver` (as root; .ci/run "
            "does this) or set DIGITS_CHROMIUM=/path/to/chrome"
        )
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def row_strokes(digit: np.ndarray) -> list[tuple[float, float, float, float]]:
    """The ink of a 28×28 digit as horizontal strokes, one per run of dark pixels in each row,
    in canvas pixels: ``(x0, y, x1, y)``."""
    scale = CANVAS / 28
    strokes = []
    for row, values in enumerate(digit > 127):
        cols = np.flatnonzero(values)
        for run in np.split(cols, np.flatnonzero(np.diff(cols) > 1) + 1) if len(cols) else []:
            y = (row + 0.5) * scale
            strokes.append(((run[0] + 0.5) * scale, y, (run[-1] + 0.5) * scale, y))
    return strokes


def drawn(strokes) -> np.ndarray:
    """What the page's canvas holds after those strokes: black round-capped lines on white."""
    img = Image.new("L", (CANVAS, CANVAS), 255)
    pen = ImageDraw.Draw(img)
    for x0, y0, x1, y1 in strokes:
        pen.line([(x0, y0), (x1, y1)], fill=0, width=PEN)
        for x, y in ((x0, y0), (x1, y1)):
            pen.ellipse([x - PEN / 2, y - PEN / 2, x + PEN / 2, y + PEN / 2], fill=0)
    return np.asarray(img)


def digit_to_draw(world) -> tuple[list, int]:
    """A real MNIST digit whose row-stroke drawing the model still reads right, with confidence."""
    for digit, label in zip(world["digits"][:, 0], world["labels"], strict=True):
        strokes = row_strokes(digit)
        pred = world["predictor"].predict(drawn(strokes))
        if pred.digit == label and pred.confidence > 0.9:
            return strokes, int(label)
    raise AssertionError("no sample digit survives being drawn as row strokes")


def answered_after(page, before: int) -> None:
    """Wait until the page shows the answer to a request it sent after request number `before`."""
    page.wait_for_function(
        "b => { const r = document.getElementById('result');"
        " return r.dataset.state === 'done' && +r.dataset.answered > b; }",
        arg=before,
        timeout=15_000,
    )


def request_count(page) -> int:
    return int(page.get_attribute("#result", "data-request") or 0)


def test_drawing_a_digit_shows_the_right_answer(world, browser, page_url, tmp_path):
    strokes, label = digit_to_draw(world)
    page = browser.new_page(viewport={"width": 900, "height": 640})
    page.goto(page_url)
    page.wait_for_function("document.getElementById('models').textContent.includes('fast')")
    models = page.inner_text("#models")  # which models, how they combine, the TTA here and there
    for part in ("fast_cnn (holdout 96.1%)", "single model", "TTA 0", "out-of-fold 99.3%"):
        assert part in models, models
    assert "(TTA 2; here TTA 0)" in models
    box = page.locator("#pad").bounding_box()
    scale = box["width"] / CANVAS  # CSS pixels per canvas pixel
    for x0, y0, x1, y1 in strokes:
        page.mouse.move(box["x"] + x0 * scale, box["y"] + y0 * scale)
        page.mouse.down()
        page.mouse.move(box["x"] + x1 * scale, box["y"] + y1 * scale, steps=3)
        page.mouse.up()
    answered_after(page, 0)  # lifting the pen alone asks for a prediction
    before = request_count(page)  # every request from here on sees the whole drawing
    page.click("#predict")
    answered_after(page, before)
    assert page.inner_text("#digit") == str(label)
    assert page.inner_text("#confidence").endswith("%")
    assert page.locator("#bars .bar").count() == 10
    assert page.locator("#bars .bar.top span").inner_text() == str(label)
    ink = page.evaluate(
        "Array.from(document.getElementById('seen').getContext('2d')"
        ".getImageData(0, 0, 28, 28).data).filter((v, i) => i % 4 === 0 && v > 127).length"
    )
    assert 20 < ink < 400  # the 28×28 image the model saw is shown, with a digit's worth of ink
    shot = tmp_path / "serve_page.png"
    page.screenshot(path=shot, full_page=True)
    assert Image.open(shot).size[0] >= 900
    if os.environ.get("DIGITS_UPDATE_FIGURES"):  # regenerate docs/serving.md's screenshot
        shutil.copy(shot, REPO / "docs" / "figures" / "serve_page.png")
    before = request_count(page)
    page.mouse.move(box["x"] + 20, box["y"] + 20)  # a new stroke: the answer is dimmed...
    page.mouse.down()
    assert page.get_attribute("#result", "data-state") == "drawing"
    page.mouse.up()
    page.click("#clear")  # ...and Clear, before that stroke's answer came, empties it all
    assert_no_answer(page, "empty")
    assert pad_ink(page) == 0
    page.wait_for_timeout(600)  # the cleared stroke's answer, had it been sent, is dropped
    assert_no_answer(page, "empty")
    assert request_count(page) <= before + 1
    page.click("#predict")  # nothing on the pad: an error in place of the answer
    assert_no_answer(page, "error")
    assert "Draw a digit" in page.inner_text("#status")
    assert not page.is_visible("#digit")
    page.close()


def assert_no_answer(page, state: str) -> None:
    """No digit, confidence, bars or 28×28 image on screen: nothing stale."""
    assert page.get_attribute("#result", "data-state") == state
    assert page.text_content("#digit") == page.text_content("#confidence") == "–"
    assert page.locator("#bars .bar").count() == 0
    seen = page.evaluate(
        "Array.from(document.getElementById('seen').getContext('2d')"
        ".getImageData(0, 0, 28, 28).data).filter(v => v > 0).length"
    )
    assert seen == 0


def pad_ink(page) -> int:
    """Pixels of the drawing pad that are not white paper."""
    return page.evaluate(
        "Array.from(document.getElementById('pad').getContext('2d')"
        ".getImageData(0, 0, 280, 280).data).filter((v, i) => i % 4 === 0 && v < 200).length"
    )


def test_uploading_a_photo_and_phone_width(world, browser, page_url, tmp_path):
    path = tmp_path / "my digit.jpg"
    Image.fromarray(photo(world["digits"][2, 0])).save(path, quality=90)
    page = browser.new_page(viewport={"width": 360, "height": 740})  # a phone
    failed = []
    page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
    page.goto(page_url)
    page.wait_for_function("document.getElementById('models').textContent.includes('fast')")
    strokes, _ = digit_to_draw(world)  # an earlier drawing, which the photo replaces
    box = page.locator("#pad").bounding_box()
    scale = box["width"] / CANVAS
    x0, y0, x1, y1 = strokes[0]
    page.mouse.move(box["x"] + x0 * scale, box["y"] + y0 * scale)
    page.mouse.down()
    page.mouse.move(box["x"] + x1 * scale, box["y"] + y1 * scale, steps=3)
    page.mouse.up()
    answered_after(page, 0)
    before = request_count(page)
    page.set_input_files("#upload", str(path))
    answered_after(page, before)
    assert page.inner_text("#digit") == str(world["labels"][2])
    assert "my digit.jpg" in page.inner_text("#status")
    # the pad shows the photo (its ink, where the photo has it), not the earlier drawing
    shown = np.asarray(
        page.evaluate(
            "Array.from(document.getElementById('pad').getContext('2d')"
            ".getImageData(0, 0, 280, 280).data).filter((v, i) => i % 4 === 0)"
        ),
        np.uint8,
    ).reshape(CANVAS, CANVAS)
    expected = np.asarray(Image.open(path).convert("L").resize((CANVAS, 210)))
    top = (CANVAS - 210) // 2  # a 400×300 photo fits the pad as 280×210, centred
    assert np.abs(shown[top : top + 210].astype(int) - expected).mean() < 12
    before = request_count(page)
    page.click("#predict")  # Predict now asks about the photo on screen, by its name
    answered_after(page, before)
    assert "my digit.jpg" in page.inner_text("#status")
    assert page.inner_text("#digit") == str(world["labels"][2])
    before = request_count(page)
    page.set_input_files("#upload", str(path))  # the same file again sends again
    answered_after(page, before)
    assert failed == []  # the favicon included
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    box = page.locator("#pad").bounding_box()
    assert 250 <= box["width"] <= 360 - box["x"]  # big enough to draw on, inside the screen
    page.set_input_files(
        "#upload", {"name": "notes.png", "mimeType": "image/png", "buffer": b"hi"}
    )
    page.wait_for_function("document.getElementById('result').dataset.state === 'error'")
    assert "not an image" in page.inner_text("#status")
    assert_no_answer(page, "error")  # the photo's answer is gone with it
    assert pad_ink(page) == 0  # and the photo: the file shown is one the browser cannot draw
    page.close()
