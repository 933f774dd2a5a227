//! A model validated once into a plan: its layers as nodes that read and write tensors by id,
//! each tensor with its shape, its producer and its consumers, and the parameter layout. The
//! trainer, the CPU reference, the model files and the checkpoints walk the same plan.
//!
//! Tensor 0 is the input batch. A chain of layers gives node l the input tensor l and the output
//! tensor l + 1; a residual block adds nodes for its branch, then its shortcut, then an `Add` of
//! the two (the identity shortcut reads the block's input itself), so the block's input has two
//! consumers and receives the sum of their gradients.

use super::{LayerActivation, LayerSpec, MAX_VALUES, NormParams, ParamLayout, Shape, WeightMatrix};
use crate::error::{Error, Result};
use crate::layers::kind::Parameters;

/// A tensor's index in `Plan::tensors`.
pub type TensorId = usize;

/// What a node computes.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// A layer of one kind (never a residual block: the plan expands those).
    Layer(LayerSpec),
    /// The sum of its two inputs: a residual block's output.
    Add,
}

/// One node of the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub op: Op,
    /// The layer as messages name it, e.g. `layer 4 (res(...))'s branch layer 2 (bn)`.
    pub label: String,
    /// The prefix of its tensors' names in model files (PyTorch's module path), e.g.
    /// `layers.3.branch.1`, for layers with parameters.
    pub name: Option<String>,
    pub inputs: Vec<TensorId>,
    pub output: TensorId,
}

/// One tensor of the plan: a batch of samples of `shape`.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanTensor {
    pub shape: Shape,
    /// The node that writes it (None: the input batch).
    pub producer: Option<usize>,
    /// The nodes that read it, in order.
    pub consumers: Vec<usize>,
}

/// A validated model: nodes in the order they run forward, tensors, parameter layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub nodes: Vec<Node>,
    pub tensors: Vec<PlanTensor>,
    pub layout: ParamLayout,
    /// For each tensor, whether a node before it has parameters (so its gradient is needed).
    pub needs_grad: Vec<bool>,
}

/// Builds the nodes of a list of layers, numbering their names at one level.
struct Builder {
    nodes: Vec<Node>,
    tensors: Vec<PlanTensor>,
}

impl Builder {
    fn tensor(&mut self, shape: Shape, producer: Option<usize>) -> TensorId {
        self.tensors.push(PlanTensor {
            shape,
            producer,
            consumers: Vec::new(),
        });
        self.tensors.len() - 1
    }

    fn node(
        &mut self,
        op: Op,
        label: String,
        name: Option<String>,
        inputs: Vec<TensorId>,
        shape: Shape,
    ) -> TensorId {
        let index = self.nodes.len();
        let output = self.tensor(shape, Some(index));
        for &input in &inputs {
            self.tensors[input].consumers.push(index);
        }
        self.nodes.push(Node {
            op,
            label,
            name,
            inputs,
            output,
        });
        output
    }

    /// The nodes of `layers` applied to `input`; `label(i, token)` names layer i in messages and
    /// `prefix` the module path their tensors are numbered under.
    fn list(
        &mut self,
        layers: &[LayerSpec],
        mut input: TensorId,
        label: &dyn Fn(usize, &str) -> String,
        prefix: &str,
    ) -> Result<TensorId> {
        let mut numbered = 0;
        for (i, layer) in layers.iter().enumerate() {
            let label = label(i, &layer.token());
            let name = layer.has_parameters().then(|| {
                numbered += 1;
                format!("{prefix}.{}", numbered - 1)
            });
            let shape = self.tensors[input].shape;
            let output = layer
                .output_shape(shape)
                .map_err(|problem| Error::Config(format!("{label}: {problem}")))?;
            check_sizes(layer, shape, output, &label)?;
            input = match layer {
                LayerSpec::Residual(block) => {
                    if block.branch.is_empty() {
                        return Err(Error::Config(format!("{label}: its branch has no layers")));
                    }
                    let name = name.unwrap_or_else(|| format!("{prefix}.{numbered}"));
                    let inner = |which: &'static str| {
                        let label = label.clone();
                        move |j: usize, token: &str| {
                            format!("{label}'s {which} layer {} ({token})", j + 1)
                        }
                    };
                    let branch = self.list(
                        &block.branch,
                        input,
                        &inner("branch"),
                        &format!("{name}.branch"),
                    )?;
                    let shortcut = self.list(
                        &block.shortcut,
                        input,
                        &inner("shortcut"),
                        &format!("{name}.shortcut"),
                    )?;
                    self.node(Op::Add, label, None, vec![branch, shortcut], output)
                }
                _ => self.node(Op::Layer(layer.clone()), label, name, vec![input], output),
            };
        }
        Ok(input)
    }
}

/// Refuses a layer whose output or weights hold more values than a kernel can index, or whose
/// output is empty.
fn check_sizes(layer: &LayerSpec, input: Shape, output: Shape, label: &str) -> Result<()> {
    // The rows × outputs of the layer's matrix in the layout, so that its sizes cannot wrap.
    let weights = match layer.kind().map(|kind| kind.parameters(input)) {
        Some(None) => None,
        Some(Some(Parameters::Matrix { rows, outputs, .. })) => rows.checked_mul(outputs),
        _ => Some(0),
    };
    if output.checked_len().is_none() {
        return Err(too_large(format!("{label}'s output"), output));
    }
    if weights.is_none_or(|w| u32::try_from(w).is_err()) {
        return Err(Error::Config(format!(
            "{label} on {input} has more weights than a kernel can index ({MAX_VALUES})"
        )));
    }
    if output.is_empty() {
        return Err(Error::Config(format!(
            "{label} makes an empty output of {input}"
        )));
    }
    Ok(())
}

fn too_large(what: String, shape: Shape) -> Error {
    Error::Config(format!(
        "{what} of {}×{}×{} values is larger than a kernel can index ({MAX_VALUES})",
        shape.channels, shape.height, shape.width
    ))
}

impl Plan {
    /// The plan of `spec`, or why it is not a valid model: a layer that does not fit its input,
    /// a residual block whose branches differ in shape, or a model that does not end in a linear
    /// dense layer of at least 2 classes (whose softmax the loss takes).
    pub fn new(spec: &super::ModelSpec) -> Result<Plan> {
        if spec.input.checked_len().is_none() {
            return Err(too_large("the input".into(), spec.input));
        }
        if spec.input.is_empty() {
            return Err(Error::Config(format!(
                "the input shape {} is empty",
                spec.input
            )));
        }
        for (i, layer) in spec.layers.iter().enumerate() {
            if let Some(problem) = bad_sizes(layer) {
                return Err(Error::Config(format!(
                    "layer {} ({}): {problem}",
                    i + 1,
                    layer.token()
                )));
            }
        }
        let mut builder = Builder {
            nodes: Vec::new(),
            tensors: Vec::new(),
        };
        let input = builder.tensor(spec.input, None);
        let top = |i: usize, token: &str| format!("layer {} ({token})", i + 1);
        builder.list(&spec.layers, input, &top, "layers")?;
        let bad = |problem: String| Err(Error::Config(problem));
        match spec.layers.last() {
            Some(LayerSpec::Dense(dense)) => {
                let (units, activation) = (dense.units, dense.activation);
                if activation != LayerActivation::Identity {
                    return bad(format!(
                        "the last layer ({}) feeds the softmax of the loss: make it linear",
                        spec.layers[spec.layers.len() - 1].token()
                    ));
                }
                if units < 2 {
                    return bad(format!(
                        "the last layer gives {units} classes; at least 2 are needed"
                    ));
                }
            }
            Some(other) => {
                return bad(format!(
                    "the last layer is {}; a model ends in a dense layer of one logit per class",
                    other.token()
                ));
            }
            None => return bad("the model has no layers".into()),
        }
        let Builder { nodes, tensors } = builder;
        let layout = layout(&nodes, &tensors);
        let mut needs_grad = vec![false; tensors.len()];
        for node in &nodes {
            let has = matches!(&node.op, Op::Layer(layer) if layer.has_parameters());
            needs_grad[node.output] = has || node.inputs.iter().any(|&t| needs_grad[t]);
        }
        Ok(Plan {
            nodes,
            tensors,
            layout,
            needs_grad,
        })
    }

    /// The plan with every tensor's gradient wanted, the input's included: an explanation's
    /// backward pass (the gradient of a class score with respect to the input and to the
    /// feature maps).
    pub fn with_every_gradient(mut self) -> Plan {
        self.needs_grad.fill(true);
        self
    }

    /// Every tensor's shape, by id.
    pub fn shapes(&self) -> Vec<Shape> {
        self.tensors.iter().map(|t| t.shape).collect()
    }

    /// The logits: the last node's output.
    pub fn logits(&self) -> TensorId {
        self.tensors.len() - 1
    }

    /// The layer node `node` computes (None for an `Add`).
    pub fn layer(&self, node: usize) -> Option<&LayerSpec> {
        match &self.nodes[node].op {
            Op::Layer(layer) => Some(layer),
            Op::Add => None,
        }
    }

    /// Whether tensor `t` is the input batch itself, or a Flatten of it (the same bytes).
    pub fn is_batch(&self, t: TensorId) -> bool {
        match self.tensors[t].producer {
            None => true,
            Some(p) => self.moves_nothing(p) && self.is_batch(self.nodes[p].inputs[0]),
        }
    }

    /// The activation whose derivative node `node`'s backward pass may apply to its input
    /// gradient: that of the layer that produced its input (through any Flatten), where the
    /// node is that tensor's only consumer all the way; else the identity.
    pub fn activation_below(&self, node: usize) -> LayerActivation {
        let mut t = self.nodes[node].inputs[0];
        loop {
            let tensor = &self.tensors[t];
            let Some(producer) = tensor.producer.filter(|_| tensor.consumers.len() == 1) else {
                return LayerActivation::Identity;
            };
            match self.layer(producer) {
                _ if self.moves_nothing(producer) => t = self.nodes[producer].inputs[0],
                Some(layer) => return layer.activation(),
                None => return LayerActivation::Identity,
            }
        }
    }

    /// Whether node `node` moves nothing (Flatten): its output is its input's buffer.
    pub fn moves_nothing(&self, node: usize) -> bool {
        (self.layer(node).and_then(LayerSpec::kind)).is_some_and(|kind| kind.moves_nothing())
    }

    /// The first node that moves something, if it is a dense layer reading the batch itself
    /// (after any Flatten) and nothing else reads that: its weight gradient can use the
    /// transposed batch.
    pub fn batch_dense(&self) -> Option<WeightMatrix> {
        self.layout.of_layer(self.batch_dense_node()?)
    }

    /// The node `batch_dense` is the weight matrix of: the only one whose weight gradient may
    /// use the transposed batch (another dense layer reading the batch, through a Flatten of its
    /// own, takes the ordinary product).
    pub fn batch_dense_node(&self) -> Option<usize> {
        let node = (0..self.nodes.len()).find(|&n| !self.moves_nothing(n))?;
        let kind = self.layer(node).and_then(LayerSpec::kind)?;
        let input = self.nodes[node].inputs[0];
        let only_reader = self.tensors[input].consumers.len() == 1;
        (kind.takes_transposed_batch() && only_reader && self.is_batch(input)).then_some(node)
    }
}

/// A layer's sizes that are zero where they must be positive, or a dropout rate out of range.
fn bad_sizes(layer: &LayerSpec) -> Option<&'static str> {
    let bad = match layer {
        LayerSpec::Residual(block) => {
            return (block.branch.iter())
                .chain(&block.shortcut)
                .find_map(bad_sizes);
        }
        layer => layer.kind().is_some_and(|kind| !kind.sizes_are_valid()),
    };
    bad.then_some("sizes must be positive and a dropout rate in [0, 1)")
}

/// The flat buffers' layout: each node's weight matrix or BatchNorm γ and β in node order, then
/// the BatchNorm running statistics.
fn layout(nodes: &[Node], tensors: &[PlanTensor]) -> ParamLayout {
    let mut offset = 0;
    let mut matrices = Vec::new();
    let mut layer_matrix = Vec::new();
    let mut norms = Vec::new();
    for node in nodes {
        let input = tensors[node.inputs[0]].shape;
        let parameters = match &node.op {
            Op::Layer(layer) => layer.kind().and_then(|kind| kind.parameters(input)),
            Op::Add => None,
        };
        match parameters.unwrap_or(Parameters::None) {
            Parameters::None => {
                layer_matrix.push(None);
                norms.push(None);
            }
            Parameters::Norm { channels } => {
                norms.push(Some(NormParams {
                    channels,
                    gamma: offset,
                    beta: offset + channels,
                    running_mean: 0,
                    running_var: 0,
                }));
                layer_matrix.push(None);
                offset += 2 * channels;
            }
            Parameters::Matrix {
                inputs,
                outputs,
                rows,
                bias,
                ..
            } => {
                let matrix = WeightMatrix {
                    inputs,
                    outputs,
                    rows,
                    weight_offset: offset,
                    bias_offset: offset + inputs * outputs,
                    bias,
                };
                offset = matrix.end();
                layer_matrix.push(Some(matrices.len()));
                norms.push(None);
                matrices.push(matrix);
            }
        }
    }
    let trained = offset;
    for norm in norms.iter_mut().flatten() {
        norm.running_mean = offset;
        norm.running_var = offset + norm.channels;
        offset += 2 * norm.channels;
    }
    ParamLayout {
        matrices,
        layer_matrix,
        norms,
        trained,
        total: offset,
    }
}
