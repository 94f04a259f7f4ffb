// The drawing page: draw (mouse, pen or touch), send the canvas as a PNG to /predict, show the
// answer. Plain JavaScript, no build step and nothing fetched from elsewhere: it works offline.
// The answer area always matches what is on the pad: a drawing or an uploaded photo and its
// answer, nothing after Clear, an error in place of the answer, dimmed while a new one comes.
"use strict";

const pad = document.getElementById("pad");
const ink = pad.getContext("2d");
const result = document.getElementById("result");
const statusLine = document.getElementById("status");
const PEN_WIDTH = 20; // px on the 280 px canvas: about MNIST's stroke once scaled to 28 px
const PREDICT_DELAY = 250; // ms after lifting the pen, so that a multi-stroke digit is one request

let drawing = false;
let dirty = false; // something drawn since the last clear
let timer = null;
let latest = 0; // id of the newest request; older answers arriving late are dropped
let shown = null; // the uploaded photo now on the pad (Predict sends it again), or null
const upload = document.getElementById("upload");

function clearPad() {
  ink.fillStyle = "#fff"; // dark ink on white paper; the server's preprocessing inverts it
  ink.fillRect(0, 0, pad.width, pad.height);
  dirty = false;
}

function at(event) {
  // pointer position in canvas pixels, whatever size CSS gives the canvas
  const box = pad.getBoundingClientRect();
  return [
    ((event.clientX - box.left) * pad.width) / box.width,
    ((event.clientY - box.top) * pad.height) / box.height,
  ];
}

pad.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  clearTimeout(timer);
  pad.setPointerCapture(event.pointerId);
  drawing = true;
  dirty = true;
  shown = null; // drawing over a photo: the pad as it now looks is what to predict
  if (result.dataset.state === "done") show("drawing", "Drawing… the answer comes as you lift it.");
  const [x, y] = at(event);
  ink.strokeStyle = "#000";
  ink.lineWidth = PEN_WIDTH;
  ink.lineCap = "round";
  ink.lineJoin = "round";
  ink.beginPath();
  ink.moveTo(x, y);
  ink.lineTo(x, y); // a tap leaves a dot
  ink.stroke();
});

pad.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  const [x, y] = at(event);
  ink.lineTo(x, y);
  ink.stroke();
});

function endStroke() {
  if (!drawing) return;
  drawing = false;
  clearTimeout(timer);
  timer = setTimeout(predictDrawing, PREDICT_DELAY);
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

function predictDrawing() {
  if (shown) {
    send(shown, shown.name); // the uploaded photo on the pad, at its full resolution
    return;
  }
  if (!dirty) {
    showError("Draw a digit or upload a photo first.");
    return;
  }
  pad.toBlob((blob) => send(blob, "drawing.png"), "image/png");
}

async function send(blob, name) {
  const id = ++latest;
  result.dataset.request = id; // request and answer numbers let a test wait for a fresh answer
  const form = new FormData();
  form.append("files", blob, name);
  show("busy", "Predicting…");
  try {
    const response = await fetch("/predict", { method: "POST", body: form });
    const body = await response.json();
    if (id !== latest) return; // a newer request, or Clear, came since
    result.dataset.answered = id;
    if (!response.ok) {
      showError(body.detail || `error ${response.status}`);
      return;
    }
    render(body.predictions[0]);
  } catch (error) {
    if (id !== latest) return;
    result.dataset.answered = id;
    showError(`no answer from the server (${error.message})`);
  }
}

function show(state, message) {
  result.dataset.state = state;
  statusLine.textContent = message;
}

function showError(message) {
  // the error takes the answer's place: no earlier digit stays on screen beside it
  resetAnswer();
  show("error", message);
}

function resetAnswer() {
  document.getElementById("digit").textContent = "–";
  document.getElementById("confidence").textContent = "–";
  document.getElementById("bars").replaceChildren();
  const seen = document.getElementById("seen");
  seen.getContext("2d").clearRect(0, 0, seen.width, seen.height);
}

function percent(p) {
  return `${(100 * p).toFixed(1)}%`;
}

function render(prediction) {
  document.getElementById("digit").textContent = prediction.digit;
  document.getElementById("confidence").textContent = percent(prediction.confidence);
  drawSeen(prediction.image);
  const bars = prediction.probabilities.map((p, digit) => {
    const bar = document.createElement("div");
    bar.className = digit === prediction.digit ? "bar top" : "bar";
    bar.title = `${digit}: ${percent(p)}`;
    bar.innerHTML =
      `<div class="track"><div class="fill" style="height:${percent(p)}"></div></div>` +
      `<span>${digit}</span>`;
    return bar;
  });
  document.getElementById("bars").replaceChildren(...bars);
  show("done", `${prediction.source}: ${prediction.digit} at ${percent(prediction.confidence)}`);
}

function drawSeen(rows) {
  // the 28×28 grey image the model saw, white ink on black as in MNIST
  const seen = document.getElementById("seen");
  const pixels = seen.getContext("2d").createImageData(28, 28);
  rows.flat().forEach((v, i) => {
    pixels.data.set([v, v, v, 255], 4 * i);
  });
  seen.getContext("2d").putImageData(pixels, 0, 0);
}

async function showPhoto(file) {
  // the uploaded photo on the pad, whole and centred on white, so that the answer beside it is
  // about what is on screen; a file the browser cannot draw leaves the pad blank
  clearPad();
  try {
    const photo = await createImageBitmap(file);
    const scale = Math.min(pad.width / photo.width, pad.height / photo.height);
    const [w, h] = [photo.width * scale, photo.height * scale];
    ink.drawImage(photo, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
    photo.close();
  } catch (error) {
    // not an image the browser reads: the server's answer (an error) says what is wrong
  }
}

document.getElementById("clear").addEventListener("click", () => {
  clearTimeout(timer);
  latest++; // an answer still on its way is about what was just cleared: drop it
  shown = null;
  upload.value = "";
  clearPad();
  resetAnswer();
  show("empty", "Cleared. Draw a digit.");
});
document.getElementById("predict").addEventListener("click", predictDrawing);
upload.addEventListener("change", async () => {
  const file = upload.files[0];
  upload.value = ""; // choosing the same file again is a new change, and sends again
  if (!file) return;
  clearTimeout(timer);
  shown = file;
  await showPhoto(file);
  send(file, file.name);
});

function describeModels(info) {
  // which models answer, how they combine, the TTA here, and what the submission used
  const runs = info.runs.map((run) => {
    const name = run.model || run.name;
    return run.cv_accuracy == null ? name : `${name} (holdout ${percent(run.cv_accuracy)})`;
  });
  const parts = [`${info.runs.length} model(s): ${runs.join(", ")}`, info.ensemble];
  if (info.tta != null) parts.push(`TTA ${info.tta}`);
  const pipeline = info.pipeline;
  if (pipeline) {
    const accuracy = pipeline.cv_accuracy;
    const oof = accuracy == null ? "" : `, out-of-fold ${percent(accuracy)}`;
    const same = pipeline.tta === info.tta ? "" : ` (TTA ${pipeline.tta}; here TTA ${info.tta})`;
    parts.push(`the submission: ${pipeline.method}${oof}${same}`);
  }
  parts.push(`digit-utils ${info.version}`);
  return parts.join(" · ");
}

fetch("/info")
  .then((response) => response.json())
  .then((info) => {
    document.getElementById("models").textContent = describeModels(info);
  })
  .catch(() => {});

clearPad();
