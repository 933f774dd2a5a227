//! `shadertrain eval`: a saved model on its data's test set, as a table or JSON.

use std::path::{Path, PathBuf};

use serde_json::json;
use shadertrain::data::{Dataset, DatasetKind};
use shadertrain::gpu::{AdapterRequest, Gpu, Kernels};
use shadertrain::input::scale_pixels;
use shadertrain::model::Shape;
use shadertrain::model::reference::forward;
use shadertrain::model_file::SavedModel;
use shadertrain::plot::{GridCell, image_grid_png, image_grid_svg};
use shadertrain::train::{Evaluation, Trainer};
use shadertrain::{Error, Result};

/// What `eval` shows beyond the figures: the `count` test images with the highest loss, drawn
/// into `picture` where given.
pub struct Worst<'a> {
    pub count: usize,
    pub picture: Option<&'a Path>,
}

pub fn run(
    model: &Path,
    data_dir: impl FnOnce(DatasetKind) -> Result<PathBuf>,
    request: &AdapterRequest,
    other_data: bool,
    as_json: bool,
    worst: Option<Worst>,
) -> Result<()> {
    if let Some(Worst {
        picture: Some(path),
        ..
    }) = &worst
    {
        check_picture_path(path)?;
    }
    let saved = super::load_model_or_checkpoint(model)?;
    let dir = data_dir(saved.data.labels)?;
    let (test, read) = super::model_test_set(model, &saved, &dir, other_data)?;
    if let Some(worst) = &worst
        && worst.count > test.samples()
    {
        return Err(Error::Config(format!(
            "--worst {}: the {} test set has {} samples",
            worst.count,
            read.name(),
            test.samples()
        )));
    }
    let gpu = Gpu::open(request)?;
    let kernels = Kernels::new(&gpu);
    let evaluator = Trainer::for_evaluation(&gpu, &kernels, saved.spec.clone(), &test)?;
    evaluator.set_parameters(&saved.params)?;
    let result = evaluator.evaluate()?;
    let classes = saved.spec.classes();
    let matrix = result.confusion_matrix(&test.labels, classes);
    let names = saved.data.class_names();
    let name = |c: usize| names.get(c).copied().unwrap_or("?");
    let per_class: Vec<(usize, f64)> = matrix
        .iter()
        .enumerate()
        .map(|(c, row)| {
            let samples: usize = row.iter().sum();
            (samples, row[c] as f64 / samples.max(1) as f64)
        })
        .collect();

    let worst_samples = match &worst {
        Some(worst) => worst_of(&saved, &test, &result, worst.count),
        None => Vec::new(),
    };
    if let Some(Worst {
        picture: Some(path),
        ..
    }) = &worst
    {
        draw(path, &saved, &test, &worst_samples)?;
    }
    if as_json {
        let mut report = json!({
            "model": model.display().to_string(),
            "dataset": read.name(),
            "samples": test.samples(),
            "loss": result.loss,
            "accuracy": result.accuracy,
            "per_class": per_class.iter().enumerate().map(|(c, (samples, accuracy))| json!({
                "class": c, "name": name(c), "samples": samples, "accuracy": accuracy,
            })).collect::<Vec<_>>(),
            "confusion_matrix": matrix,
        });
        if worst.is_some() {
            report["worst"] = (worst_samples.iter())
                .map(|w| {
                    json!({
                        "index": w.index, "true": w.truth, "true_name": name(w.truth),
                        "predicted": w.predicted, "predicted_name": name(w.predicted),
                        "p": w.probability, "loss": w.loss,
                    })
                })
                .collect();
        }
        outln!("{report}");
        return Ok(());
    }
    outln!(
        "model: {} ({} on {}) on the {} test set ({} samples)",
        model.display(),
        saved.spec.describe(),
        saved.spec.input,
        read.name(),
        test.samples()
    );
    outln!(
        "test loss {:.4}, accuracy {:.2}%",
        result.loss,
        100.0 * result.accuracy
    );
    outln!();
    outln!("{:<12} {:>8} {:>9}", "class", "samples", "accuracy");
    for (c, (samples, accuracy)) in per_class.iter().enumerate() {
        outln!("{:<12} {:>8} {:>8.2}%", name(c), samples, 100.0 * accuracy);
    }
    outln!();
    outln!("confusion matrix (rows: true class, columns: predicted class)");
    out!("{:<12}", "");
    for c in 0..classes {
        out!(" {:>6}", truncate(name(c), 6));
    }
    outln!();
    for (c, row) in matrix.iter().enumerate() {
        out!("{:<12}", name(c));
        for count in row {
            out!(" {count:>6}");
        }
        outln!();
    }
    if let Some(worst) = &worst {
        outln!();
        outln!(
            "the {} test images with the highest loss",
            worst_samples.len()
        );
        outln!(
            "{:>6} {:<12} {:<12} {:>7} {:>8}",
            "index",
            "true",
            "predicted",
            "p",
            "loss"
        );
        for w in &worst_samples {
            outln!(
                "{:>6} {:<12} {:<12} {:>6.1}% {:>8.4}",
                w.index,
                name(w.truth),
                name(w.predicted),
                100.0 * w.probability,
                w.loss
            );
        }
        if let Some(path) = worst.picture {
            outln!("wrote {}", path.display());
        }
    }
    Ok(())
}

/// A test sample the model gets wrong most (highest loss first).
struct WorstSample {
    index: usize,
    truth: usize,
    predicted: usize,
    /// The model's probability of its predicted class.
    probability: f64,
    loss: f32,
}

/// The `count` samples of `test` with the highest loss (ties: the lower index first), with
/// the probability the model gives its prediction (the CPU reference's softmax, as predict's).
fn worst_of(
    saved: &SavedModel,
    test: &Dataset,
    result: &Evaluation,
    count: usize,
) -> Vec<WorstSample> {
    let mut ranked: Vec<usize> = (0..test.samples()).collect();
    ranked.sort_by(|&a, &b| {
        (result.sample_loss[b].total_cmp(&result.sample_loss[a])).then(a.cmp(&b))
    });
    ranked.truncate(count);
    let features = test.features();
    let pixels: Vec<u8> = (ranked.iter())
        .flat_map(|&i| test.pixels[i * features..(i + 1) * features].to_vec())
        .collect();
    let x = scale_pixels(
        &pixels,
        saved.spec.input.channels,
        saved.spec.standardisation.as_ref(),
    );
    let logits = forward(&saved.spec, &saved.params, &x)
        .pop()
        .expect("a model has an output layer");
    let classes = saved.spec.classes();
    (ranked.iter().zip(logits.chunks(classes)))
        .map(|(&index, row)| {
            let predicted = result.predictions[index] as usize;
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = row.iter().map(|&z| ((z - max) as f64).exp()).sum();
            WorstSample {
                index,
                truth: test.labels[index] as usize,
                predicted,
                probability: ((row[predicted] - max) as f64).exp() / sum,
                loss: result.sample_loss[index],
            }
        })
        .collect()
}

/// `-o`: a .png or .svg file that can be written (checked before any work).
pub(super) fn check_picture_path(path: &Path) -> Result<()> {
    shadertrain::files::check_file_writable(path).map_err(|problem| Error::Unwritable {
        flag: "-o",
        path: path.to_path_buf(),
        problem,
    })?;
    match picture_format(path) {
        Some(_) => Ok(()),
        None => Err(Error::Config(format!(
            "-o {}: give a .png or .svg file name",
            path.display()
        ))),
    }
}

/// "png" or "svg", from the file name.
pub(super) fn picture_format(path: &Path) -> Option<&'static str> {
    let extension = path.extension()?.to_str()?.to_lowercase();
    match extension.as_str() {
        "png" => Some("png"),
        "svg" => Some("svg"),
        _ => None,
    }
}

/// The worst samples as a grid of their images, each captioned with its index, true class,
/// predicted class and that prediction's probability.
fn draw(path: &Path, saved: &SavedModel, test: &Dataset, worst: &[WorstSample]) -> Result<()> {
    let names = saved.data.class_names();
    let name = |c: usize| names.get(c).copied().unwrap_or("?");
    let features = test.features();
    let cells: Vec<GridCell> = (worst.iter())
        .map(|w| GridCell {
            pixels: test.pixels[w.index * features..(w.index + 1) * features].to_vec(),
            caption: [
                format!("#{} true: {}", w.index, name(w.truth)),
                format!(
                    "predicted: {} {:.0}%",
                    name(w.predicted),
                    100.0 * w.probability
                ),
            ],
            wrong: w.truth != w.predicted,
        })
        .collect();
    let shape = if test.shape.is_flat() {
        // An MLP's flat samples of MNIST-style data: square images.
        let side = (features as f64).sqrt() as usize;
        Shape::image(1, side, features / side.max(1))
    } else {
        test.shape
    };
    let columns = worst.len().clamp(1, 6);
    let bytes = match picture_format(path) {
        Some("svg") => image_grid_svg(&cells, shape, columns).into_bytes(),
        _ => image_grid_png(&cells, shape, columns)?,
    };
    shadertrain::files::write_atomically(path, &bytes)
}

fn truncate(text: &str, width: usize) -> String {
    text.chars().take(width).collect()
}
