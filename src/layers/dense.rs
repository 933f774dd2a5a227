//! Dense: y = f(x W + b) on flat inputs.
//!
//! Forward, x `[rows, inputs]` → y `[rows, outputs]`: one product with the bias and the activation
//! in its epilogue. Backward, from dy `[rows, outputs]`: dz = dy ⊙ f'(y) (unless the layer above
//! applied it), db = Σ_rows dz, dW = xᵀ dz, and dx = dz Wᵀ `[rows, inputs]` where a layer below
//! needs it, through the derivative of the layer beneath where the kernels can.

use super::context::LayerContext;
use super::{Backward, DevicePasses, LayerIo};
use crate::gpu::buffers::grid_1d;
use crate::gpu::kernels::ROW_WORKGROUP;
use crate::gpu::program::Program;
use crate::gpu::uniforms::{ActivationShape, MatmulDims};
use crate::model::{LayerActivation, WeightMatrix};
use crate::reference;

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
            .input_is_batch
            .then(|| context.first_weight_grad_transposed(rows))
            .flatten();
        // The transposed product sums the bias gradient itself: activation.wgsl is needed only
        // to apply a derivative (its bias gradient is then computed again, the same sum in the
        // same order).
        if transposed.is_none() || activation != LayerActivation::Identity {
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
