//! Malformed dataset files give errors that name the file and the problem, never panics.

use std::io::Write;
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;
use shadertrain::Error;
use shadertrain::data::idx::{encode_idx_u8, read_idx_u8};
use shadertrain::data::{Dataset, Split};

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn read_error(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file.idx");
    std::fs::write(&path, bytes).unwrap();
    let err = read_idx_u8(&path).expect_err("malformed input must be an error");
    assert!(matches!(err, Error::MalformedIdx { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("file.idx"),
        "the message names the file: {message}"
    );
    message
}

fn images(count: usize) -> Vec<u8> {
    encode_idx_u8(&[count, 2, 2], &vec![7; count * 4])
}

#[test]
fn raw_and_gzip_files_read_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("raw");
    let gz = dir.path().join("compressed.anything");
    std::fs::write(&raw, images(3)).unwrap();
    std::fs::write(&gz, gzip(&images(3))).unwrap();
    let a = read_idx_u8(&raw).unwrap();
    assert_eq!(a.dims, vec![3, 2, 2]);
    assert_eq!(a.data.len(), 12);
    assert_eq!(read_idx_u8(&gz).unwrap(), a);
}

#[test]
fn each_malformation_is_named() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "empty"),
        ("short magic", vec![0, 0], "too short"),
        (
            "wrong magic",
            vec![1, 2, 8, 1, 0, 0, 0, 0],
            "not an IDX file",
        ),
        ("wrong dtype", vec![0, 0, 0x0d, 1, 0, 0, 0, 0], "dtype"),
        (
            "truncated header",
            vec![0, 0, 8, 3, 0, 0, 0, 2, 0],
            "truncated header",
        ),
        ("truncated data", images(3)[..20].to_vec(), "truncated"),
        (
            "trailing data",
            [images(3), vec![1, 2]].concat(),
            "trailing data",
        ),
        (
            "truncated gzip",
            gzip(&images(300))[..40].to_vec(),
            "truncated",
        ),
    ];
    for (name, bytes, expected) in cases {
        let message = read_error(&bytes);
        assert!(
            message.contains(expected),
            "{name}: {message:?} should mention {expected:?}"
        );
    }
}

#[test]
fn corrupted_gzip_is_an_error() {
    let mut bytes = gzip(&images(300));
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 8] {
        *b ^= 0x5a;
    }
    let message = read_error(&bytes);
    assert!(
        message.contains("gzip") || message.contains("truncated"),
        "{message}"
    );
}

fn write_split(dir: &Path, images: &[u8], labels: &[u8]) {
    std::fs::write(dir.join("train-images-idx3-ubyte"), images).unwrap();
    std::fs::write(dir.join("train-labels-idx1-ubyte.gz"), gzip(labels)).unwrap();
}

#[test]
fn image_and_label_counts_must_agree() {
    let dir = tempfile::tempdir().unwrap();
    write_split(dir.path(), &images(3), &encode_idx_u8(&[4], &[1, 2, 3, 4]));
    let message = Dataset::load_mnist(dir.path(), Split::Train)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("3 images") && message.contains("4 labels"),
        "{message}"
    );
}

#[test]
fn labels_must_be_classes() {
    let dir = tempfile::tempdir().unwrap();
    write_split(dir.path(), &images(3), &encode_idx_u8(&[3], &[1, 12, 3]));
    let message = Dataset::load_mnist(dir.path(), Split::Train)
        .unwrap_err()
        .to_string();
    assert!(message.contains("label 12"), "{message}");
}

#[test]
fn wrong_rank_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write_split(
        dir.path(),
        &encode_idx_u8(&[12], &[0; 12]),
        &encode_idx_u8(&[3], &[1, 2, 3]),
    );
    let message = Dataset::load_mnist(dir.path(), Split::Train)
        .unwrap_err()
        .to_string();
    assert!(message.contains("3 dimensions"), "{message}");
}

#[test]
fn a_missing_file_names_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let message = Dataset::load_mnist(dir.path(), Split::Test)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("t10k-images-idx3-ubyte") && message.contains("--data"),
        "{message}"
    );
}

#[test]
fn a_loaded_split_has_consistent_parts() {
    let dir = tempfile::tempdir().unwrap();
    write_split(dir.path(), &images(3), &encode_idx_u8(&[3], &[0, 9, 5]));
    let data = Dataset::load_mnist(dir.path(), Split::Train).unwrap();
    assert_eq!((data.samples(), data.features(), data.classes), (3, 4, 10));
    assert_eq!(data.labels, vec![0, 9, 5]);
}
