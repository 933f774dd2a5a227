//! Checkpoints: the whole state of a training run in a safetensors file, so that a run killed at
//! any moment resumes bit for bit.
//!
//! A checkpoint folder holds `step-{steps done:010}.safetensors` files. Each is written atomically
//! (a killed write leaves a `.shadertrain-*` temporary file, never a partial checkpoint), so the
//! file with the highest step number is the newest complete checkpoint.
//!
//! Tensors: `parameters` F32 [P] in the flat buffer's layout (see `ParamLayout`); the update
//! rule's state (`UpdateRule::state_names`: `adam.m` and `adam.v` F32 [trained] with Adam and
//! AdamW, `sgd.momentum_buffer` with SGD's momentum); inside an epoch, `epoch.order` U32
//! [training samples] and `epoch.sample_loss` F32 [k], `epoch.sample_correct` U32 [k] for the k
//! samples trained so far in it. `__metadata__`: the model's description (as in model files), the
//! configuration, the counters, the generator's state, the adapter, and the last finished epoch's
//! record.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use clap::ValueEnum;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::data::DataIdentity;
use crate::error::{Error, Result};
use crate::files::{TEMP_PREFIX, write_atomically};
use crate::input::Augmentation;
use crate::model::ModelSpec;
use crate::model_file::{
    SavedModel, describe_model, model_from_bytes, name_of, parse_safetensors,
    read_model_description, serialize_in_fixed_order,
};
use crate::train::{EpochState, LrSchedule, OptimizerKind, TrainConfig, TrainingState, UpdateRule};

const FORMAT: &str = "shadertrain checkpoint 3";

/// The formats this version reads: its own, and version 2's (before momentum, weight decay,
/// schedules and label smoothing: their keys are absent, and read as off). Binaries that know
/// only version 2 refuse version 3 rather than resume without its schedule or decay.
const READABLE_FORMATS: [&str; 2] = [FORMAT, "shadertrain checkpoint 2"];

/// What a run trains and on what: everything a resumed run must agree with.
#[derive(Debug, Clone, PartialEq)]
pub struct RunDescription {
    pub data: DataIdentity,
    pub spec: ModelSpec,
    pub config: TrainConfig,
    pub train_samples: usize,
    pub test_samples: usize,
}

impl RunDescription {
    /// What in `asked` contradicts this run (a checkpoint's), one line per difference. The
    /// number of epochs, the step limit and the steps per submission may change on resume:
    /// they do not change the steps taken.
    pub fn contradictions(&self, asked: &RunDescription) -> Vec<String> {
        let describe = |run: &RunDescription| {
            let c = &run.config;
            [
                ("data (--data, --dataset)", run.data.describe()),
                (
                    "layers (--model, --layers, --hidden, --activation)",
                    run.spec.describe(),
                ),
                ("input shape", run.spec.input.to_string()),
                ("loss (--loss)", name_of(&run.spec.loss)),
                ("optimizer (--optimizer)", name_of(&c.optimizer)),
                ("learning rate (--lr)", c.learning_rate.to_string()),
                ("batch size (--batch-size)", c.batch_size.to_string()),
                ("seed (--seed)", c.seed.to_string()),
                ("shuffling (--no-shuffle)", on_off(c.shuffle).to_string()),
                (
                    "validation split (--validation-split)",
                    c.validation_split.to_string(),
                ),
                ("momentum (--momentum)", c.momentum.to_string()),
                (
                    "Nesterov momentum (--nesterov)",
                    on_off(c.nesterov).to_string(),
                ),
                ("weight decay (--weight-decay)", c.weight_decay.to_string()),
                (
                    "learning-rate schedule (--lr-schedule)",
                    name_of(&c.lr_schedule),
                ),
                ("warm-up (--warmup-epochs)", optional_text(c.warmup_epochs)),
                (
                    "label smoothing (--label-smoothing)",
                    c.label_smoothing.to_string(),
                ),
                ("augmentation (--augment)", c.augmentation.describe()),
                (
                    "test set held out of train/ (--validation-split)",
                    c.test_split.to_string(),
                ),
                (
                    "standardisation (--normalize)",
                    (run.spec.standardisation.as_ref()).map_or("off".to_string(), |s| s.describe()),
                ),
                (
                    "epochs, which the learning-rate schedule spans (--epochs)",
                    match c.lr_schedule.depends_on_length() {
                        true => c.epochs.to_string(),
                        false => "any".to_string(),
                    },
                ),
                ("Adam beta1", c.beta1.to_string()),
                ("Adam beta2", c.beta2.to_string()),
                ("Adam epsilon", c.epsilon.to_string()),
                ("training samples", run.train_samples.to_string()),
                ("test samples", run.test_samples.to_string()),
            ]
        };
        describe(self)
            .into_iter()
            .zip(describe(asked))
            .filter(|((_, saved), (_, wanted))| saved != wanted)
            .map(|((what, saved), (_, wanted))| {
                format!("{what}: the checkpoint has {saved}, this run asks for {wanted}")
            })
            .collect()
    }
}

fn on_off(flag: bool) -> &'static str {
    if flag { "on" } else { "off" }
}

/// A value as checkpoint metadata writes it: "none" where there is none.
fn optional_text<T: ToString>(value: Option<T>) -> String {
    value.map_or("none".to_string(), |v| v.to_string())
}

/// Where a run writes and reads, so that `--resume DIR` alone continues it as it was started.
/// Paths are absolute: a run may be resumed from another working folder.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunOutputs {
    /// `--save`, `--metrics`, `--metrics-every`, `--data`, `--keep-checkpoints`.
    pub save: Option<PathBuf>,
    pub metrics: Option<PathBuf>,
    pub metrics_every: Option<u64>,
    pub data: Option<PathBuf>,
    pub keep_checkpoints: Option<usize>,
    /// Lines in the `--metrics` log at this checkpoint (counting an epoch's line that follows
    /// its end-of-epoch checkpoint): a resumed run continues the log from there.
    pub metrics_lines: Option<usize>,
}

/// A training run's state with what is needed to check and continue it.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub run: RunDescription,
    pub outputs: RunOutputs,
    /// The adapter that trained it: bit-identical continuation needs the same one.
    pub adapter: String,
    /// The run's checkpoint interval in steps, if any: a resumed run keeps it unless told otherwise.
    pub checkpoint_every: Option<u64>,
    pub state: TrainingState,
    /// The record of the epoch that ended just before the checkpoint, as the caller wrote it
    /// (a metrics line without the clock's figures), so that a run killed before logging it can
    /// still log it.
    pub last_epoch: Option<String>,
}

/// The path of the checkpoint taken after `steps_done` steps.
pub fn path_for(dir: &Path, steps_done: u64) -> PathBuf {
    dir.join(format!("step-{steps_done:010}.safetensors"))
}

/// The complete checkpoints in `dir`, oldest first, with their step counts.
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        if let Some(steps) = name.to_str().and_then(checkpoint_steps) {
            found.push((steps, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// The newest complete checkpoint in `dir`, if it holds any.
pub fn newest(dir: &Path) -> Result<Option<PathBuf>> {
    Ok(list(dir)?.pop().map(|(_, path)| path))
}

/// A checkpoint that could not be read back whole, moved aside by `newest_intact`.
#[derive(Debug, Clone, PartialEq)]
pub struct SetAside {
    pub path: PathBuf,
    pub moved_to: PathBuf,
    pub problem: String,
}

/// A checkpoint read back, with its path.
pub type Found = (PathBuf, Checkpoint);

/// The newest checkpoint in `dir` that reads back whole, with its path. Newer ones that do not
/// (truncated, overwritten) are renamed aside, never deleted, and returned so that the caller
/// can say so. A file that is whole but not a checkpoint of this format is an error.
pub fn newest_intact(dir: &Path) -> Result<(Option<Found>, Vec<SetAside>)> {
    let mut set_aside = Vec::new();
    for (_, path) in list(dir)?.into_iter().rev() {
        match load(&path) {
            Ok(checkpoint) => return Ok((Some((path, checkpoint)), set_aside)),
            Err(Error::DamagedCheckpoint { problem, .. }) => {
                let moved_to = free_name(&path, "damaged");
                std::fs::rename(&path, &moved_to).map_err(|e| Error::io(&path, e))?;
                set_aside.push(SetAside {
                    path,
                    moved_to,
                    problem,
                });
            }
            Err(other) => return Err(other),
        }
    }
    Ok((None, set_aside))
}

/// `path` with `.{tag}` appended, numbered if that name is taken.
fn free_name(path: &Path, tag: &str) -> PathBuf {
    let with = |suffix: String| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    std::iter::once(format!(".{tag}"))
        .chain((2..).map(|n| format!(".{tag}.{n}")))
        .map(with)
        .find(|candidate| !candidate.exists())
        .expect("an unused name")
}

/// The lock file inside a checkpoint folder: one run at a time writes there.
pub const LOCK_FILE: &str = ".shadertrain.lock";

/// An exclusive lock on a checkpoint folder, held until dropped or until the process ends
/// (the OS releases it then, so a killed run never leaves a stale lock).
#[derive(Debug)]
pub struct FolderLock {
    _file: std::fs::File,
}

/// Locks `dir` (which must exist) for this process, or says which process holds it.
pub fn lock(dir: &Path) -> Result<FolderLock> {
    use std::io::{Seek, Write};
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(Error::FolderInUse {
                dir: dir.to_path_buf(),
                holder: holder_named_in(&mut file),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
    }
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .and_then(|()| file.flush())
        .map_err(|e| Error::io(&path, e))?;
    Ok(FolderLock { _file: file })
}

/// Who holds the lock of the checkpoint folder `dir` ("process 1234"), if another open lock
/// holds it; None when it is not a locked checkpoint folder. (The lock is per open file: a
/// folder this process has locked reads as held too.)
pub fn lock_holder(dir: &Path) -> Option<String> {
    let mut file = std::fs::File::open(dir.join(LOCK_FILE)).ok()?;
    match file.try_lock_shared() {
        Err(std::fs::TryLockError::WouldBlock) => Some(holder_named_in(&mut file)),
        _ => None,
    }
}

/// The process a lock file names ("process 1234"), as its holder wrote it.
fn holder_named_in(lock_file: &mut std::fs::File) -> String {
    use std::io::Read;
    let mut holder = String::new();
    let _ = lock_file.read_to_string(&mut holder);
    match holder.trim() {
        "" => "another process".to_string(),
        pid => format!("process {pid}"),
    }
}

/// Whether a file named as `path` would be one that a checkpoint folder manages: a
/// checkpoint, the lock, a temporary file.
pub fn is_managed_name(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    name == LOCK_FILE || name.starts_with(TEMP_PREFIX) || checkpoint_steps(name).is_some()
}

/// The step count in a checkpoint's file name (`step-0000000042.safetensors`).
fn checkpoint_steps(name: &str) -> Option<u64> {
    name.strip_prefix("step-")?
        .strip_suffix(".safetensors")?
        .parse()
        .ok()
}

/// Removes the temporary files that killed writes left in `dir`; returns how many.
pub fn remove_temporary_files(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            std::fs::remove_file(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Writes `checkpoint` into `dir` atomically, then deletes all but the newest `keep` checkpoints
/// there. Returns the new file's path.
pub fn save(dir: &Path, checkpoint: &Checkpoint, keep: usize) -> Result<PathBuf> {
    let path = path_for(dir, checkpoint.state.steps_done);
    write_atomically(&path, &serialise(checkpoint, &path)?)?;
    let all = list(dir)?;
    for (_, old) in &all[..all.len().saturating_sub(keep.max(1))] {
        std::fs::remove_file(old).map_err(|e| Error::io(old, e))?;
    }
    Ok(path)
}

fn serialise(checkpoint: &Checkpoint, path: &Path) -> Result<Vec<u8>> {
    let run = &checkpoint.run;
    let c = &run.config;
    let state = &checkpoint.state;
    let mut metadata = describe_model(&run.spec, &run.data);
    let optional = optional_text::<u64>;
    for (key, value) in [
        ("format", FORMAT.to_string()),
        ("optimizer", name_of(&c.optimizer)),
        ("learning_rate", c.learning_rate.to_string()),
        ("beta1", c.beta1.to_string()),
        ("beta2", c.beta2.to_string()),
        ("epsilon", c.epsilon.to_string()),
        ("batch_size", c.batch_size.to_string()),
        ("seed", c.seed.to_string()),
        ("shuffle", c.shuffle.to_string()),
        ("epochs", c.epochs.to_string()),
        ("max_steps", optional(c.max_steps)),
        ("validation_split", c.validation_split.to_string()),
        ("momentum", c.momentum.to_string()),
        ("nesterov", c.nesterov.to_string()),
        ("weight_decay", c.weight_decay.to_string()),
        ("lr_schedule", name_of(&c.lr_schedule)),
        ("warmup_epochs", optional_text(c.warmup_epochs)),
        ("label_smoothing", c.label_smoothing.to_string()),
        ("augmentation", c.augmentation.describe()),
        ("test_split", c.test_split.to_string()),
        (
            "batches_tracked_before",
            c.batches_tracked_before.to_string(),
        ),
        ("steps_per_submit", c.steps_per_submit.to_string()),
        ("train_samples", run.train_samples.to_string()),
        ("test_samples", run.test_samples.to_string()),
        ("adapter", checkpoint.adapter.clone()),
        ("checkpoint_every", optional(checkpoint.checkpoint_every)),
        ("steps_done", state.steps_done.to_string()),
        ("epochs_done", state.epochs_done.to_string()),
        ("rng_state", state.rng_state.to_string()),
        (
            "epoch_steps_taken",
            state
                .epoch
                .as_ref()
                .map_or("none".to_string(), |e| e.steps_taken.to_string()),
        ),
    ] {
        metadata.insert(key.to_string(), value);
    }
    if let Some(record) = &checkpoint.last_epoch {
        metadata.insert("last_epoch".to_string(), record.clone());
    }
    let outputs = &checkpoint.outputs;
    let path_text =
        |path: &Option<PathBuf>| path.as_ref().and_then(|p| p.to_str()).map(str::to_string);
    for (key, value) in [
        ("output.save", path_text(&outputs.save)),
        ("output.metrics", path_text(&outputs.metrics)),
        (
            "output.metrics_every",
            outputs.metrics_every.map(|n| n.to_string()),
        ),
        ("output.data", path_text(&outputs.data)),
        (
            "output.keep_checkpoints",
            outputs.keep_checkpoints.map(|n| n.to_string()),
        ),
        (
            "output.metrics_lines",
            outputs.metrics_lines.map(|n| n.to_string()),
        ),
    ] {
        if let Some(value) = value {
            metadata.insert(key.to_string(), value);
        }
    }

    let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let u32_bytes = |v: &[u32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let mut tensors = vec![("parameters", Dtype::F32, f32_bytes(&state.parameters))];
    let names = UpdateRule::of(c).state_names();
    if names.len() != state.optimizer_state.len() {
        return Err(Error::Checkpoint {
            path: path.to_path_buf(),
            problem: format!(
                "the training state has {} optimizer tensors, its optimizer keeps {}",
                state.optimizer_state.len(),
                names.len()
            ),
        });
    }
    for (name, values) in names.iter().zip(&state.optimizer_state) {
        tensors.push((*name, Dtype::F32, f32_bytes(values)));
    }
    if let Some(e) = &state.epoch {
        tensors.push(("epoch.order", Dtype::U32, u32_bytes(&e.order)));
        tensors.push(("epoch.sample_loss", Dtype::F32, f32_bytes(&e.sample_loss)));
        tensors.push((
            "epoch.sample_correct",
            Dtype::U32,
            u32_bytes(&e.sample_correct),
        ));
    }
    let views = tensors
        .iter()
        .map(|(name, dtype, bytes)| {
            TensorView::new(*dtype, vec![bytes.len() / 4], bytes).map(|view| (*name, view))
        })
        .collect::<Result<Vec<_>, _>>()
        .expect("tensor shapes match their data");
    serialize_in_fixed_order(views, metadata).map_err(|problem| Error::Checkpoint {
        path: path.to_path_buf(),
        problem,
    })
}

/// The model in a file `eval` or `predict` is given: a model file as `load_model` reads it, or a
/// checkpoint's weights with its model and data, and then the steps it was taken after.
pub fn load_model_or_checkpoint(path: &Path) -> Result<(SavedModel, Option<u64>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let is_checkpoint = parse_safetensors(&bytes, &|problem| Error::ModelFile {
        path: path.to_path_buf(),
        problem,
    })
    .is_ok_and(|(_, metadata)| {
        metadata.is_some_and(|m| {
            (m.get("format")).is_some_and(|format| READABLE_FORMATS.contains(&format.as_str()))
        })
    });
    if !is_checkpoint {
        return Ok((model_from_bytes(path, &bytes)?, None));
    }
    let checkpoint = from_bytes(path, &bytes)?;
    let saved = SavedModel {
        spec: checkpoint.run.spec,
        params: checkpoint.state.parameters,
        data: checkpoint.run.data,
        batches_tracked: (checkpoint.run.config.batches_tracked_before)
            .saturating_add(checkpoint.state.steps_done),
    };
    Ok((saved, Some(checkpoint.state.steps_done)))
}

/// Reads a checkpoint written by `save`, checking every tensor against the metadata.
pub fn load(path: &Path) -> Result<Checkpoint> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    from_bytes(path, &bytes)
}

/// `load` on the file's bytes; `path` only names it in errors.
pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Checkpoint> {
    let bad = |problem: String| Error::Checkpoint {
        path: path.to_path_buf(),
        problem,
    };
    let damaged = |problem: String| Error::DamagedCheckpoint {
        path: path.to_path_buf(),
        problem,
    };
    let (file, metadata) = parse_safetensors(bytes, &damaged)?;
    let metadata =
        metadata.ok_or_else(|| bad("no __metadata__: not a shadertrain checkpoint".into()))?;
    if !(metadata.get("format")).is_some_and(|format| READABLE_FORMATS.contains(&format.as_str())) {
        return Err(bad(match metadata.get("format") {
            Some(format) => {
                format!(
                    "not a shadertrain checkpoint (its format is \"{format}\", expected \"{FORMAT}\")"
                )
            }
            None => "not a shadertrain checkpoint (its metadata names no format)".into(),
        }));
    }
    let meta = Metadata {
        map: &metadata,
        bad: &bad,
    };
    let (spec, data) = read_model_description(&metadata).map_err(bad)?;
    let optimizer_name = meta.text("optimizer")?;
    let optimizer = OptimizerKind::from_str(&optimizer_name, true)
        .map_err(|_| bad(format!("unknown optimizer {optimizer_name:?}")))?;
    let lr_schedule = match meta.if_present::<String>("lr_schedule")? {
        None => LrSchedule::Constant,
        Some(name) => LrSchedule::from_str(&name, true)
            .map_err(|_| bad(format!("unknown learning-rate schedule {name:?}")))?,
    };
    let config = TrainConfig {
        epochs: meta.value("epochs")?,
        batch_size: meta.value("batch_size")?,
        learning_rate: meta.value("learning_rate")?,
        seed: meta.value("seed")?,
        optimizer,
        beta1: meta.value("beta1")?,
        beta2: meta.value("beta2")?,
        epsilon: meta.value("epsilon")?,
        steps_per_submit: meta.value("steps_per_submit")?,
        shuffle: meta.value("shuffle")?,
        max_steps: meta.optional("max_steps")?,
        validation_split: meta.value("validation_split")?,
        momentum: meta.if_present("momentum")?.unwrap_or(0.0),
        nesterov: meta.if_present("nesterov")?.unwrap_or(false),
        weight_decay: meta.if_present("weight_decay")?.unwrap_or(0.0),
        lr_schedule,
        warmup_epochs: meta
            .if_present::<String>("warmup_epochs")?
            .map_or(Ok(None), |_| meta.optional("warmup_epochs"))?,
        label_smoothing: meta.if_present("label_smoothing")?.unwrap_or(0.0),
        augmentation: match meta.if_present::<String>("augmentation")? {
            None => Augmentation::default(),
            Some(text) => Augmentation::parse(&text)
                .map_err(|e| bad(format!("__metadata__ augmentation: {e}")))?,
        },
        test_split: meta.if_present("test_split")?.unwrap_or(0.0),
        batches_tracked_before: meta.if_present("batches_tracked_before")?.unwrap_or(0),
    };
    config.validate().map_err(|e| bad(e.to_string()))?;
    let run = RunDescription {
        data,
        spec,
        config,
        train_samples: meta.value("train_samples")?,
        test_samples: meta.value("test_samples")?,
    };

    let layout = run.spec.layout();
    let parameter_count = layout.total;
    let tensors = Tensors {
        file: &file,
        bad: &bad,
    };
    let parameters = tensors.f32s("parameters", parameter_count)?;
    let optimizer_state = (UpdateRule::of(&run.config).state_names().iter())
        .map(|name| tensors.f32s(name, layout.trained))
        .collect::<Result<Vec<_>>>()?;
    let epoch = match meta.optional::<usize>("epoch_steps_taken")? {
        None => None,
        Some(steps_taken) => {
            let order = tensors.u32s("epoch.order", run.train_samples)?;
            let trained = file
                .tensor("epoch.sample_loss")
                .map(|t| t.shape().iter().product())
                .unwrap_or(0);
            Some(EpochState {
                order,
                steps_taken,
                sample_loss: tensors.f32s("epoch.sample_loss", trained)?,
                sample_correct: tensors.u32s("epoch.sample_correct", trained)?,
            })
        }
    };
    let expected_tensors = 1 + optimizer_state.len() + 3 * usize::from(epoch.is_some());
    if file.len() != expected_tensors {
        return Err(bad(format!(
            "holds {} tensors, expected {expected_tensors}",
            file.len()
        )));
    }
    let outputs = RunOutputs {
        save: metadata.get("output.save").map(PathBuf::from),
        metrics: metadata.get("output.metrics").map(PathBuf::from),
        metrics_every: meta.if_present("output.metrics_every")?,
        data: metadata.get("output.data").map(PathBuf::from),
        keep_checkpoints: meta.if_present("output.keep_checkpoints")?,
        metrics_lines: meta.if_present("output.metrics_lines")?,
    };
    Ok(Checkpoint {
        run,
        outputs,
        adapter: meta.text("adapter")?,
        checkpoint_every: meta.optional("checkpoint_every")?,
        state: TrainingState {
            parameters,
            optimizer_state,
            steps_done: meta.value("steps_done")?,
            epochs_done: meta.value("epochs_done")?,
            rng_state: meta.value("rng_state")?,
            epoch,
        },
        last_epoch: metadata.get("last_epoch").cloned(),
    })
}

/// Typed access to `__metadata__`, with errors that name the key.
struct Metadata<'a> {
    map: &'a HashMap<String, String>,
    bad: &'a dyn Fn(String) -> Error,
}

impl Metadata<'_> {
    fn text(&self, key: &str) -> Result<String> {
        self.map
            .get(key)
            .cloned()
            .ok_or_else(|| (self.bad)(format!("__metadata__ lacks {key:?}")))
    }

    fn value<T: FromStr>(&self, key: &str) -> Result<T> {
        let text = self.text(key)?;
        text.parse()
            .map_err(|_| (self.bad)(format!("__metadata__ {key} = {text:?} is not valid")))
    }

    /// A value where the key is present (keys added after the format's first version).
    fn if_present<T: FromStr>(&self, key: &str) -> Result<Option<T>> {
        match self.map.contains_key(key) {
            true => self.value(key).map(Some),
            false => Ok(None),
        }
    }

    /// A value, or "none".
    fn optional<T: FromStr>(&self, key: &str) -> Result<Option<T>> {
        match self.text(key)?.as_str() {
            "none" => Ok(None),
            _ => self.value(key).map(Some),
        }
    }
}

/// Typed, length-checked access to the tensors.
struct Tensors<'a> {
    file: &'a SafeTensors<'a>,
    bad: &'a dyn Fn(String) -> Error,
}

impl Tensors<'_> {
    fn words(&self, name: &str, dtype: Dtype, len: usize) -> Result<Vec<[u8; 4]>> {
        let view = self
            .file
            .tensor(name)
            .map_err(|_| (self.bad)(format!("tensor {name} is missing")))?;
        if view.dtype() != dtype || view.shape() != [len] {
            return Err((self.bad)(format!(
                "tensor {name} is {:?} {:?}, expected {dtype:?} [{len}]",
                view.dtype(),
                view.shape()
            )));
        }
        Ok(view
            .data()
            .chunks_exact(4)
            .map(|b| [b[0], b[1], b[2], b[3]])
            .collect())
    }

    fn f32s(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        Ok(self
            .words(name, Dtype::F32, len)?
            .into_iter()
            .map(f32::from_le_bytes)
            .collect())
    }

    fn u32s(&self, name: &str, len: usize) -> Result<Vec<u32>> {
        Ok(self
            .words(name, Dtype::U32, len)?
            .into_iter()
            .map(u32::from_le_bytes)
            .collect())
    }
}
