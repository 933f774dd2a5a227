//! The layers of a model: for each kind (`crate::model::LayerSpec` says what it is and its
//! shapes), the dispatches of its forward and backward passes on the GPU, and its CPU reference
//! forward and backward. The trainer (`crate::train`) walks the plan's nodes
//! (`crate::model::Plan`) and knows none of their insides; a layer knows its own tensors, its
//! slice of the flat parameter buffer (its `WeightMatrix`, or a BatchNorm's `NormParams`) and
//! the kernels it records.
//!
//! Every tensor is a batch of samples stored channels-last (`crate::model`), so a layer's output
//! buffer is the next layer's input without any reordering.

pub mod activation;
pub mod avgpool;
pub mod batchnorm;
pub(crate) mod context;
pub mod conv2d;
pub mod dense;
pub mod dropout;
pub mod flatten;
pub mod pool;
pub mod residual;

use wgpu::Buffer;

use crate::error::Result;
use crate::gpu::program::Program;
use crate::gpu::{Gpu, Kernels, MatmulOperand, TextureMirror};
use crate::model::{LayerActivation, LayerSpec, Op, Plan, Shape, WeightMatrix};
pub(crate) use context::{LayerContext, TransposedInput};

/// A batch tensor on the GPU, with its texture mirror where the matmul kernels read mirrors.
/// Clones share the buffer (Flatten's output is its input).
#[derive(Clone)]
pub(crate) struct DeviceTensor {
    pub buffer: Buffer,
    pub mirror: Option<TextureMirror>,
}

impl DeviceTensor {
    /// A zeroed tensor of `bytes`, mirrored where the matmul kernels read mirrors.
    pub fn new(gpu: &Gpu, kernels: &Kernels, what: &str, bytes: u64) -> Result<Self> {
        let buffer = gpu.storage_buffer(what, bytes)?;
        let mirror = kernels
            .matmul
            .reads_mirrors()
            .then(|| TextureMirror::new(gpu, &format!("{what} mirror"), &buffer))
            .flatten();
        Ok(DeviceTensor { buffer, mirror })
    }

    pub fn operand(&self) -> MatmulOperand<'_> {
        MatmulOperand::new(&self.buffer, self.mirror.as_ref())
    }
}

/// What one layer reads and writes in a step: tensors of the batch, laid out as `[rows, shape]`.
pub(crate) struct LayerIo<'a> {
    pub input: &'a DeviceTensor,
    /// A residual sum's second input.
    pub second_input: Option<&'a DeviceTensor>,
    pub output: &'a DeviceTensor,
    /// dL/d(output), written by the layer above (or the loss).
    pub output_grad: &'a DeviceTensor,
    /// dL/d(input), where a layer below has parameters (else nothing consumes it).
    pub input_grad: Option<&'a DeviceTensor>,
    /// Whether `input` is the gathered batch itself.
    pub input_is_batch: bool,
}

/// What the backward pass of a layer is told.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backward {
    /// Whether `output_grad` already holds dL/dz, the derivative of this layer's own activation
    /// applied by the layer above as it computed it.
    pub derivative_applied: bool,
    /// The activation of the layer beneath (through any Flatten): where it is not the identity,
    /// the input gradient may be multiplied by its derivative here, which `record_backward`'s
    /// result says.
    pub below: LayerActivation,
}

/// What a layer kind records in a training program: its forward and backward passes, with the
/// buffers it needs besides its input and output (made once, for the batch size).
pub(crate) trait DevicePasses {
    /// Records the forward pass over `rows` samples (`training`: dropout masks and BatchNorm's
    /// batch statistics; else dropout is the identity and BatchNorm uses its running ones).
    fn record_forward<'k>(
        &self,
        context: &LayerContext<'_, 'k>,
        program: &mut Program<'k>,
        io: &LayerIo<'_>,
        rows: usize,
        training: bool,
    );

    /// Records the backward pass over `rows` samples: the layer's parameter gradients into the
    /// gradient buffer, and its input gradient where `io` has one. Returns whether that input
    /// gradient has the derivative of `backward.below` applied.
    fn record_backward<'k>(
        &self,
        context: &LayerContext<'_, 'k>,
        program: &mut Program<'k>,
        io: &LayerIo<'_>,
        rows: usize,
        backward: Backward,
    ) -> bool;
}

/// A node of the plan as the training programs record it.
pub(crate) type DeviceLayer = Box<dyn DevicePasses>;

/// The largest buffer a layer keeps per sample besides its output, and what it is (a
/// convolution's patch matrix), for checking a batch against the adapter's limits.
pub(crate) fn scratch_per_sample(
    layer: &LayerSpec,
    input: Shape,
    matrix: Option<WeightMatrix>,
) -> Option<(&'static str, usize)> {
    match layer {
        LayerSpec::Conv2d { .. } => {
            let geometry = layer.geometry(input)?;
            Some((
                "patch matrix",
                conv2d::patch_floats_per_sample(&geometry, &matrix?),
            ))
        }
        _ => None,
    }
}

/// Node `index` of `plan` for batches of up to `batch` samples (`seed`: the run's, which keys
/// dropout masks): the one place that maps a layer kind to its passes.
pub(crate) fn device_layer(
    gpu: &Gpu,
    kernels: &Kernels,
    plan: &Plan,
    index: usize,
    batch: usize,
    seed: u64,
) -> Result<DeviceLayer> {
    let node = &plan.nodes[index];
    let input = plan.tensors[node.inputs[0]].shape;
    let layout = &plan.layout;
    let matrix = || {
        layout
            .of_layer(index)
            .expect("a layer with weights has a matrix")
    };
    let layer = match &node.op {
        Op::Add => return Ok(Box::new(residual::AddDevice::new(input))),
        Op::Layer(layer) => layer,
    };
    let geometry = || {
        layer
            .geometry(input)
            .expect("a planned layer fits its input")
    };
    Ok(match *layer {
        LayerSpec::Dense { activation, .. } => {
            Box::new(dense::DenseDevice::new(matrix(), activation))
        }
        LayerSpec::Conv2d { activation, .. } => Box::new(conv2d::ConvDevice::new(
            gpu,
            kernels,
            geometry(),
            matrix(),
            activation,
            batch,
        )?),
        LayerSpec::MaxPool2d { .. } => Box::new(pool::PoolDevice::new(gpu, geometry(), batch)?),
        LayerSpec::AvgPool2d { .. } | LayerSpec::GlobalAvgPool => {
            Box::new(avgpool::AvgPoolDevice::new(geometry()))
        }
        LayerSpec::BatchNorm => {
            let norm = layout.norms[index].expect("a BatchNorm has its tensors");
            let device = batchnorm::BatchNormDevice::new(gpu, input, norm, layout.trained)?;
            Box::new(device)
        }
        LayerSpec::Activation(activation) => Box::new(activation::ActivationDevice::new(
            input,
            LayerActivation::Hidden(activation),
        )),
        LayerSpec::Flatten => Box::new(flatten::FlattenDevice),
        LayerSpec::Dropout { rate } => Box::new(dropout::DropoutDevice::new(
            input,
            rate,
            dropout::dropout_layer_key(seed, index),
        )),
        LayerSpec::Residual(_) => unreachable!("the plan expands residual blocks"),
    })
}
