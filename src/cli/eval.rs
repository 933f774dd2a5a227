//! `shadertrain eval`: a saved model on its data's test set, as a table or JSON.

use std::path::{Path, PathBuf};

use serde_json::json;
use shadertrain::Result;
use shadertrain::data::DatasetKind;
use shadertrain::gpu::{AdapterRequest, Gpu, Kernels};
use shadertrain::train::Trainer;

pub fn run(
    model: &Path,
    data_dir: impl FnOnce(DatasetKind) -> Result<PathBuf>,
    request: &AdapterRequest,
    other_data: bool,
    as_json: bool,
) -> Result<()> {
    let saved = super::load_model_or_checkpoint(model)?;
    let dir = data_dir(saved.data.labels)?;
    let (test, read) = super::model_test_set(model, &saved, &dir, other_data)?;
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

    if as_json {
        let report = json!({
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
    Ok(())
}

fn truncate(text: &str, width: usize) -> String {
    text.chars().take(width).collect()
}
