//! How well each `explain` method's maps of a saved MNIST model pick out what its score rests on,
//! over the first N test digits (docs/explain.md has the figures):
//!   mass      `explain::mass_on_ink`: the map's mean over the digit (pixels at least a quarter
//!             bright, dilated by one pixel) over its mean over the image
//!   deletion  `explain::deletion_ratio`: the drop of the explained (predicted) class's score
//!             when each digit loses its map's K top pixels, over the drop when it loses K of its
//!             inked pixels at random (Samek et al.'s pixel flipping): above 1 where the map finds
//!             the pixels that matter
//!   empty     maps that are zero everywhere
//! Grad-CAM is given beside HiResCAM (Draelos & Carin 2020: the feature map times its gradient,
//! summed over channels), which it equals behind global pooling.
//!
//! cargo run --release --example explain_maps -- MODEL [MNIST_DIR] [N]

use std::path::PathBuf;

use shadertrain::data::{Dataset, Split};
use shadertrain::explain::{
    Explainer, Method, deletion_ratio, grad_cam_feature, mass_on_ink, resize_bilinear,
};
use shadertrain::gpu::{AdapterRequest, Gpu, Kernels};
use shadertrain::input::scale_pixels;
use shadertrain::model::reference::forward;
use shadertrain::train::ScoreGradients;

const SIDE: usize = 28;
const FEATURES: usize = SIDE * SIDE;

fn main() -> shadertrain::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = PathBuf::from(
        args.first()
            .expect("usage: explain_maps MODEL [MNIST_DIR] [N]"),
    );
    let dir = PathBuf::from(args.get(1).map_or("data/mnist", String::as_str));
    let n: usize = args.get(2).map_or(100, |text| text.parse().expect("N"));
    let saved = shadertrain::model_file::load_model(&model)?;
    let (spec, params) = (&saved.spec, &saved.params);
    let test = Dataset::load_mnist(&dir, Split::Test)?;
    let pixels = &test.pixels[..n * FEATURES];
    // As the model takes them: scaled, and standardised where it was trained so.
    let standardisation = spec.standardisation.as_ref();
    let x = scale_pixels(pixels, 1, standardisation);
    let black = scale_pixels(&[0], 1, standardisation)[0];
    let logits = forward(spec, params, &x).pop().expect("logits");
    let classes = spec.classes();
    let predicted: Vec<usize> = (logits.chunks(classes))
        .map(|row| {
            (0..classes)
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap()
        })
        .collect();
    let gpu = Gpu::open(&AdapterRequest::default())?;
    let kernels = Kernels::new(&gpu);
    let plan = spec.plan()?;
    let mut maps: Vec<(String, Vec<Vec<f32>>)> = Vec::new();
    for method in [Method::Saliency, Method::Integrated, Method::GradCam] {
        if method == Method::GradCam && grad_cam_feature(&plan).is_none() {
            continue;
        }
        let explainer = Explainer::new(&gpu, &kernels, spec, params, method, (64, 64))?;
        let explained = explainer.explain(&x, Some(&predicted))?;
        maps.push((
            method.name().into(),
            explained.into_iter().map(|e| e.map).collect(),
        ));
    }
    if let Some(feature) = grad_cam_feature(&plan) {
        let shape = plan.tensors[feature].shape;
        let probe = ScoreGradients::new(&gpu, &kernels, spec, params, n, Some(feature))?;
        let result = probe.gradients(&x, Some(&predicted))?;
        let map = result.feature.expect("the feature map");
        let hires = (0..n)
            .map(|i| {
                let at = i * shape.len()..(i + 1) * shape.len();
                let (a, g) = (&map.values[at.clone()], &map.grad[at]);
                let cam: Vec<f32> = (a.chunks(shape.channels).zip(g.chunks(shape.channels)))
                    .map(|(a, g)| a.iter().zip(g).map(|(a, g)| a * g).sum::<f32>().max(0.0))
                    .collect();
                resize_bilinear(&cam, (shape.height, shape.width), (SIDE, SIDE))
            })
            .collect();
        maps.push(("hirescam".into(), hires));
    }
    println!(
        "{} on the first {n} test digits of {}",
        model.display(),
        dir.display()
    );
    for k in [20, 50] {
        println!(
            "  {k} pixels: {:<10} {:>9} {:>9} {:>9} {:>6}",
            "method", "deletion", "mass", "min mass", "empty"
        );
        for (name, method_maps) in &maps {
            let explained: Vec<(usize, Vec<f32>)> = predicted
                .iter()
                .copied()
                .zip(method_maps.iter().cloned())
                .collect();
            let deletion = deletion_ratio((spec, params), (&x, pixels, black), &explained, k, 5);
            let masses: Vec<f64> = (method_maps.iter().enumerate())
                .map(|(i, map)| mass_on_ink(map, &pixels[i * FEATURES..(i + 1) * FEATURES], SIDE))
                .collect();
            let empty = masses.iter().filter(|m| m.is_nan()).count();
            let masses: Vec<f64> = masses.into_iter().filter(|m| !m.is_nan()).collect();
            let mean = masses.iter().sum::<f64>() / masses.len().max(1) as f64;
            let low = masses.iter().cloned().fold(f64::INFINITY, f64::min);
            println!(
                "  {:<10} {name:<10} {deletion:>8.2}x {mean:>8.2}x {low:>8.2}x {empty:>6}",
                ""
            );
        }
    }
    Ok(())
}
