//! Image folders (torchvision's ImageFolder layout): MNIST's own test images written as PNG
//! train, evaluate and hit the decoded-image cache with the same bits; colour images of mixed
//! sizes are resized; bad folders are refused with the file named.

mod common;

use common::{
    assert_trains_epochs_like_the_reference, kernels, mnist_dir, shadertrain, write_png_folder,
};
use shadertrain::data::folder::{self, FolderOptions};
use shadertrain::data::{Dataset, Split};
use shadertrain::model::{Activation, Loss, ModelSpec, Shape, parse_layers};
use shadertrain::rng::Rng;
use shadertrain::train::TrainConfig;

const DIGITS: [&str; 10] = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
];

/// The first 400 MNIST test images as train/ (300) and test/ (100) PNG folders.
fn mnist_folder() -> (tempfile::TempDir, Dataset) {
    let mnist = Dataset::load_mnist(&mnist_dir(), Split::Test).unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_png_folder(&dir.path().join("train"), &mnist, 0..300, &DIGITS);
    write_png_folder(&dir.path().join("test"), &mnist, 300..400, &DIGITS);
    (dir, mnist)
}

#[test]
fn a_folder_of_mnist_pngs_reads_as_the_images_with_sorted_class_names() {
    let (dir, mnist) = mnist_folder();
    let train = folder::load(dir.path(), Split::Train, FolderOptions::default(), None).unwrap();
    let mut sorted = DIGITS.map(String::from).to_vec();
    sorted.sort();
    assert_eq!(train.class_names, sorted);
    assert_eq!(train.data.shape, Shape::image(1, 28, 28));
    // Files are read class by class, each class in file-name order (= MNIST order).
    let mut expected: Vec<usize> = (0..300).collect();
    expected.sort_by_key(|&i| {
        (
            sorted
                .iter()
                .position(|n| n == DIGITS[mnist.labels[i] as usize]),
            i,
        )
    });
    for (k, &i) in expected.iter().enumerate() {
        assert_eq!(
            train.data.pixels[k * 784..(k + 1) * 784],
            mnist.pixels[i * 784..(i + 1) * 784]
        );
        assert_eq!(
            sorted[train.data.labels[k] as usize],
            DIGITS[mnist.labels[i] as usize]
        );
    }
    assert!(train.cached.is_none());
    let again = folder::load(dir.path(), Split::Train, FolderOptions::default(), None).unwrap();
    assert!(again.cached.is_some());
    assert_eq!((again.data, again.md5), (train.data, train.md5));
}

#[test]
fn a_folder_trains_evaluates_and_its_cached_run_is_the_same_bits() {
    let (dir, _) = mnist_folder();
    let data = dir.path().to_str().unwrap();
    let run = |name: &str| {
        let model = dir.path().join(format!("{name}.safetensors"));
        let log = dir.path().join(format!("{name}.jsonl"));
        let (code, stdout, stderr) = shadertrain(&[
            "train",
            "--dataset",
            "folder",
            "--data",
            data,
            "--epochs",
            "4",
            "--batch-size",
            "32",
            "--save",
            model.to_str().unwrap(),
            "--metrics",
            log.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{stdout}{stderr}");
        (stdout, std::fs::read(&model).unwrap(), log)
    };
    let (first, model, log) = run("first");
    assert!(
        first.contains("classes eight, five, four, nine, one"),
        "{first}"
    );
    assert!(!first.contains("cache"), "{first}");
    let (second, cached_model, _) = run("second");
    assert!(
        second.contains("decoded images read from the cache"),
        "{second}"
    );
    assert_eq!(
        model, cached_model,
        "the cached run's model is the uncached one's"
    );

    let last = common::last_metrics_record(&log);
    assert!(last["test_accuracy"].as_f64().unwrap() > 0.5, "{last}");
    let path = dir.path().join("first.safetensors");
    let (code, stdout, stderr) = shadertrain(&[
        "eval",
        "--data",
        data,
        "--model",
        path.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["accuracy"], last["test_accuracy"]);
    assert!(stdout.contains("\"seven\""), "{stdout}");
}

/// Colour images of two sizes: refused without --image-size, naming the odd one; resized with
/// it, they train like the reference.
#[test]
fn colour_images_of_mixed_sizes_are_resized_and_train_like_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(5);
    for (split, count) in [("train", 24), ("test", 6)] {
        for i in 0..count {
            let class = ["red", "blue", "green"][i % 3];
            let folder = dir.path().join(split).join(class);
            std::fs::create_dir_all(&folder).unwrap();
            let side = if i == 5 { 12 } else { 10 };
            let image = image::RgbImage::from_fn(side, side, |_, _| {
                let mut pixel = [rng.below(80) as u8; 3];
                pixel[i % 3] = 150 + rng.below(100) as u8;
                image::Rgb(pixel)
            });
            // One of each ten a JPEG: both formats are read.
            let extension = if i % 10 == 7 { "jpg" } else { "png" };
            image.save(folder.join(format!("{i}.{extension}"))).unwrap();
        }
    }
    let error = folder::load(dir.path(), Split::Train, FolderOptions::default(), None)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("5.png is 12×12") && error.contains("--image-size"),
        "{error}"
    );
    let options = FolderOptions {
        size: Some((8, 8)),
        channels: None,
    };
    let train = folder::load(dir.path(), Split::Train, options, None)
        .unwrap()
        .data;
    assert_eq!(train.shape, Shape::image(3, 8, 8));
    assert_eq!(train.samples(), 24, "the JPEGs among them");
    let spec = ModelSpec {
        input: train.shape,
        layers: parse_layers("conv4k3p1,gap,dense3", Activation::Relu).unwrap(),
        loss: Loss::Xent,
        standardisation: None,
    };
    let config = TrainConfig {
        batch_size: 10,
        learning_rate: 0.01,
        epochs: 2,
        ..TrainConfig::default()
    };
    assert_trains_epochs_like_the_reference("colour folder", kernels(), &spec, &config, &train, 2);
}

#[test]
fn bad_folders_are_refused_with_the_file_or_folder_named() {
    let (dir, _) = mnist_folder();
    let data = dir.path().to_str().unwrap();
    let train = |extra: &[&str]| {
        let args = [
            &[
                "train",
                "--dataset",
                "folder",
                "--data",
                data,
                "--max-steps",
                "1",
            ],
            extra,
        ]
        .concat();
        shadertrain(&args)
    };
    let garbage = dir.path().join("train/seven/broken.png");
    std::fs::write(&garbage, b"not a png").unwrap();
    let (code, _, stderr) = train(&[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("broken.png does not decode"), "{stderr}");
    std::fs::remove_file(&garbage).unwrap();

    let empty = dir.path().join("train/ten");
    std::fs::create_dir_all(&empty).unwrap();
    let (code, _, stderr) = train(&[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("ten holds no PNG or JPEG file"), "{stderr}");
    std::fs::remove_dir(&empty).unwrap();

    // Without test/, the test set is held out of train/ when asked, and said so.
    std::fs::rename(dir.path().join("test"), dir.path().join("elsewhere")).unwrap();
    let (code, _, stderr) = train(&[]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("no test/ folder") && stderr.contains("--validation-split"),
        "{stderr}"
    );
    let checkpoints = dir.path().join("checkpoints");
    let checkpoints = checkpoints.to_str().unwrap();
    let (code, stdout, stderr) =
        train(&["--validation-split", "0.2", "--checkpoint-dir", checkpoints]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("the last 0.2 of each class of train/ (60 images"),
        "{stdout}"
    );
    // Resumed from the checkpoint alone, the same test set is held out again.
    let (code, stdout, stderr) =
        shadertrain(&["train", "--resume", checkpoints, "--max-steps", "2"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("resumed from") && stdout.contains("(60 images"),
        "{stdout}"
    );
}
