//! Shared by the integration tests: one device per test binary, random data, comparisons.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use shadertrain::data::{DATA_ENV, Dataset, DatasetKind, default_dir};
use shadertrain::gpu::{AdapterRequest, Gpu, Kernels};
use shadertrain::reference::compare;
use shadertrain::rng::Rng;

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
