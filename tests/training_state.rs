//! The trainer's state: taken mid-epoch or between epochs and restored into a fresh trainer, it
//! continues the run bit for bit; the progress reads report the running metrics without
//! changing the run.

mod common;

use common::{gpu, kernels, random_dataset, with_nesterov_recipe};
use shadertrain::data::Dataset;
use shadertrain::model::{Activation, Loss, ModelSpec, Shape};
use shadertrain::rng::Rng;
use shadertrain::train::{
    EpochMetrics, EpochProgress, LrSchedule, OptimizerKind, TrainConfig, Trainer,
};

fn spec() -> ModelSpec {
    ModelSpec::mlp(Shape::flat(12), &[9, 6], 4, Activation::Relu, Loss::Xent)
}

fn config(optimizer: OptimizerKind) -> TrainConfig {
    TrainConfig {
        // 70 samples in batches of 16: four full batches and a partial one per epoch.
        batch_size: 16,
        learning_rate: 0.01,
        optimizer,
        seed: 3,
        steps_per_submit: 2,
        ..TrainConfig::default()
    }
}

fn data() -> (Dataset, Dataset) {
    let mut rng = Rng::new(21);
    (
        random_dataset(&mut rng, 70, 12, 4),
        random_dataset(&mut rng, 30, 12, 4),
    )
}

/// The training recipes the state is checked with: Adam and plain SGD, and the optimizers
/// whose state and rates depend on the step (SGD with Nesterov momentum, weight decay, a
/// warm-up, a cosine schedule and label smoothing; AdamW under OneCycle).
fn recipes() -> [(&'static str, TrainConfig); 4] {
    [
        ("adam", config(OptimizerKind::Adam)),
        ("sgd", config(OptimizerKind::Sgd)),
        (
            "sgd with nesterov momentum, decay, cosine and smoothing",
            with_nesterov_recipe(TrainConfig {
                epochs: 3,
                ..config(OptimizerKind::Sgd)
            }),
        ),
        (
            "adamw with onecycle",
            TrainConfig {
                weight_decay: 1e-2,
                lr_schedule: LrSchedule::OneCycle,
                epochs: 3,
                ..config(OptimizerKind::Adamw)
            },
        ),
    ]
}

fn trainer(config: &TrainConfig, train: &Dataset, test: &Dataset) -> Trainer<'static> {
    Trainer::new(gpu(), kernels(), spec(), config.clone(), train, test).unwrap()
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// Everything an epoch reports except its timing.
fn figures(m: &EpochMetrics) -> [u64; 6] {
    [
        m.train_samples as u64,
        m.learning_rate.to_bits() as u64,
        m.train_loss.to_bits(),
        m.train_accuracy.to_bits(),
        m.test_loss.to_bits(),
        m.test_accuracy.to_bits(),
    ]
}

#[test]
fn a_restored_state_continues_the_run_bit_for_bit() {
    let (train, test) = data();
    for (what, config) in recipes() {
        let mut straight = trainer(&config, &train, &test);
        let expected: Vec<[u64; 6]> = (0..3)
            .map(|_| figures(&straight.run_epoch().unwrap()))
            .collect();
        let expected_params = bits(&straight.parameters().unwrap());

        // Stop 3 steps into epoch 2, and again between epochs 2 and 3, each time carrying on
        // in a new trainer from the state alone.
        let new_trainer = || trainer(&config, &train, &test);
        let mut first = new_trainer();
        first.run_epoch().unwrap();
        first.start_epoch().unwrap();
        first.train(3, None).unwrap();
        let mid_epoch = first.state().unwrap();
        assert_eq!(mid_epoch.steps_done, 5 + 3);
        assert_eq!(mid_epoch.epoch.as_ref().unwrap().steps_taken, 3);
        assert_eq!(mid_epoch.epoch.as_ref().unwrap().sample_loss.len(), 48);
        drop(first);

        let mut second = new_trainer();
        second.restore(&mid_epoch).unwrap();
        assert_eq!(second.epoch_position(), Some((3, 5)));
        let resumed_epoch = second.run_epoch().unwrap();
        assert_eq!(figures(&resumed_epoch), expected[1], "{what} epoch 2");
        // Its rate counts the 70 - 48 samples trained since the resume, not the whole epoch's.
        let trained_here = resumed_epoch.samples_per_second * resumed_epoch.seconds;
        assert!(
            (trained_here - 22.0).abs() < 1e-6,
            "{what}: {trained_here} samples at the rate shown"
        );
        let between_epochs = second.state().unwrap();
        assert!(between_epochs.epoch.is_none());
        drop(second);

        let mut third = new_trainer();
        third.restore(&between_epochs).unwrap();
        assert_eq!(
            figures(&third.run_epoch().unwrap()),
            expected[2],
            "{what} epoch 3"
        );
        assert_eq!(
            bits(&third.parameters().unwrap()),
            expected_params,
            "{what} parameters after 3 epochs"
        );
    }
}

#[test]
fn a_state_that_does_not_fit_the_trainer_is_refused() {
    let (train, test) = data();
    let mut trainer = trainer(&config(OptimizerKind::Adam), &train, &test);
    trainer.start_epoch().unwrap();
    trainer.train(2, None).unwrap();
    let state = trainer.state().unwrap();

    let mut short = state.clone();
    short.parameters.pop();
    let mut not_a_permutation = state.clone();
    not_a_permutation.epoch.as_mut().unwrap().order[0] = 70;
    let mut no_moments = state.clone();
    no_moments.optimizer_state.clear();
    let mut short_moment = state.clone();
    short_moment.optimizer_state[1].pop();
    let mut too_far = state.clone();
    too_far.epoch.as_mut().unwrap().steps_taken = 6;
    for (bad, expected) in [
        (short, "parameters"),
        (not_a_permutation, "permutation"),
        (no_moments, "optimizer keeps 2 (adam.m, adam.v)"),
        (short_moment, "values of adam.v"),
        (too_far, "steps"),
    ] {
        let error = trainer.restore(&bad).unwrap_err().to_string();
        assert!(error.contains(expected), "{error}");
    }
    // Nothing was changed by the refused states.
    assert_eq!(trainer.state().unwrap(), state);
}

#[test]
fn progress_reports_the_running_metrics_and_leaves_the_run_unchanged() {
    let (train, test) = data();
    let make = || trainer(&config(OptimizerKind::Adam), &train, &test);
    let mut plain = make();
    let expected = plain.run_epoch().unwrap();

    let mut watched = make();
    watched.start_epoch().unwrap();
    let mut reports: Vec<EpochProgress> = Vec::new();
    watched
        .train(usize::MAX, Some(&mut |p| reports.push(p)))
        .unwrap();
    let metrics = watched.end_epoch().unwrap();
    assert_eq!(figures(&metrics), figures(&expected));
    assert_eq!(
        bits(&watched.parameters().unwrap()),
        bits(&plain.parameters().unwrap())
    );
    // One report per submission of 2 steps, in order, the last over the whole epoch.
    let steps: Vec<usize> = reports.iter().map(|p| p.steps_done).collect();
    assert_eq!(steps, [2, 4, 5]);
    assert!(reports.iter().all(|p| p.epoch == 1 && p.steps == 5));
    let last = reports.last().unwrap();
    assert_eq!(last.running_loss.to_bits(), metrics.train_loss.to_bits());
    assert_eq!(last.running_accuracy, metrics.train_accuracy);
    assert_eq!(metrics.work.readbacks, 1);
    assert_eq!(metrics.work.progress_reads, 3);
    assert_eq!(metrics.work.submits, expected.work.submits);
}

/// A stoppable trainer (`stop_when`) sizes its chunks of steps by their time, so that a stop
/// waits for well under a second of queued work: on a slow model its chunks hold fewer steps
/// than `steps_per_submit`, in proportion to a step's time; and the run is the same, bit for bit.
#[test]
fn a_stoppable_run_submits_chunks_sized_by_time_with_the_same_results() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let mut rng = Rng::new(4);
    let input = Shape::image(1, 28, 28);
    let mut images = |samples: usize| {
        let flat = random_dataset(&mut rng, samples, input.len(), 10);
        Dataset::with_shape(input, 10, flat.pixels, flat.labels).unwrap()
    };
    let (train, test) = (images(16 * 128), images(256));
    let spec = ModelSpec {
        input,
        layers: shadertrain::model::parse_layers(
            "conv16k3,maxpool2,flatten,dense10",
            Activation::Relu,
        )
        .unwrap(),
        loss: Loss::Xent,
        standardisation: None,
    };
    let config = TrainConfig {
        batch_size: 128,
        seed: 8,
        ..TrainConfig::default()
    };
    let run = |stoppable: bool| {
        let mut trainer = Trainer::new(
            gpu(),
            kernels(),
            spec.clone(),
            config.clone(),
            &train,
            &test,
        )
        .unwrap();
        if stoppable {
            trainer.stop_when(Arc::new(AtomicBool::new(false)));
        }
        let metrics = trainer.run_epoch().unwrap();
        (metrics, bits(&trainer.parameters().unwrap()))
    };
    let (paced, paced_parameters) = run(true);
    let (unpaced, unpaced_parameters) = run(false);
    assert_eq!(paced_parameters, unpaced_parameters);
    assert_eq!(figures(&paced), figures(&unpaced));

    // A chunk's steps: at most what 0.2 s holds at the epoch's own pace, twice over for the
    // noise of a shared machine (the epoch's seconds include its evaluation, which makes the
    // pace look slower and the bound tighter). On an adapter fast enough for 32 steps in 0.2 s
    // the bound allows whole chunks of steps_per_submit: the test bites on slow adapters.
    let seconds_per_step = paced.seconds / paced.steps as f64;
    let allowed = (2.0 * 0.2 / seconds_per_step).max(2.0);
    let mean_chunk = paced.steps as f64 / paced.work.submits as f64;
    assert!(
        mean_chunk <= allowed,
        "{mean_chunk:.1} steps a chunk, {seconds_per_step:.4} s a step: at most {allowed:.1}"
    );
    assert_eq!(
        unpaced.work.submits,
        paced.steps.div_ceil(config.steps_per_submit) + 1,
        "without a stop flag, chunks of steps_per_submit and one evaluation submit"
    );
}
