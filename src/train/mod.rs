//! The training driver: uploads the data once, builds every bind group once, then records whole
//! chunks of steps without waiting on the GPU, and reads back metrics once per epoch.
//!
//! Per step, for a batch of `rows` samples (the last batch of an epoch may be partial):
//!   gather        x = pixels[order[start..start+rows]] / 255, y = labels[...]
//!   per layer l   a[l+1] = layer_l(a[l])                         (`crate::layers`)
//!   loss          per-sample loss and correct flag into epoch slots; g[L] = dL/dlogits
//!   per layer l, last first:
//!                 the layer's parameter gradients, and g[l] = dL/da[l] where a layer below
//!                 has parameters
//!   update        SGD (plain or momentum), Adam or AdamW over the flat parameter buffer, in one
//!                 dispatch
//!   advance       the step schedule's cursor moves to the next step's (start, rows, learning
//!                 rate, step size, decay, step number)
//! At the end of an epoch: the test set's (and validation set's) forward passes, reductions of
//! the per-sample metrics, one copy into a staging buffer, one map.

pub(crate) mod builder;
pub mod config;
mod fit;
pub mod gradients;
mod measure;
pub mod optimizer;
mod pacing;
mod progress;
pub mod recipe;
pub mod schedule;
pub mod state;

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use web_time::Instant;

use wgpu::Buffer;

use crate::gpu::program::{Program, Recorder};
use builder::{GradientRoutes, ProgramBuilder};
pub use config::{
    EpochMetrics, EpochProgress, Evaluation, GpuWork, OptimizerKind, SplitMetrics, TrainConfig,
    adam_step_size,
};
pub use gradients::{FeatureGradient, ScoreGradient, ScoreGradients};
pub use optimizer::UpdateRule;
use pacing::{CHUNKS_IN_FLIGHT, InFlight, Pace};
use progress::{PROGRESS_READS_IN_FLIGHT, PendingRead, ProgressReads};
pub use recipe::{ModelPreset, TrainingChoices};
pub use schedule::{LrSchedule, RunLength};
pub use state::{EpochState, TrainingState};

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::gpu::buffers::wait_for;
use crate::gpu::uniforms::*;
use crate::gpu::{Gpu, Kernels};
use crate::input::augmentation_key;
use crate::layers::kind::DeviceArgs;
use crate::layers::residual::AddDevice;
use crate::layers::{DeviceLayer, DeviceTensor, LayerContext, TransposedInput};
use crate::model::{ModelSpec, Op, ParamLayout, Plan};
use crate::rng::Rng;

/// One dataset split on the GPU, with its per-sample metric slots.
pub(crate) struct DeviceSplit {
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

/// Bytes of the metric totals: a loss and a correct count for each of training, test and
/// validation.
const TOTALS_BYTES: u64 = 24;

/// Activation bytes an evaluation batch may take (tensors and their gradients).
const EVALUATION_BYTES: usize = 32 << 20;
/// The most rows an evaluation batch takes, however small the model.
const EVALUATION_MAX_ROWS: usize = 1024;

/// Rows of an evaluation batch for a model whose tensors have `floats_per_sample` in all: as many
/// as fit `EVALUATION_BYTES`, up to `EVALUATION_MAX_ROWS` and the largest evaluated split, but
/// never fewer than the training batch, whose buffers exist anyway. Each sample's metrics are
/// its own, so the batch changes how fast the evaluation runs, not what it reports.
fn evaluation_batch(floats_per_sample: usize, batch: usize, samples: usize) -> usize {
    let fit = EVALUATION_BYTES / (8 * floats_per_sample).max(1);
    fit.clamp(1, EVALUATION_MAX_ROWS).min(samples).max(batch)
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
    /// When this process took the epoch up, and at which step: a resumed epoch's clock starts
    /// at the resume.
    started: Instant,
    started_at_step: usize,
    work: GpuWork,
}

impl EpochInProgress {
    /// Training samples in the first `steps` steps.
    fn samples_in(&self, steps: usize) -> usize {
        self.steps[..steps].iter().map(|s| s.rows as usize).sum()
    }
}

/// A split evaluated at every epoch's end (the test set, the validation set): its data and its
/// forward programs, for a full batch and its partial last batch.
struct EvaluatedSplit<'k> {
    data: DeviceSplit,
    full: Program<'k>,
    tail: Option<Program<'k>>,
    /// Its first step's slot in the schedule.
    first_slot: usize,
    /// Its slot in the metric totals.
    totals_slot: usize,
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
    test: EvaluatedSplit<'k>,
    validation: Option<EvaluatedSplit<'k>>,
    params: DeviceTensor,
    /// BatchNorm's running statistics: the parameters' tail (`ParamLayout::state`).
    state: Buffer,
    grads: Buffer,
    /// The update rule's per-parameter state (`UpdateRule::state_names`).
    optimizer_state: Vec<Buffer>,
    epoch: Option<EpochInProgress>,
    progress: ProgressReads<'k>,
    /// The step schedule (shared/step.wgsl): cursor, then this epoch's training steps, then the
    /// test set's evaluation steps, then the validation set's.
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
    /// Rows of an evaluation step (`evaluation_batch`).
    evaluation_batch: usize,
    /// Moves the schedule's cursor to the next step; ends every step.
    advance: Program<'k>,
    epoch_end: Program<'k>,
    /// When set, `train` returns at the next chunk boundary (a signal asked the run to stop).
    stop: Option<Arc<AtomicBool>>,
    /// The measured GPU time of a training step and of an evaluation batch, which size the
    /// chunks of a stoppable run.
    training_pace: Cell<Pace>,
    evaluation_pace: Cell<Pace>,
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
            shape: test.shape,
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
        let plan = spec.plan()?;
        config.validate()?;
        let (train, validation) = train.split_validation(config.validation_split)?;
        if test.samples() == 0 {
            return Err(Error::Config("the test set is empty".into()));
        }
        check_data_fits(&spec, [("training", &train), ("test", test)])?;
        config.augmentation.check(spec.input)?;
        let layout = plan.layout.clone();
        let batch = config.batch_size;
        // A batch larger than the training set is the whole set, as Keras takes it: no buffer
        // holds more rows than a step can have.
        let batch_rows = batch.min(train.samples()).max(1);
        let shapes = plan.shapes();
        let evaluated_samples = test
            .samples()
            .max(validation.as_ref().map_or(0, |v| v.samples()));
        let evaluation_batch = evaluation_batch(
            shapes.iter().map(|shape| shape.len()).sum(),
            batch_rows,
            evaluated_samples,
        );
        // Every tensor and layer is sized for the larger of a training and an evaluation step.
        let rows_at_most = batch_rows.max(evaluation_batch);
        // Before anything is allocated, on the host or the device.
        fit::check(
            gpu,
            &plan,
            rows_at_most,
            [("training", train.samples()), ("test", test.samples())],
        )?;
        let mut rng = Rng::new(config.seed);
        let initial = spec.glorot_uniform(&mut rng);
        let ParameterBuffers {
            params,
            state,
            grads,
            optimizer_state,
        } = ParameterBuffers::new(gpu, kernels, &layout, &initial, UpdateRule::of(&config))?;
        let tensors = plan_tensors(gpu, kernels, &plan, rows_at_most)?;
        let routes = GradientRoutes::new(gpu, kernels, &plan, rows_at_most)?;
        let layers = (0..plan.nodes.len())
            .map(|n| device_layer(gpu, kernels, &plan, n, rows_at_most, config.seed))
            .collect::<Result<Vec<_>>>()?;
        let batch_labels = gpu.storage_buffer("batch labels", (rows_at_most * 4) as u64)?;

        let train_split = DeviceSplit::upload(gpu, "training", &train)?;
        let test_split = DeviceSplit::upload(gpu, "test", test)?;
        let validation_split = validation
            .as_ref()
            .map(|data| DeviceSplit::upload(gpu, "validation", data))
            .transpose()?;
        let train_steps = train.samples().div_ceil(batch);
        let test_steps = test.samples().div_ceil(evaluation_batch);
        let validation_steps = validation
            .as_ref()
            .map_or(0, |v| v.samples().div_ceil(evaluation_batch));
        let step_bytes = std::mem::size_of::<StepParams>() as u64;
        let slots = train_steps + test_steps + validation_steps;
        let schedule = gpu.storage_buffer(
            "step schedule",
            SCHEDULE_HEADER_BYTES + step_bytes * slots as u64,
        )?;
        let totals = gpu.storage_buffer("metric totals", TOTALS_BYTES)?;
        let totals_staging = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("metric totals staging"),
            size: TOTALS_BYTES,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });

        let batch_dense = plan.batch_dense();
        // gather_images writes no transposed batch.
        let plain_gather = spec.standardisation.is_none() && config.augmentation.is_none();
        let input_transposed = match batch_dense {
            Some(_) if plain_gather => {
                TransposedInput::new(gpu, kernels, spec.input.len(), batch_rows)?
            }
            _ => None,
        };
        let builder = ProgramBuilder {
            context: LayerContext {
                gpu,
                kernels,
                params: &params,
                grads: &grads,
                state: &state,
                schedule: &schedule,
                input_transposed: input_transposed.as_ref(),
                batch_dense,
            },
            spec: &spec,
            plan: &plan,
            layers: &layers,
            tensors: &tensors,
            routes: &routes,
            batch_labels: &batch_labels,
            param_floats: layout.trained,
            label_smoothing: config.label_smoothing,
            augmentation: (!config.augmentation.is_none())
                .then(|| (config.augmentation, augmentation_key(config.seed))),
        };
        let train_program =
            |rows: usize| builder.backward(builder.forward(&train_split, rows, true), rows);
        let tail = |samples: usize, batch: usize| Some(samples % batch).filter(|&r| r > 0);
        let train_full = train_program(batch_rows);
        let train_tail = tail(train.samples(), batch).map(train_program);
        let evaluated = |data: DeviceSplit, first_slot: usize, totals_slot: usize| {
            let full = builder.forward(&data, evaluation_batch, false);
            let tail = tail(data.samples, evaluation_batch)
                .map(|rows| builder.forward(&data, rows, false));
            EvaluatedSplit {
                data,
                full,
                tail,
                first_slot,
                totals_slot,
            }
        };
        let test_split = evaluated(test_split, train_steps, 1);
        let validation_split =
            validation_split.map(|data| evaluated(data, train_steps + test_steps, 2));
        let update = builder.update(&config, &optimizer_state);
        let advance = builder.advance();
        let metrics_shape = |samples: usize, slot| MetricsShape {
            count: samples as u32,
            slot,
            _pad: [0; 2],
        };
        let train_metrics_shape = gpu.storage_with(
            "training metrics shape",
            &[metrics_shape(train_split.samples, 0)],
        )?;
        let mut epoch_end = builder.sum_metrics(&train_split, &train_metrics_shape, &totals);
        for split in std::iter::once(&test_split).chain(&validation_split) {
            let shape = metrics_shape(split.data.samples, split.totals_slot as u32);
            let shape = gpu.params_with("evaluation metrics shape", &shape);
            epoch_end.extend(builder.sum_metrics(&split.data, &shape, &totals));
        }
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
            validation: validation_split,
            params,
            state,
            grads,
            optimizer_state,
            epoch: None,
            progress,
            schedule,
            totals_staging,
            totals,
            train_metrics_shape,
            train_full,
            train_tail,
            update,
            evaluation_batch,
            advance,
            epoch_end,
            stop: None,
            training_pace: Cell::default(),
            evaluation_pace: Cell::default(),
        };
        // The evaluation steps never change: positions only.
        for split in std::iter::once(&trainer.test).chain(&trainer.validation) {
            let steps: Vec<StepParams> = batches(split.data.samples, evaluation_batch)
                .map(|(start, rows)| StepParams::rows_at(start, rows))
                .collect();
            trainer.write_schedule(0, split.first_slot, &steps);
        }
        Ok(trainer)
    }

    /// Makes `train` return early, at the next boundary between command buffers, once `stop`
    /// is set (by a signal handler, say); the steps taken so far are whole and can be saved.
    /// The host then stays at most a few command buffers ahead of the GPU.
    pub fn stop_when(&mut self, stop: Arc<AtomicBool>) {
        self.stop = Some(stop);
    }

    /// Whether the flag given to `stop_when` is set.
    pub fn stop_requested(&self) -> bool {
        (self.stop.as_ref()).is_some_and(|s| s.load(Ordering::SeqCst))
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Rows of an evaluation step: as many as the device memory set aside for it holds, however
    /// small the training batch.
    pub fn evaluation_batch(&self) -> usize {
        self.evaluation_batch
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

    /// The training batches each BatchNorm has normalised, as PyTorch counts them
    /// (`num_batches_tracked`): those before the run and one a step.
    pub fn batches_tracked(&self) -> u64 {
        (self.config.batches_tracked_before).saturating_add(self.steps_done)
    }

    /// The epoch under way, if any: (steps taken, steps in the epoch).
    pub fn epoch_position(&self) -> Option<(usize, usize)> {
        self.epoch.as_ref().map(|e| (e.next, e.steps.len()))
    }

    fn train_steps(&self) -> usize {
        self.train.samples.div_ceil(self.config.batch_size)
    }

    /// The run's length in steps, as its learning-rate schedule sees it.
    pub fn run_length(&self) -> RunLength {
        let c = &self.config;
        RunLength::new(c.epochs, self.train_steps(), c.warmup_epochs)
    }

    /// The parameters of training step number `t` of the run (counting from 1): its learning
    /// rate, Adam's bias-corrected step size and AdamW's decay depend on it.
    fn training_step(&self, t: u64, batch_start: usize, rows: usize) -> StepParams {
        optimizer::training_step(&self.config, self.run_length(), t, batch_start, rows)
    }

    /// The learning rate of the last step taken (of the first, before any).
    pub fn learning_rate(&self) -> f32 {
        let t = self.steps_done.max(1);
        schedule::learning_rate(
            self.config.lr_schedule,
            self.config.learning_rate,
            t - 1,
            self.run_length(),
        )
    }

    /// The steps of an epoch that starts after `steps_before` steps of the run: every batch.
    /// (`max_steps` stops `train` inside the epoch; the epoch stays under way, so that a run
    /// resumed with a higher limit goes on with it.)
    fn epoch_steps(&self, steps_before: u64) -> Vec<StepParams> {
        batches(self.train.samples, self.config.batch_size)
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
            return Err(self.step_limit_reached());
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
            started_at_step: 0,
            work: GpuWork::default(),
        };
        self.install_epoch(epoch);
        Ok(())
    }

    /// Trains one epoch over the whole training set in a freshly shuffled order (or finishes
    /// the one under way), then evaluates the test set. The host waits on the GPU once, for
    /// the metrics, at the end. When `max_steps` (or a stop) comes first, the figures are of
    /// the partial epoch, which stays under way.
    pub fn run_epoch(&mut self) -> Result<EpochMetrics> {
        wait_for(self.run_epoch_async())
    }

    /// `run_epoch` as a future: what a web page awaits.
    pub async fn run_epoch_async(&mut self) -> Result<EpochMetrics> {
        if self.finished() {
            return Err(self.step_limit_reached());
        }
        if self.epoch.is_none() {
            self.start_epoch()?;
        }
        self.train(usize::MAX, None)?;
        match self.epoch_position() {
            Some((taken, total)) if taken < total => self.epoch_so_far_async().await,
            _ => self.end_epoch_async().await,
        }
    }

    fn step_limit_reached(&self) -> Error {
        Error::Config(format!(
            "the step limit ({} steps) is reached: nothing left to train",
            self.steps_done
        ))
    }

    /// Training steps left before `max_steps`.
    fn steps_left(&self) -> usize {
        self.config.max_steps.map_or(usize::MAX, |max| {
            usize::try_from(max.saturating_sub(self.steps_done)).unwrap_or(usize::MAX)
        })
    }

    /// Takes up to `count` more steps of the epoch under way (fewer where `max_steps` comes
    /// first), in command buffers of `steps_per_submit` steps, without waiting for the GPU;
    /// a stoppable trainer (`stop_when`) sizes them by time instead and stays a few ahead. With
    /// `progress`, each chunk also sums the epoch's metrics so far and `progress` is called as
    /// the GPU finishes each chunk; chunks are queued ahead of the one waited for, so the GPU
    /// does not wait for the host.
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
        let count = count.min(self.steps_left());
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
        // A stoppable run keeps a few chunks ahead of the GPU, sized by time, so that a stop
        // takes effect within a second, not at the epoch's end; one reading progress keeps a
        // few ahead too, so that it reads a chunk while the next run.
        let paced = self.stop.is_some();
        let mut in_flight = InFlight::default();
        let mut pace = self.training_pace.get();
        let mut chunks = 0;
        while epoch.next < until && !self.stop_requested() {
            let size = match paced {
                true => pace.chunk(self.config.steps_per_submit),
                false => self.config.steps_per_submit,
            };
            let end = until.min(epoch.next + size);
            let limit = match paced {
                true => pace.chunks_in_flight(),
                false => CHUNKS_IN_FLIGHT,
            };
            while in_flight.holds(limit) {
                in_flight.wait_oldest(self.gpu, &mut pace)?;
                if let Some(report) = progress.as_deref_mut() {
                    let read = pending.pop_front().expect("a read per chunk in flight");
                    self.finish_progress_read(read, epoch, report)?;
                }
            }
            if progress.is_some() {
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
            if paced || progress.is_some() {
                in_flight.push(submission.clone(), end - epoch.next);
            }
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
            crate::failpoint::reach(crate::failpoint::CHUNK_SUBMITTED);
        }
        self.training_pace.set(pace);
        if let Some(report) = progress {
            while let Some(read) = pending.pop_front() {
                self.finish_progress_read(read, epoch, report)?;
            }
        }
        Ok(())
    }

    /// Closes the epoch under way once all its steps are taken: evaluates the test set and
    /// reads back the epoch's metrics (the one wait). `Error::Stopped` when a stop (see
    /// `stop_when`) came during the evaluation: the epoch stays under way, every step taken.
    pub fn end_epoch(&mut self) -> Result<EpochMetrics> {
        wait_for(self.end_epoch_async())
    }

    /// `end_epoch` as a future.
    pub async fn end_epoch_async(&mut self) -> Result<EpochMetrics> {
        let Some(epoch) = self.epoch.as_ref() else {
            return Err(Error::Config("no epoch is under way".into()));
        };
        if epoch.next < epoch.steps.len() {
            return Err(Error::Config(format!(
                "the epoch has {} of its {} steps left",
                epoch.steps.len() - epoch.next,
                epoch.steps.len()
            )));
        }
        let metrics = self.epoch_metrics().await?;
        self.epoch = None;
        self.epochs_done += 1;
        Ok(metrics)
    }

    /// The figures of the epoch under way so far, without ending it: its training samples
    /// trained yet, and the test (and validation) set with the current weights. Training can
    /// go on afterwards. Waits for the GPU.
    pub fn epoch_so_far(&mut self) -> Result<EpochMetrics> {
        wait_for(self.epoch_so_far_async())
    }

    /// `epoch_so_far` as a future.
    pub async fn epoch_so_far_async(&mut self) -> Result<EpochMetrics> {
        let Some(epoch) = self.epoch.as_ref() else {
            return Err(Error::Config("no epoch is under way".into()));
        };
        let next = epoch.next;
        let metrics = self.epoch_metrics().await;
        // The evaluation moved the schedule's cursor (stopped or not): put it back on the next
        // training step.
        let header = [next as u32, 0, 0, 0];
        (self.gpu.queue).write_buffer(&self.schedule, 0, bytemuck::cast_slice(&header));
        metrics
    }

    /// The epoch under way's training figures over the steps taken, and the evaluated splits'.
    async fn epoch_metrics(&mut self) -> Result<EpochMetrics> {
        let epoch = self.epoch.as_mut().expect("an epoch under way");
        let trained = epoch.samples_in(epoch.next);
        let trained_here = trained - epoch.samples_in(epoch.started_at_step);
        let (steps_taken, steps) = (epoch.next, epoch.steps.len());
        let mut work = std::mem::take(&mut epoch.work);
        let started = epoch.started;
        let shape = MetricsShape {
            count: trained as u32,
            slot: 0,
            _pad: [0; 2],
        };
        self.gpu
            .queue
            .write_buffer(&self.train_metrics_shape, 0, bytemuck::bytes_of(&shape));
        let totals = self.evaluate_and_read_totals(&mut work).await?;
        let seconds = started.elapsed().as_secs_f64();
        let mean = |slot: usize, samples: usize| {
            let samples = samples.max(1) as f64;
            let loss = f32::from_bits(totals[2 * slot]) as f64 / samples;
            (loss, totals[2 * slot + 1] as f64 / samples)
        };
        let (train_loss, train_accuracy) = mean(0, trained);
        let (test_loss, test_accuracy) = mean(self.test.totals_slot, self.test.data.samples);
        let validation = (self.validation.as_ref())
            .map(|v| mean(v.totals_slot, v.data.samples))
            .map(|(loss, accuracy)| SplitMetrics { loss, accuracy });
        Ok(EpochMetrics {
            epoch: self.epochs_done + 1,
            train_samples: trained,
            steps_taken,
            steps,
            train_loss,
            train_accuracy,
            test_loss,
            test_accuracy,
            validation,
            seconds,
            samples_per_second: trained_here as f64 / seconds,
            learning_rate: self.learning_rate(),
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

    /// Evaluates the test set with the current parameters: mean loss, accuracy, and each
    /// sample's predicted class and loss (waits for the GPU).
    pub fn evaluate(&self) -> Result<Evaluation> {
        wait_for(self.evaluate_async())
    }

    /// `evaluate` as a future.
    pub async fn evaluate_async(&self) -> Result<Evaluation> {
        let totals = self
            .evaluate_and_read_totals(&mut GpuWork::default())
            .await?;
        let samples = self.test.data.samples;
        let slot = self.test.totals_slot;
        // Both per-sample arrays in one copy and one wait.
        let bytes = (samples * 4) as u64;
        let split = &self.test.data;
        let parts = [
            (&split.sample_prediction, bytes),
            (&split.sample_loss, bytes),
        ];
        let mut parts = self.gpu.read_back_parts_async(&parts).await?.into_iter();
        let mut next = || parts.next().expect("one part per buffer");
        Ok(Evaluation {
            loss: f32::from_bits(totals[2 * slot]) as f64 / samples as f64,
            accuracy: totals[2 * slot + 1] as f64 / samples as f64,
            predictions: bytemuck::pod_collect_to_vec(&next()),
            sample_loss: bytemuck::pod_collect_to_vec(&next()),
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
        let (trained, state) = params.split_at(self.layout.trained);
        let queue = &self.gpu.queue;
        queue.write_buffer(&self.params.buffer, 0, bytemuck::cast_slice(trained));
        queue.write_buffer(&self.state, 0, bytemuck::cast_slice(state));
        Ok(())
    }

    /// Runs the test set (and the validation set) forward, reduces every split's per-sample
    /// metrics and reads the totals (loss and correct count per split: training, test,
    /// validation) back: the one wait. A stoppable trainer submits the evaluation in chunks
    /// sized by time and returns `Error::Stopped` between two when asked to stop.
    async fn evaluate_and_read_totals(&self, work: &mut GpuWork) -> Result<Vec<u32>> {
        let batch = self.evaluation_batch;
        // The test steps follow the slots of a whole epoch's training steps; the validation
        // steps follow them. Both are run in one pass over the schedule from the test set's
        // first slot.
        let cursor = [self.test.first_slot as u32, 0, 0, 0];
        self.gpu
            .queue
            .write_buffer(&self.schedule, 0, bytemuck::cast_slice(&cursor));
        let programs: Vec<&Program> = std::iter::once(&self.test)
            .chain(&self.validation)
            .flat_map(|split| {
                batches(split.data.samples, batch)
                    .map(|(_, rows)| program_for(rows, batch, &split.full, &split.tail))
            })
            .collect();
        let paced = self.stop.is_some();
        let mut pace = self.evaluation_pace.get();
        let mut in_flight = InFlight::default();
        let mut remaining = &programs[..];
        loop {
            let size = match paced {
                true => pace.chunk(remaining.len()).min(remaining.len()),
                false => remaining.len(),
            };
            let (chunk, rest) = remaining.split_at(size);
            remaining = rest;
            let mut encoder = self.gpu.device.create_command_encoder(&Default::default());
            {
                let mut recorder = Recorder::new(&mut encoder);
                for program in chunk {
                    work.dispatches += program.record(&mut recorder);
                    work.dispatches += self.advance.record(&mut recorder);
                }
                if remaining.is_empty() {
                    work.dispatches += self.epoch_end.record(&mut recorder);
                }
            }
            if remaining.is_empty() {
                encoder.copy_buffer_to_buffer(
                    &self.totals,
                    0,
                    &self.totals_staging,
                    0,
                    TOTALS_BYTES,
                );
                self.gpu.queue.submit([encoder.finish()]);
                work.submits += 1;
                break;
            }
            let submission = self.gpu.queue.submit([encoder.finish()]);
            work.submits += 1;
            crate::failpoint::reach(crate::failpoint::EVALUATION_CHUNK);
            in_flight.push(submission, chunk.len());
            while in_flight.holds(pace.chunks_in_flight()) {
                in_flight.wait_oldest(self.gpu, &mut pace)?;
            }
            self.evaluation_pace.set(pace);
            if self.stop_requested() {
                return Err(Error::Stopped);
            }
        }
        work.readbacks += 1;
        self.gpu.map_and_read_async(&self.totals_staging).await
    }

    /// The current parameters, laid out as `layout()` says (waits for the GPU).
    pub fn parameters(&self) -> Result<Vec<f32>> {
        wait_for(self.parameters_async())
    }

    /// `parameters` as a future.
    pub async fn parameters_async(&self) -> Result<Vec<f32>> {
        let parts = [
            (&self.params.buffer, (self.layout.trained * 4) as u64),
            (&self.state, (self.layout.state() * 4) as u64),
        ];
        let parts = self.gpu.read_back_parts_async(&parts).await?;
        Ok(parts
            .iter()
            .flat_map(|part| bytemuck::pod_collect_to_vec::<u8, f32>(part))
            .collect())
    }
}

/// Node `index` of `plan` as the training programs record it, for batches of up to `batch`
/// samples (`seed`: the run's, which keys dropout's masks).
fn device_layer(
    gpu: &Gpu,
    kernels: &Kernels,
    plan: &Plan,
    index: usize,
    batch: usize,
    seed: u64,
) -> Result<DeviceLayer> {
    let node = &plan.nodes[index];
    let input = plan.tensors[node.inputs[0]].shape;
    let kind = match &node.op {
        Op::Add => return Ok(Box::new(AddDevice::new(input))),
        Op::Layer(layer) => layer.kind().expect("the plan expands residual blocks"),
    };
    kind.device(&DeviceArgs {
        gpu,
        kernels,
        input,
        matrix: plan.layout.of_layer(index),
        norm: plan.layout.norms[index],
        state_start: plan.layout.trained,
        batch,
        seed,
        node: index,
    })
}

/// Refuses data whose samples or classes the model does not take, and inputs the gather cannot
/// unpack.
fn check_data_fits(spec: &ModelSpec, splits: [(&str, &Dataset); 2]) -> Result<()> {
    let classes = spec.classes();
    for (name, data) in splits {
        if !spec.takes(data.shape) || data.classes != classes {
            return Err(Error::Config(format!(
                "the model takes inputs of {} and {classes} classes but the {name} set has \
                 samples of {} and {} classes",
                spec.input, data.shape, data.classes
            )));
        }
    }
    if !spec.input.len().is_multiple_of(4) {
        return Err(Error::Config(format!(
            "values per sample must be a multiple of 4 (the GPU unpacks pixels four at a time), got {}",
            spec.input.len()
        )));
    }
    Ok(())
}

/// The flat buffers: the trained parameters (mirrored for the products), the state, the
/// gradients and the update rule's per-parameter state.
struct ParameterBuffers {
    params: DeviceTensor,
    state: Buffer,
    grads: Buffer,
    optimizer_state: Vec<Buffer>,
}

impl ParameterBuffers {
    /// The buffers of `layout`, holding `initial` (trained parameters, then the state).
    fn new(
        gpu: &Gpu,
        kernels: &Kernels,
        layout: &ParamLayout,
        initial: &[f32],
        rule: UpdateRule,
    ) -> Result<Self> {
        let param_bytes = (layout.trained * 4) as u64;
        let params = DeviceTensor::new(gpu, kernels, "parameters", param_bytes)?;
        let (trained, state_values) = initial.split_at(layout.trained);
        gpu.queue
            .write_buffer(&params.buffer, 0, bytemuck::cast_slice(trained));
        let state = gpu.storage_buffer("batchnorm state", (layout.state().max(1) * 4) as u64)?;
        gpu.queue
            .write_buffer(&state, 0, bytemuck::cast_slice(state_values));
        let optimizer_state = (rule.state_names().iter())
            .map(|name| gpu.storage_buffer(name, param_bytes))
            .collect::<Result<Vec<_>>>()?;
        Ok(ParameterBuffers {
            params,
            state,
            grads: gpu.storage_buffer("gradients", param_bytes)?,
            optimizer_state,
        })
    }
}

/// A buffer per tensor of the plan, for batches of up to `rows` samples; the output of a layer
/// that moves nothing (Flatten) is its input's buffer.
fn plan_tensors(
    gpu: &Gpu,
    kernels: &Kernels,
    plan: &Plan,
    rows: usize,
) -> Result<Vec<DeviceTensor>> {
    let mut tensors: Vec<DeviceTensor> = Vec::new();
    for (t, tensor) in plan.tensors.iter().enumerate() {
        let unmoved = tensor
            .producer
            .filter(|&p| plan.moves_nothing(p))
            .map(|p| tensors[plan.nodes[p].inputs[0]].clone());
        let tensor = match unmoved {
            Some(input) => input,
            None => {
                let bytes = (rows * tensor.shape.len() * 4) as u64;
                DeviceTensor::new(gpu, kernels, &format!("activation {t}"), bytes)?
            }
        };
        tensors.push(tensor);
    }
    Ok(tensors)
}
