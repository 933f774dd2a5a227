//! `shadertrain predict`: the top three classes of images (or of test samples) under a saved model.
//!
//! A handful of samples is a few hundred thousand multiply-adds: they run through the CPU reference
//! forward pass rather than paying for a device.

use std::path::{Path, PathBuf};

use serde_json::json;
use shadertrain::data::images::load_digit;
use shadertrain::data::{Dataset, DatasetKind, Split};
use shadertrain::model::Shape;
use shadertrain::model_file::load_model;
use shadertrain::reference::forward;
use shadertrain::{Error, Result};

pub fn run(
    model: &Path,
    images: &[PathBuf],
    indices: &[usize],
    data_dir: impl FnOnce(DatasetKind) -> Result<PathBuf>,
    as_json: bool,
) -> Result<()> {
    let saved = load_model(model)?;
    if !saved.spec.takes(Shape::image(1, 28, 28)) {
        return Err(Error::Config(format!(
            "{} takes inputs of {}; predict reads 28×28 images",
            model.display(),
            saved.spec.input
        )));
    }
    let mut inputs: Vec<(String, Vec<u8>)> = Vec::new();
    for path in images {
        inputs.push((path.display().to_string(), load_digit(path)?));
    }
    if !indices.is_empty() {
        let dir = data_dir(saved.dataset)?;
        let test = Dataset::load_mnist(&dir, Split::Test)?;
        for &index in indices {
            if index >= test.samples() {
                return Err(Error::Config(format!(
                    "--index {index}: the {} test set has {} samples (0..{})",
                    saved.dataset.name(),
                    test.samples(),
                    test.samples() - 1
                )));
            }
            let pixels = test.pixels[index * 784..(index + 1) * 784].to_vec();
            let label = saved.dataset.class_names()[test.labels[index] as usize];
            inputs.push((format!("test image {index} (label {label})"), pixels));
        }
    }
    if inputs.is_empty() {
        return Err(Error::Config(
            "give image files, or --index N for test images".into(),
        ));
    }
    let x: Vec<f32> = inputs
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&v| v as f32 / 255.0))
        .collect();
    let logits = forward(&saved.spec, &saved.params, &x)
        .pop()
        .expect("a model has an output layer");
    let classes = saved.spec.classes();
    let names = saved.dataset.class_names();
    let mut report = Vec::new();
    for ((input, _), row) in inputs.iter().zip(logits.chunks(classes)) {
        let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f64> = row.iter().map(|&z| ((z - max) as f64).exp()).collect();
        let sum: f64 = exp.iter().sum();
        let mut ranked: Vec<(usize, f64)> = exp.iter().map(|e| e / sum).enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        ranked.truncate(3);
        if !as_json {
            let top: Vec<String> = ranked
                .iter()
                .map(|&(c, p)| {
                    format!(
                        "{} ({:.1}%)",
                        names.get(c).copied().unwrap_or("?"),
                        100.0 * p
                    )
                })
                .collect();
            println!("{input}: {}", top.join(", "));
        }
        report.push(json!({
            "input": input,
            "top": ranked.iter().map(|&(c, p)| json!({
                "class": c, "name": names.get(c).copied().unwrap_or("?"), "probability": p,
            })).collect::<Vec<_>>(),
        }));
    }
    if as_json {
        println!("{}", serde_json::Value::Array(report));
    }
    Ok(())
}
