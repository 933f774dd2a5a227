//! The vocabulary every layer, kernel and model shares: activations, the loss, sample shapes
//! (channels-last), the windows of convolutions and pools, and where a layer's parameters sit in
//! the flat buffer.

use std::fmt;

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

    pub fn from_name(name: &str) -> Option<Self> {
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
            .filter(|&n| u32::try_from(n).is_ok())
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
    /// `pad` zeros on every side, as PyTorch's `padding=pad`: the output is
    /// (input + 2 pad - size) / stride + 1 wide.
    Explicit(usize),
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
    pub fn new(size: usize, stride: usize, padding: Padding, input: usize) -> Option<Self> {
        let (pad, output) = match padding {
            Padding::Valid => (0, (input.checked_sub(size)? / stride) + 1),
            Padding::Same => {
                let output = input.div_ceil(stride);
                let total = ((output - 1) * stride + size).saturating_sub(input);
                (total / 2, output)
            }
            Padding::Explicit(pad) => (pad, ((input + 2 * pad).checked_sub(size)? / stride) + 1),
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

/// Where one layer's parameters sit in the flat buffer: a row-major `[rows, outputs]` matrix
/// whose first `inputs` rows are the weight W (`y = x W + b`; for a convolution, x is a patch
/// with the channel fastest, then the kernel column, then its row), row `inputs` the bias b (zeros
/// that stay zero where the layer has none), and the rows after it (a convolution's, to a
/// multiple of 4) zeros that stay zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightMatrix {
    pub inputs: usize,
    pub outputs: usize,
    pub rows: usize,
    pub weight_offset: usize,
    pub bias_offset: usize,
    /// Whether the bias row is trained (a conv with `:nobias` keeps it zero).
    pub bias: bool,
}

impl WeightMatrix {
    /// One past the matrix's last float.
    pub fn end(&self) -> usize {
        self.weight_offset + self.rows * self.outputs
    }

    /// Trained parameters: the weights and the bias.
    pub fn parameters(&self) -> usize {
        (self.inputs + self.bias as usize) * self.outputs
    }
}

/// Where a BatchNorm's tensors sit in the flat buffer: γ and β among the trained parameters,
/// the running mean and variance in the state after them (never touched by the optimizer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NormParams {
    pub channels: usize,
    pub gamma: usize,
    pub beta: usize,
    pub running_mean: usize,
    pub running_var: usize,
}

/// PyTorch's BatchNorm constants, which shadertrain's BatchNorm uses.
pub const BATCH_NORM_EPSILON: f32 = 1e-5;
pub const BATCH_NORM_MOMENTUM: f32 = 0.1;

impl Geometry {
    /// The windows of a `size` × `size` kernel or pool, `stride` apart, with `padding`, over
    /// `input`, making `channels` channels (None where they do not fit).
    pub fn square(
        input: Shape,
        channels: usize,
        size: usize,
        stride: usize,
        padding: Padding,
    ) -> Option<Geometry> {
        let rows = Window::new(size, stride, padding, input.height)?;
        let columns = Window::new(size, stride, padding, input.width)?;
        Some(Geometry {
            input,
            output: Shape::image(channels, rows.output, columns.output),
            rows,
            columns,
        })
    }
}
