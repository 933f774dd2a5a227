//! The web page trains as the command line does: `shadertrain web` builds the page, a headless
//! Chromium opens it (WebGPU on SwiftShader, Chromium's CPU Vulkan driver), the page fetches a
//! small MNIST from the same local server, trains, and logs its last epoch's figures and the
//! SHA-256 of the model file it would download; the command line, trained natively on the same
//! SwiftShader driver with the same flags, must write the same bytes and figures, and
//! `shadertrain eval` must find the page's accuracy in that file. Needs `chromium`, the wasm32
//! target and wasm-bindgen-cli (.ci/run installs them).

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use shadertrain::data::{Dataset, Split, cifar, folder};

const CHROMIUM: &str = "chromium";
/// Chromium's own SwiftShader Vulkan driver: what its WebGPU runs on without a GPU.
const SWIFTSHADER_ICD: &str = "/usr/lib/chromium/vk_swiftshader_icd.json";
const STEMS: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// A child started in a process group of its own, the whole group killed when the test ends,
/// however it ends: Chromium leaves its renderer and GPU processes behind otherwise.
struct KillOnDrop(Child);

impl KillOnDrop {
    fn spawn(command: &mut Command) -> std::io::Result<KillOnDrop> {
        command.process_group(0).spawn().map(KillOnDrop)
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill only sends a signal, to the group this test started.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

fn shadertrain() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shadertrain"))
}

/// Builds the page into `site` and serves it; the server and its URL.
fn serve_page(site: &Path) -> (KillOnDrop, String) {
    let built = shadertrain()
        .args(["web", "--no-serve", "--out"])
        .arg(site)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "shadertrain web could not build the page (needs `rustup target add \
         wasm32-unknown-unknown` and `cargo install wasm-bindgen-cli --version 0.2.130`):\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let mut server = KillOnDrop::spawn(
        shadertrain()
            .args(["web", "--no-build", "--port", "0", "--out"])
            .arg(site)
            .stdout(Stdio::piped()),
    )
    .unwrap();
    let mut line = String::new();
    BufReader::new(server.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|word| word.starts_with("http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("no URL in the server's first line: {line:?}"))
        .to_string();
    (server, url)
}

/// Opens `url` in a headless Chromium and returns the JSON of the page's `shadertrain-result`
/// console line.
fn page_result(url: &str, profile: &Path) -> serde_json::Value {
    let mut browser = KillOnDrop::spawn(
        Command::new(CHROMIUM)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--enable-unsafe-webgpu",
                "--enable-logging=stderr",
                "--v=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )
    .unwrap_or_else(|e| panic!("could not start {CHROMIUM} (apt-get install chromium): {e}"));
    let stderr = browser.0.stderr.take().unwrap();
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    loop {
        match lines.recv_timeout(Duration::from_secs(300)) {
            Ok(line) => {
                if let Some(at) = line.find("shadertrain-result ") {
                    let json = &line[at + "shadertrain-result ".len()..];
                    // Chromium quotes the console message: `"shadertrain-result {...}", source: …`.
                    let json = json
                        .rsplit_once("\", source:")
                        .map_or(json, |(json, _)| json);
                    return serde_json::from_str(json)
                        .unwrap_or_else(|e| panic!("the page's result {json:?}: {e}"));
                }
                seen.push(line);
            }
            Err(_) => panic!(
                "the page gave no result; Chromium said:\n{}",
                seen[seen.len().saturating_sub(40)..].join("\n")
            ),
        }
    }
}

/// Runs the program natively on SwiftShader: its stdout, or a panic with its output.
fn on_swiftshader(args: &[&str]) -> String {
    let output = shadertrain()
        .args(args)
        .env("VK_ICD_FILENAMES", SWIFTSHADER_ICD)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{args:?}: {stdout}{stderr}");
    stdout
}

/// A run of the page, to be compared with the same run of the command line.
struct PageRun<'a> {
    preset: &'a str,
    epochs: usize,
    /// The data files the page fetches from the served `data/`, by their path there.
    files: Vec<String>,
    /// What the command line needs besides: `--dataset cifar10`.
    dataset: &'a [&'a str],
    /// Whether the page also classifies the first test image as a drawing (grey data only).
    drawing: bool,
    /// The test accuracy the run must pass: trained, not merely equal.
    min_accuracy: f64,
    /// Whether the page also fine-tunes its file loaded back for one more epoch, which `train
    /// --init` must do alike.
    finetune: bool,
}

/// Trains in the page and on the command line, and compares; the page evaluates its downloaded
/// file loaded back, and with `drawing` classifies the first test image drawn ten times larger,
/// which `predict` must classify alike.
fn page_trains_like_the_command_line(url: &str, data: &Path, run: &PageRun) {
    let (preset, epochs) = (run.preset, run.epochs);
    let profile = tempfile::tempdir().unwrap();
    let drawing = if run.drawing { "&classify=1" } else { "" };
    let finetune = if run.finetune { "&finetune=1" } else { "" };
    let result = page_result(
        &format!(
            "{url}?autorun=1&data=data/&files={}&preset={preset}&epochs={epochs}&seed=7&reload=1\
             {drawing}{finetune}",
            run.files.join(",")
        ),
        profile.path(),
    );
    assert!(
        result.get("error").is_none(),
        "{preset}: the page failed: {result}"
    );
    let page_sha = result["sha256"].as_str().unwrap();
    let page = &result["last"];

    let saved = tempfile::tempdir().unwrap();
    let model = saved.path().join("model.safetensors");
    let metrics = saved.path().join("metrics.jsonl");
    let (data, model_arg, metrics_arg) = (
        data.to_str().unwrap(),
        model.to_str().unwrap(),
        metrics.to_str().unwrap(),
    );
    let epochs_arg = epochs.to_string();
    // What every native run here is given: the data, the preset, the page's seed.
    let mut recipe = run.dataset.to_vec();
    recipe.extend([
        "--offline",
        "--data",
        data,
        "--model",
        preset,
        "--seed",
        "7",
    ]);
    let mut args = recipe.clone();
    args.extend([
        "--epochs",
        &epochs_arg,
        "--save",
        model_arg,
        "--metrics",
        metrics_arg,
    ]);
    let stdout = on_swiftshader(&[&["train"], &args[..]].concat());
    let native_sha = format!("{:x}", Sha256::digest(std::fs::read(&model).unwrap()));
    assert_eq!(
        page_sha, native_sha,
        "{preset}: the page's model differs from the command line's on SwiftShader; the page's \
         last epoch: {page}\nthe command line:\n{stdout}"
    );
    let native = common::last_metrics_record(&metrics);
    for figure in [
        "epoch",
        "train_loss",
        "train_accuracy",
        "test_loss",
        "test_accuracy",
    ] {
        assert_eq!(page[figure], native[figure], "{preset}: {figure}");
    }
    // The file the page downloads (these bytes) evaluates to the page's figure.
    let evaluated: serde_json::Value = serde_json::from_str(&on_swiftshader(&[
        "eval",
        "--offline",
        "--data",
        data,
        "--model",
        model_arg,
        "--json",
    ]))
    .unwrap();
    assert_eq!(evaluated["accuracy"], page["test_accuracy"], "{preset}");
    if run.drawing {
        // The drawing: the page's top classes are predict's, from the same file and picture.
        let first = &std::fs::read(Path::new(data).join(STEMS[2])).unwrap()[16..16 + 784];
        let drawing = image::GrayImage::from_fn(280, 280, |x, y| {
            image::Luma([first[(y / 10) as usize * 28 + (x / 10) as usize]])
        });
        let picture = saved.path().join("drawing.png");
        drawing.save(&picture).unwrap();
        let predicted: serde_json::Value = serde_json::from_str(&on_swiftshader(&[
            "predict",
            "--json",
            "--model",
            model_arg,
            picture.to_str().unwrap(),
        ]))
        .unwrap();
        let (page_top, predict_top) = (&result["classified"]["top"], &predicted[0]["top"]);
        assert_eq!(
            page_top.as_array().map(Vec::len),
            Some(3),
            "{preset}: {result}"
        );
        for (page, predicted) in page_top
            .as_array()
            .unwrap()
            .iter()
            .zip(predict_top.as_array().unwrap())
        {
            assert_eq!(
                page["name"], predicted["name"],
                "{preset}: {page_top} {predict_top}"
            );
            let (p, q) = (
                page["probability"].as_f64().unwrap(),
                predicted["probability"].as_f64().unwrap(),
            );
            assert!(
                (p - q).abs() <= 1e-9,
                "{preset}: {page_top} against predict's {predict_top}"
            );
        }
        assert_eq!(result["classified"]["map_cells"], 784, "{preset}: {result}");
    }
    // The downloaded file, loaded back into the page, evaluates to the same figures.
    let reloaded = &result["reloaded"];
    assert_eq!(
        reloaded["accuracy"], page["test_accuracy"],
        "{preset}: {result}"
    );
    assert_eq!(reloaded["loss"], page["test_loss"], "{preset}: {result}");
    if run.finetune {
        let tuned = saved.path().join("tuned.safetensors");
        let mut args = vec!["train", "--init", model_arg, "--epochs", "1"];
        args.extend(["--save", tuned.to_str().unwrap()]);
        args.extend(&recipe);
        on_swiftshader(&args);
        let tuned_sha = format!("{:x}", Sha256::digest(std::fs::read(&tuned).unwrap()));
        assert_eq!(
            result["finetuned"]["sha256"].as_str(),
            Some(tuned_sha.as_str()),
            "{preset}: fine-tuning in the page differs from train --init: {result}"
        );
    }
    // Trained, not merely equal: well above chance on ten classes.
    let accuracy = page["test_accuracy"].as_f64().unwrap();
    assert!(
        accuracy > run.min_accuracy,
        "{preset}: test accuracy {accuracy}"
    );
}

#[test]
fn the_page_trains_the_bytes_the_command_line_trains_on_the_same_driver() {
    let data = common::small_mnist(1000, 300);
    let cifar = tempfile::tempdir().unwrap();
    common::write_cifar_batches(cifar.path(), 40, 50);
    let site = tempfile::tempdir().unwrap();
    let (_server, url) = serve_page(site.path());
    let served = site.path().join("data");
    std::fs::create_dir(&served).unwrap();
    for stem in STEMS {
        std::fs::copy(data.path().join(stem), served.join(stem)).unwrap();
    }
    let names = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    let mnist = |preset, epochs| PageRun {
        preset,
        epochs,
        files: names(&STEMS),
        dataset: &[],
        drawing: true,
        min_accuracy: 0.5,
        finetune: preset == "mlp",
    };
    page_trains_like_the_command_line(&url, data.path(), &mnist("mlp", 2));
    page_trains_like_the_command_line(&url, data.path(), &mnist("convnet", 1));
    // CIFAR-10's binary batches (random labels: the bits are compared, not the accuracy).
    for name in cifar::ALL_FILES {
        std::fs::copy(cifar.path().join(name), served.join(name)).unwrap();
    }
    let cifar_run = PageRun {
        preset: "mlp",
        epochs: 1,
        files: names(&cifar::ALL_FILES),
        dataset: &["--dataset", "cifar10"],
        drawing: false,
        min_accuracy: 0.0,
        finetune: false,
    };
    page_trains_like_the_command_line(&url, cifar.path(), &cifar_run);
    // An image folder of PNG digits, chosen in the page as a folder (paths under its root).
    let digits = served.join("digits");
    let class_names = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    ];
    for (split, count) in [(Split::Train, 300), (Split::Test, 100)] {
        let set = Dataset::load_mnist(data.path(), split).unwrap();
        common::write_png_folder(
            &digits.join(folder::split_dir(Path::new(""), split)),
            &set,
            0..count,
            &class_names,
        );
    }
    let mut pictures: Vec<String> = walk(&digits)
        .into_iter()
        .map(|path| {
            path.strip_prefix(&served)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect();
    pictures.sort();
    let folder_run = PageRun {
        preset: "mlp",
        epochs: 2,
        files: pictures,
        dataset: &["--dataset", "folder"],
        drawing: false,
        min_accuracy: 0.3,
        finetune: false,
    };
    page_trains_like_the_command_line(&url, &digits, &folder_run);
}

/// Every file below `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        match path.is_dir() {
            true => files.extend(walk(&path)),
            false => files.push(path),
        }
    }
    files
}
