//! Plain CPU versions of every GPU kernel, written for clarity rather than speed: the ground
//! truth the kernels are tested against, and, composed, a reference training step.

use crate::data::Dataset;
use crate::gpu::uniforms::{MatmulDims, OptimizerHyper};
use crate::model::{LayerActivation, Loss, ModelSpec};

/// matmul.wgsl: out[c_offset + m N + n] = Σ_k A(m, k) B(k, n), accumulated in f64, then with an
/// epilogue f(sum + bias[n]) in f32.
pub fn matmul(dims: &MatmulDims, lhs: &[f32], rhs: &[f32], out: &mut [f32]) {
    for m in 0..dims.m as usize {
        for n in 0..dims.n as usize {
            let sum: f64 = (0..dims.k as usize)
                .map(|k| lhs[dims.lhs_index(m, k)] as f64 * rhs[dims.rhs_index(k, n)] as f64)
                .sum();
            out[dims.out_index(m, n)] = match dims.epilogue_activation() {
                Some(f) => f.apply(sum as f32 + rhs[dims.bias_offset as usize + n]),
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

/// loss.wgsl: softmax, then cross-entropy or mean squared error against one-hot labels.
pub fn softmax_loss(loss: Loss, logits: &[f32], labels: &[u32], classes: usize) -> LossOutput {
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
                for j in 0..classes {
                    grad[j] = ((p[j] - target(j)) / rows as f64) as f32;
                }
                log_sum_exp - z[label]
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

/// gather.wgsl: the normalised batch x (rows × features) and its labels, in `order` from `start`.
pub fn gather_batch(
    data: &Dataset,
    order: &[u32],
    start: usize,
    rows: usize,
) -> (Vec<f32>, Vec<u32>) {
    let features = data.features;
    let mut x = Vec::with_capacity(rows * features);
    let mut y = Vec::with_capacity(rows);
    for &sample in &order[start..start + rows] {
        let sample = sample as usize;
        x.extend(
            data.pixels[sample * features..(sample + 1) * features]
                .iter()
                .map(|&p| p as f32 / 255.0),
        );
        y.push(data.labels[sample] as u32);
    }
    (x, y)
}

/// optimizer.wgsl `sgd_update`.
pub fn sgd_update(params: &mut [f32], grads: &[f32], learning_rate: f32) {
    for (p, g) in params.iter_mut().zip(grads) {
        *p -= learning_rate * g;
    }
}

/// Adam's bias-corrected step size for step `t` (counting from 1), in f64 then rounded once.
pub fn adam_step_size(learning_rate: f32, beta1: f32, beta2: f32, t: u64) -> f32 {
    let t = t as i32;
    let (b1, b2) = (beta1 as f64, beta2 as f64);
    (learning_rate as f64 * (1.0 - b2.powi(t)).sqrt() / (1.0 - b1.powi(t))) as f32
}

/// optimizer.wgsl `adam_update`.
pub fn adam_update(
    params: &mut [f32],
    grads: &[f32],
    moment1: &mut [f32],
    moment2: &mut [f32],
    hyper: &OptimizerHyper,
    step_size: f32,
) {
    for i in 0..params.len() {
        let g = grads[i];
        let m = hyper.beta1 * moment1[i] + (1.0 - hyper.beta1) * g;
        let v = hyper.beta2 * moment2[i] + (1.0 - hyper.beta2) * g * g;
        moment1[i] = m;
        moment2[i] = v;
        params[i] -= step_size * m / (v.sqrt() + hyper.epsilon);
    }
}

/// The result of a reference forward + backward pass over one batch.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceStep {
    /// Every layer's output, from the input batch (index 0) to the logits.
    pub activations: Vec<Vec<f32>>,
    pub loss: LossOutput,
    /// dL/dθ of the batch-mean loss, laid out like the parameters.
    pub grads: Vec<f32>,
}

impl ReferenceStep {
    pub fn mean_loss(&self) -> f64 {
        self.loss.sample_loss.iter().map(|&l| l as f64).sum::<f64>()
            / self.loss.sample_loss.len() as f64
    }
}

/// Every layer's output for the batch `x` (rows × inputs), from `x` itself to the logits.
pub fn forward(spec: &ModelSpec, params: &[f32], x: &[f32]) -> Vec<Vec<f32>> {
    let rows = x.len() / spec.inputs;
    let mut activations = vec![x.to_vec()];
    for (l, layer) in spec.layout().layers.iter().enumerate() {
        let dims = MatmulDims::layer_forward(rows, layer);
        let mut y = vec![0.0; rows * layer.outputs];
        matmul(&dims, &activations[l], params, &mut y);
        let bias = &params[layer.bias_offset..layer.bias_offset + layer.outputs];
        bias_activation_forward(&mut y, bias, spec.layer_activation(l));
        activations.push(y);
    }
    activations
}

/// Forward and backward through the whole network, built from the kernel references above in
/// the order the GPU runs them.
pub fn forward_backward(
    spec: &ModelSpec,
    params: &[f32],
    x: &[f32],
    labels: &[u32],
) -> ReferenceStep {
    let layout = spec.layout();
    let rows = labels.len();
    let activations = forward(spec, params, x);
    let loss = softmax_loss(spec.loss, activations.last().unwrap(), labels, spec.classes);

    let mut grads = vec![0.0; layout.total];
    let mut upstream = loss.logits_grad.clone();
    for (l, layer) in layout.layers.iter().enumerate().rev() {
        let bias_grad = activation_backward(
            &mut upstream,
            &activations[l + 1],
            layer.outputs,
            spec.layer_activation(l),
        );
        grads[layer.bias_offset..layer.bias_offset + layer.outputs].copy_from_slice(&bias_grad);
        let weight_dims = MatmulDims::layer_weight_grad(rows, layer);
        matmul(&weight_dims, &activations[l], &upstream, &mut grads);
        if l > 0 {
            let input_dims = MatmulDims::layer_input_grad(rows, layer);
            let mut downstream = vec![0.0; rows * layer.inputs];
            matmul(&input_dims, &upstream, params, &mut downstream);
            upstream = downstream;
        }
    }
    ReferenceStep {
        activations,
        loss,
        grads,
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
