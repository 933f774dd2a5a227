//! Builds, once, the bind groups of every dispatch a training or evaluation step records.

use wgpu::Buffer;

use super::program::Program;
use super::{DeviceSplit, TrainConfig};
use crate::error::Result;
use crate::gpu::buffers::grid_1d;
use crate::gpu::kernels::{ROW_WORKGROUP, gather_grid, gather_transposed_grid, optimizer_grid};
use crate::gpu::uniforms::*;
use crate::gpu::{Gpu, Kernels, MatmulOperand, TextureMirror};
use crate::model::{DenseLayer, LayerActivation, Loss, ModelSpec, ParamLayout};

/// Builds the bind groups of every dispatch of a step, once.
pub(super) struct ProgramBuilder<'a, 'k> {
    pub(super) gpu: &'k Gpu,
    pub(super) kernels: &'k Kernels,
    pub(super) spec: &'a ModelSpec,
    pub(super) layout: &'a ParamLayout,
    pub(super) activations: &'a [Buffer],
    pub(super) activation_grads: &'a [Buffer],
    pub(super) batch_labels: &'a Buffer,
    pub(super) params: &'a Buffer,
    pub(super) grads: &'a Buffer,
    pub(super) schedule: &'a Buffer,
    /// Texture mirrors of the matmul operands, where the kernels read mirrors.
    pub(super) mirrors: &'a OperandMirrors,
    pub(super) input_transposed: Option<&'a TransposedInput>,
}

/// The training batch stored transposed, for the first layer's weight gradient as a forward-form
/// product (gather.wgsl's `gather_batch_transposed` writes it): on the register kernels the
/// 8×16 forward blocks compute that shape (M 784, N 256, K 128 for MNIST) at 40-50 GFLOP/s where
/// the weight-gradient form reaches 25-33, at no measurable cost to the gather. A row of ones
/// below it (written once, never gathered) makes the same product sum the bias gradient too,
/// which saves activation.wgsl's dispatch for that layer where its derivative is already applied.
pub(super) struct TransposedInput {
    buffer: Buffer,
    mirror: TextureMirror,
    /// vec4 per row: the batch size rounded up to 4, over 4.
    quads: usize,
}

impl TransposedInput {
    /// Made where the matmul kernels read mirrors (the register kernels); elsewhere the
    /// weight-gradient form reads X through strides as fast.
    pub(super) fn new(
        gpu: &Gpu,
        kernels: &Kernels,
        inputs: usize,
        batch: usize,
    ) -> Result<Option<Self>> {
        if !kernels.matmul.reads_mirrors() {
            return Ok(None);
        }
        let quads = batch.div_ceil(4);
        let buffer = gpu.storage_buffer("batch transposed", ((inputs + 1) * quads * 16) as u64)?;
        let ones = vec![1.0f32; 4 * quads];
        let ones_row = (inputs * quads * 16) as u64;
        gpu.queue
            .write_buffer(&buffer, ones_row, bytemuck::cast_slice(&ones));
        Ok(
            TextureMirror::new(gpu, "batch transposed mirror", &buffer).map(|mirror| {
                TransposedInput {
                    buffer,
                    mirror,
                    quads,
                }
            }),
        )
    }
}

/// Texture mirrors (`gpu::mirror`) of the buffers the matmuls read: the parameters, each
/// activation and each activation gradient (`None` where there is none).
#[derive(Default)]
pub(super) struct OperandMirrors {
    pub(super) params: Option<TextureMirror>,
    pub(super) activations: Vec<Option<TextureMirror>>,
    pub(super) activation_grads: Vec<Option<TextureMirror>>,
}

impl OperandMirrors {
    /// Mirrors of every operand buffer if this device's matmul kernels read mirrors; else none.
    pub(super) fn new(
        gpu: &Gpu,
        kernels: &Kernels,
        params: &Buffer,
        activations: &[Buffer],
        activation_grads: &[Buffer],
    ) -> Self {
        if !kernels.matmul.reads_mirrors() {
            return OperandMirrors::default();
        }
        let mirror_all = |buffers: &[Buffer], what: &str| {
            buffers
                .iter()
                .enumerate()
                .map(|(l, b)| TextureMirror::new(gpu, &format!("{what} {l} mirror"), b))
                .collect()
        };
        OperandMirrors {
            params: TextureMirror::new(gpu, "parameters mirror", params),
            activations: mirror_all(activations, "activation"),
            activation_grads: mirror_all(activation_grads, "activation grad"),
        }
    }
}

impl<'a, 'k> ProgramBuilder<'a, 'k> {
    fn max_groups(&self) -> u32 {
        self.gpu.limits.max_compute_workgroups_per_dimension
    }

    /// Records the product `dims` (`below`: the mirror a backward epilogue reads).
    fn matmul(
        &self,
        program: &mut Program<'k>,
        dims: MatmulDims,
        [lhs, rhs]: [MatmulOperand<'_>; 2],
        out: &Buffer,
        below: Option<&TextureMirror>,
    ) {
        let chosen = self.kernels.matmul.for_operands(&dims, lhs, rhs);
        let uniform = self.gpu.params_with("matmul dims", &dims);
        let resources = chosen.resources(&uniform, lhs, rhs, out, below, &mut |mirror| {
            program.refresh(mirror)
        });
        program.dispatch(self.gpu, chosen.kernel, &resources, chosen.grid);
    }

    fn params_operand(&self) -> MatmulOperand<'a> {
        MatmulOperand::new(self.params, self.mirrors.params.as_ref())
    }

    fn activation(&self, l: usize) -> MatmulOperand<'a> {
        let mirror = self.mirrors.activations.get(l).and_then(Option::as_ref);
        MatmulOperand::new(&self.activations[l], mirror)
    }

    /// The first layer's weight and bias gradient on the transposed batch, where it runs on the
    /// register kernels' forward form (not where a partial batch's rows are not a multiple of 4).
    /// `forward` (whether to gather the batch transposed too) and `backward` both ask this for the
    /// same rows, so they agree.
    fn first_weight_grad_transposed(&self, rows: usize) -> Option<(MatmulDims, MatmulOperand<'a>)> {
        let transposed = self.input_transposed?;
        let layer = &self.layout.layers[0];
        let stride = 4 * transposed.quads;
        let dims = (self.kernels.matmul).transposed_first_weight_grad(rows, layer, stride)?;
        Some((
            dims,
            MatmulOperand::new(&transposed.buffer, Some(&transposed.mirror)),
        ))
    }

    fn activation_grad(&self, l: usize) -> MatmulOperand<'a> {
        let mirror = self
            .mirrors
            .activation_grads
            .get(l)
            .and_then(Option::as_ref);
        MatmulOperand::new(&self.activation_grads[l], mirror)
    }

    /// gather → dense layers → loss, for `rows` samples of `split`.
    pub(super) fn forward(
        &self,
        split: &DeviceSplit,
        rows: usize,
        write_gradient: bool,
    ) -> Program<'k> {
        let mut program = Program::default();
        let gpu = self.gpu;
        let words = self.spec.inputs / 4;
        let shape = gpu.params_with(
            "gather shape",
            &GatherShape {
                words_per_sample: words as u32,
                transposed_quads: self.input_transposed.map_or(0, |t| t.quads as u32),
                _pad: [0; 2],
            },
        );
        let mut resources = vec![
            self.schedule.as_entire_binding(),
            shape.as_entire_binding(),
            split.pixels.as_entire_binding(),
            split.labels.as_entire_binding(),
            split.order.as_entire_binding(),
            self.activations[0].as_entire_binding(),
            self.batch_labels.as_entire_binding(),
        ];
        let transposed = self
            .input_transposed
            .filter(|_| write_gradient && self.first_weight_grad_transposed(rows).is_some());
        let (kernel, grid) = match transposed {
            Some(transposed) => {
                resources.push(transposed.buffer.as_entire_binding());
                let grid = gather_transposed_grid(rows, words, self.max_groups());
                (&self.kernels.gather_batch_transposed, grid)
            }
            None => (
                &self.kernels.gather_batch,
                gather_grid(rows * words, self.max_groups()),
            ),
        };
        program.dispatch(gpu, kernel, &resources, grid);

        // Each layer is one product with the bias and activation fused into its epilogue.
        for (l, layer) in self.layout.layers.iter().enumerate() {
            let activation = self.spec.layer_activation(l);
            self.matmul(
                &mut program,
                MatmulDims::layer_forward_activated(rows, layer, activation),
                [self.activation(l), self.params_operand()],
                &self.activations[l + 1],
                None,
            );
        }

        let kernel = match self.spec.loss {
            Loss::Xent => &self.kernels.softmax_cross_entropy,
            Loss::Mse => &self.kernels.softmax_mean_squared_error,
        };
        let shape = gpu.params_with(
            "loss shape",
            &LossShape {
                classes: self.spec.classes as u32,
                write_gradient: write_gradient as u32,
                _pad: [0; 2],
            },
        );
        let last = self.activations.len() - 1;
        let resources = [
            self.schedule.as_entire_binding(),
            shape.as_entire_binding(),
            self.activations[last].as_entire_binding(),
            self.batch_labels.as_entire_binding(),
            self.activation_grads[last].as_entire_binding(),
            split.sample_loss.as_entire_binding(),
            split.sample_correct.as_entire_binding(),
            split.sample_prediction.as_entire_binding(),
        ];
        program.dispatch(
            gpu,
            kernel,
            &resources,
            grid_1d(rows, ROW_WORKGROUP, self.max_groups()),
        );
        program
    }

    /// activation.wgsl's parameters for `layer` over `rows` samples, taking the derivative of
    /// `activation` (the identity: only the bias gradient).
    fn activation_shape(
        &self,
        rows: usize,
        layer: &DenseLayer,
        activation: LayerActivation,
    ) -> Buffer {
        self.gpu.params_with(
            "activation shape",
            &ActivationShape {
                rows: rows as u32,
                cols: layer.outputs as u32,
                bias_offset: layer.bias_offset as u32,
                activation: activation.shader_code(),
            },
        )
    }

    /// `forward` continued backward through every layer, last first, writing the whole gradient
    /// buffer (one program, so that mirrors the forward pass refreshed are not copied again).
    /// Where the input-gradient product can carry the gradient through the activation below
    /// (the register kernels), activation.wgsl only sums that layer's bias gradient, and for the
    /// first layer not even that where its weight gradient runs on the transposed batch, whose
    /// row of ones sums the bias gradient in the same product.
    pub(super) fn backward(&self, forward: Program<'k>, rows: usize) -> Program<'k> {
        let mut program = forward;
        // Whether the layer's activation derivative is already applied to its output gradient
        // (by the epilogue of the layer above's input-gradient product).
        let mut derivative_applied = false;
        let first_transposed = self.first_weight_grad_transposed(rows);
        for (l, layer) in self.layout.layers.iter().enumerate().rev() {
            let (upstream, output) = (&self.activation_grads[l + 1], &self.activations[l + 1]);
            let activation = match derivative_applied {
                true => LayerActivation::Identity,
                false => self.spec.layer_activation(l),
            };
            let transposed = first_transposed.filter(|_| l == 0);
            // The transposed product sums the bias gradient itself: activation.wgsl is needed
            // only to apply a derivative (its bias gradient is then computed again, the same
            // sum in the same order).
            if transposed.is_none() || activation != LayerActivation::Identity {
                let shape = self.activation_shape(rows, layer, activation);
                let kernel = &self.kernels.activation_backward;
                let resources = [
                    shape.as_entire_binding(),
                    upstream.as_entire_binding(),
                    output.as_entire_binding(),
                    self.grads.as_entire_binding(),
                ];
                let grid = grid_1d(layer.outputs, ROW_WORKGROUP, self.max_groups());
                program.dispatch(self.gpu, kernel, &resources, grid);
            }
            let upstream_operand = self.activation_grad(l + 1);
            match transposed {
                // `forward` gathered the transposed batch for it.
                Some((dims, lhs)) => {
                    let operands = [lhs, upstream_operand];
                    self.matmul(&mut program, dims, operands, self.grads, None)
                }
                None => {
                    let dims = MatmulDims::layer_weight_grad(rows, layer);
                    let operands = [self.activation(l), upstream_operand];
                    self.matmul(&mut program, dims, operands, self.grads, None);
                }
            }
            derivative_applied = false;
            if l > 0 {
                let operands = [self.activation_grad(l + 1), self.params_operand()];
                let below = self.spec.layer_activation(l - 1);
                let through = MatmulDims::layer_input_grad_through(rows, layer, below);
                let below_mirror = self.mirrors.activations.get(l).and_then(Option::as_ref);
                let fused = below_mirror.is_some()
                    && (self.kernels.matmul).has_backward_epilogue(
                        &through,
                        operands[0],
                        operands[1],
                    );
                let downstream = &self.activation_grads[l];
                if fused {
                    self.matmul(&mut program, through, operands, downstream, below_mirror);
                    derivative_applied = true;
                } else {
                    let dims = MatmulDims::layer_input_grad(rows, layer);
                    self.matmul(&mut program, dims, operands, downstream, None);
                }
            }
        }
        program
    }

    pub(super) fn advance(&self) -> Program<'k> {
        let mut program = Program::default();
        let kernel = &self.kernels.advance_step;
        let resources = [self.schedule.as_entire_binding()];
        program.dispatch(self.gpu, kernel, &resources, [1, 1, 1]);
        program
    }

    pub(super) fn update(
        &self,
        config: &TrainConfig,
        moments: Option<&(Buffer, Buffer)>,
    ) -> Program<'k> {
        let mut program = Program::default();
        let hyper = self.gpu.params_with(
            "optimizer hyperparameters",
            &OptimizerHyper {
                count: self.layout.total as u32,
                learning_rate: config.learning_rate,
                beta1: config.beta1,
                beta2: config.beta2,
                epsilon: config.epsilon,
                _pad: [0; 3],
            },
        );
        let grid = optimizer_grid(self.layout.total, self.max_groups());
        match moments {
            Some((moment1, moment2)) => {
                let kernel = &self.kernels.optimizer().adam;
                let resources = [
                    self.schedule.as_entire_binding(),
                    hyper.as_entire_binding(),
                    self.params.as_entire_binding(),
                    self.grads.as_entire_binding(),
                    moment1.as_entire_binding(),
                    moment2.as_entire_binding(),
                ];
                program.dispatch(self.gpu, kernel, &resources, grid);
            }
            None => {
                let kernel = &self.kernels.optimizer().sgd;
                let resources = [
                    hyper.as_entire_binding(),
                    self.params.as_entire_binding(),
                    self.grads.as_entire_binding(),
                ];
                program.dispatch(self.gpu, kernel, &resources, grid);
            }
        }
        program
    }

    /// Sums a split's per-sample metrics into `totals` (count and slot: in `shape`).
    pub(super) fn sum_metrics(
        &self,
        split: &DeviceSplit,
        shape: &Buffer,
        totals: &Buffer,
    ) -> Program<'k> {
        let mut program = Program::default();
        let kernel = &self.kernels.sum_metrics;
        let resources = [
            shape.as_entire_binding(),
            split.sample_loss.as_entire_binding(),
            split.sample_correct.as_entire_binding(),
            totals.as_entire_binding(),
        ];
        program.dispatch(self.gpu, kernel, &resources, [1, 1, 1]);
        program
    }
}
