//! Training on the real MNIST files (from $SHADERTRAIN_DATA, else data/mnist).

mod common;

use common::{gpu, kernels, mnist_dir};
use shadertrain::data::{Dataset, Split};
use shadertrain::model::ModelSpec;
use shadertrain::train::{EpochMetrics, TrainConfig, Trainer};

#[test]
fn one_epoch_of_the_reference_recipe_reaches_96_percent() {
    let dir = mnist_dir();
    let train = Dataset::load_mnist(&dir, Split::Train).unwrap();
    let test = Dataset::load_mnist(&dir, Split::Test).unwrap();
    assert_eq!((train.samples(), test.samples()), (60_000, 10_000));
    let config = TrainConfig {
        epochs: 1,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(
        gpu(),
        kernels(),
        ModelSpec::reference(),
        config,
        &train,
        &test,
    )
    .unwrap();
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
        let mut trainer = Trainer::new(
            gpu(),
            kernels(),
            ModelSpec::reference(),
            config,
            &train,
            &test,
        )
        .unwrap();
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
