//! CIFAR-10's binary batches: read into channels-last colour images, found in the folder
//! `--data` names or its `cifar-10-batches-bin/`, trained on the GPU as the reference does, and
//! refused with a message naming the file when damaged. (Its download: tests/download.rs.)

mod common;

use common::{assert_trains_epochs_like_the_reference, kernels, write_cifar_batches};
use shadertrain::data::{Dataset, DatasetKind, Split, cifar, locate};
use shadertrain::input::{Augmentation, Standardisation};
use shadertrain::model::{Activation, Loss, ModelSpec, parse_layers};
use shadertrain::train::TrainConfig;

#[test]
fn batches_read_as_channels_last_colour_images_from_either_folder() {
    let parent = tempfile::tempdir().unwrap();
    let batches = parent.path().join(cifar::BATCHES_DIR);
    let records = write_cifar_batches(&batches, 3, 4);
    for named in [parent.path(), batches.as_path()] {
        let dir = locate(DatasetKind::Cifar10, Some(named)).expect("found");
        assert_eq!(dir, batches);
        let (train, digests) =
            Dataset::load_digested(DatasetKind::Cifar10, named, Split::Train).unwrap();
        assert_eq!(digests.len(), 5);
        assert_eq!(
            (train.samples(), train.shape.to_string()),
            (15, "3×32×32".to_string())
        );
        for (i, (label, planar)) in records.iter().enumerate() {
            assert_eq!(train.labels[i], *label);
            let image = &train.pixels[i * 3072..(i + 1) * 3072];
            for (y, x, c) in [(0, 0, 0), (0, 0, 2), (5, 31, 1), (31, 7, 2)] {
                assert_eq!(image[(y * 32 + x) * 3 + c], planar[c * 1024 + y * 32 + x]);
            }
        }
        let (test, _) = Dataset::load_digested(DatasetKind::Cifar10, named, Split::Test).unwrap();
        assert_eq!(test.samples(), 4);
    }
    assert_eq!(DatasetKind::Cifar10.class_names()[3], "cat");
}

#[test]
fn damaged_batches_are_refused_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar_batches(dir.path(), 2, 2);
    let load = || Dataset::load_digested(DatasetKind::Cifar10, dir.path(), Split::Train);
    let second = dir.path().join("data_batch_2.bin");
    let bytes = std::fs::read(&second).unwrap();
    std::fs::write(&second, &bytes[..bytes.len() - 100]).unwrap();
    let error = load().unwrap_err().to_string();
    assert!(
        error.contains("data_batch_2.bin") && error.contains("not whole records"),
        "{error}"
    );
    let mut relabelled = bytes.clone();
    relabelled[3073] = 10;
    std::fs::write(&second, &relabelled).unwrap();
    let error = load().unwrap_err().to_string();
    assert!(error.contains("record 1 has label 10"), "{error}");
    std::fs::remove_file(&second).unwrap();
    let error = load().unwrap_err().to_string();
    assert!(error.contains("data_batch_2.bin is not there"), "{error}");
}

/// A small CIFAR-format set, standardised per colour channel, cropped and flipped, trains two
/// epochs through a convolution as the reference does.
#[test]
fn cifar_images_train_like_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar_batches(dir.path(), 6, 5);
    let (train, _) =
        Dataset::load_digested(DatasetKind::Cifar10, dir.path(), Split::Train).unwrap();
    let spec = ModelSpec {
        input: train.shape,
        layers: parse_layers("conv4k3s2p1,gap,dense10", Activation::Relu).unwrap(),
        loss: Loss::Xent,
        standardisation: Some(Standardisation::of(&train).unwrap()),
    };
    spec.validate().unwrap();
    let config = TrainConfig {
        batch_size: 8,
        learning_rate: 0.01,
        epochs: 2,
        augmentation: Augmentation {
            crop: 4,
            flip: true,
            cutout: 0,
        },
        ..TrainConfig::default()
    };
    let what = "cifar-format images";
    assert_trains_epochs_like_the_reference(what, kernels(), &spec, &config, &train, 2);
}
