//! The web page's side of the trainer, compiled to wasm32 (`shadertrain web` builds it): the
//! same kernels and the same `Trainer` as the command line, through the browser's WebGPU. The
//! page hands over the dataset files it read from the user's disk and its settings, then drives
//! training a chunk of steps at a time, awaiting each chunk's running metrics; nothing here
//! blocks (a page may not) and nothing is sent anywhere.
//!
//! Every function returns a promise (or a value) to `page.js`; figures travel as JSON text.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

use image::GrayImage;
use wasm_bindgen::prelude::*;

use crate::data::idx::read_idx_u8_from;
use crate::data::images::Preparation;
use crate::data::{DataIdentity, Dataset, DatasetKind, Split, cifar, folder};
use crate::explain::reference_map;
use crate::gpu::{AdapterRequest, Gpu, Kernels};
use crate::input::{Standardisation, scale_pixels};
use crate::model::reference::{forward, top_classes};
use crate::model::{Loss, ModelSpec};
use crate::model_file::{SavedModel, model_file_bytes, model_from_bytes};
use crate::train::{
    EpochMetrics, EpochProgress, ModelPreset, TrainConfig, Trainer, TrainingChoices,
};

/// The device and its kernels: opened once per page and kept for its life, so that every
/// trainer the page builds borrows them.
struct Device {
    gpu: Gpu,
    kernels: Kernels,
}

/// A run the page has started.
struct Session {
    trainer: Trainer<'static>,
    data: DataIdentity,
}

thread_local! {
    static DEVICE: RefCell<Option<&'static Device>> = const { RefCell::new(None) };
    /// The dataset files the page has handed over, by name (or path inside a chosen folder).
    static FILES: RefCell<HashMap<String, Vec<u8>>> = RefCell::new(HashMap::new());
    /// The run; taken out while a call awaits the GPU, so that a second call meanwhile is
    /// refused instead of racing it.
    static SESSION: RefCell<Option<Session>> = const { RefCell::new(None) };
    /// A model the user loaded: what the page classifies and evaluates with while no run is
    /// under way, and what the next run fine-tunes.
    static LOADED: RefCell<Option<SavedModel>> = const { RefCell::new(None) };
}

fn failed(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// Opens the browser's WebGPU device (once) and builds the kernels; the adapter's name.
#[wasm_bindgen]
pub async fn open_device() -> Result<String, JsError> {
    if let Some(device) = DEVICE.with_borrow(|d| *d) {
        return Ok(device.gpu.adapter_name());
    }
    let gpu = Gpu::open_async(&AdapterRequest::default())
        .await
        .map_err(failed)?;
    let kernels = Kernels::new(&gpu);
    let device: &'static Device = Box::leak(Box::new(Device { gpu, kernels }));
    DEVICE.with_borrow_mut(|d| *d = Some(device));
    Ok(device.gpu.adapter_name())
}

/// Keeps one dataset file the user chose (its name as on disk, raw or `.gz`) for `start`.
#[wasm_bindgen]
pub fn add_file(name: String, bytes: Vec<u8>) {
    FILES.with_borrow_mut(|files| files.insert(name, bytes));
}

/// Forgets the files handed over.
#[wasm_bindgen]
pub fn clear_files() {
    FILES.with_borrow_mut(HashMap::clear);
}

/// The dataset the chosen files' format says they are: CIFAR-10 for its binary batches (as
/// `--dataset cifar10` says of a folder of them: their class names and recipe, whatever their
/// content), an image folder for files chosen as a folder holding `train/`, None for
/// MNIST-format files (known by their content, else custom).
fn chosen_format() -> Option<DatasetKind> {
    if folder_root().is_some() {
        return Some(DatasetKind::Folder);
    }
    FILES
        .with_borrow(|files| files.contains_key(cifar::TEST_FILES[0]))
        .then_some(DatasetKind::Cifar10)
}

/// The folder the user chose, where its files were chosen as one (`ROOT/train/<class>/<file>`).
fn folder_root() -> Option<String> {
    FILES.with_borrow(|files| {
        files.keys().find_map(|name| {
            let parts: Vec<&str> = name.split('/').collect();
            (parts.len() >= 4 && parts[1] == "train").then(|| parts[0].to_string())
        })
    })
}

/// The training and test sets of the files handed over, and what data they are: as `train`
/// reads them from a folder holding the same files.
fn data_from_files() -> Result<(Dataset, Dataset, DataIdentity), JsError> {
    if let Some(root) = folder_root() {
        return folder_from_files(&root);
    }
    let (train_set, mut digests) = split_from_files(Split::Train)?;
    let (test_set, test_digests) = split_from_files(Split::Test)?;
    digests.extend(test_digests);
    let data = DataIdentity::identify(digests, chosen_format().unwrap_or_default());
    Ok((train_set, test_set, data))
}

/// An image folder (torchvision's ImageFolder layout) chosen in the page: `root/train/<class>/`
/// and `root/test/<class>/`, decoded as `train --dataset folder` decodes them (no resizing: the
/// images must share one size).
fn folder_from_files(root: &str) -> Result<(Dataset, Dataset, DataIdentity), JsError> {
    let source = folder_source(root)?;
    let (dir, options) = (Path::new(root), folder::FolderOptions::default());
    let train = folder::load_from(&source, dir, Split::Train, options, None).map_err(failed)?;
    let test = folder::load_from(&source, dir, Split::Test, options, Some(&train.class_names))
        .map_err(failed)?;
    let md5 = crate::data::FileDigests::from([
        ("train".to_string(), train.md5),
        ("test".to_string(), test.md5),
    ]);
    let data = DataIdentity {
        classes: Some(train.class_names),
        ..DataIdentity::identify(md5, DatasetKind::Folder)
    };
    Ok((train.data, test.data, data))
}

/// The chosen folder's files, by their paths (under `root`); an error where it has no test/.
fn folder_source(root: &str) -> Result<folder::InMemory, JsError> {
    let prefix = format!("{root}/");
    let source = folder::InMemory(FILES.with_borrow(|files| {
        (files.iter())
            .filter(|(name, _)| name.starts_with(&prefix))
            .map(|(name, bytes)| (name.into(), bytes.clone()))
            .collect()
    }));
    match folder::FolderFiles::is_dir(&source, &folder::split_dir(Path::new(root), Split::Test)) {
        true => Ok(source),
        false => Err(JsError::new(&format!(
            "{root} has no test/ folder: the page takes an image folder with train/<class>/ and \
             test/<class>/ sub-folders"
        ))),
    }
}

/// The test set of the files handed over, without decoding the training set: an image folder's
/// classes are its train/ sub-folders, as its training split names them.
fn test_set_from_files() -> Result<Dataset, JsError> {
    let Some(root) = folder_root() else {
        return Ok(split_from_files(Split::Test)?.0);
    };
    let source = folder_source(&root)?;
    let dir = Path::new(&root);
    let classes = folder::FolderFiles::subfolders(&source, &folder::split_dir(dir, Split::Train))
        .map_err(failed)?;
    let options = folder::FolderOptions::default();
    let test = folder::load_from(&source, dir, Split::Test, options, Some(&classes));
    Ok(test.map_err(failed)?.data)
}

/// One split of the files handed over: CIFAR-10's binary batches where `test_batch.bin` is among
/// them, else an MNIST-format dataset, each found by its standard names.
fn split_from_files(split: Split) -> Result<(Dataset, crate::data::FileDigests), JsError> {
    if chosen_format() == Some(DatasetKind::Cifar10) {
        let chosen = Path::new("the chosen files");
        return cifar::from_batches(chosen, split, |name| {
            FILES
                .with_borrow(|files| files.get(name).cloned())
                .ok_or_else(|| crate::Error::Dataset {
                    dir: chosen.to_path_buf(),
                    problem: format!(
                        "no file {name} was chosen: CIFAR-10's binary version is \
                         data_batch_1.bin … data_batch_5.bin and test_batch.bin"
                    ),
                })
        })
        .map_err(failed);
    }
    mnist_split_from_files(split)
}

/// One split of the MNIST-format files handed over, found by their standard names.
fn mnist_split_from_files(split: Split) -> Result<(Dataset, crate::data::FileDigests), JsError> {
    let (image_stem, label_stem) = split.file_stems();
    let read = |stem: &str| {
        FILES.with_borrow(|files| {
            let (name, bytes) = [stem.to_string(), format!("{stem}.gz")]
                .into_iter()
                .find_map(|name| files.get(&name).map(|bytes| (name, bytes)))
                .ok_or_else(|| {
                    JsError::new(&format!(
                        "no file {stem} (or {stem}.gz) was chosen: choose the four files of an \
                         MNIST-format dataset (train-images-idx3-ubyte, train-labels-idx1-ubyte, \
                         t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte)"
                    ))
                })?;
            let path = Path::new(&name).to_path_buf();
            let idx = read_idx_u8_from(&path, &bytes[..]).map_err(failed)?;
            Ok::<_, JsError>((path, idx))
        })
    };
    let (image_path, images) = read(image_stem)?;
    let (label_path, labels) = read(label_stem)?;
    Dataset::mnist_from_idx(
        Path::new("the chosen files"),
        split,
        (&image_path, images),
        (&label_path, labels),
    )
    .map_err(failed)
}

/// What the page's settings form holds; an absent figure takes the preset's default.
#[derive(serde::Deserialize)]
struct Settings {
    preset: String,
    epochs: Option<usize>,
    batch_size: Option<usize>,
    lr: Option<f32>,
    seed: Option<u64>,
}

fn preset_named(name: &str) -> Result<ModelPreset, JsError> {
    <ModelPreset as clap::ValueEnum>::from_str(name, true)
        .map_err(|_| JsError::new(&format!("unknown preset {name:?}")))
}

/// The preset whose network `spec` is, if any (its standardisation aside).
fn preset_of(spec: &ModelSpec) -> Option<ModelPreset> {
    let network = ModelSpec {
        standardisation: None,
        ..spec.clone()
    };
    <ModelPreset as clap::ValueEnum>::value_variants()
        .iter()
        .copied()
        .find(|preset| preset.spec(spec.input, spec.classes(), spec.loss) == network)
}

/// Builds a run from the files handed over and `settings` (JSON: `preset`, and optionally
/// `epochs`, `batch_size`, `lr`, `seed`), as `shadertrain train --model PRESET` would with
/// the same flags; where a model was loaded, the run fine-tunes it instead of the preset. A
/// description of the run as JSON.
#[wasm_bindgen]
pub fn start(settings: &str) -> Result<String, JsError> {
    let device = DEVICE
        .with_borrow(|d| *d)
        .ok_or_else(|| JsError::new("open the device first"))?;
    let settings: Settings = serde_json::from_str(settings).map_err(failed)?;
    let preset = preset_named(&settings.preset)?;
    let format = chosen_format();
    let (train_set, test_set, data) = data_from_files()?;
    let loaded = LOADED.with_borrow(Clone::clone);
    let defaults = TrainingChoices::default();
    let choices = TrainingChoices {
        epochs: settings.epochs,
        batch_size: settings.batch_size.unwrap_or(defaults.batch_size),
        lr: settings.lr,
        seed: settings.seed.unwrap_or(defaults.seed),
        ..defaults
    };
    // A loaded model is fine-tuned: its network (and standardisation) instead of the chosen
    // preset's, with the recipe of the preset it is (`train --init` with its --model), else a
    // layer list's.
    let mut spec = match &loaded {
        Some(saved) => saved.spec.clone(),
        None => preset.spec(train_set.shape, train_set.classes, Loss::Xent),
    };
    let preset = match &loaded {
        Some(saved) => preset_of(&saved.spec),
        None => Some(preset),
    };
    if let Some(preset) = preset.filter(|p| p.resnet_blocks().is_some()) {
        // The ResNet recipe standardises its inputs by the training part's statistics.
        let (training, _) = (train_set
            .split_validation(choices.validation_split_for(Some(preset))))
        .map_err(failed)?;
        spec.standardisation = Some(Standardisation::of(&training).map_err(failed)?);
    }
    spec.validate().map_err(failed)?;
    let config = choices
        .config(preset, spec.loss, data.dataset.or(format))
        .map_err(failed)?;
    let config = TrainConfig {
        batches_tracked_before: loaded.as_ref().map_or(0, |saved| saved.batches_tracked),
        ..config
    };
    config.validate().map_err(failed)?;
    let trainer = Trainer::new(
        &device.gpu,
        &device.kernels,
        spec,
        config,
        &train_set,
        &test_set,
    )
    .map_err(failed)?;
    if let Some(saved) = &loaded {
        trainer.set_parameters(&saved.params).map_err(failed)?;
    }
    let run = serde_json::json!({
        "adapter": device.gpu.adapter_name(),
        "data": data.describe(),
        "model": trainer.spec().describe(),
        "parameters": trainer.layout().trained,
        "train_samples": train_set.samples(),
        "test_samples": test_set.samples(),
        "epochs": trainer.config().epochs,
        "batch_size": trainer.config().batch_size,
        "learning_rate": trainer.config().learning_rate,
    });
    SESSION.with_borrow_mut(|s| *s = Some(Session { trainer, data }));
    // The run fine-tunes the loaded model from here on.
    LOADED.with_borrow_mut(|m| *m = None);
    Ok(run.to_string())
}

/// Takes the run out for a call that awaits the GPU.
fn take_session() -> Result<Session, JsError> {
    SESSION
        .with_borrow_mut(Option::take)
        .ok_or_else(|| JsError::new("no run: start one (or wait for the call under way)"))
}

fn put_back(session: Session) {
    SESSION.with_borrow_mut(|s| *s = Some(session));
}

fn progress_json(p: &EpochProgress) -> serde_json::Value {
    serde_json::json!({
        "epoch": p.epoch,
        "steps_done": p.steps_done,
        "steps": p.steps,
        "running_loss": p.running_loss,
        "running_accuracy": p.running_accuracy,
    })
}

fn metrics_json(m: &EpochMetrics, epochs: usize) -> serde_json::Value {
    serde_json::json!({
        "epoch": m.epoch,
        "train_loss": m.train_loss,
        "train_accuracy": m.train_accuracy,
        "validation_loss": m.validation.as_ref().map(|v| v.loss),
        "validation_accuracy": m.validation.as_ref().map(|v| v.accuracy),
        "test_loss": m.test_loss,
        "test_accuracy": m.test_accuracy,
        "seconds": m.seconds,
        "samples_per_second": m.samples_per_second,
        "learning_rate": m.learning_rate,
        "finished": m.epoch >= epochs,
    })
}

/// Takes up to `steps` more training steps (starting an epoch where none is under way) and
/// resolves, once the GPU has done them, with the epoch's running metrics as JSON.
#[wasm_bindgen]
pub async fn train_steps(steps: usize) -> Result<String, JsError> {
    let mut session = take_session()?;
    let outcome = async {
        let trainer = &mut session.trainer;
        if trainer.epoch_position().is_none() {
            trainer.start_epoch()?;
        }
        trainer.train(steps.max(1), None)?;
        trainer.running_metrics_async().await
    }
    .await;
    put_back(session);
    Ok(progress_json(&outcome.map_err(failed)?).to_string())
}

/// Ends the epoch whose steps are all taken: evaluates the test set and resolves with the
/// epoch's figures as JSON (`finished` once the run's epochs are done).
#[wasm_bindgen]
pub async fn end_epoch() -> Result<String, JsError> {
    let mut session = take_session()?;
    let outcome = session.trainer.end_epoch_async().await;
    let epochs = session.trainer.config().epochs;
    put_back(session);
    Ok(metrics_json(&outcome.map_err(failed)?, epochs).to_string())
}

/// The trained model as the safetensors file `shadertrain train --save` writes.
#[wasm_bindgen]
pub async fn model_file() -> Result<Vec<u8>, JsError> {
    let session = take_session()?;
    let params = session.trainer.parameters_async().await;
    let bytes = params.map_err(failed).and_then(|params| {
        let trainer = &session.trainer;
        model_file_bytes(
            trainer.spec(),
            &params,
            &session.data,
            trainer.batches_tracked(),
        )
        .map_err(failed)
    });
    put_back(session);
    bytes
}

/// Reads a model file the user chose (`.safetensors` from this page or `shadertrain train
/// --save`): what the drawing pad and the evaluation use until a run starts, and what the next
/// run fine-tunes. Ends the run under way. Its description as JSON.
#[wasm_bindgen]
pub fn load_model(name: String, bytes: Vec<u8>) -> Result<String, JsError> {
    let saved = model_from_bytes(Path::new(&name), &bytes).map_err(failed)?;
    let description = serde_json::json!({
        "model": saved.spec.describe(),
        "data": saved.data.describe(),
        "classes": saved.data.class_names(),
    });
    SESSION.with_borrow_mut(|s| *s = None);
    LOADED.with_borrow_mut(|m| *m = Some(saved));
    Ok(description.to_string())
}

/// The model the page works with: the run's (its parameters as they are now), else the loaded one.
async fn current_model() -> Result<SavedModel, JsError> {
    if let Some(saved) = LOADED.with_borrow(Clone::clone) {
        return Ok(saved);
    }
    let session = take_session()?;
    let params = session.trainer.parameters_async().await;
    let saved = params.map(|params| SavedModel {
        spec: session.trainer.spec().clone(),
        params,
        data: session.data.clone(),
        batches_tracked: session.trainer.batches_tracked(),
    });
    put_back(session);
    saved.map_err(failed)
}

/// Evaluates the current model on the chosen test files: loss, accuracy and samples, as JSON.
#[wasm_bindgen]
pub async fn evaluate_model() -> Result<String, JsError> {
    let device = DEVICE
        .with_borrow(|d| *d)
        .ok_or_else(|| JsError::new("open the device first"))?;
    let saved = current_model().await?;
    let test_set = test_set_from_files()?;
    let trainer = Trainer::for_evaluation(&device.gpu, &device.kernels, saved.spec, &test_set)
        .map_err(failed)?;
    trainer.set_parameters(&saved.params).map_err(failed)?;
    let evaluation = trainer.evaluate_async().await.map_err(failed)?;
    Ok(serde_json::json!({
        "loss": evaluation.loss,
        "accuracy": evaluation.accuracy,
        "samples": test_set.samples(),
    })
    .to_string())
}

/// Classifies a drawing (`grey`: `width` × `height` grey levels, white on black) with the current
/// model: prepared as the model's data was made (digits as MNIST's, clothes as Fashion-MNIST's),
/// its top three classes, and a heat map of what the top class's score rests on by `explain`'s
/// default method for the model, computed with the CPU reference (one picture is little work).
/// JSON: `top` (name, probability), `prepared` (the model's input, grey levels), `map`, `method`.
#[wasm_bindgen]
pub async fn classify(grey: Vec<u8>, width: u32, height: u32) -> Result<String, JsError> {
    let saved = current_model().await?;
    let picture = GrayImage::from_raw(width, height, grey)
        .ok_or_else(|| JsError::new("the drawing's size does not match its pixels"))?;
    let spec = &saved.spec;
    if spec.input.channels != 1 {
        return Err(JsError::new(&format!(
            "the model takes {} pictures; the pad draws grey ones",
            spec.input
        )));
    }
    let preparation = Preparation::of(saved.data.labels, spec.input);
    let prepared = preparation
        .prepare(&picture)
        .map_err(|e| JsError::new(&e))?;
    let x = scale_pixels(&prepared, 1, spec.standardisation.as_ref());
    let logits = forward(spec, &saved.params, &x)
        .pop()
        .expect("a model has an output layer");
    let ranked = top_classes(&logits, 3);
    let explained = reference_map(spec, &saved.params, &x, ranked[0].0).map_err(failed)?;
    let names = saved.data.class_names();
    let top: Vec<_> = (ranked.iter())
        .map(|&(class, p)| {
            serde_json::json!({"name": names.get(class).copied().unwrap_or("?"), "probability": p})
        })
        .collect();
    Ok(serde_json::json!({
        "top": top,
        "prepared": prepared,
        "map": explained.1,
        "method": explained.0.name(),
    })
    .to_string())
}
