// The palix serve page: images + prompt (+ few-shot examples) -> POST /api/stream, the answer
// streamed token by token, detected boxes drawn over the first query image.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { images: [], controller: null, info: null };

function setStatus(phase, text) {
  document.body.dataset.phase = phase;  // idle | streaming | done | error (tests wait on it)
  $("status").textContent = text || "";
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`could not read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

async function setQueryImages(files) {
  showError("");
  state.images = await Promise.all(Array.from(files).map(async (file) => (
    { name: file.name, dataUrl: await readAsDataURL(file) })));
  const thumbs = $("thumbs");
  thumbs.replaceChildren(...state.images.map((image) => {
    const img = document.createElement("img");
    img.src = image.dataUrl;
    img.title = image.name;
    return img;
  }));
  clearBoxes();
  $("stage").hidden = state.images.length === 0;
  if (state.images.length) $("preview").src = state.images[0].dataUrl;
}

function clearBoxes() {
  $("overlay").replaceChildren();
  $("box-list").replaceChildren();
}

// Boxes are normalised (ymin, xmin, ymax, xmax) of the stretched model input, so they map onto
// the original image by its own width and height.
function drawBoxes(boxes) {
  clearBoxes();
  const preview = $("preview");
  const width = preview.naturalWidth, height = preview.naturalHeight;
  const overlay = $("overlay");
  overlay.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const svg = "http://www.w3.org/2000/svg";
  for (const box of boxes) {
    const rect = document.createElementNS(svg, "rect");
    rect.setAttribute("x", box.xmin * width);
    rect.setAttribute("y", box.ymin * height);
    rect.setAttribute("width", (box.xmax - box.xmin) * width);
    rect.setAttribute("height", (box.ymax - box.ymin) * height);
    rect.dataset.label = box.label;
    const label = document.createElementNS(svg, "text");
    label.setAttribute("x", box.xmin * width);
    label.setAttribute("y", box.ymin * height);
    label.setAttribute("dominant-baseline", "hanging");
    label.setAttribute("font-size", Math.max(10, height / 16));
    label.textContent = box.label;
    overlay.append(rect, label);
    const item = document.createElement("li");
    const coords = [box.ymin, box.xmin, box.ymax, box.xmax].map((c) => c.toFixed(3)).join(", ");
    item.textContent = `${box.label}: ymin, xmin, ymax, xmax = ${coords}`;
    $("box-list").append(item);
  }
}

function addExample() {
  const item = $("example-template").content.firstElementChild.cloneNode(true);
  item.querySelector(".example-image").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    item.dataset.image = file ? await readAsDataURL(file) : "";
    const thumb = item.querySelector(".example-thumb");
    thumb.hidden = !file;
    if (file) thumb.src = item.dataset.image;
  });
  item.querySelector(".remove-example").addEventListener("click", () => item.remove());
  $("examples").append(item);
  return item;
}

function buildRequest() {
  if (!state.images.length) throw new Error("add a query image first (drop it or pick a file)");
  const prompt = $("prompt").value;
  if (!prompt.trim()) throw new Error("type a prompt");
  const request = { images: state.images.map((image) => image.dataUrl), prompt };
  const examples = Array.from(document.querySelectorAll("#examples .example"));
  if (examples.length) {
    request.examples = examples.map((item, i) => {
      if (!item.dataset.image) throw new Error(`example ${i + 1} has no image`);
      return { image: item.dataset.image, prompt: item.querySelector(".example-prompt").value,
               answer: item.querySelector(".example-answer").value };
    });
  }
  const numbers = { "max-new-tokens": "max_new_tokens", temperature: "temperature",
                    "top-k": "top_k", "top-p": "top_p", seed: "seed" };
  for (const [id, field] of Object.entries(numbers)) {
    const value = $(id).value.trim();
    if (value !== "") request[field] = Number(value);
  }
  return request;
}

// Server-sent events over fetch (EventSource cannot POST): frames end with a blank line.
async function* readEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message", data = "";
      for (const line of frame.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      yield { event, data: JSON.parse(data) };
    }
  }
}

async function send() {
  showError("");
  let request;
  try {
    request = buildRequest();
  } catch (error) {
    showError(error.message);
    setStatus("error");
    return;
  }
  clearBoxes();
  $("answer").textContent = "";
  state.controller = new AbortController();
  $("send").disabled = true;
  $("stop").disabled = false;
  setStatus("streaming", "waiting for the model…");
  let tokens = 0;
  try {
    const response = await fetch("/api/stream", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(request), signal: state.controller.signal });
    if (!response.ok) {
      const body = await response.json().catch(() => ({ error: response.statusText }));
      throw new Error(`${response.status}: ${body.error}`);
    }
    for await (const { event, data } of readEvents(response)) {
      if (event === "token") {
        tokens += 1;
        $("answer").textContent = data.text;
        setStatus("streaming", `${tokens} tokens…`);
      } else if (event === "done") {
        $("answer").textContent = data.text;
        drawBoxes(data.boxes);
        const note = data.truncated ? " (stopped at max new tokens)" : "";
        setStatus("done", `${data.tokens.length} tokens${note}; decoded in a batch of ` +
                  `${data.batch_size}, ${(data.queue_s + data.decode_s).toFixed(2)} s`);
      } else if (event === "error") {
        throw new Error(`${data.status}: ${data.error}`);
      }
    }
  } catch (error) {
    if (error.name === "AbortError") setStatus("idle", "stopped");
    else { showError(error.message); setStatus("error"); }
  } finally {
    $("send").disabled = false;
    $("stop").disabled = true;
    state.controller = null;
  }
}

async function loadInfo() {
  const info = await (await fetch("/api/info")).json();
  state.info = info;
  const m = info.model, l = info.limits;
  $("model-info").textContent = `${m.num_images} image slots of ${m.image_size}px, prompts up ` +
      `to ${m.max_input_len} tokens, answers up to ${l.max_new_tokens} tokens`;
  $("max-new-tokens").max = l.max_new_tokens;
  $("max-new-tokens").value = l.max_new_tokens;
  $("temperature").max = l.max_temperature;
  $("top-k").max = l.max_top_k;
  $("add-example").disabled = !m.interleaved_examples;
}

function init() {
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    setQueryImages(event.dataTransfer.files);
  });
  $("image-input").addEventListener("change", (event) => setQueryImages(event.target.files));
  $("add-example").addEventListener("click", addExample);
  $("send").addEventListener("click", send);
  $("prompt").addEventListener("keydown", (event) => { if (event.key === "Enter") send(); });
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  setStatus("idle");
  loadInfo().catch((error) => showError(`could not read /api/info: ${error.message}`));
}

init();
