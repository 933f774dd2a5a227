//! Hostile output paths against every command that writes: devices, named pipes, sockets,
//! folders and symbolic links, all made by the test in a temporary folder (device nodes are
//! twins of /dev/full, /dev/null and /dev/zero made with mknod, which needs root; the machine's
//! own /dev is never touched). Outputs refuse what is not a regular file, before training, and
//! leave it as it was; a metrics log streams to a device or a pipe; links are written through.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::small_mnist;
use shadertrain::failpoint::{CHUNK_SUBMITTED, RAISE_ENV, STALL_ENV};

fn shadertrain(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_shadertrain"));
    command
        .args(args)
        .env_remove("SHADERTRAIN_DATA")
        .env_remove(STALL_ENV)
        .env_remove(RAISE_ENV);
    command
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A run of two steps on a tiny set, with `extra` flags.
fn train(data: &Path, extra: &[&str]) -> Command {
    let mut command = shadertrain(&["train", "--offline", "--data"]);
    command.arg(data).args([
        "--hidden",
        "8",
        "--batch-size",
        "32",
        "--epochs",
        "1",
        "--seed",
        "3",
    ]);
    command.args(extra);
    command
}

/// What a path is, to compare before and after: its type (links not followed), its device
/// numbers, and a link's target.
fn snapshot(path: &Path) -> String {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::symlink_metadata(path).unwrap();
    let t = meta.file_type();
    let kind = [
        (t.is_symlink(), "link"),
        (t.is_dir(), "folder"),
        (t.is_file(), "file"),
        (t.is_char_device(), "char"),
        (t.is_block_device(), "block"),
        (t.is_fifo(), "fifo"),
        (t.is_socket(), "socket"),
    ]
    .iter()
    .find(|(is, _)| *is)
    .map_or("?", |(_, name)| name);
    let link = std::fs::read_link(path).ok();
    format!("{kind} rdev {} size {} {link:?}", meta.rdev(), meta.len())
}

/// Makes a character device node like /dev/<name> (major 1, `minor`). None without the right
/// to (not root): those cases are then left out.
fn char_device(dir: &Path, name: &str, minor: u32) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let path = dir.join(name);
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: mknod on a path in the test's own temporary folder.
    let made = unsafe {
        libc::mknod(
            c_path.as_ptr(),
            libc::S_IFCHR | 0o666,
            libc::makedev(1, minor),
        )
    };
    if made != 0 {
        assert!(
            unsafe { libc::geteuid() } != 0,
            "mknod failed as root: {}",
            std::io::Error::last_os_error()
        );
        eprintln!("not root: the device-node cases are left out");
        return None;
    }
    Some(path)
}

fn fifo(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let status = Command::new("mkfifo").arg(&path).status().unwrap();
    assert!(status.success());
    path
}

/// Every path that is not a regular file, each with the words its refusal names it by. The
/// socket's listener is returned to keep it open.
fn hostile_paths(
    dir: &Path,
) -> (
    Vec<(PathBuf, &'static str)>,
    std::os::unix::net::UnixListener,
) {
    let mut paths = Vec::new();
    if let Some(full) = char_device(dir, "full", 7) {
        let link = dir.join("link-to-full");
        std::os::unix::fs::symlink(&full, &link).unwrap();
        paths.push((full, "character device"));
        paths.push((link, "character device"));
    }
    paths.push((fifo(dir, "pipe"), "named pipe"));
    let socket = dir.join("socket");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    paths.push((socket, "socket"));
    let folder = dir.join("folder");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("kept"), b"kept").unwrap();
    paths.push((folder, "folder"));
    (paths, listener)
}

#[test]
fn outputs_refuse_what_is_not_a_regular_file_before_training_and_leave_it_alone() {
    let data = small_mnist(256, 64);
    let work = tempfile::tempdir().unwrap();
    let (paths, _listener) = hostile_paths(work.path());
    let log = work.path().join("metrics.jsonl");
    std::fs::write(
        &log,
        r#"{"epoch":1,"train_loss":1,"test_loss":1,"train_accuracy":0.5,"test_accuracy":0.5}"#,
    )
    .unwrap();
    for (path, kind) in &paths {
        let before = snapshot(path);
        let p = path.to_str().unwrap();
        let is_folder = *kind == "folder";
        let mut cases: Vec<(&str, Command)> = vec![
            ("--save", train(data.path(), &["--save", p])),
            ("-o", shadertrain(&["plot", log.to_str().unwrap(), "-o", p])),
        ];
        if !is_folder {
            cases.push((
                "--checkpoint-dir",
                train(data.path(), &["--checkpoint-dir", p]),
            ));
            cases.push(("--dir", shadertrain(&["download", "--dir", p])));
        }
        if matches!(*kind, "folder" | "socket") {
            cases.push(("--metrics", train(data.path(), &["--metrics", p])));
        }
        for (flag, mut command) in cases {
            let output = command.output().unwrap();
            let (stdout, stderr) = text(&output);
            assert_eq!(
                output.status.code(),
                Some(1),
                "{flag} {p}: {stdout}{stderr}"
            );
            assert!(
                stderr.contains(flag) && stderr.contains(p),
                "{flag} {p}: the message names the flag and the path: {stderr}"
            );
            if flag != "--dir" {
                assert!(
                    stderr.contains(kind) || (is_folder && stderr.contains("a folder")),
                    "{flag} {p}: says it is a {kind}: {stderr}"
                );
            }
            assert!(
                !stdout.contains("epoch"),
                "{flag} {p}: refused before training: {stdout}"
            );
            assert_eq!(snapshot(path), before, "{flag} {p} is left as it was");
        }
    }
    let kept = std::fs::read(work.path().join("folder/kept")).unwrap();
    assert_eq!(kept, b"kept");
}

#[test]
fn the_metrics_log_streams_to_devices_and_pipes() {
    let data = small_mnist(256, 64);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    // Twins of /dev/null, /dev/zero (once read without end) and /dev/full (writes fail: the
    // run goes on, saying so).
    for (name, minor) in [("null", 3), ("zero", 5), ("full", 7)] {
        let Some(device) = char_device(dir, name, minor) else {
            break;
        };
        let before = snapshot(&device);
        let output = train(data.path(), &["--metrics", device.to_str().unwrap()])
            .output()
            .unwrap();
        let (stdout, stderr) = text(&output);
        assert!(output.status.success(), "{name}: {stdout}{stderr}");
        assert!(stdout.contains("    1 "), "{name}: an epoch ran: {stdout}");
        assert_eq!(
            stderr.contains("No space left"),
            name == "full",
            "{name}: {stderr}"
        );
        assert_eq!(snapshot(&device), before, "{name} stays a device");
    }

    // A named pipe with a reader gets the lines. The reader opens its end first (without
    // waiting for a writer) and reads once the run is over: the lines wait in the pipe.
    let pipe = fifo(dir, "pipe");
    let mut reader = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&pipe)
            .unwrap()
    };
    let output = train(data.path(), &["--metrics", pipe.to_str().unwrap()])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}{stderr}");
    let mut received = String::new();
    reader.read_to_string(&mut received).unwrap();
    drop(reader);
    let line: serde_json::Value = serde_json::from_str(received.trim()).unwrap();
    assert_eq!(line["epoch"], 1, "{received}");
    assert!(snapshot(&pipe).starts_with("fifo"));

    // Without a reader, the run is refused at once instead of waiting for one.
    let output = train(data.path(), &["--metrics", pipe.to_str().unwrap()])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr.contains("--metrics") && stderr.contains("no process is reading"),
        "{stderr}"
    );
    assert!(!stdout.contains("epoch"), "{stdout}");

    // The process's own standard output, as /dev/stdout is (a link in the temporary folder to
    // /proc/self/fd/1, so that the machine's own entry is never at stake): when it is a pipe...
    let own_stdout = dir.join("stdout");
    std::os::unix::fs::symlink("/proc/self/fd/1", &own_stdout).unwrap();
    let own = own_stdout.to_str().unwrap();
    let output = train(data.path(), &["--metrics", own])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stdout.lines().any(|l| l.starts_with("{\"dataset\"")),
        "{stdout}"
    );
    assert!(snapshot(&own_stdout).starts_with("link"));
    // A model is a file: stdout is no place for one, pipe or redirected file.
    let output = train(data.path(), &["--save", own])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output).1.contains("that is a named pipe"),
        "{}",
        text(&output).1
    );
    let redirected = dir.join("redirected.txt");
    let output = train(data.path(), &["--save", own])
        .stdout(std::fs::File::create(&redirected).unwrap())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output).1.contains("this program's own output"),
        "{}",
        text(&output).1
    );

    // ...and when it is redirected to a file (`> run.log`): the lines go through stdout itself,
    // so the table and the log lines follow one another, none written over another.
    let run_log = dir.join("run.log");
    let output = train(data.path(), &["--metrics-every", "2", "--metrics", own])
        .stdout(std::fs::File::create(&run_log).unwrap())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output).1);
    let logged = std::fs::read_to_string(&run_log).unwrap();
    let kinds: Vec<&str> = logged
        .lines()
        .map(|l| match serde_json::from_str::<serde_json::Value>(l) {
            Ok(line) if line["kind"] == "interval" => "interval",
            Ok(_) => "epoch",
            Err(_) if l.starts_with("    1 ") => "row",
            Err(_) => "text",
        })
        .filter(|&kind| kind != "text")
        .collect();
    // 8 steps: a line every 2, the epoch's line, its row in the table.
    assert_eq!(
        kinds,
        [
            "interval", "interval", "interval", "interval", "epoch", "row"
        ],
        "{logged}"
    );
}

#[test]
fn outputs_write_through_links_and_two_outputs_never_share_a_file() {
    let data = small_mnist(256, 64);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let model = elsewhere.join("model.safetensors");
    let log = elsewhere.join("log.jsonl");
    std::fs::write(&model, b"old model").unwrap();
    std::fs::write(&log, "{\"an earlier line\":1}\n").unwrap();
    let model_link = dir.join("model-link");
    let log_link = dir.join("log-link");
    std::os::unix::fs::symlink(&model, &model_link).unwrap();
    std::os::unix::fs::symlink("elsewhere/log.jsonl", &log_link).unwrap();
    let output = train(
        data.path(),
        &[
            "--save",
            model_link.to_str().unwrap(),
            "--metrics",
            log_link.to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}{stderr}");
    for link in [&model_link, &log_link] {
        assert!(
            snapshot(link).starts_with("link"),
            "{} is kept",
            link.display()
        );
    }
    assert!(shadertrain::model_file::load_model(&model).is_ok());
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.starts_with("{\"an earlier line\":1}\n{") && logged.lines().count() == 2,
        "appended through the link: {logged}"
    );

    // One file for two outputs, by name or through a link, is refused.
    for (save, metrics) in [
        (model.to_str().unwrap(), model.to_str().unwrap()),
        (model_link.to_str().unwrap(), model.to_str().unwrap()),
        (log.to_str().unwrap(), log_link.to_str().unwrap()),
    ] {
        let output = train(data.path(), &["--save", save, "--metrics", metrics])
            .output()
            .unwrap();
        let (stdout, stderr) = text(&output);
        assert_eq!(output.status.code(), Some(1), "{save} {metrics}: {stdout}");
        assert!(stderr.contains("names the same file"), "{stderr}");
    }
}

#[test]
fn outputs_stay_out_of_another_runs_checkpoint_folder() {
    let data = small_mnist(256, 64);
    let work = tempfile::tempdir().unwrap();
    let folder = work.path().join("run");
    let mut running = train(data.path(), &["--checkpoint-dir", folder.to_str().unwrap()])
        .env(STALL_ENV, format!("{CHUNK_SUBMITTED}:1"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(running.stderr.take().unwrap());
    for line in stderr.lines() {
        if line.unwrap() == format!("stalled at {CHUNK_SUBMITTED}") {
            break;
        }
    }
    let pid = running.id().to_string();
    // A link from elsewhere into the folder is no way around it.
    let link = work.path().join("link.out");
    std::os::unix::fs::symlink(folder.join("linked.out"), &link).unwrap();
    for (flag, path) in [
        ("--save", folder.join("mine.out")),
        ("--metrics", folder.join("mine.out")),
        ("--save", link.clone()),
    ] {
        let output = train(data.path(), &[flag, path.to_str().unwrap()])
            .output()
            .unwrap();
        let (stdout, stderr) = text(&output);
        assert_eq!(output.status.code(), Some(1), "{flag}: {stdout}{stderr}");
        assert!(
            stderr.contains(flag) && stderr.contains("in progress") && stderr.contains(&pid),
            "{flag}: {stderr}"
        );
        assert!(!folder.join("mine.out").exists() && !folder.join("linked.out").exists());
    }
    running.kill().unwrap();
    running.wait().unwrap();
    // A folder's own run may keep its model there, under a name that is not a checkpoint's.
    let output = train(
        data.path(),
        &[
            "--resume",
            folder.to_str().unwrap(),
            "--save",
            folder.join("step-0000000001.safetensors").to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr.contains("keeps its own files"), "{stderr}");
    // Spelled differently for a folder still to be made, it is the same folder.
    let output = train(
        data.path(),
        &[
            "--checkpoint-dir",
            "./new-run",
            "--save",
            "new-run/step-0000000002.safetensors",
        ],
    )
    .current_dir(work.path())
    .output()
    .unwrap();
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("keeps its own files"), "{stderr}");
}
