//! `shadertrain explain`: for each image (or test sample), the top classes as `predict` prints
//! them and a heat map of what the explained class's score rests on (`shadertrain::explain`),
//! drawn beside the input as the model saw it, or listed as JSON.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;
use shadertrain::data::DatasetKind;
use shadertrain::data::images::load_image;
use shadertrain::explain::{Explainer, Explanation, Method, grad_cam_feature};
use shadertrain::gpu::{AdapterRequest, Gpu, Kernels};
use shadertrain::input::scale_pixels;
use shadertrain::model::Shape;
use shadertrain::plot::{GridCell, heat_map_pixels, heat_overlay, image_grid_png, image_grid_svg};
use shadertrain::{Error, Result};

use super::eval::{check_picture_path, picture_format};
use super::predict::{describe_top, preparation, test_samples, top_json};
use shadertrain::model::reference::top_classes;

/// Inputs explained per submission: a batch of images, or of integrated gradients' path points.
const EXPLAIN_BATCH: usize = 64;

/// What the user asked `explain` for.
pub struct ExplainRequest<'a> {
    pub model: &'a Path,
    pub images: &'a [PathBuf],
    pub indices: &'a [usize],
    pub method: Option<Method>,
    pub class: Option<usize>,
    pub steps: usize,
    pub picture: Option<&'a Path>,
    pub other_data: bool,
    pub as_json: bool,
}

pub fn run(
    request: &ExplainRequest<'_>,
    data_dir: impl FnOnce(DatasetKind) -> Result<PathBuf>,
    adapter: &AdapterRequest,
) -> Result<()> {
    // Everything the user gave is checked before the device opens.
    if let Some(path) = request.picture {
        check_picture_path(path)?;
    }
    let model = request.model;
    let saved = super::load_model_or_checkpoint(model)?;
    let preparation = preparation(model, &saved)?;
    let classes = saved.spec.classes();
    if let Some(class) = request.class.filter(|&c| c >= classes) {
        return Err(Error::Config(format!(
            "--class {class}: {} has {classes} classes (0..{})",
            model.display(),
            classes - 1
        )));
    }
    let plan = saved.spec.plan()?;
    let method = request.method.unwrap_or_else(|| Method::default_for(&plan));
    if method == Method::GradCam && grad_cam_feature(&plan).is_none() {
        return Err(Error::Config(format!(
            "--method gradcam: {} has no convolutions (no feature map of more than one \
             position); use saliency or integrated",
            model.display()
        )));
    }
    let mut inputs: Vec<(String, Vec<u8>)> = Vec::new();
    for path in request.images {
        let pixels = load_image(path, preparation)?;
        inputs.push((path.display().to_string(), pixels));
    }
    if !request.indices.is_empty() {
        inputs.extend(test_samples(
            model,
            &saved,
            request.indices,
            data_dir,
            request.other_data,
        )?);
    }
    if inputs.is_empty() {
        return Err(Error::Config(
            "give image files, or --index N for test images".into(),
        ));
    }

    let started = Instant::now();
    let input = saved.spec.input;
    let pixels: Vec<u8> = inputs.iter().flat_map(|(_, p)| p.iter().copied()).collect();
    let x = scale_pixels(&pixels, input.channels, saved.spec.standardisation.as_ref());
    let gpu = Gpu::open(adapter)?;
    let kernels = Kernels::new(&gpu);
    // Integrated gradients batch an input's path points; the others, the inputs.
    let rows = match method {
        Method::Integrated => request.steps.max(inputs.len()),
        _ => inputs.len(),
    };
    let rows = rows.min(EXPLAIN_BATCH);
    let explainer = Explainer::new(
        &gpu,
        &kernels,
        &saved.spec,
        &saved.params,
        method,
        (rows, request.steps),
    )?;
    let wanted = request.class.map(|c| vec![c; inputs.len()]);
    let explanations = explainer.explain(&x, wanted.as_deref())?;
    let seconds = started.elapsed().as_secs_f64();

    let names = saved.data.class_names();
    let name = |c: usize| names.get(c).copied().unwrap_or("?");
    let image = image_shape(input);
    if request.as_json {
        let report: Vec<serde_json::Value> = (inputs.iter().zip(&explanations))
            .map(|((label, _), e)| {
                let map: Vec<&[f32]> = e.map.chunks(image.width).collect();
                json!({
                    "input": label,
                    "top": top_json(&top_classes(&e.logits, 3), &names),
                    "method": method.name(),
                    "class": e.class,
                    "name": name(e.class),
                    "map": map,
                })
            })
            .collect();
        outln!("{}", serde_json::Value::Array(report));
    } else {
        for ((label, _), e) in inputs.iter().zip(&explanations) {
            let top = describe_top(&top_classes(&e.logits, 3), &names);
            outln!("{label}: {top}; {} of {}", method.name(), name(e.class));
        }
        errln!(
            "explained {} input{} by {} in {seconds:.2} s on {}",
            inputs.len(),
            if inputs.len() == 1 { "" } else { "s" },
            method.name(),
            gpu.adapter_name()
        );
    }
    if let Some(path) = request.picture {
        draw(path, image, method, &inputs, &explanations, &names)?;
        if !request.as_json {
            outln!("wrote {}", path.display());
        }
    }
    Ok(())
}

/// The input's shape as a picture: an MLP's flat MNIST-style samples are square images.
fn image_shape(input: Shape) -> Shape {
    match input.is_flat() {
        true => {
            let side = (input.len() as f64).sqrt() as usize;
            Shape::image(1, side, input.len() / side.max(1))
        }
        false => input,
    }
}

/// One row per input: the input as the model saw it (prepared, before standardisation), its
/// heat map, and the map laid over it.
fn draw(
    path: &Path,
    image: Shape,
    method: Method,
    inputs: &[(String, Vec<u8>)],
    explanations: &[Explanation],
    names: &[&str],
) -> Result<()> {
    let name = |c: usize| names.get(c).copied().unwrap_or("?");
    let rgb = Shape::image(3, image.height, image.width);
    let mut cells = Vec::new();
    for ((label, pixels), e) in inputs.iter().zip(explanations) {
        let grey_or_rgb: Vec<u8> = match image.channels {
            1 => pixels.iter().flat_map(|&p| [p, p, p]).collect(),
            _ => pixels.clone(),
        };
        let (top, p) = top_classes(&e.logits, 1)[0];
        cells.push(GridCell {
            pixels: grey_or_rgb,
            caption: [
                fit_caption(label, 22),
                format!(
                    "predicted: {} {:.0}%",
                    fit_caption(name(top), 10),
                    100.0 * p
                ),
            ],
            wrong: false,
        });
        cells.push(GridCell {
            pixels: heat_map_pixels(&e.map),
            caption: [
                format!("{} of {}", method.name(), fit_caption(name(e.class), 10)),
                "dark: none, yellow: most".into(),
            ],
            wrong: false,
        });
        cells.push(GridCell {
            pixels: heat_overlay(pixels, image.channels, &e.map, 0.7),
            caption: ["the map over the input".into(), String::new()],
            wrong: false,
        });
    }
    let bytes = match picture_format(path) {
        Some("svg") => image_grid_svg(&cells, rgb, 3).into_bytes(),
        _ => image_grid_png(&cells, rgb, 3)?,
    };
    shadertrain::files::write_atomically(path, &bytes)
}

/// `text` cut to `width` characters, keeping its end (a file name's) after an ellipsis.
fn fit_caption(text: &str, width: usize) -> String {
    let count = text.chars().count();
    match count <= width {
        true => text.to_string(),
        false => {
            let tail: String = text.chars().skip(count - (width - 1)).collect();
            format!("…{tail}")
        }
    }
}
