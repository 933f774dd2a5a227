//! The gradient of a class score with respect to a model's input (and to one feature map) on
//! the GPU: what `crate::explain` builds saliency maps, integrated gradients and Grad-CAM from.
//!
//! For a batch x `[rows, input]` and a class c_i per sample, in evaluation (dropout the identity,
//! BatchNorm with its running statistics):
//!   forward    every node, as evaluation runs it       → logits `[rows, classes]`
//!   seed       dS/dlogits = one-hot(c_i) per row        (the score S_i: logit c_i, before the softmax)
//!   backward   every node, last first, no parameter gradient, no derivative fused into the
//!              layer above's pass                       → dS_i/dx_i `[rows, input]`
//! Samples never mix in evaluation, so a batch of fewer samples than the programs were built for
//! is padded with zeros, and each sample's gradient is its own.

use wgpu::Buffer;

use super::builder::{BackwardPasses, GradientRoutes, ProgramBuilder};
use super::{ParameterBuffers, UpdateRule, device_layer, plan_tensors};
use crate::error::{Error, Result};
use crate::gpu::program::{Program, Recorder};
use crate::gpu::uniforms::{SCHEDULE_HEADER_BYTES, StepParams};
use crate::gpu::{Gpu, Kernels};
use crate::layers::{DeviceTensor, LayerContext};
use crate::model::{ModelSpec, Plan, Shape, TensorId};

/// A model's parameters on the GPU with the programs that take class-score gradients of up to
/// `rows` samples at a time. Built once; each `gradients` call is one or two submissions.
pub struct ScoreGradients<'k> {
    gpu: &'k Gpu,
    plan: Plan,
    rows: usize,
    /// Kept alive for the programs' bind groups.
    _params: ParameterBuffers,
    _schedule: Buffer,
    tensors: Vec<DeviceTensor>,
    routes: GradientRoutes,
    forward: Program<'k>,
    backward: Program<'k>,
    feature: Option<TensorId>,
}

/// What `ScoreGradients::gradients` returns for a batch of samples.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreGradient {
    /// `[samples, classes]`.
    pub logits: Vec<f32>,
    /// The class whose score was differentiated, per sample.
    pub classes: Vec<usize>,
    /// dS/dx `[samples, input]`, channels-last as the input (empty where a feature map was
    /// asked for: the backward pass stops at it).
    pub input_grad: Vec<f32>,
    /// The feature map asked for at construction, `[samples, shape]`, and dS/d(that map).
    pub feature: Option<FeatureGradient>,
}

/// A feature map's values and the score's gradient with respect to them.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureGradient {
    pub shape: Shape,
    pub values: Vec<f32>,
    pub grad: Vec<f32>,
}

impl<'k> ScoreGradients<'k> {
    /// The programs of `spec` with `params` (laid out as its plan's layout, state included) for
    /// batches of up to `rows` samples; `feature`: a tensor of the plan whose values and
    /// gradient `gradients` also returns (the backward pass then stops at it).
    pub fn new(
        gpu: &'k Gpu,
        kernels: &'k Kernels,
        spec: &ModelSpec,
        params: &[f32],
        rows: usize,
        feature: Option<TensorId>,
    ) -> Result<Self> {
        let plan = spec.plan()?.with_every_gradient();
        if params.len() != plan.layout.total {
            return Err(Error::Config(format!(
                "{} parameters given, the model has {}",
                params.len(),
                plan.layout.total
            )));
        }
        if feature.is_some_and(|t| t == 0 || t >= plan.tensors.len()) {
            return Err(Error::Config(format!(
                "tensor {feature:?} is not a feature map of the model"
            )));
        }
        let rows = rows.max(1);
        super::fit::check(gpu, &plan, rows, [("explained", rows), ("explained", rows)])?;
        let params_buffers =
            ParameterBuffers::new(gpu, kernels, &plan.layout, params, UpdateRule::Sgd)?;
        let tensors = plan_tensors(gpu, kernels, &plan, rows)?;
        let routes = GradientRoutes::new(gpu, kernels, &plan, rows)?;
        let layers = (0..plan.nodes.len())
            .map(|n| device_layer(gpu, kernels, &plan, n, rows, 0))
            .collect::<Result<Vec<_>>>()?;
        // Evaluation reads no step, but the passes bind the schedule: one zeroed slot.
        let step_bytes = std::mem::size_of::<StepParams>() as u64;
        let schedule = gpu.storage_buffer("step schedule", SCHEDULE_HEADER_BYTES + step_bytes)?;
        let batch_labels = gpu.storage_buffer("batch labels", (rows * 4) as u64)?;
        let builder = ProgramBuilder {
            context: LayerContext {
                gpu,
                kernels,
                params: &params_buffers.params,
                grads: &params_buffers.grads,
                state: &params_buffers.state,
                schedule: &schedule,
                input_transposed: None,
                batch_dense: None,
            },
            spec,
            plan: &plan,
            layers: &layers,
            tensors: &tensors,
            routes: &routes,
            batch_labels: &batch_labels,
            param_floats: plan.layout.trained,
            label_smoothing: 0.0,
            augmentation: None,
        };
        let mut forward = Program::default();
        builder.record_layers_forward(&mut forward, rows, false);
        // Down to the feature map's consumers: its producer's backward pass would apply its
        // activation's derivative to the map's gradient in place.
        let first_node = feature.map_or(0, |t| {
            plan.tensors[t]
                .producer
                .expect("a feature map is made by a node")
                + 1
        });
        let passes = BackwardPasses::Explanation { first_node };
        let backward = builder.backward_passes(Program::default(), rows, passes);
        Ok(ScoreGradients {
            gpu,
            plan,
            rows,
            _params: params_buffers,
            _schedule: schedule,
            tensors,
            routes,
            forward,
            backward,
            feature,
        })
    }

    /// The most samples one call takes.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The plan the programs walk (every gradient wanted).
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The logits of the samples of `x` (`[samples, input]`, as the model takes them): the
    /// forward pass alone. Waits for the GPU.
    pub fn logits(&self, x: &[f32]) -> Result<Vec<f32>> {
        let samples = self.upload(x)?;
        self.submit(&[&self.forward]);
        let classes = self.plan.tensors[self.plan.logits()].shape.len();
        let logits = &self.tensors[self.plan.logits()].buffer;
        self.gpu.read_back(logits, samples * classes)
    }

    /// Writes the samples of `x` into the input tensor, zeros after them; returns how many.
    fn upload(&self, x: &[f32]) -> Result<usize> {
        let input = self.plan.tensors[0].shape.len();
        let samples = x.len() / input;
        if !x.len().is_multiple_of(input) || samples == 0 || samples > self.rows {
            return Err(Error::Config(format!(
                "{} values are not 1 to {} samples of {input}",
                x.len(),
                self.rows
            )));
        }
        let mut padded = x.to_vec();
        padded.resize(self.rows * input, 0.0);
        (self.gpu.queue).write_buffer(&self.tensors[0].buffer, 0, bytemuck::cast_slice(&padded));
        Ok(samples)
    }

    /// The gradient of each sample's class score for the samples of `x` (`[samples, input]`,
    /// as the model takes them: scaled and standardised), of `classes[i]` where given, else
    /// of the class the model predicts for the sample. Waits for the GPU.
    pub fn gradients(&self, x: &[f32], classes: Option<&[usize]>) -> Result<ScoreGradient> {
        let input = self.plan.tensors[0].shape.len();
        let classes_count = self.plan.tensors[self.plan.logits()].shape.len();
        if let Some(classes) = classes {
            let samples = x.len() / input;
            if classes.len() != samples {
                return Err(Error::Config(format!(
                    "{} classes given for {samples} samples",
                    classes.len()
                )));
            }
            check_classes(classes, classes_count)?;
        }
        let samples = self.upload(x)?;
        let queue = &self.gpu.queue;
        let logits_bytes = (samples * classes_count * 4) as u64;
        let logits_buffer = &self.tensors[self.plan.logits()].buffer;
        // Without the classes, the forward pass first: the predicted ones seed the backward.
        let (classes, early_logits) = match classes {
            Some(classes) => (classes.to_vec(), None),
            None => {
                self.submit(&[&self.forward]);
                let logits: Vec<f32> =
                    self.gpu.read_back(logits_buffer, samples * classes_count)?;
                let predicted = logits.chunks(classes_count).map(argmax).collect();
                (predicted, Some(logits))
            }
        };
        let mut seed = vec![0.0f32; self.rows * classes_count];
        for (row, &class) in classes.iter().enumerate() {
            seed[row * classes_count + class] = 1.0;
        }
        let logits_grad = &self.routes.grads[self.plan.logits()].buffer;
        queue.write_buffer(logits_grad, 0, bytemuck::cast_slice(&seed));
        match early_logits {
            Some(_) => self.submit(&[&self.backward]),
            None => self.submit(&[&self.forward, &self.backward]),
        }
        let input_bytes = (samples * input * 4) as u64;
        let mut parts = vec![(logits_buffer, logits_bytes)];
        if self.feature.is_none() {
            parts.push((&self.routes.grads[0].buffer, input_bytes));
        }
        if let Some(t) = self.feature {
            let bytes = (samples * self.plan.tensors[t].shape.len() * 4) as u64;
            parts.push((&self.tensors[t].buffer, bytes));
            parts.push((&self.routes.grads[t].buffer, bytes));
        }
        let parts = self.gpu.read_back_parts(&parts)?;
        let floats = |i: usize| bytemuck::pod_collect_to_vec::<u8, f32>(&parts[i]);
        let (input_grad, feature) = match self.feature {
            None => (floats(1), None),
            Some(t) => (
                Vec::new(),
                Some(FeatureGradient {
                    shape: self.plan.tensors[t].shape,
                    values: floats(1),
                    grad: floats(2),
                }),
            ),
        };
        Ok(ScoreGradient {
            logits: early_logits.unwrap_or_else(|| floats(0)),
            classes,
            input_grad,
            feature,
        })
    }

    fn submit(&self, programs: &[&Program<'k>]) {
        let mut encoder = self.gpu.device.create_command_encoder(&Default::default());
        {
            let mut recorder = Recorder::new(&mut encoder);
            for program in programs {
                program.record(&mut recorder);
            }
        }
        self.gpu.queue.submit([encoder.finish()]);
    }
}

/// Refuses a class that is not one of a model's `count`.
pub(crate) fn check_classes(classes: &[usize], count: usize) -> Result<()> {
    match classes.iter().find(|&&c| c >= count) {
        Some(bad) => Err(Error::Config(format!(
            "class {bad} is not one of the model's {count} (0..{})",
            count - 1
        ))),
        None => Ok(()),
    }
}

/// The index of the largest value (the first of equals).
pub fn argmax(values: &[f32]) -> usize {
    (0..values.len()).fold(0, |best, i| if values[i] > values[best] { i } else { best })
}
