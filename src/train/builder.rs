//! Builds, once, the bind groups of every dispatch a training or evaluation step records: the
//! gather, each layer's forward and backward passes (`crate::layers`), the loss, the update and
//! the schedule's advance.

use wgpu::Buffer;

use super::program::Program;
use super::{DeviceSplit, TrainConfig};
use crate::error::Result;
use crate::gpu::buffers::grid_1d;
use crate::gpu::kernels::{ROW_WORKGROUP, gather_grid, gather_transposed_grid, optimizer_grid};
use crate::gpu::uniforms::*;
use crate::gpu::{Gpu, Kernels, MatmulOperand, TextureMirror};
use crate::layers::{Backward, DeviceLayer, DeviceTensor, LayerIo};
use crate::model::{LayerActivation, LayerSpec, Loss, ModelSpec, WeightMatrix};

/// Builds the bind groups of every dispatch of a step, once. Tensor `l` is layer `l`'s input (0:
/// the gathered batch) and `l + 1` its output; `grad_tensors` the gradients of the same.
pub(crate) struct ProgramBuilder<'a, 'k> {
    pub(crate) gpu: &'k Gpu,
    pub(crate) kernels: &'k Kernels,
    pub(crate) spec: &'a ModelSpec,
    pub(crate) layers: &'a [DeviceLayer],
    pub(crate) tensors: &'a [DeviceTensor],
    pub(crate) grad_tensors: &'a [DeviceTensor],
    pub(crate) batch_labels: &'a Buffer,
    pub(crate) params: &'a DeviceTensor,
    /// Floats in the flat parameter buffers.
    pub(crate) param_floats: usize,
    pub(crate) grads: &'a Buffer,
    pub(crate) schedule: &'a Buffer,
    pub(crate) input_transposed: Option<&'a TransposedInput>,
    /// The weight matrix of the dense layer that reads the batch itself (after any Flatten), if
    /// the first layer with parameters is one.
    pub(crate) batch_dense: Option<WeightMatrix>,
}

/// The training batch stored transposed, for the first layer's weight gradient as a forward-form
/// product (gather.wgsl's `gather_batch_transposed` writes it): on the register kernels the
/// forward blocks compute that shape faster than the weight-gradient form (docs/performance.md).
/// A row of ones below it (written
/// once, never gathered) makes the same product sum the bias gradient too, which saves
/// activation.wgsl's dispatch for that layer where its derivative is already applied.
pub(crate) struct TransposedInput {
    buffer: Buffer,
    mirror: TextureMirror,
    /// vec4 per row: the batch size rounded up to 4, over 4.
    quads: usize,
}

impl TransposedInput {
    /// Made where the matmul kernels read mirrors (the register kernels); elsewhere the
    /// weight-gradient form reads X through strides as fast.
    pub(crate) fn new(
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

impl<'a, 'k> ProgramBuilder<'a, 'k> {
    pub(crate) fn max_groups(&self) -> u32 {
        self.gpu.limits.max_compute_workgroups_per_dimension
    }

    /// Records the product `dims` (`below`: the mirror a backward epilogue reads).
    pub(crate) fn matmul(
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

    /// Records the product `dims` in parts along K where the kernels split it
    /// (`MatmulKernels::split_along_k`), the parts in `scratch` (sized for the largest split the
    /// caller records; without one, unsplit).
    pub(crate) fn matmul_in_parts(
        &self,
        program: &mut Program<'k>,
        dims: MatmulDims,
        [lhs, rhs]: [MatmulOperand<'_>; 2],
        out: &Buffer,
        scratch: Option<&Buffer>,
    ) {
        let split = self.kernels.matmul.split_for(&dims, [&lhs, &rhs]);
        let (Some(split), Some(scratch)) = (split, scratch) else {
            return self.matmul(program, dims, [lhs, rhs], out, None);
        };
        assert!(
            (split.scratch_floats * 4) as u64 <= scratch.size(),
            "a split product's parts fit its scratch buffer"
        );
        let uniform = self.gpu.params_with("matmul parts dims", &split.parts_dims);
        let resources = split
            .parts
            .resources(&uniform, lhs, rhs, scratch, None, &mut |mirror| {
                program.refresh(mirror)
            });
        program.dispatch(self.gpu, split.parts.kernel, &resources, split.parts.grid);
        let uniform = self.gpu.params_with("matmul sum dims", &split.sum_dims);
        let resources = split.sum_resources(&uniform, scratch, out);
        program.dispatch(self.gpu, split.sum.kernel, &resources, split.sum.grid);
    }

    pub(crate) fn params_operand(&self) -> MatmulOperand<'a> {
        self.params.operand()
    }

    /// The weight and bias gradient of the dense layer reading the batch, on the transposed
    /// batch, where it runs on the register kernels' forward form (not where a partial batch's
    /// rows are not a multiple of 4). `forward` (whether to gather the batch transposed too) and
    /// that layer's backward pass both ask this for the same rows, so they agree.
    pub(crate) fn first_weight_grad_transposed(
        &self,
        rows: usize,
    ) -> Option<(MatmulDims, MatmulOperand<'a>)> {
        let transposed = self.input_transposed?;
        let matrix = self.batch_dense.as_ref()?;
        let stride = 4 * transposed.quads;
        let dims = (self.kernels.matmul).transposed_first_weight_grad(rows, matrix, stride)?;
        Some((
            dims,
            MatmulOperand::new(&transposed.buffer, Some(&transposed.mirror)),
        ))
    }

    /// Layer `l`'s tensors.
    fn io(&self, l: usize) -> LayerIo<'a> {
        let below = &self.spec.layers[..l];
        LayerIo {
            input: &self.tensors[l],
            output: &self.tensors[l + 1],
            output_grad: &self.grad_tensors[l + 1],
            input_grad: below
                .iter()
                .any(LayerSpec::has_parameters)
                .then(|| &self.grad_tensors[l]),
            input_is_batch: below.iter().all(|layer| *layer == LayerSpec::Flatten),
        }
    }

    /// The activation of the layer beneath layer `l`, through any Flatten.
    fn activation_below(&self, l: usize) -> LayerActivation {
        (self.spec.layers[..l].iter())
            .rfind(|layer| **layer != LayerSpec::Flatten)
            .map_or(LayerActivation::Identity, LayerSpec::activation)
    }

    /// gather → every layer → loss, for `rows` samples of `split` (`training`: the loss writes
    /// its gradient, and dropout drops).
    pub(crate) fn forward(&self, split: &DeviceSplit, rows: usize, training: bool) -> Program<'k> {
        let mut program = Program::default();
        let gpu = self.gpu;
        let words = self.spec.input.len() / 4;
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
            self.tensors[0].buffer.as_entire_binding(),
            self.batch_labels.as_entire_binding(),
        ];
        let transposed = self
            .input_transposed
            .filter(|_| training && self.first_weight_grad_transposed(rows).is_some());
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

        for (l, layer) in self.layers.iter().enumerate() {
            layer.record_forward(self, &mut program, &self.io(l), rows, training);
        }

        let kernel = match self.spec.loss {
            Loss::Xent => &self.kernels.softmax_cross_entropy,
            Loss::Mse => &self.kernels.softmax_mean_squared_error,
        };
        let shape = gpu.params_with(
            "loss shape",
            &LossShape {
                classes: self.spec.classes() as u32,
                write_gradient: training as u32,
                _pad: [0; 2],
            },
        );
        let last = self.tensors.len() - 1;
        let resources = [
            self.schedule.as_entire_binding(),
            shape.as_entire_binding(),
            self.tensors[last].buffer.as_entire_binding(),
            self.batch_labels.as_entire_binding(),
            self.grad_tensors[last].buffer.as_entire_binding(),
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

    /// `forward` continued backward through every layer, last first, writing the whole gradient
    /// buffer (one program, so that mirrors the forward pass refreshed are not copied again).
    /// Each layer is told whether the layer above already applied its activation's derivative,
    /// and the activation of the layer beneath, whose derivative it may apply in turn.
    pub(crate) fn backward(&self, forward: Program<'k>, rows: usize) -> Program<'k> {
        let mut program = forward;
        let mut derivative_applied = false;
        for (l, layer) in self.layers.iter().enumerate().rev() {
            let backward = Backward {
                derivative_applied,
                below: self.activation_below(l),
            };
            derivative_applied =
                layer.record_backward(self, &mut program, &self.io(l), rows, backward);
        }
        program
    }

    pub(crate) fn advance(&self) -> Program<'k> {
        let mut program = Program::default();
        let kernel = &self.kernels.advance_step;
        let resources = [self.schedule.as_entire_binding()];
        program.dispatch(self.gpu, kernel, &resources, [1, 1, 1]);
        program
    }

    pub(crate) fn update(
        &self,
        config: &TrainConfig,
        moments: Option<&(Buffer, Buffer)>,
    ) -> Program<'k> {
        let mut program = Program::default();
        let hyper = self.gpu.params_with(
            "optimizer hyperparameters",
            &OptimizerHyper {
                count: self.param_floats as u32,
                learning_rate: config.learning_rate,
                beta1: config.beta1,
                beta2: config.beta2,
                epsilon: config.epsilon,
                _pad: [0; 3],
            },
        );
        let grid = optimizer_grid(self.param_floats, self.max_groups());
        match moments {
            Some((moment1, moment2)) => {
                let kernel = &self.kernels.optimizer().adam;
                let resources = [
                    self.schedule.as_entire_binding(),
                    hyper.as_entire_binding(),
                    self.params.buffer.as_entire_binding(),
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
                    self.params.buffer.as_entire_binding(),
                    self.grads.as_entire_binding(),
                ];
                program.dispatch(self.gpu, kernel, &resources, grid);
            }
        }
        program
    }

    /// Sums a split's per-sample metrics into `totals` (count and slot: in `shape`).
    pub(crate) fn sum_metrics(
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
