//! Each shared kernel run once on host data, results read back (a layer kind's own are run so in
//! its file): what the kernel tests and `selftest` compare against `crate::reference`. Buffers are made per call, so this is for checking
//! kernels, never for training.

use wgpu::{BindingResource, Buffer};

use super::Gpu;
use super::buffers::grid_1d;
use super::kernels::{
    ElementwiseKernels, Kernel, Kernels, ROW_WORKGROUP, gather_grid, gather_transposed_grid,
    optimizer_grid,
};
use super::matmul::{MatmulOperand, MatmulVariant};
use super::mirror::TextureMirror;
use super::uniforms::*;
use crate::data::Dataset;
use crate::error::Result;
use crate::input::{Augmentation, Standardisation};
use crate::reference::LossOutput;
use crate::shapes::{Geometry, LayerActivation, Loss, WeightMatrix};

/// Records one dispatch of `kernel` and submits it.
pub fn dispatch(gpu: &Gpu, kernel: &Kernel, bind_group: &wgpu::BindGroup, grid: [u32; 3]) {
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&kernel.pipeline);
        pass.set_bind_group(0, bind_group, &[]);
        pass.dispatch_workgroups(grid[0], grid[1], grid[2]);
    }
    gpu.queue.submit([encoder.finish()]);
}

pub fn max_groups(gpu: &Gpu) -> u32 {
    gpu.limits.max_compute_workgroups_per_dimension
}

/// A schedule holding the one step a kernel is run for (cursor 0).
pub fn schedule(gpu: &Gpu, step: StepParams) -> Result<Buffer> {
    gpu.storage_with("schedule", &schedule_bytes(&[step]))
}

/// The matmul `variant`. `out` gives the initial contents of the output buffer (elements outside
/// C are kept); `below`, for a backward epilogue, the layer output it reads.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    gpu: &Gpu,
    kernels: &Kernels,
    variant: MatmulVariant,
    dims: &MatmulDims,
    lhs: &[f32],
    rhs: &[f32],
    below: Option<&[f32]>,
    out: &[f32],
) -> Result<Vec<f32>> {
    let dims_buffer = gpu.params_with("dims", dims);
    let lhs_buffer = gpu.storage_with("lhs", lhs)?;
    let rhs_buffer = gpu.storage_with("rhs", rhs)?;
    let out_buffer = gpu.storage_with("out", out)?;
    let chosen = kernels.matmul.with_variant(dims, variant);
    // Mirrors only where the kernel reads them.
    let mirror = |buffer: &wgpu::Buffer| {
        (chosen.reads_mirrors)
            .then(|| TextureMirror::new(gpu, "operand mirror", buffer))
            .flatten()
    };
    let (lhs_mirror, rhs_mirror) = (mirror(&lhs_buffer), mirror(&rhs_buffer));
    let below_buffer = below
        .map(|values| gpu.storage_with("below", values))
        .transpose()?;
    let below_mirror = below_buffer.as_ref().and_then(mirror);
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    let (lhs, rhs) = (
        MatmulOperand::new(&lhs_buffer, lhs_mirror.as_ref()),
        MatmulOperand::new(&rhs_buffer, rhs_mirror.as_ref()),
    );
    if let Some(split) = (kernels.matmul).split_for_variant(dims, variant, [&lhs, &rhs]) {
        // As a training step computes it: the parts, then their sum.
        let groups = split.bind_alone(gpu, [lhs, rhs], &out_buffer, &mut encoder)?;
        gpu.queue.submit([encoder.finish()]);
        for (step, group) in &groups {
            dispatch(gpu, step.kernel, group, step.grid);
        }
        return gpu.read_back(&out_buffer, out.len());
    }
    let bind_group = chosen.bind(
        gpu,
        &dims_buffer,
        lhs,
        rhs,
        &out_buffer,
        below_mirror.as_ref(),
        &mut encoder,
    );
    gpu.queue.submit([encoder.finish()]);
    dispatch(gpu, chosen.kernel, &bind_group, chosen.grid);
    gpu.read_back(&out_buffer, out.len())
}

/// activation.wgsl `activation_backward`: returns (dL/dz, bias gradient).
pub fn activation_backward(
    gpu: &Gpu,
    kernels: &Kernels,
    grad: &[f32],
    output: &[f32],
    cols: usize,
    activation: LayerActivation,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let shape = ActivationShape {
        rows: (grad.len() / cols) as u32,
        cols: cols as u32,
        bias_offset: 0,
        activation: activation.shader_code(),
    };
    let shape_buffer = gpu.params_with("shape", &shape);
    let grad_buffer = gpu.storage_with("grad", grad)?;
    let output_buffer = gpu.storage_with("output", output)?;
    let bias_grad_buffer = gpu.storage_buffer("bias grad", (cols * 4) as u64)?;
    let bind_group = kernels.activation_backward.bind(
        gpu,
        &[
            shape_buffer.as_entire_binding(),
            grad_buffer.as_entire_binding(),
            output_buffer.as_entire_binding(),
            bias_grad_buffer.as_entire_binding(),
        ],
    );
    let grid = grid_1d(cols, ROW_WORKGROUP, max_groups(gpu));
    dispatch(gpu, &kernels.activation_backward, &bind_group, grid);
    Ok((
        gpu.read_back(&grad_buffer, grad.len())?,
        gpu.read_back(&bias_grad_buffer, cols)?,
    ))
}

/// loss.wgsl for a batch whose per-sample metrics go to slots `batch_start..batch_start + rows`.
#[allow(clippy::too_many_arguments)]
pub fn softmax_loss(
    gpu: &Gpu,
    kernels: &Kernels,
    loss: Loss,
    label_smoothing: f32,
    logits: &[f32],
    labels: &[u32],
    classes: usize,
    batch_start: usize,
) -> Result<LossOutput> {
    let rows = labels.len();
    let samples = batch_start + rows;
    let kernel = match loss {
        Loss::Xent => &kernels.softmax_cross_entropy,
        Loss::Mse => &kernels.softmax_mean_squared_error,
    };
    let step = schedule(gpu, StepParams::rows_at(batch_start, rows))?;
    let shape = gpu.params_with(
        "shape",
        &LossShape {
            classes: classes as u32,
            write_gradient: 1,
            label_smoothing,
            _pad: 0,
        },
    );
    let logits_buffer = gpu.storage_with("logits", logits)?;
    let labels_buffer = gpu.storage_with("labels", labels)?;
    let grad_buffer = gpu.storage_buffer("logits grad", (logits.len() * 4) as u64)?;
    let loss_buffer = gpu.storage_buffer("sample loss", (samples * 4) as u64)?;
    let correct_buffer = gpu.storage_buffer("sample correct", (samples * 4) as u64)?;
    let prediction_buffer = gpu.storage_buffer("sample prediction", (samples * 4) as u64)?;
    let bind_group = kernel.bind(
        gpu,
        &[
            step.as_entire_binding(),
            shape.as_entire_binding(),
            logits_buffer.as_entire_binding(),
            labels_buffer.as_entire_binding(),
            grad_buffer.as_entire_binding(),
            loss_buffer.as_entire_binding(),
            correct_buffer.as_entire_binding(),
            prediction_buffer.as_entire_binding(),
        ],
    );
    dispatch(
        gpu,
        kernel,
        &bind_group,
        grid_1d(rows, ROW_WORKGROUP, max_groups(gpu)),
    );
    let sample_loss: Vec<f32> = gpu.read_back(&loss_buffer, samples)?;
    let sample_correct: Vec<u32> = gpu.read_back(&correct_buffer, samples)?;
    let sample_prediction: Vec<u32> = gpu.read_back(&prediction_buffer, samples)?;
    Ok(LossOutput {
        sample_loss: sample_loss[batch_start..batch_start + rows].to_vec(),
        sample_correct: sample_correct[batch_start..batch_start + rows].to_vec(),
        sample_prediction: sample_prediction[batch_start..batch_start + rows].to_vec(),
        logits_grad: gpu.read_back(&grad_buffer, logits.len())?,
    })
}

/// A batch gathered by gather.wgsl: x row-major [rows, features], y, and (from
/// `gather_batch_transposed`) xᵀ row-major [features, 4 transposed_quads] with one row more,
/// which the kernel must leave as it found it (NaN).
pub struct GatheredBatch {
    pub x: Vec<f32>,
    pub y: Vec<u32>,
    pub x_transposed: Option<Vec<f32>>,
}

/// What gather.wgsl `gather_images` does to the pixels: standardise them, and augment them with
/// the run's key at training step `step`.
pub struct ImageGather<'a> {
    pub standardisation: Option<&'a Standardisation>,
    pub augmentation: Option<(&'a Augmentation, u32)>,
    pub step: u32,
}

/// gather.wgsl `gather_batch`, `gather_batch_transposed` with rows of `transposed_quads` vec4
/// where that is given, or `gather_images` where `images` is.
#[allow(clippy::too_many_arguments)]
pub fn gather_batch(
    gpu: &Gpu,
    kernels: &Kernels,
    data: &Dataset,
    order: &[u32],
    batch_start: usize,
    rows: usize,
    transposed_quads: Option<usize>,
    images: Option<ImageGather>,
) -> Result<GatheredBatch> {
    let features = data.features();
    let words_per_sample = features / 4;
    let step_number = images.as_ref().map_or(0, |i| i.step);
    let step = schedule(
        gpu,
        StepParams {
            number: step_number,
            ..StepParams::rows_at(batch_start, rows)
        },
    )?;
    let shape = gpu.params_with(
        "shape",
        &GatherShape::new(
            data.shape,
            transposed_quads.unwrap_or(0),
            images.as_ref().and_then(|i| i.standardisation),
            images.as_ref().and_then(|i| i.augmentation),
        ),
    );
    let pixel_buffer = gpu.storage_with("pixels", &data.pixels)?;
    let labels_u32: Vec<u32> = data.labels.iter().map(|&l| l as u32).collect();
    let label_buffer = gpu.storage_with("labels", &labels_u32)?;
    let order_buffer = gpu.storage_with("order", order)?;
    let x_buffer = gpu.storage_buffer("batch x", (rows * features * 4) as u64)?;
    let y_buffer = gpu.storage_buffer("batch y", (rows * 4) as u64)?;
    // Xᵀ's rows and one more, filled with NaN: the kernel writes the batch's columns (and zeros to
    // the next multiple of 4) and nothing else.
    let transposed_len = (features + 1) * 4 * transposed_quads.unwrap_or(0);
    let t_buffer = match transposed_quads {
        Some(_) => Some(gpu.storage_with("batch x transposed", &vec![f32::NAN; transposed_len])?),
        None => None,
    };
    let mut resources = vec![
        step.as_entire_binding(),
        shape.as_entire_binding(),
        pixel_buffer.as_entire_binding(),
        label_buffer.as_entire_binding(),
        order_buffer.as_entire_binding(),
        x_buffer.as_entire_binding(),
        y_buffer.as_entire_binding(),
    ];
    let (kernel, grid) = match &t_buffer {
        _ if images.is_some() => (
            &kernels.gather_images,
            grid_of(gpu, rows * words_per_sample),
        ),
        None => (
            &kernels.gather_batch,
            gather_grid(rows * words_per_sample, max_groups(gpu)),
        ),
        Some(t_buffer) => {
            resources.push(t_buffer.as_entire_binding());
            let grid = gather_transposed_grid(rows, words_per_sample, max_groups(gpu));
            (&kernels.gather_batch_transposed, grid)
        }
    };
    let bind_group = kernel.bind(gpu, &resources);
    dispatch(gpu, kernel, &bind_group, grid);
    Ok(GatheredBatch {
        x: gpu.read_back(&x_buffer, rows * features)?,
        y: gpu.read_back(&y_buffer, rows)?,
        x_transposed: match &t_buffer {
            Some(t_buffer) => Some(gpu.read_back(t_buffer, transposed_len)?),
            None => None,
        },
    })
}

/// metrics.wgsl: (Σ loss, Σ correct).
pub fn sum_metrics(
    gpu: &Gpu,
    kernels: &Kernels,
    sample_loss: &[f32],
    sample_correct: &[u32],
) -> Result<(f32, u32)> {
    let shape = gpu.params_with(
        "shape",
        &MetricsShape {
            count: sample_loss.len() as u32,
            slot: 0,
            _pad: [0; 2],
        },
    );
    let loss_buffer = gpu.storage_with("sample loss", sample_loss)?;
    let correct_buffer = gpu.storage_with("sample correct", sample_correct)?;
    let totals = gpu.storage_buffer("totals", 8)?;
    let bind_group = kernels.sum_metrics.bind(
        gpu,
        &[
            shape.as_entire_binding(),
            loss_buffer.as_entire_binding(),
            correct_buffer.as_entire_binding(),
            totals.as_entire_binding(),
        ],
    );
    dispatch(gpu, &kernels.sum_metrics, &bind_group, [1, 1, 1]);
    let words: Vec<u32> = gpu.read_back(&totals, 2)?;
    Ok((f32::from_bits(words[0]), words[1]))
}

/// An update `kernel` of optimizer.wgsl or optimizer_packed.wgsl for `step`: the updated
/// parameters and the kernel's state (`state` before: none for `sgd_update`, the momentum
/// buffer for `momentum_update`, the two moments for `adam_update`).
pub fn optimizer_update(
    gpu: &Gpu,
    kernel: &Kernel,
    hyper: &OptimizerHyper,
    step: StepParams,
    params: &[f32],
    grads: &[f32],
    state: &[Vec<f32>],
) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
    let step = schedule(gpu, step)?;
    let hyper_buffer = gpu.params_with("hyper", hyper);
    let params_buffer = gpu.storage_with("params", params)?;
    let grads_buffer = gpu.storage_with("grads", grads)?;
    let state_buffers = (state.iter())
        .map(|values| gpu.storage_with("optimizer state", values))
        .collect::<Result<Vec<_>>>()?;
    let mut resources = vec![
        step.as_entire_binding(),
        hyper_buffer.as_entire_binding(),
        params_buffer.as_entire_binding(),
        grads_buffer.as_entire_binding(),
    ];
    resources.extend(state_buffers.iter().map(Buffer::as_entire_binding));
    let bind_group = kernel.bind(gpu, &resources);
    let grid = optimizer_grid(params.len(), max_groups(gpu));
    dispatch(gpu, kernel, &bind_group, grid);
    let state = (state_buffers.iter())
        .map(|buffer| gpu.read_back(buffer, params.len()))
        .collect::<Result<Vec<_>>>()?;
    Ok((gpu.read_back(&params_buffer, params.len())?, state))
}

/// The grid of `invocations` invocations of a 64-wide 1-D kernel.
pub fn grid_of(gpu: &Gpu, invocations: usize) -> [u32; 3] {
    grid_1d(invocations, ROW_WORKGROUP, max_groups(gpu))
}

/// conv2d.wgsl `im2col` (or `im2col_quads` where the channels come in fours): the patch matrix of
/// `rows` samples of x, rows of `columns` floats.
pub fn im2col(
    gpu: &Gpu,
    kernels: &Kernels,
    x: &[f32],
    rows: usize,
    geometry: &Geometry,
    columns: usize,
) -> Result<Vec<f32>> {
    let shape = ConvShape::new(rows, geometry, columns, LayerActivation::Identity);
    let shape = gpu.params_with("shape", &shape);
    let x_buffer = gpu.storage_with("x", x)?;
    let len = rows * geometry.positions() * columns;
    // Every element is written: start from NaN to see it.
    let patches = gpu.storage_with("patches", &vec![f32::NAN; len])?;
    let (kernel, invocations) = kernels.conv.im2col_for(geometry, rows);
    let resources = [
        shape.as_entire_binding(),
        x_buffer.as_entire_binding(),
        patches.as_entire_binding(),
    ];
    dispatch(
        gpu,
        kernel,
        &kernel.bind(gpu, &resources),
        grid_of(gpu, invocations),
    );
    gpu.read_back(&patches, len)
}

/// conv2d.wgsl `col2im` (`col2im_quads` where the channels come in fours): the input gradient
/// from the patch matrix's gradient, times below'(x) of the layer beneath's output x.
#[allow(clippy::too_many_arguments)]
pub fn col2im(
    gpu: &Gpu,
    kernels: &Kernels,
    patch_grads: &[f32],
    rows: usize,
    geometry: &Geometry,
    columns: usize,
    x: &[f32],
    below: LayerActivation,
) -> Result<Vec<f32>> {
    let shape = gpu.params_with("shape", &ConvShape::new(rows, geometry, columns, below));
    let grads = gpu.storage_with("patch grads", patch_grads)?;
    let len = rows * geometry.input.len();
    let out = gpu.storage_with("input grads", &vec![f32::NAN; len])?;
    let x_buffer = gpu.storage_with("below", x)?;
    let (kernel, invocations) = kernels.conv.col2im_for(geometry, rows);
    let resources = [
        shape.as_entire_binding(),
        grads.as_entire_binding(),
        out.as_entire_binding(),
        x_buffer.as_entire_binding(),
    ];
    let grid = grid_of(gpu, invocations);
    dispatch(gpu, kernel, &kernel.bind(gpu, &resources), grid);
    gpu.read_back(&out, len)
}

/// matmul_vec4.wgsl `conv_input_grad`: a convolution's input gradient straight from the gradient
/// of its output dz `[rows OH OW, F]` and `params` (W at `matrix.weight_offset`), times below'(x)
/// of the layer beneath's output x; None where the adapter does not run it (the patch matrix's
/// gradient and col2im compute it there).
#[allow(clippy::too_many_arguments)]
pub fn conv_input_grad(
    gpu: &Gpu,
    kernels: &Kernels,
    dz: &[f32],
    params: &[f32],
    rows: usize,
    geometry: &Geometry,
    matrix: &WeightMatrix,
    x: &[f32],
    below: LayerActivation,
) -> Result<Option<Vec<f32>>> {
    let dims = MatmulDims::conv_input_grad(rows, geometry, matrix);
    let shape = ConvShape::new(rows, geometry, matrix.rows, below);
    let len = rows * geometry.input.len();
    let buffers = [
        gpu.storage_with("dz", dz)?,
        gpu.storage_with("params", params)?,
        gpu.storage_with("input grads", &vec![f32::NAN; len])?,
        gpu.storage_with("below", x)?,
    ];
    let Some((kernel, bind_group, grid)) =
        conv_input_grad_alone(gpu, kernels, &dims, &shape, &buffers)?
    else {
        return Ok(None);
    };
    dispatch(gpu, kernel, &bind_group, grid);
    gpu.read_back(&buffers[2], len).map(Some)
}

/// `conv_input_grad` run on its own over `[dz, params, out, below]` (`MatmulDims::conv_input_grad`
/// `dims` of the convolution `shape`): its kernel, bind group and grid, the operands' mirrors
/// filled whole; None where the adapter does not run it.
pub fn conv_input_grad_alone<'k>(
    gpu: &Gpu,
    kernels: &'k Kernels,
    dims: &MatmulDims,
    shape: &ConvShape,
    [dz, params, out, below]: &[wgpu::Buffer; 4],
) -> Result<Option<(&'k Kernel, wgpu::BindGroup, [u32; 3])>> {
    let (Some(dz_mirror), Some(params_mirror)) = (
        TextureMirror::new(gpu, "dz mirror", dz),
        TextureMirror::new(gpu, "params mirror", params),
    ) else {
        return Ok(None);
    };
    let operands = [
        MatmulOperand::new(dz, Some(&dz_mirror)),
        MatmulOperand::new(params, Some(&params_mirror)),
    ];
    let Some((kernel, grid)) = kernels.matmul.conv_input_grad(dims, shape, operands) else {
        return Ok(None);
    };
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    dz_mirror.record_refresh_of(&mut encoder, u64::MAX);
    params_mirror.record_refresh_of(&mut encoder, u64::MAX);
    gpu.queue.submit([encoder.finish()]);
    let dims = gpu.params_with("conv input grad dims", dims);
    let shape = gpu.params_with("conv input grad shape", shape);
    let resources = [
        dims.as_entire_binding(),
        wgpu::BindingResource::TextureView(&dz_mirror.view),
        wgpu::BindingResource::TextureView(&params_mirror.view),
        out.as_entire_binding(),
        shape.as_entire_binding(),
        below.as_entire_binding(),
    ];
    Ok(Some((kernel, kernel.bind(gpu, &resources), grid)))
}

/// Which of a convolution's products `conv_image_product` computes.
#[derive(Debug, Clone, Copy)]
pub enum ImageProductKind {
    /// f(P W), rhs the parameters.
    Forward(LayerActivation),
    /// [dW; db; 0] = Pᵀ dz, rhs dz `[positions, F]`, into `out` at the weight offset.
    WeightGrad,
}

/// matmul_vec4.wgsl `conv_forward` or `conv_weight_grad_parts` (with the sum of its parts): a
/// convolution's product over `rows` samples of x, read from x without the patch matrix, into a
/// buffer starting as `out`; None where the adapter does not run them
/// (`MatmulKernels::takes_images`).
#[allow(clippy::too_many_arguments)]
pub fn conv_image_product(
    gpu: &Gpu,
    kernels: &Kernels,
    kind: ImageProductKind,
    x: &[f32],
    rhs: &[f32],
    rows: usize,
    geometry: &Geometry,
    matrix: &WeightMatrix,
    out: &[f32],
) -> Result<Option<Vec<f32>>> {
    let positions = rows * geometry.positions();
    let dims = match kind {
        ImageProductKind::Forward(activation) => {
            MatmulDims::conv_forward(positions, matrix, activation)
        }
        ImageProductKind::WeightGrad => MatmulDims::conv_weight_grad(positions, matrix),
    };
    let shape = ConvShape::new(rows, geometry, matrix.rows, LayerActivation::Identity)
        .with_bias(matrix.bias);
    let buffers = [
        gpu.storage_with("x", x)?,
        gpu.storage_with("rhs", rhs)?,
        gpu.storage_with("out", out)?,
    ];
    let Some(dispatches) = conv_image_product_alone(gpu, kernels, kind, &dims, &shape, &buffers)?
    else {
        return Ok(None);
    };
    for (kernel, bind_group, grid) in &dispatches {
        dispatch(gpu, kernel, bind_group, *grid);
    }
    gpu.read_back(&buffers[2], out.len()).map(Some)
}

/// A kernel with its bind group and grid, ready to dispatch.
pub type BoundDispatch<'k> = (&'k Kernel, wgpu::BindGroup, [u32; 3]);

/// `conv_image_product` of `dims` (`MatmulDims::conv_forward` or `conv_weight_grad`) of the
/// convolution `shape` run on its own over `[x, rhs, out]`: its dispatches in order (the parts,
/// then their sum, where split), the operands' mirrors filled whole; None where the adapter does
/// not run it.
pub fn conv_image_product_alone<'k>(
    gpu: &Gpu,
    kernels: &'k Kernels,
    kind: ImageProductKind,
    dims: &MatmulDims,
    shape: &ConvShape,
    [x, rhs, out]: &[wgpu::Buffer; 3],
) -> Result<Option<Vec<BoundDispatch<'k>>>> {
    let (Some(x_mirror), Some(rhs_mirror)) = (
        TextureMirror::new(gpu, "x mirror", x),
        TextureMirror::new(gpu, "rhs mirror", rhs),
    ) else {
        return Ok(None);
    };
    let operands = [
        MatmulOperand::new(x, Some(&x_mirror)),
        MatmulOperand::new(rhs, Some(&rhs_mirror)),
    ];
    let matmul = &kernels.matmul;
    let product = match kind {
        ImageProductKind::Forward(_) => matmul.image_forward(dims, shape, operands),
        ImageProductKind::WeightGrad => matmul.image_weight_grad(dims, shape, operands),
    };
    let Some(product) = product else {
        return Ok(None);
    };
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    x_mirror.record_refresh_of(&mut encoder, u64::MAX);
    rhs_mirror.record_refresh_of(&mut encoder, u64::MAX);
    gpu.queue.submit([encoder.finish()]);
    let scratch = gpu.storage_buffer("parts", (product.scratch_floats.max(1) * 4) as u64)?;
    let target = match product.sum {
        Some(_) => &scratch,
        None => out,
    };
    let dims_buffer = gpu.params_with("dims", &product.dims);
    let shape_buffer = gpu.params_with("shape", shape);
    let resources = [
        dims_buffer.as_entire_binding(),
        wgpu::BindingResource::TextureView(&x_mirror.view),
        wgpu::BindingResource::TextureView(&rhs_mirror.view),
        target.as_entire_binding(),
        shape_buffer.as_entire_binding(),
    ];
    let mut dispatches = vec![(
        product.kernel,
        product.kernel.bind(gpu, &resources),
        product.grid,
    )];
    if let Some((sum, sum_dims)) = &product.sum {
        let sum_dims = gpu.params_with("sum dims", sum_dims);
        let resources = [
            sum_dims.as_entire_binding(),
            scratch.as_entire_binding(),
            scratch.as_entire_binding(),
            out.as_entire_binding(),
        ];
        dispatches.push((sum.kernel, sum.kernel.bind(gpu, &resources), sum.grid));
    }
    Ok(Some(dispatches))
}

/// activation.wgsl `apply_derivative`: grad ⊙ f'(output).
pub fn apply_derivative(
    gpu: &Gpu,
    kernels: &Kernels,
    grad: &[f32],
    output: &[f32],
    activation: LayerActivation,
) -> Result<Vec<f32>> {
    let shape = ActivationShape {
        rows: 1,
        cols: grad.len() as u32,
        bias_offset: 0,
        activation: activation.shader_code(),
    };
    let shape = gpu.params_with("shape", &shape);
    let grad_buffer = gpu.storage_with("grad", grad)?;
    let output_buffer = gpu.storage_with("output", output)?;
    let kernel = &kernels.apply_derivative;
    let resources = [
        shape.as_entire_binding(),
        grad_buffer.as_entire_binding(),
        output_buffer.as_entire_binding(),
    ];
    let grid = grid_of(gpu, grad.len().div_ceil(4));
    dispatch(gpu, kernel, &kernel.bind(gpu, &resources), grid);
    gpu.read_back(&grad_buffer, grad.len())
}

/// elementwise.wgsl's kernel that `pick` chooses, over a and b (where it reads them; from their
/// texture mirrors where `mirrored`) into `out` (its initial contents, which `add_assign`
/// reads); `activation` for the activation kernels.
pub fn elementwise(
    gpu: &Gpu,
    kernels: &Kernels,
    pick: fn(&ElementwiseKernels) -> &Kernel,
    mirrored: bool,
    inputs: [Option<&[f32]>; 2],
    out: &[f32],
    activation: LayerActivation,
) -> Result<Vec<f32>> {
    let shape = ElementwiseShape {
        count: out.len() as u32,
        activation: activation.shader_code(),
        _pad: [0; 2],
    };
    let shape = gpu.params_with("shape", &shape);
    let inputs: Vec<Buffer> = (inputs.iter().flatten())
        .map(|values| gpu.storage_with("input", values))
        .collect::<Result<_>>()?;
    let mirrors: Vec<TextureMirror> = (inputs.iter())
        .filter_map(|buffer| mirrored.then(|| TextureMirror::new(gpu, "input mirror", buffer))?)
        .collect();
    mirrors.iter().for_each(|mirror| mirror.refresh_now(gpu));
    let out_buffer = gpu.storage_with("out", out)?;
    let mut resources = vec![shape.as_entire_binding()];
    match mirrored {
        true => resources.extend(
            mirrors
                .iter()
                .map(|m| BindingResource::TextureView(&m.view)),
        ),
        false => resources.extend(inputs.iter().map(|b| b.as_entire_binding())),
    }
    resources.push(out_buffer.as_entire_binding());
    let grid = ElementwiseKernels::grid(out.len(), max_groups(gpu));
    let kernel = pick(kernels.elementwise(mirrored));
    dispatch(gpu, kernel, &kernel.bind(gpu, &resources), grid);
    gpu.read_back(&out_buffer, out.len())
}
