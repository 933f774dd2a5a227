// The page's driver: reads the chosen files, hands them to the trainer (shadertrain.wasm, built
// from src/web/mod.rs), and trains a chunk of steps per call, each sized to take about a quarter
// of a second so the page stays responsive and Stop acts at once. Nothing is uploaded.
//
// For tests, `?data=PREFIX&autorun=1&preset=…&epochs=…&seed=…` fetches the files from PREFIX on
// the serving host instead of asking, trains, and logs one line `shadertrain-result {json}` with
// the model file's SHA-256, the last epoch's figures and the time from navigation to the first
// step's metrics.

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

function status(text) { $('status').textContent = text; }
function showError(e) { $('error').textContent = String(e && e.message ? e.message : e); }

function buttons() {
  $('train').disabled = running;
  $('stop').disabled = !running;
  $('continue').disabled = running || !started || finished;
  $('download').disabled = running || !started;
}

async function handFiles(files) {
  trainer.clear_files();
  for (const file of files) {
    trainer.add_file(file.name, new Uint8Array(await file.arrayBuffer()));
  }
  $('chosen').textContent = files.map((f) => `${f.name} (${f.size.toLocaleString()} bytes)`).join(', ');
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
  lossPoints.length = 0; accuracyPoints.length = 0; stepsPerCall = 1; finished = false;
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

async function autorun(params) {
  const prefix = params.get('data');
  for (const name of ['preset', 'epochs', 'seed', 'lr']) {
    if (params.has(name)) $(name).value = params.get(name);
  }
  const files = await Promise.all(STEM_NAMES.map(async (stem) => {
    const response = await fetch(prefix + stem);
    if (!response.ok) throw new Error(`${prefix + stem}: ${response.status}`);
    return new File([await response.arrayBuffer()], stem);
  }));
  await handFiles(files);
  const last = await start();
  const bytes = await modelBytes();
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
  const sha256 = Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
  console.log('shadertrain-result ' + JSON.stringify({ sha256, last, first_step_ms: firstStepAt }));
}

async function main() {
  if (!navigator.gpu) {
    status('');
    showError('This browser has no WebGPU: use a recent Chrome, Edge or Firefox, or Safari 26.');
    return;
  }
  await init();
  const adapter = await trainer.open_device();
  status(`Ready on ${adapter}. Choose the data files, then Train.`);
  $('files').addEventListener('change', (e) => handFiles([...e.target.files]).catch(showError));
  $('train').addEventListener('click', () => start().catch((e) => { showError(e); running = false; buttons(); }));
  $('stop').addEventListener('click', () => { running = false; status(`${$('status').textContent} (stopping)`); });
  $('continue').addEventListener('click', () => trainLoop());
  $('download').addEventListener('click', () => download().catch(showError));
  buttons();
  const params = new URLSearchParams(location.search);
  if (params.has('autorun')) {
    await autorun(params).catch((e) => console.log('shadertrain-result ' + JSON.stringify({ error: String(e.message || e) })));
  }
}

main().catch(showError);
