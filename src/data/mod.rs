//! Datasets: MNIST-format image classification data read from IDX files.

pub mod catalog;
pub mod download;
pub mod idx;
pub mod images;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use idx::read_idx_u8;

/// The environment variable that, like `--data`, names the folder holding the dataset files.
pub const DATA_ENV: &str = "SHADERTRAIN_DATA";

pub use catalog::DatasetKind;

/// The folder under the working directory where datasets are looked for and downloaded to,
/// `data/<dataset>/`, when neither `--data` nor the environment variable names one.
pub fn default_dir(kind: DatasetKind) -> PathBuf {
    Path::new("data").join(kind.name())
}

/// Whether `dir` holds all four files of an MNIST-format dataset (raw or gzip).
pub fn has_dataset_files(dir: &Path) -> bool {
    catalog::FILE_STEMS
        .iter()
        .all(|stem| download::existing_file(dir, stem).is_some())
}

/// The folders looked in, in order: the one named by `--data` or the environment variable
/// (alone, when given), else `data/<dataset>/`, then where system packages install the dataset.
pub fn candidate_dirs(kind: DatasetKind, named: Option<&Path>) -> Vec<PathBuf> {
    match named {
        Some(dir) => vec![dir.to_path_buf()],
        None => std::iter::once(default_dir(kind))
            .chain(kind.system_dirs().iter().map(PathBuf::from))
            .collect(),
    }
}

/// The first candidate folder holding the whole dataset.
pub fn locate(kind: DatasetKind, named: Option<&Path>) -> Option<PathBuf> {
    candidate_dirs(kind, named)
        .into_iter()
        .find(|dir| has_dataset_files(dir))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    fn file_stems(self) -> (&'static str, &'static str) {
        match self {
            Split::Train => ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
            Split::Test => ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
        }
    }
}

/// Grey-level images with integer class labels, kept as the bytes of the files: pixels are
/// normalised (÷255) on the GPU, so the host never holds a float copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    /// Pixels per image (rows × columns).
    pub features: usize,
    pub classes: usize,
    /// `samples × features` bytes, row-major.
    pub pixels: Vec<u8>,
    /// One label per sample, each below `classes`.
    pub labels: Vec<u8>,
}

pub const MNIST_CLASSES: usize = 10;

impl Dataset {
    pub fn samples(&self) -> usize {
        self.labels.len()
    }

    /// Builds a dataset from parts, checking that they agree.
    pub fn new(features: usize, classes: usize, pixels: Vec<u8>, labels: Vec<u8>) -> Result<Self> {
        let dataset = Dataset {
            features,
            classes,
            pixels,
            labels,
        };
        dataset.check().map_err(|problem| Error::Dataset {
            dir: PathBuf::new(),
            problem,
        })?;
        Ok(dataset)
    }

    fn check(&self) -> Result<(), String> {
        if self.features == 0 || self.pixels.len() != self.samples() * self.features {
            return Err(format!(
                "{} pixel bytes do not make {} images of {} pixels",
                self.pixels.len(),
                self.samples(),
                self.features
            ));
        }
        if let Some((i, &l)) = self
            .labels
            .iter()
            .enumerate()
            .find(|&(_, &l)| l as usize >= self.classes)
        {
            return Err(format!(
                "label {l} of sample {i} is not below the class count {}",
                self.classes
            ));
        }
        Ok(())
    }

    /// Loads one split of an MNIST-format dataset (MNIST, Fashion-MNIST) from `dir`, where each
    /// file may be stored raw or gzip-compressed (`NAME` or `NAME.gz`).
    pub fn load_mnist(dir: &Path, split: Split) -> Result<Self> {
        let (image_stem, label_stem) = split.file_stems();
        let image_path = find_file(dir, image_stem)?;
        let label_path = find_file(dir, label_stem)?;
        let images = read_idx_u8(&image_path)?;
        let labels = read_idx_u8(&label_path)?;
        if images.dims.len() != 3 {
            return Err(Error::MalformedIdx {
                path: image_path,
                problem: format!(
                    "expected 3 dimensions [images, rows, columns], found {:?}",
                    images.dims
                ),
            });
        }
        if labels.dims.len() != 1 {
            return Err(Error::MalformedIdx {
                path: label_path,
                problem: format!("expected 1 dimension [labels], found {:?}", labels.dims),
            });
        }
        if images.dims[0] != labels.dims[0] {
            return Err(Error::Dataset {
                dir: dir.to_path_buf(),
                problem: format!(
                    "{} holds {} images but {} holds {} labels",
                    image_path.display(),
                    images.dims[0],
                    label_path.display(),
                    labels.dims[0]
                ),
            });
        }
        let dataset = Dataset {
            features: images.dims[1] * images.dims[2],
            classes: MNIST_CLASSES,
            pixels: images.data,
            labels: labels.data,
        };
        dataset.check().map_err(|problem| Error::MalformedIdx {
            path: label_path,
            problem,
        })?;
        Ok(dataset)
    }

    /// The first `count` samples (all if fewer): for quick runs and tests.
    pub fn truncated(&self, count: usize) -> Dataset {
        let count = count.min(self.samples());
        Dataset {
            features: self.features,
            classes: self.classes,
            pixels: self.pixels[..count * self.features].to_vec(),
            labels: self.labels[..count].to_vec(),
        }
    }
}

fn find_file(dir: &Path, stem: &str) -> Result<PathBuf> {
    download::existing_file(dir, stem).ok_or_else(|| Error::Dataset {
        dir: dir.to_path_buf(),
        problem: format!(
            "neither {stem}.gz nor {stem} is there; point --data (or {DATA_ENV}) at the folder \
             holding the four IDX files, or run `shadertrain download`"
        ),
    })
}
