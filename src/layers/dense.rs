//! Dense: y = f(x W + b) on flat inputs.
//!
//! Forward, x `[rows, inputs]` → y `[rows, outputs]`: one product with the bias and the activation
//! in its epilogue. Backward, from dy `[rows, outputs]`: dz = dy ⊙ f'(y) (unless the layer above
//! applied it), db = Σ_rows dz, dW = xᵀ dz, and dx = dz Wᵀ `[rows, inputs]` where a layer below
//! needs it, through the derivative of the layer beneath where the kernels can.

use super::context::LayerContext;
use super::kind::{
    DeviceArgs, LayerKind, Parameters, Product, ReferenceBackward, ReferenceForward, TensorMapping,
    TokenOptions,
};
use super::{
    Backward, DeviceLayer, DevicePasses, DeviceTensor, LayerIo, channels_last_index,
    leading_number, positive,
};
use crate::error::Result;
use crate::gpu::buffers::grid_1d;
use crate::gpu::kernels::{FamilyModule, KernelFamily, ROW_WORKGROUP, Slot};
use crate::gpu::program::Program;
use crate::gpu::uniforms::{ActivationShape, MatmulDims};
use crate::gpu::{Gpu, Kernel, Kernels, ops};
use crate::reference;
use crate::shapes::{LayerActivation, NormParams, Shape, WeightMatrix};

/// A dense layer in a training program.
pub(crate) struct DenseDevice {
    matrix: WeightMatrix,
    activation: LayerActivation,
    padded: Option<PaddedOutputs>,
}

/// `ColumnCopy` in pad.wgsl: `rows` rows of `copied` values from `input` (rows `in_stride`
/// apart) into `output` (rows `out_stride` apart), each row filled with zeros up to `written`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ColumnCopy {
    pub rows: u32,
    pub copied: u32,
    pub written: u32,
    pub in_offset: u32,
    pub in_stride: u32,
    pub out_offset: u32,
    pub out_stride: u32,
    pub _pad: u32,
}

impl ColumnCopy {
    /// pad.wgsl's invocations for the copy: one per four columns of a row.
    fn invocations(&self) -> usize {
        self.rows as usize * self.written.div_ceil(4) as usize
    }
}

/// pad.wgsl: a matrix copied between row strides.
pub struct PadKernels {
    pub copy_columns: Kernel,
}

impl KernelFamily for PadKernels {
    const SHADER: (&'static str, &'static str) = ("pad.wgsl", crate::shader_source!("pad.wgsl"));

    fn build(module: &FamilyModule<'_>) -> Self {
        use Slot::*;
        let slots = [(0, Params), (1, Read), (2, ReadWrite)];
        PadKernels {
            copy_columns: module.kernel("copy_columns", &slots),
        }
    }
}

/// Records pad.wgsl's copy `copy` from `input` to `output`.
fn copy_columns<'k>(
    context: &LayerContext<'_, 'k>,
    program: &mut Program<'k>,
    copy: ColumnCopy,
    input: &wgpu::Buffer,
    output: &wgpu::Buffer,
) {
    let shape = context.gpu.params_with("column copy", &copy);
    let resources = [
        shape.as_entire_binding(),
        input.as_entire_binding(),
        output.as_entire_binding(),
    ];
    let kernel = &context.kernels.family::<PadKernels>().copy_columns;
    let grid = grid_1d(copy.invocations(), ROW_WORKGROUP, context.max_groups());
    program.dispatch(context.gpu, kernel, &resources, grid);
}

/// pad.wgsl's copy `copy` of `input` into `output` (its values before the copy), on the host's
/// data: for selftest.
pub fn gpu_copy_columns(
    gpu: &Gpu,
    kernels: &Kernels,
    copy: ColumnCopy,
    input: &[f32],
    output: &[f32],
) -> Result<Vec<f32>> {
    let shape = gpu.params_with("column copy", &copy);
    let input = gpu.storage_with("input", input)?;
    let out = gpu.storage_with("output", output)?;
    let resources = [
        shape.as_entire_binding(),
        input.as_entire_binding(),
        out.as_entire_binding(),
    ];
    let kernel = &kernels.family::<PadKernels>().copy_columns;
    let grid = ops::grid_of(gpu, copy.invocations());
    ops::dispatch(gpu, kernel, &kernel.bind(gpu, &resources), grid);
    gpu.read_back(&out, output.len())
}

/// pad.wgsl's copy, CPU reference: `output` with the copy's rows written.
pub fn reference_copy_columns(copy: &ColumnCopy, input: &[f32], output: &[f32]) -> Vec<f32> {
    let mut output = output.to_vec();
    for r in 0..copy.rows as usize {
        for c in 0..copy.written as usize {
            let from = copy.in_offset as usize + r * copy.in_stride as usize + c;
            let value = match c < copy.copied as usize {
                true => input[from],
                false => 0.0,
            };
            output[copy.out_offset as usize + r * copy.out_stride as usize + c] = value;
        }
    }
    output
}

/// The matrix of a dense layer whose outputs are no multiple of 4 (the 10 classes) as its
/// products take it on adapters whose products read mirrors (lavapipe): padded with zero
/// columns to a multiple of 4, at offset 0 of a copy, so that the vec4 kernels compute the three
/// products where the unpadded shapes need the 4×4 scalar blocks, which load every value lane by
/// lane. A padded value is 0, so each sum is the unpadded one followed by zero terms, summed in
/// the same order: the same bits (but for the sign of a sum that is exactly zero). None where
/// the layer keeps its own shapes.
pub fn padded_matrix(kernels: &Kernels, m: &WeightMatrix, rows: usize) -> Option<WeightMatrix> {
    let padded = pad_outputs(m)?;
    let takes = [
        MatmulDims::layer_forward(rows, &padded),
        MatmulDims::layer_weight_grad(rows, &padded),
        MatmulDims::layer_input_grad(rows, &padded),
    ]
    .iter()
    .all(|dims| kernels.matmul.takes_vec4(dims));
    (kernels.matmul.reads_mirrors() && takes).then_some(padded)
}

/// Weights from which a dense layer pads its outputs: the padded path costs four more
/// dispatches a step (the copies; what a dispatch costs on lavapipe: docs/lavapipe.md), more
/// than the scalar blocks take for a smaller matrix.
const PADDED_MIN_WEIGHTS: usize = 512;

/// `m` with its outputs padded with zero columns to a multiple of 4, at offset 0 (the bias row
/// after the weights), where they are no multiple of 4 and the matrix has at least
/// `PADDED_MIN_WEIGHTS`: the shapes alone; `padded_matrix` adds what the kernels take.
pub fn pad_outputs(m: &WeightMatrix) -> Option<WeightMatrix> {
    let outputs = m.outputs.next_multiple_of(4);
    let pads = outputs != m.outputs && m.inputs * m.outputs >= PADDED_MIN_WEIGHTS;
    pads.then_some(WeightMatrix {
        outputs,
        weight_offset: 0,
        bias_offset: m.inputs * outputs,
        ..*m
    })
}

/// Which way `DenseDevice::column_copy` copies.
#[derive(Clone, Copy)]
enum CopyDirection {
    /// Into the padded twin, each row filled with zeros.
    IntoPadded,
    /// Back, the padding left behind.
    OutOfPadded,
}

/// A dense layer's copies for its products on the padded matrix (`padded_matrix`).
struct PaddedOutputs {
    matrix: WeightMatrix,
    /// [W; b] `[inputs + 1, padded]`, copied from the parameters by each forward pass; a
    /// backward pass reads the copy of the forward pass submitted before it, with the same
    /// parameters (the optimizer runs after both).
    weights: DeviceTensor,
    /// The forward product `[rows, padded]`, copied into the layer's output.
    output: wgpu::Buffer,
    /// dY `[rows, padded]`.
    output_grad: DeviceTensor,
    /// dW `[inputs, padded]`, copied into the gradient buffer.
    weight_grad: wgpu::Buffer,
}

impl PaddedOutputs {
    fn new(gpu: &Gpu, kernels: &Kernels, matrix: WeightMatrix, batch: usize) -> Result<Self> {
        let bytes = |rows: usize| (rows * matrix.outputs * 4) as u64;
        Ok(PaddedOutputs {
            weights: DeviceTensor::new(gpu, kernels, "padded weights", bytes(matrix.rows))?,
            output: gpu.storage_buffer("padded output", bytes(batch))?,
            output_grad: DeviceTensor::new(gpu, kernels, "padded output grad", bytes(batch))?,
            weight_grad: gpu.storage_buffer("padded weight grad", bytes(matrix.inputs))?,
            matrix,
        })
    }
}

impl DenseDevice {
    pub fn new(args: &DeviceArgs<'_>, activation: LayerActivation) -> Result<Self> {
        let matrix = args.matrix.expect("a dense layer has a matrix");
        let padded = padded_matrix(args.kernels, &matrix, args.batch)
            .map(|padded| PaddedOutputs::new(args.gpu, args.kernels, padded, args.batch))
            .transpose()?;
        Ok(DenseDevice {
            matrix,
            activation,
            padded,
        })
    }

    /// The copy of `rows` rows of the layer's `outputs` columns between a matrix of the layer
    /// and its padded twin, both from offset 0.
    fn column_copy(
        &self,
        padded: &PaddedOutputs,
        rows: usize,
        direction: CopyDirection,
    ) -> ColumnCopy {
        let (narrow, wide) = (self.matrix.outputs as u32, padded.matrix.outputs as u32);
        let (in_stride, out_stride) = match direction {
            CopyDirection::IntoPadded => (narrow, wide),
            CopyDirection::OutOfPadded => (wide, narrow),
        };
        ColumnCopy {
            rows: rows as u32,
            copied: narrow,
            written: out_stride,
            in_offset: 0,
            in_stride,
            out_offset: 0,
            out_stride,
            _pad: 0,
        }
    }

    /// activation.wgsl's parameters over `rows` samples, taking the derivative of `activation`
    /// (the identity: only the bias gradient).
    fn activation_shape(
        &self,
        context: &LayerContext<'_, '_>,
        rows: usize,
        activation: LayerActivation,
    ) -> wgpu::Buffer {
        context.gpu.params_with(
            "activation shape",
            &ActivationShape {
                rows: rows as u32,
                cols: self.matrix.outputs as u32,
                bias_offset: self.matrix.bias_offset as u32,
                activation: activation.shader_code(),
            },
        )
    }
}

impl DevicePasses for DenseDevice {
    fn record_forward<'k>(
        &self,
        context: &LayerContext<'_, 'k>,
        program: &mut Program<'k>,
        io: &LayerIo<'_>,
        rows: usize,
        _training: bool,
    ) {
        let Some(padded) = &self.padded else {
            let dims = MatmulDims::layer_forward_activated(rows, &self.matrix, self.activation);
            let operands = [io.input.operand(), context.params_operand()];
            return context.matmul(program, dims, operands, &io.output.buffer, None);
        };
        let m = &self.matrix;
        let weights = ColumnCopy {
            in_offset: m.weight_offset as u32,
            ..self.column_copy(padded, m.rows, CopyDirection::IntoPadded)
        };
        copy_columns(
            context,
            program,
            weights,
            &context.params.buffer,
            &padded.weights.buffer,
        );
        let dims = MatmulDims::layer_forward_activated(rows, &padded.matrix, self.activation);
        let operands = [io.input.operand(), padded.weights.operand()];
        context.matmul(program, dims, operands, &padded.output, None);
        let output = self.column_copy(padded, rows, CopyDirection::OutOfPadded);
        copy_columns(context, program, output, &padded.output, &io.output.buffer);
    }

    /// Where the input-gradient product can carry the gradient through the activation below (the
    /// register kernels), activation.wgsl only sums the layer beneath's bias gradient; and for a
    /// layer whose input is the batch not even that where its weight gradient runs on the
    /// transposed batch, whose row of ones sums the bias gradient in the same product.
    fn record_backward<'k>(
        &self,
        context: &LayerContext<'_, 'k>,
        program: &mut Program<'k>,
        io: &LayerIo<'_>,
        rows: usize,
        backward: Backward,
    ) -> bool {
        let m = &self.matrix;
        let activation = match backward.derivative_applied {
            true => LayerActivation::Identity,
            false => self.activation,
        };
        let transposed = io
            .is_batch_dense
            .then(|| context.first_weight_grad_transposed(rows))
            .flatten();
        // The transposed product sums the bias gradient itself: activation.wgsl is needed only
        // to apply a derivative (its bias gradient is then computed again, the same sum in the
        // same order).
        let bias_grad = backward.training && transposed.is_none();
        if bias_grad || activation != LayerActivation::Identity {
            let shape = self.activation_shape(context, rows, activation);
            let resources = [
                shape.as_entire_binding(),
                io.output_grad.buffer.as_entire_binding(),
                io.output.buffer.as_entire_binding(),
                context.grads.as_entire_binding(),
            ];
            let grid = grid_1d(m.outputs, ROW_WORKGROUP, context.max_groups());
            let kernel = &context.kernels.activation_backward;
            program.dispatch(context.gpu, kernel, &resources, grid);
        }
        // dY padded with zero columns where the products take the padded matrix.
        let (matrix, upstream, weights) = match &self.padded {
            Some(padded) => {
                let copy = self.column_copy(padded, rows, CopyDirection::IntoPadded);
                let output_grad = &padded.output_grad;
                copy_columns(
                    context,
                    program,
                    copy,
                    &io.output_grad.buffer,
                    &output_grad.buffer,
                );
                let weights = padded.weights.operand();
                (&padded.matrix, output_grad.operand(), weights)
            }
            None => (m, io.output_grad.operand(), context.params_operand()),
        };
        match transposed {
            // An explanation's backward pass wants the input gradient alone.
            _ if !backward.training => {}
            // The gather wrote the transposed batch for it (never for a layer that pads: that
            // product takes outputs in fours).
            Some((dims, lhs)) => {
                debug_assert!(self.padded.is_none(), "dY is unpadded for this product");
                context.matmul(program, dims, [lhs, upstream], context.grads, None)
            }
            None => {
                let dims = MatmulDims::layer_weight_grad(rows, matrix);
                let operands = [io.input.operand(), upstream];
                let target = self
                    .padded
                    .as_ref()
                    .map_or(context.grads, |p| &p.weight_grad);
                context.matmul(program, dims, operands, target, None);
                if let Some(padded) = &self.padded {
                    let copy = ColumnCopy {
                        out_offset: m.weight_offset as u32,
                        ..self.column_copy(padded, m.inputs, CopyDirection::OutOfPadded)
                    };
                    copy_columns(context, program, copy, &padded.weight_grad, context.grads);
                }
            }
        }
        let Some(input_grad) = io.input_grad else {
            return false;
        };
        let operands = [upstream, weights];
        let through = MatmulDims::layer_input_grad_through(rows, matrix, backward.below);
        let below_mirror = io.input.mirror.as_ref();
        let fused = backward.below != LayerActivation::Identity
            && below_mirror.is_some()
            && (context.kernels.matmul).has_backward_epilogue(&through, operands[0], operands[1]);
        if fused {
            context.matmul(program, through, operands, &input_grad.buffer, below_mirror);
        } else {
            let dims = MatmulDims::layer_input_grad(rows, matrix);
            context.matmul(program, dims, operands, &input_grad.buffer, None);
        }
        fused
    }
}

/// Dense forward, CPU reference: x `[rows, m.inputs]` → f(x W + b) `[rows, m.outputs]`.
pub fn reference_forward(
    m: &WeightMatrix,
    activation: LayerActivation,
    params: &[f32],
    x: &[f32],
    rows: usize,
) -> Vec<f32> {
    let dims = MatmulDims::layer_forward(rows, m);
    let mut y = vec![0.0; rows * m.outputs];
    reference::matmul(&dims, x, params, &mut y);
    let bias = &params[m.bias_offset..m.bias_offset + m.outputs];
    reference::bias_activation_forward(&mut y, bias, activation);
    y
}

/// Dense backward, CPU reference: from dz `[rows, m.outputs]` (dL/dz, the activation's derivative
/// applied), db and dW into `grads` at the layer's offsets; dx `[rows, m.inputs]` if `input_grad`.
pub fn reference_backward(
    m: &WeightMatrix,
    params: &[f32],
    x: &[f32],
    dz: &[f32],
    rows: usize,
    grads: &mut [f32],
    input_grad: bool,
) -> Option<Vec<f32>> {
    let bias_grad = reference::column_sums(dz, m.outputs);
    grads[m.bias_offset..m.bias_offset + m.outputs].copy_from_slice(&bias_grad);
    reference::matmul(&MatmulDims::layer_weight_grad(rows, m), x, dz, grads);
    input_grad.then(|| {
        let mut dx = vec![0.0; rows * m.inputs];
        reference::matmul(&MatmulDims::layer_input_grad(rows, m), dz, params, &mut dx);
        dx
    })
}

/// Dense as `--layers` names it: `dense<units>[:activation]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dense {
    pub units: usize,
    pub activation: LayerActivation,
}

impl Dense {
    /// The token as `--help` and the errors of `--layers` describe it.
    pub const SYNTAX: &'static str = "dense<units>[:<activation>]";

    /// Reads `dense<units>`.
    pub fn parse(body: &str, options: &TokenOptions) -> Option<std::result::Result<Self, String>> {
        let rest = body.strip_prefix("dense")?;
        Some((|| {
            let (units, rest) = leading_number(rest).ok_or("dense needs a width, e.g. dense128")?;
            if !rest.is_empty() {
                return Err(format!("unexpected {rest:?} after the width"));
            }
            if !options.bias {
                return Err("only conv layers take :nobias".into());
            }
            Ok(Dense {
                units: positive("a dense layer's width", units)?,
                activation: options.activation(),
            })
        })())
    }
}

impl LayerKind for Dense {
    fn takes_default_activation(&self) -> bool {
        true
    }

    fn token(&self) -> String {
        format!("dense{}:{}", self.units, self.activation.name())
    }

    fn output_shape(&self, input: Shape) -> std::result::Result<Shape, String> {
        match input.is_flat() {
            true => Ok(Shape::flat(self.units)),
            false => Err(format!(
                "its input is {input}, and a dense layer takes a flat one: put flatten (or gap) \
                 before it"
            )),
        }
    }

    fn sizes_are_valid(&self) -> bool {
        self.units > 0
    }

    fn activation(&self) -> LayerActivation {
        self.activation
    }

    fn parameters(&self, input: Shape) -> Option<Parameters> {
        let rows = input.len().checked_add(1)?;
        rows.checked_mul(self.units)?;
        Some(Parameters::Matrix {
            inputs: input.len(),
            outputs: self.units,
            rows,
            bias: true,
            fan_out: self.units,
        })
    }

    fn takes_transposed_batch(&self) -> bool {
        true
    }

    fn device(&self, args: &DeviceArgs<'_>) -> Result<DeviceLayer> {
        Ok(Box::new(DenseDevice::new(args, self.activation)?))
    }

    fn reference_forward(&self, args: ReferenceForward<'_>) -> Vec<f32> {
        let m = args.matrix.expect("a dense layer has a matrix");
        reference_forward(&m, self.activation, args.params, args.x, args.rows)
    }

    fn reference_backward(&self, args: ReferenceBackward<'_>) -> Option<Vec<f32>> {
        let m = args.matrix.expect("a dense layer has a matrix");
        let ReferenceBackward {
            params,
            x,
            dz,
            rows,
            grads,
            input_grad,
            ..
        } = args;
        reference_backward(&m, params, x, dz, rows, grads, input_grad)
    }

    /// `nn.Linear`'s weight `[out, in]` and bias; a flat input made by Flatten of C × H × W is
    /// numbered as `nn.Flatten` numbers it, (channel, row, column), where ours is channels-last.
    fn file_tensors(
        &self,
        name: &str,
        _input: Shape,
        matrix: Option<WeightMatrix>,
        _norm: Option<NormParams>,
        flattened_from: Option<Shape>,
    ) -> Vec<TensorMapping> {
        let m = matrix.expect("a dense layer has a matrix");
        let (inputs, outputs) = (m.inputs, m.outputs);
        vec![
            TensorMapping {
                name: format!("{name}.weight"),
                shape: vec![outputs, inputs],
                position: Box::new(move |j| {
                    let (out, input) = (j / inputs, j % inputs);
                    m.weight_offset + channels_last_index(flattened_from, input) * outputs + out
                }),
            },
            TensorMapping {
                name: format!("{name}.bias"),
                shape: vec![outputs],
                position: Box::new(move |j| m.bias_offset + j),
            },
        ]
    }

    fn products(&self, rows: usize, _input: Shape, m: &WeightMatrix) -> Vec<Product> {
        let flops = 2.0 * rows as f64 * m.inputs as f64 * m.outputs as f64;
        let padded = pad_outputs(m);
        let forms = |m: &WeightMatrix| {
            [
                MatmulDims::layer_forward(rows, m),
                MatmulDims::layer_weight_grad(rows, m),
                MatmulDims::layer_input_grad(rows, m),
            ]
        };
        let padded_forms = padded.as_ref().map(forms);
        ["forward", "weight grad", "input grad"]
            .into_iter()
            .zip(forms(m))
            .enumerate()
            .map(|(i, (part, dims))| Product {
                kind: "dense",
                part,
                dims,
                flops,
                direct: None,
                image: None,
                padded: padded_forms.map(|forms| forms[i]),
            })
            .collect()
    }
}
