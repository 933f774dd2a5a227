//! Builds, once, the bind groups of every dispatch a training or evaluation step records: the
//! gather, each node's forward and backward passes (`crate::layers`) in the plan's order, the
//! routing of gradients between them (`GradientRoutes`), the loss, the update and the schedule's
//! advance.

use wgpu::Buffer;

use super::optimizer::{self, UpdateRule};
use super::{DeviceSplit, TrainConfig};
use crate::error::Result as AnyResult;
use crate::gpu::buffers::grid_1d;
use crate::gpu::kernels::{ROW_WORKGROUP, gather_grid, gather_transposed_grid, optimizer_grid};
use crate::gpu::program::Program;
use crate::gpu::uniforms::*;
use crate::gpu::{Gpu, Kernels};
use crate::input::Augmentation;
use crate::layers::{Backward, DeviceLayer, DeviceTensor, LayerContext, LayerIo};
use crate::model::{LayerActivation, Loss, ModelSpec, Op, Plan, TensorId};

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
        // Whether a residual sum may hand its output gradient's buffer to its input `t`: not
        // where the layer that made `t` (through any Flatten, which shares its buffers) applies
        // its activation's derivative to that buffer in place.
        let in_place = |mut t: TensorId| loop {
            let Some(producer) = plan.tensors[t].producer else {
                return false;
            };
            let below = plan.nodes[producer].inputs[0];
            if plan.moves_nothing(producer) && plan.tensors[below].consumers.len() == 1 {
                t = below;
                continue;
            }
            return (plan.layer(producer))
                .is_some_and(|layer| layer.activation() != LayerActivation::Identity);
        };
        for (n, node) in plan.nodes.iter().enumerate().rev() {
            let output_grad = grads[node.output].clone();
            for &t in &node.inputs {
                let mut copy = false;
                let target = if !plan.needs_grad[t] {
                    None
                } else {
                    let moves_nothing = node.op == Op::Add || plan.moves_nothing(n);
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

/// The nodes a backward program runs, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BackwardPasses {
    /// A training step's: every node whose output needs a gradient.
    Training,
    /// An explanation's (`Backward::training` false) from the seed in the logits' gradient down
    /// to node `first_node`, each tensor's gradient left as dL/d(that tensor).
    Explanation { first_node: usize },
}

/// Builds the bind groups of every dispatch of a step, once, walking the plan's nodes.
pub(crate) struct ProgramBuilder<'a, 'k> {
    /// What the layers record through.
    pub(crate) context: LayerContext<'a, 'k>,
    pub(crate) spec: &'a ModelSpec,
    pub(crate) plan: &'a Plan,
    /// One per node of the plan.
    pub(crate) layers: &'a [DeviceLayer],
    /// One per tensor of the plan.
    pub(crate) tensors: &'a [DeviceTensor],
    pub(crate) routes: &'a GradientRoutes,
    pub(crate) batch_labels: &'a Buffer,
    /// Floats in the flat parameter buffers: the trained parameters.
    pub(crate) param_floats: usize,
    /// Cross-entropy's label smoothing in training (evaluation reports the plain loss).
    pub(crate) label_smoothing: f32,
    /// The training passes' augmentation, with the run's key (evaluation sees none).
    pub(crate) augmentation: Option<(Augmentation, u32)>,
}

impl<'a, 'k> ProgramBuilder<'a, 'k> {
    /// Node `n`'s tensors.
    fn io(&self, n: usize) -> LayerIo<'a> {
        let node = &self.plan.nodes[n];
        LayerIo {
            input: &self.tensors[node.inputs[0]],
            second_input: node.inputs.get(1).map(|&t| &self.tensors[t]),
            output: &self.tensors[node.output],
            output_grad: &self.routes.grads[node.output],
            input_grad: self.routes.targets[n][0].as_ref(),
            is_batch_dense: self.plan.batch_dense_node() == Some(n),
        }
    }

    /// The gradient of tensor `t`, which several nodes read: the sum of their gradients, in
    /// their order.
    fn sum_gradients(&self, program: &mut Program<'k>, t: TensorId, rows: usize) {
        let count = rows * self.plan.tensors[t].shape.len();
        let parts: Vec<&DeviceTensor> = (self.plan.tensors[t].consumers.iter())
            .map(|&c| {
                let slot = self.plan.nodes[c].inputs.iter().position(|&i| i == t);
                let target = slot.and_then(|slot| self.routes.targets[c][slot].as_ref());
                target.expect("each consumer gave its part")
            })
            .collect();
        let sum = &self.routes.grads[t].buffer;
        let identity = LayerActivation::Identity;
        let context = &self.context;
        let both = [Some(parts[0]), Some(parts[1])];
        context.elementwise(program, |k| &k.add, count, identity, both, sum);
        for &part in &parts[2..] {
            let second = [None, Some(part)];
            context.elementwise(program, |k| &k.add_assign, count, identity, second, sum);
        }
    }

    /// gather → every layer → loss, for `rows` samples of `split` (`training`: the loss writes
    /// its gradient, smoothed with `label_smoothing`, and dropout drops).
    pub(crate) fn forward(&self, split: &DeviceSplit, rows: usize, training: bool) -> Program<'k> {
        let mut program = Program::default();
        let gpu = self.context.gpu;
        let words = self.spec.input.len() / 4;
        let augmentation = self.augmentation.filter(|_| training);
        // The images' own gather where they are standardised or augmented; else the plain one,
        // which on CPU adapters can write the batch transposed for the first dense layer.
        let images = self.spec.standardisation.is_some() || augmentation.is_some();
        let shape = gpu.params_with(
            "gather shape",
            &GatherShape::new(
                self.spec.input,
                self.context.input_transposed.map_or(0, |t| t.quads),
                self.spec.standardisation.as_ref(),
                augmentation.as_ref().map(|(a, key)| (a, *key)),
            ),
        );
        let mut resources = vec![
            self.context.schedule.as_entire_binding(),
            shape.as_entire_binding(),
            split.pixels.as_entire_binding(),
            split.labels.as_entire_binding(),
            split.order.as_entire_binding(),
            self.tensors[0].buffer.as_entire_binding(),
            self.batch_labels.as_entire_binding(),
        ];
        let transposed = (self.context.input_transposed)
            .filter(|_| training && self.context.first_weight_grad_transposed(rows).is_some());
        let (kernel, grid) = match transposed {
            _ if images => (
                &self.context.kernels.gather_images,
                grid_1d(rows * words, ROW_WORKGROUP, self.context.max_groups()),
            ),
            Some(transposed) => {
                resources.push(transposed.buffer.as_entire_binding());
                let grid = gather_transposed_grid(rows, words, self.context.max_groups());
                (&self.context.kernels.gather_batch_transposed, grid)
            }
            None => (
                &self.context.kernels.gather_batch,
                gather_grid(rows * words, self.context.max_groups()),
            ),
        };
        program.dispatch(gpu, kernel, &resources, grid);
        self.record_layers_forward(&mut program, rows, training);

        let kernel = match self.spec.loss {
            Loss::Xent => &self.context.kernels.softmax_cross_entropy,
            Loss::Mse => &self.context.kernels.softmax_mean_squared_error,
        };
        let shape = gpu.params_with(
            "loss shape",
            &LossShape {
                classes: self.spec.classes() as u32,
                write_gradient: training as u32,
                label_smoothing: if training { self.label_smoothing } else { 0.0 },
                _pad: 0,
            },
        );
        let logits = self.plan.logits();
        let resources = [
            self.context.schedule.as_entire_binding(),
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
            grid_1d(rows, ROW_WORKGROUP, self.context.max_groups()),
        );
        program
    }

    /// Every node's forward pass over `rows` samples of the input tensor, in the plan's order.
    pub(crate) fn record_layers_forward(
        &self,
        program: &mut Program<'k>,
        rows: usize,
        training: bool,
    ) {
        for (n, layer) in self.layers.iter().enumerate() {
            layer.record_forward(&self.context, program, &self.io(n), rows, training);
        }
    }

    /// `forward` continued backward through every node, last first, writing the whole gradient
    /// buffer (one program, so that mirrors the forward pass refreshed are not copied again).
    pub(crate) fn backward(&self, forward: Program<'k>, rows: usize) -> Program<'k> {
        self.backward_passes(forward, rows, BackwardPasses::Training)
    }

    /// `program` continued backward through the nodes `passes` says, last first. Each node is
    /// told whether the node above already applied its activation's derivative, and the
    /// activation of the node beneath, whose derivative it may apply in turn; a tensor read by
    /// several nodes gets their gradients' sum after the first of them.
    pub(crate) fn backward_passes(
        &self,
        mut program: Program<'k>,
        rows: usize,
        passes: BackwardPasses,
    ) -> Program<'k> {
        let plan = self.plan;
        let (training, first_node) = match passes {
            BackwardPasses::Training => (true, 0),
            BackwardPasses::Explanation { first_node } => (false, first_node),
        };
        let mut applied = vec![false; plan.tensors.len()];
        for (n, layer) in self.layers.iter().enumerate().rev() {
            let node = &plan.nodes[n];
            if !plan.needs_grad[node.output] || n < first_node {
                continue;
            }
            // An explanation fuses no derivative into the layer above's pass, so that every
            // tensor's gradient is that of the tensor itself (Grad-CAM reads one).
            let below = match training {
                true => plan.activation_below(n),
                false => LayerActivation::Identity,
            };
            let backward = Backward {
                derivative_applied: applied[node.output],
                below,
                training,
            };
            let io = self.io(n);
            // Applied for the layer beneath only where it was named: a layer told the identity
            // (its input has other consumers, or no activation) applied nothing for it.
            let applied_below =
                layer.record_backward(&self.context, &mut program, &io, rows, backward);
            applied[node.inputs[0]] = applied_below && backward.below != LayerActivation::Identity;
            for (slot, &copy) in self.routes.copies[n].iter().enumerate() {
                let target = self.routes.targets[n][slot].as_ref();
                if let Some(target) = target.filter(|_| copy) {
                    let count = rows * plan.tensors[node.output].shape.len();
                    self.context.elementwise(
                        &mut program,
                        |k| &k.copy,
                        count,
                        LayerActivation::Identity,
                        [Some(io.output_grad), None],
                        &target.buffer,
                    );
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
        let kernel = &self.context.kernels.advance_step;
        let resources = [self.context.schedule.as_entire_binding()];
        program.dispatch(self.context.gpu, kernel, &resources, [1, 1, 1]);
        program
    }

    /// The update of every trained parameter: `state` holds the update rule's buffers
    /// (`UpdateRule::state_names`).
    pub(crate) fn update(&self, config: &TrainConfig, state: &[Buffer]) -> Program<'k> {
        let mut program = Program::default();
        let hyper = self.context.gpu.params_with(
            "optimizer hyperparameters",
            &optimizer::hyper(config, self.param_floats),
        );
        let grid = optimizer_grid(self.param_floats, self.context.max_groups());
        let kernel = UpdateRule::of(config).kernel(self.context.kernels.optimizer());
        let mut resources = vec![
            self.context.schedule.as_entire_binding(),
            hyper.as_entire_binding(),
            self.context.params.buffer.as_entire_binding(),
            self.context.grads.as_entire_binding(),
        ];
        resources.extend(state.iter().map(Buffer::as_entire_binding));
        program.dispatch(self.context.gpu, kernel, &resources, grid);
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
        let kernel = &self.context.kernels.sum_metrics;
        let resources = [
            shape.as_entire_binding(),
            split.sample_loss.as_entire_binding(),
            split.sample_correct.as_entire_binding(),
            totals.as_entire_binding(),
        ];
        program.dispatch(self.context.gpu, kernel, &resources, [1, 1, 1]);
        program
    }
}
