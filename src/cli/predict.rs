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
use shadertrain::model::reference::{forward, top_classes};
use shadertrain::model_file::SavedModel;
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
    let preparation = preparation(model, &saved)?;
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
        inputs.extend(test_samples(model, &saved, indices, data_dir, other_data)?);
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
        let ranked = top_classes(row, 3);
        if !as_json {
            outln!("{input}: {}", describe_top(&ranked, &names));
        }
        report.push(json!({"input": input, "top": top_json(&ranked, &names)}));
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

/// How pictures are prepared for `saved`'s model: digits as MNIST's, clothes as
/// Fashion-MNIST's, others resized to the model's input; or why they cannot be.
pub(super) fn preparation(model: &Path, saved: &SavedModel) -> Result<Preparation> {
    let preparation = Preparation::of(saved.data.labels, saved.spec.input);
    if !matches!(preparation, Preparation::Resize(_)) && !saved.spec.takes(Shape::image(1, 28, 28))
    {
        return Err(Error::Config(format!(
            "{} takes inputs of {}; {} pictures are prepared as 28×28 images",
            model.display(),
            saved.spec.input,
            saved.data.labels.name()
        )));
    }
    Ok(preparation)
}

/// Test samples `indices` of the model's data (or other data, where allowed), each named with
/// its index and label, with its pixels.
pub(super) fn test_samples(
    model: &Path,
    saved: &SavedModel,
    indices: &[usize],
    data_dir: impl FnOnce(DatasetKind) -> Result<PathBuf>,
    other_data: bool,
) -> Result<Vec<(String, Vec<u8>)>> {
    let dir = data_dir(saved.data.labels)?;
    let (test, read) = super::model_test_set(model, saved, &dir, other_data)?;
    let names = saved.data.class_names();
    let features = test.features();
    (indices.iter())
        .map(|&index| {
            if index >= test.samples() {
                return Err(Error::Config(format!(
                    "--index {index}: the {} test set has {} samples (0..{})",
                    read.name(),
                    test.samples(),
                    test.samples() - 1
                )));
            }
            let pixels = test.pixels[index * features..(index + 1) * features].to_vec();
            let label = (names.get(test.labels[index] as usize).copied()).unwrap_or("?");
            Ok((format!("test image {index} (label {label})"), pixels))
        })
        .collect()
}

/// The top classes as `predict` prints them: `7 (99.2%), 2 (0.5%), 3 (0.1%)`.
pub(super) fn describe_top(ranked: &[(usize, f64)], names: &[&str]) -> String {
    let top: Vec<String> = (ranked.iter())
        .map(|&(c, p)| {
            format!(
                "{} ({:.1}%)",
                names.get(c).copied().unwrap_or("?"),
                100.0 * p
            )
        })
        .collect();
    top.join(", ")
}

/// The top classes as `predict --json` lists them.
pub(super) fn top_json(ranked: &[(usize, f64)], names: &[&str]) -> serde_json::Value {
    (ranked.iter())
        .map(|&(c, p)| {
            json!({"class": c, "name": names.get(c).copied().unwrap_or("?"), "probability": p})
        })
        .collect()
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
