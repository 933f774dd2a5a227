//! Training on the real MNIST files (from $SHADERTRAIN_DATA, else data/mnist).

mod common;

use common::{gpu, kernels, mnist_dir};
use shadertrain::data::{DataIdentity, Dataset, DatasetKind, Split, locate};
use shadertrain::model::ModelSpec;
use shadertrain::reference;
use shadertrain::train::{EpochMetrics, TrainConfig, Trainer};

/// A trainer for the reference model on the shared device.
fn reference_trainer(config: TrainConfig, train: &Dataset, test: &Dataset) -> Trainer<'static> {
    Trainer::new(
        gpu(),
        kernels(),
        ModelSpec::reference(),
        config,
        train,
        test,
    )
    .unwrap()
}

/// One epoch with Keras' default `fit` batch size (32). With the reference batch of 128, one
/// epoch lands at 95.6-96.0 % here and 95.7-96.3 % in PyTorch over seeds (see the README), too
/// close to 96 % for a test; the ten-epoch reference run is measured by `shadertrain train`.
#[test]
fn one_epoch_on_full_mnist_reaches_96_percent() {
    let dir = mnist_dir();
    let train = Dataset::load_mnist(&dir, Split::Train).unwrap();
    let test = Dataset::load_mnist(&dir, Split::Test).unwrap();
    assert_eq!((train.samples(), test.samples()), (60_000, 10_000));
    let config = TrainConfig {
        batch_size: 32,
        ..TrainConfig::default()
    };
    let mut trainer = reference_trainer(config, &train, &test);
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
        let mut trainer = reference_trainer(config, &train, &test);
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

#[test]
fn test_metrics_equal_a_cpu_evaluation_of_the_trained_parameters() {
    let dir = mnist_dir();
    let train = Dataset::load_mnist(&dir, Split::Train)
        .unwrap()
        .truncated(3000);
    let test = Dataset::load_mnist(&dir, Split::Test).unwrap();
    let spec = ModelSpec::reference();
    let mut trainer = Trainer::new(
        gpu(),
        kernels(),
        spec.clone(),
        TrainConfig::default(),
        &train,
        &test,
    )
    .unwrap();
    let m = trainer.run_epoch().unwrap();
    let params = trainer.parameters().unwrap();
    let order: Vec<u32> = (0..test.samples() as u32).collect();
    let (x, y) = reference::gather_batch(&test, &order, 0, test.samples());
    let logits = shadertrain::model::reference::forward(&spec, &params, &x)
        .pop()
        .unwrap();
    let expected = reference::softmax_loss(spec.loss, 0.0, &logits, &y, spec.classes());
    let correct: u32 = expected.sample_correct.iter().sum();
    let loss: f64 =
        expected.sample_loss.iter().map(|&l| l as f64).sum::<f64>() / test.samples() as f64;
    assert!(
        (m.test_accuracy - correct as f64 / test.samples() as f64).abs() <= 2e-4,
        "{m:?} vs {correct} correct"
    );
    assert!(
        (m.test_loss - loss).abs() <= 1e-4 * loss,
        "{m:?} vs loss {loss}"
    );
}

/// Runs where Debian's `dataset-fashion-mnist` (or data/fashion-mnist/) is present; CI installs
/// the package, so there a missing dataset fails the test.
#[test]
fn one_epoch_on_fashion_mnist_reaches_80_percent() {
    let Some(dir) = locate(DatasetKind::FashionMnist, None) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install dataset-fashion-mnist"
        );
        eprintln!("Fashion-MNIST not installed: not tested here");
        return;
    };
    let train = Dataset::load_mnist(&dir, Split::Train).unwrap();
    let test = Dataset::load_mnist(&dir, Split::Test).unwrap();
    let mut trainer = reference_trainer(TrainConfig::default(), &train, &test);
    let m = trainer.run_epoch().unwrap();
    println!("{m:?}");
    assert!(
        m.test_accuracy >= 0.80,
        "Fashion-MNIST after one epoch: {m:?}"
    );
}

/// Test images drawn into PNG/JPEG files (enlarged, half of them dark-on-light) are classified
/// as their labels by `predict`, through the MNIST-style preprocessing.
#[test]
fn predict_reads_rendered_test_images_as_their_labels() {
    let dir = mnist_dir();
    let out = tempfile::tempdir().unwrap();
    let (model, params, test) = one_epoch_model(&dir, DatasetKind::Mnist, out.path());

    // Samples the model itself gets right with confidence: the check is about the images.
    let confident = confident_samples(&params, &test, 50, 3.0, 6);

    let mut files = Vec::new();
    for (n, &i) in confident.iter().enumerate() {
        let pixels = test.pixels[i * 784..(i + 1) * 784].to_vec();
        let small = image::GrayImage::from_raw(28, 28, pixels).unwrap();
        let mut big =
            image::imageops::resize(&small, 112, 112, image::imageops::FilterType::Triangle);
        if n % 2 == 1 {
            image::imageops::invert(&mut big);
        }
        let path = out
            .path()
            .join(format!("digit{n}.{}", if n == 5 { "jpg" } else { "png" }));
        big.save(&path).unwrap();
        files.push(path.to_str().unwrap().to_string());
    }
    // The format is read from the content, not the name; transparency is composited so that
    // strokes of either colour survive.
    let mut expected: Vec<usize> = confident.clone();
    for (n, &i) in confident.iter().take(4).enumerate() {
        let ink = &test.pixels[i * 784..(i + 1) * 784];
        let small = image::GrayImage::from_raw(28, 28, ink.to_vec()).unwrap();
        let big = image::imageops::resize(&small, 84, 84, image::imageops::FilterType::Triangle);
        let (name, picture): (&str, image::DynamicImage) = match n {
            0 => ("png-named.jpg", big.into()),
            1 => ("no-extension", big.into()),
            // A stroke of one colour whose shape is all in its opacity.
            _ => {
                let stroke = if n == 2 { 0 } else { 255 };
                let rgba = image::RgbaImage::from_fn(84, 84, |x, y| {
                    image::Rgba([stroke, stroke, stroke, big.get_pixel(x, y)[0]])
                });
                (
                    if n == 2 {
                        "black-on-transparent.png"
                    } else {
                        "white-on-transparent.png"
                    },
                    rgba.into(),
                )
            }
        };
        let path = out.path().join(name);
        picture
            .save_with_format(&path, image::ImageFormat::Png)
            .unwrap();
        files.push(path.to_str().unwrap().to_string());
        expected.push(i);
    }
    let mut args = vec!["--json"];
    args.extend(files.iter().map(String::as_str));
    let report = predict_report(&model, &args);
    for (n, &i) in expected.iter().enumerate() {
        assert_eq!(
            report[n]["top"][0]["class"], test.labels[i] as u64,
            "{} (test image {i}): {}",
            files[n], report[n]
        );
    }

    // One unreadable file among several is reported and the rest classified, with a non-zero
    // exit at the end; blank and tiny images are warned about, not classified.
    let not_an_image = out.path().join("notes.png");
    std::fs::write(&not_an_image, "not a picture").unwrap();
    let blank = out.path().join("blank.png");
    image::GrayImage::from_pixel(28, 28, image::Luma([255]))
        .save(&blank)
        .unwrap();
    let tiny = out.path().join("tiny.png");
    image::GrayImage::from_pixel(1, 1, image::Luma([100]))
        .save(&tiny)
        .unwrap();
    let predict = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_shadertrain"))
            .args(["predict", "--model", model.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    };
    let output = predict(&[
        &files[0],
        not_an_image.to_str().unwrap(),
        blank.to_str().unwrap(),
        tiny.to_str().unwrap(),
        &files[1],
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: image") && stderr.contains("notes.png: not a readable"),
        "{stderr}"
    );
    assert!(
        stderr.contains("warning: image") && stderr.contains("blank.png: no digit found"),
        "{stderr}"
    );
    assert!(
        stderr.contains("tiny.png: 1×1 pixels is too small"),
        "{stderr}"
    );
    assert!(
        stderr.contains("1 of 5 images could not be read"),
        "{stderr}"
    );
    let classified: Vec<&str> = stdout.lines().collect();
    assert_eq!(classified.len(), 2, "{stdout}");
    // A single file that cannot be read is not "1 of 1, the others classified".
    let output = predict(&[not_an_image.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: the image could not be read") && !stderr.contains("others"),
        "{stderr}"
    );
    assert!(classified[0].starts_with(&files[0]) && classified[1].starts_with(&files[1]));

    // MNIST's own images, written as 28×28 PNG files, come through the preprocessing as they
    // are: classified from the files as from the test set (the same model either way).
    let (agree, count) = (
        files_agreeing_with_indices(&model, &dir, &test, out.path()),
        1000,
    );
    assert!(
        agree * 1000 >= count * 995,
        "predict agrees on {agree} of {count} test images written as files"
    );
}

/// Of the first 1000 test images written as 28×28 PNG files into `out`, how many `predict`
/// classifies from the files as it does from the test set (`--index`).
fn files_agreeing_with_indices(
    model: &std::path::Path,
    data: &std::path::Path,
    test: &Dataset,
    out: &std::path::Path,
) -> usize {
    let count = 1000;
    let mut paths = Vec::new();
    for i in 0..count {
        let path = out.join(format!("test{i}.png"));
        image::GrayImage::from_raw(28, 28, test.pixels[i * 784..(i + 1) * 784].to_vec())
            .unwrap()
            .save(&path)
            .unwrap();
        paths.push(path.to_str().unwrap().to_string());
    }
    let indices: Vec<String> = (0..count).map(|i| i.to_string()).collect();
    let mut by_index = vec!["--json", "--offline", "--data", data.to_str().unwrap()];
    by_index.extend(indices.iter().flat_map(|i| ["--index", i.as_str()]));
    let mut by_file = vec!["--json"];
    by_file.extend(paths.iter().map(String::as_str));
    let [from_files, from_indices] = [by_file, by_index].map(|args| top_classes(model, &args));
    (0..count)
        .filter(|&i| from_files[i] == from_indices[i])
        .count()
}

/// `predict --model MODEL ARGS...` (with --json): each input's top class.
fn top_classes(model: &std::path::Path, args: &[&str]) -> Vec<u64> {
    let report = predict_report(model, args);
    (report.as_array().unwrap().iter())
        .map(|entry| entry["top"][0]["class"].as_u64().unwrap())
        .collect()
}

/// A Fashion-MNIST model's pictures are prepared as Fashion-MNIST's were (not as digits): its
/// own test images as files agree with `--index`, and items photographed larger, on white and
/// off-centre are trimmed, resized and centred back into what the model knows.
#[test]
fn predict_prepares_pictures_for_a_fashion_model_as_fashion_mnist_made_them() {
    let Some(dir) = locate(DatasetKind::FashionMnist, None) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install dataset-fashion-mnist"
        );
        eprintln!("Fashion-MNIST not installed: not tested here");
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let (model, params, test) = one_epoch_model(&dir, DatasetKind::FashionMnist, out.path());

    let agree = files_agreeing_with_indices(&model, &dir, &test, out.path());
    assert!(
        agree * 1000 >= 1000 * 995,
        "predict agrees on {agree} of 1000 Fashion-MNIST test images written as files"
    );

    // Items the model is sure of, drawn three times larger, dark on white, in a wider picture
    // with the item off-centre: the class stays.
    let confident = confident_samples(&params, &test, 200, 4.0, 8);
    let mut files = Vec::new();
    for &i in &confident {
        let item = image::GrayImage::from_raw(28, 28, test.pixels[i * 784..(i + 1) * 784].to_vec())
            .unwrap();
        let big = image::imageops::resize(&item, 84, 84, image::imageops::FilterType::Triangle);
        let photo = image::GrayImage::from_fn(150, 110, |px, py| {
            let inside = (30..114).contains(&px) && (10..94).contains(&py);
            let ink = if inside {
                big.get_pixel(px - 30, py - 10)[0]
            } else {
                0
            };
            image::Luma([255 - ink])
        });
        let path = out.path().join(format!("item{i}.png"));
        photo.save(&path).unwrap();
        files.push(path.to_str().unwrap().to_string());
    }
    let mut args = vec!["--json"];
    args.extend(files.iter().map(String::as_str));
    let classes = top_classes(&model, &args);
    let right = confident
        .iter()
        .zip(&classes)
        .filter(|&(&i, &class)| class == test.labels[i] as u64)
        .count();
    assert!(
        right >= 7,
        "{right} of 8 photographed items keep their class: {classes:?}"
    );
}

/// `count` of the first `among` test samples that the reference model with `params` classifies
/// right with a logit margin over `margin`: checks on them are about the images, not the model.
fn confident_samples(
    params: &[f32],
    test: &Dataset,
    among: usize,
    margin: f32,
    count: usize,
) -> Vec<usize> {
    let order: Vec<u32> = (0..among as u32).collect();
    let (x, y) = reference::gather_batch(test, &order, 0, among);
    let logits = shadertrain::model::reference::forward(&ModelSpec::reference(), params, &x)
        .pop()
        .unwrap();
    let confident: Vec<usize> = (0..among)
        .filter(|&i| {
            let row = &logits[i * 10..(i + 1) * 10];
            let best = (0..10).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
            let second = (0..10)
                .filter(|&c| c != best)
                .map(|c| row[c])
                .fold(f32::MIN, f32::max);
            best as u32 == y[i] && row[best] - second > margin
        })
        .take(count)
        .collect();
    assert_eq!(confident.len(), count);
    confident
}

/// The reference MLP trained one epoch on 10,000 of the dataset's training samples in `dir`,
/// saved into `out` as a model of `kind`: its path, its parameters, and the test set.
fn one_epoch_model(
    dir: &std::path::Path,
    kind: DatasetKind,
    out: &std::path::Path,
) -> (std::path::PathBuf, Vec<f32>, Dataset) {
    let train = Dataset::load_mnist(dir, Split::Train)
        .unwrap()
        .truncated(10_000);
    let test = Dataset::load_mnist(dir, Split::Test).unwrap();
    let mut trainer = reference_trainer(TrainConfig::default(), &train, &test.truncated(100));
    trainer.run_epoch().unwrap();
    let params = trainer.parameters().unwrap();
    let model = out.join(format!("{}.safetensors", kind.name()));
    shadertrain::model_file::save_model(
        &model,
        &ModelSpec::reference(),
        &params,
        &DataIdentity::published(kind),
        0,
    )
    .unwrap();
    (model, params, test)
}

/// What `predict --model MODEL ARGS...` prints (ARGS with --json), which must succeed.
fn predict_report(model: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_shadertrain"))
        .args(["predict", "--model", model.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}
