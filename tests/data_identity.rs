//! Data is known by its content: a model or checkpoint records the MD5 of each file it read;
//! files are named after a published dataset only when they are its files; a model is not
//! evaluated on other data unless asked to.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{mnist_dir, small_mnist};
use shadertrain::data::DatasetKind;
use shadertrain::model_file::load_model;

fn shadertrain(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shadertrain"))
        .args(args)
        .env_remove("SHADERTRAIN_DATA")
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn train(data: &Path, model: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--offline",
        "--data",
        data.to_str().unwrap(),
        "--hidden",
        "8",
        "--save",
        model.to_str().unwrap(),
    ];
    args.extend(extra);
    shadertrain(&args)
}

#[test]
fn files_are_named_by_their_content_not_by_the_flag() {
    let mnist = mnist_dir();
    let work = tempfile::tempdir().unwrap();
    let model = work.path().join("mnist.safetensors");
    let output = train(&mnist, &model, &["--max-steps", "1"]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("data: mnist from"),
        "{}",
        text(&output)
    );
    let saved = load_model(&model).unwrap();
    assert_eq!(saved.data.dataset, Some(DatasetKind::Mnist));
    assert_eq!(saved.data.md5.len(), 4, "{:?}", saved.data.md5);

    // MNIST's files are not Fashion-MNIST, whatever --dataset says.
    let output = train(
        &mnist,
        &model,
        &["--max-steps", "1", "--dataset", "fashion-mnist"],
    );
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let said = text(&output);
    assert!(
        said.contains("these files are mnist") && said.contains("--dataset says fashion-mnist"),
        "{said}"
    );

    // Part of MNIST is MNIST no more: custom data, with MNIST's class names.
    let part = small_mnist(200, 50);
    let custom = work.path().join("custom.safetensors");
    let output = train(part.path(), &custom, &["--epochs", "1"]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("data: custom from"),
        "{}",
        text(&output)
    );
    let saved = load_model(&custom).unwrap();
    assert_eq!(
        (saved.data.name(), saved.data.labels),
        ("custom", DatasetKind::Mnist)
    );
}

#[test]
fn eval_and_predict_refuse_other_data_unless_allowed() {
    let part = small_mnist(200, 50);
    let work = tempfile::tempdir().unwrap();
    let model = work.path().join("model.safetensors");
    let output = train(part.path(), &model, &["--epochs", "1"]);
    assert!(output.status.success(), "{}", text(&output));
    let model = model.to_str().unwrap();
    let mnist = mnist_dir();
    let mnist = mnist.to_str().unwrap();

    let eval = |data: &str, extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--offline",
            "--json",
            "--model",
            model,
            "--data",
            data,
        ];
        args.extend(extra);
        shadertrain(&args)
    };
    let output = eval(mnist, &[]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let said = text(&output);
    assert!(
        said.contains("test files are mnist")
            && said.contains("was trained on custom data")
            && said.contains("--allow-other-data"),
        "{said}"
    );
    let output = eval(mnist, &["--allow-other-data"]);
    assert!(output.status.success(), "{}", text(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        (report["dataset"].as_str(), report["samples"].as_u64()),
        (Some("mnist"), Some(10_000))
    );
    let output = eval(part.path().to_str().unwrap(), &[]);
    assert!(output.status.success(), "{}", text(&output));
    // eval reads the test pair alone: a folder without the training files will do.
    let test_only = tempfile::tempdir().unwrap();
    for stem in ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"] {
        std::fs::copy(part.path().join(stem), test_only.path().join(stem)).unwrap();
    }
    let output = eval(test_only.path().to_str().unwrap(), &[]);
    assert!(output.status.success(), "{}", text(&output));

    // Other custom data (different test files) is other data too.
    let other = small_mnist(200, 40);
    let output = eval(other.path().to_str().unwrap(), &[]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output).contains("test files are custom data"),
        "{}",
        text(&output)
    );

    let output = shadertrain(&[
        "predict",
        "--offline",
        "--model",
        model,
        "--data",
        mnist,
        "--index",
        "0",
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output).contains("--allow-other-data"),
        "{}",
        text(&output)
    );
}
