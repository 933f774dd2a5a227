//! What a model is: a list of layers on an input shape, the loss on the last layer's outputs, and
//! where each parameter lives in the flat parameter buffer.
//!
//! Tensors are stored channels-last: a sample of shape C × H × W is H·W·C floats with the channel
//! fastest, and a flat vector of n features is the shape n × 1 × 1. So a 1 × 28 × 28 image and a
//! 784-vector are the same bytes, and Flatten moves nothing.

use std::fmt;

use crate::error::{Error, Result};
use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Activation {
    Relu,
    Sigmoid,
    Tanh,
}

/// The activation of one layer as the kernels see it: the output layer has none (its softmax is
/// part of the loss).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerActivation {
    Identity,
    Hidden(Activation),
}

impl LayerActivation {
    /// The code `shaders/shared/activations.wgsl` switches on.
    pub fn shader_code(self) -> u32 {
        match self {
            LayerActivation::Identity => 0,
            LayerActivation::Hidden(Activation::Relu) => 1,
            LayerActivation::Hidden(Activation::Sigmoid) => 2,
            LayerActivation::Hidden(Activation::Tanh) => 3,
        }
    }

    pub fn from_shader_code(code: u32) -> Option<Self> {
        [
            LayerActivation::Identity,
            LayerActivation::Hidden(Activation::Relu),
            LayerActivation::Hidden(Activation::Sigmoid),
            LayerActivation::Hidden(Activation::Tanh),
        ]
        .into_iter()
        .find(|a| a.shader_code() == code)
    }

    pub fn apply(self, z: f32) -> f32 {
        match self {
            LayerActivation::Identity => z,
            LayerActivation::Hidden(Activation::Relu) => z.max(0.0),
            LayerActivation::Hidden(Activation::Sigmoid) => 1.0 / (1.0 + (-z).exp()),
            LayerActivation::Hidden(Activation::Tanh) => z.tanh(),
        }
    }

    /// f'(z) expressed through the output a = f(z).
    pub fn derivative_from_output(self, a: f32) -> f32 {
        match self {
            LayerActivation::Identity => 1.0,
            LayerActivation::Hidden(Activation::Relu) => {
                if a > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            LayerActivation::Hidden(Activation::Sigmoid) => a * (1.0 - a),
            LayerActivation::Hidden(Activation::Tanh) => 1.0 - a * a,
        }
    }

    /// The name in a layer list: `relu`, `sigmoid`, `tanh`, or `linear` for the identity.
    pub fn name(self) -> &'static str {
        match self {
            LayerActivation::Identity => "linear",
            LayerActivation::Hidden(Activation::Relu) => "relu",
            LayerActivation::Hidden(Activation::Sigmoid) => "sigmoid",
            LayerActivation::Hidden(Activation::Tanh) => "tanh",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [
            LayerActivation::Identity,
            LayerActivation::Hidden(Activation::Relu),
            LayerActivation::Hidden(Activation::Sigmoid),
            LayerActivation::Hidden(Activation::Tanh),
        ]
        .into_iter()
        .find(|a| a.name() == name)
    }
}

/// The loss on the softmax of the last layer's outputs, against one-hot targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Loss {
    /// Categorical cross-entropy.
    Xent,
    /// Mean squared error between the softmax probabilities and the one-hot target.
    Mse,
}

/// The shape of one sample's tensor: channels × height × width, stored channels-last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

/// The most values one tensor may hold: kernels index with u32.
pub const MAX_VALUES: usize = u32::MAX as usize;

impl Shape {
    pub fn image(channels: usize, height: usize, width: usize) -> Self {
        Shape {
            channels,
            height,
            width,
        }
    }

    /// A vector of `features` values (features × 1 × 1).
    pub fn flat(features: usize) -> Self {
        Shape::image(features, 1, 1)
    }

    /// Values per sample.
    pub fn len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// `len`, or None where it does not fit a kernel's u32 index.
    pub fn checked_len(&self) -> Option<usize> {
        self.channels
            .checked_mul(self.height)?
            .checked_mul(self.width)
            .filter(|&n| n <= MAX_VALUES)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_flat(&self) -> bool {
        self.height == 1 && self.width == 1
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_flat() {
            write!(f, "{}", self.channels)
        } else {
            write!(f, "{}×{}×{}", self.channels, self.height, self.width)
        }
    }
}

/// How a convolution treats the image border (Keras' `padding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// No padding: only windows that lie inside the image.
    Valid,
    /// Zeros around the image so that the output is ceil(input / stride) wide; the extra zero,
    /// when the total is odd, goes after (right, bottom), as in Keras and PyTorch.
    Same,
}

/// A window sliding over one spatial axis: its size, stride and the zeros before the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub size: usize,
    pub stride: usize,
    /// Zeros before the first input position.
    pub pad: usize,
    pub input: usize,
    pub output: usize,
}

impl Window {
    /// The window over an axis of `input` positions, or why it does not fit.
    fn new(size: usize, stride: usize, padding: Padding, input: usize) -> Option<Self> {
        let (pad, output) = match padding {
            Padding::Valid => (0, (input.checked_sub(size)? / stride) + 1),
            Padding::Same => {
                let output = input.div_ceil(stride);
                let total = ((output - 1) * stride + size).saturating_sub(input);
                (total / 2, output)
            }
        };
        Some(Window {
            size,
            stride,
            pad,
            input,
            output,
        })
    }

    /// The input position under offset `offset` of the window at output `position`, if it is
    /// inside the input (else it reads a padding zero).
    pub fn input_at(&self, position: usize, offset: usize) -> Option<usize> {
        (position * self.stride + offset)
            .checked_sub(self.pad)
            .filter(|&i| i < self.input)
    }

    /// The output position whose window has input `input` under offset `offset`, if any.
    pub fn output_at(&self, input: usize, offset: usize) -> Option<usize> {
        let start = (input + self.pad).checked_sub(offset)?;
        (start % self.stride == 0)
            .then_some(start / self.stride)
            .filter(|&o| o < self.output)
    }
}

/// Where the windows of a convolution or pool lie: over the input's rows and its columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub input: Shape,
    pub output: Shape,
    pub rows: Window,
    pub columns: Window,
}

impl Geometry {
    /// Output positions per sample (rows of a convolution's patch matrix).
    pub fn positions(&self) -> usize {
        self.output.height * self.output.width
    }

    /// Values in one window of one channel.
    pub fn window_len(&self) -> usize {
        self.rows.size * self.columns.size
    }
}

/// One layer of a sequential model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LayerSpec {
    /// y = f(x W + b) on a flat input.
    Dense {
        units: usize,
        activation: LayerActivation,
    },
    /// y = f(conv(x, W) + b): `filters` kernels of `kernel` × `kernel` over every input channel.
    Conv2d {
        filters: usize,
        kernel: usize,
        stride: usize,
        padding: Padding,
        activation: LayerActivation,
    },
    /// The maximum of each `size` × `size` window, windows `stride` apart ('valid' padding).
    MaxPool2d { size: usize, stride: usize },
    /// C × H × W as a vector of C·H·W (in storage order: nothing moves).
    Flatten,
    /// In training, each value zeroed with probability `rate` and the rest scaled by
    /// 1 / (1 - rate) (inverted dropout); in evaluation, the identity.
    Dropout { rate: f32 },
}

impl LayerSpec {
    /// The activation this layer applies to its output (the identity for layers without one).
    pub fn activation(&self) -> LayerActivation {
        match *self {
            LayerSpec::Dense { activation, .. } | LayerSpec::Conv2d { activation, .. } => {
                activation
            }
            _ => LayerActivation::Identity,
        }
    }

    pub fn has_parameters(&self) -> bool {
        matches!(self, LayerSpec::Dense { .. } | LayerSpec::Conv2d { .. })
    }

    /// The convolution's windows over an input of `input` (None if it does not fit).
    fn conv_windows(&self, input: Shape) -> Option<(Window, Window)> {
        match *self {
            LayerSpec::Conv2d {
                kernel,
                stride,
                padding,
                ..
            } => Some((
                Window::new(kernel, stride, padding, input.height)?,
                Window::new(kernel, stride, padding, input.width)?,
            )),
            LayerSpec::MaxPool2d { size, stride } => Some((
                Window::new(size, stride, Padding::Valid, input.height)?,
                Window::new(size, stride, Padding::Valid, input.width)?,
            )),
            _ => None,
        }
    }

    /// A convolution's or pool's windows over `input` and the shapes in and out (None for other
    /// layers, or where the window does not fit).
    pub fn geometry(&self, input: Shape) -> Option<Geometry> {
        let (rows, columns) = self.conv_windows(input)?;
        let channels = match *self {
            LayerSpec::Conv2d { filters, .. } => filters,
            _ => input.channels,
        };
        Some(Geometry {
            input,
            output: Shape::image(channels, rows.output, columns.output),
            rows,
            columns,
        })
    }

    /// The shape this layer makes of `input`, or why it cannot take it.
    pub fn output_shape(&self, input: Shape) -> std::result::Result<Shape, String> {
        match *self {
            LayerSpec::Dense { .. } if !input.is_flat() => Err(format!(
                "its input is {input}, and a dense layer takes a flat one: put flatten before it"
            )),
            LayerSpec::Dense { units, .. } => Ok(Shape::flat(units)),
            LayerSpec::Conv2d {
                filters, kernel, ..
            } => {
                let (rows, columns) = self.conv_windows(input).ok_or_else(|| {
                    format!("its {kernel}×{kernel} kernel is larger than its input, {input}")
                })?;
                Ok(Shape::image(filters, rows.output, columns.output))
            }
            LayerSpec::MaxPool2d { size, .. } => {
                let (rows, columns) = self.conv_windows(input).ok_or_else(|| {
                    format!("its {size}×{size} pool is larger than its input, {input}")
                })?;
                Ok(Shape::image(input.channels, rows.output, columns.output))
            }
            LayerSpec::Flatten => Ok(Shape::flat(input.len())),
            LayerSpec::Dropout { .. } => Ok(input),
        }
    }

    /// The layer as a `--layers` token; `parse_layers` reads it back to the same layer.
    pub fn token(&self) -> String {
        match *self {
            LayerSpec::Dense { units, activation } => {
                format!("dense{units}:{}", activation.name())
            }
            LayerSpec::Conv2d {
                filters,
                kernel,
                stride,
                padding,
                activation,
            } => {
                let stride = if stride == 1 {
                    String::new()
                } else {
                    format!("s{stride}")
                };
                let padding = match padding {
                    Padding::Valid => "",
                    Padding::Same => "same",
                };
                format!(
                    "conv{filters}k{kernel}{stride}{padding}:{}",
                    activation.name()
                )
            }
            LayerSpec::MaxPool2d { size, stride } if stride == size => format!("maxpool{size}"),
            LayerSpec::MaxPool2d { size, stride } => format!("maxpool{size}s{stride}"),
            LayerSpec::Flatten => "flatten".into(),
            LayerSpec::Dropout { rate } => format!("dropout{rate}"),
        }
    }
}

/// The syntax of `--layers`, for messages and `--help`.
pub const LAYERS_SYNTAX: &str = "comma-separated layers: conv<filters>k<size>[s<stride>][same], \
    maxpool<size>[s<stride>], flatten, dropout<rate>, dense<units>; a layer with weights may end \
    in :relu, :sigmoid, :tanh or :linear (default: --activation, and linear for the last layer), \
    e.g. conv32k3,maxpool2,conv64k3,maxpool2,flatten,dropout0.5,dense10";

/// Reads a `--layers` list. Layers with weights take `default` as their activation unless they
/// name one, except the last layer, which feeds the softmax and is linear.
pub fn parse_layers(
    text: &str,
    default: Activation,
) -> std::result::Result<Vec<LayerSpec>, String> {
    let tokens: Vec<&str> = text.split(',').map(str::trim).collect();
    let last_with_weights = tokens
        .iter()
        .rposition(|t| t.starts_with("dense") || t.starts_with("conv"));
    tokens
        .iter()
        .enumerate()
        .map(|(i, token)| {
            let fallback = match Some(i) == last_with_weights {
                true => LayerActivation::Identity,
                false => LayerActivation::Hidden(default),
            };
            parse_layer(token, fallback).map_err(|problem| {
                format!(
                    "layer {} ({token:?}): {problem}; expected {LAYERS_SYNTAX}",
                    i + 1
                )
            })
        })
        .collect()
}

/// A token's leading decimal number and the rest.
fn leading_number(text: &str) -> Option<(usize, &str)> {
    let digits = text.len() - text.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let value = text[..digits].parse().ok()?;
    Some((value, &text[digits..]))
}

fn positive(what: &str, value: usize) -> std::result::Result<usize, String> {
    match value {
        0 => Err(format!("{what} must be at least 1")),
        _ => Ok(value),
    }
}

fn parse_layer(token: &str, fallback: LayerActivation) -> std::result::Result<LayerSpec, String> {
    let (body, activation) = match token.split_once(':') {
        Some((body, name)) => {
            let activation = LayerActivation::from_name(name).ok_or_else(|| {
                format!("unknown activation {name:?} (relu, sigmoid, tanh or linear)")
            })?;
            (body, Some(activation))
        }
        None => (token, None),
    };
    let no_activation = |layer: LayerSpec| match activation {
        Some(_) => Err("only dense and conv layers take an activation".to_string()),
        None => Ok(layer),
    };
    let activation = activation.unwrap_or(fallback);
    if let Some(rest) = body.strip_prefix("dense") {
        let (units, rest) = leading_number(rest).ok_or("dense needs a width, e.g. dense128")?;
        if !rest.is_empty() {
            return Err(format!("unexpected {rest:?} after the width"));
        }
        let units = positive("a dense layer's width", units)?;
        return Ok(LayerSpec::Dense { units, activation });
    }
    if let Some(rest) = body.strip_prefix("conv") {
        let (filters, rest) =
            leading_number(rest).ok_or("conv needs a filter count, e.g. conv32k3")?;
        let rest = rest
            .strip_prefix('k')
            .ok_or("conv needs a kernel size after its filter count, e.g. conv32k3")?;
        let (kernel, rest) = leading_number(rest).ok_or("conv needs a kernel size, e.g. k3")?;
        let (stride, rest) = match rest.strip_prefix('s').and_then(leading_number) {
            Some((stride, rest)) => (stride, rest),
            None => (1, rest),
        };
        let padding = match rest {
            "" | "valid" => Padding::Valid,
            "same" => Padding::Same,
            other => return Err(format!("unexpected {other:?} (padding is valid or same)")),
        };
        return Ok(LayerSpec::Conv2d {
            filters: positive("the filter count", filters)?,
            kernel: positive("the kernel size", kernel)?,
            stride: positive("the stride", stride)?,
            padding,
            activation,
        });
    }
    if let Some(rest) = body.strip_prefix("maxpool") {
        let (size, rest) = leading_number(rest).ok_or("maxpool needs a size, e.g. maxpool2")?;
        let size = positive("the pool size", size)?;
        let stride = match rest {
            "" => size,
            _ => match rest.strip_prefix('s').and_then(leading_number) {
                Some((stride, "")) => positive("the stride", stride)?,
                _ => return Err(format!("unexpected {rest:?} (a stride is s<n>)")),
            },
        };
        return no_activation(LayerSpec::MaxPool2d { size, stride });
    }
    if body == "flatten" {
        return no_activation(LayerSpec::Flatten);
    }
    if let Some(rest) = body.strip_prefix("dropout") {
        let rate: f32 = rest
            .parse()
            .map_err(|_| "dropout needs a rate, e.g. dropout0.5".to_string())?;
        if !(0.0..1.0).contains(&rate) {
            return Err(format!(
                "the dropout rate must be at least 0 and below 1, got {rate}"
            ));
        }
        return no_activation(LayerSpec::Dropout { rate });
    }
    Err("not a layer".into())
}

/// A sequential model: `layers` applied in turn to a sample of shape `input`; the last layer's
/// outputs are the logits that `loss` takes the softmax of.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub input: Shape,
    pub layers: Vec<LayerSpec>,
    pub loss: Loss,
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
            layers.push(LayerSpec::Flatten);
        }
        layers.extend(hidden.iter().map(|&units| LayerSpec::Dense {
            units,
            activation: LayerActivation::Hidden(activation),
        }));
        layers.push(LayerSpec::Dense {
            units: classes,
            activation: LayerActivation::Identity,
        });
        ModelSpec {
            input,
            layers,
            loss,
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
        let conv = |filters| LayerSpec::Conv2d {
            filters,
            kernel: 3,
            stride: 1,
            padding: Padding::Valid,
            activation: LayerActivation::Hidden(Activation::Relu),
        };
        let pool = LayerSpec::MaxPool2d { size: 2, stride: 2 };
        ModelSpec {
            input,
            layers: vec![
                conv(32),
                pool,
                conv(64),
                pool,
                LayerSpec::Flatten,
                LayerSpec::Dropout { rate: 0.5 },
                LayerSpec::Dense {
                    units: classes,
                    activation: LayerActivation::Identity,
                },
            ],
            loss: Loss::Xent,
        }
    }

    /// The shape of every tensor from the input (index 0) to the logits, or an error naming the
    /// first layer that does not fit its input.
    pub fn shapes(&self) -> Result<Vec<Shape>> {
        let too_large = |what: String, shape: Shape| {
            Error::Config(format!(
                "{what} of {}×{}×{} values is larger than a kernel can index ({MAX_VALUES})",
                shape.channels, shape.height, shape.width
            ))
        };
        if self.input.checked_len().is_none() {
            return Err(too_large("the input".into(), self.input));
        }
        let mut shapes = vec![self.input];
        for (i, layer) in self.layers.iter().enumerate() {
            let input = *shapes.last().expect("the input shape");
            let output = layer.output_shape(input).map_err(|problem| {
                Error::Config(format!("layer {} ({}): {problem}", i + 1, layer.token()))
            })?;
            // At least the rows × outputs of the layer's matrix in `layout` (a conv's rows: its
            // patch, the bias row and padding to a multiple of 4), so that its sizes cannot wrap.
            let weights = match *layer {
                LayerSpec::Dense { units, .. } => (input.len() + 1).checked_mul(units),
                LayerSpec::Conv2d {
                    filters, kernel, ..
                } => kernel
                    .checked_mul(kernel)
                    .and_then(|k| k.checked_mul(input.channels))
                    .and_then(|patch| patch.checked_add(4))
                    .and_then(|rows| rows.checked_mul(filters)),
                _ => Some(0),
            };
            if output.checked_len().is_none() {
                let what = format!("layer {} ({})'s output", i + 1, layer.token());
                return Err(too_large(what, output));
            }
            if weights.is_none_or(|w| w > MAX_VALUES) {
                return Err(Error::Config(format!(
                    "layer {} ({}) on {input} has more weights than a kernel can index \
                     ({MAX_VALUES})",
                    i + 1,
                    layer.token()
                )));
            }
            if output.is_empty() {
                return Err(Error::Config(format!(
                    "layer {} ({}) makes an empty output of {input}",
                    i + 1,
                    layer.token()
                )));
            }
            shapes.push(output);
        }
        Ok(shapes)
    }

    /// Checks that every layer fits its input and that the model ends in a linear dense layer
    /// of at least 2 classes (whose softmax the loss takes).
    pub fn validate(&self) -> Result<()> {
        if self.input.checked_len() == Some(0) {
            return Err(Error::Config(format!(
                "the input shape {} is empty",
                self.input
            )));
        }
        let bad = |problem: String| Err(Error::Config(problem));
        for (i, layer) in self.layers.iter().enumerate() {
            let zero = match *layer {
                LayerSpec::Dense { units, .. } => units == 0,
                LayerSpec::Conv2d {
                    filters,
                    kernel,
                    stride,
                    ..
                } => filters == 0 || kernel == 0 || stride == 0,
                LayerSpec::MaxPool2d { size, stride } => size == 0 || stride == 0,
                LayerSpec::Flatten => false,
                LayerSpec::Dropout { rate } => !(0.0..1.0).contains(&rate),
            };
            if zero {
                return bad(format!(
                    "layer {} ({}): sizes must be positive and a dropout rate in [0, 1)",
                    i + 1,
                    layer.token()
                ));
            }
        }
        self.shapes()?;
        match self.layers.last() {
            Some(LayerSpec::Dense { units, activation }) => {
                if *activation != LayerActivation::Identity {
                    return bad(format!(
                        "the last layer ({}) feeds the softmax of the loss: make it linear",
                        self.layers.last().expect("a last layer").token()
                    ));
                }
                if *units < 2 {
                    return bad(format!(
                        "the last layer gives {units} classes; at least 2 are needed"
                    ));
                }
                Ok(())
            }
            Some(other) => bad(format!(
                "the last layer is {}; a model ends in a dense layer of one logit per class",
                other.token()
            )),
            None => bad("the model has no layers".into()),
        }
    }

    /// Whether the model reads samples of `shape`: its input shape, or, for a model on flat
    /// inputs, any shape of as many values (read in storage order).
    pub fn takes(&self, shape: Shape) -> bool {
        shape == self.input || (self.input.is_flat() && shape.len() == self.input.len())
    }

    /// The number of classes: the last layer's width.
    pub fn classes(&self) -> usize {
        self.shapes()
            .ok()
            .and_then(|s| s.last().copied())
            .map_or(0, |s| s.len())
    }

    /// The layer list as `--layers` writes it (every activation named).
    pub fn describe(&self) -> String {
        let tokens: Vec<String> = self.layers.iter().map(LayerSpec::token).collect();
        tokens.join(",")
    }

    /// Where each layer's parameters live in the flat buffer. The model must be valid.
    pub fn layout(&self) -> ParamLayout {
        let shapes = self.shapes().expect("a validated model");
        let mut offset = 0;
        let mut matrices = Vec::new();
        let mut layer_matrix = Vec::new();
        for (layer, input) in self.layers.iter().zip(&shapes) {
            let (inputs, outputs, rows) = match *layer {
                LayerSpec::Dense { units, .. } => (input.len(), units, input.len() + 1),
                LayerSpec::Conv2d {
                    filters, kernel, ..
                } => {
                    let patch = kernel * kernel * input.channels;
                    // The patch, the bias's row of ones, zeros to a multiple of 4 (the vec4
                    // products read whole rows of four).
                    (patch, filters, (patch + 1).next_multiple_of(4))
                }
                _ => {
                    layer_matrix.push(None);
                    continue;
                }
            };
            let matrix = WeightMatrix {
                inputs,
                outputs,
                rows,
                weight_offset: offset,
                bias_offset: offset + inputs * outputs,
            };
            offset = matrix.end();
            layer_matrix.push(Some(matrices.len()));
            matrices.push(matrix);
        }
        ParamLayout {
            matrices,
            layer_matrix,
            total: offset,
        }
    }

    /// Keras' defaults: Glorot uniform weights, U(±sqrt(6 / (fan_in + fan_out))), zero biases
    /// (fan_in and fan_out count a convolution's kernel positions: k² · channels in and out).
    /// Drawn layer by layer in the flat buffer's order.
    pub fn glorot_uniform(&self, rng: &mut Rng) -> Vec<f32> {
        let layout = self.layout();
        let mut params = vec![0.0; layout.total];
        for (layer, matrix) in self.layers.iter().zip(&layout.layer_matrix) {
            let Some(matrix) = matrix.map(|m| layout.matrices[m]) else {
                continue;
            };
            let (fan_in, fan_out) = match *layer {
                LayerSpec::Conv2d {
                    filters, kernel, ..
                } => (matrix.inputs, kernel * kernel * filters),
                _ => (matrix.inputs, matrix.outputs),
            };
            let limit = (6.0 / (fan_in + fan_out) as f32).sqrt();
            for w in &mut params[matrix.weight_offset..matrix.bias_offset] {
                *w = rng.uniform(-limit, limit);
            }
        }
        params
    }
}

/// Where one layer's parameters sit in the flat buffer: a row-major `[rows, outputs]` matrix
/// whose first `inputs` rows are the weight W (`y = x W + b`; for a convolution, x is a patch
/// with the channel fastest, then the kernel column, then its row), row `inputs` the bias b, and
/// the rows after it (a convolution's, to a multiple of 4) zeros that stay zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightMatrix {
    pub inputs: usize,
    pub outputs: usize,
    pub rows: usize,
    pub weight_offset: usize,
    pub bias_offset: usize,
}

impl WeightMatrix {
    /// One past the matrix's last float.
    pub fn end(&self) -> usize {
        self.weight_offset + self.rows * self.outputs
    }

    /// Trained parameters: the weights and the bias.
    pub fn parameters(&self) -> usize {
        (self.inputs + 1) * self.outputs
    }
}

/// The named offsets of every parameter in the flat parameter, gradient and moment buffers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamLayout {
    /// The weight matrices of the layers that have parameters, in order (`layers.{i}` in model
    /// files).
    pub matrices: Vec<WeightMatrix>,
    /// For each layer, the index of its matrix.
    pub layer_matrix: Vec<Option<usize>>,
    /// Floats in the flat buffers (padding included).
    pub total: usize,
}

impl ParamLayout {
    /// The trained parameters (without padding).
    pub fn parameter_count(&self) -> usize {
        self.matrices.iter().map(WeightMatrix::parameters).sum()
    }

    /// The matrix of layer `layer`, if it has parameters.
    pub fn of_layer(&self, layer: usize) -> Option<WeightMatrix> {
        self.layer_matrix[layer].map(|m| self.matrices[m])
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
            LayerSpec::Conv2d {
                filters: 8,
                kernel: 5,
                stride: 2,
                padding: Padding::Same,
                activation: LayerActivation::Hidden(Activation::Tanh),
            }
        );
        assert_eq!(layers[1], LayerSpec::MaxPool2d { size: 3, stride: 2 });
        assert_eq!(layers[2].activation(), sigmoid);
        assert_eq!(layers[5].activation(), sigmoid);
        // The last layer feeds the softmax: linear unless told otherwise.
        assert_eq!(layers[6].activation(), LayerActivation::Identity);
        let spec = ModelSpec {
            input: Shape::image(3, 32, 32),
            layers: layers.clone(),
            loss: Loss::Xent,
        };
        assert_eq!(
            parse_layers(&spec.describe(), Activation::Relu).unwrap(),
            layers
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
