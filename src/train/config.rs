//! What a training run is asked to do, and what it reports.

use super::schedule::LrSchedule;
use crate::error::{Error, Result};
use crate::input::Augmentation;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OptimizerKind {
    /// Adam (Kingma & Ba) in Keras' formulation; --weight-decay adds L2 to the gradient, as
    /// torch.optim.Adam does.
    Adam,
    /// AdamW (Loshchilov & Hutter, torch.optim.AdamW): Adam with decoupled weight decay.
    Adamw,
    /// Stochastic gradient descent (torch.optim.SGD): plain, or with --momentum and --nesterov.
    Sgd,
}

impl OptimizerKind {
    /// Adam or AdamW.
    pub fn is_adam(self) -> bool {
        matches!(self, OptimizerKind::Adam | OptimizerKind::Adamw)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f32,
    /// Seeds the weight initialisation and every epoch's shuffle.
    pub seed: u64,
    pub optimizer: OptimizerKind,
    pub beta1: f32,
    pub beta2: f32,
    /// Added to sqrt(v) in Adam's denominator; Keras' default 1e-7.
    pub epsilon: f32,
    /// Training steps recorded into one command buffer before it is submitted.
    pub steps_per_submit: usize,
    /// Shuffle the training set every epoch (else file order, for step-by-step comparisons).
    pub shuffle: bool,
    /// Stop after this many training steps in all, mid-epoch if need be.
    pub max_steps: Option<u64>,
    /// The fraction of the training set held out for validation: its last samples, as loaded
    /// (as Keras' `validation_split`). 0: none.
    pub validation_split: f64,
    /// SGD's momentum factor μ (0: plain SGD).
    pub momentum: f32,
    /// Nesterov momentum (SGD with momentum only).
    pub nesterov: bool,
    /// Weight decay: L2 added to the gradient for SGD and Adam, decoupled for AdamW.
    pub weight_decay: f32,
    pub lr_schedule: LrSchedule,
    /// Epochs of linear warm-up (fractions allowed; rounded to whole steps), if any.
    pub warmup_epochs: Option<f64>,
    /// Cross-entropy's label smoothing ε (PyTorch's `label_smoothing`).
    pub label_smoothing: f32,
    /// Random crops, flips and cutout of the training images (`crate::input`).
    pub augmentation: Augmentation,
    /// For an image folder without test/: the fraction of each class of train/ held out as the
    /// test set (`--validation-split` asks for it there); 0 elsewhere. The trainer is given the
    /// sets already split: it is recorded so that a resumed run splits the same.
    pub test_split: f64,
    /// Training batches the model's BatchNorms had seen before this run (PyTorch's
    /// `num_batches_tracked` of the file `--init` started it from), to which each training step
    /// adds one: what model files write as `num_batches_tracked`.
    pub batches_tracked_before: u64,
}

impl Default for TrainConfig {
    /// The reference recipe: Adam (lr 1e-3, β1 0.9, β2 0.999, ε 1e-7), batch 128, 10 epochs.
    fn default() -> Self {
        TrainConfig {
            epochs: 10,
            batch_size: 128,
            learning_rate: 1e-3,
            seed: 0,
            optimizer: OptimizerKind::Adam,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-7,
            steps_per_submit: 32,
            shuffle: true,
            max_steps: None,
            validation_split: 0.0,
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
            lr_schedule: LrSchedule::Constant,
            warmup_epochs: None,
            label_smoothing: 0.0,
            augmentation: Augmentation::default(),
            test_split: 0.0,
            batches_tracked_before: 0,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 {
            return Err(Error::Config("--epochs must be at least 1".into()));
        }
        if self.max_steps == Some(0) {
            return Err(Error::Config("--max-steps must be at least 1".into()));
        }
        if self.batch_size == 0 {
            return Err(Error::Config("--batch-size must be at least 1".into()));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(Error::Config(format!(
                "--lr must be a positive number, got {}",
                self.learning_rate
            )));
        }
        if !(0.0..1.0).contains(&self.validation_split) {
            return Err(Error::Config(format!(
                "--validation-split must be at least 0 and below 1, got {}",
                self.validation_split
            )));
        }
        if self.steps_per_submit == 0 {
            return Err(Error::Config("steps per submit must be at least 1".into()));
        }
        if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            return Err(Error::Config(format!(
                "--momentum must be at least 0 and below 1, got {}",
                self.momentum
            )));
        }
        if self.momentum > 0.0 && self.optimizer != OptimizerKind::Sgd {
            return Err(Error::Config(format!(
                "--momentum is SGD's (--optimizer sgd); {} keeps its own moments",
                crate::model_file::name_of(&self.optimizer)
            )));
        }
        if self.nesterov && !(self.optimizer == OptimizerKind::Sgd && self.momentum > 0.0) {
            return Err(Error::Config(
                "--nesterov needs --optimizer sgd with a --momentum above 0 (as PyTorch's SGD)"
                    .into(),
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::Config(format!(
                "--weight-decay must be a number of at least 0, got {}",
                self.weight_decay
            )));
        }
        if let Some(warmup) = self.warmup_epochs
            && !(warmup.is_finite() && (0.0..=self.epochs as f64).contains(&warmup))
        {
            return Err(Error::Config(format!(
                "--warmup-epochs must be at least 0 and at most --epochs ({}), got {warmup}",
                self.epochs
            )));
        }
        if i64::try_from(self.batches_tracked_before).is_err() {
            return Err(Error::Config(format!(
                "a BatchNorm counts at most {} batches (PyTorch's i64), not {}",
                i64::MAX,
                self.batches_tracked_before
            )));
        }
        if !(self.label_smoothing.is_finite() && (0.0..=1.0).contains(&self.label_smoothing)) {
            return Err(Error::Config(format!(
                "--label-smoothing must be between 0 and 1, got {}",
                self.label_smoothing
            )));
        }
        Ok(())
    }
}

/// What one epoch achieved, as printed after it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochMetrics {
    /// Counting from 1.
    pub epoch: usize,
    /// Training samples this epoch trained on: the whole set, unless it is partial.
    pub train_samples: usize,
    /// Training steps of the epoch taken, and the steps it has: fewer taken when the figures
    /// are of a partial epoch (`max_steps` reached inside it, or a stop), which goes on when
    /// the run is resumed.
    pub steps_taken: usize,
    pub steps: usize,
    /// Mean loss over every training sample of the epoch (each seen once, with the weights of its step).
    pub train_loss: f64,
    pub train_accuracy: f64,
    /// Mean loss and accuracy on the test set with the weights at the end of the epoch.
    pub test_loss: f64,
    pub test_accuracy: f64,
    /// The same on the validation set, with `validation_split`.
    pub validation: Option<SplitMetrics>,
    /// Wall time of the epoch: training and the test evaluation (in a resumed epoch, since the
    /// resume).
    pub seconds: f64,
    /// Training samples trained in that wall time per second.
    pub samples_per_second: f64,
    /// The learning rate of the epoch's last step taken.
    pub learning_rate: f32,
    /// What the epoch asked of the GPU, counted as it was recorded.
    pub work: GpuWork,
}

impl EpochMetrics {
    /// Whether the figures are of an epoch not yet ended (see `steps_taken`).
    pub fn partial(&self) -> bool {
        self.steps_taken < self.steps
    }
}

/// Mean loss and accuracy over a split.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitMetrics {
    pub loss: f64,
    pub accuracy: f64,
}

/// Command-buffer submissions, kernel dispatches and host readbacks of an epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GpuWork {
    pub submits: usize,
    pub dispatches: usize,
    /// Reads the host waits for with nothing else queued: the GPU idles until the host goes on.
    pub readbacks: usize,
    /// Running-metric reads for a progress display: each waits for a chunk of steps while the
    /// next chunks are already queued, so the GPU never waits for the host.
    pub progress_reads: usize,
}

/// Where the epoch under way stands, reported after each chunk of steps the GPU finishes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochProgress {
    /// The epoch under way, counting from 1.
    pub epoch: usize,
    /// Training steps of this epoch finished by the GPU, and the epoch's total.
    pub steps_done: usize,
    pub steps: usize,
    /// Mean loss and accuracy over the samples trained so far this epoch.
    pub running_loss: f64,
    pub running_accuracy: f64,
}

/// A model's results on a test set.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub loss: f64,
    pub accuracy: f64,
    /// Predicted class of each test sample, in file order.
    pub predictions: Vec<u32>,
    /// Each test sample's loss, in file order.
    pub sample_loss: Vec<f32>,
}

impl Evaluation {
    /// `matrix[true][predicted]` sample counts.
    pub fn confusion_matrix(&self, labels: &[u8], classes: usize) -> Vec<Vec<usize>> {
        let mut matrix = vec![vec![0; classes]; classes];
        for (&label, &predicted) in labels.iter().zip(&self.predictions) {
            matrix[label as usize][predicted as usize] += 1;
        }
        matrix
    }
}

/// Adam's bias-corrected step size for step `t` (counting from 1), in f64 then rounded once.
pub fn adam_step_size(learning_rate: f32, beta1: f32, beta2: f32, t: u64) -> f32 {
    let t = t as i32;
    let (b1, b2) = (beta1 as f64, beta2 as f64);
    (learning_rate as f64 * (1.0 - b2.powi(t)).sqrt() / (1.0 - b1.powi(t))) as f32
}
