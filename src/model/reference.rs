//! The CPU reference of a whole model: every node of the plan forward, and backward with the
//! gradients of a tensor's consumers summed, each layer from its kind's reference
//! (`crate::layers`), the loss from `crate::reference`. The ground truth the trainer is tested
//! against, and what `predict` evaluates with.

use super::{ModelSpec, Op, Plan};
pub use crate::layers::kind::StepKey;
use crate::layers::kind::{ReferenceBackward, ReferenceForward};
use crate::layers::residual;
use crate::reference::{LossOutput, apply_derivative, softmax_loss};

/// The result of a reference forward + backward pass over one batch.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceStep {
    /// Every tensor of the plan, from the input batch (index 0) to the logits.
    pub activations: Vec<Vec<f32>>,
    pub loss: LossOutput,
    /// dL/dθ of the batch-mean loss, laid out like the parameters (zeros over the state).
    pub grads: Vec<f32>,
    /// The state after the step's forward pass (BatchNorm's running statistics), as the
    /// parameters' tail `layout.trained..` holds it.
    pub state: Vec<f32>,
}

impl ReferenceStep {
    pub fn mean_loss(&self) -> f64 {
        self.loss.sample_loss.iter().map(|&l| l as f64).sum::<f64>()
            / self.loss.sample_loss.len() as f64
    }
}

/// Every tensor of the plan for the batch `x` (`[rows, spec.input]`), from `x` itself to the
/// logits, and the state after it: in evaluation (dropout is the identity, BatchNorm uses the
/// running statistics) where `training` is None, else as training step `training` computes it
/// (BatchNorm normalises by the batch's statistics and updates the running ones).
pub fn forward_pass(
    spec: &ModelSpec,
    params: &[f32],
    x: &[f32],
    training: Option<StepKey>,
) -> (Vec<Vec<f32>>, Vec<f32>) {
    let plan = spec.plan().expect("a validated model");
    let layout = &plan.layout;
    let rows = x.len() / spec.input.len();
    let mut state = params[layout.trained..].to_vec();
    let mut values: Vec<Vec<f32>> = vec![Vec::new(); plan.tensors.len()];
    values[0] = x.to_vec();
    for (l, node) in plan.nodes.iter().enumerate() {
        let input = &values[node.inputs[0]];
        let kind = match &node.op {
            Op::Add => {
                values[node.output] = residual::reference_forward(input, &values[node.inputs[1]]);
                continue;
            }
            Op::Layer(layer) => layer.kind().expect("the plan expands residual blocks"),
        };
        let output = kind.reference_forward(ReferenceForward {
            params,
            state: &mut state,
            state_start: layout.trained,
            x: input,
            input: plan.tensors[node.inputs[0]].shape,
            rows,
            matrix: layout.of_layer(l),
            norm: layout.norms[l],
            training,
            node: l,
        });
        values[node.output] = output;
    }
    (values, state)
}

/// Every tensor of the plan in evaluation (`forward_pass` without dropout, with BatchNorm's
/// running statistics).
pub fn forward(spec: &ModelSpec, params: &[f32], x: &[f32]) -> Vec<Vec<f32>> {
    forward_pass(spec, params, x, None).0
}

/// Forward and backward through the whole plan as training step `key` computes them, from the
/// layers' references (`crate::layers`), last node first: each layer's activation derivative
/// applied to its output gradient, then its own backward pass; a tensor read by several nodes
/// gets the sum of their gradients (llm.c's residual: the gradients add).
pub fn forward_backward(
    spec: &ModelSpec,
    params: &[f32],
    x: &[f32],
    labels: &[u32],
    key: StepKey,
) -> ReferenceStep {
    forward_backward_smoothed(spec, params, x, labels, key, 0.0)
}

/// `forward_backward` with cross-entropy's label smoothing (`TrainConfig::label_smoothing`).
pub fn forward_backward_smoothed(
    spec: &ModelSpec,
    params: &[f32],
    x: &[f32],
    labels: &[u32],
    key: StepKey,
    label_smoothing: f32,
) -> ReferenceStep {
    let plan = spec.plan().expect("a validated model");
    let (activations, state) = forward_pass(spec, params, x, Some(key));
    let loss = softmax_loss(
        spec.loss,
        label_smoothing,
        &activations[plan.logits()],
        labels,
        spec.classes(),
    );

    let (grads, _) = backward_pass(
        &plan,
        params,
        &activations,
        loss.logits_grad.clone(),
        Some(key),
    );
    ReferenceStep {
        activations,
        loss,
        grads,
        state,
    }
}

/// The `k` most probable classes of a row of logits, with their softmax probabilities, most
/// probable first.
pub fn top_classes(logits: &[f32], k: usize) -> Vec<(usize, f64)> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f64> = logits.iter().map(|&z| ((z - max) as f64).exp()).collect();
    let sum: f64 = exp.iter().sum();
    let mut ranked: Vec<(usize, f64)> = exp.iter().map(|e| e / sum).enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    ranked.truncate(k);
    ranked
}

/// The gradient of each sample's class score (its logit of `classes[i]`, before the softmax)
/// with respect to every tensor of the plan, in evaluation (dropout the identity, BatchNorm with
/// its running statistics): what `explain` computes on the GPU. Returns the tensors, from the
/// input batch `x` to the logits, and their gradients (index 0: the input's).
pub fn class_score_gradients(
    spec: &ModelSpec,
    params: &[f32],
    x: &[f32],
    classes: &[usize],
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let plan = spec
        .plan()
        .expect("a validated model")
        .with_every_gradient();
    let activations = forward(spec, params, x);
    let count = spec.classes();
    let mut seed = vec![0.0; classes.len() * count];
    for (row, &class) in classes.iter().enumerate() {
        seed[row * count + class] = 1.0;
    }
    let (_, tensor_grads) = backward_pass(&plan, params, &activations, seed, None);
    let tensor_grads = (tensor_grads.into_iter())
        .map(|grad| grad.expect("every tensor's gradient is wanted"))
        .collect();
    (activations, tensor_grads)
}

/// Backward through `plan` from `logits_grad` (dL/dlogits), last node first: each layer's
/// activation derivative applied to its output gradient, then its own backward pass (as
/// training step `training` computes it, or in evaluation); a tensor read by several nodes gets
/// the sum of their gradients (llm.c's residual: the gradients add). Returns dL/dθ laid out like
/// the parameters (zeros over the state), and each tensor's gradient where `plan.needs_grad`.
fn backward_pass(
    plan: &Plan,
    params: &[f32],
    activations: &[Vec<f32>],
    logits_grad: Vec<f32>,
    training: Option<StepKey>,
) -> (Vec<f32>, Vec<Option<Vec<f32>>>) {
    let layout = &plan.layout;
    let rows = activations[0].len() / plan.tensors[0].shape.len();
    let mut grads = vec![0.0; layout.total];
    let mut tensor_grads: Vec<Option<Vec<f32>>> = vec![None; plan.tensors.len()];
    tensor_grads[plan.logits()] = Some(logits_grad);
    for (l, node) in plan.nodes.iter().enumerate().rev() {
        if !plan.needs_grad[node.output] {
            continue;
        }
        let mut upstream = tensor_grads[node.output]
            .clone()
            .expect("every consumer of a tensor that needs a gradient gave one");
        let wanted = |i: usize| plan.needs_grad[node.inputs[i]];
        let contributions: Vec<Option<Vec<f32>>> = match &node.op {
            Op::Add => vec![Some(upstream.clone()), Some(upstream)],
            Op::Layer(layer) => {
                apply_derivative(&mut upstream, &activations[node.output], layer.activation());
                let kind = layer.kind().expect("the plan expands residual blocks");
                vec![kind.reference_backward(ReferenceBackward {
                    params,
                    x: &activations[node.inputs[0]],
                    y: &activations[node.output],
                    dz: &upstream,
                    input: plan.tensors[node.inputs[0]].shape,
                    rows,
                    matrix: layout.of_layer(l),
                    norm: layout.norms[l],
                    training,
                    node: l,
                    grads: &mut grads,
                    input_grad: wanted(0),
                })]
            }
        };
        for (i, contribution) in contributions.into_iter().enumerate() {
            let (Some(contribution), true) = (contribution, wanted(i)) else {
                continue;
            };
            let sum = &mut tensor_grads[node.inputs[i]];
            *sum = Some(match sum.take() {
                None => contribution,
                Some(earlier) => residual::reference_forward(&contribution, &earlier),
            });
        }
    }
    (grads, tensor_grads)
}
