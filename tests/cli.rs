//! The command line: adapters listing, flag errors and data errors exit cleanly with messages.

mod common;

use std::process::Command;

use common::shadertrain;

#[test]
fn adapters_lists_and_marks_the_chosen_one() {
    let (code, stdout, _) = shadertrain(&["adapters"]);
    assert_eq!(code, 0);
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with('*')).count(),
        1,
        "{stdout}"
    );
}

/// Mesa complains on stderr when XDG_RUNTIME_DIR is unset; the program gives it one.
#[test]
fn the_terminal_stays_clean_without_xdg_runtime_dir() {
    let output = Command::new(env!("CARGO_BIN_EXE_shadertrain"))
        .arg("adapters")
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn an_adapter_filter_matching_nothing_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().to_str().unwrap();
    // The data check comes first, so give it files it can read.
    for (name, bytes) in [
        ("train-images-idx3-ubyte", images()),
        ("train-labels-idx1-ubyte", labels()),
        ("t10k-images-idx3-ubyte", images()),
        ("t10k-labels-idx1-ubyte", labels()),
    ] {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    // Adapters exist here: the message lists them rather than suggesting a driver.
    for args in [
        &["train", "--data", fake, "--adapter", "no-such-gpu-anywhere"][..],
        &["adapters", "--adapter", "no-such-gpu-anywhere"],
    ] {
        let (code, _, stderr) = shadertrain(args);
        assert_eq!(code, 1, "{args:?}");
        assert!(
            stderr.contains("\"no-such-gpu-anywhere\" (--adapter)")
                && stderr.contains("llvmpipe")
                && !stderr.contains("mesa-vulkan-drivers"),
            "{args:?}: {stderr}"
        );
    }
}

fn images() -> Vec<u8> {
    shadertrain::data::idx::encode_idx_u8(&[2, 2, 2], &[0; 8])
}

fn labels() -> Vec<u8> {
    shadertrain::data::idx::encode_idx_u8(&[2], &[1, 2])
}

#[test]
fn missing_data_names_the_folder_and_the_flag() {
    let (code, _, stderr) = shadertrain(&["train", "--offline", "--data", "/nonexistent/mnist"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("/nonexistent/mnist")
            && stderr.contains("--data")
            && stderr.contains("--offline"),
        "{stderr}"
    );
}

#[test]
fn offline_without_data_says_where_to_put_the_files() {
    let cwd = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_shadertrain"))
        .args(["train", "--offline", "--dataset", "mnist"])
        .current_dir(cwd.path())
        .env_remove("SHADERTRAIN_DATA")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("data/mnist: the folder does not exist")
            && stderr.contains("train-images-idx3-ubyte"),
        "{stderr}"
    );
    // A folder holding some of the files is told which are missing.
    std::fs::create_dir_all(cwd.path().join("data/mnist")).unwrap();
    std::fs::write(
        cwd.path().join("data/mnist/t10k-images-idx3-ubyte"),
        images(),
    )
    .unwrap();
    std::fs::write(
        cwd.path().join("data/mnist/t10k-labels-idx1-ubyte"),
        labels(),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_shadertrain"))
        .args(["train", "--offline"])
        .current_dir(cwd.path())
        .env_remove("SHADERTRAIN_DATA")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "the folder lacks train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz]"
        ),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("data/mnist").count(),
        2,
        "said once, and where to put them: {stderr}"
    );
}

/// Out-of-range values are refused with the flag and the value, before anything is printed
/// about the run (negative numbers are values, not flags).
#[test]
fn bad_values_are_refused_before_the_run_is_described() {
    let dir = tempfile::tempdir().unwrap();
    write_small_mnist(dir.path(), 20);
    let data = dir.path().to_str().unwrap();
    for (flag, value, expected) in [
        ("--lr", "-1", "--lr must be a positive number, got -1"),
        (
            "--validation-split",
            "1.5",
            "--validation-split must be at least 0 and below 1",
        ),
    ] {
        let (code, stdout, stderr) =
            shadertrain(&["train", "--offline", "--data", data, flag, value]);
        assert_eq!(code, 1, "{flag} {value}: {stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(stdout.is_empty(), "{flag} {value}: {stdout}");
    }
}

/// `bench` takes only the flags it uses: it times one epoch, whatever --epochs would say.
#[test]
fn bench_has_no_epochs_flag_and_refuses_a_step_limit_at_once() {
    let (_, stdout, _) = shadertrain(&["bench", "--help"]);
    assert!(
        stdout.contains("--batch-size") && !stdout.contains("--epochs"),
        "{stdout}"
    );
    let (code, _, stderr) = shadertrain(&["bench", "--epochs", "3"]);
    assert_eq!(code, 2, "{stderr}");
    // Refused before any data is looked for or any adapter opened, saying what bench takes.
    let (code, stdout, stderr) = shadertrain(&[
        "bench",
        "--max-steps",
        "20",
        "--data",
        "/nonexistent/mnist",
        "--offline",
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("--max-steps 20")
            && stderr.contains("225 here")
            && stderr.contains("--steps")
            && !stderr.contains("/nonexistent")
            && stdout.is_empty(),
        "{stdout}{stderr}"
    );
    let (_, stdout, _) = shadertrain(&["download", "--help"]);
    assert!(stdout.contains("Which dataset to fetch"), "{stdout}");
}

#[test]
fn bad_flags_are_usage_errors() {
    for args in [
        &["train", "--hidden", "256,x"][..],
        &["train", "--activation", "swish"],
        &["train", "--loss", "hinge"],
        &["train", "--backend", "glide"],
        &["train", "--epochs", "0"],
        &["train", "--max-steps", "0"],
        &["train", "--optimizer", "lamb"],
        &["train", "--lr-schedule", "linear"],
        &["train", "--augment", "crop2,rotate"],
        &["train", "--augment", "crop0"],
        &["train", "--image-size", "32"],
        &["train", "--channels", "2"],
        &["train", "--nesterov", "maybe"],
    ] {
        let (code, _, stderr) = shadertrain(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains("error"), "{args:?}: {stderr}");
    }
    let (_, _, stderr) = shadertrain(&["train", "--augment", "crop2,rotate"]);
    assert!(
        stderr.contains("\"rotate\" is not an augmentation"),
        "{stderr}"
    );
}

/// Each bad `--layers` list is a usage error that quotes the bad token and says why; a list
/// that parses but does not fit the data's shape is refused before training, naming the layer
/// and the shapes.
#[test]
fn bad_layer_lists_are_refused_naming_the_layer() {
    let parse_errors = [
        (
            "conv32k3,maxpool,flatten,dense10",
            "layer 2 (\"maxpool\")",
            "needs a size",
        ),
        (
            "conv32k3,flatten,dense10x",
            "layer 3 (\"dense10x\")",
            "\"x\"",
        ),
        (
            "conv0k3,flatten,dense10",
            "layer 1 (\"conv0k3\")",
            "at least 1",
        ),
        ("dropout1.5,flatten,dense10", "\"dropout1.5\"", "below 1"),
        (
            "conv8k3:swish,flatten,dense10",
            "\"conv8k3:swish\"",
            "unknown activation",
        ),
        ("conv8k3,,dense10", "layer 2 (\"\")", "not a layer"),
        ("lstm32,dense10", "layer 1 (\"lstm32\")", "not a layer"),
    ];
    for (layers, token, why) in parse_errors {
        let (code, _, stderr) = shadertrain(&["train", "--offline", "--layers", layers]);
        assert_eq!(code, 2, "{layers}: {stderr}");
        assert!(
            stderr.contains("--layers") && stderr.contains(token) && stderr.contains(why),
            "{layers}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }

    let dir = tempfile::tempdir().unwrap();
    write_small_mnist(dir.path(), 20);
    let data = dir.path().to_str().unwrap();
    let shape_errors = [
        (
            "maxpool40,flatten,dense10",
            "layer 1 (maxpool40)",
            "40×40 pool is larger than its input, 1×28×28",
        ),
        (
            "conv8k3,dense10",
            "layer 2 (dense10:linear)",
            "its input is 8×26×26",
        ),
        ("conv8k3,flatten", "last layer is flatten", "dense layer"),
    ];
    for (layers, layer, shapes) in shape_errors {
        let (code, stdout, stderr) =
            shadertrain(&["train", "--offline", "--data", data, "--layers", layers]);
        assert_eq!(code, 1, "{layers}: {stderr}");
        assert!(
            stderr.contains(layer) && stderr.contains(shapes),
            "{layers}: {stderr}"
        );
        assert!(
            !stdout.contains("epoch"),
            "refused before training: {stdout}"
        );
    }
}

/// A saved convnet, or residual network with BatchNorm, carries its layer list: `eval` and
/// `predict` need no model flag.
#[test]
fn a_saved_convnet_or_resnet_evaluates_and_predicts_without_flags() {
    let dir = tempfile::tempdir().unwrap();
    write_small_mnist(dir.path(), 150);
    let data = dir.path().to_str().unwrap();
    let model = dir.path().join("convnet.safetensors");
    let model = model.to_str().unwrap();
    for (layers, described) in [
        (
            "conv4k3,maxpool2,conv8k3s2same,flatten,dropout0.25,dense10",
            "conv4k3:relu,maxpool2,conv8k3s2same:relu,flatten,dropout0.25,dense10:linear",
        ),
        (
            "conv4k3s2p1:nobias,bn,relu,res(conv4k3p1:nobias,bn,relu,conv4k3p1:nobias,bn),relu,gap,dense10",
            "conv4k3s2p1:linear:nobias,bn,relu,res(conv4k3p1:linear:nobias,bn,relu,conv4k3p1:linear:nobias,bn),relu,gap,dense10:linear",
        ),
    ] {
        a_saved_model_evaluates_and_predicts(data, model, layers, described);
    }
}

/// Runs `command` (eval, predict, explain) on the saved `model` with the data in `data`, offline,
/// and `args`.
fn on_model(
    command: &str,
    data: &str,
    model: &std::path::Path,
    args: &[&str],
) -> (i32, String, String) {
    let model = model.to_str().unwrap();
    let fixed = [command, "--offline", "--data", data, "--model", model];
    shadertrain(&[&fixed[..], args].concat())
}

/// Trains `layers` on the MNIST-format folder `data` for `epochs` and saves the model to `model`.
fn train_and_save(data: &str, layers: &str, epochs: &str, model: &str) {
    let (code, stdout, stderr) = shadertrain(&[
        "train",
        "--offline",
        "--data",
        data,
        "--layers",
        layers,
        "--epochs",
        epochs,
        "--save",
        model,
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
}

fn a_saved_model_evaluates_and_predicts(data: &str, model: &str, layers: &str, described: &str) {
    train_and_save(data, layers, "1", model);
    let (code, stdout, stderr) = shadertrain(&[
        "eval",
        "--offline",
        "--data",
        data,
        "--model",
        model,
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(report["accuracy"].is_number(), "{report}");
    let (code, stdout, stderr) = shadertrain(&[
        "predict",
        "--offline",
        "--data",
        data,
        "--model",
        model,
        "--index",
        "3",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let predictions: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(predictions.as_array().unwrap().len(), 1, "{predictions}");
    let saved = shadertrain::model_file::load_model(std::path::Path::new(model)).unwrap();
    assert_eq!(saved.spec.describe(), described);
}

#[test]
fn help_explains_the_train_flags() {
    let (code, stdout, _) = shadertrain(&["train", "--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--data",
        "--epochs",
        "--batch-size",
        "--lr",
        "--seed",
        "--hidden",
        "--activation",
        "--loss",
        "--optimizer",
        "--backend",
        "--adapter",
        "--model",
        "--layers",
        "--validation-split",
    ] {
        assert!(stdout.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn selftest_passes_on_this_adapter() {
    let (code, stdout, stderr) = shadertrain(&["selftest"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok ")).count(),
        shadertrain::selftest::CHECKS.len(),
        "{stdout}"
    );
    assert!(stdout.contains("selftest passed"), "{stdout}");
    // In words, not Rust debug text.
    for debug_text in ["Hidden(", "Identity", "e0 ", "Packed", "Xent", "Mse"] {
        assert!(!stdout.contains(debug_text), "{debug_text}: {stdout}");
    }
    assert!(
        stdout.contains("bit-exact") && stdout.contains("through tanh"),
        "{stdout}"
    );
}

/// A small MNIST-shaped dataset on disk: `samples` random 28×28 images per split.
fn write_small_mnist(dir: &std::path::Path, samples: usize) {
    let mut rng = shadertrain::rng::Rng::new(3);
    for (images, labels) in [
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    ] {
        let pixels: Vec<u8> = (0..samples * 784).map(|_| rng.below(256) as u8).collect();
        let classes: Vec<u8> = (0..samples).map(|_| rng.below(10) as u8).collect();
        let encode = shadertrain::data::idx::encode_idx_u8;
        std::fs::write(dir.join(images), encode(&[samples, 28, 28], &pixels)).unwrap();
        std::fs::write(dir.join(labels), encode(&[samples], &classes)).unwrap();
    }
}

#[test]
fn bench_reports_counts_within_budget_as_json() {
    let dir = tempfile::tempdir().unwrap();
    write_small_mnist(dir.path(), 1000);
    let data = dir.path().to_str().unwrap();
    let (code, stdout, stderr) = shadertrain(&[
        "bench",
        "--json",
        "--offline",
        "--data",
        data,
        "--steps",
        "2",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&stdout).expect("bench --json prints one JSON object");
    let steps = 1000usize.div_ceil(128);
    assert_eq!(report["readbacks_per_epoch"], 1, "{report}");
    assert!(
        report["submits_per_epoch"].as_u64().unwrap() as usize <= steps.div_ceil(32) + 2,
        "{report}"
    );
    assert_eq!(report["matmuls"].as_array().unwrap().len(), 8, "{report}");
    for key in [
        "fma_peak_gflops",
        "step_gflops",
        "ms_per_step",
        "epoch_s",
        "first_step_done_s",
    ] {
        assert!(report[key].as_f64().unwrap() > 0.0, "{key}: {report}");
    }
}

#[test]
fn bench_reports_the_form_each_convolution_product_takes() {
    let dir = tempfile::tempdir().unwrap();
    write_small_mnist(dir.path(), 300);
    let data = dir.path().to_str().unwrap();
    let layers = "conv4k3,maxpool2,conv8k3,flatten,dense10";
    let (code, stdout, stderr) = shadertrain(&[
        "bench",
        "--json",
        "--offline",
        "--data",
        data,
        "--layers",
        layers,
        "--steps",
        "1",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let matmuls = report["matmuls"].as_array().unwrap();
    let form = |name: &str| {
        let m = matmuls.iter().find(|m| m["name"] == name).expect(name);
        (
            m["form"].as_str().unwrap().to_string(),
            m["direct_gflops"].as_f64(),
        )
    };
    // On lavapipe the second convolution's input gradient (4 channels, 8 filters) runs straight
    // from its output's gradient, and is timed so; its forward product stays a product.
    let (input_grad, direct) = form("conv 1 input grad");
    assert_eq!(input_grad, "direct", "{report}");
    assert!(direct.unwrap() > 0.0, "{report}");
    assert_eq!(form("conv 1 forward"), ("product".to_string(), None));
}

#[test]
fn train_saves_a_model_and_a_metrics_log_that_agree() {
    let dir = tempfile::tempdir().unwrap();
    write_small_mnist(dir.path(), 300);
    let data = dir.path().to_str().unwrap();
    let model = dir.path().join("out.safetensors");
    let metrics = dir.path().join("metrics.jsonl");
    let (code, stdout, stderr) = shadertrain(&[
        "train",
        "--offline",
        "--data",
        data,
        "--epochs",
        "2",
        "--hidden",
        "32",
        "--save",
        model.to_str().unwrap(),
        "--metrics",
        metrics.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["epoch"], 2);
    for key in [
        "train_loss",
        "train_accuracy",
        "test_loss",
        "test_accuracy",
        "seconds",
        "timestamp_unix_s",
    ] {
        assert!(lines[1][key].is_number(), "{key}: {}", lines[1]);
    }

    // The saved weights, evaluated on the CPU, give the test figures the run reported.
    let saved = shadertrain::model_file::load_model(&model).unwrap();
    assert_eq!(saved.spec.describe(), "flatten,dense32:relu,dense10:linear");
    let test =
        shadertrain::data::Dataset::load_mnist(dir.path(), shadertrain::data::Split::Test).unwrap();
    let order: Vec<u32> = (0..test.samples() as u32).collect();
    let (x, y) = shadertrain::reference::gather_batch(&test, &order, 0, test.samples());
    let logits = shadertrain::model::reference::forward(&saved.spec, &saved.params, &x)
        .pop()
        .unwrap();
    let result = shadertrain::reference::softmax_loss(saved.spec.loss, 0.0, &logits, &y, 10);
    let accuracy = result.sample_correct.iter().sum::<u32>() as f64 / test.samples() as f64;
    let loss = result.sample_loss.iter().map(|&l| l as f64).sum::<f64>() / test.samples() as f64;
    assert!(
        (lines[1]["test_accuracy"].as_f64().unwrap() - accuracy).abs() < 1e-9,
        "{} vs {accuracy}",
        lines[1]
    );
    assert!(
        (lines[1]["test_loss"].as_f64().unwrap() - loss).abs() < 1e-4 * loss,
        "{} vs {loss}",
        lines[1]
    );

    // `eval` on the saved file, with no other flag about the model, reports the same figures.
    let (code, stdout, stderr) = shadertrain(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data,
        "--offline",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(
        (report["accuracy"].as_f64().unwrap() - accuracy).abs() < 1e-9,
        "{report}"
    );
    let matrix: Vec<Vec<u64>> = serde_json::from_value(report["confusion_matrix"].clone()).unwrap();
    assert_eq!(matrix.iter().flatten().sum::<u64>(), test.samples() as u64);
    let diagonal: u64 = (0..10).map(|c| matrix[c][c]).sum();
    assert_eq!(diagonal, result.sample_correct.iter().sum::<u32>() as u64);
    let (code, _, stderr) = shadertrain(&[
        "eval",
        "--model",
        metrics.to_str().unwrap(),
        "--data",
        data,
        "--offline",
    ]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("metrics.jsonl") && stderr.contains("safetensors"),
        "{stderr}"
    );
}

#[test]
fn an_unwritable_save_path_fails_before_training() {
    let (code, _, stderr) = shadertrain(&[
        "train",
        "--offline",
        "--save",
        "/nonexistent-folder/model.safetensors",
    ]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("--save") && stderr.contains("/nonexistent-folder"),
        "{stderr}"
    );
}

#[test]
fn init_starts_from_a_saved_model_and_refuses_other_shapes() {
    let dir = tempfile::tempdir().unwrap();
    write_small_mnist(dir.path(), 200);
    let data = dir.path().to_str().unwrap();
    let first = dir.path().join("first.safetensors");
    let second = dir.path().join("second.safetensors");
    let train = |extra: &[&str]| {
        let mut args = vec!["train", "--offline", "--data", data, "--hidden", "16"];
        args.extend_from_slice(extra);
        shadertrain(&args)
    };
    let (code, _, stderr) = train(&["--epochs", "1", "--save", first.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    // One gradient-descent step too small to move any weight: the saved weights are exactly
    // those it started from.
    let (code, stdout, stderr) = train(&[
        "--max-steps",
        "1",
        "--optimizer",
        "sgd",
        "--lr",
        "1e-38",
        "--init",
        first.to_str().unwrap(),
        "--save",
        second.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("initialised from"), "{stdout}");
    let load = shadertrain::model_file::load_model;
    assert_eq!(load(&first).unwrap().params, load(&second).unwrap().params);

    let (code, _, stderr) = shadertrain(&[
        "train",
        "--offline",
        "--data",
        data,
        "--hidden",
        "8",
        "--init",
        first.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("--init") && stderr.contains("dense16") && stderr.contains("dense8"),
        "{stderr}"
    );
}

#[test]
fn plot_draws_png_and_svg_from_a_metrics_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("metrics.jsonl");
    let lines: Vec<String> = (1..=4)
        .map(|e| {
            let e = e as f64;
            serde_json::json!({"epoch": e, "train_loss": 1.0 / e, "test_loss": 1.2 / e,
                "train_accuracy": 0.8 + 0.04 * e, "test_accuracy": 0.78 + 0.04 * e})
            .to_string()
        })
        .collect();
    let svg = dir.path().join("curves.svg");
    let png = dir.path().join("curves.png");
    // `records` as the log, drawn both ways: the SVG's text and the PNG's pixels.
    let draw = |records: &[String]| {
        std::fs::write(&log, records.join("\n")).unwrap();
        for out in [&svg, &png] {
            let (code, _, stderr) =
                shadertrain(&["plot", log.to_str().unwrap(), "-o", out.to_str().unwrap()]);
            assert_eq!(code, 0, "{stderr}");
        }
        let text = std::fs::read_to_string(&svg).unwrap();
        (text, image::open(&png).unwrap().to_rgb8())
    };
    let (text, picture) = draw(&lines);
    assert_eq!(
        text.matches("<polyline").count(),
        4,
        "train and test, loss and accuracy"
    );
    for label in ["Loss", "Accuracy", "epoch", "train", "test"] {
        assert!(text.contains(&format!(">{label}<")), "no {label} label");
    }
    assert_eq!(picture.dimensions(), (960, 400));
    let has = |r: u8, g: u8, b: u8| picture.pixels().any(|p| p.0 == [r, g, b]);
    assert!(
        has(0x1f, 0x77, 0xb4) && has(0xd6, 0x27, 0x28),
        "both curves are drawn"
    );

    // A run with `--validation-split` logs val_loss and val_accuracy: a third curve per panel.
    let validated: Vec<String> = (1..=3)
        .map(|e| {
            let e = e as f64;
            serde_json::json!({"epoch": e, "train_loss": 1.0 / e, "test_loss": 1.2 / e,
                "val_loss": 1.1 / e, "val_accuracy": 0.79 + 0.04 * e,
                "train_accuracy": 0.8 + 0.04 * e, "test_accuracy": 0.78 + 0.04 * e})
            .to_string()
        })
        .collect();
    let (text, picture) = draw(&validated);
    assert_eq!(text.matches("<polyline").count(), 6);
    assert!(text.contains(">validation<"), "no validation label");
    assert!(
        picture.pixels().any(|p| p.0 == [0x2c, 0xa0, 0x2c]),
        "the validation curves are drawn"
    );

    // Two runs appended to one log (--metrics appends): the last is drawn, and that is said.
    std::fs::write(&log, [lines.join("\n"), validated.join("\n")].join("\n")).unwrap();
    let (code, stdout, stderr) =
        shadertrain(&["plot", log.to_str().unwrap(), "-o", svg.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("holds 2 runs") && stdout.contains("drawing the last, epochs 1 to 3"),
        "{stdout}"
    );
    let text = std::fs::read_to_string(&svg).unwrap();
    assert_eq!(
        text.matches("<polyline").count(),
        6,
        "the validated run alone"
    );

    // A run whose learning rate changed (a schedule) gets a third panel with the rate.
    let scheduled: Vec<String> = (1..=3)
        .map(|e| {
            let e = e as f64;
            serde_json::json!({"epoch": e, "train_loss": 1.0 / e, "test_loss": 1.2 / e,
                "train_accuracy": 0.8 + 0.04 * e, "test_accuracy": 0.78 + 0.04 * e,
                "learning_rate": 0.1 / e})
            .to_string()
        })
        .collect();
    let (text, picture) = draw(&scheduled);
    assert_eq!(text.matches("<polyline").count(), 5);
    assert!(text.contains(">Learning rate (last step)<"), "{text}");
    assert_eq!(picture.dimensions(), (1440, 400));
    assert!(
        picture.pixels().any(|p| p.0 == [0x94, 0x67, 0xbd]),
        "the rate is drawn"
    );

    std::fs::write(&log, "{\"epoch\": 1}\n").unwrap();
    let (code, _, stderr) =
        shadertrain(&["plot", log.to_str().unwrap(), "-o", svg.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with("error: metrics log ")
            && stderr.contains("metrics.jsonl: line 1: no number \"train_loss\""),
        "{stderr}"
    );
    std::fs::write(&log, "").unwrap();
    let (code, _, stderr) =
        shadertrain(&["plot", log.to_str().unwrap(), "-o", svg.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("metrics.jsonl: no epoch with finite figures in it")
            && !stderr.contains(":0"),
        "{stderr}"
    );
    let (code, _, stderr) = shadertrain(&["plot", log.to_str().unwrap(), "-o", "curves.gif"]);
    assert_eq!(code, 1);
    assert!(stderr.contains(".png or .svg"), "{stderr}");
}

/// `shadertrain train | head -1`: when the reader of stdout is gone, the program ends as Unix
/// tools do (by SIGPIPE, silently), not with a panic about a broken pipe.
#[test]
fn a_closed_stdout_pipe_ends_the_program_quietly() {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::process::ExitStatusExt;
    let data = tempfile::tempdir().unwrap();
    write_small_mnist(data.path(), 256);
    // A pipe whose reader has already gone: the program's first line meets it closed.
    let mut ends = [0; 2];
    // SAFETY: pipe fills two descriptors, which are owned from here on.
    assert_eq!(unsafe { libc::pipe(ends.as_mut_ptr()) }, 0);
    let (reader, writer) =
        unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
    drop(reader);
    let output = Command::new(env!("CARGO_BIN_EXE_shadertrain"))
        .args([
            "train",
            "--offline",
            "--hidden",
            "8",
            "--epochs",
            "1",
            "--data",
        ])
        .arg(data.path())
        .env_remove("SHADERTRAIN_DATA")
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        output.status
    );
    assert!(stderr.is_empty(), "{stderr}");
}

/// `--hidden` is the MLP's option: taken with `--model mlp`, refused with the convnet (before
/// the data is looked for) with a message that says why.
#[test]
fn the_mlp_takes_hidden_and_the_convnet_refuses_it() {
    let data = tempfile::tempdir().unwrap();
    write_small_mnist(data.path(), 64);
    let dir = data.path().to_str().unwrap();
    let (code, stdout, stderr) = shadertrain(&[
        "train",
        "--offline",
        "--data",
        dir,
        "--model",
        "mlp",
        "--hidden",
        "12",
        "--max-steps",
        "1",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("dense12:relu"), "{stdout}");
    let (code, stdout, stderr) = shadertrain(&[
        "train",
        "--offline",
        "--data",
        "/nonexistent/mnist",
        "--model",
        "convnet",
        "--hidden",
        "12",
    ]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("--hidden 12 sets the MLP's widths")
            && stderr.contains("--model convnet")
            && !stderr.contains("/nonexistent"),
        "{stderr}"
    );
}

/// What the adapter cannot hold is refused before anything is allocated, in the user's terms:
/// the layer, the batch, the limit, and what would fit. A batch larger than the training set is
/// the whole set.
#[test]
fn limits_are_checked_before_allocating_and_said_in_the_users_terms() {
    let data = tempfile::tempdir().unwrap();
    write_small_mnist(data.path(), 256);
    let dir = data.path().to_str().unwrap();
    let train = |extra: &[&str]| {
        let mut args = vec!["train", "--offline", "--data", dir];
        args.extend(extra);
        shadertrain(&args)
    };
    let (code, stdout, stderr) =
        train(&["--hidden", "8", "--batch-size", "100000", "--epochs", "1"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("    1 "), "one epoch of one step: {stdout}");

    let started = std::time::Instant::now();
    // Sizes beyond any adapter's single buffer (Vulkan's are at most 4 GiB).
    let (code, stdout, stderr) = train(&["--layers", "flatten,dense3000000,dense10"]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("parameters")
            && stderr.contains("layer 2 (dense3000000:relu)")
            && stderr.contains("in one buffer (max_"),
        "{stderr}"
    );
    assert!(!stdout.contains("epoch"), "{stdout}");
    // Refused before the 9 GB of initial weights were drawn on the host (that took seconds).
    assert!(started.elapsed() < std::time::Duration::from_secs(20));

    let (code, _, stderr) = train(&[
        "--layers",
        "conv1024k3same,conv1024k3same,flatten,dense10",
        "--batch-size",
        "256",
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("--batch-size: layer 2 (conv1024k3same:relu)'s patch matrix")
            && stderr.contains("for a batch of 256")
            && stderr.contains("or less"),
        "{stderr}"
    );
}

/// Messages in the user's words: a half-precision --init file is named as such, a checkpoint
/// evaluates like a model, adapters and backends by their names, one sample is one sample, and
/// no Rust debug text (`Backends(METAL)`; selftest's is checked with it).
#[test]
fn messages_name_things_as_users_do() {
    let dir = tempfile::tempdir().unwrap();
    write_small_mnist(dir.path(), 64);
    let data = dir.path().to_str().unwrap();

    // A PyTorch file of half-precision tensors, under the linear classifier's names.
    let half = dir.path().join("half.safetensors");
    let zeros = |n: usize| vec![0u8; 2 * n];
    let (weight, bias) = (zeros(10 * 784), zeros(10));
    let tensors = [
        ("layers.0.weight", vec![10, 784], &weight),
        ("layers.0.bias", vec![10], &bias),
    ]
    .map(|(name, shape, bytes)| {
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F16, shape, bytes);
        (name, view.unwrap())
    });
    std::fs::write(&half, safetensors::serialize(tensors, None).unwrap()).unwrap();
    let (code, _, stderr) = shadertrain(&[
        "train",
        "--offline",
        "--data",
        data,
        "--hidden",
        "none",
        "--init",
        half.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("layers.0.weight holds F16 values; shadertrain reads F32")
            && !stderr.contains("too few"),
        "{stderr}"
    );

    // One sample held out is said as one; a checkpoint evaluates, saying it is one.
    let checkpoints = dir.path().join("checkpoints");
    let (code, stdout, stderr) = shadertrain(&[
        "train",
        "--offline",
        "--data",
        data,
        "--hidden",
        "8",
        "--validation-split",
        "0.01",
        "--max-steps",
        "1",
        "--checkpoint-dir",
        checkpoints.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("validation: the last training sample (--validation-split 0.01)"),
        "{stdout}"
    );
    let checkpoint = shadertrain::checkpoint::path_for(&checkpoints, 1);
    let (code, stdout, stderr) = shadertrain(&[
        "eval",
        "--offline",
        "--data",
        data,
        "--model",
        checkpoint.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("is a training checkpoint; using its weights after step 1")
            && stdout.contains("test loss"),
        "{stdout}{stderr}"
    );

    let (code, stdout, _) = shadertrain(&["adapters"]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains(" CPU ") && !stdout.contains("Cpu"),
        "{stdout}"
    );
    // No Metal on Linux: the backends tried are named, not printed as a Rust value.
    let (code, _, stderr) = shadertrain(&["adapters", "--backend", "metal"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("backends tried: Metal") && !stderr.contains("Backends("),
        "{stderr}"
    );
}

/// A preset's layers are its own, but the loss is the flag's, as for the convnet.
#[test]
fn the_resnet_presets_take_the_loss_flag() {
    let dir = tempfile::tempdir().unwrap();
    write_small_mnist(dir.path(), 150);
    let data = dir.path().to_str().unwrap();
    let (code, stdout, stderr) = shadertrain(&[
        "train",
        "--offline",
        "--data",
        data,
        "--model",
        "resnet8",
        "--loss",
        "mse",
        "--max-steps",
        "1",
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    // MSE takes no label smoothing: the recipe's other defaults stay.
    assert!(
        stdout.contains(
            "(77754 parameters), loss mse, optimizer sgd (lr 0.1, Nesterov momentum 0.9, \
             weight decay 0.0005; cosine schedule, 1 warm-up epoch)"
        ),
        "{stdout}"
    );
}

/// The ResNet presets train with He et al.'s CIFAR recipe unless told otherwise; another
/// optimizer takes its own defaults, not SGD's.
#[test]
fn the_resnet_presets_default_to_their_recipe() {
    let dir = tempfile::tempdir().unwrap();
    write_small_mnist(dir.path(), 150);
    let data = dir.path().to_str().unwrap();
    let train = |extra: &[&str]| {
        let args = [
            &["train", "--offline", "--data", data, "--model", "resnet8"],
            extra,
            &["--max-steps", "1"],
        ]
        .concat();
        let (code, stdout, stderr) = shadertrain(&args);
        assert_eq!(code, 0, "{stdout}{stderr}");
        stdout
    };
    let stdout = train(&[]);
    for expected in [
        "loss xent (label smoothing 0.1), optimizer sgd (lr 0.1, Nesterov momentum 0.9, weight \
         decay 0.0005; cosine schedule, 1 warm-up epoch), batch 128",
        "test_acc         lr",
        "1×28×28 standardised (mean 0.4995, std 0.2893) (77754 parameters)",
        "augmentation: crop2 (",
    ] {
        assert!(stdout.contains(expected), "{expected}: {stdout}");
    }
    let stdout = train(&["--optimizer", "adam", "--label-smoothing", "0"]);
    assert!(
        stdout.contains("loss xent, optimizer adam (lr 0.001; cosine schedule, 1 warm-up epoch)"),
        "{stdout}"
    );
    let stdout = train(&["--nesterov", "false", "--lr-schedule", "constant"]);
    assert!(
        stdout
            .contains("optimizer sgd (lr 0.1, momentum 0.9, weight decay 0.0005; 1 warm-up epoch)"),
        "{stdout}"
    );
}

/// A standardised model carries its statistics: `eval` (on the GPU) gives the test accuracy the
/// training run logged, `predict` (on the CPU) the classes the GPU's evaluation of the same
/// images gives, and the file names the statistics for other programs.
#[test]
fn a_standardised_model_evaluates_and_predicts_as_it_trained() {
    let dir = tempfile::tempdir().unwrap();
    write_small_mnist(dir.path(), 300);
    let data = dir.path().to_str().unwrap();
    let model = dir.path().join("standardised.safetensors");
    let log = dir.path().join("metrics.jsonl");
    let (code, stdout, stderr) = shadertrain(&[
        "train",
        "--offline",
        "--data",
        data,
        "--layers",
        "conv4k3,maxpool2,flatten,dense10",
        "--normalize",
        "--epochs",
        "2",
        "--save",
        model.to_str().unwrap(),
        "--metrics",
        log.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let last = common::last_metrics_record(&log);
    let (code, stdout, stderr) = shadertrain(&[
        "eval",
        "--offline",
        "--data",
        data,
        "--model",
        model.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["accuracy"], last["test_accuracy"], "{report}");

    let saved = shadertrain::model_file::load_model(&model).unwrap();
    let standardisation = saved
        .spec
        .standardisation
        .clone()
        .expect("saved with the model");
    let split = shadertrain::data::Split::Train;
    let train = shadertrain::data::Dataset::load_mnist(dir.path(), split).unwrap();
    let sum: f64 = train.pixels.iter().map(|&p| p as f64 / 255.0).sum();
    let mean = sum / train.pixels.len() as f64;
    let error = (standardisation.mean[0] as f64 - mean).abs();
    assert!(error < 1e-6, "{standardisation:?} against {mean}");
    let bytes = std::fs::read(&model).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let metadata = header.metadata().clone().unwrap();
    assert_eq!(
        metadata["input_mean"],
        standardisation.mean[0].to_string(),
        "{metadata:?}"
    );
    assert!(metadata["input_normalisation"].contains("Normalize(mean, std)"));
    // The GPU's evaluation of ten test images, against predict's.
    let test = shadertrain::data::Dataset::load_mnist(dir.path(), shadertrain::data::Split::Test)
        .unwrap()
        .truncated(10);
    let gpu = common::gpu();
    let kernels = common::kernels();
    let evaluator =
        shadertrain::train::Trainer::for_evaluation(gpu, kernels, saved.spec.clone(), &test)
            .unwrap();
    evaluator.set_parameters(&saved.params).unwrap();
    let expected = evaluator.evaluate().unwrap().predictions;
    for (index, &class) in expected.iter().enumerate() {
        let (code, stdout, stderr) = shadertrain(&[
            "predict",
            "--offline",
            "--data",
            data,
            "--model",
            model.to_str().unwrap(),
            "--index",
            &index.to_string(),
            "--json",
        ]);
        assert_eq!(code, 0, "{stderr}");
        let predictions: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(predictions[0]["top"][0]["class"], class, "{predictions}");
    }
}

/// `--dataset cifar10` reads the binary batches from the folder holding
/// `cifar-10-batches-bin/`; the ResNet preset takes its colour images with its recipe (crops
/// and flips); eval names CIFAR's classes; predict takes a test image by index and as a PNG
/// file (resized to the model's input), with the same answer.
#[test]
fn cifar_batches_train_and_evaluate_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    common::write_cifar_batches(&dir.path().join("cifar-10-batches-bin"), 10, 12);
    let data = dir.path().to_str().unwrap();
    let model = dir.path().join("cifar.safetensors");
    let (code, stdout, stderr) = shadertrain(&[
        "train",
        "--offline",
        "--dataset",
        "cifar10",
        "--data",
        data,
        "--model",
        "resnet8",
        "--max-steps",
        "1",
        "--save",
        model.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    for expected in [
        "(50 training, 12 test samples; classes airplane, automobile, bird, cat",
        "on 3×32×32 standardised (mean ",
        "augmentation: crop2,flip (",
    ] {
        assert!(stdout.contains(expected), "{expected}: {stdout}");
    }
    let (code, stdout, stderr) = shadertrain(&[
        "eval",
        "--offline",
        "--data",
        data,
        "--model",
        model.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("truck"), "{stdout}");
    let predict = |what: &[&str]| {
        let args = [what, &["--json"]].concat();
        let (code, stdout, stderr) = on_model("predict", data, &model, &args);
        assert_eq!(code, 0, "{stderr}");
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        report[0]["top"].clone()
    };
    let by_index = predict(&["--index", "0"]);
    // Test image 0, its planes made an RGB picture, twice the size: resized back to 32×32.
    let test = std::fs::read(dir.path().join("cifar-10-batches-bin/test_batch.bin")).unwrap();
    let picture = image::RgbImage::from_fn(64, 64, |x, y| {
        let at = |c: u32| test[1 + (c * 1024 + (y / 2) * 32 + x / 2) as usize];
        image::Rgb([at(0), at(1), at(2)])
    });
    let png = dir.path().join("picture.png");
    picture.save(&png).unwrap();
    let by_file = predict(&[png.to_str().unwrap()]);
    assert_eq!(
        by_file[0]["class"], by_index[0]["class"],
        "{by_file} {by_index}"
    );
    assert!(by_index[0]["name"].is_string());
    // The worst test images drawn in colour.
    let grid = dir.path().join("worst.png");
    let (code, _, stderr) = shadertrain(&[
        "eval",
        "--offline",
        "--data",
        data,
        "--model",
        model.to_str().unwrap(),
        "--worst",
        "4",
        "-o",
        grid.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let drawn = image::open(&grid).unwrap().to_rgb8();
    let coloured = drawn
        .pixels()
        .filter(|p| p.0[0] != p.0[1] || p.0[1] != p.0[2]);
    assert!(coloured.count() > 1000, "the images are drawn in colour");

    // Explained by Grad-CAM (the ResNet's default), standardised as it trained: a test image's
    // 32×32 map is the CPU reference's; a picture (resized to the input) is explained too.
    let explain = |what: &[&str]| {
        let (code, stdout, stderr) = on_model("explain", data, &model, what);
        assert_eq!(code, 0, "{stderr}");
        stdout
    };
    let map_of = |stdout: &str| -> Vec<f32> {
        let report: serde_json::Value = serde_json::from_str(stdout).unwrap();
        assert_eq!(report[0]["method"], "gradcam");
        let rows = report[0]["map"].as_array().unwrap();
        assert_eq!(rows.len(), 32);
        (rows.iter().flat_map(|row| row.as_array().unwrap().iter()))
            .map(|v| v.as_f64().unwrap() as f32)
            .collect()
    };
    let by_index = map_of(&explain(&["--index", "0", "--json"]));
    let by_file = map_of(&explain(&[png.to_str().unwrap(), "--json"]));
    assert!(by_file.iter().all(|&v| v >= 0.0) && by_file.iter().any(|&v| v > 0.0));
    let saved = shadertrain::model_file::load_model(&model).unwrap();
    let pixels: Vec<u8> = (0..1024)
        .flat_map(|p| [0, 1, 2].map(|c| test[1 + c * 1024 + p]))
        .collect();
    let x = shadertrain::input::scale_pixels(&pixels, 3, saved.spec.standardisation.as_ref());
    let plan = saved.spec.plan().unwrap();
    let feature = shadertrain::explain::grad_cam_feature(&plan).unwrap();
    let logits = shadertrain::model::reference::forward(&saved.spec, &saved.params, &x)
        .pop()
        .unwrap();
    let class = (0..10)
        .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
        .unwrap();
    let (values, grads) = shadertrain::model::reference::class_score_gradients(
        &saved.spec,
        &saved.params,
        &x,
        &[class],
    );
    let shape = plan.tensors[feature].shape;
    let expected = shadertrain::explain::grad_cam_map(
        &values[feature],
        &grads[feature],
        shape,
        saved.spec.input,
    );
    let compared = shadertrain::reference::compare(&by_index, &expected, 1e-5, 1e-3);
    assert!(compared.is_ok(), "{compared:?}");
    let picture = dir.path().join("explained.png");
    explain(&["--index", "0", "-o", picture.to_str().unwrap()]);
    let drawn = image::open(&picture).unwrap().to_rgb8();
    assert_eq!(drawn.width(), 3 * 162 + 12);
    // The first cell is the test image itself, in colour, scaled 4×.
    let first = |x: u32, y: u32| drawn.get_pixel(12 + 4 * x + 2, 12 + 4 * y + 2).0;
    for (x, y) in [(0, 0), (5, 9), (31, 31)] {
        let p = (y * 32 + x) as usize;
        assert_eq!(
            first(x, y),
            [0, 1, 2].map(|c| test[1 + c * 1024 + p]),
            "({x}, {y})"
        );
    }
}

/// `eval --worst K` lists exactly the K test samples of highest loss (the CPU reference's
/// losses, ranked), and `-o` draws them as a grid of K captioned cells; a K beyond the test set,
/// an output that cannot be written or is neither PNG nor SVG are refused before any work.
#[test]
fn eval_lists_and_draws_the_worst_test_images() {
    let dir = tempfile::tempdir().unwrap();
    write_small_mnist(dir.path(), 120);
    let data = dir.path().to_str().unwrap();
    let model = dir.path().join("model.safetensors");
    let model = model.to_str().unwrap();
    let (code, stdout, stderr) = shadertrain(&[
        "train",
        "--offline",
        "--data",
        data,
        "--hidden",
        "16",
        "--epochs",
        "2",
        "--save",
        model,
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let svg = dir.path().join("worst.svg");
    let (code, stdout, stderr) = shadertrain(&[
        "eval",
        "--offline",
        "--data",
        data,
        "--model",
        model,
        "--worst",
        "7",
        "--json",
        "-o",
        svg.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let listed: Vec<usize> = (report["worst"].as_array().unwrap().iter())
        .map(|w| w["index"].as_u64().unwrap() as usize)
        .collect();

    let saved = shadertrain::model_file::load_model(std::path::Path::new(model)).unwrap();
    let test =
        shadertrain::data::Dataset::load_mnist(dir.path(), shadertrain::data::Split::Test).unwrap();
    let order: Vec<u32> = (0..test.samples() as u32).collect();
    let (x, y) = shadertrain::reference::gather_batch(&test, &order, 0, test.samples());
    let logits = shadertrain::model::reference::forward(&saved.spec, &saved.params, &x)
        .pop()
        .unwrap();
    let losses =
        shadertrain::reference::softmax_loss(saved.spec.loss, 0.0, &logits, &y, 10).sample_loss;
    let mut ranked: Vec<usize> = (0..test.samples()).collect();
    ranked.sort_by(|&a, &b| losses[b].total_cmp(&losses[a]));
    assert_eq!(listed, ranked[..7], "the seven highest losses");
    for (w, &i) in report["worst"].as_array().unwrap().iter().zip(&ranked) {
        let loss = w["loss"].as_f64().unwrap();
        assert!(
            (loss - losses[i] as f64).abs() < 1e-4,
            "{w} against {}",
            losses[i]
        );
        assert_eq!(w["true"], test.labels[i]);
    }
    let picture = std::fs::read_to_string(&svg).unwrap();
    assert_eq!(picture.matches(r#"<g class="cell""#).count(), 7);
    assert!(
        picture.contains(&format!("#{} true: ", ranked[0])),
        "captions"
    );

    let png = dir.path().join("worst.png");
    let (code, _, stderr) = shadertrain(&[
        "eval",
        "--offline",
        "--data",
        data,
        "--model",
        model,
        "--worst",
        "3",
        "-o",
        png.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(image::open(&png).unwrap().width(), 3 * 162 + 12);

    for (args, expected) in [
        (
            &["--worst", "121"][..],
            "--worst 121: the custom test set has 120 samples",
        ),
        (
            &["--worst", "3", "-o", "worst.jpg"],
            "give a .png or .svg file name",
        ),
        (&["--worst", "3", "-o", data], "-o"),
    ] {
        let all = [
            &["eval", "--offline", "--data", data, "--model", model][..],
            args,
        ]
        .concat();
        let (code, _, stderr) = shadertrain(&all);
        assert_eq!(code, 1, "{args:?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let (code, _, _) = shadertrain(&["eval", "--model", model, "-o", "worst.png"]);
    assert_eq!(code, 2, "-o needs --worst");
}

/// `explain`'s maps are the CPU reference's (saliency and Grad-CAM through the command line),
/// for the predicted class or `--class`; `-o` draws each input beside its map and the map over
/// it; what cannot be explained is refused before any work, naming the flag or file.
#[test]
fn explain_lists_and_draws_the_maps_the_reference_computes() {
    use shadertrain::explain::{grad_cam_feature, grad_cam_map, saliency_map};
    use shadertrain::model::reference::class_score_gradients;
    let dir = tempfile::tempdir().unwrap();
    write_small_mnist(dir.path(), 120);
    let data = dir.path().to_str().unwrap();
    let test =
        shadertrain::data::Dataset::load_mnist(dir.path(), shadertrain::data::Split::Test).unwrap();
    let mut models = Vec::new();
    for (name, layers) in [
        ("mlp", "flatten,dense16:relu,dense10"),
        (
            "convnet",
            "conv4k3:relu,maxpool2,conv4k3:relu,flatten,dense10",
        ),
    ] {
        let model = dir.path().join(format!("{name}.safetensors"));
        train_and_save(data, layers, "2", model.to_str().unwrap());
        models.push(model);
    }
    let explain = |model: &std::path::Path, args: &[&str]| on_model("explain", data, model, args);
    let indices = [0usize, 7];
    for (model, method) in [(&models[0], "saliency"), (&models[1], "gradcam")] {
        let saved = shadertrain::model_file::load_model(model).unwrap();
        let x: Vec<f32> = (indices.iter())
            .flat_map(|&i| test.pixels[i * 784..(i + 1) * 784].iter())
            .map(|&p| p as f32 / 255.0)
            .collect();
        for class in [None, Some(3)] {
            let mut args = vec!["--index", "0", "--index", "7", "--method", method, "--json"];
            let text = class.map(|c: usize| c.to_string());
            if let Some(text) = &text {
                args.extend(["--class", text.as_str()]);
            }
            let (code, stdout, stderr) = explain(model, &args);
            assert_eq!(code, 0, "{stderr}");
            let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
            let logits = shadertrain::model::reference::forward(&saved.spec, &saved.params, &x)
                .pop()
                .unwrap();
            let expected_classes: Vec<usize> = match class {
                Some(c) => vec![c; 2],
                None => (logits.chunks(10))
                    .map(|row| (0..10).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap())
                    .collect(),
            };
            let (activations, grads) =
                class_score_gradients(&saved.spec, &saved.params, &x, &expected_classes);
            let plan = saved.spec.plan().unwrap();
            for (i, entry) in report.as_array().unwrap().iter().enumerate() {
                assert_eq!(entry["class"], expected_classes[i], "{method} {entry}");
                assert_eq!(entry["method"], method);
                assert_eq!(entry["top"].as_array().unwrap().len(), 3);
                let rows = entry["map"].as_array().unwrap();
                assert_eq!(rows.len(), 28);
                let map: Vec<f32> = (rows.iter())
                    .flat_map(|row| row.as_array().unwrap().iter())
                    .map(|v| v.as_f64().unwrap() as f32)
                    .collect();
                assert!(map.iter().all(|&v| v >= 0.0));
                let expected = match method {
                    "saliency" => saliency_map(&grads[0][i * 784..(i + 1) * 784], saved.spec.input),
                    _ => {
                        let t = grad_cam_feature(&plan).unwrap();
                        let shape = plan.tensors[t].shape;
                        let at = i * shape.len()..(i + 1) * shape.len();
                        let (a, g) = (&activations[t][at.clone()], &grads[t][at]);
                        grad_cam_map(a, g, shape, saved.spec.input)
                    }
                };
                let error = shadertrain::reference::compare(&map, &expected, 1e-5, 1e-3);
                assert!(error.is_ok(), "{method} map {i}: {error:?}");
            }
        }
    }

    // The default picture: a row per input of its image, its map and the map over it.
    let png = dir.path().join("explained.png");
    let (code, stdout, stderr) = explain(
        &models[0],
        &["--index", "0", "--index", "7", "-o", png.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.matches("integrated of").count(), 2, "{stdout}");
    let picture = image::open(&png).unwrap();
    assert_eq!(
        (picture.width(), picture.height()),
        (3 * 162 + 12, 2 * 160 + 12)
    );
    let svg = dir.path().join("explained.svg");
    let (code, _, stderr) = explain(&models[1], &["--index", "3", "-o", svg.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert_eq!(svg.matches(r#"<g class="cell""#).count(), 3);
    assert!(svg.contains("integrated of"), "the convnet's default");

    let not_an_image = dir.path().join("notes.png");
    std::fs::write(&not_an_image, "not a picture").unwrap();
    let missing = dir.path().join("missing.safetensors");
    let unwritable = format!("{}/no/such/dir/out.png", data);
    for (model, args, expected) in [
        (
            &models[0],
            vec!["--index", "0", "--method", "gradcam"],
            "no convolutions",
        ),
        (
            &models[0],
            vec!["--index", "0", "--class", "10"],
            "--class 10",
        ),
        (&models[0], vec!["--index", "120"], "--index 120"),
        (&models[0], vec!["--index", "0", "-o", &unwritable], "-o"),
        (
            &models[0],
            vec!["--index", "0", "-o", "map.jpg"],
            "give a .png or .svg",
        ),
        (
            &models[0],
            vec![not_an_image.to_str().unwrap()],
            "notes.png",
        ),
        (&models[0], vec![], "give image files, or --index N"),
        (&missing, vec!["--index", "0"], "missing.safetensors"),
        (
            &models[0],
            vec!["--index", "0", "--method", "guess"],
            "saliency, integrated, gradcam",
        ),
    ] {
        let (code, stdout, stderr) = explain(model, &args);
        assert_ne!(code, 0, "{args:?}: {stdout}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// Each BatchNorm's `num_batches_tracked` in a saved model counts the training batches it
/// normalised, as PyTorch's does: the steps of the run, plus the count of the file `--init`
/// started it from, carried through a checkpoint and a resume.
#[test]
fn saved_batchnorms_count_their_training_batches() {
    let dir = tempfile::tempdir().unwrap();
    write_small_mnist(dir.path(), 150);
    let data = dir.path().to_str().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let counted = |model: &str| {
        let bytes = std::fs::read(model).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let counters = [
            "layers.1.num_batches_tracked",
            "layers.3.num_batches_tracked",
        ];
        counters.map(|name| {
            let view = file.tensor(name).unwrap();
            assert_eq!(view.dtype(), safetensors::Dtype::I64, "{name}");
            i64::from_le_bytes(view.data().try_into().unwrap())
        })
    };
    let train = |extra: &[&str]| {
        let fixed = [
            "train",
            "--offline",
            "--data",
            data,
            "--layers",
            "conv4k3s2p1:nobias,bn:relu,flatten,dense8,bn,dense10",
            "--batch-size",
            "16",
        ];
        let (code, stdout, stderr) = shadertrain(&[&fixed[..], extra].concat());
        assert_eq!(code, 0, "{stdout}{stderr}");
    };
    let (first, second) = (path("first"), path("second"));
    train(&["--max-steps", "3", "--save", &first]);
    assert_eq!(counted(&first), [3, 3]);
    // 150 samples: 10 steps an epoch, so a run's count is its steps however it is cut.
    let checkpoints = path("checkpoints");
    train(&[
        "--init",
        &first,
        "--max-steps",
        "4",
        "--checkpoint-dir",
        &checkpoints,
        "--save",
        &second,
    ]);
    assert_eq!(counted(&second), [7, 7]);
    // The resumed run saves where the first part did.
    train(&["--resume", &checkpoints, "--max-steps", "6"]);
    assert_eq!(counted(&second), [9, 9]);
}
