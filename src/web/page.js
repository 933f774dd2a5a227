// The page's driver: reads the chosen files, hands them to the trainer (shadertrain.wasm, built
// from src/web/mod.rs), and trains a chunk of steps per call, each sized to take about a quarter
// of a second so the page stays responsive and Stop acts at once. Nothing is uploaded.
//
// For tests, `?data=PREFIX&autorun=1&preset=…&epochs=…&seed=…` with optional `files=A,B,…`,
// `classify=1`, `reload=1` and `finetune=1` fetches the files (MNIST's four unless `files` names
// others) from PREFIX on the serving host instead of asking, trains, and logs one line
// `shadertrain-result {json}` with the model file's SHA-256, the epochs' figures, the time from
// navigation to the first step's metrics, with `classify` the first test image's top classes as
// a drawing, with `reload` the downloaded file's evaluation once loaded back, and with
// `finetune` the model after one more epoch from that file.

import init, * as trainer from './shadertrain.js';

const $ = (id) => document.getElementById(id);
const STEM_NAMES = ['train-images-idx3-ubyte', 'train-labels-idx1-ubyte',
  't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'];
const CHUNK_MS = 250;

let running = false;
let started = false;
let finished = false;
let stepsPerCall = 1;
let firstStepAt = null;   // ms from the page's navigation to the first step's metrics
const lossPoints = [];   // [epoch position, running loss]
const accuracyPoints = []; // [epoch, test accuracy]
const epochSeconds = [];   // each epoch's wall time, for the autorun result

function status(text) { $('status').textContent = text; }
function showError(e) { $('error').textContent = String(e && e.message ? e.message : e); }

let modelLoaded = false;

function buttons() {
  $('train').disabled = running;
  $('stop').disabled = !running;
  $('continue').disabled = running || !started || finished;
  $('download').disabled = running || !started;
  $('evaluate').disabled = running || (!started && !modelLoaded);
  $('classify').disabled = running || (!started && !modelLoaded);
}

// Hands the chosen files to the trainer, each by its path inside a chosen folder
// (`ROOT/train/cat/1.png`) or its name; `files`: [name, bytes] pairs.
function handFiles(files) {
  trainer.clear_files();
  for (const [name, bytes] of files) trainer.add_file(name, bytes);
  const total = files.reduce((sum, [, bytes]) => sum + bytes.length, 0);
  $('chosen').textContent = files.length > 6
    ? `${files.length.toLocaleString()} files (${total.toLocaleString()} bytes) from ${files[0][0].split('/')[0]}/`
    : files.map(([name, bytes]) => `${name} (${bytes.length.toLocaleString()} bytes)`).join(', ');
}

async function chosenFiles(list) {
  return Promise.all([...list].map(async (file) =>
    [file.webkitRelativePath || file.name, new Uint8Array(await file.arrayBuffer())]));
}

function settings() {
  const number = (id) => ($(id).value === '' ? undefined : Number($(id).value));
  return { preset: $('preset').value, epochs: number('epochs'), batch_size: number('batch'),
    lr: number('lr'), seed: number('seed') };
}

function drawChart() {
  const canvas = $('chart');
  const ctx = canvas.getContext('2d');
  const [w, h, pad] = [canvas.width, canvas.height, 30];
  ctx.clearRect(0, 0, w, h);
  ctx.font = '12px system-ui';
  const maxX = Math.max(1, ...lossPoints.map((p) => p[0]), ...accuracyPoints.map((p) => p[0]));
  const maxLoss = Math.max(1e-6, ...lossPoints.map((p) => p[1]));
  const x = (v) => pad + (v / maxX) * (w - 2 * pad);
  const line = (points, y, colour) => {
    ctx.strokeStyle = colour; ctx.beginPath();
    points.forEach(([px, py], i) => (i ? ctx.lineTo(x(px), y(py)) : ctx.moveTo(x(px), y(py))));
    ctx.stroke();
  };
  line(lossPoints, (v) => h - pad - (v / maxLoss) * (h - 2 * pad), '#d9480f');
  line(accuracyPoints, (v) => h - pad - v * (h - 2 * pad), '#1c7ed6');
  for (const [px, py] of accuracyPoints) {
    ctx.fillStyle = '#1c7ed6';
    ctx.fillRect(x(px) - 2, h - pad - py * (h - 2 * pad) - 2, 4, 4);
  }
  ctx.fillStyle = '#d9480f'; ctx.fillText(`running loss (max ${maxLoss.toFixed(3)})`, pad, 14);
  ctx.fillStyle = '#1c7ed6'; ctx.fillText('test accuracy (0 to 100 %)', pad + 220, 14);
  ctx.fillStyle = '#555'; ctx.fillText('epochs', w - pad - 40, h - 8);
}

function addEpochRow(m) {
  const pct = (v) => (v == null ? '' : `${(100 * v).toFixed(2)}%`);
  const num = (v) => (v == null ? '' : v.toFixed(4));
  const row = document.createElement('tr');
  for (const cell of [m.epoch, num(m.train_loss), pct(m.train_accuracy), num(m.validation_loss),
    pct(m.validation_accuracy), num(m.test_loss), pct(m.test_accuracy), m.seconds.toFixed(2),
    Math.round(m.samples_per_second)]) {
    const td = document.createElement('td');
    td.textContent = cell;
    row.appendChild(td);
  }
  $('epochs-table').querySelector('tbody').appendChild(row);
}

// Trains until the run's epochs are done or Stop is pressed; the last epoch's figures.
async function trainLoop() {
  running = true; buttons();
  let last = null;
  try {
    while (running) {
      const began = performance.now();
      const p = JSON.parse(await trainer.train_steps(stepsPerCall));
      const took = performance.now() - began;
      firstStepAt ??= performance.now();
      stepsPerCall = Math.max(1, Math.min(512, Math.round(stepsPerCall * CHUNK_MS / Math.max(took, 1))));
      $('progress').max = p.steps; $('progress').value = p.steps_done;
      lossPoints.push([p.epoch - 1 + p.steps_done / p.steps, p.running_loss]);
      status(`epoch ${p.epoch}: step ${p.steps_done} of ${p.steps}, running loss ` +
        `${p.running_loss.toFixed(4)}, accuracy ${(100 * p.running_accuracy).toFixed(2)}%`);
      if (p.steps_done === p.steps) {
        status(`epoch ${p.epoch}: evaluating the test set…`);
        last = JSON.parse(await trainer.end_epoch());
        accuracyPoints.push([last.epoch, last.test_accuracy]);
        epochSeconds.push(last.seconds);
        addEpochRow(last);
        status(`epoch ${last.epoch}: test accuracy ${(100 * last.test_accuracy).toFixed(2)}%`);
        if (last.finished) { finished = true; running = false; status(`done: ${$('status').textContent}`); }
      }
      drawChart();
    }
  } catch (e) {
    showError(e);
  }
  running = false; buttons();
  return last;
}

async function start() {
  showError('');
  lossPoints.length = 0; accuracyPoints.length = 0; epochSeconds.length = 0; stepsPerCall = 1; finished = false;
  $('epochs-table').querySelector('tbody').textContent = '';
  const run = JSON.parse(trainer.start(JSON.stringify(settings())));
  started = true;
  status(`${run.model}: ${run.parameters.toLocaleString()} parameters, ${run.train_samples} training ` +
    `and ${run.test_samples} test samples of ${run.data}, ${run.epochs} epochs on ${run.adapter}`);
  return trainLoop();
}

async function modelBytes() {
  return trainer.model_file();
}

async function download() {
  const bytes = await modelBytes();
  const url = URL.createObjectURL(new Blob([bytes], { type: 'application/octet-stream' }));
  const a = document.createElement('a');
  a.href = url; a.download = `${$('preset').value}.safetensors`; a.click();
  URL.revokeObjectURL(url);
}

async function sha256Of(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
}

async function autorun(params) {
  const prefix = params.get('data');
  for (const name of ['preset', 'epochs', 'seed', 'lr']) {
    if (params.has(name)) $(name).value = params.get(name);
  }
  const names = params.has('files') ? params.get('files').split(',') : STEM_NAMES;
  const files = await Promise.all(names.map(async (stem) => {
    const response = await fetch(prefix + stem);
    if (!response.ok) throw new Error(`${prefix + stem}: ${response.status}`);
    return [stem, new Uint8Array(await response.arrayBuffer())];
  }));
  handFiles(files);
  const last = await start();
  const bytes = await modelBytes();
  const sha256 = await sha256Of(bytes);
  // `classify=1`: the first test image, drawn ten times larger, classified as a drawing is.
  let classified;
  if (params.has('classify')) {
    const images = files[2][1].subarray(16, 16 + 784);
    const pad = $('pad').getContext('2d');
    const drawing = pad.createImageData(280, 280);
    for (let i = 0; i < 280 * 280; i += 1) {
      const v = images[28 * Math.floor(i / 2800) + Math.floor((i % 280) / 10)];
      drawing.data.set([v, v, v, 255], 4 * i);
    }
    pad.putImageData(drawing, 0, 0);
    const c = await classify();
    classified = { top: c.top, method: c.method, map_cells: c.map.length };
  }
  // `reload=1`: the downloaded file loaded back and evaluated on the chosen test files.
  let reloaded;
  if (params.has('reload')) {
    trainer.load_model('downloaded.safetensors', bytes);
    reloaded = JSON.parse(await trainer.evaluate_model());
  }
  // `finetune=1` (with `reload`): one more epoch from the loaded file, as Train does after a load.
  let finetuned;
  if (params.has('finetune')) {
    $('epochs').value = '1';
    const tuned = await start();
    finetuned = { sha256: await sha256Of(await modelBytes()), test_accuracy: tuned.test_accuracy };
  }
  console.log('shadertrain-result ' + JSON.stringify({
    sha256, last, epoch_seconds: epochSeconds, first_step_ms: firstStepAt, classified, reloaded,
    finetuned }));
}

async function loadModel(file) {
  showError('');
  const model = JSON.parse(trainer.load_model(file.name, new Uint8Array(await file.arrayBuffer())));
  modelLoaded = true; started = false; finished = false;
  $('model-status').textContent = `${file.name}: ${model.model}, trained on ${model.data}`;
  buttons();
}

async function evaluate() {
  showError('');
  const e = JSON.parse(await trainer.evaluate_model());
  $('model-status').textContent = `${$('model-status').textContent.split(' | ')[0]} | test loss ` +
    `${e.loss.toFixed(4)}, accuracy ${(100 * e.accuracy).toFixed(2)}% on ${e.samples} samples`;
}

// The drawing pad: white strokes on black, as MNIST's digits are.
function setUpPad() {
  const pad = $('pad');
  const ctx = pad.getContext('2d');
  const clear = () => { ctx.fillStyle = '#000'; ctx.fillRect(0, 0, pad.width, pad.height); };
  clear();
  let drawing = false;
  const at = (e) => {
    const r = pad.getBoundingClientRect();
    return [(e.clientX - r.left) * pad.width / r.width, (e.clientY - r.top) * pad.height / r.height];
  };
  pad.addEventListener('pointerdown', (e) => {
    drawing = true; pad.setPointerCapture(e.pointerId);
    ctx.beginPath(); ctx.moveTo(...at(e));
  });
  pad.addEventListener('pointermove', (e) => {
    if (!drawing) return;
    ctx.lineWidth = 22; ctx.lineCap = 'round'; ctx.lineJoin = 'round'; ctx.strokeStyle = '#fff';
    ctx.lineTo(...at(e)); ctx.stroke();
  });
  pad.addEventListener('pointerup', () => { drawing = false; });
  $('clear').addEventListener('click', clear);
}

function paint(canvas, values) {
  const ctx = canvas.getContext('2d');
  const image = ctx.createImageData(canvas.width, canvas.height);
  values.forEach((v, i) => {
    const [r, g, b] = v;
    image.data.set([r, g, b, 255], 4 * i);
  });
  ctx.putImageData(image, 0, 0);
}

async function classify() {
  showError('');
  const pad = $('pad');
  const rgba = pad.getContext('2d').getImageData(0, 0, pad.width, pad.height).data;
  const grey = new Uint8Array(pad.width * pad.height);
  for (let i = 0; i < grey.length; i += 1) grey[i] = rgba[4 * i];
  const c = JSON.parse(await trainer.classify(grey, pad.width, pad.height));
  paint($('prepared'), c.prepared.map((v) => [v, v, v]));
  const peak = Math.max(1e-12, ...c.map);
  // The heat map over the prepared picture: red where the score rests.
  paint($('heat'), c.map.map((m, i) => {
    const [v, h] = [c.prepared[i] * 0.5, m / peak];
    return [Math.min(255, v + 255 * h), v * (1 - h), v * (1 - h)];
  }));
  $('top').innerHTML = '';
  for (const t of c.top) {
    const line = document.createElement('div');
    line.textContent = `${t.name}: ${(100 * t.probability).toFixed(1)}%`;
    $('top').appendChild(line);
  }
  const heading = document.createElement('div');
  heading.textContent = `(${c.method})`;
  $('top').appendChild(heading);
  return c;
}

async function main() {
  if (!navigator.gpu) {
    status('');
    showError('This browser has no WebGPU: use a recent Chrome, Edge or Firefox, or Safari 26.');
    return;
  }
  await init();
  let adapter;
  try {
    adapter = await trainer.open_device();
  } catch (e) {
    status('');
    showError(`This browser has WebGPU but gave the page no GPU adapter (${e.message || e}). ` +
      'Turn on hardware acceleration in its settings and update the GPU driver; Chrome on Linux ' +
      'may need chrome://flags/#enable-unsafe-webgpu, or --enable-unsafe-webgpu on its command line.');
    return;
  }
  status(`Ready on ${adapter}. Choose the data files, then Train.`);
  for (const input of ['files', 'folder']) {
    $(input).addEventListener('change', (e) => chosenFiles(e.target.files).then(handFiles).catch(showError));
  }
  $('train').addEventListener('click', () => start().catch((e) => { showError(e); running = false; buttons(); }));
  $('stop').addEventListener('click', () => { running = false; status(`${$('status').textContent} (stopping)`); });
  $('continue').addEventListener('click', () => trainLoop());
  $('download').addEventListener('click', () => download().catch(showError));
  $('model-file').addEventListener('change', (e) => loadModel(e.target.files[0]).catch(showError));
  $('evaluate').addEventListener('click', () => evaluate().catch(showError));
  $('classify').addEventListener('click', () => classify().catch(showError));
  setUpPad();
  buttons();
  const params = new URLSearchParams(location.search);
  if (params.has('autorun')) {
    await autorun(params).catch((e) => console.log('shadertrain-result ' + JSON.stringify({ error: String(e.message || e) })));
  }
}

main().catch(showError);
