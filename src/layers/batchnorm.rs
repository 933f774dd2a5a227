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
use super::{
    Backward, DeviceLayer, DevicePasses, DeviceTensor, LayerIo, channels_last_index,
    read_from_mirrors,
};
use crate::error::Result;
use crate::gpu::buffers::grid_1d;
use crate::gpu::kernels::{FamilyModule, KernelFamily, ROW_WORKGROUP, Slot};
use crate::gpu::program::Program;
use crate::gpu::{Gpu, Kernel, Kernels, ops};
use crate::shapes::{
    BATCH_NORM_EPSILON, BATCH_NORM_MOMENTUM, LayerActivation, NormParams, Shape, WeightMatrix,
};

/// `NormShape` in batchnorm.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NormShape {
    /// Values per channel: samples × positions.
    pub values: u32,
    pub channels: u32,
    /// γ's and β's offsets in the parameter (and gradient) buffer.
    pub gamma: u32,
    pub beta: u32,
    /// The running mean's and variance's offsets in the state buffer.
    pub running_mean: u32,
    pub running_var: u32,
    /// 1: normalise by the batch's statistics (and update the running ones).
    pub training: u32,
    pub momentum: f32,
    pub epsilon: f32,
    /// normalize: the activation applied to the normalised values; backward: the activation
    /// whose derivative is taken from Y (0 where the layer above applied it).
    pub activation: u32,
    pub _pad: [u32; 2],
}

/// The kernels of BatchNorm's four training passes in one form (one channel or four at a time,
/// operands from buffers or from their mirrors).
pub struct NormPassKernels {
    pub statistics: Kernel,
    pub normalize: Kernel,
    pub backward_sums: Kernel,
    pub backward_input: Kernel,
}

impl NormPassKernels {
    /// The passes' entry points of `module` (their `_quads` forms where `quads`), binding X, dY
    /// and Y as `operands` (buffers or mirrors).
    fn build(module: &FamilyModule<'_>, quads: bool, operands: Slot) -> Self {
        use Slot::*;
        let statistics = [(0, Params), (1, operands), (2, ReadWrite), (3, ReadWrite)];
        let normalize = [
            (0, Params),
            (1, operands),
            (2, Read),
            (3, Read),
            (4, Read),
            (7, ReadWrite),
        ];
        let sums = [
            (0, Params),
            (1, operands),
            (2, Read),
            (5, operands),
            (6, ReadWrite),
            (8, operands),
        ];
        let input = [
            (0, Params),
            (1, operands),
            (2, Read),
            (4, Read),
            (5, operands),
            (6, Read),
            (7, ReadWrite),
            (8, operands),
        ];
        let kernel = |scalar, four, slots: &[(u32, Slot)]| {
            module.kernel(if quads { four } else { scalar }, slots)
        };
        NormPassKernels {
            statistics: kernel(
                "batchnorm_statistics",
                "batchnorm_statistics_quads",
                &statistics,
            ),
            normalize: kernel(
                "batchnorm_normalize",
                "batchnorm_normalize_quads",
                &normalize,
            ),
            backward_sums: kernel(
                "batchnorm_backward_sums",
                "batchnorm_backward_sums_quads",
                &sums,
            ),
            backward_input: kernel(
                "batchnorm_backward_input",
                "batchnorm_backward_input_quads",
                &input,
            ),
        }
    }
}

/// batchnorm.wgsl: BatchNorm's per-channel statistics, normalisation and backward passes, for
/// any channel count and four channels at a time, reading storage buffers.
pub struct BatchNormKernels {
    pub scalar: NormPassKernels,
    pub quads: NormPassKernels,
    pub backward_input_evaluation: Kernel,
}

/// batchnorm_mirrors.wgsl (batchnorm.wgsl with the feature `mirrors`): the four-channel passes
/// reading X, dY and Y from their texture mirrors, for the adapters whose products read mirrors
/// (lavapipe, which loads a buffer lane by lane and fetches texels as vectors).
pub struct BatchNormMirrorKernels {
    pub quads: NormPassKernels,
}

/// BatchNorm's passes, for `BatchNormKernels::launch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormPass {
    Statistics,
    Normalize,
    BackwardSums,
    BackwardInput,
    /// The input gradient in evaluation (one channel at a time, whatever the count).
    BackwardInputEvaluation,
}

/// batchnorm.wgsl's `ROWS_PER_INVOCATION`: the rows of a channel quad each invocation of
/// `batchnorm_normalize_quads` and `batchnorm_backward_input_quads` takes.
const NORM_ROWS_PER_INVOCATION: usize = 8;

impl BatchNormKernels {
    /// The kernel and grid of `pass` over `values` values per channel of `channels` channels:
    /// the vec4 entry points where the channels come in fours (`mirror_kernels`', reading
    /// mirrors, where given); a workgroup per channel (or four) for the sums, an invocation per value (or
    /// per 8 rows of four channels) for the rest.
    pub fn launch<'k>(
        &'k self,
        mirror_kernels: Option<&'k BatchNormMirrorKernels>,
        pass: NormPass,
        channels: usize,
        values: usize,
        max_groups: u32,
    ) -> (&'k Kernel, [u32; 3]) {
        let quads = channels.is_multiple_of(4);
        let lanes = if quads { 4 } else { 1 };
        let per_channel = [(channels / lanes) as u32, 1, 1];
        // The _quads elementwise passes take several rows of a channel quad per invocation.
        let rows = if quads {
            values.div_ceil(NORM_ROWS_PER_INVOCATION)
        } else {
            values
        };
        let per_value = grid_1d(rows * channels / lanes, ROW_WORKGROUP, max_groups);
        let form = match (quads, mirror_kernels) {
            (true, Some(mirror_kernels)) => &mirror_kernels.quads,
            (true, None) => &self.quads,
            (false, _) => &self.scalar,
        };
        match pass {
            NormPass::Statistics => (&form.statistics, per_channel),
            NormPass::Normalize => (&form.normalize, per_value),
            NormPass::BackwardSums => (&form.backward_sums, per_channel),
            NormPass::BackwardInput => (&form.backward_input, per_value),
            NormPass::BackwardInputEvaluation => {
                let grid = grid_1d(values * channels, ROW_WORKGROUP, max_groups);
                (&self.backward_input_evaluation, grid)
            }
        }
    }
}

impl KernelFamily for BatchNormKernels {
    const SHADER: (&'static str, &'static str) =
        ("batchnorm.wgsl", crate::shader_source!("batchnorm.wgsl"));

    fn build(module: &FamilyModule<'_>) -> Self {
        use Slot::*;
        let input_evaluation = [
            (0, Params),
            (3, Read),
            (4, Read),
            (5, Read),
            (7, ReadWrite),
            (8, Read),
        ];
        BatchNormKernels {
            scalar: NormPassKernels::build(module, false, Read),
            quads: NormPassKernels::build(module, true, Read),
            backward_input_evaluation: module
                .kernel("batchnorm_backward_input_evaluation", &input_evaluation),
        }
    }
}

impl KernelFamily for BatchNormMirrorKernels {
    const SHADER: (&'static str, &'static str) = (
        "batchnorm_mirrors.wgsl",
        crate::shader_source!("batchnorm_mirrors.wgsl"),
    );

    fn build(module: &FamilyModule<'_>) -> Self {
        BatchNormMirrorKernels {
            quads: NormPassKernels::build(module, true, Slot::Mirror),
        }
    }
}

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

    /// The kernel and grid of `pass` over `rows` samples; `mirrored`: reading X, dY and Y from
    /// their mirrors.
    fn launch<'k>(
        &self,
        context: &LayerContext<'_, 'k>,
        pass: NormPass,
        rows: usize,
        mirrored: bool,
    ) -> (&'k Kernel, [u32; 3]) {
        let values = rows * self.positions;
        let kernels = context.kernels.family::<BatchNormKernels>();
        let mirror_kernels = mirrored.then(|| context.kernels.family::<BatchNormMirrorKernels>());
        let channels = self.norm.channels;
        kernels.launch(mirror_kernels, pass, channels, values, context.max_groups())
    }

    /// Whether the passes read `tensors` (X, and dY and Y for the backward passes) from their
    /// mirrors (refreshed for the `rows` read): where the channels come in fours and every one
    /// has a mirror (on the adapters whose products read mirrors).
    fn read_mirrors(
        &self,
        program: &mut Program<'_>,
        tensors: &[&DeviceTensor],
        rows: usize,
    ) -> bool {
        let bytes = rows * self.positions * self.norm.channels * 4;
        let operands: Vec<_> = tensors.iter().map(|&tensor| (tensor, bytes)).collect();
        read_from_mirrors(program, self.norm.channels.is_multiple_of(4), &operands)
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
        let mirrored = self.read_mirrors(program, &[io.input], rows);
        if training {
            let resources = [
                shape.as_entire_binding(),
                io.input.read_binding(mirrored),
                self.stats.as_entire_binding(),
                context.state.as_entire_binding(),
            ];
            let (kernel, grid) = self.launch(context, NormPass::Statistics, rows, mirrored);
            program.dispatch(context.gpu, kernel, &resources, grid);
        }
        let resources = [
            shape.as_entire_binding(),
            io.input.read_binding(mirrored),
            self.stats.as_entire_binding(),
            context.state.as_entire_binding(),
            context.params.buffer.as_entire_binding(),
            io.output.buffer.as_entire_binding(),
        ];
        let (kernel, grid) = self.launch(context, NormPass::Normalize, rows, mirrored);
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
            let pass = NormPass::BackwardInputEvaluation;
            let (kernel, grid) = self.launch(context, pass, rows, false);
            program.dispatch(context.gpu, kernel, &resources, grid);
            return false;
        }
        let shape = self.shape(context, rows, true, derivative);
        let operands = [io.input, io.output_grad, io.output];
        let mirrored = self.read_mirrors(program, &operands, rows);
        let [x, dy, y] = operands.map(|tensor| tensor.read_binding(mirrored));
        let resources = [
            shape.as_entire_binding(),
            x.clone(),
            self.stats.as_entire_binding(),
            dy.clone(),
            context.grads.as_entire_binding(),
            y.clone(),
        ];
        let (kernel, grid) = self.launch(context, NormPass::BackwardSums, rows, mirrored);
        program.dispatch(context.gpu, kernel, &resources, grid);
        let Some(input_grad) = io.input_grad else {
            return false;
        };
        let resources = [
            shape.as_entire_binding(),
            x,
            self.stats.as_entire_binding(),
            context.params.buffer.as_entire_binding(),
            dy,
            context.grads.as_entire_binding(),
            input_grad.buffer.as_entire_binding(),
            y,
        ];
        let (kernel, grid) = self.launch(context, NormPass::BackwardInput, rows, mirrored);
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

/// What a BatchNorm pass reads besides its input: γ and β, the running mean and variance.
pub struct NormInputs<'a> {
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub running_mean: &'a [f32],
    pub running_var: &'a [f32],
}

/// What batchnorm.wgsl's passes give back: the output (Y, or dX backward), the per-channel
/// statistics (mean, then invstd), the state after (running mean, then variance) and, backward,
/// the gradient buffer's dγ and dβ.
pub struct NormOutputs {
    pub values: Vec<f32>,
    pub stats: Vec<f32>,
    pub state: Vec<f32>,
    pub dgamma_dbeta: Vec<f32>,
}

/// batchnorm.wgsl run once on host data, for `selftest` (`_quads` where the channels come in
/// fours), on x `[values, channels]`, with
/// `activation` folded in: in training the statistics pass then the normalisation; in evaluation
/// the normalisation alone. With `dy`, then the backward passes (dx then in `values`): in
/// training the sums and the input gradient, in evaluation the input gradient through the
/// running statistics.
#[allow(clippy::too_many_arguments)]
pub fn gpu_passes(
    gpu: &Gpu,
    kernels: &Kernels,
    x: &[f32],
    inputs: &NormInputs<'_>,
    activation: LayerActivation,
    training: bool,
    dy: Option<&[f32]>,
    mirrored: bool,
) -> Result<NormOutputs> {
    let channels = inputs.gamma.len();
    let values = x.len() / channels;
    let shape = NormShape {
        values: values as u32,
        channels: channels as u32,
        gamma: 0,
        beta: channels as u32,
        running_mean: 0,
        running_var: channels as u32,
        training: training as u32,
        momentum: BATCH_NORM_MOMENTUM,
        epsilon: BATCH_NORM_EPSILON,
        activation: activation.shader_code(),
        _pad: [0; 2],
    };
    let shape = gpu.params_with("shape", &shape);
    // X, Y and dY with mirrors where `mirrored` (refreshed before each pass that reads them).
    let tensor = |what: &str, data: &[f32]| DeviceTensor::from_host(gpu, what, data, mirrored);
    let x_tensor = tensor("x", x)?;
    let y_tensor = tensor("y", &vec![f32::NAN; x.len()])?;
    let dy_tensor = dy.map(|dy| tensor("dy", dy)).transpose()?;
    let mirrored = channels.is_multiple_of(4) && mirrored;
    let params = gpu.storage_with("params", &[inputs.gamma, inputs.beta].concat())?;
    let state = [inputs.running_mean, inputs.running_var].concat();
    let state = gpu.storage_with("state", &state)?;
    let stats = gpu.storage_with("stats", &vec![f32::NAN; 2 * channels])?;
    let dx = gpu.storage_with("dx", &vec![f32::NAN; x.len()])?;
    let grads = gpu.storage_with("grads", &vec![f32::NAN; 2 * channels])?;
    let k = kernels.family::<BatchNormKernels>();
    let mirror_kernels = mirrored.then(|| kernels.family::<BatchNormMirrorKernels>());
    let launch = |pass| k.launch(mirror_kernels, pass, channels, values, ops::max_groups(gpu));
    let run = |kernel: &Kernel, resources: &[wgpu::BindingResource<'_>], grid| {
        ops::dispatch(gpu, kernel, &kernel.bind(gpu, resources), grid)
    };
    let x_operand = x_tensor.read_binding(mirrored);
    if training {
        let (kernel, grid) = launch(NormPass::Statistics);
        let resources = [
            shape.as_entire_binding(),
            x_operand.clone(),
            stats.as_entire_binding(),
            state.as_entire_binding(),
        ];
        run(kernel, &resources, grid);
    }
    let resources = [
        shape.as_entire_binding(),
        x_operand.clone(),
        stats.as_entire_binding(),
        state.as_entire_binding(),
        params.as_entire_binding(),
        y_tensor.buffer.as_entire_binding(),
    ];
    let (kernel, grid) = launch(NormPass::Normalize);
    run(kernel, &resources, grid);
    if let Some(dy_tensor) = dy_tensor.as_ref().filter(|_| !training) {
        let resources = [
            shape.as_entire_binding(),
            state.as_entire_binding(),
            params.as_entire_binding(),
            dy_tensor.buffer.as_entire_binding(),
            dx.as_entire_binding(),
            y_tensor.buffer.as_entire_binding(),
        ];
        let (kernel, grid) = launch(NormPass::BackwardInputEvaluation);
        run(kernel, &resources, grid);
    } else if let Some(dy_tensor) = &dy_tensor {
        if let Some(mirror) = &y_tensor.mirror {
            mirror.refresh_now(gpu);
        }
        let (dy_operand, y_operand) = (
            dy_tensor.read_binding(mirrored),
            y_tensor.read_binding(mirrored),
        );
        let resources = [
            shape.as_entire_binding(),
            x_operand.clone(),
            stats.as_entire_binding(),
            dy_operand.clone(),
            grads.as_entire_binding(),
            y_operand.clone(),
        ];
        let (kernel, grid) = launch(NormPass::BackwardSums);
        run(kernel, &resources, grid);
        let resources = [
            shape.as_entire_binding(),
            x_operand,
            stats.as_entire_binding(),
            params.as_entire_binding(),
            dy_operand,
            grads.as_entire_binding(),
            dx.as_entire_binding(),
            y_operand,
        ];
        let (kernel, grid) = launch(NormPass::BackwardInput);
        run(kernel, &resources, grid);
    }
    let out = if dy.is_some() { &dx } else { &y_tensor.buffer };
    Ok(NormOutputs {
        values: gpu.read_back(out, x.len())?,
        stats: gpu.read_back(&stats, 2 * channels)?,
        state: gpu.read_back(&state, 2 * channels)?,
        dgamma_dbeta: gpu.read_back(&grads, 2 * channels)?,
    })
}

/// BatchNorm as `--layers` names it: `bn`, or `bn:relu` (`:sigmoid`, `:tanh`) with the
/// activation after it folded into its passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchNorm {
    pub activation: LayerActivation,
}

impl BatchNorm {
    /// The token as `--help` and the errors of `--layers` describe it.
    pub const SYNTAX: &'static str = "bn[:<activation>] (BatchNorm)";

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
    fn linear_before(&self) -> bool {
        true
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::uniforms::twins::{assert_twin, host_layout};

    /// The host structs this kind writes have the layout of their WGSL twins.
    #[test]
    fn host_structs_have_the_layout_of_their_wgsl_twins() {
        let (name, source) = BatchNormKernels::SHADER;
        let shape = host_layout!(NormShape {
            values,
            channels,
            gamma,
            beta,
            running_mean,
            running_var,
            training,
            momentum,
            epsilon,
            activation
        });
        assert_twin(name, source, "NormShape", shape);
    }
}
