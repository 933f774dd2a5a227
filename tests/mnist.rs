//! Training on the real MNIST files (from $SHADERTRAIN_DATA, else data/mnist).

mod common;

use common::{gpu, kernels, mnist_dir};
use shadertrain::data::{Dataset, DatasetKind, Split, locate};
use shadertrain::model::ModelSpec;
use shadertrain::reference;
use shadertrain::train::{EpochMetrics, TrainConfig, Trainer};

/// A trainer for the reference model on the shared device.
fn reference_trainer(config: TrainConfig, train: &Dataset, test: &Dataset) -> Trainer<'static> {
    Trainer::new(
        gpu(),
        kernels(),
        ModelSpec::reference(),
        config,
        train,
        test,
    )
    .unwrap()
}

/// One epoch with Keras' default `fit` batch size (32). With the reference batch of 128, one
/// epoch lands at 95.6-96.0 % here and 95.7-96.3 % in PyTorch over seeds (see the README), too
/// close to 96 % for a test; the ten-epoch reference run is measured by `shadertrain train`.
#[test]
fn one_epoch_on_full_mnist_reaches_96_percent() {
    let dir = mnist_dir();
    let train = Dataset::load_mnist(&dir, Split::Train).unwrap();
    let test = Dataset::load_mnist(&dir, Split::Test).unwrap();
    assert_eq!((train.samples(), test.samples()), (60_000, 10_000));
    let config = TrainConfig {
        batch_size: 32,
        ..TrainConfig::default()
    };
    let mut trainer = reference_trainer(config, &train, &test);
    let m = trainer.run_epoch().unwrap();
    println!("{m:?}");
    assert!(
        m.test_accuracy >= 0.96,
        "test accuracy after one epoch: {:.4}",
        m.test_accuracy
    );
    assert!(m.train_loss < 0.5 && m.test_loss < 0.2, "{m:?}");
}

#[test]
fn the_same_seed_gives_identical_metrics() {
    let dir = mnist_dir();
    // The last training batch is partial (5000 = 39 × 128 + 8).
    let train = Dataset::load_mnist(&dir, Split::Train)
        .unwrap()
        .truncated(5000);
    let test = Dataset::load_mnist(&dir, Split::Test)
        .unwrap()
        .truncated(1000);
    let run = |seed: u64| -> Vec<EpochMetrics> {
        let config = TrainConfig {
            seed,
            ..TrainConfig::default()
        };
        let mut trainer = reference_trainer(config, &train, &test);
        (0..2)
            .map(|_| EpochMetrics {
                seconds: 0.0,
                samples_per_second: 0.0,
                ..trainer.run_epoch().unwrap()
            })
            .collect()
    };
    let first = run(42);
    assert_eq!(first, run(42), "same seed, different metrics");
    assert_ne!(first, run(43), "another seed should give another run");
    assert!(
        first[1].train_loss < first[0].train_loss,
        "training does not learn: {first:?}"
    );
}

#[test]
fn test_metrics_equal_a_cpu_evaluation_of_the_trained_parameters() {
    let dir = mnist_dir();
    let train = Dataset::load_mnist(&dir, Split::Train)
        .unwrap()
        .truncated(3000);
    let test = Dataset::load_mnist(&dir, Split::Test).unwrap();
    let spec = ModelSpec::reference();
    let mut trainer = Trainer::new(
        gpu(),
        kernels(),
        spec.clone(),
        TrainConfig::default(),
        &train,
        &test,
    )
    .unwrap();
    let m = trainer.run_epoch().unwrap();
    let params = trainer.parameters().unwrap();
    let order: Vec<u32> = (0..test.samples() as u32).collect();
    let (x, y) = reference::gather_batch(&test, &order, 0, test.samples());
    let logits = reference::forward(&spec, &params, &x).pop().unwrap();
    let expected = reference::softmax_loss(spec.loss, &logits, &y, spec.classes);
    let correct: u32 = expected.sample_correct.iter().sum();
    let loss: f64 =
        expected.sample_loss.iter().map(|&l| l as f64).sum::<f64>() / test.samples() as f64;
    assert!(
        (m.test_accuracy - correct as f64 / test.samples() as f64).abs() <= 2e-4,
        "{m:?} vs {correct} correct"
    );
    assert!(
        (m.test_loss - loss).abs() <= 1e-4 * loss,
        "{m:?} vs loss {loss}"
    );
}

/// Runs where Debian's `dataset-fashion-mnist` (or data/fashion-mnist/) is present; CI installs
/// the package, so there a missing dataset fails the test.
#[test]
fn one_epoch_on_fashion_mnist_reaches_80_percent() {
    let Some(dir) = locate(DatasetKind::FashionMnist, None) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install dataset-fashion-mnist"
        );
        eprintln!("Fashion-MNIST not installed: not tested here");
        return;
    };
    let train = Dataset::load_mnist(&dir, Split::Train).unwrap();
    let test = Dataset::load_mnist(&dir, Split::Test).unwrap();
    let mut trainer = reference_trainer(TrainConfig::default(), &train, &test);
    let m = trainer.run_epoch().unwrap();
    println!("{m:?}");
    assert!(
        m.test_accuracy >= 0.80,
        "Fashion-MNIST after one epoch: {m:?}"
    );
}
