// AudioNet in the browser: a dropped recording is decoded and resampled to the student's rate with Web Audio,
// cut into windows every hop, classified by student.onnx with onnxruntime-web (WebAssembly, one thread), and
// its top classes per second (probabilities averaged over the second's windows, as `audionet predict` prints
// them) are plotted and listed. The result is also left in `window.audionetResult` for scripts and tests.
"use strict";

(() => {
  const student = JSON.parse(document.getElementById("student").textContent);
  const status = document.getElementById("status");
  const BATCH = 256;  // windows per run of the model, as predict batches them
  const TOP_K = Math.min(5, student.class_names.length);
  const PLOTTED = 6;  // classes drawn on the plot at most
  const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"];

  function show(state, text) {
    status.dataset.state = state;
    status.textContent = text;
  }

  // One thread: no SharedArrayBuffer, so the page needs no cross-origin isolation headers from its server.
  ort.env.wasm.numThreads = 1;
  ort.env.wasm.proxy = false;
  const session = ort.InferenceSession.create(student.model, {executionProviders: ["wasm"]});
  session.then(
    () => show("ready", `Ready: ${student.class_names.length} classes, ${student.sample_rate} Hz, a window of `
                        + `${student.window_samples} samples every ${student.hop_samples}. Drop a recording.`),
    (error) => show("error", `The model did not load: ${error}`));
  document.getElementById("about").textContent =
    `Model: ${student.model}, run by ${student.runtime} (WebAssembly, single-threaded).`;

  // decodeAudioData resamples to its context's rate: decoding into an OfflineAudioContext at the student's rate
  // brings any file to that rate in one step. A browser that kept the file's own rate is resampled by rendering
  // the buffer through an OfflineAudioContext at the student's rate.
  async function decode(bytes) {
    const rate = student.sample_rate;
    let buffer = await new OfflineAudioContext(1, 1, rate).decodeAudioData(bytes);
    if (buffer.sampleRate !== rate) {
      const length = Math.ceil(buffer.duration * rate);
      const context = new OfflineAudioContext(buffer.numberOfChannels, length, rate);
      const source = context.createBufferSource();
      source.buffer = buffer;
      source.connect(context.destination);
      source.start();
      buffer = await context.startRendering();
    }
    // Mono as ffmpeg makes it for predict and for the training data: stereo is (left + right) / sqrt(2), with
    // no normalisation; other layouts, the channels' mean (ffmpeg weighs their channels by position).
    const channels = buffer.numberOfChannels;
    const weight = channels === 2 ? Math.SQRT1_2 : 1 / channels;
    const mono = new Float32Array(buffer.length);
    for (let c = 0; c < channels; c++) {
      const channel = buffer.getChannelData(c);
      for (let i = 0; i < mono.length; i++) mono[i] += weight * channel[i];
    }
    return mono;
  }

  function topOf(values, k) {
    const order = Array.from(values.keys()).sort((a, b) => values[b] - values[a]).slice(0, k);
    return order.map((index) => ({class: student.class_names[index], index, probability: values[index]}));
  }

  async function classify(wave) {
    const model = await session;
    const W = student.window_samples, H = student.hop_samples, C = student.class_names.length;
    if (wave.length < W) throw new Error(`${wave.length} samples of audio, shorter than one window (${W})`);
    const count = 1 + Math.floor((wave.length - W) / H);  // window k covers samples [k H, k H + W)
    const sums = new Map();  // second -> summed probabilities of its windows
    const counts = new Map();
    const windows = [];
    for (let first = 0; first < count; first += BATCH) {
      const n = Math.min(BATCH, count - first);
      const data = new Float32Array(n * W);
      for (let i = 0; i < n; i++) data.set(wave.subarray((first + i) * H, (first + i) * H + W), i * W);
      const outputs = await model.run({[model.inputNames[0]]: new ort.Tensor("float32", data, [n, W])});
      const logits = outputs.logits.data;
      for (let i = 0; i < n; i++) {
        const row = logits.subarray(i * C, (i + 1) * C);
        let max = -Infinity;
        for (const v of row) max = Math.max(max, v);
        const probabilities = new Float64Array(C);
        let total = 0;
        for (let j = 0; j < C; j++) total += (probabilities[j] = Math.exp(row[j] - max));
        for (let j = 0; j < C; j++) probabilities[j] /= total;
        const start = (first + i) * H;
        const second = Math.floor(start / student.sample_rate);
        if (!sums.has(second)) { sums.set(second, new Float64Array(C)); counts.set(second, 0); }
        const sum = sums.get(second);
        for (let j = 0; j < C; j++) sum[j] += probabilities[j];
        counts.set(second, counts.get(second) + 1);
        windows.push({time: start / student.sample_rate, top: topOf(probabilities, TOP_K)});
      }
      show("working", `Classified ${Math.min(first + n, count)} of ${count} windows…`);
    }
    const seconds = [], means = [];
    for (const [second, sum] of sums) {
      const mean = sum.map((v) => v / counts.get(second));
      means.push(mean);
      seconds.push({second, top: topOf(mean, TOP_K)});
    }
    return {windows, seconds, means};
  }

  function plot(result, duration) {
    const canvas = document.getElementById("plot");
    const g = canvas.getContext("2d");
    const width = canvas.width, height = canvas.height;
    const left = 48, right = 190, top = 34, bottom = 36;
    const plotWidth = width - left - right, plotHeight = height - top - bottom;
    g.clearRect(0, 0, width, height);
    g.fillStyle = "#fff";
    g.fillRect(0, 0, width, height);
    // The classes drawn: each second's top class first, then the highest mean over the whole file.
    const overall = new Float64Array(student.class_names.length);
    for (const mean of result.means) mean.forEach((v, j) => { overall[j] += v; });
    const chosen = [];
    for (const s of result.seconds) if (!chosen.includes(s.top[0].index)) chosen.push(s.top[0].index);
    for (const entry of topOf(overall, student.class_names.length)) {
      if (chosen.length >= PLOTTED) break;
      if (!chosen.includes(entry.index)) chosen.push(entry.index);
    }
    chosen.splice(PLOTTED);
    const span = duration;
    const end = (s) => Math.min(s.second + 1, duration);  // the last second may be cut short
    const x = (t) => left + plotWidth * t / span;
    const y = (p) => top + plotHeight * (1 - p);
    g.strokeStyle = "#ccc"; g.fillStyle = "#444"; g.font = "12px sans-serif"; g.lineWidth = 1;
    for (let p = 0; p <= 1.0001; p += 0.25) {
      g.beginPath(); g.moveTo(left, y(p)); g.lineTo(left + plotWidth, y(p)); g.stroke();
      g.textAlign = "right"; g.fillText(p.toFixed(2), left - 6, y(p) + 4);
    }
    const step = Math.max(1, Math.ceil(span / 12));
    g.textAlign = "center";
    for (let t = 0; t <= span; t += step) g.fillText(`${t}`, x(t), top + plotHeight + 16);
    g.fillText("time (s)", left + plotWidth / 2, height - 4);
    g.save(); g.translate(12, top + plotHeight / 2); g.rotate(-Math.PI / 2);
    g.fillText("probability (mean over the second)", 0, 0); g.restore();
    // Each second's top class as a coloured band above the plot.
    result.seconds.forEach((s) => {
      const c = chosen.indexOf(s.top[0].index);
      g.fillStyle = c >= 0 ? COLOURS[c] : "#999";
      g.fillRect(x(s.second) + 1, 6, Math.max(1, x(end(s)) - x(s.second) - 2), 14);
    });
    // One step line per chosen class: its mean probability in each second.
    chosen.forEach((index, c) => {
      g.strokeStyle = COLOURS[c]; g.lineWidth = 2; g.beginPath();
      result.seconds.forEach((s, i) => {
        const p = result.means[i][index];
        if (i === 0) g.moveTo(x(s.second), y(p)); else g.lineTo(x(s.second), y(p));
        g.lineTo(x(end(s)), y(p));
      });
      g.stroke();
      g.fillStyle = COLOURS[c]; g.fillRect(left + plotWidth + 14, top + 6 + 20 * c, 14, 10);
      g.fillStyle = "#222"; g.textAlign = "left";
      g.fillText(student.class_names[index], left + plotWidth + 34, top + 15 + 20 * c);
    });
  }

  function list(result) {
    const body = document.querySelector("#seconds tbody");
    body.replaceChildren();
    for (const s of result.seconds) {
      const row = document.createElement("tr");
      row.dataset.second = s.second;
      row.dataset.top = s.top[0].class;
      const when = document.createElement("td");
      when.textContent = `${s.second} s`;
      const what = document.createElement("td");
      what.textContent = s.top.map((e) => `${e.class} ${e.probability.toFixed(2)}`).join(", ");
      row.append(when, what);
      body.append(row);
    }
  }

  async function analyse(file) {
    try {
      window.audionetResult = null;
      show("working", `Decoding ${file.name}…`);
      const wave = await decode(await file.arrayBuffer());
      const duration = wave.length / student.sample_rate;
      const result = await classify(wave);
      plot(result, duration);
      list(result);
      window.audionetResult = {file: file.name, duration, samples: wave.length, windows: result.windows,
                               seconds: result.seconds};
      show("done", `${file.name}: ${duration.toFixed(2)} s, ${result.windows.length} windows. `
                   + "Top classes per second below.");
    } catch (error) {
      show("error", `${file.name}: ${error.message || error}`);
    }
  }

  const input = document.getElementById("file");
  input.addEventListener("change", () => { if (input.files.length) analyse(input.files[0]); });
  const drop = document.getElementById("drop");
  document.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  document.addEventListener("dragleave", () => drop.classList.remove("over"));
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files.length) analyse(event.dataTransfer.files[0]);
  });
})();
