//! The optimizers as a configuration makes them: which update rule runs (optimizer.wgsl), the
//! per-parameter state it keeps (checkpointed by name), its fixed hyperparameters, each step's
//! values, and the CPU reference's step.

use super::config::{OptimizerKind, TrainConfig, adam_step_size};
use super::schedule::{RunLength, learning_rate};
use crate::error::{Error, Result};
use crate::gpu::Kernel;
use crate::gpu::kernels::OptimizerKernels;
use crate::gpu::uniforms::{OptimizerHyper, StepParams};
use crate::reference;

/// The update kernel a configuration runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateRule {
    /// `sgd_update`: no state.
    Sgd,
    /// `momentum_update`: one momentum buffer.
    Momentum,
    /// `adam_update`: first and second moments.
    Adam,
}

impl UpdateRule {
    pub fn of(config: &TrainConfig) -> Self {
        match config.optimizer {
            OptimizerKind::Adam | OptimizerKind::Adamw => UpdateRule::Adam,
            OptimizerKind::Sgd if config.momentum > 0.0 => UpdateRule::Momentum,
            OptimizerKind::Sgd => UpdateRule::Sgd,
        }
    }

    /// Its kernel among `kernels` (optimizer.wgsl's or optimizer_packed.wgsl's).
    pub fn kernel(self, kernels: &OptimizerKernels) -> &Kernel {
        match self {
            UpdateRule::Sgd => &kernels.sgd,
            UpdateRule::Momentum => &kernels.momentum,
            UpdateRule::Adam => &kernels.adam,
        }
    }

    /// The names of the per-parameter state tensors it keeps (each laid out like the trained
    /// parameters), as checkpoints store them.
    pub fn state_names(self) -> &'static [&'static str] {
        match self {
            UpdateRule::Sgd => &[],
            UpdateRule::Momentum => &["sgd.momentum_buffer"],
            UpdateRule::Adam => &["adam.m", "adam.v"],
        }
    }
}

/// The hyperparameters the update rules hold fixed for a run over `count` parameters.
pub fn hyper(config: &TrainConfig, count: usize) -> OptimizerHyper {
    OptimizerHyper {
        count: count as u32,
        beta1: config.beta1,
        beta2: config.beta2,
        epsilon: config.epsilon,
        momentum: config.momentum,
        // AdamW's decay is decoupled: the step's decay factor, not the gradient's.
        weight_decay: match config.optimizer {
            OptimizerKind::Adamw => 0.0,
            _ => config.weight_decay,
        },
        nesterov: config.nesterov as u32,
        _pad: 0,
    }
}

/// Training step number `t` of the run (counting from 1) over `rows` samples from slot
/// `batch_start`: its learning rate from the schedule, Adam's bias-corrected step size and
/// AdamW's decay factor, each computed in f64 and rounded once.
pub fn training_step(
    config: &TrainConfig,
    run: RunLength,
    t: u64,
    batch_start: usize,
    rows: usize,
) -> StepParams {
    let lr = learning_rate(config.lr_schedule, config.learning_rate, t - 1, run);
    let decay_factor = match config.optimizer {
        OptimizerKind::Adamw => (1.0 - lr as f64 * config.weight_decay as f64) as f32,
        _ => 1.0,
    };
    StepParams {
        adam_step_size: adam_step_size(lr, config.beta1, config.beta2, t),
        number: t as u32,
        learning_rate: lr,
        decay_factor,
        ..StepParams::rows_at(batch_start, rows)
    }
}

/// The CPU reference of one update: `state` holds the rule's tensors (`state_names`), each
/// laid out like `params`.
pub fn reference_update(
    config: &TrainConfig,
    step: &StepParams,
    params: &mut [f32],
    grads: &[f32],
    state: &mut [Vec<f32>],
) -> Result<()> {
    let hyper = hyper(config, params.len());
    match (UpdateRule::of(config), state) {
        (UpdateRule::Sgd, []) => reference::sgd_update(params, grads, &hyper, step.learning_rate),
        (UpdateRule::Momentum, [buffer]) => {
            reference::momentum_update(params, grads, buffer, &hyper, step.learning_rate)
        }
        (UpdateRule::Adam, [m, v]) => reference::adam_update(params, grads, m, v, &hyper, step),
        (rule, state) => {
            return Err(Error::Config(format!(
                "{rule:?} keeps {} state tensors, given {}",
                rule.state_names().len(),
                state.len()
            )));
        }
    }
    Ok(())
}
