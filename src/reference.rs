//! Plain CPU versions of every GPU kernel, written for clarity rather than speed: the ground
//! truth the kernels are tested against. The layers' references are made of them, and
//! `crate::model::reference` composes those into a reference training step.

use crate::data::Dataset;
use crate::gpu::uniforms::{MatmulDims, OptimizerHyper, StepParams};
use crate::rng::{dropout_keeps, dropout_threshold};
use crate::shapes::{Geometry, LayerActivation, Loss};

/// matmul.wgsl: out[c_offset + m N + n] = Σ_k A(m, k) B(k, n), accumulated in f64, then with an
/// epilogue f(sum + bias[n]) or f(sum) in f32.
pub fn matmul(dims: &MatmulDims, lhs: &[f32], rhs: &[f32], out: &mut [f32]) {
    for m in 0..dims.m as usize {
        for n in 0..dims.n as usize {
            let sum: f64 = (0..dims.k as usize)
                .map(|k| lhs[dims.lhs_index(m, k)] as f64 * rhs[dims.rhs_index(k, n)] as f64)
                .sum();
            let bias = match dims.epilogue_adds_bias() {
                true => rhs[dims.bias_offset as usize + n],
                false => 0.0,
            };
            out[dims.out_index(m, n)] = match dims.epilogue_activation() {
                Some(f) => f.apply(sum as f32 + bias),
                None => sum as f32,
            };
        }
    }
}

/// matmul_vec4.wgsl's matmul_nt with the backward epilogue: the product of `matmul`, each
/// element then multiplied by f'(below[same index]) (`MatmulDims::derivative_activation`).
pub fn matmul_through_derivative(
    dims: &MatmulDims,
    lhs: &[f32],
    rhs: &[f32],
    below: &[f32],
    out: &mut [f32],
) {
    let activation = dims
        .derivative_activation()
        .expect("dims with a derivative epilogue");
    matmul(dims, lhs, rhs, out);
    for m in 0..dims.m as usize {
        for n in 0..dims.n as usize {
            let i = dims.out_index(m, n);
            out[i] *= activation.derivative_from_output(below[i]);
        }
    }
}

/// The forward epilogue of the matmul kernels: values[r, j] = f(values[r, j] + bias[j]).
pub fn bias_activation_forward(values: &mut [f32], bias: &[f32], activation: LayerActivation) {
    for row in values.chunks_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v = activation.apply(*v + b);
        }
    }
}

/// activation.wgsl `activation_backward`: grad[r, j] *= f'(output[r, j]) in place; returns the
/// bias gradient Σ_r grad[r, j].
pub fn activation_backward(
    grad: &mut [f32],
    output: &[f32],
    cols: usize,
    activation: LayerActivation,
) -> Vec<f32> {
    let mut bias_grad = vec![0.0f64; cols];
    for (i, (g, a)) in grad.iter_mut().zip(output).enumerate() {
        *g *= activation.derivative_from_output(*a);
        bias_grad[i % cols] += *g as f64;
    }
    bias_grad.into_iter().map(|g| g as f32).collect()
}

/// What loss.wgsl produces for one batch.
#[derive(Debug, Clone, PartialEq)]
pub struct LossOutput {
    pub sample_loss: Vec<f32>,
    pub sample_correct: Vec<u32>,
    /// First argmax of each row's logits.
    pub sample_prediction: Vec<u32>,
    /// dL/dlogits of the batch-mean loss.
    pub logits_grad: Vec<f32>,
}

/// loss.wgsl: softmax, then cross-entropy (with `label_smoothing` ε: against the target
/// (1 − ε) one-hot + ε / classes, as PyTorch's `F.cross_entropy(..., label_smoothing=ε)`) or mean
/// squared error against one-hot labels (which takes no smoothing).
pub fn softmax_loss(
    loss: Loss,
    label_smoothing: f32,
    logits: &[f32],
    labels: &[u32],
    classes: usize,
) -> LossOutput {
    let rows = labels.len();
    let mut out = LossOutput {
        sample_loss: Vec::with_capacity(rows),
        sample_correct: Vec::with_capacity(rows),
        sample_prediction: Vec::with_capacity(rows),
        logits_grad: vec![0.0; rows * classes],
    };
    for (r, &label) in labels.iter().enumerate() {
        let z: Vec<f64> = logits[r * classes..(r + 1) * classes]
            .iter()
            .map(|&v| v as f64)
            .collect();
        let label = label as usize;
        let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let argmax = z.iter().position(|&v| v == max).unwrap_or(0);
        let log_sum_exp = max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
        let p: Vec<f64> = z.iter().map(|v| (v - log_sum_exp).exp()).collect();
        let target = |j: usize| if j == label { 1.0 } else { 0.0 };
        let grad = &mut out.logits_grad[r * classes..(r + 1) * classes];
        let sample_loss = match loss {
            Loss::Xent => {
                let e = label_smoothing as f64;
                let smoothed = |j: usize| (1.0 - e) * target(j) + e / classes as f64;
                for j in 0..classes {
                    grad[j] = ((p[j] - smoothed(j)) / rows as f64) as f32;
                }
                (0..classes)
                    .map(|j| smoothed(j) * (log_sum_exp - z[j]))
                    .sum::<f64>()
            }
            Loss::Mse => {
                let c = classes as f64;
                let g: Vec<f64> = (0..classes)
                    .map(|j| 2.0 * (p[j] - target(j)) / (c * rows as f64))
                    .collect();
                let g_dot_p: f64 = g.iter().zip(&p).map(|(g, p)| g * p).sum();
                for k in 0..classes {
                    grad[k] = (p[k] * (g[k] - g_dot_p)) as f32;
                }
                (0..classes)
                    .map(|j| (p[j] - target(j)).powi(2))
                    .sum::<f64>()
                    / c
            }
        };
        out.sample_loss.push(sample_loss as f32);
        out.sample_correct.push((argmax == label) as u32);
        out.sample_prediction.push(argmax as u32);
    }
    out
}

/// gather.wgsl: the normalised batch x (rows × features) and its labels, in `order` from `start`:
/// `crate::input::gather_batch` without standardisation or augmentation.
pub fn gather_batch(
    data: &Dataset,
    order: &[u32],
    start: usize,
    rows: usize,
) -> (Vec<f32>, Vec<u32>) {
    crate::input::gather_batch(data, order, start, rows, None, None)
}

/// optimizer.wgsl `sgd_update` (shared/update_rules.wgsl `plain_sgd`): p −= lr (g + wd p).
pub fn sgd_update(params: &mut [f32], grads: &[f32], hyper: &OptimizerHyper, learning_rate: f32) {
    for (p, g) in params.iter_mut().zip(grads) {
        *p -= learning_rate * (g + hyper.weight_decay * *p);
    }
}

/// optimizer.wgsl `momentum_update` (`momentum_sgd`): torch.optim.SGD with momentum μ and
/// dampening 0: d = g + wd p; b = μ b + d; p −= lr (d + μ b) with Nesterov, lr b without.
pub fn momentum_update(
    params: &mut [f32],
    grads: &[f32],
    buffer: &mut [f32],
    hyper: &OptimizerHyper,
    learning_rate: f32,
) {
    for i in 0..params.len() {
        let d = grads[i] + hyper.weight_decay * params[i];
        let b = hyper.momentum * buffer[i] + d;
        let direction = if hyper.nesterov != 0 {
            d + hyper.momentum * b
        } else {
            b
        };
        buffer[i] = b;
        params[i] -= learning_rate * direction;
    }
}

/// optimizer.wgsl `adam_update` (`adam`): Adam with L2 decay (`hyper.weight_decay`) or AdamW's
/// decoupled decay (`step.decay_factor`), step size `step.adam_step_size`.
pub fn adam_update(
    params: &mut [f32],
    grads: &[f32],
    moment1: &mut [f32],
    moment2: &mut [f32],
    hyper: &OptimizerHyper,
    step: &StepParams,
) {
    for i in 0..params.len() {
        let d = grads[i] + hyper.weight_decay * params[i];
        let m = hyper.beta1 * moment1[i] + (1.0 - hyper.beta1) * d;
        let v = hyper.beta2 * moment2[i] + (1.0 - hyper.beta2) * d * d;
        moment1[i] = m;
        moment2[i] = v;
        params[i] =
            params[i] * step.decay_factor - step.adam_step_size * m / (v.sqrt() + hyper.epsilon);
    }
}

/// Σ_r values[r, j] for each column j of `[rows, cols]` values, in f64, rounded once.
pub fn column_sums(values: &[f32], cols: usize) -> Vec<f32> {
    let mut sums = vec![0.0f64; cols];
    for (i, &v) in values.iter().enumerate() {
        sums[i % cols] += v as f64;
    }
    sums.into_iter().map(|s| s as f32).collect()
}

/// conv2d.wgsl `im2col`: the patch matrix of a convolution over `rows` samples of x (channels-last
/// `[rows, H, W, C]`): row `(n, oy, ox)` holds the window under output position (oy, ox),
/// column `(ky kw + kx) C + c` the input x[n, oy s + ky - pad, ox s + kx - pad, c] (zero outside
/// the image), then a one (its product with the bias row is the bias) and zeros to `columns`.
pub fn im2col(x: &[f32], rows: usize, geometry: &Geometry, columns: usize) -> Vec<f32> {
    let (input, (wy, wx)) = (geometry.input, (geometry.rows, geometry.columns));
    let channels = input.channels;
    let patch = wy.size * wx.size * channels;
    let mut patches = vec![0.0; rows * geometry.positions() * columns];
    for n in 0..rows {
        for oy in 0..wy.output {
            for ox in 0..wx.output {
                let row = (n * wy.output + oy) * wx.output + ox;
                let out = &mut patches[row * columns..(row + 1) * columns];
                for ky in 0..wy.size {
                    for kx in 0..wx.size {
                        let (Some(iy), Some(ix)) = (wy.input_at(oy, ky), wx.input_at(ox, kx))
                        else {
                            continue;
                        };
                        let from = ((n * input.height + iy) * input.width + ix) * channels;
                        let to = (ky * wx.size + kx) * channels;
                        out[to..to + channels].copy_from_slice(&x[from..from + channels]);
                    }
                }
                out[patch] = 1.0;
            }
        }
    }
    patches
}

/// conv2d.wgsl `col2im`: the input gradient of a convolution from the gradient of its patch
/// matrix (`[rows positions, columns]`, laid out as `im2col`'s): each input value sums the
/// patch entries that copied it, kernel rows then columns in ascending order; then, where
/// `below` is not the identity, times below'(x) (the derivative of the layer beneath, from its
/// output x, this layer's input).
pub fn col2im(
    patch_grads: &[f32],
    rows: usize,
    geometry: &Geometry,
    columns: usize,
    x: &[f32],
    below: LayerActivation,
) -> Vec<f32> {
    let (input, (wy, wx)) = (geometry.input, (geometry.rows, geometry.columns));
    let channels = input.channels;
    let mut grads = vec![0.0f32; rows * input.len()];
    for n in 0..rows {
        for iy in 0..input.height {
            for ix in 0..input.width {
                for c in 0..channels {
                    let mut sum = 0.0f32;
                    for ky in 0..wy.size {
                        for kx in 0..wx.size {
                            let (Some(oy), Some(ox)) = (wy.output_at(iy, ky), wx.output_at(ix, kx))
                            else {
                                continue;
                            };
                            let row = (n * wy.output + oy) * wx.output + ox;
                            sum += patch_grads[row * columns + (ky * wx.size + kx) * channels + c];
                        }
                    }
                    let i = ((n * input.height + iy) * input.width + ix) * channels + c;
                    grads[i] = sum * below.derivative_from_output(x[i]);
                }
            }
        }
    }
    grads
}

/// pool.wgsl `maxpool_forward`: each output the maximum of its window of x (channels-last), and
/// where it was: the window offset dy size + dx of the first maximum in row-major order.
pub fn maxpool_forward(x: &[f32], rows: usize, geometry: &Geometry) -> (Vec<f32>, Vec<u32>) {
    let (input, output) = (geometry.input, geometry.output);
    let (wy, wx) = (geometry.rows, geometry.columns);
    let channels = input.channels;
    let mut y = Vec::with_capacity(rows * output.len());
    let mut argmax = Vec::with_capacity(rows * output.len());
    for n in 0..rows {
        for oy in 0..output.height {
            for ox in 0..output.width {
                for c in 0..channels {
                    let mut best = (f32::NEG_INFINITY, 0u32);
                    for dy in 0..wy.size {
                        for dx in 0..wx.size {
                            let iy = oy * wy.stride + dy;
                            let ix = ox * wx.stride + dx;
                            let v = x[((n * input.height + iy) * input.width + ix) * channels + c];
                            if v > best.0 || (dy == 0 && dx == 0) {
                                best = (v, (dy * wx.size + dx) as u32);
                            }
                        }
                    }
                    y.push(best.0);
                    argmax.push(best.1);
                }
            }
        }
    }
    (y, argmax)
}

/// The value at each window's argmax: `values` `[rows, H, W, C]` read where `argmax` (from
/// `maxpool_forward`) says each window's maximum was, `[rows, OH, OW, C]` (of the values the
/// maximum was taken of, the pooled output itself).
pub fn maxpool_winners(
    values: &[f32],
    argmax: &[u32],
    rows: usize,
    geometry: &Geometry,
) -> Vec<f32> {
    let (input, output) = (geometry.input, geometry.output);
    let (wy, wx) = (geometry.rows, geometry.columns);
    let channels = input.channels;
    let mut winners = Vec::with_capacity(rows * output.len());
    for n in 0..rows {
        for oy in 0..output.height {
            for ox in 0..output.width {
                for c in 0..channels {
                    let o = ((n * output.height + oy) * output.width + ox) * channels + c;
                    let at = argmax[o] as usize;
                    let iy = oy * wy.stride + at / wx.size;
                    let ix = ox * wx.stride + at % wx.size;
                    winners
                        .push(values[((n * input.height + iy) * input.width + ix) * channels + c]);
                }
            }
        }
    }
    winners
}

/// pool.wgsl `maxpool_backward`: each input value gets the gradient of every output whose window
/// it won (in output order), times below'(x) as in `col2im`.
pub fn maxpool_backward(
    output_grads: &[f32],
    argmax: &[u32],
    rows: usize,
    geometry: &Geometry,
    x: &[f32],
    below: LayerActivation,
) -> Vec<f32> {
    let (input, output) = (geometry.input, geometry.output);
    let (wy, wx) = (geometry.rows, geometry.columns);
    let channels = input.channels;
    let mut grads = vec![0.0f32; rows * input.len()];
    for n in 0..rows {
        for iy in 0..input.height {
            for ix in 0..input.width {
                for c in 0..channels {
                    let mut sum = 0.0f32;
                    for dy in 0..wy.size {
                        for dx in 0..wx.size {
                            let (Some(oy), Some(ox)) = (wy.output_at(iy, dy), wx.output_at(ix, dx))
                            else {
                                continue;
                            };
                            let o = ((n * output.height + oy) * output.width + ox) * channels + c;
                            if argmax[o] == (dy * wx.size + dx) as u32 {
                                sum += output_grads[o];
                            }
                        }
                    }
                    let i = ((n * input.height + iy) * input.width + ix) * channels + c;
                    grads[i] = sum * below.derivative_from_output(x[i]);
                }
            }
        }
    }
    grads
}

/// dropout.wgsl `dropout_forward` in training: y = x / (1 - rate) where kept, else 0.
pub fn dropout_forward(x: &[f32], layer_key: u32, step: u32, rate: f32) -> Vec<f32> {
    let threshold = dropout_threshold(rate);
    let scale = 1.0 / (1.0 - rate);
    (x.iter().enumerate())
        .map(
            |(i, &v)| match dropout_keeps(layer_key, step, i as u32, threshold) {
                true => v * scale,
                false => 0.0,
            },
        )
        .collect()
}

/// dropout.wgsl `dropout_backward`: dx = dy / (1 - rate) where kept, else 0; then times
/// below'(x) as in `col2im`.
pub fn dropout_backward(
    output_grads: &[f32],
    layer_key: u32,
    step: u32,
    rate: f32,
    x: &[f32],
    below: LayerActivation,
) -> Vec<f32> {
    let masked = dropout_forward(output_grads, layer_key, step, rate);
    (masked.iter().zip(x))
        .map(|(&g, &x)| g * below.derivative_from_output(x))
        .collect()
}

/// activation.wgsl `apply_derivative`: grad[i] *= f'(output[i]).
pub fn apply_derivative(grad: &mut [f32], output: &[f32], activation: LayerActivation) {
    for (g, &a) in grad.iter_mut().zip(output) {
        *g *= activation.derivative_from_output(a);
    }
}

/// The element of `actual` furthest outside `|actual - expected| <= atol + rtol |expected|`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mismatch {
    pub index: usize,
    pub actual: f32,
    pub expected: f32,
    /// |actual - expected| / (atol + rtol |expected|): above 1 fails.
    pub ratio: f64,
}

/// Compares element-wise; on failure returns the worst element (NaN counts as worst).
pub fn compare(actual: &[f32], expected: &[f32], atol: f32, rtol: f32) -> Result<(), Mismatch> {
    match worst_element(actual, expected, atol, rtol) {
        Some(m) if m.ratio > 1.0 => Err(m),
        _ => Ok(()),
    }
}

/// The element furthest from `expected` relative to its tolerance (`None` for empty slices).
pub fn worst_element(actual: &[f32], expected: &[f32], atol: f32, rtol: f32) -> Option<Mismatch> {
    assert_eq!(
        actual.len(),
        expected.len(),
        "compared slices differ in length"
    );
    actual
        .iter()
        .zip(expected)
        .enumerate()
        .map(|(index, (&a, &e))| {
            let allowed = (atol + rtol * e.abs()) as f64;
            let difference = (a - e).abs() as f64;
            // Exact agreement passes even with no tolerance at all (0 / 0); a NaN never does
            // (`f64::max` would have dropped it).
            let ratio = match (a == e, difference / allowed) {
                (true, _) => 0.0,
                (false, ratio) if ratio.is_nan() => f64::INFINITY,
                (false, ratio) => ratio,
            };
            Mismatch {
                index,
                actual: a,
                expected: e,
                ratio,
            }
        })
        .max_by(|x, y| x.ratio.total_cmp(&y.ratio))
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "worst element {}: got {}, expected {} ({:.2}x the tolerance)",
            self.index, self.actual, self.expected, self.ratio
        )
    }
}

#[cfg(test)]
mod tests {
    use super::worst_element;

    #[test]
    fn a_nan_is_the_worst_element_and_exact_zeros_pass_without_tolerance() {
        let worst = worst_element(&[0.0, f32::NAN, 1.0], &[0.0, 0.0, 1.0], 0.0, 1e-6).unwrap();
        assert_eq!(worst.index, 1);
        assert!(worst.ratio.is_infinite());
        let exact = worst_element(&[0.0, 2.0], &[0.0, 2.0], 0.0, 0.0).unwrap();
        assert_eq!(exact.ratio, 0.0);
        let off = worst_element(&[1e-9], &[0.0], 0.0, 1e-6).unwrap();
        assert!(off.ratio.is_infinite());
        let finite = worst_element(&[1.0], &[f32::INFINITY], 0.0, 1e-6).unwrap();
        assert!(finite.ratio.is_infinite());
    }
}
