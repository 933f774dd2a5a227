//! Why a model decided: heat maps of what a class score rests on, from the gradients
//! `crate::train::ScoreGradients` takes on the GPU. For an input x (`[H, W, C]`, as the model
//! takes it) and a class c with score S (its logit, before the softmax):
//!   saliency     map[p] = max_k |dS/dx[p, k]|                    (Simonyan et al. 2014)
//!   integrated   IG = (x - x0) ⊙ mean_j dS/dx (x0 + a_j (x - x0)),  a_j = (j + 1/2) / m,
//!                the m path points batched on the GPU; x0 the black image as the model takes
//!                it; map[p] = sum_k |IG[p, k]|                   (Sundararajan et al. 2017)
//!                Σ IG ≈ S(x) - S(x0) (completeness; the midpoint rule's error shrinks with m)
//!   gradcam      A `[h, w, K]` the last feature map (below), w_k = mean_{h,w} dS/dA[., ., k],
//!                cam = ReLU(Σ_k w_k A[., ., k]), resized to H × W bilinearly (half-pixel
//!                centres, as PyTorch's `interpolate(align_corners=False)`)
//!                                                                (Selvaraju et al. 2017)
//! Each map has the input's resolution and non-negative values. Everything here is
//! deterministic: the same model and input give the same bits.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernels};
use crate::input::scale_pixels;
use crate::model::reference::forward;
use crate::model::{LayerSpec, ModelSpec, Plan, Shape, TensorId};
use crate::train::gradients::{argmax, check_classes};
use crate::train::{ScoreGradient, ScoreGradients};

/// Attribution methods (`explain --method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Saliency,
    Integrated,
    GradCam,
}

impl Method {
    pub const NAMES: [&'static str; 3] = ["saliency", "integrated", "gradcam"];

    pub fn parse(text: &str) -> Option<Method> {
        match text {
            "saliency" => Some(Method::Saliency),
            "integrated" => Some(Method::Integrated),
            "gradcam" => Some(Method::GradCam),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Method::Saliency => "saliency",
            Method::Integrated => "integrated",
            Method::GradCam => "gradcam",
        }
    }

    /// Grad-CAM where the last feature map goes through global average pooling to the logits
    /// (a ResNet's head: there its channel weights are exactly what the score takes from each
    /// channel, Draelos & Carin 2020), integrated gradients elsewhere. Measured on MNIST test
    /// digits (docs/explain.md): an MLP's plain saliency spreads over the background, and
    /// behind a flatten and dense head (the mnist_convnet) Grad-CAM's spatially averaged
    /// weights leave a tenth of the maps empty and point off the digit, while integrated
    /// gradients pick the pixels whose removal lowers the score most.
    pub fn default_for(plan: &Plan) -> Method {
        let pooled = grad_cam_feature(plan).is_some_and(|t| {
            let consumers = &plan.tensors[t].consumers;
            let kind = |n| plan.layer(n).and_then(LayerSpec::kind);
            (consumers.iter()).all(|&n| kind(n).is_some_and(|k| k.averages_each_channel()))
        });
        match pooled {
            true => Method::GradCam,
            false => Method::Integrated,
        }
    }
}

/// The feature map Grad-CAM weighs: the last tensor with a spatial extent (more than one
/// position) that no pooling layer made: the last convolution's activations, or in a ResNet the
/// last block's output (Keras' and pytorch-grad-cam's usual choice). None for a model without one.
pub fn grad_cam_feature(plan: &Plan) -> Option<TensorId> {
    (1..plan.tensors.len()).rev().find(|&t| {
        let tensor = &plan.tensors[t];
        // None for a residual sum.
        let made_by = tensor.producer.and_then(|p| plan.layer(p));
        let pooled_or_flat =
            (made_by.and_then(LayerSpec::kind)).is_some_and(|kind| kind.combines_positions());
        tensor.shape.height * tensor.shape.width > 1 && !pooled_or_flat
    })
}

/// One input's explanation.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// The model's logits for the input.
    pub logits: Vec<f32>,
    /// The class explained.
    pub class: usize,
    /// The heat map `[H, W]` (row-major), non-negative.
    pub map: Vec<f32>,
}

/// Integrated gradients of one input.
#[derive(Debug, Clone, PartialEq)]
pub struct IntegratedGradients {
    /// `[H, W, C]`, as the input.
    pub attributions: Vec<f32>,
    /// S(x) and S(x0): the class score at the input and at the baseline.
    pub score: f32,
    pub baseline_score: f32,
}

/// Path points of integrated gradients unless told otherwise (Captum's default is 50).
pub const DEFAULT_STEPS: usize = 64;

/// Explains inputs of one model with one method, on the GPU.
pub struct Explainer<'k> {
    gradients: ScoreGradients<'k>,
    method: Method,
    input: Shape,
    /// The black image as the model takes it (integrated gradients' baseline), and its logits.
    baseline: Vec<f32>,
    baseline_logits: Vec<f32>,
    steps: usize,
}

impl<'k> Explainer<'k> {
    /// An explainer of `spec` with `params` by `method`, taking up to `rows` inputs (or, for
    /// integrated gradients, path points) per submission; `steps`: integrated gradients' path
    /// points per input.
    pub fn new(
        gpu: &'k Gpu,
        kernels: &'k Kernels,
        spec: &ModelSpec,
        params: &[f32],
        method: Method,
        (rows, steps): (usize, usize),
    ) -> Result<Self> {
        let plan = spec.plan()?;
        let feature = match method {
            Method::GradCam => Some(grad_cam_feature(&plan).ok_or_else(|| {
                Error::Config(
                    "--method gradcam needs a model with convolutions (a feature map with more \
                     than one position); use saliency or integrated"
                        .into(),
                )
            })?),
            _ => None,
        };
        if steps == 0 {
            return Err(Error::Config("--steps must be at least 1".into()));
        }
        let gradients = ScoreGradients::new(gpu, kernels, spec, params, rows, feature)?;
        let baseline = black_baseline(spec);
        let baseline_logits = gradients.logits(&baseline)?;
        Ok(Explainer {
            gradients,
            method,
            input: spec.input,
            baseline,
            baseline_logits,
            steps,
        })
    }

    pub fn method(&self) -> Method {
        self.method
    }

    /// The explanations of the inputs `x` (`[samples, input]`, as the model takes them) for
    /// `classes[i]` where given, else for the class the model predicts. Waits for the GPU.
    pub fn explain(&self, x: &[f32], classes: Option<&[usize]>) -> Result<Vec<Explanation>> {
        let input = self.input.len();
        let rows = self.gradients.rows();
        if let Some(classes) = classes.filter(|c| c.len() * input != x.len()) {
            return Err(Error::Config(format!(
                "{} classes given for {} values of inputs of {}",
                classes.len(),
                x.len(),
                self.input
            )));
        }
        let mut explanations = Vec::new();
        for (chunk, batch) in x.chunks(rows * input).enumerate() {
            let samples = batch.len() / input;
            let given = classes.map(|c| &c[chunk * rows..chunk * rows + samples]);
            let result = match self.method {
                // The forward pass alone: the path's gradients come next.
                Method::Integrated => {
                    let logits = self.gradients.logits(batch)?;
                    let count = logits.len() / samples;
                    let classes = match given {
                        Some(given) => given.to_vec(),
                        None => logits.chunks(count).map(argmax).collect(),
                    };
                    check_classes(&classes, count)?;
                    ScoreGradient {
                        logits,
                        classes,
                        input_grad: Vec::new(),
                        feature: None,
                    }
                }
                _ => self.gradients.gradients(batch, given)?,
            };
            explanations.extend(self.maps(batch, &result)?);
        }
        Ok(explanations)
    }

    fn maps(&self, x: &[f32], result: &ScoreGradient) -> Result<Vec<Explanation>> {
        let (input, classes) = (self.input.len(), result.logits.len() / result.classes.len());
        let mut maps = Vec::new();
        for (i, &class) in result.classes.iter().enumerate() {
            let map = match self.method {
                Method::Saliency => {
                    saliency_map(&result.input_grad[i * input..(i + 1) * input], self.input)
                }
                Method::Integrated => {
                    let sample = &x[i * input..(i + 1) * input];
                    let score = result.logits[i * classes + class];
                    let ig = self.integrated_gradients_at(sample, class, score)?;
                    integrated_map(&ig.attributions, self.input)
                }
                Method::GradCam => {
                    let feature = result.feature.as_ref().expect("Grad-CAM's feature map");
                    let size = feature.shape.len();
                    let at = i * size..(i + 1) * size;
                    grad_cam_map(
                        &feature.values[at.clone()],
                        &feature.grad[at],
                        feature.shape,
                        self.input,
                    )
                }
            };
            maps.push(Explanation {
                logits: result.logits[i * classes..(i + 1) * classes].to_vec(),
                class,
                map,
            });
        }
        Ok(maps)
    }

    /// Integrated gradients of one input `x` for `class`, from the black image, with the
    /// explainer's path points batched on the GPU.
    pub fn integrated_gradients(&self, x: &[f32], class: usize) -> Result<IntegratedGradients> {
        let logits = self.gradients.logits(x)?;
        match logits.get(class) {
            Some(&score) if x.len() == self.input.len() => {
                self.integrated_gradients_at(x, class, score)
            }
            _ => Err(Error::Config(format!(
                "integrated gradients take one input of {} and one of its {} classes",
                self.input,
                logits.len()
            ))),
        }
    }

    /// `integrated_gradients` where the score S(x) is known.
    fn integrated_gradients_at(
        &self,
        x: &[f32],
        class: usize,
        score: f32,
    ) -> Result<IntegratedGradients> {
        let path = IntegrationPath {
            x,
            baseline: &self.baseline,
            steps: self.steps,
            batch: self.gradients.rows(),
        };
        let attributions = path.attributions(|points, count| {
            let result = self
                .gradients
                .gradients(points, Some(&vec![class; count]))?;
            Ok(result.input_grad)
        })?;
        Ok(IntegratedGradients {
            attributions,
            score,
            baseline_score: self.baseline_logits[class],
        })
    }
}

/// The black image as a model takes it: integrated gradients' baseline.
fn black_baseline(spec: &ModelSpec) -> Vec<f32> {
    let black = vec![0u8; spec.input.len()];
    scale_pixels(&black, spec.input.channels, spec.standardisation.as_ref())
}

/// Integrated gradients' straight path from `baseline` to the input `x`, in `steps` points (each
/// segment's midpoint), taken `batch` points at a time.
struct IntegrationPath<'a> {
    x: &'a [f32],
    baseline: &'a [f32],
    steps: usize,
    batch: usize,
}

impl IntegrationPath<'_> {
    /// The attributions: the mean of the score's input gradient over the path, times the
    /// input's difference from the baseline. `gradients(points, count)` gives the gradient at
    /// each of `count` points, one after another.
    fn attributions(
        &self,
        mut gradients: impl FnMut(&[f32], usize) -> Result<Vec<f32>>,
    ) -> Result<Vec<f32>> {
        let input = self.x.len();
        let delta: Vec<f32> = (self.x.iter().zip(self.baseline))
            .map(|(a, b)| a - b)
            .collect();
        let m = self.steps;
        let mut total = vec![0.0f64; input];
        for first in (0..m).step_by(self.batch.max(1)) {
            let points: Vec<f32> = (first..m.min(first + self.batch))
                .flat_map(|j| {
                    let a = (j as f32 + 0.5) / m as f32;
                    (self.baseline.iter().zip(&delta)).map(move |(b, d)| b + a * d)
                })
                .collect();
            let count = points.len() / input;
            for grad in gradients(&points, count)?.chunks(input) {
                (total.iter_mut().zip(grad)).for_each(|(t, &g)| *t += g as f64);
            }
        }
        Ok((total.iter().zip(&delta))
            .map(|(t, d)| (t / m as f64) as f32 * d)
            .collect())
    }
}

/// The heat map of `class`'s score for one input `x` (as the model takes it) by the model's
/// default method, computed with the CPU reference instead of the GPU: for the web page, which
/// explains one drawing and may not wait on the GPU. The method and the map `[H, W]`.
pub fn reference_map(
    spec: &ModelSpec,
    params: &[f32],
    x: &[f32],
    class: usize,
) -> Result<(Method, Vec<f32>)> {
    let plan = spec.plan()?;
    let method = Method::default_for(&plan);
    let gradients = |points: &[f32], count: usize| {
        crate::model::reference::class_score_gradients(spec, params, points, &vec![class; count])
    };
    let map = match (method, grad_cam_feature(&plan)) {
        (Method::GradCam, Some(feature)) => {
            let (tensors, grads) = gradients(x, 1);
            let shape = plan.tensors[feature].shape;
            grad_cam_map(&tensors[feature], &grads[feature], shape, spec.input)
        }
        (Method::Integrated, _) => {
            let baseline = black_baseline(spec);
            let path = IntegrationPath {
                x,
                baseline: &baseline,
                steps: DEFAULT_STEPS,
                batch: DEFAULT_STEPS,
            };
            let attributions =
                path.attributions(|points, count| Ok(gradients(points, count).1.swap_remove(0)))?;
            integrated_map(&attributions, spec.input)
        }
        _ => saliency_map(&gradients(x, 1).1[0], spec.input),
    };
    Ok((method, map))
}

/// Saliency: the largest |gradient| over each pixel's channels, `[H, W]`.
pub fn saliency_map(input_grad: &[f32], input: Shape) -> Vec<f32> {
    (input_grad.chunks(input.channels))
        .map(|pixel| pixel.iter().fold(0.0f32, |m, g| m.max(g.abs())))
        .collect()
}

/// Integrated gradients' map: the sum of |attribution| over each pixel's channels, `[H, W]`.
pub fn integrated_map(attributions: &[f32], input: Shape) -> Vec<f32> {
    (attributions.chunks(input.channels))
        .map(|pixel| pixel.iter().map(|a| a.abs()).sum())
        .collect()
}

/// Grad-CAM from a feature map `[h, w, K]` and the score's gradient with respect to it, resized
/// to the input's H × W.
pub fn grad_cam_map(values: &[f32], grad: &[f32], feature: Shape, input: Shape) -> Vec<f32> {
    let k = feature.channels;
    let positions = feature.height * feature.width;
    let mut weights = vec![0.0f64; k];
    for (i, &g) in grad.iter().enumerate() {
        weights[i % k] += g as f64;
    }
    let cam: Vec<f32> = (values.chunks(k))
        .map(|a| {
            let sum: f64 = a.iter().zip(&weights).map(|(&v, w)| v as f64 * w).sum();
            (sum / positions as f64).max(0.0) as f32
        })
        .collect();
    resize_bilinear(
        &cam,
        (feature.height, feature.width),
        (input.height, input.width),
    )
}

/// `map` `[h, w]` resized to `[height, width]`: bilinear with half-pixel centres, edges clamped
/// (PyTorch's `interpolate(mode="bilinear", align_corners=False)`).
pub fn resize_bilinear(
    map: &[f32],
    (h, w): (usize, usize),
    (height, width): (usize, usize),
) -> Vec<f32> {
    let source = |out: usize, size_in: usize, size_out: usize| {
        let at = ((out as f64 + 0.5) * size_in as f64 / size_out as f64 - 0.5).max(0.0);
        let low = (at.floor() as usize).min(size_in - 1);
        (low, (low + 1).min(size_in - 1), at - low as f64)
    };
    let mut out = Vec::with_capacity(height * width);
    for y in 0..height {
        let (y0, y1, fy) = source(y, h, height);
        for x in 0..width {
            let (x0, x1, fx) = source(x, w, width);
            let v = |yy: usize, xx: usize| map[yy * w + xx] as f64;
            let top = v(y0, x0) * (1.0 - fx) + v(y0, x1) * fx;
            let bottom = v(y1, x0) * (1.0 - fx) + v(y1, x1) * fx;
            out.push((top * (1.0 - fy) + bottom * fy) as f32);
        }
    }
    out
}

/// How much of a heat map lies on a grey image's ink: the map's mean over the pixels at least a
/// quarter bright, dilated by one pixel, over its mean over the whole image (NaN for a map that
/// is zero everywhere). `pixels` and `map` are `[H, W]` with rows of `width`.
pub fn mass_on_ink(map: &[f32], pixels: &[u8], width: usize) -> f64 {
    let height = pixels.len() / width;
    let inked = |y: usize, x: usize| pixels[y * width + x] >= 64;
    let mut inside = (0.0, 0usize);
    for y in 0..height {
        for x in 0..width {
            let rows = y.saturating_sub(1)..(y + 2).min(height);
            let near = rows
                .into_iter()
                .any(|yy| (x.saturating_sub(1)..(x + 2).min(width)).any(|xx| inked(yy, xx)));
            if near {
                inside.0 += map[y * width + x] as f64;
                inside.1 += 1;
            }
        }
    }
    let total: f64 = map.iter().map(|&v| v as f64).sum();
    (inside.0 / inside.1 as f64) / (total / map.len() as f64)
}

/// Pixel flipping (Samek et al. 2017) for grey images: the mean drop of each explained class's
/// score (CPU reference) when each image loses (is set to `black`, the black pixel as the model
/// takes it) the `k` pixels its map ranks highest, over the drop when it loses `k` of its inked
/// pixels drawn at random with `seed`: above 1 where the maps find the pixels the scores rest
/// on. `x`: the images as the model takes them; `pixels`: their bytes; `maps`: per image, the
/// class explained and its map.
pub fn deletion_ratio(
    (spec, params): (&ModelSpec, &[f32]),
    (x, pixels, black): (&[f32], &[u8], f32),
    maps: &[(usize, Vec<f32>)],
    k: usize,
    seed: u64,
) -> f64 {
    let features = spec.input.len();
    let mut rng = crate::rng::Rng::new(seed);
    let (mut by_map, mut at_random) = (x.to_vec(), x.to_vec());
    for (i, (_, map)) in maps.iter().enumerate() {
        let mut ranked: Vec<usize> = (0..features).collect();
        ranked.sort_by(|&a, &b| map[b].total_cmp(&map[a]));
        for &p in &ranked[..k] {
            by_map[i * features + p] = black;
        }
        let ink: Vec<usize> = (0..features)
            .filter(|&p| pixels[i * features + p] > 0)
            .collect();
        for _ in 0..k {
            at_random[i * features + ink[rng.below(ink.len())]] = black;
        }
    }
    let classes = spec.classes();
    let before = forward(spec, params, x).pop().expect("logits");
    let drop = |changed: &[f32]| {
        let after = forward(spec, params, changed).pop().expect("logits");
        (maps.iter().enumerate())
            .map(|(i, &(c, _))| (before[i * classes + c] - after[i * classes + c]) as f64)
            .sum::<f64>()
    };
    drop(&by_map) / drop(&at_random)
}
