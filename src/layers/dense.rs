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
    Backward, DeviceLayer, DevicePasses, LayerIo, channels_last_index, leading_number, positive,
};
use crate::error::Result;
use crate::gpu::buffers::grid_1d;
use crate::gpu::kernels::ROW_WORKGROUP;
use crate::gpu::program::Program;
use crate::gpu::uniforms::{ActivationShape, MatmulDims};
use crate::reference;
use crate::shapes::{LayerActivation, NormParams, Shape, WeightMatrix};

/// A dense layer in a training program.
pub(crate) struct DenseDevice {
    matrix: WeightMatrix,
    activation: LayerActivation,
}

impl DenseDevice {
    pub fn new(matrix: WeightMatrix, activation: LayerActivation) -> Self {
        DenseDevice { matrix, activation }
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
        context.matmul(
            program,
            MatmulDims::layer_forward_activated(rows, &self.matrix, self.activation),
            [io.input.operand(), context.params_operand()],
            &io.output.buffer,
            None,
        );
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
        let upstream = io.output_grad.operand();
        match transposed {
            // An explanation's backward pass wants the input gradient alone.
            _ if !backward.training => {}
            // The gather wrote the transposed batch for it.
            Some((dims, lhs)) => {
                context.matmul(program, dims, [lhs, upstream], context.grads, None)
            }
            None => {
                let dims = MatmulDims::layer_weight_grad(rows, m);
                let operands = [io.input.operand(), upstream];
                context.matmul(program, dims, operands, context.grads, None);
            }
        }
        let Some(input_grad) = io.input_grad else {
            return false;
        };
        let operands = [io.output_grad.operand(), context.params_operand()];
        let through = MatmulDims::layer_input_grad_through(rows, m, backward.below);
        let below_mirror = io.input.mirror.as_ref();
        let fused = backward.below != LayerActivation::Identity
            && below_mirror.is_some()
            && (context.kernels.matmul).has_backward_epilogue(&through, operands[0], operands[1]);
        if fused {
            context.matmul(program, through, operands, &input_grad.buffer, below_mirror);
        } else {
            let dims = MatmulDims::layer_input_grad(rows, m);
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
        let matrix = args.matrix.expect("a dense layer has a matrix");
        Ok(Box::new(DenseDevice::new(matrix, self.activation)))
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
        [
            ("forward", MatmulDims::layer_forward(rows, m)),
            ("weight grad", MatmulDims::layer_weight_grad(rows, m)),
            ("input grad", MatmulDims::layer_input_grad(rows, m)),
        ]
        .into_iter()
        .map(|(part, dims)| Product {
            kind: "dense",
            part,
            dims,
            flops,
            direct: None,
            image: None,
        })
        .collect()
    }
}
