//! Datasets: MNIST-format image classification data read from IDX files.

pub mod catalog;
pub mod cifar;
pub mod download;
pub mod folder;
pub mod identity;
pub mod idx;
pub mod images;

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::shapes::Shape;
use idx::{IdxBytes, read_idx_u8};

/// The environment variable that, like `--data`, names the folder holding the dataset files.
pub const DATA_ENV: &str = "SHADERTRAIN_DATA";

pub use catalog::DatasetKind;
pub use identity::{DataIdentity, FileDigests};

/// The folder under the working directory where datasets are looked for and downloaded to,
/// `data/<dataset>/`, when neither `--data` nor the environment variable names one.
pub fn default_dir(kind: DatasetKind) -> PathBuf {
    Path::new("data").join(kind.name())
}

/// Which of the files `stems` (raw or gzip) `dir` lacks.
pub fn missing_files<'s>(dir: &Path, stems: &[&'s str]) -> Vec<&'s str> {
    stems
        .iter()
        .copied()
        .filter(|stem| download::existing_file(dir, stem).is_none())
        .collect()
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
    locate_files(kind, named, kind.files())
}

/// The first candidate folder holding the files `stems` (for CIFAR-10, a candidate's
/// `cifar-10-batches-bin/` if it has one, else the candidate itself).
pub fn locate_files(kind: DatasetKind, named: Option<&Path>, stems: &[&str]) -> Option<PathBuf> {
    candidate_dirs(kind, named)
        .into_iter()
        .map(|dir| match kind {
            DatasetKind::Cifar10 => cifar::batches_dir(&dir),
            _ => dir,
        })
        .find(|dir| missing_files(dir, stems).is_empty())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    /// The image and label files of the split.
    pub fn file_stems(self) -> (&'static str, &'static str) {
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
    /// One sample's shape: 1 × rows × columns for images (from the IDX dimensions), n × 1 × 1 for
    /// vectors of n features.
    pub shape: Shape,
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

    /// Values per sample.
    pub fn features(&self) -> usize {
        self.shape.len()
    }

    /// Builds a dataset of flat samples (`features` values each) from parts, checking that they
    /// agree.
    pub fn new(features: usize, classes: usize, pixels: Vec<u8>, labels: Vec<u8>) -> Result<Self> {
        Self::with_shape(Shape::flat(features), classes, pixels, labels)
    }

    /// Builds a dataset of samples of `shape` from parts, checking that they agree.
    pub fn with_shape(
        shape: Shape,
        classes: usize,
        pixels: Vec<u8>,
        labels: Vec<u8>,
    ) -> Result<Self> {
        let dataset = Dataset {
            shape,
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
        if self.features() == 0 || self.pixels.len() != self.samples() * self.features() {
            return Err(format!(
                "{} pixel bytes do not make {} images of {} pixels",
                self.pixels.len(),
                self.samples(),
                self.features()
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

    /// Loads one split of `kind` from `dir` (as `locate` finds it), with the MD5 of each file
    /// read.
    pub fn load_digested(
        kind: DatasetKind,
        dir: &Path,
        split: Split,
    ) -> Result<(Self, FileDigests)> {
        match kind {
            DatasetKind::Cifar10 => cifar::load(&cifar::batches_dir(dir), split),
            _ => Self::load_mnist_digested(dir, split),
        }
    }

    /// Loads one split of an MNIST-format dataset (MNIST, Fashion-MNIST) from `dir`, where each
    /// file may be stored raw or gzip-compressed (`NAME` or `NAME.gz`).
    pub fn load_mnist(dir: &Path, split: Split) -> Result<Self> {
        Self::load_mnist_digested(dir, split).map(|(dataset, _)| dataset)
    }

    /// `load_mnist`, with the MD5 of each file's decompressed content by file stem.
    pub fn load_mnist_digested(dir: &Path, split: Split) -> Result<(Self, FileDigests)> {
        let (image_stem, label_stem) = split.file_stems();
        let image_path = find_file(dir, image_stem)?;
        let label_path = find_file(dir, label_stem)?;
        let images = read_idx_u8(&image_path)?;
        let labels = read_idx_u8(&label_path)?;
        Self::mnist_from_idx(dir, split, (&image_path, images), (&label_path, labels))
    }

    /// One split of an MNIST-format dataset from its images and labels read as IDX (each with
    /// the path that names it in errors; `dir`, the folder both are in), with the MD5 of each
    /// by file stem: how a web page, handed the files' bytes, loads them.
    pub fn mnist_from_idx(
        dir: &Path,
        split: Split,
        (image_path, images): (&Path, IdxBytes),
        (label_path, labels): (&Path, IdxBytes),
    ) -> Result<(Self, FileDigests)> {
        let (image_stem, label_stem) = split.file_stems();
        if images.dims.len() != 3 {
            return Err(Error::MalformedIdx {
                path: image_path.to_path_buf(),
                problem: format!(
                    "expected 3 dimensions [images, rows, columns], found {:?}",
                    images.dims
                ),
            });
        }
        if labels.dims.len() != 1 {
            return Err(Error::MalformedIdx {
                path: label_path.to_path_buf(),
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
            shape: Shape::image(1, images.dims[1], images.dims[2]),
            classes: MNIST_CLASSES,
            pixels: images.data,
            labels: labels.data,
        };
        dataset.check().map_err(|problem| Error::MalformedIdx {
            path: label_path.to_path_buf(),
            problem,
        })?;
        let digests = FileDigests::from([
            (image_stem.to_string(), images.md5),
            (label_stem.to_string(), labels.md5),
        ]);
        Ok((dataset, digests))
    }

    /// The first `count` samples (all if fewer): for quick runs and tests.
    pub fn truncated(&self, count: usize) -> Dataset {
        self.range(0, count.min(self.samples()))
    }

    /// (kept, held out): the last `fraction` of each class's samples (at least one where the
    /// class has two) held out, the rest kept, each in the order they had.
    pub fn hold_out_per_class(&self, fraction: f64) -> Result<(Dataset, Dataset)> {
        let mut counts = vec![0usize; self.classes];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        let held: Vec<usize> = (counts.iter())
            .map(|&n| match n {
                0 | 1 => 0,
                n => ((n as f64 * fraction).round() as usize).clamp(1, n - 1),
            })
            .collect();
        let mut seen = vec![0usize; self.classes];
        let features = self.features();
        let (mut kept, mut out) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
        for (i, &l) in self.labels.iter().enumerate() {
            let c = l as usize;
            seen[c] += 1;
            let part = if seen[c] > counts[c] - held[c] {
                &mut out
            } else {
                &mut kept
            };
            part.0
                .extend_from_slice(&self.pixels[i * features..(i + 1) * features]);
            part.1.push(l);
        }
        let make = |(pixels, labels)| Dataset::with_shape(self.shape, self.classes, pixels, labels);
        Ok((make(kept)?, make(out)?))
    }

    /// Samples `start..end`.
    fn range(&self, start: usize, end: usize) -> Dataset {
        let features = self.features();
        Dataset {
            shape: self.shape,
            classes: self.classes,
            pixels: self.pixels[start * features..end * features].to_vec(),
            labels: self.labels[start..end].to_vec(),
        }
    }

    /// Holds out the last `fraction` of the samples for validation, as Keras' `validation_split`
    /// does (before any shuffling): the first floor(n (1 - fraction)) samples train, the rest
    /// validate. A fraction of 0 holds out nothing.
    pub fn split_validation(&self, fraction: f64) -> Result<(Cow<'_, Dataset>, Option<Dataset>)> {
        if fraction == 0.0 {
            return Ok((Cow::Borrowed(self), None));
        }
        let samples = self.samples();
        let kept = (samples as f64 * (1.0 - fraction)).floor() as usize;
        if kept == 0 || kept == samples {
            return Err(Error::Config(format!(
                "--validation-split {fraction} of {samples} samples leaves {kept} to train and {} \
                 to validate: both need at least one",
                samples - kept
            )));
        }
        Ok((
            Cow::Owned(self.range(0, kept)),
            Some(self.range(kept, samples)),
        ))
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
