//! shadertrain: trains multilayer perceptrons with WGSL compute shaders through wgpu.
//!
//! ```no_run
//! use shadertrain::{data::{Dataset, Split}, gpu::{AdapterRequest, Gpu, Kernels}, model::ModelSpec,
//!                   train::{TrainConfig, Trainer}};
//! # fn main() -> shadertrain::Result<()> {
//! let dir = std::path::Path::new("data/mnist");
//! let train = Dataset::load_mnist(dir, Split::Train)?;
//! let test = Dataset::load_mnist(dir, Split::Test)?;
//! let gpu = Gpu::open(&AdapterRequest::default())?;
//! let kernels = Kernels::new(&gpu);
//! let mut trainer = Trainer::new(&gpu, &kernels, ModelSpec::reference(), TrainConfig::default(), &train, &test)?;
//! let metrics = trainer.run_epoch()?;
//! println!("test accuracy {:.4}", metrics.test_accuracy);
//! # Ok(()) }
//! ```

pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod error;
pub mod explain;
pub mod failpoint;
pub mod files;
pub mod gpu;
pub mod input;
pub mod layers;
pub mod model;
pub mod model_file;
pub mod plot;
pub mod reference;
pub mod rng;
pub mod selftest;
pub mod shapes;
pub mod train;
#[cfg(target_arch = "wasm32")]
pub mod web;

pub use error::{Error, Result};
