//! The datasets shadertrain knows: where to fetch them, how to check them, what their classes are.

use super::download::{RemoteFile, Source};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DatasetKind {
    /// Handwritten digits (LeCun, Cortes & Burges).
    #[default]
    Mnist,
    /// Zalando's article images, a drop-in replacement for MNIST.
    FashionMnist,
    /// Krizhevsky's 32×32 colour photographs of 10 classes (the binary version).
    Cifar10,
    /// An image folder (torchvision's ImageFolder layout): `train/<class>/*`, `test/<class>/*`;
    /// its classes are its folders' names.
    Folder,
}

/// The four files of an MNIST-format dataset, without the `.gz` suffix.
pub const FILE_STEMS: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

impl DatasetKind {
    /// The folder name under `data/`, and the `--dataset` value.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Mnist => "mnist",
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Folder => "folder",
        }
    }

    /// The files of the whole dataset, as `--data` must hold them (raw or gzip for the IDX
    /// files; CIFAR-10's batches in its folder, `data::cifar::BATCHES_DIR`).
    pub fn files(self) -> &'static [&'static str] {
        match self {
            DatasetKind::Cifar10 => &super::cifar::ALL_FILES,
            DatasetKind::Folder => &[],
            _ => &FILE_STEMS,
        }
    }

    /// The files of the test split: all that `eval` and `predict` read.
    pub fn test_files(self) -> &'static [&'static str] {
        match self {
            DatasetKind::Cifar10 => &super::cifar::TEST_FILES,
            DatasetKind::Folder => &[],
            _ => &FILE_STEMS[2..],
        }
    }

    /// The class names (an image folder's are its own: none here).
    pub fn class_names(self) -> &'static [&'static str] {
        match self {
            DatasetKind::Mnist => &["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
            DatasetKind::FashionMnist => &[
                "T-shirt/top",
                "Trouser",
                "Pullover",
                "Dress",
                "Coat",
                "Sandal",
                "Shirt",
                "Sneaker",
                "Bag",
                "Ankle boot",
            ],
            DatasetKind::Folder => &[],
            DatasetKind::Cifar10 => &[
                "airplane",
                "automobile",
                "bird",
                "cat",
                "deer",
                "dog",
                "frog",
                "horse",
                "ship",
                "truck",
            ],
        }
    }

    /// Folders where a system package installs this dataset.
    pub fn system_dirs(self) -> &'static [&'static str] {
        match self {
            DatasetKind::Mnist | DatasetKind::Cifar10 | DatasetKind::Folder => &[],
            // Debian's `dataset-fashion-mnist` package.
            DatasetKind::FashionMnist => &["/usr/share/datasets/fashion-mnist"],
        }
    }

    /// Mirrors, tried in order, and the MD5 of each file's decompressed content: so a
    /// re-compressed copy is accepted and a corrupted one is not. CIFAR-10 comes as one archive
    /// (`data::cifar::archive`), whose files' own digests are not published: none here.
    pub fn source(self) -> Source {
        let (mirrors, md5s): (&[&str], [&str; 4]) = match self {
            DatasetKind::Cifar10 | DatasetKind::Folder => {
                return Source {
                    mirrors: Vec::new(),
                    files: Vec::new(),
                };
            }
            DatasetKind::Mnist => (
                &[
                    // torchvision's mirror
                    "https://ossci-datasets.s3.amazonaws.com/mnist/",
                    // the CVDF mirror (TensorFlow's)
                    "https://storage.googleapis.com/cvdf-datasets/mnist/",
                    // the original site
                    "http://yann.lecun.com/exdb/mnist/",
                ],
                [
                    "6bbc9ace898e44ae57da46a324031adb",
                    "a25bea736e30d166cdddb491f175f624",
                    "2646ac647ad5339dbf082846283269ea",
                    "27ae3e4e09519cfbb04c329615203637",
                ],
            ),
            DatasetKind::FashionMnist => (
                &[
                    // Zalando's published location
                    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                    // the files in Zalando's repository
                    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
                ],
                [
                    "f4a8712d7a061bf5bd6d2ca38dc4d50a",
                    "9018921c3c673c538a1fc5bad174d6f9",
                    "8181f5470baa50b63fa0f6fddb340f0a",
                    "15d484375f8d13e6eb1aabb0c3f46965",
                ],
            ),
        };
        Source {
            mirrors: mirrors.iter().map(|m| m.to_string()).collect(),
            files: FILE_STEMS
                .iter()
                .zip(md5s)
                .map(|(&stem, md5)| RemoteFile {
                    stem: stem.to_string(),
                    md5: md5.to_string(),
                })
                .collect(),
        }
    }
}
