//! Everything a training run needs to continue exactly where it stopped (what a checkpoint
//! holds), and taking it from and restoring it into a trainer.

use web_time::Instant;

use super::{EpochInProgress, GpuWork, Trainer, UpdateRule};
use crate::error::{Error, Result};
use crate::rng::Rng;

/// A run's whole state between two steps. Restoring it into a trainer built with the same model,
/// configuration and data, on the same adapter, continues the run bit for bit.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingState {
    /// Laid out as the trainer's `layout()` says.
    pub parameters: Vec<f32>,
    /// The update rule's per-parameter state, one tensor per `UpdateRule::state_names` (Adam's
    /// moments, SGD's momentum buffer; none for plain SGD), each laid out like the trained
    /// parameters.
    pub optimizer_state: Vec<Vec<f32>>,
    /// Training steps taken since the start of the run (Adam's t, the schedule's position).
    pub steps_done: u64,
    pub epochs_done: usize,
    /// The shuffling generator's state, after drawing the current epoch's order if one is under way.
    pub rng_state: u64,
    /// The epoch under way, if the state was taken inside one.
    pub epoch: Option<EpochState>,
}

/// How far the current epoch has got.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochState {
    /// The epoch's order of training samples (a permutation of 0..samples).
    pub order: Vec<u32>,
    /// Training steps of this epoch already taken.
    pub steps_taken: usize,
    /// Loss and correct flag of every sample trained so far this epoch, in epoch order: the
    /// epoch's training metrics are summed from them at its end.
    pub sample_loss: Vec<f32>,
    pub sample_correct: Vec<u32>,
}

impl Trainer<'_> {
    /// The whole training state, for a checkpoint (waits for the GPU).
    pub fn state(&self) -> Result<TrainingState> {
        let param_bytes = (self.layout.trained * 4) as u64;
        let state_bytes = (self.layout.state() * 4) as u64;
        let mut parts = vec![
            (&self.params.buffer, param_bytes),
            (&self.state, state_bytes),
        ];
        parts.extend(self.optimizer_state.iter().map(|b| (b, param_bytes)));
        let trained = self.epoch.as_ref().map_or(0, |e| e.samples_in(e.next));
        if self.epoch.is_some() {
            let sample_bytes = (trained * 4) as u64;
            parts.extend([
                (&self.train.sample_loss, sample_bytes),
                (&self.train.sample_correct, sample_bytes),
            ]);
        }
        let mut parts = self.gpu.read_back_parts(&parts)?.into_iter();
        let mut next = || -> Vec<u8> { parts.next().expect("one part per buffer") };
        let mut parameters: Vec<f32> = bytemuck::pod_collect_to_vec(&next());
        parameters.extend(bytemuck::pod_collect_to_vec::<u8, f32>(&next()));
        let optimizer_state = (self.optimizer_state.iter())
            .map(|_| bytemuck::pod_collect_to_vec(&next()))
            .collect();
        let epoch = self.epoch.as_ref().map(|e| EpochState {
            order: e.order.clone(),
            steps_taken: e.next,
            sample_loss: bytemuck::pod_collect_to_vec(&next()),
            sample_correct: bytemuck::pod_collect_to_vec(&next()),
        });
        Ok(TrainingState {
            parameters,
            optimizer_state,
            steps_done: self.steps_done,
            epochs_done: self.epochs_done,
            rng_state: self.rng.state(),
            epoch,
        })
    }

    /// Continues from `state`, taken by `state()` from a trainer with the same model,
    /// configuration and data. Checks that it fits before changing anything.
    pub fn restore(&mut self, state: &TrainingState) -> Result<()> {
        let bad = |problem: String| Err(Error::Config(format!("the training state {problem}")));
        let (total, trained) = (self.layout.total, self.layout.trained);
        if state.parameters.len() != total {
            return bad(format!(
                "has {} parameters, the model has {total}",
                state.parameters.len()
            ));
        }
        let names = UpdateRule::of(&self.config).state_names();
        if state.optimizer_state.len() != names.len() {
            return bad(format!(
                "has {} optimizer state tensors, the optimizer keeps {} ({})",
                state.optimizer_state.len(),
                names.len(),
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ));
        }
        for (name, values) in names.iter().zip(&state.optimizer_state) {
            if values.len() != trained {
                return bad(format!(
                    "has {} values of {name}, the model trains {trained} parameters",
                    values.len()
                ));
            }
        }
        if let Some(max) = self.config.max_steps
            && state.steps_done > max
        {
            return bad(format!(
                "is {} steps in, past the step limit of {max}",
                state.steps_done
            ));
        }
        let epoch = match &state.epoch {
            None => None,
            Some(e) => {
                let samples = self.train.samples;
                if !is_permutation(&e.order, samples) {
                    return bad(format!(
                        "has an epoch order that is not a permutation of the {samples} training samples"
                    ));
                }
                let Some(steps_before) = state.steps_done.checked_sub(e.steps_taken as u64) else {
                    return bad("has taken more steps this epoch than in all".into());
                };
                let epoch = EpochInProgress {
                    order: e.order.clone(),
                    steps: self.epoch_steps(steps_before),
                    next: e.steps_taken,
                    started: Instant::now(),
                    started_at_step: e.steps_taken,
                    work: GpuWork::default(),
                };
                if e.steps_taken > epoch.steps.len() {
                    return bad(format!(
                        "is {} steps into an epoch of {}",
                        e.steps_taken,
                        epoch.steps.len()
                    ));
                }
                let trained = epoch.samples_in(e.steps_taken);
                if e.sample_loss.len() != trained || e.sample_correct.len() != trained {
                    return bad(format!(
                        "has metrics of {} samples for {trained} trained this epoch",
                        e.sample_loss.len()
                    ));
                }
                Some(epoch)
            }
        };
        self.set_parameters(&state.parameters)?;
        let queue = &self.gpu.queue;
        for (buffer, values) in self.optimizer_state.iter().zip(&state.optimizer_state) {
            queue.write_buffer(buffer, 0, bytemuck::cast_slice(values));
        }
        self.steps_done = state.steps_done;
        self.epochs_done = state.epochs_done;
        self.rng = Rng::new(state.rng_state);
        self.epoch = None;
        if let (Some(epoch), Some(e)) = (epoch, &state.epoch) {
            if !e.sample_loss.is_empty() {
                queue.write_buffer(
                    &self.train.sample_loss,
                    0,
                    bytemuck::cast_slice(&e.sample_loss),
                );
                queue.write_buffer(
                    &self.train.sample_correct,
                    0,
                    bytemuck::cast_slice(&e.sample_correct),
                );
            }
            self.install_epoch(epoch);
        }
        Ok(())
    }
}

/// Whether `order` holds each of 0..n exactly once.
fn is_permutation(order: &[u32], n: usize) -> bool {
    let mut seen = vec![false; n];
    order.len() == n
        && order
            .iter()
            .all(|&i| (i as usize) < n && !std::mem::replace(&mut seen[i as usize], true))
}
