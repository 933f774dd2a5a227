//! Learning-rate schedules: the rate of every step of a run, computed on the host in f64 and
//! rounded once, written into the epoch's step schedule with the step's other values (so the
//! GPU reads it per step with no upload between steps, and every adapter gets the same bits).
//!
//! For step i (from 0) of a run of T steps, W of them warm-up, and base rate lr:
//! - constant: lr, times the warm-up factor (i + 1) / W while i < W;
//! - cosine:   the warm-up, then lr (1 + cos(π (i − W) / (T − W))) / 2: a half cosine that
//!   would reach 0 at step T, the step after the last (PyTorch's CosineAnnealingLR with
//!   T_max = T − W, stepped per batch);
//! - step:     the warm-up factor times 0.1 for each of the milestones ⌊T/2⌋ and ⌊3T/4⌋ that
//!   i has reached (He et al.'s CIFAR schedule: MultiStepLR at 50 % and 75 % of the run);
//! - onecycle: PyTorch's OneCycleLR(max_lr = lr, total_steps = T, pct_start = W / T (0.3 when
//!   no warm-up is given), anneal_strategy = "linear", div_factor = 25, final_div_factor = 1e4,
//!   cycle_momentum = False): linear from lr / 25 to lr at step pct_start T − 1, then linear to
//!   lr / 25e4 at step T − 1.
//!
//! The first three are `LambdaLR(lambda i: factor(i))` in PyTorch (bench/pytorch_optim.py).

/// `--lr-schedule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LrSchedule {
    /// The same rate throughout (after any warm-up).
    #[default]
    Constant,
    /// A linear warm-up, then a half cosine down to 0 at the end of the run.
    Cosine,
    /// PyTorch's OneCycleLR with linear annealing: up from lr/25 over the warm-up (30 % of the
    /// run unless --warmup-epochs is given), then down to lr/25e4.
    #[value(name = "onecycle")]
    OneCycle,
    /// The rate divided by 10 at 50 % and again at 75 % of the run (after any warm-up).
    Step,
}

impl LrSchedule {
    /// Whether the rate of a step depends on the run's length (so a resumed run may not change
    /// its number of epochs).
    pub fn depends_on_length(self) -> bool {
        self != LrSchedule::Constant
    }
}

/// OneCycleLR's default share of the run spent rising (its `pct_start`).
pub const ONE_CYCLE_DEFAULT_RISE: f64 = 0.3;

/// How long a run is and how it warms up, in steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunLength {
    /// Steps in the whole run (epochs × steps per epoch).
    pub total: u64,
    /// Warm-up steps, if a warm-up was asked for.
    pub warmup: Option<u64>,
}

impl RunLength {
    /// `epochs` of `steps_per_epoch`, with a warm-up of `warmup_epochs` (rounded to whole steps).
    pub fn new(epochs: usize, steps_per_epoch: usize, warmup_epochs: Option<f64>) -> Self {
        RunLength {
            total: (epochs * steps_per_epoch) as u64,
            warmup: warmup_epochs.map(|f| (f * steps_per_epoch as f64).round() as u64),
        }
    }
}

/// The learning rate of step `index` (from 0).
pub fn learning_rate(schedule: LrSchedule, base: f32, index: u64, run: RunLength) -> f32 {
    (base as f64 * factor(schedule, index, run)) as f32
}

/// The step's rate over the base rate.
fn factor(schedule: LrSchedule, index: u64, run: RunLength) -> f64 {
    let i = index as f64;
    let total = run.total.max(1);
    let warmup = run.warmup.unwrap_or(0).min(total);
    let warming = |then: f64| {
        if index < warmup {
            (i + 1.0) / warmup as f64
        } else {
            then
        }
    };
    match schedule {
        LrSchedule::Constant => warming(1.0),
        LrSchedule::Cosine => warming({
            // A warm-up as long as the run leaves no step to this (but a benchmark's).
            let span = (total - warmup).max(1) as f64;
            let progress = (i - warmup as f64) / span;
            0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
        }),
        LrSchedule::Step => {
            let reached = [total / 2, 3 * total / 4]
                .iter()
                .filter(|&&milestone| index >= milestone)
                .count();
            let decay = 0.1f64.powi(reached as i32);
            if index < warmup {
                (i + 1.0) / warmup as f64 * decay
            } else {
                decay
            }
        }
        LrSchedule::OneCycle => {
            let (initial, peak) = (1.0 / 25.0, 1.0);
            let last = initial / 1e4;
            let rise = match run.warmup {
                Some(w) => w as f64 / total as f64,
                None => ONE_CYCLE_DEFAULT_RISE,
            };
            let rise_end = rise * total as f64 - 1.0;
            let end = total as f64 - 1.0;
            let linear = |from: f64, to: f64, start: f64, stop: f64| {
                let pct = if stop > start {
                    (i - start) / (stop - start)
                } else {
                    1.0
                };
                from + (to - from) * pct
            };
            if i <= rise_end {
                linear(initial, peak, 0.0, rise_end)
            } else {
                linear(peak, last, rise_end, end)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_constant_rate_warms_up_linearly() {
        let run = RunLength::new(2, 10, Some(0.4));
        let rates: Vec<f32> = (0..6)
            .map(|i| learning_rate(LrSchedule::Constant, 0.5, i, run))
            .collect();
        assert_eq!(rates, [0.125, 0.25, 0.375, 0.5, 0.5, 0.5]);
    }
}
