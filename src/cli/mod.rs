//! What the commands do beyond parsing: finding or fetching data, and showing progress.

use std::path::{Path, PathBuf};

pub mod bench;
pub mod eval;
pub mod explain;
pub mod output;
pub mod predict;
pub mod recipe;
pub mod signals;
pub mod train;
pub mod web;

use indicatif::{ProgressBar, ProgressStyle};
use shadertrain::data::download::{DownloadEvent, DownloadOptions, download, download_archive};
use shadertrain::data::folder::{self, FolderOptions};
use shadertrain::data::{
    DATA_ENV, DataIdentity, Dataset, DatasetKind, Split, candidate_dirs, default_dir, locate_files,
    missing_files,
};
use shadertrain::gpu::{AdapterRequest, Gpu, Kernels};
use shadertrain::model_file::SavedModel;
use shadertrain::{Error, Result, selftest};

/// The folder holding the dataset's files `stems`: found where `candidate_dirs` says, else
/// downloaded (into the named folder, or `data/<dataset>/`) unless `offline`.
pub fn dataset_dir(
    kind: DatasetKind,
    named: Option<&Path>,
    offline: bool,
    stems: &[&str],
) -> Result<PathBuf> {
    if let Some(dir) = locate_files(kind, named, stems) {
        return Ok(dir);
    }
    let target = named
        .map(Path::to_path_buf)
        .unwrap_or_else(|| default_dir(kind));
    if offline {
        let candidates = candidate_dirs(kind, named);
        let lacks = |dir: &Path| -> String {
            let batches = shadertrain::data::cifar::batches_dir(dir);
            let dir = if kind == DatasetKind::Cifar10 {
                &batches
            } else {
                dir
            };
            let missing = missing_files(dir, stems);
            if !dir.is_dir() {
                "does not exist".into()
            } else if missing.len() == stems.len() {
                format!("holds none of {}'s files", kind.name())
            } else {
                let missing: Vec<String> = missing.iter().map(|s| format!("{s}[.gz]")).collect();
                format!("lacks {}", missing.join(" and "))
            }
        };
        let findings: Vec<String> = match &candidates[..] {
            [only] => vec![format!("the folder {}", lacks(only))],
            all => all
                .iter()
                .map(|dir| format!("{} {}", dir.display(), lacks(dir)))
                .collect(),
        };
        return Err(Error::Dataset {
            dir: target.clone(),
            problem: format!(
                "{}, and --offline forbids downloading. Put {}'s files ({}{}) in {}, point --data \
                 or {DATA_ENV} at a folder that has them, or drop --offline",
                findings.join("; "),
                kind.name(),
                stems.join(", "),
                match kind {
                    DatasetKind::Cifar10 => ", in cifar-10-batches-bin/",
                    _ => ", each raw or .gz",
                },
                target.display()
            ),
        });
    }
    errln!(
        "{} not found; downloading it into {}",
        kind.name(),
        target.display()
    );
    fetch_files(kind, &target, stems)?;
    Ok(match kind {
        DatasetKind::Cifar10 => shadertrain::data::cifar::batches_dir(&target),
        _ => target,
    })
}

/// The model a file holds, model file or checkpoint; a checkpoint is said so on stderr.
pub fn load_model_or_checkpoint(path: &Path) -> Result<SavedModel> {
    let (saved, steps) = shadertrain::checkpoint::load_model_or_checkpoint(path)?;
    if let Some(steps) = steps {
        errln!(
            "note: {} is a training checkpoint; using its weights after step {steps}",
            path.display()
        );
    }
    Ok(saved)
}

/// Downloads the whole dataset: `fetch_files` of all its files.
pub fn fetch_dataset(kind: DatasetKind, dir: &Path) -> Result<()> {
    fetch_files(kind, dir, kind.files())
}

/// The test split in `dir`, refused unless it is the data the model was trained on or
/// `other_data` allows it; with what the files are.
pub fn model_test_set(
    model: &Path,
    saved: &SavedModel,
    dir: &Path,
    other_data: bool,
) -> Result<(Dataset, DataIdentity)> {
    let (test, read) = match saved.data.labels {
        DatasetKind::Folder => {
            // Decoded as the model's input: its size and channels.
            let input = saved.spec.input;
            let options = FolderOptions {
                size: Some((input.height as u32, input.width as u32)),
                channels: Some(input.channels),
            };
            let classes = saved.data.classes.clone().unwrap_or_default();
            let test = folder::load(dir, Split::Test, options, Some(&classes))?;
            let md5 = shadertrain::data::FileDigests::from([("test".to_string(), test.md5)]);
            let read = DataIdentity {
                classes: Some(classes),
                ..DataIdentity::identify(md5, DatasetKind::Folder)
            };
            (test.data, read)
        }
        kind => {
            let (test, digests) = Dataset::load_digested(kind, dir, Split::Test)?;
            (test, DataIdentity::identify(digests, kind))
        }
    };
    if !other_data && !saved.data.same_as(&read) {
        return Err(Error::Dataset {
            dir: dir.to_path_buf(),
            problem: format!(
                "its test files are {}, but {} was trained on {}: point --data at the model's \
                 data, or pass --allow-other-data to use these on purpose",
                read.describe(),
                model.display(),
                saved.data.describe()
            ),
        });
    }
    Ok((test, read))
}

/// Downloads the files `stems` of the dataset, with a progress bar per file on a terminal, plain
/// lines otherwise.
fn fetch_files(kind: DatasetKind, dir: &Path, stems: &[&str]) -> Result<()> {
    let mut bar: Option<ProgressBar> = None;
    let mut on_event = |event: DownloadEvent| match event {
        DownloadEvent::AlreadyPresent { file } => errln!("{file}: already present and verified"),
        DownloadEvent::Started { file, url, bytes } => {
            let b = ProgressBar::with_draw_target(bytes, indicatif::ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            b.set_message(file.to_string());
            if b.is_hidden() {
                errln!("{file}: fetching {url}");
            }
            bar = Some(b);
        }
        DownloadEvent::Progress { received, .. } => {
            if let Some(b) = &bar {
                b.set_position(received);
            }
        }
        DownloadEvent::MirrorFailed { file, url, reason } => {
            if let Some(b) = bar.take() {
                b.abandon();
            }
            errln!("{file}: {url} failed: {reason}; trying the next mirror");
        }
        DownloadEvent::Verified { file, .. } => {
            if let Some(b) = bar.take() {
                b.finish_and_clear();
            }
            errln!("{file}: downloaded, checksum verified");
        }
    };
    if kind == DatasetKind::Cifar10 {
        let archive = shadertrain::data::cifar::archive();
        return download_archive(&archive, dir, &DownloadOptions::default(), &mut on_event);
    }
    let mut source = kind.source();
    source
        .files
        .retain(|file| stems.contains(&file.stem.as_str()));
    download(&source, dir, &DownloadOptions::default(), &mut on_event)
}

/// `shadertrain selftest`: one line per kernel check, then a verdict.
pub fn selftest(request: &AdapterRequest) -> Result<()> {
    let gpu = Gpu::open(request)?;
    let kernels = Kernels::new(&gpu);
    outln!("adapter: {}", gpu.adapter_name());
    let mut failed = Vec::new();
    for check in &selftest::CHECKS {
        let name = check.name;
        let result = selftest::run(&gpu, &kernels, name)?;
        let verdict = if result.passed() { "ok  " } else { "FAIL" };
        outln!(
            "{verdict} {name:<40} {:>20}  ({})",
            share_of_tolerance(result.worst_ratio),
            result.worst
        );
        if !result.passed() {
            failed.push(name);
        }
    }
    if failed.is_empty() {
        outln!("selftest passed: every kernel matches the CPU reference on this adapter");
        Ok(())
    } else {
        Err(Error::SelftestFailed(failed.join(", ")))
    }
}

/// A check's worst error as a share of its tolerance: "bit-exact", "0.15× the tolerance".
fn share_of_tolerance(ratio: f64) -> String {
    match ratio {
        0.0 => "bit-exact".into(),
        r if r < 0.01 => format!("{r:.1e}× the tolerance"),
        r => format!("{r:.2}× the tolerance"),
    }
}
