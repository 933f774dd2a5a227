//! What a layer kind says about itself, so that the model, the plan, the trainer, the CPU reference,
//! the model files and `bench` need nothing else: its token, its output shape, its parameters,
//! its passes on the GPU, its CPU reference, its tensors in PyTorch's names and layouts. Each kind
//! implements `LayerKind` in its own file; `crate::model`'s registry lists the kinds.

use crate::error::Result;
use crate::gpu::uniforms::{ConvShape, MatmulDims};
use crate::gpu::{Gpu, Kernels};
use crate::shapes::{Geometry, LayerActivation, NormParams, Shape, WeightMatrix};

use super::DeviceLayer;

/// What keys a training step's dropout masks: the run's seed and the step's number (from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StepKey {
    pub seed: u64,
    pub step: u32,
}

/// The parameters a layer has, for the flat buffer's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parameters {
    None,
    /// A weight matrix of `inputs` × `outputs` with a bias row, `rows` rows in all (padding
    /// included); `fan_out` for Glorot's limit.
    Matrix {
        inputs: usize,
        outputs: usize,
        rows: usize,
        bias: bool,
        fan_out: usize,
    },
    /// BatchNorm's γ and β (trained) and running mean and variance (state), one per channel.
    Norm {
        channels: usize,
    },
}

/// What a token's options say: `:relu` and the like, `:nobias`, and the activation a layer with
/// weights takes when it names none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenOptions {
    pub activation: Option<LayerActivation>,
    pub bias: bool,
    pub fallback: LayerActivation,
}

impl TokenOptions {
    /// `layer`, for a kind that takes no option.
    pub fn plain<T>(&self, layer: T) -> std::result::Result<T, String> {
        match (self.activation, self.bias) {
            (Some(_), _) => Err("only dense and conv layers take an activation".into()),
            (_, false) => Err("only conv layers take :nobias".into()),
            _ => Ok(layer),
        }
    }

    /// The activation of a layer with weights.
    pub fn activation(&self) -> LayerActivation {
        self.activation.unwrap_or(self.fallback)
    }
}

/// Where one of a layer's tensors sits in a model file: its name, its shape, and for each of its
/// elements in the file's (PyTorch's) order, where it lives in the flat buffer (a function, so
/// that the names and shapes of a model described by a file's metadata cost nothing before the
/// file is known to hold them).
pub struct TensorMapping {
    pub name: String,
    pub shape: Vec<usize>,
    pub position: Box<dyn Fn(usize) -> usize>,
}

impl TensorMapping {
    /// Its elements' positions in the flat buffer, in the file's order.
    pub fn positions(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.shape.iter().product()).map(&self.position)
    }
}

/// What a layer's GPU passes are made from.
pub struct DeviceArgs<'a> {
    pub gpu: &'a Gpu,
    pub kernels: &'a Kernels,
    pub input: Shape,
    pub matrix: Option<WeightMatrix>,
    pub norm: Option<NormParams>,
    /// Where the state starts in the host's flat vector (`ParamLayout::trained`).
    pub state_start: usize,
    /// The most samples a step holds.
    pub batch: usize,
    /// The run's seed and the node's index, which key dropout's masks.
    pub seed: u64,
    pub node: usize,
}

/// What a layer's CPU reference forward pass reads.
pub struct ReferenceForward<'a> {
    /// The host's flat vector: trained parameters, then the state.
    pub params: &'a [f32],
    /// The state after the passes before this one (BatchNorm updates its running statistics in
    /// training), laid out as `params[state_start..]`.
    pub state: &'a mut [f32],
    pub state_start: usize,
    pub x: &'a [f32],
    pub input: Shape,
    pub rows: usize,
    pub matrix: Option<WeightMatrix>,
    pub norm: Option<NormParams>,
    /// The training step (None: evaluation).
    pub training: Option<StepKey>,
    pub node: usize,
}

/// What a layer's CPU reference backward pass reads and writes.
pub struct ReferenceBackward<'a> {
    pub params: &'a [f32],
    pub x: &'a [f32],
    /// The layer's output in the forward pass.
    pub y: &'a [f32],
    /// dL/dz: the output gradient with the layer's own activation's derivative applied.
    pub dz: &'a [f32],
    pub input: Shape,
    pub rows: usize,
    pub matrix: Option<WeightMatrix>,
    pub norm: Option<NormParams>,
    /// The training step (None: evaluation, whose gradients an explanation takes).
    pub training: Option<StepKey>,
    pub node: usize,
    /// dL/dθ, laid out as the parameters: the layer writes its own.
    pub grads: &'a mut [f32],
    /// Whether the input gradient is wanted.
    pub input_grad: bool,
}

/// A product of a training step, for `bench`: what it is ("forward", "weight grad", "input
/// grad"), its dimensions, and its model FLOPs.
pub struct Product {
    /// "dense" or "conv".
    pub kind: &'static str,
    pub part: &'static str,
    pub dims: MatmulDims,
    pub flops: f64,
    /// A convolution's input gradient straight from its output's gradient (matmul_vec4.wgsl's
    /// `conv_input_grad`), which the register kernels run in place of `dims` and col2im where
    /// they take it: its dims and shape.
    pub direct: Option<(MatmulDims, ConvShape)>,
    /// A convolution's forward product or weight gradient, which the register kernels may read
    /// from the input image (matmul_vec4.wgsl's `conv_forward`, `conv_weight_grad_parts`): the
    /// convolution's shape.
    pub image: Option<ConvShape>,
    /// A dense layer's product on its matrix padded with zero columns to a multiple of 4
    /// outputs (`dense::pad_outputs`), which the register kernels compute in its place where
    /// they read mirrors and their vec4 forms take it (`dense::padded_matrix`).
    pub padded: Option<MatmulDims>,
}

/// Everything a layer kind says about itself. The defaults are those of a layer without
/// parameters that moves its input to its output of the same shape.
pub(crate) trait LayerKind: std::fmt::Debug {
    /// The layer as a `--layers` token; the kind's `parse` reads it back.
    fn token(&self) -> String;

    /// The shape the layer makes of `input`, or why it cannot take it.
    fn output_shape(&self, input: Shape) -> std::result::Result<Shape, String>;

    /// Whether the layer's sizes are positive (and a rate in range) before any input is known.
    fn sizes_are_valid(&self) -> bool {
        true
    }

    /// A convolution's or pool's windows over `input` (None for other kinds, or where they do not
    /// fit).
    fn geometry(&self, _input: Shape) -> Option<Geometry> {
        None
    }

    /// The activation the layer applies in its product's epilogue, whose derivative the layer
    /// above may apply for it.
    fn activation(&self) -> LayerActivation {
        LayerActivation::Identity
    }

    /// The layer's parameters on `input` (None where their sizes overflow).
    fn parameters(&self, _input: Shape) -> Option<Parameters> {
        Some(Parameters::None)
    }

    /// Whether the layer, naming no activation in its token, takes `--activation` (dense and
    /// conv), unless `parse_layers` makes it linear.
    fn takes_default_activation(&self) -> bool {
        false
    }

    /// Whether a layer before this one that takes `--activation` is linear instead (BatchNorm:
    /// the activation comes after the normalisation).
    fn linear_before(&self) -> bool {
        false
    }

    /// Whether the layer combines positions (a pool, or a flatten that makes them features): its
    /// output is no feature map for Grad-CAM.
    fn combines_positions(&self) -> bool {
        false
    }

    /// Whether the layer averages each channel over all positions (global average pooling), so
    /// that Grad-CAM's channel weights are what the score takes from each channel.
    fn averages_each_channel(&self) -> bool {
        false
    }

    /// Whether the layer's output is its input, unmoved (Flatten): the trainer shares the buffers.
    fn moves_nothing(&self) -> bool {
        false
    }

    /// Whether the layer, reading the batch itself, may take its weight gradient on the
    /// transposed batch (a dense layer).
    fn takes_transposed_batch(&self) -> bool {
        false
    }

    /// Whether the layer passes its input's values on in order, each from its own, so that a
    /// Flatten before it is still the order a dense layer after it reads (dropout, an
    /// activation, BatchNorm).
    fn keeps_order(&self) -> bool {
        false
    }

    /// The largest buffer the layer keeps per sample besides its output, and what it is.
    fn scratch_per_sample(
        &self,
        _input: Shape,
        _matrix: Option<WeightMatrix>,
    ) -> Option<(&'static str, usize)> {
        None
    }

    /// Its passes on the GPU.
    fn device(&self, args: &DeviceArgs<'_>) -> Result<DeviceLayer>;

    /// Its forward pass, CPU reference: x `[rows, input]` → y.
    fn reference_forward(&self, args: ReferenceForward<'_>) -> Vec<f32>;

    /// Its backward pass, CPU reference: its parameters' gradients into `args.grads`, and the
    /// input gradient where wanted.
    fn reference_backward(&self, args: ReferenceBackward<'_>) -> Option<Vec<f32>>;

    /// Its tensors in a model file under `name`, in PyTorch's layouts; `flattened_from`: the
    /// C × H × W shape its flat input was flattened from, where PyTorch numbers it otherwise.
    fn file_tensors(
        &self,
        _name: &str,
        _input: Shape,
        _matrix: Option<WeightMatrix>,
        _norm: Option<NormParams>,
        _flattened_from: Option<Shape>,
    ) -> Vec<TensorMapping> {
        Vec::new()
    }

    /// The products of a training step over `rows` samples (for `bench`), its weight matrix's.
    fn products(&self, _rows: usize, _input: Shape, _matrix: &WeightMatrix) -> Vec<Product> {
        Vec::new()
    }
}
