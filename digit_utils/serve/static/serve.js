// The drawing page: draw (mouse, pen or touch), send the canvas as a PNG to /predict, show the
// answer. Plain JavaScript, no build step and nothing fetched from elsewhere: it works offline.
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
  if (!dirty) {
    show("error", "Draw a digit first.");
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
    if (id !== latest) return;
    result.dataset.answered = id;
    if (!response.ok) {
      show("error", body.detail || `error ${response.status}`);
      return;
    }
    render(body.predictions[0]);
  } catch (error) {
    if (id === latest) show("error", `no answer from the server (${error.message})`);
  }
}

function show(state, message) {
  result.dataset.state = state;
  statusLine.textContent = message;
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

document.getElementById("clear").addEventListener("click", () => {
  clearTimeout(timer);
  clearPad();
  show("empty", "Cleared. Draw a digit.");
});
document.getElementById("predict").addEventListener("click", predictDrawing);
document.getElementById("upload").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (file) send(file, file.name);
});

fetch("/info")
  .then((response) => response.json())
  .then((info) => {
    const names = info.runs.map((run) => run.model || run.name).join(", ");
    document.getElementById("models").textContent =
      `${info.runs.length} model(s): ${names} · ${info.ensemble} · digit-utils ${info.version}`;
  })
  .catch(() => {});

clearPad();
