//! The training driver: uploads the data once, builds every bind group once, then records whole
//! chunks of steps without waiting on the GPU, and reads back metrics once per epoch.
//!
//! Per step, for a batch of `rows` samples (the last batch of an epoch may be partial):
//!   gather        x = pixels[order[start..start+rows]] / 255, y = labels[...]
//!   per layer l   a[l+1] = f_l(a[l] W_l + b_l)                  (f of the last layer: identity)
//!   loss          per-sample loss and correct flag into epoch slots; g[L] = dL/dlogits
//!   per layer l, last first:
//!                 g[l+1] *= f_l'(a[l+1]);  db_l = Σ_rows g[l+1];  dW_l = a[l]ᵀ g[l+1]
//!                 g[l] = g[l+1] W_lᵀ                             (not for the input layer)
//!   update        Adam or SGD over the flat parameter buffer, in one dispatch
//!   advance       the step schedule's cursor moves to the next step's (start, rows, step size)
//! At the end of an epoch: the test set's forward passes, two reductions of the per-sample
//! metrics, one copy into a staging buffer, one map.

mod builder;
pub mod config;
mod measure;
mod program;
mod progress;
pub mod state;

use std::collections::VecDeque;
use std::time::Instant;

use wgpu::Buffer;

use builder::{OperandMirrors, ProgramBuilder, TransposedInput};
pub use config::{EpochMetrics, EpochProgress, Evaluation, GpuWork, OptimizerKind, TrainConfig};
use program::{Program, Recorder};
use progress::{PROGRESS_READS_IN_FLIGHT, PendingRead, ProgressReads};
pub use state::{EpochState, TrainingState};

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::gpu::uniforms::*;
use crate::gpu::{Gpu, Kernels};
use crate::model::{ModelSpec, ParamLayout};
use crate::reference::adam_step_size;
use crate::rng::Rng;

/// One dataset split on the GPU, with its per-sample metric slots.
struct DeviceSplit {
    samples: usize,
    pixels: Buffer,
    labels: Buffer,
    order: Buffer,
    sample_loss: Buffer,
    sample_correct: Buffer,
    sample_prediction: Buffer,
}

impl DeviceSplit {
    fn upload(gpu: &Gpu, name: &str, data: &Dataset) -> Result<Self> {
        let labels: Vec<u32> = data.labels.iter().map(|&l| l as u32).collect();
        let identity: Vec<u32> = (0..data.samples() as u32).collect();
        let slots = (data.samples() * 4) as u64;
        Ok(DeviceSplit {
            samples: data.samples(),
            pixels: gpu.storage_with(&format!("{name} pixels"), &data.pixels)?,
            labels: gpu.storage_with(&format!("{name} labels"), &labels)?,
            order: gpu.storage_with(&format!("{name} order"), &identity)?,
            sample_loss: gpu.storage_buffer(&format!("{name} sample loss"), slots)?,
            sample_correct: gpu.storage_buffer(&format!("{name} sample correct"), slots)?,
            sample_prediction: gpu.storage_buffer(&format!("{name} sample prediction"), slots)?,
        })
    }
}

/// Batches of one epoch: (start, rows) for each step.
fn batches(samples: usize, batch_size: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..samples)
        .step_by(batch_size)
        .map(move |start| (start, batch_size.min(samples - start)))
}

/// The program for a batch of `rows`: the partial-batch one when it is shorter than a full batch.
fn program_for<'p, 'k>(
    rows: usize,
    batch_size: usize,
    full: &'p Program<'k>,
    tail: &'p Option<Program<'k>>,
) -> &'p Program<'k> {
    match tail {
        Some(tail) if rows < batch_size => tail,
        _ => full,
    }
}

/// The epoch under way: its order and steps, and how many of them are submitted.
struct EpochInProgress {
    order: Vec<u32>,
    steps: Vec<StepParams>,
    /// Steps submitted so far.
    next: usize,
    started: Instant,
    work: GpuWork,
}

impl EpochInProgress {
    /// Training samples in the first `steps` steps.
    fn samples_in(&self, steps: usize) -> usize {
        self.steps[..steps].iter().map(|s| s.rows as usize).sum()
    }
}

/// Trains one model on one device. Construction does all allocation and pipeline binding.
pub struct Trainer<'k> {
    gpu: &'k Gpu,
    spec: ModelSpec,
    config: TrainConfig,
    layout: ParamLayout,
    rng: Rng,
    epochs_done: usize,
    steps_done: u64,
    train: DeviceSplit,
    test: DeviceSplit,
    params: Buffer,
    grads: Buffer,
    moments: Option<(Buffer, Buffer)>,
    epoch: Option<EpochInProgress>,
    progress: ProgressReads<'k>,
    /// The step schedule (schedule.wgsl): cursor, then this epoch's training steps, then the
    /// test set's evaluation steps.
    schedule: Buffer,
    totals_staging: Buffer,
    totals: Buffer,
    /// The training split's metric-reduction parameters: its count is the samples trained this
    /// epoch, written per epoch.
    train_metrics_shape: Buffer,
    /// Forward + backward for a full batch and for the epoch's partial last batch, if any.
    train_full: Program<'k>,
    train_tail: Option<Program<'k>>,
    update: Program<'k>,
    /// Moves the schedule's cursor to the next step; ends every step.
    advance: Program<'k>,
    test_full: Program<'k>,
    test_tail: Option<Program<'k>>,
    epoch_end: Program<'k>,
}

impl<'k> Trainer<'k> {
    pub fn new(
        gpu: &'k Gpu,
        kernels: &'k Kernels,
        spec: ModelSpec,
        config: TrainConfig,
        train: &Dataset,
        test: &Dataset,
    ) -> Result<Self> {
        if train.samples() == 0 {
            return Err(Error::Config("the training set is empty".into()));
        }
        Self::build(gpu, kernels, spec, config, train, test)
    }

    /// A trainer that only evaluates `test` (with parameters given by `set_parameters`): it has
    /// no training set.
    pub fn for_evaluation(
        gpu: &'k Gpu,
        kernels: &'k Kernels,
        spec: ModelSpec,
        test: &Dataset,
    ) -> Result<Self> {
        let no_training = Dataset {
            features: test.features,
            classes: test.classes,
            pixels: Vec::new(),
            labels: Vec::new(),
        };
        Self::build(
            gpu,
            kernels,
            spec,
            TrainConfig::default(),
            &no_training,
            test,
        )
    }

    fn build(
        gpu: &'k Gpu,
        kernels: &'k Kernels,
        spec: ModelSpec,
        config: TrainConfig,
        train: &Dataset,
        test: &Dataset,
    ) -> Result<Self> {
        spec.validate()?;
        config.validate()?;
        if test.samples() == 0 {
            return Err(Error::Config("the test set is empty".into()));
        }
        for (name, data) in [("training", train), ("test", test)] {
            if data.features != spec.inputs || data.classes != spec.classes {
                return Err(Error::Config(format!(
                    "the model takes {} inputs and {} classes but the {name} set has {} features and {} classes",
                    spec.inputs, spec.classes, data.features, data.classes
                )));
            }
        }
        if !spec.inputs.is_multiple_of(4) {
            return Err(Error::Config(format!(
                "inputs per sample must be a multiple of 4 (the GPU unpacks pixels four at a time), got {}",
                spec.inputs
            )));
        }
        let layout = spec.layout();
        let mut rng = Rng::new(config.seed);
        let initial = layout.glorot_uniform(&mut rng);
        let param_bytes = (layout.total * 4) as u64;
        let params = gpu.storage_with("parameters", &initial)?;
        let grads = gpu.storage_buffer("gradients", param_bytes)?;
        let moments = match config.optimizer {
            OptimizerKind::Adam => Some((
                gpu.storage_buffer("adam first moment", param_bytes)?,
                gpu.storage_buffer("adam second moment", param_bytes)?,
            )),
            OptimizerKind::Sgd => None,
        };

        let batch = config.batch_size;
        let widths = spec.widths();
        let mut activations = Vec::new();
        let mut activation_grads = Vec::new();
        for (l, &width) in widths.iter().enumerate() {
            let bytes = (batch * width * 4) as u64;
            activations.push(gpu.storage_buffer(&format!("activation {l}"), bytes)?);
            activation_grads.push(gpu.storage_buffer(&format!("activation grad {l}"), bytes)?);
        }
        let batch_labels = gpu.storage_buffer("batch labels", (batch * 4) as u64)?;

        let train_split = DeviceSplit::upload(gpu, "training", train)?;
        let test_split = DeviceSplit::upload(gpu, "test", test)?;
        let train_steps = train.samples().div_ceil(batch);
        let test_steps = test.samples().div_ceil(batch);
        let step_bytes = std::mem::size_of::<StepParams>() as u64;
        let schedule = gpu.storage_buffer(
            "step schedule",
            SCHEDULE_HEADER_BYTES + step_bytes * (train_steps + test_steps) as u64,
        )?;
        let totals = gpu.storage_buffer("metric totals", 16)?;
        let totals_staging = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("metric totals staging"),
            size: 16,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });

        let mirrors = OperandMirrors::new(gpu, kernels, &params, &activations, &activation_grads);
        let input_transposed = TransposedInput::new(gpu, kernels, spec.inputs, batch)?;
        let builder = ProgramBuilder {
            gpu,
            kernels,
            spec: &spec,
            layout: &layout,
            activations: &activations,
            activation_grads: &activation_grads,
            batch_labels: &batch_labels,
            params: &params,
            grads: &grads,
            schedule: &schedule,
            mirrors: &mirrors,
            input_transposed: input_transposed.as_ref(),
        };
        let train_program =
            |rows: usize| builder.backward(builder.forward(&train_split, rows, true), rows);
        let tail = |samples: usize| Some(samples % batch).filter(|&r| r > 0);
        let train_full = train_program(batch);
        let train_tail = tail(train.samples()).map(train_program);
        let test_full = builder.forward(&test_split, batch, false);
        let test_tail = tail(test.samples()).map(|rows| builder.forward(&test_split, rows, false));
        let update = builder.update(&config, moments.as_ref());
        let advance = builder.advance();
        let metrics_shape = |split: &DeviceSplit, slot| MetricsShape {
            count: split.samples as u32,
            slot,
            _pad: [0; 2],
        };
        let train_metrics_shape =
            gpu.storage_with("training metrics shape", &[metrics_shape(&train_split, 0)])?;
        let test_metrics_shape =
            gpu.params_with("test metrics shape", &metrics_shape(&test_split, 1));
        let mut epoch_end = builder.sum_metrics(&train_split, &train_metrics_shape, &totals);
        epoch_end.extend(builder.sum_metrics(&test_split, &test_metrics_shape, &totals));
        let progress = ProgressReads::new(&builder, &train_split)?;

        let trainer = Trainer {
            gpu,
            spec,
            config,
            layout,
            rng,
            epochs_done: 0,
            steps_done: 0,
            train: train_split,
            test: test_split,
            params,
            grads,
            moments,
            epoch: None,
            progress,
            schedule,
            totals_staging,
            totals,
            train_metrics_shape,
            train_full,
            train_tail,
            update,
            advance,
            test_full,
            test_tail,
            epoch_end,
        };
        // The test set's steps never change: positions only.
        let test_steps: Vec<StepParams> = batches(test.samples(), batch)
            .map(|(start, rows)| StepParams {
                batch_start: start as u32,
                rows: rows as u32,
                adam_step_size: 0.0,
                _pad: 0,
            })
            .collect();
        trainer.write_schedule(0, train_steps, &test_steps);
        Ok(trainer)
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    pub fn epochs_done(&self) -> usize {
        self.epochs_done
    }

    /// Training steps taken (submitted) since the start of the run.
    pub fn steps_done(&self) -> u64 {
        self.steps_done
    }

    /// The epoch under way, if any: (steps taken, steps in the epoch).
    pub fn epoch_position(&self) -> Option<(usize, usize)> {
        self.epoch.as_ref().map(|e| (e.next, e.steps.len()))
    }

    fn train_steps(&self) -> usize {
        self.train.samples.div_ceil(self.config.batch_size)
    }

    /// The parameters of training step number `t` of the run (counting from 1): Adam's
    /// bias-corrected step size depends on it.
    fn training_step(&self, t: u64, batch_start: usize, rows: usize) -> StepParams {
        let c = &self.config;
        StepParams {
            batch_start: batch_start as u32,
            rows: rows as u32,
            adam_step_size: adam_step_size(c.learning_rate, c.beta1, c.beta2, t),
            _pad: 0,
        }
    }

    /// The steps of an epoch that starts after `steps_before` steps of the run: every batch,
    /// unless `max_steps` ends the epoch early.
    fn epoch_steps(&self, steps_before: u64) -> Vec<StepParams> {
        let remaining = self
            .config
            .max_steps
            .map_or(u64::MAX, |m| m.saturating_sub(steps_before));
        batches(self.train.samples, self.config.batch_size)
            .take(usize::try_from(remaining).unwrap_or(usize::MAX))
            .enumerate()
            .map(|(i, (start, rows))| self.training_step(steps_before + i as u64 + 1, start, rows))
            .collect()
    }

    /// Writes `steps` into the schedule from slot `first_slot` on, and puts the cursor on slot
    /// `cursor`. Queue writes land before the next submission, after the ones before it.
    fn write_schedule(&self, cursor: usize, first_slot: usize, steps: &[StepParams]) {
        let queue = &self.gpu.queue;
        let header = [cursor as u32, 0, 0, 0];
        queue.write_buffer(&self.schedule, 0, bytemuck::cast_slice(&header));
        let offset =
            SCHEDULE_HEADER_BYTES + (first_slot * std::mem::size_of::<StepParams>()) as u64;
        queue.write_buffer(&self.schedule, offset, bytemuck::cast_slice(steps));
    }

    /// Makes `epoch` the epoch under way on the GPU: its order, and its steps from the next one on.
    fn install_epoch(&mut self, epoch: EpochInProgress) {
        self.gpu
            .queue
            .write_buffer(&self.train.order, 0, bytemuck::cast_slice(&epoch.order));
        self.write_schedule(epoch.next, epoch.next, &epoch.steps[epoch.next..]);
        self.epoch = Some(epoch);
    }

    /// Starts an epoch: draws its shuffled order (file order with `shuffle` off) and writes its
    /// schedule. Its steps are then taken by `train` and it is closed by `end_epoch`.
    pub fn start_epoch(&mut self) -> Result<()> {
        if self.epoch.is_some() {
            return Err(Error::Config("an epoch is already under way".into()));
        }
        if self.finished() {
            return Err(Error::Config(format!(
                "the step limit ({} steps) is reached: nothing left to train",
                self.steps_done
            )));
        }
        let mut order: Vec<u32> = (0..self.train.samples as u32).collect();
        if self.config.shuffle {
            self.rng.shuffle(&mut order);
        }
        let epoch = EpochInProgress {
            order,
            steps: self.epoch_steps(self.steps_done),
            next: 0,
            started: Instant::now(),
            work: GpuWork::default(),
        };
        self.install_epoch(epoch);
        Ok(())
    }

    /// Trains one epoch over the whole training set in a freshly shuffled order (or finishes
    /// the one under way), then evaluates the test set. The host waits on the GPU once, for
    /// the metrics, at the end.
    pub fn run_epoch(&mut self) -> Result<EpochMetrics> {
        if self.epoch.is_none() {
            self.start_epoch()?;
        }
        self.train(usize::MAX, None)?;
        self.end_epoch()
    }

    /// Takes up to `count` more steps of the epoch under way, without waiting for the GPU, in
    /// command buffers of `steps_per_submit` steps. With `progress`, each chunk also sums the
    /// epoch's metrics so far and `progress` is called as the GPU finishes each chunk; chunks
    /// are queued ahead of the one waited for, so the GPU does not wait for the host.
    pub fn train(
        &mut self,
        count: usize,
        progress: Option<&mut dyn FnMut(EpochProgress)>,
    ) -> Result<()> {
        let mut epoch = self
            .epoch
            .take()
            .ok_or_else(|| Error::Config("no epoch is under way: start one first".into()))?;
        let taken_before = epoch.next;
        let outcome = self.submit_steps(&mut epoch, count, progress);
        self.steps_done += (epoch.next - taken_before) as u64;
        self.epoch = Some(epoch);
        outcome
    }

    fn submit_steps(
        &self,
        epoch: &mut EpochInProgress,
        count: usize,
        mut progress: Option<&mut dyn FnMut(EpochProgress)>,
    ) -> Result<()> {
        let until = epoch.steps.len().min(epoch.next.saturating_add(count));
        let mut pending = VecDeque::new();
        let mut chunks = 0;
        while epoch.next < until {
            let end = until.min(epoch.next + self.config.steps_per_submit);
            if let Some(report) = progress.as_deref_mut() {
                if pending.len() == PROGRESS_READS_IN_FLIGHT {
                    let read = pending.pop_front().expect("a full ring");
                    self.finish_progress_read(read, epoch, report)?;
                }
                let shape = MetricsShape {
                    count: epoch.samples_in(end) as u32,
                    slot: 0,
                    _pad: [0; 2],
                };
                self.gpu
                    .queue
                    .write_buffer(&self.progress.shape, 0, bytemuck::bytes_of(&shape));
            }
            let staging = chunks % PROGRESS_READS_IN_FLIGHT;
            let mut encoder = self.gpu.device.create_command_encoder(&Default::default());
            {
                let mut recorder = Recorder::new(&mut encoder);
                let steps = &epoch.steps[epoch.next..end];
                self.record_steps(&mut recorder, steps, &mut epoch.work);
                if progress.is_some() {
                    epoch.work.dispatches += self.progress.sum.record(&mut recorder);
                }
            }
            if progress.is_some() {
                let staging_buffer = &self.progress.staging[staging];
                encoder.copy_buffer_to_buffer(&self.progress.totals, 0, staging_buffer, 0, 8);
            }
            let submission = self.gpu.queue.submit([encoder.finish()]);
            epoch.work.submits += 1;
            if progress.is_some() {
                let (sender, mapped) = std::sync::mpsc::channel();
                self.progress.staging[staging].map_async(wgpu::MapMode::Read, .., move |r| {
                    let _ = sender.send(r);
                });
                pending.push_back(PendingRead {
                    staging,
                    submission,
                    mapped,
                    steps_done: end,
                    samples: epoch.samples_in(end),
                });
            }
            epoch.next = end;
            chunks += 1;
        }
        if let Some(report) = progress {
            while let Some(read) = pending.pop_front() {
                self.finish_progress_read(read, epoch, report)?;
            }
        }
        Ok(())
    }

    /// Closes the epoch under way once all its steps are taken: evaluates the test set and
    /// reads back the epoch's metrics (the one wait).
    pub fn end_epoch(&mut self) -> Result<EpochMetrics> {
        let Some(epoch) = self.epoch.as_mut() else {
            return Err(Error::Config("no epoch is under way".into()));
        };
        if epoch.next < epoch.steps.len() {
            return Err(Error::Config(format!(
                "the epoch has {} of its {} steps left",
                epoch.steps.len() - epoch.next,
                epoch.steps.len()
            )));
        }
        let trained = epoch.samples_in(epoch.steps.len());
        let mut work = epoch.work;
        let started = epoch.started;
        let shape = MetricsShape {
            count: trained as u32,
            slot: 0,
            _pad: [0; 2],
        };
        self.gpu
            .queue
            .write_buffer(&self.train_metrics_shape, 0, bytemuck::bytes_of(&shape));
        let totals = self.evaluate_and_read_totals(&mut work)?;
        self.epoch = None;
        self.epochs_done += 1;
        let seconds = started.elapsed().as_secs_f64();
        let train_samples = trained as f64;
        let test_samples = self.test.samples as f64;
        Ok(EpochMetrics {
            epoch: self.epochs_done,
            train_samples: trained,
            train_loss: f32::from_bits(totals[0]) as f64 / train_samples,
            train_accuracy: totals[1] as f64 / train_samples,
            test_loss: f32::from_bits(totals[2]) as f64 / test_samples,
            test_accuracy: totals[3] as f64 / test_samples,
            seconds,
            samples_per_second: train_samples / seconds,
            work,
        })
    }

    /// Whether `max_steps` training steps have been taken.
    pub fn finished(&self) -> bool {
        self.config.max_steps.is_some_and(|m| self.steps_done >= m)
    }

    /// Records the dispatches of `steps`, whose parameters are in the schedule from the
    /// cursor on.
    fn record_steps(&self, recorder: &mut Recorder<'_>, steps: &[StepParams], work: &mut GpuWork) {
        let batch = self.config.batch_size;
        for step in steps {
            let rows = step.rows as usize;
            work.dispatches +=
                program_for(rows, batch, &self.train_full, &self.train_tail).record(recorder);
            work.dispatches += self.update.record(recorder);
            work.dispatches += self.advance.record(recorder);
        }
    }

    /// Evaluates the test set with the current parameters: mean loss, accuracy and each
    /// sample's predicted class (waits for the GPU).
    pub fn evaluate(&self) -> Result<Evaluation> {
        let totals = self.evaluate_and_read_totals(&mut GpuWork::default())?;
        let samples = self.test.samples as f64;
        Ok(Evaluation {
            loss: f32::from_bits(totals[2]) as f64 / samples,
            accuracy: totals[3] as f64 / samples,
            predictions: self
                .gpu
                .read_back(&self.test.sample_prediction, self.test.samples)?,
        })
    }

    /// Replaces the parameters (laid out as `layout()` says), e.g. with a saved model's.
    pub fn set_parameters(&self, params: &[f32]) -> Result<()> {
        if params.len() != self.layout.total {
            return Err(Error::Config(format!(
                "{} parameters given, the model has {}",
                params.len(),
                self.layout.total
            )));
        }
        self.gpu
            .queue
            .write_buffer(&self.params, 0, bytemuck::cast_slice(params));
        Ok(())
    }

    /// Runs the test set forward, reduces both splits' per-sample metrics and reads the four
    /// totals (training loss, training correct, test loss, test correct) back: the one wait.
    fn evaluate_and_read_totals(&self, work: &mut GpuWork) -> Result<Vec<u32>> {
        // The test steps follow the slots of a whole epoch's training steps, whether or not a
        // step limit ended this epoch early.
        let cursor = [self.train_steps() as u32, 0, 0, 0];
        self.gpu
            .queue
            .write_buffer(&self.schedule, 0, bytemuck::cast_slice(&cursor));
        let mut encoder = self.gpu.device.create_command_encoder(&Default::default());
        {
            let mut recorder = Recorder::new(&mut encoder);
            let batch = self.config.batch_size;
            for (_, rows) in batches(self.test.samples, batch) {
                work.dispatches += program_for(rows, batch, &self.test_full, &self.test_tail)
                    .record(&mut recorder);
                work.dispatches += self.advance.record(&mut recorder);
            }
            work.dispatches += self.epoch_end.record(&mut recorder);
        }
        encoder.copy_buffer_to_buffer(&self.totals, 0, &self.totals_staging, 0, 16);
        self.gpu.queue.submit([encoder.finish()]);
        work.submits += 1;
        work.readbacks += 1;
        self.gpu.map_and_read(&self.totals_staging)
    }

    /// The current parameters, laid out as `layout()` says (waits for the GPU).
    pub fn parameters(&self) -> Result<Vec<f32>> {
        self.gpu.read_back(&self.params, self.layout.total)
    }
}
