//! Checkpoints and `train --resume` through the program itself: a run SIGKILLed at several
//! moments (in the middle of writing a checkpoint, between an epoch's evaluation and its
//! checkpoint, at an arbitrary moment) and resumed each time ends with the weights of the
//! uninterrupted run, bit for bit, and logs each epoch once with the same figures. Also the
//! metrics log's running figures between epochs.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::small_mnist;
use shadertrain::checkpoint;
use shadertrain::failpoint::{
    CHUNK_SUBMITTED, EPOCH_END, EVALUATION_CHUNK, FILE_WRITE, RAISE_ENV, STALL_ENV,
};
use shadertrain::model_file::load_model;

/// 2000 samples in batches of 64: 32 steps per epoch, the last one of 16 samples; with a
/// checkpoint every 7 steps, an epoch writes four checkpoints inside it and one at its end.
const RECIPE: [&str; 10] = [
    "--hidden",
    "32",
    "--batch-size",
    "64",
    "--epochs",
    "3",
    "--lr",
    "0.002",
    "--seed",
    "9",
];

#[derive(Clone)]
struct Run {
    /// The flags every `command` starts with.
    recipe: &'static [&'static str],
    data: PathBuf,
    checkpoints: PathBuf,
    metrics: PathBuf,
}

impl Run {
    /// A run that keeps its checkpoints and metrics log in `work`.
    fn new(recipe: &'static [&'static str], data: &Path, work: &Path) -> Run {
        Run {
            recipe,
            data: data.to_path_buf(),
            checkpoints: work.join("checkpoints"),
            metrics: work.join("metrics.jsonl"),
        }
    }

    /// The uninterrupted run of `recipe` with `extra` flags, run to its end, logging to
    /// `work/reference.jsonl`: the run, and the model it saved (`work/reference.safetensors`).
    fn reference(
        recipe: &'static [&'static str],
        data: &Path,
        work: &Path,
        extra: &[&str],
    ) -> (Run, PathBuf) {
        let run = Run {
            metrics: work.join("reference.jsonl"),
            ..Run::new(recipe, data, work)
        };
        let model = work.join("reference.safetensors");
        let save = ["--save", model.to_str().unwrap()];
        run_to_completion(run.command(&[extra, &save[..]].concat()));
        (run, model)
    }

    /// `train` with the recipe's flags and `extra`.
    fn command(&self, extra: &[&str]) -> Command {
        let mut command = self.bare_command(extra);
        command.args(self.recipe);
        command
    }

    /// `train` with only the data, the metrics log and `extra`.
    fn bare_command(&self, extra: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_shadertrain"));
        command
            .arg("train")
            .arg("--offline")
            .arg("--data")
            .arg(&self.data)
            .arg("--metrics")
            .arg(&self.metrics)
            .args(extra)
            .env_remove("SHADERTRAIN_DATA")
            .env_remove(STALL_ENV)
            .env_remove(RAISE_ENV);
        command
    }

    /// Starts the run, lets it reach the `n`-th pass through `point`, where it stalls, and
    /// SIGKILLs it there.
    fn kill_at(&self, extra: &[&str], point: &str, n: usize) {
        sigkill(stalled_at(self.command(extra), point, n));
    }

    /// Resumes from the checkpoint folder and runs to the end, saving the model to `model`.
    fn resume_to_the_end(&self, model: &Path) {
        let stdout = run_to_completion(self.command(&[
            "--resume",
            self.checkpoints.to_str().unwrap(),
            "--save",
            model.to_str().unwrap(),
        ]));
        assert!(stdout.contains("resumed from"), "{stdout}");
    }

    fn checkpoint_steps(&self) -> Vec<u64> {
        checkpoint::list(&self.checkpoints)
            .unwrap()
            .into_iter()
            .map(|(steps, _)| steps)
            .collect()
    }

    fn temporary_files(&self) -> usize {
        std::fs::read_dir(&self.checkpoints)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".shadertrain-")
            })
            .count()
    }
}

/// Starts `command`, lets it reach the `n`-th pass through `point`, where it stalls, and
/// returns it stalled there.
fn stalled_at(mut command: Command, point: &str, n: usize) -> Child {
    let mut child = command
        .env(STALL_ENV, format!("{point}:{n}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        if line == format!("stalled at {point}") {
            return child;
        }
        seen.push(line);
    }
    panic!(
        "the run ended without reaching {point} #{n}: {:?}; stderr: {seen:?}",
        child.wait()
    );
}

fn sigkill(mut child: Child) {
    // Child::kill sends SIGKILL on Unix.
    child.kill().unwrap();
    child.wait().unwrap();
}

fn run_to_completion(mut command: Command) -> String {
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The figures of each logged epoch, without the clock's.
fn logged_epochs(metrics: &Path) -> Vec<String> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .map(|line| {
            let mut record: serde_json::Value = serde_json::from_str(line).unwrap();
            let fields = record.as_object_mut().unwrap();
            for clock in ["timestamp_unix_s", "seconds", "samples_per_second"] {
                fields.remove(clock);
            }
            record.to_string()
        })
        .collect()
}

fn parameter_bits(model: &Path) -> Vec<u32> {
    load_model(model)
        .unwrap()
        .params
        .iter()
        .map(|p| p.to_bits())
        .collect()
}

#[test]
fn a_run_killed_at_any_moment_resumes_to_the_same_weights_bit_for_bit() {
    let data = small_mnist(2000, 500);
    let work = tempfile::tempdir().unwrap();
    let (reference, reference_model) = Run::reference(&RECIPE, data.path(), work.path(), &[]);

    let run = Run {
        metrics: work.path().join("resumed.jsonl"),
        ..Run::new(&RECIPE, data.path(), work.path())
    };
    let dir = run.checkpoints.to_str().unwrap();
    let resume = ["--resume", dir];

    // 1. Killed while writing its third checkpoint (after step 21): half of it is in a
    //    temporary file, and the two before it are complete.
    run.kill_at(
        &["--checkpoint-dir", dir, "--checkpoint-every", "7"],
        FILE_WRITE,
        3,
    );
    assert_eq!(run.checkpoint_steps(), [7, 14]);
    assert_eq!(run.temporary_files(), 1);

    // 2. Resumed from step 14 (the flags come from the checkpoint), and killed after epoch
    //    2's evaluation, before its checkpoint: the newest is from step 63 of 64.
    run.kill_at(&resume, EPOCH_END, 2);
    assert_eq!(run.temporary_files(), 0, "the resumed run cleans up");
    assert_eq!(run.checkpoint_steps(), [56, 63]);

    // 3. Resumed and killed at an arbitrary moment after its first new checkpoint.
    let mut child = run
        .command(&resume)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while run.checkpoint_steps().last() < Some(&70) {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no new checkpoint"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    sigkill(child);
    child = run
        .command(&resume)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    sigkill(child);

    // 4. Resumed to the end.
    let resumed_model = work.path().join("resumed.safetensors");
    run.resume_to_the_end(&resumed_model);

    assert_eq!(
        parameter_bits(&resumed_model),
        parameter_bits(&reference_model),
        "the resumed run's weights differ from the uninterrupted run's"
    );
    assert_eq!(
        logged_epochs(&run.metrics),
        logged_epochs(&reference.metrics)
    );
    assert_eq!(logged_epochs(&run.metrics).len(), 3);

    // Resuming a finished run trains nothing and says so; a target the run has passed is
    // refused, by the one rule for --epochs and --max-steps.
    let stdout = run_to_completion(run.command(&resume));
    assert!(stdout.contains("nothing left to train"), "{stdout}");
    for target in [["--epochs", "2"], ["--max-steps", "80"]] {
        let stderr = failure(run.bare_command(&[&resume[..], &target[..]].concat()));
        let flag = format!("past {} {}", target[0], target[1]);
        assert!(
            stderr.contains(&flag) && stderr.contains("after epoch 3"),
            "{stderr}"
        );
    }
}

/// A small convnet with dropout: 640 samples in batches of 64, 10 steps per epoch; with a
/// checkpoint every 3 steps.
const CONVNET_RECIPE: [&str; 10] = [
    "--layers",
    "conv4k3,maxpool2,flatten,dropout0.5,dense10",
    "--batch-size",
    "64",
    "--epochs",
    "2",
    "--validation-split",
    "0.1",
    "--seed",
    "5",
];

/// A run of `recipe` and `extra` flags (640 samples, 576 after the validation split: 9 steps an
/// epoch, a checkpoint every 3) killed while writing the checkpoint after step 12, in the second
/// epoch, logging to `work/resumed.jsonl`.
fn killed_in_the_second_epoch(
    recipe: &'static [&'static str],
    data: &Path,
    work: &Path,
    extra: &[&str],
) -> Run {
    let run = Run {
        metrics: work.join("resumed.jsonl"),
        ..Run::new(recipe, data, work)
    };
    let dir = run.checkpoints.to_str().unwrap();
    let flags = [extra, &["--checkpoint-dir", dir, "--checkpoint-every", "3"]].concat();
    run.kill_at(&flags, FILE_WRITE, 4);
    assert_eq!(run.checkpoint_steps(), [6, 9]);
    run
}

/// `killed_in_the_second_epoch`, then resumed to its end: the run and the model it saved.
fn killed_in_the_second_epoch_and_resumed(
    recipe: &'static [&'static str],
    data: &Path,
    work: &Path,
) -> (Run, PathBuf) {
    let run = killed_in_the_second_epoch(recipe, data, work, &[]);
    let model = work.join("resumed.safetensors");
    run.resume_to_the_end(&model);
    (run, model)
}

/// Dropout's masks are keyed by (seed, step, element), so a convnet with dropout, killed and
/// resumed, ends where the uninterrupted run does; and the same seed twice gives the same run.
#[test]
fn a_killed_convnet_with_dropout_resumes_bit_for_bit() {
    let data = small_mnist(640, 100);
    let work = tempfile::tempdir().unwrap();
    let reference = |name: &str| {
        let run = Run {
            metrics: work.path().join(format!("{name}.jsonl")),
            ..Run::new(&CONVNET_RECIPE, data.path(), work.path())
        };
        let model = work.path().join(format!("{name}.safetensors"));
        run_to_completion(run.command(&["--save", model.to_str().unwrap()]));
        (logged_epochs(&run.metrics), parameter_bits(&model))
    };
    let first = reference("first");
    assert_eq!(reference("second"), first, "the same seed twice");
    assert_eq!(first.0.len(), 2);
    assert!(first.0[0].contains("val_accuracy"), "{}", first.0[0]);

    let (run, resumed_model) =
        killed_in_the_second_epoch_and_resumed(&CONVNET_RECIPE, data.path(), work.path());
    assert_eq!(parameter_bits(&resumed_model), first.1);
    assert_eq!(logged_epochs(&run.metrics), first.0);
}

/// A small residual network with BatchNorm: 640 samples in batches of 64, 9 training steps per
/// epoch after the validation split.
const RESNET_RECIPE: [&str; 10] = [
    "--layers",
    "conv4k3s2p1:nobias,bn,relu,res(conv4k3p1:nobias,bn,relu,conv4k3p1:nobias,bn),relu,gap,dense10",
    "--batch-size",
    "64",
    "--epochs",
    "2",
    "--validation-split",
    "0.1",
    "--seed",
    "6",
];

/// BatchNorm's running statistics are saved in checkpoints beside the weights: a residual
/// network killed and resumed ends where the uninterrupted run does, statistics included.
#[test]
fn a_killed_resnet_with_batchnorm_resumes_bit_for_bit() {
    let data = small_mnist(640, 100);
    let work = tempfile::tempdir().unwrap();
    let (reference, model) = Run::reference(&RESNET_RECIPE, data.path(), work.path(), &[]);
    let expected = parameter_bits(&model);
    let saved = load_model(&model).unwrap();
    let layout = saved.spec.layout();
    assert!(layout.state() > 0);
    // The running variances moved away from 1: the statistics are part of what is compared.
    assert!(saved.params[layout.trained..].iter().all(|&v| v != 1.0));

    let (run, resumed_model) =
        killed_in_the_second_epoch_and_resumed(&RESNET_RECIPE, data.path(), work.path());
    assert_eq!(parameter_bits(&resumed_model), expected);
    assert_eq!(
        logged_epochs(&run.metrics),
        logged_epochs(&reference.metrics)
    );
}

/// Today's recipe on a small MLP: SGD with Nesterov momentum and weight decay, a half-epoch
/// warm-up then cosine, label smoothing; 640 samples in batches of 64, 9 training steps per
/// epoch after the validation split.
const MOMENTUM_RECIPE: [&str; 23] = [
    "--hidden",
    "32",
    "--batch-size",
    "64",
    "--epochs",
    "2",
    "--validation-split",
    "0.1",
    "--seed",
    "7",
    "--optimizer",
    "sgd",
    "--lr",
    "0.1",
    "--momentum",
    "0.9",
    "--nesterov",
    "--weight-decay",
    "5e-4",
    "--lr-schedule",
    "cosine",
    "--warmup-epochs",
    "0.5",
];

/// SGD's momentum buffer is saved in checkpoints, and each step's rate and augmentation follow
/// from its number: a run with momentum, a schedule, label smoothing, standardisation and
/// augmented images, killed and resumed with `--resume` alone (every recipe flag from the
/// checkpoint), ends bit for bit where the uninterrupted run does. A resume that would stretch
/// the cosine over other --epochs is refused.
#[test]
fn a_killed_run_with_momentum_and_a_schedule_resumes_bit_for_bit() {
    let data = small_mnist(640, 100);
    let work = tempfile::tempdir().unwrap();
    let smoothing = [
        "--label-smoothing",
        "0.1",
        "--normalize",
        "--augment",
        "crop2,flip,cutout4",
    ];
    let (reference, model) = Run::reference(&MOMENTUM_RECIPE, data.path(), work.path(), &smoothing);
    let run = Run {
        metrics: work.path().join("resumed.jsonl"),
        ..Run::new(&MOMENTUM_RECIPE, data.path(), work.path())
    };
    let dir = run.checkpoints.to_str().unwrap();
    let flags = [
        &smoothing[..],
        &["--checkpoint-dir", dir, "--checkpoint-every", "3"],
    ]
    .concat();
    run.kill_at(&flags, FILE_WRITE, 4);
    assert_eq!(run.checkpoint_steps(), [6, 9]);

    let stderr = failure(run.bare_command(&["--resume", dir, "--epochs", "3"]));
    assert!(
        stderr.contains("schedule spans (--epochs)") && stderr.contains("has 2"),
        "{stderr}"
    );
    let resumed = work.path().join("resumed.safetensors");
    let stdout = run_to_completion(run.bare_command(&[
        "--resume",
        dir,
        "--save",
        resumed.to_str().unwrap(),
    ]));
    for expected in [
        "resumed from",
        "Nesterov momentum 0.9",
        "label smoothing 0.1",
    ] {
        assert!(stdout.contains(expected), "{expected}: {stdout}");
    }
    assert_eq!(parameter_bits(&resumed), parameter_bits(&model));
    assert_eq!(
        logged_epochs(&run.metrics),
        logged_epochs(&reference.metrics)
    );
    // The log holds each epoch's last rate (step 9 of 18, 5 of them warm-up; then the last),
    // and `plot` draws it.
    let points = shadertrain::plot::read_metrics(&reference.metrics).unwrap();
    let rates: Vec<f64> = points.iter().map(|p| p.learning_rate.unwrap()).collect();
    assert_eq!(rates[0], 0.08742554);
    assert!(rates[1] < 0.01, "{rates:?}");
    assert!(shadertrain::plot::curves_svg(&points).contains("Learning rate"));
}

/// `--metrics-every`: running figures every N steps between the epoch lines, the one at an
/// epoch's last step equal to the epoch's training figures; `plot` reads past them.
#[test]
fn metrics_every_logs_running_figures_between_epochs() {
    let data = small_mnist(300, 100);
    let work = tempfile::tempdir().unwrap();
    let run = Run::new(&RECIPE, data.path(), work.path());
    // 300 samples in batches of 64: 5 steps per epoch, so step 5 ends epoch 1.
    run_to_completion(run.bare_command(&[
        "--hidden",
        "32",
        "--batch-size",
        "64",
        "--epochs",
        "2",
        "--metrics-every",
        "5",
    ]));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&run.metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = lines.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["interval", "epoch", "interval", "epoch"]);
    for (interval, epoch) in [(&lines[0], &lines[1]), (&lines[2], &lines[3])] {
        assert_eq!(interval["epoch_step"], 5);
        assert_eq!(interval["running_train_loss"], epoch["train_loss"]);
        assert_eq!(interval["running_train_accuracy"], epoch["train_accuracy"]);
    }
    assert_eq!(lines[2]["step"], 10);
    let points = shadertrain::plot::read_metrics(&run.metrics).unwrap();
    assert_eq!(points.len(), 2);
    // A constant rate gets no panel of its own.
    assert!(points[0].learning_rate.is_some());
    assert_eq!(points[0].learning_rate, points[1].learning_rate);
    assert!(!shadertrain::plot::curves_svg(&points).contains("Learning rate"));
}

fn failure(mut command: Command) -> String {
    let output = command.output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn resuming_refuses_a_contradicting_run_and_unreadable_checkpoints() {
    let data = small_mnist(300, 100);
    let work = tempfile::tempdir().unwrap();
    let run = Run::new(&RECIPE, data.path(), work.path());
    let dir = run.checkpoints.to_str().unwrap();
    run_to_completion(run.command(&["--checkpoint-dir", dir, "--max-steps", "3"]));
    assert_eq!(run.checkpoint_steps(), [3]);

    // Flags left out take the checkpoint's values (its --hidden is not the default); flags
    // given must agree.
    let stderr = failure(run.bare_command(&["--resume", dir, "--hidden", "64", "--seed", "1"]));
    for expected in ["layers", "dense32:relu", "dense64:relu", "seed", "--resume"] {
        assert!(stderr.contains(expected), "{expected:?} missing: {stderr}");
    }
    let stderr = failure(run.bare_command(&["--resume", dir, "--dataset", "fashion-mnist"]));
    assert!(
        stderr.contains("dataset") && stderr.contains("fashion-mnist"),
        "{stderr}"
    );
    let stderr = failure(run.command(&["--checkpoint-dir", dir]));
    assert!(
        stderr.contains("already holds checkpoints") && stderr.contains("--resume"),
        "{stderr}"
    );
    let stderr = failure(run.command(&["--checkpoint-every", "5"]));
    assert!(stderr.contains("--checkpoint-dir"), "{stderr}");
    // A run refused before training leaves no checkpoint folder behind; a resumed run writes
    // into the folder it resumes from, never another.
    let fresh = work.path().join("fresh");
    let stderr = failure(run.bare_command(&[
        "--resume",
        dir,
        "--seed",
        "5",
        "--checkpoint-dir",
        fresh.to_str().unwrap(),
    ]));
    assert!(stderr.contains("name different folders"), "{stderr}");
    let stderr = failure(run.bare_command(&["--resume", dir, "--seed", "5"]));
    assert!(stderr.contains("seed"), "{stderr}");
    assert!(!fresh.exists());

    // A newer checkpoint that is damaged is set aside with a warning naming it, and the run
    // resumes from the newest intact one.
    let newest = checkpoint::path_for(&run.checkpoints, 3);
    let bytes = std::fs::read(&newest).unwrap();
    for (name, damaged) in [
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
        ("garbage", b"not a checkpoint at all".to_vec()),
    ] {
        let damaged_path = checkpoint::path_for(&run.checkpoints, 4);
        std::fs::write(&damaged_path, &damaged).unwrap();
        let output = run
            .command(&["--resume", dir, "--max-steps", "3"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{name}: {stderr}");
        assert!(
            stderr.contains("step-0000000004.safetensors is damaged")
                && stderr.contains("resuming from the older")
                && stdout.contains("step-0000000003.safetensors"),
            "{name}: {stderr}\n{stdout}"
        );
        assert!(!damaged_path.exists(), "{name}: left under its name");
        assert_eq!(run.checkpoint_steps(), [3]);
    }
    let set_aside = |suffix: &str| {
        let mut name = checkpoint::path_for(&run.checkpoints, 4).into_os_string();
        name.push(suffix);
        std::fs::read(name).unwrap()
    };
    assert_eq!(set_aside(".damaged"), bytes[..bytes.len() / 2]);
    assert_eq!(set_aside(".damaged.2"), b"not a checkpoint at all");
    // A model file is not a checkpoint.
    let model = work.path().join("model.safetensors");
    run_to_completion(run.command(&["--max-steps", "1", "--save", model.to_str().unwrap()]));
    std::fs::copy(&model, checkpoint::path_for(&run.checkpoints, 4)).unwrap();
    let stderr = failure(run.command(&["--resume", dir]));
    assert!(stderr.contains("not a shadertrain checkpoint"), "{stderr}");
}

/// A checkpoint resumes only on the data it was trained on, by content: other files under the
/// same flags are refused.
#[test]
fn resuming_on_other_data_is_refused() {
    let data = small_mnist(300, 100);
    let work = tempfile::tempdir().unwrap();
    let run = Run::new(&RECIPE, data.path(), work.path());
    let dir = run.checkpoints.to_str().unwrap();
    run_to_completion(run.command(&["--checkpoint-dir", dir, "--max-steps", "2"]));
    let other = small_mnist(300, 90);
    let mnist = common::mnist_dir();
    for (data, named) in [(other.path(), "custom data"), (mnist.as_path(), "mnist")] {
        let elsewhere = Run::new(&RECIPE, data, work.path());
        let stderr = failure(elsewhere.bare_command(&["--resume", dir]));
        assert!(
            stderr.contains("data (--data, --dataset): the checkpoint has custom data")
                && stderr.contains(&format!("this run asks for {named}")),
            "{stderr}"
        );
    }
}

/// The same run twice writes the same bytes: models and checkpoints hold no clock and write
/// their metadata in a fixed order.
#[test]
fn identical_runs_write_byte_identical_models_and_checkpoints() {
    let data = small_mnist(300, 100);
    // The same paths both times: checkpoints record where the run writes.
    let parent = tempfile::tempdir().unwrap();
    let work = parent.path().join("run");
    let files = || {
        std::fs::create_dir(&work).unwrap();
        let run = Run::new(&RECIPE, data.path(), &work);
        let model = work.join("model.safetensors");
        let dir = run.checkpoints.to_str().unwrap();
        run_to_completion(run.command(&[
            "--checkpoint-dir",
            dir,
            "--checkpoint-every",
            "2",
            "--save",
            model.to_str().unwrap(),
        ]));
        let mut bytes = vec![std::fs::read(&model).unwrap()];
        for (_, path) in checkpoint::list(&run.checkpoints).unwrap() {
            bytes.push(std::fs::read(path).unwrap());
        }
        std::fs::remove_dir_all(&work).unwrap();
        bytes
    };
    let first = files();
    let second = files();
    // 5 steps per epoch: the model, the checkpoint after step 14 (inside the last epoch) and
    // the one at its end.
    assert_eq!(first.len(), 3);
    for (i, (a, b)) in first.iter().zip(&second).enumerate() {
        assert!(a == b, "file {i} differs between identical runs");
    }
}

/// One run at a time writes into a checkpoint folder: a second is refused at once, naming the
/// folder and the holder's process id; the OS lets go of the lock when the holder dies.
#[test]
fn a_checkpoint_folder_in_use_is_refused_until_its_run_ends() {
    let data = small_mnist(300, 100);
    let work = tempfile::tempdir().unwrap();
    let run = Run::new(&RECIPE, data.path(), work.path());
    let dir = run.checkpoints.to_str().unwrap();
    let holder = stalled_at(
        run.command(&["--checkpoint-dir", dir, "--checkpoint-every", "2"]),
        EPOCH_END,
        1,
    );
    for args in [
        &["--checkpoint-dir", dir, "--hidden", "16"][..],
        &["--resume", dir],
    ] {
        let refused = failure(run.bare_command(args));
        assert!(
            refused.contains(&format!("{dir} is in use by process {}", holder.id())),
            "{args:?}: {refused}"
        );
    }
    assert_eq!(
        run.checkpoint_steps(),
        [2, 4],
        "the holder's checkpoints are untouched"
    );
    sigkill(holder);
    let stdout = run_to_completion(run.command(&["--resume", dir]));
    assert!(stdout.contains("resumed from"), "{stdout}");
}

/// Every output is checked before the first step: a run that could not write its model, log
/// or checkpoints is refused at once, naming the flag and the path.
#[test]
fn unwritable_outputs_are_refused_before_training() {
    let data = small_mnist(300, 100);
    let work = tempfile::tempdir().unwrap();
    let run = Run::new(&RECIPE, data.path(), work.path());
    let folder = work.path().to_str().unwrap();
    let missing = work.path().join("missing/model.safetensors");
    let file = work.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    for (flag, path, problem) in [
        ("--save", folder, "is a folder"),
        ("--save", missing.to_str().unwrap(), "does not exist"),
        ("--save", "/proc/model.safetensors", "cannot write in /proc"),
        ("--metrics", "/proc/metrics.jsonl", "cannot write in /proc"),
        (
            "--checkpoint-dir",
            "/proc/checkpoints",
            "cannot write in /proc",
        ),
        (
            "--checkpoint-dir",
            file.to_str().unwrap(),
            "a regular file, not a folder",
        ),
    ] {
        let mut command = match flag {
            "--metrics" => Run {
                metrics: PathBuf::from(path),
                ..run.clone()
            }
            .command(&[]),
            _ => run.command(&[flag, path]),
        };
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{flag} {path}: {stderr}");
        assert!(
            stderr.contains(&format!("{flag} {path}: ")) && stderr.contains(problem),
            "{flag} {path}: {stderr}"
        );
        assert!(
            output.stdout.is_empty(),
            "{flag} {path}: started: {}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
    let (code, stderr) = {
        let output = Command::new(env!("CARGO_BIN_EXE_shadertrain"))
            .args(["plot", "no-such-log.jsonl", "-o", "/proc/curves.png"])
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("-o /proc/curves.png: cannot write"),
        "{stderr}"
    );
}

/// `--resume DIR` alone continues the run as it was started, from any working folder: the
/// model is saved where --save said, the log goes on with its --metrics-every lines, the data
/// is read from where it was, and --keep-checkpoints holds.
#[test]
fn resume_alone_restores_the_runs_outputs() {
    let data = small_mnist(300, 100);
    let work = tempfile::tempdir().unwrap();
    let started_in = work.path().join("started-here");
    std::fs::create_dir(&started_in).unwrap();
    let model = work.path().join("model.safetensors");
    let metrics = work.path().join("metrics.jsonl");
    let checkpoints = work.path().join("checkpoints");
    // Relative paths, from the folder the run is started in.
    let mut original = Command::new(env!("CARGO_BIN_EXE_shadertrain"));
    original
        .current_dir(&started_in)
        .args(["train", "--offline", "--data"])
        .arg(data.path())
        .args(RECIPE)
        .args([
            "--save",
            "../model.safetensors",
            "--metrics",
            "../metrics.jsonl",
            "--metrics-every",
            "2",
            "--checkpoint-dir",
            "../checkpoints",
            "--checkpoint-every",
            "3",
            "--keep-checkpoints",
            "3",
        ])
        .env_remove("SHADERTRAIN_DATA");
    sigkill(stalled_at(original, EPOCH_END, 2));

    let mut resumed = Command::new(env!("CARGO_BIN_EXE_shadertrain"));
    resumed
        .current_dir(work.path())
        .args(["train", "--offline", "--resume", "checkpoints"])
        .env_remove("SHADERTRAIN_DATA")
        .env_remove(STALL_ENV);
    let stdout = run_to_completion(resumed);
    assert!(stdout.contains("resumed from"), "{stdout}");
    assert!(model.exists(), "no model: {stdout}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // 5 steps per epoch, 3 epochs: intervals at steps 2, 4, ..., 14, and three epoch lines.
    let steps: Vec<u64> = lines.iter().filter_map(|l| l["step"].as_u64()).collect();
    assert_eq!(steps, [2, 4, 6, 8, 10, 12, 14]);
    assert_eq!(lines.iter().filter(|l| l["kind"] == "epoch").count(), 3);
    assert_eq!(checkpoint::list(&checkpoints).unwrap().len(), 3);

    // A folder with no checkpoint yet: one line, then the run from the start.
    let empty = work.path().join("empty");
    let stdout = run_to_completion(
        Run {
            checkpoints: empty.clone(),
            metrics: work.path().join("fresh.jsonl"),
            ..Run::new(&RECIPE, data.path(), work.path())
        }
        .bare_command(&["--resume", empty.to_str().unwrap(), "--max-steps", "1"]),
    );
    assert!(
        stdout.contains(&format!("no checkpoint in {} yet", empty.display())),
        "{stdout}"
    );
}

/// A diverging run stops with an error naming the epoch and --lr: it writes no model over a
/// good one and no checkpoint of the diverged state, and its log stays readable (no nulls).
#[test]
fn a_diverging_run_stops_and_saves_nothing_from_then_on() {
    let data = small_mnist(300, 100);
    let work = tempfile::tempdir().unwrap();
    let run = Run::new(&[], data.path(), work.path());
    let model = work.path().join("model.safetensors");
    std::fs::write(&model, b"a good model from before").unwrap();
    let output = run
        .command(&[
            "--hidden",
            "32",
            "--optimizer",
            "sgd",
            "--lr",
            "1e30",
            "--checkpoint-dir",
            run.checkpoints.to_str().unwrap(),
            "--save",
            model.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("diverged in epoch 1") && stderr.contains("lower --lr (this run: 1e30)"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&model).unwrap(), b"a good model from before");
    assert!(checkpoint::list(&run.checkpoints).unwrap().is_empty());
    let log = std::fs::read_to_string(&run.metrics).unwrap();
    let record: serde_json::Value = serde_json::from_str(log.trim()).unwrap();
    assert_eq!(record["train_loss"], "NaN", "{log}");
    assert!(!log.contains("null"), "{log}");
    let error = shadertrain::plot::read_metrics(&run.metrics).unwrap_err();
    assert!(
        error.to_string().contains("no epoch with finite figures"),
        "{error}"
    );
}

const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

/// The epoch lines of a metrics log, without the clock's figures.
fn logged_epoch_lines(metrics: &Path) -> Vec<String> {
    logged_epochs(metrics)
        .into_iter()
        .filter(|line| line.contains(r#""kind":"epoch""#))
        .collect()
}

/// SIGINT or SIGTERM stops the run at the next chunk boundary: a checkpoint of the step
/// reached (none is left half-written), the model so far, one line on how to go on, exit
/// 128 + the signal; resumed, the run ends where the uninterrupted one does, bit for bit.
#[test]
fn a_stop_signal_saves_a_checkpoint_that_resumes_bit_for_bit() {
    let data = small_mnist(2000, 500);
    let work = tempfile::tempdir().unwrap();
    let (reference, reference_model) = Run::reference(&RECIPE, data.path(), work.path(), &[]);
    let expected = (
        parameter_bits(&reference_model),
        logged_epoch_lines(&reference.metrics),
    );

    // (signal, where it is raised, the step it stops at if known beforehand)
    let cases = [
        // After the third chunk: mid-epoch, at a step the chunks' sizes decide (they are sized
        // by time), not checkpointed before unless it is a multiple of 7.
        (SIGTERM, format!("{CHUNK_SUBMITTED}:3:{SIGTERM}"), None),
        // While the checkpoint of step 14 is being written (the second file write, after the
        // checkpoint of 7; the log's lines are appended, not rewritten): it is completed, not
        // left half-written, and is the one to resume from.
        (SIGINT, format!("{FILE_WRITE}:2:{SIGINT}"), Some(14)),
    ];
    for (signal, raise, stop_step) in cases {
        let case = format!("signal {signal}");
        let folder = work.path().join(format!("signal-{signal}"));
        std::fs::create_dir(&folder).unwrap();
        let run = Run::new(&RECIPE, data.path(), &folder);
        let dir = run.checkpoints.to_str().unwrap();
        let model = folder.join("model.safetensors");
        let output = run
            .command(&[
                "--checkpoint-dir",
                dir,
                "--checkpoint-every",
                "7",
                "--metrics-every",
                "5",
                "--save",
                model.to_str().unwrap(),
            ])
            .env(RAISE_ENV, &raise)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(128 + signal), "{case}: {stderr}");
        let name = if signal == SIGINT {
            "SIGINT"
        } else {
            "SIGTERM"
        };
        let stopped = format!("stopped by {name} after step ");
        let step: u64 = stderr
            .split(&stopped)
            .nth(1)
            .and_then(|rest| rest.split(':').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{case}: {stderr}"));
        assert!(stop_step.is_none_or(|s| s == step), "{case}: {stderr}");
        assert!(
            stderr.contains(&format!("the model so far in {}", model.display()))
                && stderr.contains(&format!("continue with: shadertrain train --resume {dir}")),
            "{case}: {stderr}"
        );
        // The signal's own line as it arrives, then the outcome.
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 2, "{case}: {stderr}");
        assert!(
            lines[0].starts_with(&format!("{name}: stopping")),
            "{case}: {stderr}"
        );
        // The newest two of the checkpoints every 7 steps, and one of the step stopped at.
        let mut checkpointed: Vec<u64> = (1..=step / 7).map(|k| 7 * k).collect();
        if !step.is_multiple_of(7) {
            checkpointed.push(step);
        }
        let checkpointed = checkpointed[checkpointed.len().saturating_sub(2)..].to_vec();
        assert_eq!(run.checkpoint_steps(), checkpointed, "{case}");
        assert_eq!(run.temporary_files(), 0, "{case}");
        assert!(load_model(&model).is_ok(), "{case}: the model so far");

        // --resume alone restores --save and the log.
        let stdout = run_to_completion(run.bare_command(&["--resume", dir]));
        assert!(stdout.contains("resumed from"), "{case}: {stdout}");
        assert_eq!(parameter_bits(&model), expected.0, "{case}");
        assert_eq!(logged_epoch_lines(&run.metrics), expected.1, "{case}");
    }
}

/// A second signal ends the run at once, saving nothing more; without a checkpoint folder the
/// line says that the run cannot be resumed.
#[test]
fn a_second_signal_exits_at_once_and_a_run_without_checkpoints_says_so() {
    let data = small_mnist(300, 100);
    let work = tempfile::tempdir().unwrap();
    let run = Run::new(&RECIPE, data.path(), work.path());
    let dir = run.checkpoints.to_str().unwrap();
    let output = run
        .command(&["--checkpoint-dir", dir, "--checkpoint-every", "2"])
        .env(RAISE_ENV, format!("{CHUNK_SUBMITTED}:3:{SIGINT}:2"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(!stderr.contains("stopped by"), "{stderr}");
    // Each signal says so as it arrives; the second, what is kept.
    let absolute_dir = std::path::absolute(&run.checkpoints).unwrap();
    assert!(
        stderr.contains("SIGINT: stopping after the steps under way")
            && stderr.contains(&format!(
                "SIGINT again: exiting at once; the newest checkpoint is kept: continue with \
                 shadertrain train --resume {}",
                absolute_dir.display()
            )),
        "{stderr}"
    );
    // The checkpoints written before are whole; none was written after.
    let steps = run.checkpoint_steps();
    assert!(
        !steps.is_empty() && steps.iter().all(|s| s % 2 == 0),
        "{steps:?}"
    );

    let model = work.path().join("model.safetensors");
    let output = run
        .command(&["--save", model.to_str().unwrap()])
        .env(RAISE_ENV, format!("{CHUNK_SUBMITTED}:1:{SIGTERM}"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(143), "{stderr}");
    assert!(
        stderr.contains("stopped by SIGTERM after step ")
            && stderr.contains("no --checkpoint-dir, so the run cannot be resumed"),
        "{stderr}"
    );
    assert!(load_model(&model).is_ok());
}

/// A run stopped by --max-steps inside an epoch leaves the epoch under way: resumed with a
/// higher limit it goes on inside that epoch and ends with the weights of a run given the
/// higher limit at once, bit for bit; a partial epoch's row says it is partial.
#[test]
fn a_run_stopped_by_max_steps_resumes_mid_epoch_bit_for_bit() {
    let data = small_mnist(2000, 500);
    let work = tempfile::tempdir().unwrap();
    // 32 steps an epoch: 10 stops inside epoch 1, 40 inside epoch 2.
    let (reference, reference_model) =
        Run::reference(&RECIPE, data.path(), work.path(), &["--max-steps", "40"]);

    let run = Run::new(&RECIPE, data.path(), work.path());
    let dir = run.checkpoints.to_str().unwrap();
    let stdout = run_to_completion(run.command(&["--checkpoint-dir", dir, "--max-steps", "10"]));
    assert!(
        stdout.lines().any(|l| l.starts_with("   1*"))
            && stdout.contains("after 10 of its 32 steps"),
        "{stdout}"
    );
    assert_eq!(run.checkpoint_steps(), [10]);
    let model = work.path().join("resumed.safetensors");
    let stdout = run_to_completion(run.bare_command(&[
        "--resume",
        dir,
        "--max-steps",
        "40",
        "--save",
        model.to_str().unwrap(),
    ]));
    assert!(
        stdout.contains("in epoch 1, step 10 of 32")
            && stdout.lines().any(|l| l.starts_with("   2*")),
        "{stdout}"
    );
    assert_eq!(parameter_bits(&model), parameter_bits(&reference_model));

    let rows = |path: &Path| -> Vec<(u64, Option<u64>)> {
        logged_epoch_lines(path)
            .iter()
            .map(|line| {
                let row: serde_json::Value = serde_json::from_str(line).unwrap();
                let partial = row["partial"].as_bool().unwrap_or(false);
                assert_eq!(partial, row.get("epoch_step").is_some(), "{line}");
                (row["epoch"].as_u64().unwrap(), row["epoch_step"].as_u64())
            })
            .collect()
    };
    assert_eq!(
        rows(&run.metrics),
        [(1, Some(10)), (1, None), (2, Some(8))],
        "the partial rows, then the whole epoch"
    );
    assert_eq!(rows(&reference.metrics), [(1, None), (2, Some(8))]);
    // The resumed run's rows from epoch 1's end on are the reference's, figure for figure.
    assert_eq!(
        logged_epoch_lines(&run.metrics)[1..],
        logged_epoch_lines(&reference.metrics)[..]
    );
    let stdout = run_to_completion(run.bare_command(&["--resume", dir, "--max-steps", "40"]));
    assert!(
        stdout.contains("nothing left to train: the run has reached --max-steps 40 (in epoch 2)")
            && !stdout.contains("train_loss"),
        "said before any table header: {stdout}"
    );
}

/// A stop signal during an evaluation stops it (the --max-steps run used to evaluate, save and
/// exit 0 as if the signal had not come): the checkpoint of the step reached is written, no row
/// is logged for the unfinished evaluation, and the resumed run ends where an uninterrupted one
/// does, bit for bit.
#[test]
fn a_stop_signal_during_the_evaluation_stops_a_max_steps_run_too() {
    // 2500 test samples: the evaluation takes several batches, so several chunks.
    let data = small_mnist(640, 2500);
    let work = tempfile::tempdir().unwrap();
    const LAYERS: [&str; 6] = [
        "--layers",
        "conv4k3,maxpool2,flatten,dense10",
        "--batch-size",
        "64",
        "--seed",
        "2",
    ];
    let (reference, reference_model) =
        Run::reference(&LAYERS, data.path(), work.path(), &["--max-steps", "8"]);

    let run = Run::new(&LAYERS, data.path(), work.path());
    let dir = run.checkpoints.to_str().unwrap();
    let model = work.path().join("model.safetensors");
    let output = run
        .command(&[
            "--checkpoint-dir",
            dir,
            "--max-steps",
            "5",
            "--save",
            model.to_str().unwrap(),
        ])
        .env(RAISE_ENV, format!("{EVALUATION_CHUNK}:1:{SIGINT}"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(130), "{stdout}{stderr}");
    assert!(
        stderr.contains("SIGINT: stopping")
            && stderr.contains("stopped by SIGINT after step 5: ")
            && stderr.contains("continue with: shadertrain train --resume"),
        "{stderr}"
    );
    assert!(
        !stdout.contains("   1*"),
        "no row for an unfinished evaluation: {stdout}"
    );
    assert_eq!(run.checkpoint_steps(), [5]);
    assert!(!run.metrics.exists(), "nothing logged");

    // Resumed as the message says, at the same limit: the evaluation it owes is done, its row
    // printed and logged, and nothing is trained.
    let stdout = run_to_completion(run.bare_command(&["--resume", dir]));
    assert!(
        stdout.lines().any(|l| l.starts_with("   1*")) && !stdout.contains("nothing left"),
        "{stdout}"
    );
    let rows = logged_epoch_lines(&run.metrics);
    assert!(
        rows.len() == 1 && rows[0].contains(r#""epoch_step":5"#),
        "{rows:?}"
    );
    let stdout = run_to_completion(run.bare_command(&["--resume", dir]));
    assert!(stdout.contains("nothing left to train"), "{stdout}");

    run_to_completion(run.bare_command(&["--resume", dir, "--max-steps", "8"]));
    assert_eq!(parameter_bits(&model), parameter_bits(&reference_model));
    assert_eq!(
        logged_epoch_lines(&run.metrics)[1..],
        logged_epoch_lines(&reference.metrics)[..]
    );
}

/// A checkpoint written before momentum, schedules, smoothing and augmentation existed (format
/// 2, without their keys) still resumes, as the run it was: to the uninterrupted run's bits.
#[test]
fn a_checkpoint_of_the_previous_format_still_resumes() {
    let data = small_mnist(300, 100);
    let work = tempfile::tempdir().unwrap();
    let (_, model) = Run::reference(&RECIPE, data.path(), work.path(), &["--max-steps", "6"]);
    let run = Run::new(&RECIPE, data.path(), work.path());
    let dir = run.checkpoints.to_str().unwrap();
    run_to_completion(run.command(&["--checkpoint-dir", dir, "--max-steps", "3"]));
    let path = checkpoint::path_for(&run.checkpoints, 3);
    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut metadata = header.metadata().clone().unwrap();
    assert_eq!(metadata["format"], "shadertrain checkpoint 3");
    metadata.insert("format".into(), "shadertrain checkpoint 2".into());
    for key in [
        "momentum",
        "nesterov",
        "weight_decay",
        "lr_schedule",
        "warmup_epochs",
        "label_smoothing",
        "augmentation",
        "test_split",
    ] {
        assert!(metadata.remove(key).is_some(), "{key}");
    }
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let older = safetensors::serialize(file.tensors(), Some(metadata)).unwrap();
    std::fs::write(&path, older).unwrap();

    let resumed = work.path().join("resumed.safetensors");
    let stdout = run_to_completion(run.command(&[
        "--resume",
        dir,
        "--max-steps",
        "6",
        "--save",
        resumed.to_str().unwrap(),
    ]));
    assert!(stdout.contains("resumed from"), "{stdout}");
    assert_eq!(parameter_bits(&resumed), parameter_bits(&model));
}
