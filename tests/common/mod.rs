//! Shared by the integration tests: one device per test binary, random data, comparisons.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use shadertrain::data::{DATA_ENV, Dataset, DatasetKind, default_dir};
use shadertrain::gpu::{AdapterRequest, Gpu, Kernels};
use shadertrain::input::{augmentation_key, gather_batch};
use shadertrain::model::ModelSpec;
use shadertrain::model::reference::{StepKey, forward_backward, forward_backward_smoothed};
use shadertrain::reference::{self, compare};
use shadertrain::rng::Rng;
use shadertrain::train::optimizer::{self, UpdateRule};
use shadertrain::train::{RunLength, TrainConfig, Trainer};

/// The device every test in this binary shares. Fails (never skips) when there is no adapter:
/// CI must prove the kernels run.
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| {
        Gpu::open(&AdapterRequest::default())
            .unwrap_or_else(|e| panic!("these tests need a GPU adapter: {e}"))
    })
}

pub fn kernels() -> &'static Kernels {
    static KERNELS: OnceLock<Kernels> = OnceLock::new();
    KERNELS.get_or_init(|| Kernels::new(gpu()))
}

pub fn random_vec(rng: &mut Rng, len: usize, low: f32, high: f32) -> Vec<f32> {
    (0..len).map(|_| rng.uniform(low, high)).collect()
}

/// Asserts closeness, naming the worst element on failure.
pub fn assert_close(what: &str, actual: &[f32], expected: &[f32], atol: f32, rtol: f32) {
    if let Err(m) = compare(actual, expected, atol, rtol) {
        panic!("{what}: {m} (atol {atol}, rtol {rtol})");
    }
}

/// The MNIST folder: $SHADERTRAIN_DATA, else data/mnist. Missing data fails the test.
pub fn mnist_dir() -> PathBuf {
    let dir = std::env::var_os(DATA_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(default_dir(DatasetKind::Mnist))
        });
    assert!(
        dir.is_dir(),
        "MNIST tests need the dataset: set {DATA_ENV} to the folder with the four IDX files (looked in {})",
        dir.display()
    );
    dir
}

/// A small random classification set: `features` bytes per sample, labels below `classes`.
pub fn random_dataset(rng: &mut Rng, samples: usize, features: usize, classes: usize) -> Dataset {
    let pixels = (0..samples * features)
        .map(|_| rng.below(256) as u8)
        .collect();
    let labels = (0..samples).map(|_| rng.below(classes) as u8).collect();
    Dataset::new(features, classes, pixels, labels).unwrap()
}

/// A folder holding the first `train` training and `test` test samples of MNIST as raw IDX
/// files: a dataset for whole-program runs that must be quick.
pub fn small_mnist(train: usize, test: usize) -> tempfile::TempDir {
    use shadertrain::data::{Split, idx::encode_idx_u8};
    let dir = tempfile::tempdir().unwrap();
    for (split, count, images, labels) in [
        (
            Split::Train,
            train,
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
        ),
        (
            Split::Test,
            test,
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        ),
    ] {
        let data = Dataset::load_mnist(&mnist_dir(), split)
            .unwrap()
            .truncated(count);
        let samples = data.samples();
        std::fs::write(
            dir.path().join(images),
            encode_idx_u8(&[samples, 28, 28], &data.pixels),
        )
        .unwrap();
        std::fs::write(
            dir.path().join(labels),
            encode_idx_u8(&[samples], &data.labels),
        )
        .unwrap();
    }
    dir
}

/// The reference's version of the first epoch as `Trainer` defines it: Glorot init from the
/// seed, a Fisher-Yates shuffle from the same stream (unless `shuffle` is off), every batch (the
/// last one partial) trained on, up to `max_steps`.
pub struct ReferenceRun {
    pub params: Vec<f32>,
    /// The learning rate of the last step.
    pub learning_rate: f32,
    pub train_samples: usize,
    pub train_loss: f64,
    pub train_correct: u32,
}

/// `base` with today's recipe on top: SGD with Nesterov momentum 0.9, weight decay 5e-4, a
/// half-epoch warm-up then cosine, label smoothing 0.1.
pub fn with_nesterov_recipe(base: TrainConfig) -> TrainConfig {
    TrainConfig {
        optimizer: shadertrain::train::OptimizerKind::Sgd,
        momentum: 0.9,
        nesterov: true,
        weight_decay: 5e-4,
        lr_schedule: shadertrain::train::LrSchedule::Cosine,
        warmup_epochs: Some(0.5),
        label_smoothing: 0.1,
        ..base
    }
}

/// The dropout key of the epoch's step `step` (from 0): the run's step number counts from 1.
pub fn key(config: &TrainConfig, step: usize) -> StepKey {
    StepKey {
        seed: config.seed,
        step: step as u32 + 1,
    }
}

pub fn reference_epoch(spec: &ModelSpec, config: &TrainConfig, data: &Dataset) -> ReferenceRun {
    reference_epochs(spec, config, data, 1)
}

/// The reference's first `epochs` epochs of `spec` trained on `data` as `config` asks (its
/// `max_steps` stops it inside one): the optimizer's update, the schedule's rate and the label
/// smoothing of each step from the library's definitions (`optimizer::training_step`,
/// `reference_update`). The metrics are the last epoch's.
pub fn reference_epochs(
    spec: &ModelSpec,
    config: &TrainConfig,
    data: &Dataset,
    epochs: usize,
) -> ReferenceRun {
    let layout = spec.layout();
    let mut rng = Rng::new(config.seed);
    let mut params = spec.glorot_uniform(&mut rng);
    let rule = UpdateRule::of(config);
    let mut state = vec![vec![0.0; layout.trained]; rule.state_names().len()];
    let steps_per_epoch = data.samples().div_ceil(config.batch_size);
    let run = RunLength::new(config.epochs, steps_per_epoch, config.warmup_epochs);
    let limit = config.max_steps.unwrap_or(u64::MAX);
    let mut t = 0u64;
    let mut last_rate = config.learning_rate;
    let (mut loss_sum, mut correct, mut trained) = (0.0, 0, 0);
    for _ in 0..epochs {
        let mut order: Vec<u32> = (0..data.samples() as u32).collect();
        if config.shuffle {
            rng.shuffle(&mut order);
        }
        (loss_sum, correct, trained) = (0.0, 0, 0);
        for start in (0..data.samples()).step_by(config.batch_size) {
            if t >= limit {
                break;
            }
            let rows = config.batch_size.min(data.samples() - start);
            trained += rows;
            let augmentation = (!config.augmentation.is_none()).then(|| {
                let key = augmentation_key(config.seed);
                (&config.augmentation, key, t as u32 + 1)
            });
            let standardisation = spec.standardisation.as_ref();
            let (x, y) = gather_batch(data, &order, start, rows, standardisation, augmentation);
            let key = key(config, t as usize);
            let result =
                forward_backward_smoothed(spec, &params, &x, &y, key, config.label_smoothing);
            loss_sum += (result.loss.sample_loss.iter())
                .map(|&l| l as f64)
                .sum::<f64>();
            correct += result.loss.sample_correct.iter().sum::<u32>();
            t += 1;
            let step = optimizer::training_step(config, run, t, start, rows);
            last_rate = step.learning_rate;
            let (trained_params, _) = params.split_at_mut(layout.trained);
            optimizer::reference_update(
                config,
                &step,
                trained_params,
                &result.grads[..layout.trained],
                &mut state,
            )
            .unwrap();
            // BatchNorm's running statistics, which the forward pass updated.
            params[layout.trained..].copy_from_slice(&result.state);
        }
    }
    ReferenceRun {
        params,
        learning_rate: last_rate,
        train_samples: trained,
        train_loss: loss_sum / trained as f64,
        train_correct: correct,
    }
}

/// `kernels` train one epoch of `spec` on `data` as the reference does.
pub fn assert_trains_like_the_reference(
    what: &str,
    kernels: &Kernels,
    spec: &ModelSpec,
    config: &TrainConfig,
    data: &Dataset,
) {
    assert_trains_epochs_like_the_reference(what, kernels, spec, config, data, 1);
}

/// `kernels` train `epochs` epochs of `spec` on `data` as the reference does: the parameters
/// after them, and the last epoch's training loss, accuracy and learning rate.
pub fn assert_trains_epochs_like_the_reference(
    what: &str,
    kernels: &Kernels,
    spec: &ModelSpec,
    config: &TrainConfig,
    data: &Dataset,
    epochs: usize,
) {
    let expected = reference_epochs(spec, config, data, epochs);
    let mut trainer =
        Trainer::new(gpu(), kernels, spec.clone(), config.clone(), data, data).unwrap();
    let mut metrics = trainer.run_epoch().unwrap();
    for _ in 1..epochs {
        metrics = trainer.run_epoch().unwrap();
    }
    assert_eq!(
        metrics.learning_rate, expected.learning_rate,
        "{what} learning rate of the last step"
    );
    assert_close(
        &format!("{what} parameters"),
        &trainer.parameters().unwrap(),
        &expected.params,
        1e-5,
        1e-4,
    );
    assert_close(
        &format!("{what} train loss"),
        &[metrics.train_loss as f32],
        &[expected.train_loss as f32],
        1e-6,
        1e-5,
    );
    assert_eq!(
        metrics.train_accuracy,
        expected.train_correct as f64 / data.samples() as f64,
        "{what} train accuracy"
    );
}

/// The reference's gradients of the `trained` parameters against central differences (step
/// `eps`) of its mean loss on (x, labels) at `params`; they must not mostly vanish, or the check
/// would be empty.
#[allow(clippy::too_many_arguments)]
pub fn assert_gradients_match_finite_differences(
    what: &str,
    spec: &ModelSpec,
    params: &[f32],
    (x, labels): (&[f32], &[u32]),
    key: StepKey,
    trained: &[usize],
    eps: f32,
    (atol, rtol): (f32, f32),
) {
    let analytic = forward_backward(spec, params, x, labels, key).grads;
    let numeric: Vec<f32> = (trained.iter())
        .map(|&i| {
            let mut plus = params.to_vec();
            plus[i] += eps;
            let mut minus = params.to_vec();
            minus[i] -= eps;
            let up = forward_backward(spec, &plus, x, labels, key).mean_loss();
            let down = forward_backward(spec, &minus, x, labels, key).mean_loss();
            ((up - down) / (2.0 * eps as f64)) as f32
        })
        .collect();
    let analytic: Vec<f32> = trained.iter().map(|&i| analytic[i]).collect();
    assert!(
        analytic.iter().filter(|g| g.abs() > 1e-3).count() > analytic.len() / 4,
        "{what}: gradients vanish: the check would be empty"
    );
    assert_close(what, &analytic, &numeric, atol, rtol);
}

/// The GPU's gradients of the first batch of `batch` samples of `data` (in file order, seed 8,
/// at step number 0) equal the reference's at the trainer's initial parameters.
pub fn assert_first_batch_gradients_match(
    what: &str,
    spec: &ModelSpec,
    (data, batch): (&Dataset, usize),
    (atol, rtol): (f32, f32),
) {
    let config = TrainConfig {
        batch_size: batch,
        seed: 8,
        ..TrainConfig::default()
    };
    let trainer = Trainer::new(gpu(), kernels(), spec.clone(), config, data, data).unwrap();
    let params = trainer.parameters().unwrap();
    let order: Vec<u32> = (0..data.samples() as u32).collect();
    let (x, y) = reference::gather_batch(data, &order, 0, batch);
    // The first batch's gradients are taken at step number 0.
    let key = StepKey { seed: 8, step: 0 };
    let expected = forward_backward(spec, &params, &x, &y, key).grads;
    let actual = trainer.first_batch_gradients().unwrap();
    assert_close(&format!("{what} gradients"), &actual, &expected, atol, rtol);
}

/// Writes CIFAR-10's binary batches into `dir` (five training batches of `per_batch` records,
/// a test batch of `test` records): random labels, and pixels of each record's three planes
/// made from (record, channel, position), so a test can say where each byte must land. Returns
/// every training record's (label, planar image bytes), in file order.
pub fn write_cifar_batches(
    dir: &std::path::Path,
    per_batch: usize,
    test: usize,
) -> Vec<(u8, Vec<u8>)> {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = Rng::new(77);
    let mut records = Vec::new();
    let files = shadertrain::data::cifar::ALL_FILES;
    for (f, name) in files.iter().enumerate() {
        let count = if f < 5 { per_batch } else { test };
        let mut bytes = Vec::new();
        for r in 0..count {
            let label = rng.below(10) as u8;
            let image: Vec<u8> = (0..3 * 1024)
                .map(|i| ((i / 1024) * 80 + (i % 1024) % 61 + r * 7 + f) as u8)
                .collect();
            bytes.push(label);
            bytes.extend_from_slice(&image);
            if f < 5 {
                records.push((label, image));
            }
        }
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    records
}

/// Writes samples `range` of `data` (grey or RGB) as PNG files into `dir/<class>/<index>.png`,
/// the class named by `names`.
pub fn write_png_folder(
    dir: &std::path::Path,
    data: &Dataset,
    range: std::ops::Range<usize>,
    names: &[&str],
) {
    let (c, h, w) = (data.shape.channels, data.shape.height, data.shape.width);
    let features = data.features();
    for i in range {
        let folder = dir.join(names[data.labels[i] as usize]);
        std::fs::create_dir_all(&folder).unwrap();
        let pixels = data.pixels[i * features..(i + 1) * features].to_vec();
        let path = folder.join(format!("{i:05}.png"));
        match c {
            1 => image::GrayImage::from_raw(w as u32, h as u32, pixels)
                .unwrap()
                .save(&path),
            _ => image::RgbImage::from_raw(w as u32, h as u32, pixels)
                .unwrap()
                .save(&path),
        }
        .unwrap();
    }
}

/// Runs the program with `args` (and no SHADERTRAIN_DATA): exit code, stdout, stderr.
pub fn shadertrain(args: &[&str]) -> (i32, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_shadertrain"))
        .args(args)
        .env_remove("SHADERTRAIN_DATA")
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The last line of a `--metrics` log, parsed.
pub fn last_metrics_record(log: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(log).unwrap();
    serde_json::from_str(text.lines().last().expect("a line")).unwrap()
}
