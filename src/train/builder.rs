//! Builds, once, the bind groups of every dispatch a training or evaluation step records: the
//! gather, each node's forward and backward passes (`crate::layers`) in the plan's order, the
//! routing of gradients between them (`GradientRoutes`), the loss, the update and the schedule's
//! advance.

use wgpu::Buffer;

use super::program::Program;
use super::{DeviceSplit, TrainConfig};
use crate::error::Result;
use crate::error::Result as AnyResult;
use crate::gpu::Kernel;
use crate::gpu::buffers::grid_1d;
use crate::gpu::kernels::{ROW_WORKGROUP, gather_grid, gather_transposed_grid, optimizer_grid};
use crate::gpu::uniforms::ElementwiseShape;
use crate::gpu::uniforms::*;
use crate::gpu::{Gpu, Kernels, MatmulOperand, TextureMirror};
use crate::layers::{Backward, DeviceLayer, DeviceTensor, LayerIo};
use crate::model::{LayerActivation, LayerSpec, Loss, ModelSpec, Op, Plan, TensorId, WeightMatrix};

/// Where each node's backward pass writes the gradient of each of its inputs, and where each
/// tensor's gradient is once every consumer has run.
///
/// A tensor with one consumer has one gradient buffer, which that consumer writes; a Flatten's
/// and a residual sum's input gradient is its output gradient's buffer itself (they move
/// nothing), except where the sum's input comes from a layer whose backward pass applies its
/// activation's derivative to its output gradient in place: that input gets a copy. A tensor
/// with several consumers (a residual block's input) gets each consumer's gradient in a buffer
/// of its own (an alias for the moving-nothing ones), summed into its gradient in the
/// consumers' order after the first consumer's backward pass: a fixed order, the same bits on
/// every run.
pub(crate) struct GradientRoutes {
    /// For each tensor, its gradient buffer.
    pub grads: Vec<DeviceTensor>,
    /// For each node and input, where its backward pass writes that input's gradient (None
    /// where nothing needs it).
    pub targets: Vec<Vec<Option<DeviceTensor>>>,
    /// For each node and input, whether its backward pass copies its output gradient there.
    pub copies: Vec<Vec<bool>>,
}

impl GradientRoutes {
    /// The routes of `plan` for batches of up to `rows` samples; `values` the tensors' buffers.
    pub fn new(gpu: &Gpu, kernels: &Kernels, plan: &Plan, rows: usize) -> AnyResult<Self> {
        let new_buffer = |t: TensorId, what: &str| {
            let bytes = (rows * plan.tensors[t].shape.len() * 4) as u64;
            DeviceTensor::new(gpu, kernels, &format!("{what} {t}"), bytes)
        };
        let count = plan.tensors.len();
        let mut grads: Vec<Option<DeviceTensor>> = vec![None; count];
        grads[plan.logits()] = Some(new_buffer(plan.logits(), "gradient")?);
        let mut targets = vec![Vec::new(); plan.nodes.len()];
        let mut copies = vec![Vec::new(); plan.nodes.len()];
        // Whether a residual sum may hand its output gradient's buffer to its inputs: no input
        // is made by a layer that applies its activation's derivative to it in place.
        let in_place = |t: TensorId| {
            let producer = plan.tensors[t].producer;
            producer
                .and_then(|p| plan.layer(p))
                .is_some_and(|layer| layer.activation() != LayerActivation::Identity)
        };
        for (n, node) in plan.nodes.iter().enumerate().rev() {
            let output_grad = grads[node.output].clone();
            for &t in &node.inputs {
                let mut copy = false;
                let target = if !plan.needs_grad[t] {
                    None
                } else {
                    let moves_nothing = matches!(node.op, Op::Layer(LayerSpec::Flatten) | Op::Add);
                    let single = plan.tensors[t].consumers.len() == 1;
                    // A sum's other input may share the buffer: none may change it in place.
                    let shared_in_place = single && node.op == Op::Add && in_place(t);
                    let alias = output_grad
                        .clone()
                        .filter(|_| moves_nothing && !shared_in_place);
                    if single {
                        let grad = match alias {
                            Some(alias) => alias,
                            None => new_buffer(t, "gradient")?,
                        };
                        copy = shared_in_place;
                        grads[t] = Some(grad.clone());
                        Some(grad)
                    } else {
                        if grads[t].is_none() {
                            grads[t] = Some(new_buffer(t, "gradient")?);
                        }
                        Some(match alias {
                            Some(alias) => alias,
                            None => new_buffer(t, "gradient part")?,
                        })
                    }
                };
                targets[n].push(target);
                copies[n].push(copy);
            }
        }
        let grads = (grads.into_iter().enumerate())
            .map(|(t, grad)| grad.map_or_else(|| new_buffer(t, "gradient"), Ok))
            .collect::<AnyResult<_>>()?;
        Ok(GradientRoutes {
            grads,
            targets,
            copies,
        })
    }
}

/// Builds the bind groups of every dispatch of a step, once, walking the plan's nodes.
pub(crate) struct ProgramBuilder<'a, 'k> {
    pub(crate) gpu: &'k Gpu,
    pub(crate) kernels: &'k Kernels,
    pub(crate) spec: &'a ModelSpec,
    pub(crate) plan: &'a Plan,
    /// One per node of the plan.
    pub(crate) layers: &'a [DeviceLayer],
    /// One per tensor of the plan.
    pub(crate) tensors: &'a [DeviceTensor],
    pub(crate) routes: &'a GradientRoutes,
    pub(crate) batch_labels: &'a Buffer,
    pub(crate) params: &'a DeviceTensor,
    /// Floats in the flat parameter buffers: the trained parameters.
    pub(crate) param_floats: usize,
    pub(crate) grads: &'a Buffer,
    /// BatchNorm's running statistics (`ParamLayout::state`).
    pub(crate) state: &'a Buffer,
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

    /// Node `n`'s tensors.
    fn io(&self, n: usize) -> LayerIo<'a> {
        let node = &self.plan.nodes[n];
        LayerIo {
            input: &self.tensors[node.inputs[0]],
            second_input: node.inputs.get(1).map(|&t| &self.tensors[t]),
            output: &self.tensors[node.output],
            output_grad: &self.routes.grads[node.output],
            input_grad: self.routes.targets[n][0].as_ref(),
            input_is_batch: self.plan.is_batch(node.inputs[0]),
        }
    }

    /// Records `kernel` of elementwise.wgsl over `count` values: its inputs a and b where it
    /// reads them, and `out`.
    pub(crate) fn elementwise(
        &self,
        program: &mut Program<'k>,
        kernel: &'k Kernel,
        count: usize,
        inputs: [Option<&Buffer>; 2],
        out: &Buffer,
    ) {
        let shape = ElementwiseShape {
            count: count as u32,
            activation: 0,
            _pad: [0; 2],
        };
        let shape = self.gpu.params_with("elementwise shape", &shape);
        let mut resources = vec![shape.as_entire_binding()];
        resources.extend(inputs.iter().flatten().map(|b| b.as_entire_binding()));
        resources.push(out.as_entire_binding());
        let grid = grid_1d(count.div_ceil(4), ROW_WORKGROUP, self.max_groups());
        program.dispatch(self.gpu, kernel, &resources, grid);
    }

    /// The gradient of tensor `t`, which several nodes read: the sum of their gradients, in
    /// their order.
    fn sum_gradients(&self, program: &mut Program<'k>, t: TensorId, rows: usize) {
        let count = rows * self.plan.tensors[t].shape.len();
        let parts: Vec<&Buffer> = (self.plan.tensors[t].consumers.iter())
            .map(|&c| {
                let slot = self.plan.nodes[c].inputs.iter().position(|&i| i == t);
                let target = slot.and_then(|slot| self.routes.targets[c][slot].as_ref());
                &target.expect("each consumer gave its part").buffer
            })
            .collect();
        let sum = &self.routes.grads[t].buffer;
        let kernels = &self.kernels.elementwise;
        self.elementwise(
            program,
            &kernels.add,
            count,
            [Some(parts[0]), Some(parts[1])],
            sum,
        );
        for part in &parts[2..] {
            self.elementwise(program, &kernels.add_assign, count, [None, Some(part)], sum);
        }
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

        for (n, layer) in self.layers.iter().enumerate() {
            layer.record_forward(self, &mut program, &self.io(n), rows, training);
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
        let logits = self.plan.logits();
        let resources = [
            self.schedule.as_entire_binding(),
            shape.as_entire_binding(),
            self.tensors[logits].buffer.as_entire_binding(),
            self.batch_labels.as_entire_binding(),
            self.routes.grads[logits].buffer.as_entire_binding(),
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

    /// `forward` continued backward through every node, last first, writing the whole gradient
    /// buffer (one program, so that mirrors the forward pass refreshed are not copied again).
    /// Each node is told whether the node above already applied its activation's derivative,
    /// and the activation of the node beneath, whose derivative it may apply in turn; a tensor
    /// read by several nodes gets their gradients' sum after the first of them.
    pub(crate) fn backward(&self, forward: Program<'k>, rows: usize) -> Program<'k> {
        let mut program = forward;
        let plan = self.plan;
        let mut applied = vec![false; plan.tensors.len()];
        for (n, layer) in self.layers.iter().enumerate().rev() {
            let node = &plan.nodes[n];
            if !plan.needs_grad[node.output] {
                continue;
            }
            let backward = Backward {
                derivative_applied: applied[node.output],
                below: plan.activation_below(n),
            };
            let io = self.io(n);
            applied[node.inputs[0]] =
                layer.record_backward(self, &mut program, &io, rows, backward);
            for (slot, &copy) in self.routes.copies[n].iter().enumerate() {
                let target = self.routes.targets[n][slot].as_ref();
                if let Some(target) = target.filter(|_| copy) {
                    let count = rows * plan.tensors[node.output].shape.len();
                    let from = Some(&io.output_grad.buffer);
                    let kernel = &self.kernels.elementwise.copy;
                    self.elementwise(&mut program, kernel, count, [from, None], &target.buffer);
                }
            }
            for &t in &node.inputs {
                let consumers = &plan.tensors[t].consumers;
                if consumers.len() > 1 && consumers[0] == n && plan.needs_grad[t] {
                    self.sum_gradients(&mut program, t, rows);
                }
            }
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
