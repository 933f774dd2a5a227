//! CIFAR-10's binary version (Krizhevsky 2009): `cifar-10-batches-bin/` holds
//! `data_batch_1.bin` … `data_batch_5.bin` (training, 10,000 images each) and `test_batch.bin`,
//! each a run of records of 1 label byte and 3,072 bytes of image: the red, green and blue
//! planes of 32×32, row by row. Read into channels-last images (R, G, B of each pixel together)
//! as every other tensor is stored.

use std::path::{Path, PathBuf};

use md5::{Digest, Md5};

use super::download::RemoteArchive;
use super::{Dataset, FileDigests, Split};
use crate::error::{Error, Result};
use crate::shapes::Shape;

/// The folder the archive unpacks into, which holds the batches.
pub const BATCHES_DIR: &str = "cifar-10-batches-bin";

pub const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
pub const TEST_FILES: [&str; 1] = ["test_batch.bin"];
pub const ALL_FILES: [&str; 6] = [
    TRAIN_FILES[0],
    TRAIN_FILES[1],
    TRAIN_FILES[2],
    TRAIN_FILES[3],
    TRAIN_FILES[4],
    TEST_FILES[0],
];

pub const SIDE: usize = 32;
pub const CHANNELS: usize = 3;
const IMAGE_BYTES: usize = CHANNELS * SIDE * SIDE;
const RECORD_BYTES: usize = 1 + IMAGE_BYTES;
pub const CLASSES: usize = 10;

/// The published archive of the binary version.
pub fn archive() -> RemoteArchive {
    RemoteArchive {
        mirrors: vec!["https://www.cs.toronto.edu/~kriz/".to_string()],
        name: "cifar-10-binary.tar.gz".to_string(),
        md5: "c32a1d4ab5d03f1284b67883e8d87530".to_string(),
        bytes: 170_052_171,
        keep_under: BATCHES_DIR.to_string(),
    }
}

/// One record's image, planar R, G, B, as channels-last bytes.
fn channels_last(planar: &[u8], out: &mut Vec<u8>) {
    let plane = SIDE * SIDE;
    for position in 0..plane {
        for c in 0..CHANNELS {
            out.push(planar[c * plane + position]);
        }
    }
}

/// The split's files in `dir` (the folder holding the batches) as a dataset of 3×32×32 images,
/// with the MD5 of each file by name.
pub fn load(dir: &Path, split: Split) -> Result<(Dataset, FileDigests)> {
    from_batches(dir, split, |name| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::Dataset {
                dir: dir.to_path_buf(),
                problem: format!(
                    "{name} is not there; point --data at the folder holding {BATCHES_DIR}/ \
                     (or at {BATCHES_DIR}/ itself), or leave --offline out to download it"
                ),
            },
            _ => Error::io(&path, e),
        })
    })
}

/// The split's batches as `read` gives each file's bytes by name (`dir` names where they are
/// in errors): how `load` reads a folder, and the web page the files the user chose.
pub fn from_batches(
    dir: &Path,
    split: Split,
    mut read: impl FnMut(&str) -> Result<Vec<u8>>,
) -> Result<(Dataset, FileDigests)> {
    let names: &[&str] = match split {
        Split::Train => &TRAIN_FILES,
        Split::Test => &TEST_FILES,
    };
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    let mut digests = FileDigests::new();
    for name in names {
        let bytes = read(name)?;
        let malformed = |problem: String| Error::Dataset {
            dir: dir.to_path_buf(),
            problem: format!("{name}: {problem}"),
        };
        if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD_BYTES) {
            return Err(malformed(format!(
                "{} bytes are not whole records of {RECORD_BYTES} (a label byte and a 3×32×32 \
                 image): truncated or not a CIFAR-10 binary batch",
                bytes.len()
            )));
        }
        for (i, record) in bytes.chunks(RECORD_BYTES).enumerate() {
            if record[0] as usize >= CLASSES {
                return Err(malformed(format!(
                    "record {i} has label {}, and CIFAR-10 has {CLASSES} classes",
                    record[0]
                )));
            }
            labels.push(record[0]);
            channels_last(&record[1..], &mut pixels);
        }
        digests.insert(name.to_string(), super::idx::hex(&Md5::digest(&bytes)));
    }
    let dataset = Dataset::with_shape(Shape::image(CHANNELS, SIDE, SIDE), CLASSES, pixels, labels)
        .map_err(|e| Error::Dataset {
            dir: dir.to_path_buf(),
            problem: e.to_string(),
        })?;
    Ok((dataset, digests))
}

/// Where the batches are, given a folder that holds `cifar-10-batches-bin/` or is it.
pub fn batches_dir(dir: &Path) -> PathBuf {
    let inside = dir.join(BATCHES_DIR);
    match inside.is_dir() {
        true => inside,
        false => dir.to_path_buf(),
    }
}
