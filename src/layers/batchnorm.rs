//! BatchNorm (`shaders/batchnorm.wgsl`), PyTorch's BatchNorm2d over channels (BatchNorm1d over
//! the features of a flat input).
//!
//! Forward, x `[rows, H, W, C]` (N = rows H W values per channel) → y `[rows, H, W, C]`:
//! in training y = f(γ (x - mean) / sqrt(var + eps) + β), f the identity or the activation
//! folded in (`bn:relu`), with the batch's mean and biased variance,
//! and the running mean and unbiased variance updated with momentum 0.1; in evaluation the same
//! with the running statistics. Backward, from dz = dy ⊙ f'(y): dβ = Σ dz, dγ = Σ dz x̂ (x̂ the
//! normalised x), dx = γ / sqrt(var + eps) (dz - dβ / N - x̂ dγ / N); in evaluation (an
//! explanation's gradients) dx = γ dz / sqrt(running_var + eps).
//! Parameters: γ (init 1) and β (init 0) trained; running mean (0) and variance (1) state.
//! PyTorch names: `weight`, `bias`, `running_mean`, `running_var`, `num_batches_tracked`.

use wgpu::Buffer;

use super::context::LayerContext;
use super::kind::{
    DeviceArgs, LayerKind, Parameters, ReferenceBackward, ReferenceForward, TensorMapping,
    TokenOptions,
};
use super::{Backward, DeviceLayer, DevicePasses, LayerIo, channels_last_index};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::gpu::Kernel;
use crate::gpu::kernels::NormPass;
use crate::gpu::program::Program;
use crate::gpu::uniforms::NormShape;
use crate::shapes::{
    BATCH_NORM_EPSILON, BATCH_NORM_MOMENTUM, LayerActivation, NormParams, Shape, WeightMatrix,
};

/// A BatchNorm in a training program, with the batch's mean and inverse deviation per channel.
pub(crate) struct BatchNormDevice {
    norm: NormParams,
    /// The activation folded into the normalisation (`bn:relu`).
    activation: LayerActivation,
    /// Where the state buffer starts in the host's vector (`ParamLayout::trained`).
    state_start: usize,
    positions: usize,
    stats: Buffer,
}

impl BatchNormDevice {
    pub fn new(
        gpu: &Gpu,
        input: Shape,
        norm: NormParams,
        activation: LayerActivation,
        state_start: usize,
    ) -> Result<Self> {
        Ok(BatchNormDevice {
            activation,
            stats: gpu.storage_buffer("batchnorm statistics", (2 * norm.channels * 4) as u64)?,
            positions: input.height * input.width,
            state_start,
            norm,
        })
    }

    /// The passes' parameters; `activation`: applied (normalize), or whose derivative the
    /// backward passes take.
    fn shape(
        &self,
        context: &LayerContext<'_, '_>,
        rows: usize,
        training: bool,
        activation: LayerActivation,
    ) -> Buffer {
        let n = &self.norm;
        let shape = NormShape {
            values: (rows * self.positions) as u32,
            channels: n.channels as u32,
            gamma: n.gamma as u32,
            beta: n.beta as u32,
            running_mean: (n.running_mean - self.state_start) as u32,
            running_var: (n.running_var - self.state_start) as u32,
            training: training as u32,
            momentum: BATCH_NORM_MOMENTUM,
            epsilon: BATCH_NORM_EPSILON,
            activation: activation.shader_code(),
            _pad: [0; 2],
        };
        context.gpu.params_with("batchnorm shape", &shape)
    }

    /// The kernel and grid of `pass` over `rows` samples.
    fn launch<'k>(
        &self,
        context: &LayerContext<'_, 'k>,
        pass: NormPass,
        rows: usize,
    ) -> (&'k Kernel, [u32; 3]) {
        let values = rows * self.positions;
        let kernels = context.kernels.batchnorm();
        kernels.launch(pass, self.norm.channels, values, context.max_groups())
    }
}

impl DevicePasses for BatchNormDevice {
    fn record_forward<'k>(
        &self,
        context: &LayerContext<'_, 'k>,
        program: &mut Program<'k>,
        io: &LayerIo<'_>,
        rows: usize,
        training: bool,
    ) {
        let shape = self.shape(context, rows, training, self.activation);
        if training {
            let resources = [
                shape.as_entire_binding(),
                io.input.buffer.as_entire_binding(),
                self.stats.as_entire_binding(),
                context.state.as_entire_binding(),
            ];
            let (kernel, grid) = self.launch(context, NormPass::Statistics, rows);
            program.dispatch(context.gpu, kernel, &resources, grid);
        }
        let resources = [
            shape.as_entire_binding(),
            io.input.buffer.as_entire_binding(),
            self.stats.as_entire_binding(),
            context.state.as_entire_binding(),
            context.params.buffer.as_entire_binding(),
            io.output.buffer.as_entire_binding(),
        ];
        let (kernel, grid) = self.launch(context, NormPass::Normalize, rows);
        program.dispatch(context.gpu, kernel, &resources, grid);
    }

    fn record_backward<'k>(
        &self,
        context: &LayerContext<'_, 'k>,
        program: &mut Program<'k>,
        io: &LayerIo<'_>,
        rows: usize,
        backward: Backward,
    ) -> bool {
        let derivative = match backward.derivative_applied {
            true => LayerActivation::Identity,
            false => self.activation,
        };
        if !backward.training {
            let Some(input_grad) = io.input_grad else {
                return false;
            };
            let shape = self.shape(context, rows, false, derivative);
            let resources = [
                shape.as_entire_binding(),
                context.state.as_entire_binding(),
                context.params.buffer.as_entire_binding(),
                io.output_grad.buffer.as_entire_binding(),
                input_grad.buffer.as_entire_binding(),
                io.output.buffer.as_entire_binding(),
            ];
            let (kernel, grid) = self.launch(context, NormPass::BackwardInputEvaluation, rows);
            program.dispatch(context.gpu, kernel, &resources, grid);
            return false;
        }
        let shape = self.shape(context, rows, true, derivative);
        let resources = [
            shape.as_entire_binding(),
            io.input.buffer.as_entire_binding(),
            self.stats.as_entire_binding(),
            io.output_grad.buffer.as_entire_binding(),
            context.grads.as_entire_binding(),
            io.output.buffer.as_entire_binding(),
        ];
        let (kernel, grid) = self.launch(context, NormPass::BackwardSums, rows);
        program.dispatch(context.gpu, kernel, &resources, grid);
        let Some(input_grad) = io.input_grad else {
            return false;
        };
        let resources = [
            shape.as_entire_binding(),
            io.input.buffer.as_entire_binding(),
            self.stats.as_entire_binding(),
            context.params.buffer.as_entire_binding(),
            io.output_grad.buffer.as_entire_binding(),
            context.grads.as_entire_binding(),
            input_grad.buffer.as_entire_binding(),
            io.output.buffer.as_entire_binding(),
        ];
        let (kernel, grid) = self.launch(context, NormPass::BackwardInput, rows);
        program.dispatch(context.gpu, kernel, &resources, grid);
        false
    }
}

/// The per-channel mean and biased variance of x `[N, C]`, summed in f64.
fn channel_statistics(x: &[f32], channels: usize) -> (Vec<f32>, Vec<f32>) {
    let n = (x.len() / channels) as f64;
    let mut sums = vec![0.0f64; channels];
    for (i, &v) in x.iter().enumerate() {
        sums[i % channels] += v as f64;
    }
    let means: Vec<f64> = sums.iter().map(|s| s / n).collect();
    let mut squares = vec![0.0f64; channels];
    for (i, &v) in x.iter().enumerate() {
        let d = v as f64 - means[i % channels];
        squares[i % channels] += d * d;
    }
    let means32 = means.iter().map(|&m| m as f32).collect();
    (means32, squares.iter().map(|s| (s / n) as f32).collect())
}

/// A BatchNorm's running mean and variance, `[C]` each.
pub type RunningStatistics = (Vec<f32>, Vec<f32>);

/// BatchNorm forward, CPU reference: x `[N, C]` (channels-last) → y `[N, C]`, with `params`
/// holding γ and β at `norm`'s offsets and `running` the running mean and variance. In training,
/// the batch's statistics, and the running statistics after the update.
pub fn reference_forward(
    norm: &NormParams,
    params: &[f32],
    (running_mean, running_var): (&[f32], &[f32]),
    x: &[f32],
    training: bool,
) -> (Vec<f32>, Option<RunningStatistics>) {
    let c = norm.channels;
    let gamma = &params[norm.gamma..norm.gamma + c];
    let beta = &params[norm.beta..norm.beta + c];
    let (mean, var, updated) = match training {
        true => {
            let (mean, var) = channel_statistics(x, c);
            let n = (x.len() / c) as f32;
            let m = BATCH_NORM_MOMENTUM;
            let unbiased = |v: f32| if n > 1.0 { v * n / (n - 1.0) } else { v };
            let new_mean = (0..c)
                .map(|j| (1.0 - m) * running_mean[j] + m * mean[j])
                .collect();
            let new_var = (0..c)
                .map(|j| (1.0 - m) * running_var[j] + m * unbiased(var[j]))
                .collect();
            (mean, var, Some((new_mean, new_var)))
        }
        false => (running_mean.to_vec(), running_var.to_vec(), None),
    };
    let invstd: Vec<f32> = var
        .iter()
        .map(|v| 1.0 / (v + BATCH_NORM_EPSILON).sqrt())
        .collect();
    let y = (x.iter().enumerate())
        .map(|(i, &v)| {
            let j = i % c;
            (v - mean[j]) * invstd[j] * gamma[j] + beta[j]
        })
        .collect();
    (y, updated)
}

/// BatchNorm backward in training, CPU reference: from x and dy `[N, C]`, dγ and dβ into `grads`
/// at `norm`'s offsets; dx `[N, C]` if `input_grad`.
pub fn reference_backward(
    norm: &NormParams,
    params: &[f32],
    x: &[f32],
    dy: &[f32],
    grads: &mut [f32],
    input_grad: bool,
) -> Option<Vec<f32>> {
    let c = norm.channels;
    let (mean, var) = channel_statistics(x, c);
    let invstd: Vec<f32> = var
        .iter()
        .map(|v| 1.0 / (v + BATCH_NORM_EPSILON).sqrt())
        .collect();
    let normalized = |i: usize| (x[i] - mean[i % c]) * invstd[i % c];
    let (mut sum, mut dot) = (vec![0.0f64; c], vec![0.0f64; c]);
    for (i, &g) in dy.iter().enumerate() {
        sum[i % c] += g as f64;
        dot[i % c] += g as f64 * normalized(i) as f64;
    }
    for j in 0..c {
        grads[norm.beta + j] = sum[j] as f32;
        grads[norm.gamma + j] = dot[j] as f32;
    }
    let n = (x.len() / c) as f32;
    input_grad.then(|| {
        (dy.iter().enumerate())
            .map(|(i, &g)| {
                let j = i % c;
                let gamma = params[norm.gamma + j];
                gamma * invstd[j] * (g - sum[j] as f32 / n - normalized(i) * dot[j] as f32 / n)
            })
            .collect()
    })
}

/// BatchNorm backward in evaluation (an explanation's gradients), CPU reference: dy `[N, C]` →
/// dx = γ dy / sqrt(running_var + eps), the running variance read from `params` (the host's
/// flat vector, state included) at `norm.running_var`.
pub fn reference_backward_evaluation(norm: &NormParams, params: &[f32], dy: &[f32]) -> Vec<f32> {
    let c = norm.channels;
    (dy.iter().enumerate())
        .map(|(i, &g)| {
            let j = i % c;
            let invstd = 1.0 / (params[norm.running_var + j] + BATCH_NORM_EPSILON).sqrt();
            params[norm.gamma + j] * invstd * g
        })
        .collect()
}

/// The most channels a BatchNorm normalises: a workgroup each in one grid dimension, within
/// every adapter's limit.
const MAX_NORM_CHANNELS: usize = 65_535;

/// BatchNorm as `--layers` names it: `bn`, or `bn:relu` (`:sigmoid`, `:tanh`) with the
/// activation after it folded into its passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchNorm {
    pub activation: LayerActivation,
}

impl BatchNorm {
    /// Reads `bn[:activation]`: linear unless it names one (not `--activation`: a BatchNorm is
    /// usually followed by its activation, or by a sum).
    pub fn parse(body: &str, options: &TokenOptions) -> Option<std::result::Result<Self, String>> {
        (body == "bn").then(|| match options.bias {
            true => Ok(BatchNorm {
                activation: options.activation.unwrap_or(LayerActivation::Identity),
            }),
            false => Err("only conv layers take :nobias".into()),
        })
    }
}

impl LayerKind for BatchNorm {
    fn token(&self) -> String {
        match self.activation {
            LayerActivation::Identity => "bn".into(),
            activation => format!("bn:{}", activation.name()),
        }
    }

    fn activation(&self) -> LayerActivation {
        self.activation
    }

    fn output_shape(&self, input: Shape) -> std::result::Result<Shape, String> {
        // One workgroup per channel (per four where they come in fours) in one grid dimension.
        match input.channels <= MAX_NORM_CHANNELS {
            true => Ok(input),
            false => Err(format!(
                "BatchNorm takes at most {MAX_NORM_CHANNELS} channels (or features), not {}",
                input.channels
            )),
        }
    }

    fn parameters(&self, input: Shape) -> Option<Parameters> {
        Some(Parameters::Norm {
            channels: input.channels,
        })
    }

    fn device(&self, args: &DeviceArgs<'_>) -> Result<DeviceLayer> {
        let norm = args.norm.expect("a BatchNorm has its tensors");
        let device = BatchNormDevice::new(
            args.gpu,
            args.input,
            norm,
            self.activation,
            args.state_start,
        )?;
        Ok(Box::new(device))
    }

    fn reference_forward(&self, args: ReferenceForward<'_>) -> Vec<f32> {
        let norm = args.norm.expect("a BatchNorm has its tensors");
        let c = norm.channels;
        let (mean, var) = (
            norm.running_mean - args.state_start,
            norm.running_var - args.state_start,
        );
        let running = (&args.state[mean..mean + c], &args.state[var..var + c]);
        let training = args.training.is_some();
        let (mut y, updated) = reference_forward(&norm, args.params, running, args.x, training);
        for value in &mut y {
            *value = self.activation.apply(*value);
        }
        if let Some((new_mean, new_var)) = updated {
            args.state[mean..mean + c].copy_from_slice(&new_mean);
            args.state[var..var + c].copy_from_slice(&new_var);
        }
        y
    }

    fn reference_backward(&self, args: ReferenceBackward<'_>) -> Option<Vec<f32>> {
        let norm = args.norm.expect("a BatchNorm has its tensors");
        if args.training.is_none() {
            let input_grad = args.input_grad;
            return input_grad.then(|| reference_backward_evaluation(&norm, args.params, args.dz));
        }
        reference_backward(
            &norm,
            args.params,
            args.x,
            args.dz,
            args.grads,
            args.input_grad,
        )
    }

    /// It keeps each value in its place: a dense layer after it still reads a Flatten's order.
    fn keeps_order(&self) -> bool {
        true
    }

    /// `nn.BatchNorm2d`'s `weight` (γ), `bias` (β), `running_mean` and `running_var`; over the
    /// features of a Flatten of C × H × W (`nn.BatchNorm1d` after `nn.Flatten`), in PyTorch's
    /// order of those features.
    fn file_tensors(
        &self,
        name: &str,
        _input: Shape,
        _matrix: Option<WeightMatrix>,
        norm: Option<NormParams>,
        flattened_from: Option<Shape>,
    ) -> Vec<TensorMapping> {
        let norm = norm.expect("a BatchNorm has its tensors");
        let c = norm.channels;
        [
            ("weight", norm.gamma),
            ("bias", norm.beta),
            ("running_mean", norm.running_mean),
            ("running_var", norm.running_var),
        ]
        .into_iter()
        .map(|(suffix, start)| TensorMapping {
            name: format!("{name}.{suffix}"),
            shape: vec![c],
            position: Box::new(move |j| start + channels_last_index(flattened_from, j)),
        })
        .collect()
    }
}
