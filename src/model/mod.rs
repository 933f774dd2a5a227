//! What a model is: a list of layers (some of them residual blocks) on an input shape, the loss on
//! the last layer's outputs, its plan of tensors (`plan`), and where each parameter lives in the
//! flat parameter buffer.
//!
//! Tensors are stored channels-last: a sample of shape C × H × W is H·W·C floats with the channel
//! fastest, and a flat vector of n features is the shape n × 1 × 1. So a 1 × 28 × 28 image and a
//! 784-vector are the same bytes, and Flatten moves nothing.

mod plan;
pub mod reference;

pub use plan::{Node, Op, Plan, PlanTensor, TensorId};

use crate::error::Result;
use crate::input::Standardisation;
use crate::layers::kind::{LayerKind, Parameters, TokenOptions};
use crate::layers::{
    activation, avgpool, batchnorm, conv2d, dense, dropout, flatten, global_max_pool, pool,
};
use crate::rng::Rng;
pub use crate::shapes::{
    Activation, BATCH_NORM_EPSILON, BATCH_NORM_MOMENTUM, Geometry, LayerActivation, Loss,
    MAX_VALUES, NormParams, Padding, Shape, WeightMatrix, Window,
};

/// Declares the layer kinds: the enum of a model's layers (with the residual block, which is not
/// a kind but two lists of layers) and the reading of a token as the first kind that recognises
/// it.
macro_rules! layer_kinds {
    ($($variant:ident($kind:ty)),* $(,)?) => {
        /// One layer of a model: a layer kind, or a residual block of two branches.
        #[derive(Debug, Clone, PartialEq)]
        pub enum LayerSpec {
            $($variant($kind),)*
            /// y = branch(x) + shortcut(x), the shortcut the identity where it has no layers.
            Residual(Box<Residual>),
        }

        impl LayerSpec {
            /// What the layer's kind says about itself (None for a residual block, which the
            /// plan expands into its layers' nodes and a sum).
            pub(crate) fn kind(&self) -> Option<&dyn LayerKind> {
                match self {
                    $(LayerSpec::$variant(kind) => Some(kind),)*
                    LayerSpec::Residual(_) => None,
                }
            }
        }

        /// Each kind's token, as `--help` and the errors of `--layers` describe it.
        const KIND_SYNTAX: &[&str] = &[$(<$kind>::SYNTAX),*];

        /// A token's body with its options, as the first kind that recognises it.
        fn parse_kind(
            body: &str,
            options: &TokenOptions,
        ) -> Option<std::result::Result<LayerSpec, String>> {
            $(if let Some(parsed) = <$kind>::parse(body, options) {
                return Some(parsed.map(LayerSpec::$variant));
            })*
            None
        }
    };
}

// The registry: each kind is its own file in `crate::layers` (its token, shapes, parameters,
// GPU passes, CPU reference and PyTorch tensors) plus its shader, and one line here.
layer_kinds! {
    Conv2d(conv2d::Conv2d),
    MaxPool2d(pool::MaxPool2d),
    AvgPool2d(avgpool::AvgPool2d),
    GlobalAvgPool(avgpool::GlobalAvgPool),
    GlobalMaxPool(global_max_pool::GlobalMaxPool),
    BatchNorm(batchnorm::BatchNorm),
    Activation(activation::ActivationLayer),
    Flatten(flatten::Flatten),
    Dropout(dropout::Dropout),
    Dense(dense::Dense),
}

/// The two branches of a residual block, each a list of layers applied to the block's input.
#[derive(Debug, Clone, PartialEq)]
pub struct Residual {
    pub branch: Vec<LayerSpec>,
    /// Empty: the identity.
    pub shortcut: Vec<LayerSpec>,
}

impl LayerSpec {
    /// The activation this layer applies in its product's epilogue (the identity for layers
    /// without one; a standalone activation applies its own).
    pub fn activation(&self) -> LayerActivation {
        self.kind()
            .map_or(LayerActivation::Identity, LayerKind::activation)
    }

    /// Whether the layer has trained parameters (a residual block: whether its branches do).
    pub fn has_parameters(&self) -> bool {
        match self {
            LayerSpec::Residual(block) => (block.branch.iter())
                .chain(&block.shortcut)
                .any(LayerSpec::has_parameters),
            layer => layer.kind().is_some_and(|kind| {
                // Parameters on any input: a 1×1×1 one stands for all.
                kind.parameters(Shape::flat(1)) != Some(Parameters::None)
            }),
        }
    }

    /// A convolution's or pool's windows over `input` and the shapes in and out (None for other
    /// layers, or where the window does not fit).
    pub fn geometry(&self, input: Shape) -> Option<Geometry> {
        self.kind()?.geometry(input)
    }

    /// The shape this layer makes of `input`, or why it cannot take it.
    pub fn output_shape(&self, input: Shape) -> std::result::Result<Shape, String> {
        let LayerSpec::Residual(block) = self else {
            return self.kind().expect("a layer kind").output_shape(input);
        };
        let chain = |layers: &[LayerSpec], which: &str| {
            layers
                .iter()
                .enumerate()
                .try_fold(input, |shape, (i, layer)| {
                    layer.output_shape(shape).map_err(|problem| {
                        format!("{which} layer {} ({}): {problem}", i + 1, layer.token())
                    })
                })
        };
        let branch = chain(&block.branch, "branch")?;
        let shortcut = chain(&block.shortcut, "shortcut")?;
        if branch != shortcut {
            let what = match block.shortcut.is_empty() {
                true => format!(
                    "its shortcut is the identity, {shortcut}: give it a projection after '|', \
                     e.g. |conv{}k1s2:nobias,bn",
                    branch.channels
                ),
                false => format!("its shortcut makes {shortcut}"),
            };
            return Err(format!(
                "its branch makes {branch} of its input {input}, but {what}; the two are added, \
                 so they must have the same shape"
            ));
        }
        Ok(branch)
    }

    /// The layer as a `--layers` token; `parse_layers` reads it back to the same layer.
    pub fn token(&self) -> String {
        let LayerSpec::Residual(block) = self else {
            return self.kind().expect("a layer kind").token();
        };
        let list = |layers: &[LayerSpec]| {
            layers
                .iter()
                .map(LayerSpec::token)
                .collect::<Vec<_>>()
                .join(",")
        };
        match block.shortcut.is_empty() {
            true => format!("res({})", list(&block.branch)),
            false => format!("res({}|{})", list(&block.branch), list(&block.shortcut)),
        }
    }
}

/// The syntax of `--layers`, for messages and `--help`: the kinds' tokens (from the registry),
/// the residual block's, and the options.
pub fn layers_syntax() -> String {
    format!(
        "comma-separated layers: {}, and res(<layers>) or res(<layers>|<shortcut layers>), a \
         residual block adding its layers' output to its input (or to its shortcut's output); \
         <activation> is relu, sigmoid, tanh or linear (where a dense or conv layer names none: \
         --activation, but linear for the last layer, for one followed by bn and for the last of \
         a block's branch), e.g. conv32k3,maxpool2,conv64k3,maxpool2,flatten,dropout0.5,dense10 \
         or conv16k3p1:nobias,bn:relu,res(conv16k3p1:nobias,bn:relu,conv16k3p1:nobias,bn),relu,\
         gap,dense10",
        KIND_SYNTAX.join(", ")
    )
}

/// A layer list's problem: the index (from 0) of the layer it is in, its token and what is
/// wrong.
type ListError = (usize, String, String);

/// How deep residual blocks may nest: the parser, the plan and the model's walks recurse once a
/// level.
const MAX_NESTING: usize = 32;

/// The tokens of a comma-separated list, split only outside parentheses.
fn split_outside_parentheses(
    text: &str,
    separator: char,
) -> std::result::Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' if depth == MAX_NESTING => {
                return Err(format!(
                    "blocks nest at most {MAX_NESTING} deep in {text:?}"
                ));
            }
            '(' => depth += 1,
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| format!("a ')' without its '(' in {text:?}"))?
            }
            c if c == separator && depth == 0 => {
                parts.push(text[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth > 0 {
        return Err(format!("a '(' without its ')' in {text:?}"));
    }
    parts.push(text[start..].trim());
    Ok(parts)
}

/// Reads a `--layers` list. Layers with weights take `default` as their activation unless they
/// name one, except the last layer with weights, one followed by `bn`, and the last layer of a
/// residual block's branch or shortcut, which are linear.
pub fn parse_layers(
    text: &str,
    default: Activation,
) -> std::result::Result<Vec<LayerSpec>, String> {
    let tokens = split_outside_parentheses(text, ',')
        .map_err(|e| format!("{e}; expected {}", layers_syntax()))?;
    parse_list(&tokens, default, false).map_err(|(i, token, problem)| {
        format!(
            "layer {} ({token:?}): {problem}; expected {}",
            i + 1,
            layers_syntax()
        )
    })
}

/// The layers of `tokens`; `in_block`: a branch of a residual block (its last layer is linear
/// by default).
fn parse_list(
    tokens: &[&str],
    default: Activation,
    in_block: bool,
) -> std::result::Result<Vec<LayerSpec>, ListError> {
    let hidden = LayerActivation::Hidden(default);
    let parse = |i: usize, token: &str, fallback| {
        parse_layer(token, fallback, default).map_err(|problem| (i, token.to_string(), problem))
    };
    let layers = (tokens.iter().enumerate())
        .map(|(i, &token)| parse(i, token, hidden))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let kind = |i: usize| layers.get(i).and_then(LayerSpec::kind);
    let takes_default = |i: usize| kind(i).is_some_and(|k| k.takes_default_activation());
    let last_with_weights = (0..layers.len()).rev().find(|&i| takes_default(i));
    (0..layers.len())
        .map(|i| {
            let linear = (!in_block && Some(i) == last_with_weights)
                || (in_block && i + 1 == tokens.len())
                || kind(i + 1).is_some_and(|next| next.linear_before());
            match linear && takes_default(i) {
                // The token again, with the identity where it names no activation.
                true => parse(i, tokens[i], LayerActivation::Identity),
                false => Ok(layers[i].clone()),
            }
        })
        .collect()
}

/// A residual block's text between `res(` and `)`.
fn parse_block(inner: &str, default: Activation) -> std::result::Result<LayerSpec, String> {
    let halves = split_outside_parentheses(inner, '|')?;
    if halves.len() > 2 {
        return Err("a block has one '|', between its layers and its shortcut's".into());
    }
    let list = |text: &str, which: &str| {
        if text.is_empty() {
            return Err(format!("its {which} has no layers"));
        }
        let tokens = split_outside_parentheses(text, ',')?;
        parse_list(&tokens, default, true).map_err(|(i, token, problem)| {
            format!("{which} layer {} ({token:?}): {problem}", i + 1)
        })
    };
    let branch = list(halves[0], "branch")?;
    let shortcut = match halves.get(1) {
        Some(text) => list(text, "shortcut")?,
        None => Vec::new(),
    };
    Ok(LayerSpec::Residual(Box::new(Residual { branch, shortcut })))
}

fn parse_layer(
    token: &str,
    fallback: LayerActivation,
    default: Activation,
) -> std::result::Result<LayerSpec, String> {
    if let Some(inner) = token.strip_prefix("res(") {
        let inner = inner
            .strip_suffix(')')
            .ok_or("a block ends with ')', e.g. res(conv16k3same,bn)")?;
        return parse_block(inner, default);
    }
    let mut parts = token.split(':');
    let body = parts.next().unwrap_or_default();
    let mut options = TokenOptions {
        activation: None,
        bias: true,
        fallback,
    };
    for option in parts {
        if option == "nobias" {
            options.bias = false;
            continue;
        }
        let named = LayerActivation::from_name(option).ok_or_else(|| {
            format!(
                "unknown activation {option:?} (relu, sigmoid, tanh or linear; or nobias for conv)"
            )
        })?;
        if options.activation.replace(named).is_some() {
            return Err("a layer takes one activation".into());
        }
    }
    parse_kind(body, &options).unwrap_or_else(|| Err("not a layer".into()))
}

/// A model: `layers` applied in turn to a sample of shape `input`; the last layer's outputs are
/// the logits that `loss` takes the softmax of.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub input: Shape,
    pub layers: Vec<LayerSpec>,
    pub loss: Loss,
    /// Per-channel standardisation of the input pixels before the first layer (`--normalize`);
    /// without it they are scaled to [0, 1].
    pub standardisation: Option<Standardisation>,
}

impl ModelSpec {
    /// A multilayer perceptron: flatten (if the input is not flat), dense layers of the `hidden`
    /// widths with `activation`, and a linear dense layer of `classes` logits.
    pub fn mlp(
        input: Shape,
        hidden: &[usize],
        classes: usize,
        activation: Activation,
        loss: Loss,
    ) -> Self {
        let mut layers = Vec::new();
        if !input.is_flat() {
            layers.push(LayerSpec::Flatten(flatten::Flatten));
        }
        layers.extend(hidden.iter().map(|&units| {
            LayerSpec::Dense(dense::Dense {
                units,
                activation: LayerActivation::Hidden(activation),
            })
        }));
        layers.push(LayerSpec::Dense(dense::Dense {
            units: classes,
            activation: LayerActivation::Identity,
        }));
        ModelSpec {
            input,
            layers,
            loss,
            standardisation: None,
        }
    }

    /// The reference MLP: 784-256(relu)-128(relu)-10 on 28 × 28 images, softmax + cross-entropy.
    pub fn reference() -> Self {
        ModelSpec::mlp(
            Shape::image(1, 28, 28),
            &[256, 128],
            10,
            Activation::Relu,
            Loss::Xent,
        )
    }

    /// Keras' mnist_convnet: Conv2D(32, 3×3, relu), MaxPool2D(2), Conv2D(64, 3×3, relu),
    /// MaxPool2D(2), Flatten, Dropout(0.5), Dense(`classes`), softmax + cross-entropy.
    pub fn convnet(input: Shape, classes: usize) -> Self {
        let conv = |filters| {
            LayerSpec::Conv2d(conv2d::Conv2d {
                filters,
                kernel: 3,
                stride: 1,
                padding: Padding::Valid,
                activation: LayerActivation::Hidden(Activation::Relu),
                bias: true,
            })
        };
        let pool = LayerSpec::MaxPool2d(pool::MaxPool2d { size: 2, stride: 2 });
        ModelSpec {
            input,
            layers: vec![
                conv(32),
                pool.clone(),
                conv(64),
                pool,
                LayerSpec::Flatten(flatten::Flatten),
                LayerSpec::Dropout(dropout::Dropout { rate: 0.5 }),
                LayerSpec::Dense(dense::Dense {
                    units: classes,
                    activation: LayerActivation::Identity,
                }),
            ],
            loss: Loss::Xent,
            standardisation: None,
        }
    }

    /// He et al.'s CIFAR ResNet of 6n + 2 layers (n = 1: ResNet-8, n = 3: ResNet-20): a 3×3
    /// conv of 16 filters, BatchNorm and ReLU; three stages of n basic blocks of 16, 32 and 64
    /// channels, the first block of stages 2 and 3 with stride 2 and a projection shortcut (1×1
    /// conv, stride 2, then BatchNorm); global average pooling; a dense layer of `classes`.
    /// Convolutions pad as PyTorch's `padding=1` does and have no bias (BatchNorm has one); a
    /// ReLU right after a BatchNorm is folded into it (`bn:relu`).
    pub fn resnet(input: Shape, blocks_per_stage: usize, classes: usize) -> Self {
        let conv = |filters, kernel, stride| {
            LayerSpec::Conv2d(conv2d::Conv2d {
                filters,
                kernel,
                stride,
                padding: Padding::Explicit(kernel / 2),
                activation: LayerActivation::Identity,
                bias: false,
            })
        };
        let bn = |activation| LayerSpec::BatchNorm(batchnorm::BatchNorm { activation });
        // BatchNorm then ReLU, folded into one layer's passes.
        let bn_relu = || bn(LayerActivation::Hidden(Activation::Relu));
        let bn = || bn(LayerActivation::Identity);
        let relu = LayerSpec::Activation(activation::ActivationLayer(Activation::Relu));
        let mut layers = vec![conv(16, 3, 1), bn_relu()];
        for (stage, filters) in [16, 32, 64].into_iter().enumerate() {
            for block in 0..blocks_per_stage {
                let stride = if stage > 0 && block == 0 { 2 } else { 1 };
                let branch = vec![
                    conv(filters, 3, stride),
                    bn_relu(),
                    conv(filters, 3, 1),
                    bn(),
                ];
                let shortcut = match stride {
                    1 => Vec::new(),
                    _ => vec![conv(filters, 1, stride), bn()],
                };
                layers.push(LayerSpec::Residual(Box::new(Residual { branch, shortcut })));
                layers.push(relu.clone());
            }
        }
        layers.push(LayerSpec::GlobalAvgPool(avgpool::GlobalAvgPool));
        layers.push(LayerSpec::Dense(dense::Dense {
            units: classes,
            activation: LayerActivation::Identity,
        }));
        ModelSpec {
            input,
            layers,
            loss: Loss::Xent,
            standardisation: None,
        }
    }

    /// The plan of the model: its layers as nodes over named tensors, their shapes and the
    /// parameter layout; or why the model is not valid.
    pub fn plan(&self) -> Result<Plan> {
        Plan::new(self)
    }

    /// The shape of every tensor of the plan, from the input (index 0) to the logits, or an
    /// error naming the first layer that does not fit its input.
    pub fn shapes(&self) -> Result<Vec<Shape>> {
        Ok(self.plan()?.shapes())
    }

    /// Checks that every layer fits its input and that the model ends in a linear dense layer
    /// of at least 2 classes (whose softmax the loss takes).
    pub fn validate(&self) -> Result<()> {
        if let Some(s) = &self.standardisation {
            let channels = self.input.channels;
            let finite = |v: &[f32]| v.iter().all(|x| x.is_finite());
            if s.mean.len() != channels || s.std.len() != channels {
                return Err(crate::Error::Config(format!(
                    "the standardisation has {} means and {} deviations for {channels} channels",
                    s.mean.len(),
                    s.std.len()
                )));
            }
            if channels > crate::input::MAX_CHANNELS
                || !finite(&s.mean)
                || !finite(&s.std)
                || s.std.iter().any(|&d| d <= 0.0)
            {
                return Err(crate::Error::Config(format!(
                    "the standardisation ({}) needs at most {} channels, finite means and \
                     deviations above 0",
                    s.describe(),
                    crate::input::MAX_CHANNELS
                )));
            }
        }
        self.plan().map(|_| ())
    }

    /// Whether the model reads samples of `shape`: its input shape, or, for a model on flat
    /// inputs, any shape of as many values (read in storage order).
    pub fn takes(&self, shape: Shape) -> bool {
        shape == self.input || (self.input.is_flat() && shape.len() == self.input.len())
    }

    /// The number of classes: the last layer's width.
    pub fn classes(&self) -> usize {
        match self.layers.last() {
            Some(LayerSpec::Dense(dense)) => dense.units,
            _ => 0,
        }
    }

    /// The layer list as `--layers` writes it (every activation named).
    pub fn describe(&self) -> String {
        let tokens: Vec<String> = self.layers.iter().map(LayerSpec::token).collect();
        tokens.join(",")
    }

    /// Where each parameter lives in the flat buffers. The model must be valid.
    pub fn layout(&self) -> ParamLayout {
        self.plan().expect("a validated model").layout
    }

    /// Keras' defaults: Glorot uniform weights, U(±sqrt(6 / (fan_in + fan_out))), zero biases
    /// (fan_in and fan_out count a convolution's kernel positions: k² · channels in and out);
    /// PyTorch's for BatchNorm: γ = 1, β = 0, running mean 0 and variance 1. Weights are drawn
    /// layer by layer in the flat buffer's order.
    pub fn glorot_uniform(&self, rng: &mut Rng) -> Vec<f32> {
        let plan = self.plan().expect("a validated model");
        let layout = &plan.layout;
        let mut params = vec![0.0; layout.total];
        for (n, (node, matrix)) in plan.nodes.iter().zip(&layout.layer_matrix).enumerate() {
            let Some(matrix) = matrix.map(|m| layout.matrices[m]) else {
                continue;
            };
            let input = plan.tensors[node.inputs[0]].shape;
            let kind = plan.layer(n).and_then(LayerSpec::kind);
            let fan_out = match kind.and_then(|kind| kind.parameters(input)) {
                Some(Parameters::Matrix { fan_out, .. }) => fan_out,
                _ => matrix.outputs,
            };
            let fan_in = matrix.inputs;
            let limit = (6.0 / (fan_in + fan_out) as f32).sqrt();
            for w in &mut params[matrix.weight_offset..matrix.bias_offset] {
                *w = rng.uniform(-limit, limit);
            }
        }
        for norm in layout.norms.iter().flatten() {
            params[norm.gamma..norm.gamma + norm.channels].fill(1.0);
            params[norm.running_var..norm.running_var + norm.channels].fill(1.0);
        }
        params
    }
}

/// The named offsets of every parameter in the flat parameter, gradient and moment buffers.
///
/// The host's vector holds the trained parameters (`..trained`, the GPU's parameter, gradient and
/// moment buffers) and then the state, BatchNorm's running statistics (`trained..total`, the
/// GPU's state buffer): models and checkpoints save both, the optimizer updates the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamLayout {
    /// The weight matrices of the layers that have them, in order.
    pub matrices: Vec<WeightMatrix>,
    /// For each node of the plan, the index of its matrix.
    pub layer_matrix: Vec<Option<usize>>,
    /// For each node of the plan, its BatchNorm tensors.
    pub norms: Vec<Option<NormParams>>,
    /// Floats of trained parameters (padding included): the GPU's parameter buffers.
    pub trained: usize,
    /// Floats in the host's vector: the trained parameters, then the state.
    pub total: usize,
}

impl ParamLayout {
    /// The trained parameters (without padding), as PyTorch's `parameters()` counts them.
    pub fn parameter_count(&self) -> usize {
        let norms: usize = self.norms.iter().flatten().map(|n| 2 * n.channels).sum();
        self.matrices
            .iter()
            .map(WeightMatrix::parameters)
            .sum::<usize>()
            + norms
    }

    /// The matrix of node `node`, if it has one.
    pub fn of_layer(&self, node: usize) -> Option<WeightMatrix> {
        self.layer_matrix[node].map(|m| self.matrices[m])
    }

    /// Floats of state (running statistics) after the trained parameters.
    pub fn state(&self) -> usize {
        self.total - self.trained
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_layout_packs_layers_back_to_back() {
        let layout = ModelSpec::reference().layout();
        assert_eq!(layout.matrices.len(), 3);
        assert_eq!(layout.layer_matrix, [None, Some(0), Some(1), Some(2)]);
        assert_eq!(layout.matrices[1].weight_offset, 784 * 256 + 256);
        let total = 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10;
        assert_eq!((layout.total, layout.parameter_count()), (total, total));
    }

    #[test]
    fn no_hidden_layer_is_a_linear_softmax_model() {
        let spec = ModelSpec::mlp(Shape::flat(12), &[], 3, Activation::Relu, Loss::Xent);
        assert_eq!(spec.layout().matrices.len(), 1);
        assert_eq!(spec.layers[0].activation(), LayerActivation::Identity);
        spec.validate().unwrap();
    }

    #[test]
    fn the_convnet_has_keras_shapes_and_parameter_count() {
        let spec = ModelSpec::convnet(Shape::image(1, 28, 28), 10);
        spec.validate().unwrap();
        let shapes: Vec<String> = spec
            .shapes()
            .unwrap()
            .iter()
            .map(|s| s.to_string())
            .collect();
        let expected = [
            "1×28×28",
            "32×26×26",
            "32×13×13",
            "64×11×11",
            "64×5×5",
            "1600",
            "1600",
            "10",
        ];
        assert_eq!(shapes, expected);
        let layout = spec.layout();
        assert_eq!(layout.parameter_count(), 34_826);
        // Patches of 9 (and 288) values, a bias row and padding to a multiple of 4.
        assert_eq!(
            layout.matrices.iter().map(|m| m.rows).collect::<Vec<_>>(),
            [12, 292, 1601]
        );
        assert_eq!(layout.total, 12 * 32 + 292 * 64 + 1601 * 10);
    }

    #[test]
    fn glorot_respects_limits_and_zero_bias() {
        let spec = ModelSpec::convnet(Shape::image(1, 28, 28), 10);
        let layout = spec.layout();
        let params = spec.glorot_uniform(&mut Rng::new(3));
        // Keras counts a convolution's fans over its kernel: 9 in, 9 · 32 out.
        let conv = layout.matrices[0];
        let limit = (6.0f32 / (9.0 + 9.0 * 32.0)).sqrt();
        let weights = &params[conv.weight_offset..conv.bias_offset];
        assert!(weights.iter().all(|w| w.abs() <= limit));
        assert!(weights.iter().any(|w| w.abs() > 0.9 * limit));
        assert!(
            params[conv.bias_offset..conv.end()]
                .iter()
                .all(|&b| b == 0.0)
        );
        let dense = layout.matrices[2];
        let limit = (6.0f32 / (1600.0 + 10.0)).sqrt();
        assert!(
            params[dense.weight_offset..dense.bias_offset]
                .iter()
                .all(|w| w.abs() <= limit)
        );
    }

    #[test]
    fn layer_lists_read_back_as_they_are_written() {
        let text = "conv8k5s2same:tanh,maxpool3s2,conv4k3,flatten,dropout0.25,dense16,dense10";
        let layers = parse_layers(text, Activation::Sigmoid).unwrap();
        let sigmoid = LayerActivation::Hidden(Activation::Sigmoid);
        assert_eq!(
            layers[0],
            LayerSpec::Conv2d(conv2d::Conv2d {
                filters: 8,
                kernel: 5,
                stride: 2,
                padding: Padding::Same,
                activation: LayerActivation::Hidden(Activation::Tanh),
                bias: true,
            })
        );
        assert_eq!(
            layers[1],
            LayerSpec::MaxPool2d(pool::MaxPool2d { size: 3, stride: 2 })
        );
        assert_eq!(layers[2].activation(), sigmoid);
        assert_eq!(layers[5].activation(), sigmoid);
        // The last layer feeds the softmax: linear unless told otherwise.
        assert_eq!(layers[6].activation(), LayerActivation::Identity);
        let spec = ModelSpec {
            input: Shape::image(3, 32, 32),
            layers: layers.clone(),
            loss: Loss::Xent,
            standardisation: None,
        };
        assert_eq!(
            parse_layers(&spec.describe(), Activation::Relu).unwrap(),
            layers
        );
        // Blocks, BatchNorm, pools and activations read back too, and the ResNet presets.
        let text = "conv8k3p1:nobias,bn,relu,res(conv8k3s2p1:nobias,bn,tanh,conv8k3p1|conv8k1s2:nobias,bn),avgpool2s1,gap,dense10";
        let layers = parse_layers(text, Activation::Relu).unwrap();
        let written = ModelSpec {
            input: Shape::image(3, 9, 9),
            layers: layers.clone(),
            loss: Loss::Xent,
            standardisation: None,
        }
        .describe();
        assert_eq!(parse_layers(&written, Activation::Sigmoid).unwrap(), layers);
        let resnet = ModelSpec::resnet(Shape::image(1, 28, 28), 3, 10);
        assert_eq!(
            parse_layers(&resnet.describe(), Activation::Tanh).unwrap(),
            resnet.layers
        );
        // 32 'same' with stride 2 → 16; pool 3 stride 2 → 7; conv 3 → 5.
        assert_eq!(spec.shapes().unwrap()[3], Shape::image(4, 5, 5));
    }

    #[test]
    fn bad_layer_lists_name_the_token() {
        for (text, expected) in [
            ("conv32k3,maxpoll2,dense10", "layer 2 (\"maxpoll2\")"),
            ("conv32,dense10", "kernel size"),
            ("conv32k3x,dense10", "\"x\""),
            ("dropout1.5,dense10", "below 1"),
            ("dense0", "at least 1"),
            ("flatten:relu,dense10", "only dense and conv"),
            ("dense10:swish", "swish"),
        ] {
            let error = parse_layers(text, Activation::Relu).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn shapes_that_do_not_fit_are_refused_naming_the_layer() {
        let image = Shape::image(1, 28, 28);
        for (text, expected) in [
            ("dense10", "layer 1 (dense10:linear): its input is 1×28×28"),
            (
                "conv8k3,maxpool2,conv8k3,maxpool16,flatten,dense10",
                "layer 4 (maxpool16)",
            ),
            ("conv8k29,flatten,dense10", "kernel is larger"),
            ("flatten,dense10,dropout0.5", "the last layer is dropout0.5"),
            ("flatten,dense10:relu", "make it linear"),
            ("flatten,dense1", "at least 2"),
        ] {
            let spec = ModelSpec {
                input: image,
                layers: parse_layers(text, Activation::Relu).unwrap(),
                loss: Loss::Xent,
                standardisation: None,
            };
            let error = spec.validate().unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn windows_map_outputs_to_inputs_and_back() {
        // 'same' over 7 with a kernel of 4 and stride 2: 4 outputs, 1 zero before, 2 after.
        let w = Window::new(4, 2, Padding::Same, 7).unwrap();
        assert_eq!((w.output, w.pad), (4, 1));
        for output in 0..w.output {
            for offset in 0..w.size {
                if let Some(input) = w.input_at(output, offset) {
                    assert_eq!(w.output_at(input, offset), Some(output));
                }
            }
        }
        assert_eq!(w.input_at(0, 0), None);
        assert_eq!(Window::new(3, 1, Padding::Valid, 2), None);
    }
}
