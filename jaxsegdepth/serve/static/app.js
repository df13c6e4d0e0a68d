// The page: a plate and a scene from files, or the camera in a loop, through the API.
"use strict";

const $ = (id) => document.getElementById(id);
const live = { plateId: null, running: false, frames: 0, since: 0 };

function say(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function postForm(url, form) {
  const response = await fetch(url, { method: "POST", body: form });
  const body = await response.json();
  if (!response.ok) {
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    throw new Error(`${response.status}: ${detail}`);
  }
  return body;
}

async function uploadPlate(blob) {
  const form = new FormData();
  form.append("plate", blob, "plate");
  return (await postForm("/v1/plates", form)).plate_id;
}

async function predict(plateId, scene) {
  const form = new FormData();
  form.append("scene", scene, "scene");
  form.append("plate_id", plateId);
  const start = performance.now();
  const result = await postForm("/v1/predict?output=json", form);
  return { result, latency: performance.now() - start };
}

function image(source) {
  return new Promise((resolve, reject) => {
    const element = new Image();
    element.onload = () => resolve(element);
    element.onerror = () => reject(new Error("an image the browser cannot show"));
    element.src = source;
  });
}

// The scene with its mask in red at half opacity; data-mask-pixels counts the mask's pixels.
async function show(scene, result) {
  const mask = await image(`data:image/png;base64,${result.mask}`);
  const overlay = $("overlay");
  overlay.width = result.width;
  overlay.height = result.height;
  const context = overlay.getContext("2d");
  context.drawImage(scene, 0, 0, result.width, result.height);
  const tint = document.createElement("canvas");
  tint.width = result.width;
  tint.height = result.height;
  const tintContext = tint.getContext("2d", { willReadFrequently: true });
  tintContext.drawImage(mask, 0, 0);
  const pixels = tintContext.getImageData(0, 0, tint.width, tint.height);
  let count = 0;
  for (let i = 0; i < pixels.data.length; i += 4) {
    const on = pixels.data[i] > 127;
    count += on;
    pixels.data.set(on ? [255, 0, 0, 128] : [0, 0, 0, 0], i);
  }
  tintContext.putImageData(pixels, 0, 0);
  context.drawImage(tint, 0, 0);
  overlay.dataset.maskPixels = String(count);
  $("depth").src = result.depth ? `data:image/png;base64,${result.depth}` : "";
  $("cutout").src = `data:image/png;base64,${result.cutout}`;
  $("batch").textContent = result.batch_size;
}

function count(latency) {
  live.frames += 1;
  const seconds = (performance.now() - live.since) / 1000;
  $("frames").textContent = live.frames;
  $("fps").textContent = seconds > 0 ? (live.frames / seconds).toFixed(1) : "-";
  $("latency").textContent = latency.toFixed(0);
}

async function predictFiles() {
  const plate = $("plate-file").files[0];
  const scene = $("scene-file").files[0];
  if (!plate || !scene) return say("pick a plate and a scene first", true);
  try {
    say("predicting");
    live.frames = 0;
    live.since = performance.now();
    const { result, latency } = await predict(await uploadPlate(plate), scene);
    await show(await image(URL.createObjectURL(scene)), result);
    count(latency);
    say(`done: ${result.width}x${result.height}, registration ${result.alignment?.status ?? "off"}`);
  } catch (error) {
    say(error.message, true);
  }
}

function grab() {
  const video = $("video");
  const frame = document.createElement("canvas");
  frame.width = video.videoWidth;
  frame.height = video.videoHeight;
  frame.getContext("2d").drawImage(video, 0, 0);
  return new Promise((resolve) => frame.toBlob((blob) => resolve({ frame, blob }), "image/jpeg", 0.85));
}

async function startCamera() {
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 320, height: 240 } });
    $("video").srcObject = stream;
    await $("video").play();
    $("camera-plate").disabled = false;
    say("camera on: take the plate when the scene is empty");
  } catch (error) {
    say(`camera: ${error.message}`, true);
  }
}

// One frame in flight at a time: the loop runs at the rate the server sustains.
async function goLive() {
  try {
    live.plateId = await uploadPlate((await grab()).blob);
  } catch (error) {
    return say(error.message, true);
  }
  live.running = true;
  live.frames = 0;
  live.since = performance.now();
  $("camera-stop").disabled = false;
  say("live");
  while (live.running) {
    const { frame, blob } = await grab();
    try {
      const { result, latency } = await predict(live.plateId, blob);
      await show(frame, result);
      count(latency);
    } catch (error) {
      say(error.message, true);
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
}

function stop() {
  live.running = false;
  $("camera-stop").disabled = true;
  say("stopped");
}

$("predict-files").addEventListener("click", predictFiles);
$("camera-start").addEventListener("click", startCamera);
$("camera-plate").addEventListener("click", goLive);
$("camera-stop").addEventListener("click", stop);
