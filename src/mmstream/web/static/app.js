// mmstream bedside live view: one websocket, newest frame wins, overlays drawn on a canvas.
// Protocol: docs/webview.md. Image axes are (row, col); canvas pixels map 1:1 to image pixels.
"use strict";

const $ = (id) => document.getElementById(id);
const canvas = $("view"), ctx = canvas.getContext("2d");
const STALE_MS = 1500;            // no new frame for this long: the image and numbers are not live
const S = {                       // everything the page knows (exposed as window.mmstreamView for tests)
  ws: null, streamId: sessionStorage.getItem("mmstream-stream"), streams: [], clinical: {},  // a reload keeps the stream
  bitmap: null, meta: null, decoding: false, pending: null, lastFrameAt: null,
  metrics: null, status: null, captures: null, fused: null,
  painted: 0, lastPaintedSeq: null, latencies: [], displayMs: null,
  clock: { offsetMs: null, rttMs: Infinity, samples: [] },
  drag: null, recording: false, nextId: 1,
  edited: new Set(),              // context form fields changed and not yet Set: a context message keeps them
};
window.mmstreamView = S;

// ---------------------------------------------------------------- connection
function token() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {                        // the fragment never reaches the server; keep it off the address bar
    sessionStorage.setItem("mmstream-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname);
  }
  return sessionStorage.getItem("mmstream-token");
}

function connect() {
  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
  ws.binaryType = "arraybuffer";
  S.ws = ws;
  ws.onopen = () => {
    send({ cmd: "hello", token: token(), stream_id: S.streamId });
    setConn(true);
    for (let i = 0; i < 5; i++) setTimeout(syncClock, 100 * i);
  };
  ws.onmessage = (ev) => (typeof ev.data === "string" ? onJson(JSON.parse(ev.data)) : onFrame(ev.data));
  ws.onclose = (ev) => {
    setConn(false, ev.reason);
    if (ev.reason === "unauthorized") { $("login").hidden = false; return; }
    setTimeout(connect, 1000);
  };
}

function send(obj) {
  if (S.ws && S.ws.readyState === WebSocket.OPEN) S.ws.send(JSON.stringify(obj));
}

function command(obj) {
  obj.id = S.nextId++;
  send(obj);
}

function setConn(on, why) {
  const el = $("conn");
  el.className = "conn " + (on ? "on" : "off");
  el.textContent = on ? "connected" : "disconnected" + (why ? ": " + why : "");
}

function syncClock() { send({ cmd: "clock", t_page_ms: performance.now() }); }
setInterval(syncClock, 2000);

function onClock(m) {             // NTP-style: keep the offset of the fastest recent round trip
  const t1 = performance.now(), rtt = t1 - m.t_page_ms;
  const c = S.clock;
  c.samples.push({ rtt, offset: m.t_server_s * 1000 - (m.t_page_ms + t1) / 2 });
  if (c.samples.length > 16) c.samples.shift();
  const best = c.samples.reduce((a, b) => (b.rtt < a.rtt ? b : a));
  c.offsetMs = best.offset; c.rttMs = best.rtt;
}

// ---------------------------------------------------------------- frames (latest wins)
function onFrame(buf) {
  S.lastFrameAt = performance.now();
  const dv = new DataView(buf);
  const n = dv.getUint32(4, true);
  const meta = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 8, n)));
  const blob = new Blob([new Uint8Array(buf, 8 + n)], { type: "image/jpeg" });
  if (S.pending) ack(S.pending.meta, null);        // replaced before it was decoded: never painted
  S.pending = { meta, blob };
  if (!S.decoding) decodeNext();
}

function decodeNext() {
  const p = S.pending;
  if (!p) return;
  S.pending = null; S.decoding = true;
  createImageBitmap(p.blob).then((bmp) => {
    if (S.bitmap) S.bitmap.close();
    S.bitmap = bmp; S.meta = p.meta; S.newFrame = true;
    draw();                         // now: it is presented at the next vsync
  }).catch(() => ack(p.meta, null)).finally(() => { S.decoding = false; decodeNext(); });
}

function ack(meta, latencyMs) {
  send({ cmd: "painted", stream_id: meta.stream_id, seq: meta.seq, latency_ms: latencyMs });
}

// ---------------------------------------------------------------- drawing
function draw() {
  if (!S.bitmap) return;
  const [h, w] = S.meta.shape;
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; fit(); }
  ctx.drawImage(S.bitmap, 0, 0);
  drawOverlays();
  $("nosignal").hidden = true;
  if (S.newFrame) {
    S.newFrame = false;
    const meta = S.meta;
    requestAnimationFrame(() => {     // the next frame callback: the drawn image has been presented
      const t = performance.now();
      let lat = null;
      if (S.clock.offsetMs !== null && meta.t_frame_s !== null) lat = t + S.clock.offsetMs - meta.t_frame_s * 1000;
      S.painted++; S.lastPaintedSeq = meta.seq;
      if (lat !== null) { S.latencies.push(lat); if (S.latencies.length > 60) S.latencies.shift(); }
      ack(meta, lat === null ? null : Math.max(-1000, Math.min(600000, lat)));
    });
  }
}

function checkLive() {          // grey out and say so when the shown image is no longer live
  const age = S.lastFrameAt === null ? Infinity : performance.now() - S.lastFrameAt;
  const open = S.ws && S.ws.readyState === WebSocket.OPEN;
  const stale = S.bitmap !== null && (age > STALE_MS || !open);
  document.body.classList.toggle("stale", stale);
  $("stale").hidden = !stale;
  if (stale) {
    const why = open ? `no new image for ${Math.floor(age / 1000)} s` : "disconnected";
    $("stale").textContent = `NOT LIVE: ${why} (last image and values shown)`;
    $("st-fps").textContent = "–";
  }
}
setInterval(checkLive, 250);

function clearView() {           // nothing of another stream or an earlier service run stays on screen
  if (S.bitmap) S.bitmap.close();
  S.bitmap = null; S.meta = null; S.metrics = null; S.pending = null; S.lastFrameAt = null;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  $("nosignal").hidden = false;
  $("warnings").replaceChildren();
  for (const k of ["csa", "th", "echo"]) blank(`${k}-value`, `${k}-unit`, `${k}-sub`, "");
  $("echo-z").textContent = "";
  checkLive();
}

function fit() {                 // scale the canvas to fill the stage, keeping the image's aspect ratio
  const st = $("stage").getBoundingClientRect();
  const k = Math.min(st.width / canvas.width, st.height / canvas.height);
  canvas.style.width = `${Math.floor(canvas.width * k)}px`;
  canvas.style.height = `${Math.floor(canvas.height * k)}px`;
}
new ResizeObserver(fit).observe($("stage"));

function path(points, close) {
  ctx.beginPath();
  points.forEach(([r, c], i) => (i ? ctx.lineTo(c, r) : ctx.moveTo(c, r)));
  if (close) ctx.closePath();
  ctx.stroke();
}

function drawOverlays() {
  const m = S.metrics && S.metrics.stream_id === S.streamId ? S.metrics : null;
  const lw = Math.max(2, canvas.width / 220);
  ctx.lineJoin = "round";
  const css = getComputedStyle(document.documentElement);
  const color = (v) => css.getPropertyValue(v).trim();
  const roi = S.drag && S.drag.moved ? S.drag.roi : m && m.roi;
  if (roi) {
    ctx.setLineDash([8, 6]); ctx.lineWidth = lw; ctx.strokeStyle = color("--roi");
    ctx.strokeRect(roi[1], roi[0], roi[3] - roi[1], roi[2] - roi[0]);
    ctx.setLineDash([]);
  }
  if (!m) return;
  ctx.lineWidth = lw;
  if (m.superficial_rc) { ctx.strokeStyle = color("--sup"); path(m.superficial_rc, false); }
  if (m.deep_rc) { ctx.strokeStyle = color("--deep"); path(m.deep_rc, false); }
  for (const [line, v] of [["superficial", "--sup"], ["deep", "--deep"]]) {  // a line held by a tap: a dot there
    const at = m.thickness && m.thickness[`${line}_at_rc`];
    if (at) { ctx.fillStyle = color(v); ctx.beginPath(); ctx.arc(at[1], at[0], 2.5 * lw, 0, 2 * Math.PI); ctx.fill(); }
  }
  if (m.contour_rc) { ctx.lineWidth = lw * 1.3; ctx.strokeStyle = color("--csa"); path(m.contour_rc, true); }
  if (m.csa) {
    const [r, c] = m.csa.seed_rc, k = 4 * lw;
    ctx.lineWidth = lw; ctx.strokeStyle = color("--seed");
    ctx.beginPath(); ctx.moveTo(c - k, r); ctx.lineTo(c + k, r); ctx.moveTo(c, r - k); ctx.lineTo(c, r + k); ctx.stroke();
  }
}

// ---------------------------------------------------------------- numbers and status
const fmt = (v, d) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));

function measure(el, unitEl, subEl, mm, px, mmUnit, pxUnit, conf) {
  if (mm !== null && mm !== undefined) {
    $(el).textContent = fmt(mm, mmUnit === "mm²" ? 1 : 2); $(unitEl).textContent = mmUnit;
    $(subEl).textContent = `confidence ${fmt(conf, 2)}`; $(subEl).className = "sub";
  } else if (px !== null && px !== undefined) {
    $(el).textContent = fmt(px, 0); $(unitEl).textContent = pxUnit;
    $(subEl).textContent = `spacing unknown · confidence ${fmt(conf, 2)}`; $(subEl).className = "sub unknown";
  }
}

function blank(el, unitEl, subEl, why) {
  $(el).textContent = "–"; $(unitEl).textContent = ""; $(subEl).textContent = why; $(subEl).className = "sub";
}

function onMetrics(m) {
  if (m.stream_id !== S.streamId) return;
  S.metrics = m;
  const q = m.quality || {};
  const unmeasured = q.no_contact ? "not measured: no probe contact"
    : (q.featureless ? "not measured: featureless frame (no image)" : null);
  if (m.csa) measure("csa-value", "csa-unit", "csa-sub", m.csa.area_mm2, m.csa.area_px, "mm²", "px²", m.csa.confidence);
  else blank("csa-value", "csa-unit", "csa-sub", unmeasured || "no seed: tap the nerve or muscle");
  if (m.thickness) {
    measure("th-value", "th-unit", "th-sub", m.thickness.thickness_mm, m.thickness.thickness_px, "mm", "px", m.thickness.confidence);
    const held = ["superficial", "deep"].filter((line) => m.thickness[`${line}_at_rc`]);
    if (held.length) $("th-sub").textContent += ` · ${held.join(" and ")} line held by a tap`;
  } else blank("th-value", "th-unit", "th-sub", unmeasured || "not measured on this stream");
  const e = m.echogenicity;
  $("echo-value").textContent = e ? fmt(e.mean, 1) : "–";
  $("echo-unit").textContent = e && e.mean !== null && e.mean !== undefined ? "grey level" : "";
  const z = e && e.z_score !== null && e.z_score !== undefined;
  const cal = e && e.calibrated_mean !== null && e.calibrated_mean !== undefined && e.calibrated_mean !== e.mean
    ? ` of the calibrated ${fmt(e.calibrated_mean, 1)}` : "";  // the z-score is of the reference device's grey level
  $("echo-z").textContent = z ? `z-score ${fmt(e.z_score, 2)}${cal}${e.abnormal ? " · abnormal" : ""}`
    : (e ? `z-score: – (${e.z_unavailable ? e.z_unavailable.replaceAll("_", " ") : "no reference configured"})` : "z-score: –");
  $("echo-z").className = z && e.abnormal ? "sub unknown" : "sub";
  const region = { roi: "in ROI", csa: "inside CSA contour", frame: "whole frame" };
  $("echo-sub").textContent = e ? `0–255 · SD ${fmt(e.std, 1)} · ${region[e.region] || e.region}`
    : (unmeasured || "");
  const still = !unmeasured;  // a lifted probe or a "no signal" screen repeats frames: not a frozen scanner
  const warn = [[q.no_contact, "No probe contact", true], [!q.no_contact && q.featureless, "No image (featureless frame)", true],
                [still && q.frozen, "Frozen image", true],
                [q.saturated, "Saturated", false], [still && q.duplicate, "Duplicate frame", false]];
  $("warnings").replaceChildren(...warn.filter((w) => w[0]).map(([, text, bad]) => {
    const d = document.createElement("div"); d.className = "warn" + (bad ? " bad" : ""); d.textContent = text; return d;
  }));
  $("st-spacing").textContent = m.spacing_mm ? `spacing ${m.spacing_mm[0]}×${m.spacing_mm[1]} mm` : "spacing unknown (px only)";
  if (!S.bitmap) return;
  requestAnimationFrame(draw);
}

function median(a) {
  if (!a.length) return null;
  const s = [...a].sort((x, y) => x - y);
  return s[Math.floor(s.length / 2)];
}

function onStatus(st) {
  S.status = st;
  const s = st.stream || {}, d = st.display || {};
  $("st-fps").textContent = document.body.classList.contains("stale") ? "–" : fmt(s.fps, 1);
  $("st-e2e").textContent = fmt(s.latency_p50_ms, 1);
  S.displayMs = median(S.latencies);
  $("st-display").textContent = fmt(d.latency_p50_ms ?? S.displayMs, 1);
  $("st-drops").textContent = `${st.service_drops} service · ${st.view_drops} view`;
  const rec = st.recording;
  S.recording = !!(rec && rec.recording);
  const el = $("st-rec");
  el.className = S.recording || (rec && rec.state === "failed") ? "rec" : "norec";
  const file = rec && rec.path ? rec.path.split("/").pop() : "";
  el.textContent = !rec ? "recording unavailable"
    : rec.state === "failed" ? `recording failed: ${(rec.last_error && (rec.last_error.message || rec.last_error.reason)) || ""}`
    : rec.state === "armed" ? "● REC armed (waiting for frames)"
    : S.recording ? `● REC ${rec.frames} frames · ${file}` : "not recording";
  el.title = file;
  $("record").classList.toggle("on", S.recording);
  $("record").textContent = S.recording ? "■ Stop" : "● Record";
  setStreams(st.streams, st.stream_id);
}

function setStreams(streams, current) {
  const sel = $("stream");
  if (JSON.stringify(streams) !== JSON.stringify(S.streams)) {
    S.streams = streams;
    sel.replaceChildren(...streams.map((s) => new Option(s, s)));
  }
  if (current) { S.streamId = current; sel.value = current; }
}

function onContext(m) {
  if (m.stream_id && m.stream_id !== S.streamId) { clearView(); S.edited.clear(); }  // another stream: its own frames and context
  S.clinical = m.clinical || {};
  if (m.stream_id) { S.streamId = m.stream_id; sessionStorage.setItem("mmstream-stream", m.stream_id); }
  S.fused = null;
  renderFused();
  const shown = { patient: S.clinical.patient_id || "", site: S.clinical.site || "", side: S.clinical.side || "",
                  age: S.clinical.age_years ?? "", sex: S.clinical.sex || "" };
  for (const [id, value] of Object.entries(shown)) if (!S.edited.has(id)) $(id).value = value;  // edits stay as typed
}

function onCaptures(m) {
  S.captures = m;
  const mm = (v, px, d, u, pu) => (v !== null && v !== undefined ? `${fmt(v, d)} ${u}` : px !== null && px !== undefined ? `${fmt(px, 0)} ${pu}` : "–");
  const row = (label, c, cls) => {
    const tr = document.createElement("tr"); if (cls) tr.className = cls;
    const echo = fmt(c.echo_mean, 1) + (c.echo_calibrated !== null && c.echo_calibrated !== undefined
      && c.echo_calibrated !== c.echo_mean ? ` (cal. ${fmt(c.echo_calibrated, 1)})` : "");
    [label, echo, mm(c.csa_mm2, c.csa_px, 1, "mm²", "px²"), mm(c.thickness_mm, c.thickness_px, 2, "mm", "px")].forEach((t) => {
      const td = document.createElement("td"); td.textContent = t; tr.appendChild(td);
    });
    return tr;
  };
  const rows = m.captures.map((c, i) => row(String(i + 1), c));
  if (m.captures.length) rows.push(row("mean", m.mean, "mean"));
  $("captures").tBodies[0].replaceChildren(...rows);
  $("capture-count").textContent = `${m.captures.length}/${m.per_site}`;
}

const same = (a, b) => (a || null) === (b || null);

function renderFused() {         // the fusion node's summary of the current patient and site
  const box = $("fused"), f = S.fused, c = S.clinical;
  if (!f || !same(f.patient_id, c.patient_id) || !same(f.site, c.site) || !same(f.side, c.side)) {
    box.textContent = c.patient_id ? "no fused summary for this patient and site" : "set patient and site for the fused summary";
    return;
  }
  const parts = [kv("involvement score", f.score === null ? "– (no reference)" : fmt(f.score, 2))];
  if (f.score_inputs.length) parts.push(heading(`from ${f.score_inputs.join(", ")}`));
  const table = document.createElement("table");
  table.className = "fused-values";
  const unit = (u) => ({ "1": "", grey_level: "", mm2: "mm²" }[u] ?? u);
  for (const v of f.values) {
    const tr = document.createElement("tr");
    const sure = v.confidence === null || v.confidence === undefined ? "" : ` (confidence ${fmt(v.confidence, 2)})`;
    const when = (v.acquired_on ? `${v.acquired_on}${v.stale ? " stale" : ""}` : v.source) + sure;
    [`${v.modality} ${v.name.replace(/^us_/, "").replace(/_(mm2|mm|ms)$/, "").replace(/^csa$/, "CSA").replaceAll("_", " ")}`, when, `${fmt(v.value, 2)} ${unit(v.unit)}`,
     v.z === null ? "" : `z ${fmt(v.z, 1)}`].forEach((t, k) => {
      const td = document.createElement("td"); td.textContent = t;
      if (k === 3 && v.abnormal) td.className = "abnormal";
      tr.appendChild(td);
    });
    table.appendChild(tr);
  }
  parts.push(table);
  if (f.captures) parts.push(heading(`three-image capture ${f.captures}/3`));
  for (const flag of f.flags) parts.push(heading(`⚠ ${flag.replaceAll("_", " ")}`, "flag"));
  for (const d of f.disagreements) parts.push(heading(d, "flag"));
  if (f.biopsy && f.biopsy.length) {
    parts.push(heading("Biopsy ranking (best target first)"));
    const ol = document.createElement("ol");
    for (const b of f.biopsy) {
      const li = document.createElement("li");
      li.textContent = `${b.site.replaceAll("_", " ")}${b.side ? " " + b.side : ""} · ${b.category.replace("_", "-")}${b.score === null ? "" : " · " + fmt(b.score, 2)}`;
      li.title = b.reason;
      if (b.site === c.site && same(b.side, c.side)) li.className = "here";
      ol.appendChild(li);
    }
    parts.push(ol);
  }
  box.replaceChildren(...parts);
}

function kv(k, v) {
  const d = document.createElement("div"); d.className = "kv";
  const a = document.createElement("span"); a.textContent = k;
  const b = document.createElement("span"); b.textContent = v;
  d.append(a, b); return d;
}

function heading(t, cls) { const h = document.createElement("div"); h.className = cls || "sub"; h.textContent = t; return h; }

function note(text, error) {
  const el = $("message");
  el.textContent = text; el.className = error ? "error" : "";
}

function onJson(m) {
  switch (m.type) {
    case "hello":
      if (!m.stream_id || m.stream_id !== S.streamId) clearView();
      S.streamId = m.stream_id; setStreams(m.streams, m.stream_id); break;
    case "clock": onClock(m); break;
    case "metrics": onMetrics(m); break;
    case "status": onStatus(m); break;
    case "context": onContext(m); break;
    case "captures": onCaptures(m); break;
    case "fused": S.fused = m; renderFused(); break;
    case "note": note(`${m.reason.replaceAll("_", " ")}: ${m.message}`, m.level !== "info"); break;
    case "reply": note(m.ok ? `${m.cmd}: done` : `${m.cmd}: ${m.message || m.reason}`, !m.ok); break;
    case "error": note(`refused: ${m.message}`, true); break;
  }
}

// ---------------------------------------------------------------- interaction (mouse, pen and touch)
function imagePoint(ev) {
  const r = canvas.getBoundingClientRect();
  const row = ((ev.clientY - r.top) * canvas.height) / r.height;
  const col = ((ev.clientX - r.left) * canvas.width) / r.width;
  return [Math.min(Math.max(row, 0), canvas.height - 1), Math.min(Math.max(col, 0), canvas.width - 1)];
}

const tapMode = () => document.querySelector('input[name="tap"]:checked').value;  // seed, superficial or deep

canvas.addEventListener("pointerdown", (ev) => {
  if (!S.bitmap) return;
  canvas.setPointerCapture(ev.pointerId);
  S.drag = { start: imagePoint(ev), x: ev.clientX, y: ev.clientY, moved: false, roi: null };
});
canvas.addEventListener("pointermove", (ev) => {
  const d = S.drag;
  if (!d) return;
  if (Math.hypot(ev.clientX - d.x, ev.clientY - d.y) > 8) d.moved = true;
  if (!d.moved) return;
  const [r, c] = imagePoint(ev), [r0, c0] = d.start;
  d.roi = [Math.floor(Math.min(r, r0)), Math.floor(Math.min(c, c0)), Math.ceil(Math.max(r, r0)) + 1, Math.ceil(Math.max(c, c0)) + 1]
    .map((v, i) => Math.min(v, i % 2 ? canvas.width : canvas.height));
  requestAnimationFrame(draw);
});
canvas.addEventListener("pointerup", (ev) => {
  const d = S.drag;
  S.drag = null;
  if (!d) return;
  if (d.moved && d.roi) { command({ cmd: "set_roi", roi: d.roi }); return; }
  const at = d.start.map((v) => Math.round(v * 10) / 10), mode = tapMode();  // a tap: what the "Tap sets" choice says
  command(mode === "seed" ? { cmd: "set_seed", seed_rc: at } : { cmd: "set_line", line: mode, at_rc: at });
});
canvas.addEventListener("pointercancel", () => { S.drag = null; });

$("clear-seed").onclick = () => command({ cmd: "set_seed", seed_rc: null });
$("clear-lines").onclick = () => command({ cmd: "set_line", line: "both", at_rc: null });
$("clear-roi").onclick = () => command({ cmd: "set_roi", roi: null });
$("capture").onclick = () => command({ cmd: "capture" });
$("record").onclick = () => command({ cmd: S.recording ? "record_stop" : "record_start" });
$("stream").onchange = (ev) => command({ cmd: "select_stream", stream_id: ev.target.value });
$("context").oninput = (ev) => { S.edited.add(ev.target.id); };
$("context").onsubmit = (ev) => {
  ev.preventDefault();
  S.edited.clear();               // the answer's context fills the form with the service's values
  const v = (id) => $(id).value.trim() || null;
  const age = v("age") === null ? null : Number(v("age"));  // age and sex choose the reference entries (z-scores)
  command({ cmd: "set_context", clinical: { patient_id: v("patient"), site: v("site"), side: v("side"),
                                            plane: S.clinical.plane || null, age_years: age, sex: v("sex") } });
};
$("login-form").onsubmit = (ev) => {
  ev.preventDefault();
  sessionStorage.setItem("mmstream-token", $("token").value);
  $("login").hidden = true;
  connect();
};

connect();
