//! Everything a training run needs to continue exactly where it stopped: what a checkpoint holds.

/// A run's whole state between two steps. Restoring it into a trainer built with the same model,
/// configuration and data, on the same adapter, continues the run bit for bit.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingState {
    /// Laid out as the trainer's `layout()` says.
    pub parameters: Vec<f32>,
    /// Adam's first and second moments, laid out like the parameters (None for SGD).
    pub moments: Option<(Vec<f32>, Vec<f32>)>,
    /// Training steps taken since the start of the run (Adam's t).
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
