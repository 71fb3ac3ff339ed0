// The kws browser demo: microphone -> AudioWorklet -> WebSocket -> kws serve -> this page.
// Protocol (see kws/demo/server.py): a JSON hello {type, sample_rate, format}, then binary
// little-endian float32 PCM frames; the server answers with ready, posteriors and event JSON.
"use strict";

const BLOCK_SECONDS = 0.05; // audio per WebSocket frame: 2400 samples (9.6 kB) at 48 kHz
const MAX_BUFFERED_BYTES = 1 << 20; // drop audio rather than queue more than this unsent
const METER_SPAN_DB = 60;
const MAX_EVENTS = 50;

const $ = (selector) => document.querySelector(selector);
let session = null;

function setStatus(text, state) {
  $("#status").textContent = text;
  if (state) document.body.dataset.state = state;
}

function setBar(row, fraction) {
  row.querySelector(".fill").style.width = `${Math.max(0, Math.min(1, fraction)) * 100}%`;
}

function buildBars(labels, thresholds) {
  const bars = $("#bars");
  bars.replaceChildren();
  labels.forEach((label, i) => {
    const row = document.createElement("div");
    row.className = thresholds[i] === null ? "row other" : "row";
    row.dataset.label = label;
    row.innerHTML = '<span class="name"></span><div class="track"><div class="fill"></div></div>' +
      '<span class="value">0.00</span>';
    row.querySelector(".name").textContent = label;
    if (thresholds[i] !== null) {
      const tick = document.createElement("div");
      tick.className = "tick";
      tick.style.left = `${thresholds[i] * 100}%`;
      tick.title = `threshold ${thresholds[i]}`;
      row.querySelector(".track").append(tick);
    }
    bars.append(row);
  });
}

function showPosteriors(message) {
  const rows = $("#bars").children;
  message.values.forEach((p, i) => {
    if (!rows[i]) return;
    setBar(rows[i], p);
    rows[i].querySelector(".value").textContent = p.toFixed(2);
  });
  const level = message.level_dbfs;
  $("#level").dataset.zone = level > -3 ? "clipping" : level > -12 ? "loud" : "ok";
  setBar($("#level"), (level + METER_SPAN_DB) / METER_SPAN_DB);
  $("#level .value").textContent = `${level.toFixed(1)} dBFS`;
}

function showEvent(event) {
  const clock = new Date().toLocaleTimeString();
  const item = document.createElement("li");
  item.dataset.keyword = event.keyword;
  item.dataset.end = event.end_s;
  item.innerHTML = "<b></b><span></span>";
  item.querySelector("b").textContent = event.keyword;
  item.querySelector("span").textContent =
    `${clock} · ${event.end_s.toFixed(2)} s · ${event.score.toFixed(2)}`;
  const list = $("#events");
  list.prepend(item);
  while (list.children.length > MAX_EVENTS) list.lastChild.remove();
  const last = $("#last");
  last.textContent = event.keyword;
  last.classList.remove("hit");
  void last.offsetWidth; // restart the flash animation
  last.classList.add("hit");
  $("#last-detail").textContent = `score ${event.score.toFixed(2)} at ${clock}`;
}

function connect(s) {
  return new Promise((resolve, reject) => {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/ws`);
    ws.binaryType = "arraybuffer";
    ws.onopen = () => ws.send(JSON.stringify({
      type: "hello", sample_rate: s.ctx.sampleRate, format: "f32le",
    }));
    ws.onmessage = (msg) => {
      const message = JSON.parse(msg.data);
      if (message.type === "ready") {
        buildBars(message.labels, message.thresholds);
        $("#info").textContent = `microphone ${s.ctx.sampleRate} Hz → model ` +
          `${message.model_rate} Hz · ${message.labels.length} labels`;
        resolve(ws);
      } else if (message.type === "posteriors") {
        showPosteriors(message);
      } else if (message.type === "event") {
        showEvent(message);
      }
    };
    ws.onerror = () => reject(new Error("cannot reach the kws server"));
    ws.onclose = (e) => {
      reject(new Error(`the server closed the connection (${e.code} ${e.reason})`));
      if (session === s) stop(`Disconnected: ${e.reason || "code " + e.code}.`, "error");
    };
  });
}

async function start() {
  if (!window.isSecureContext || !navigator.mediaDevices) {
    setStatus("The browser allows the microphone only on a secure page: open this page as " +
      "http://localhost or http://127.0.0.1, or serve it over https.", "error");
    return;
  }
  const s = { ctx: null, stream: null, ws: null, dropped: 0 };
  session = s;
  $("#start").disabled = true;
  setStatus("Asking for the microphone…", "starting");
  try {
    s.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false,
               autoGainControl: false },
    });
    s.ctx = new AudioContext();
    await s.ctx.audioWorklet.addModule("worklet.js");
    await s.ctx.resume();
    s.ws = await connect(s);
  } catch (err) {
    if (session === s) stop(`Could not start: ${err.message || err}`, "error");
    return;
  }
  const node = new AudioWorkletNode(s.ctx, "pcm-tap", {
    processorOptions: { blockSize: Math.round(s.ctx.sampleRate * BLOCK_SECONDS) },
  });
  node.port.onmessage = (e) => {
    if (s.ws.readyState === WebSocket.OPEN && s.ws.bufferedAmount < MAX_BUFFERED_BYTES) {
      s.ws.send(e.data.buffer);
    } else {
      s.dropped += 1;
    }
  };
  s.ctx.createMediaStreamSource(s.stream).connect(node);
  node.connect(s.ctx.destination); // keeps the node pulled; it outputs silence
  $("#start").textContent = "Stop";
  $("#start").disabled = false;
  setStatus("Listening: say a keyword.", "listening");
}

function stop(message = "Stopped.", state = "idle") {
  const s = session;
  session = null;
  if (s) {
    if (s.ws && s.ws.readyState <= WebSocket.OPEN) s.ws.close(1000, "stopped");
    if (s.stream) s.stream.getTracks().forEach((track) => track.stop());
    if (s.ctx) s.ctx.close();
  }
  $("#start").textContent = "Start microphone";
  $("#start").disabled = false;
  setStatus(message, state);
}

$("#start").addEventListener("click", () => (session ? stop() : start()));
