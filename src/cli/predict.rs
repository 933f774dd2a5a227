//! `shadertrain predict`: the top three classes of images (or of test samples) under a saved model.
//!
//! A handful of samples is a few hundred thousand multiply-adds: they run through the CPU reference
//! forward pass rather than paying for a device.

use std::path::{Path, PathBuf};

use serde_json::json;
use shadertrain::data::DatasetKind;
use shadertrain::data::images::{Preparation, load_image};
use shadertrain::input::scale_pixels;
use shadertrain::model::Shape;
use shadertrain::model::reference::forward;
use shadertrain::{Error, Result};

pub fn run(
    model: &Path,
    images: &[PathBuf],
    indices: &[usize],
    data_dir: impl FnOnce(DatasetKind) -> Result<PathBuf>,
    other_data: bool,
    as_json: bool,
) -> Result<()> {
    let saved = super::load_model_or_checkpoint(model)?;
    let preparation = Preparation::of(saved.data.labels, saved.spec.input);
    if !matches!(preparation, Preparation::Resize(_)) && !saved.spec.takes(Shape::image(1, 28, 28))
    {
        return Err(Error::Config(format!(
            "{} takes inputs of {}; predict prepares {} pictures as 28×28 images",
            model.display(),
            saved.spec.input,
            saved.data.labels.name()
        )));
    }
    // Each image is classified, or reported and left out: one bad file does not stop the rest.
    let mut inputs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut left_out = Vec::new();
    let mut unreadable = 0;
    // Pictures are prepared as the model's data was made: digits as MNIST's, clothes as
    // Fashion-MNIST's, others resized to the model's input.
    for path in images {
        match load_image(path, preparation) {
            Ok(pixels) => inputs.push((path.display().to_string(), pixels)),
            Err(e) => {
                let kind = if matches!(e, Error::EmptyImage { .. }) {
                    "warning"
                } else {
                    unreadable += 1;
                    "error"
                };
                errln!("{kind}: {e}; not classified");
                let mut entry = serde_json::Map::new();
                entry.insert("input".into(), path.display().to_string().into());
                entry.insert(kind.into(), e.to_string().into());
                left_out.push(serde_json::Value::Object(entry));
            }
        }
    }
    if !indices.is_empty() {
        let dir = data_dir(saved.data.labels)?;
        let (test, read) = super::model_test_set(model, &saved, &dir, other_data)?;
        for &index in indices {
            if index >= test.samples() {
                return Err(Error::Config(format!(
                    "--index {index}: the {} test set has {} samples (0..{})",
                    read.name(),
                    test.samples(),
                    test.samples() - 1
                )));
            }
            let features = test.features();
            let pixels = test.pixels[index * features..(index + 1) * features].to_vec();
            let names = saved.data.class_names();
            let label = names
                .get(test.labels[index] as usize)
                .copied()
                .unwrap_or("?");
            inputs.push((format!("test image {index} (label {label})"), pixels));
        }
    }
    if inputs.is_empty() && left_out.is_empty() {
        return Err(Error::Config(
            "give image files, or --index N for test images".into(),
        ));
    }
    let pixels: Vec<u8> = inputs.iter().flat_map(|(_, p)| p.iter().copied()).collect();
    let standardisation = saved.spec.standardisation.as_ref();
    let x = scale_pixels(&pixels, saved.spec.input.channels, standardisation);
    let logits = match inputs.is_empty() {
        true => Vec::new(),
        false => forward(&saved.spec, &saved.params, &x)
            .pop()
            .expect("a model has an output layer"),
    };
    let classes = saved.spec.classes();
    let names = saved.data.class_names();
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
            outln!("{input}: {}", top.join(", "));
        }
        report.push(json!({
            "input": input,
            "top": ranked.iter().map(|&(c, p)| json!({
                "class": c, "name": names.get(c).copied().unwrap_or("?"), "probability": p,
            })).collect::<Vec<_>>(),
        }));
    }
    if as_json {
        report.extend(left_out);
        outln!("{}", serde_json::Value::Array(report));
    }
    if unreadable > 0 {
        return Err(Error::Config(unreadable_summary(unreadable, images.len())));
    }
    Ok(())
}

/// The closing line when `unreadable` of `images` image files could not be read.
fn unreadable_summary(unreadable: usize, images: usize) -> String {
    match (unreadable, images) {
        (1, 1) => "the image could not be read (see above)".into(),
        (n, total) if n == total => format!("none of the {total} images could be read (see above)"),
        (n, total) => format!(
            "{n} of {total} images could not be read (named above); the others were classified"
        ),
    }
}
