//! The layers of a model, one file per kind: what it is (`kind::LayerKind`: its token, shapes,
//! parameters, PyTorch tensors), the dispatches of its forward and backward passes on the GPU
//! (`DevicePasses`, recorded through a `LayerContext`), and its CPU reference forward and
//! backward. The trainer (`crate::train`) walks the plan's nodes (`crate::model::Plan`) and
//! knows none of their insides; a layer knows its own tensors, its slice of the flat parameter
//! buffer (its `WeightMatrix`, or a BatchNorm's `NormParams`) and the kernels it records.
//!
//! Every tensor is a batch of samples stored channels-last (`crate::shapes`), so a layer's
//! output buffer is the next layer's input without any reordering.

pub mod activation;
pub mod avgpool;
pub mod batchnorm;
pub(crate) mod context;
pub mod conv2d;
pub mod dense;
pub mod dropout;
pub mod flatten;
pub mod global_max_pool;
pub mod kind;
pub mod pool;
pub mod residual;

use wgpu::Buffer;

use crate::error::Result;
use crate::gpu::program::Program;
use crate::gpu::{Gpu, Kernels, MatmulOperand, TextureMirror};
use crate::shapes::{Geometry, LayerActivation, Padding, Shape};
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

    /// A tensor holding `values`, for a kernel's run on host data: with its mirror, refreshed,
    /// where `mirrored`.
    pub fn from_host(gpu: &Gpu, what: &str, values: &[f32], mirrored: bool) -> Result<Self> {
        let buffer = gpu.storage_with(what, values)?;
        let mirror = mirrored
            .then(|| TextureMirror::new(gpu, what, &buffer))
            .flatten();
        if let Some(mirror) = &mirror {
            mirror.refresh_now(gpu);
        }
        Ok(DeviceTensor { buffer, mirror })
    }

    pub fn operand(&self) -> MatmulOperand<'_> {
        MatmulOperand::new(&self.buffer, self.mirror.as_ref())
    }

    /// The tensor as a kernel reading it binds it: its mirror where `mirrored` (decided only for
    /// tensors that have one: `read_from_mirrors`), else its buffer.
    pub fn read_binding(&self, mirrored: bool) -> wgpu::BindingResource<'_> {
        debug_assert!(
            !mirrored || self.mirror.is_some(),
            "a mirror read of a tensor without one"
        );
        match (mirrored, &self.mirror) {
            (true, Some(mirror)) => wgpu::BindingResource::TextureView(&mirror.view),
            _ => self.buffer.as_entire_binding(),
        }
    }
}

/// Whether a pass reads `operands` (each with the bytes it reads of it) from their texture
/// mirrors: where `eligible` (its kernels have a mirror form for the shape) and every one has a
/// mirror, which `program` then refreshes for those bytes before the pass.
pub(crate) fn read_from_mirrors(
    program: &mut Program<'_>,
    eligible: bool,
    operands: &[(&DeviceTensor, usize)],
) -> bool {
    let mirrored = eligible && operands.iter().all(|(tensor, _)| tensor.mirror.is_some());
    for (tensor, bytes) in operands.iter().filter(|_| mirrored) {
        if let Some(mirror) = &tensor.mirror {
            program.refresh(mirror, *bytes as u64);
        }
    }
    mirrored
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
    /// Whether the node is the dense layer reading the gathered batch itself whose weight
    /// gradient may use the transposed batch (`Plan::batch_dense_node`).
    pub is_batch_dense: bool,
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
    /// Whether this is a training step's backward pass. Else (an explanation's: the gradient of
    /// a class score in evaluation) dropout passes gradients through unchanged, BatchNorm's are
    /// those of its normalisation by the running statistics, and no layer computes its
    /// parameters' gradients (nothing updates them).
    pub training: bool,
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

/// A layer whose passes are one dispatch each, from one buffer into another: forward from its
/// input into its output, backward from its output's gradient into its input's (average
/// pooling, global max pooling). Its backward applies no derivative of the layer below.
pub(crate) trait BufferToBufferPasses {
    /// Records the pass (`forward`, else backward) over `rows` samples from `from` into `to`.
    fn record_pass<'k>(
        &self,
        context: &LayerContext<'_, 'k>,
        program: &mut Program<'k>,
        from_to: [&Buffer; 2],
        rows: usize,
        forward: bool,
    );
}

impl<T: BufferToBufferPasses> DevicePasses for T {
    fn record_forward<'k>(
        &self,
        context: &LayerContext<'_, 'k>,
        program: &mut Program<'k>,
        io: &LayerIo<'_>,
        rows: usize,
        _training: bool,
    ) {
        let from_to = [&io.input.buffer, &io.output.buffer];
        self.record_pass(context, program, from_to, rows, true);
    }

    fn record_backward<'k>(
        &self,
        context: &LayerContext<'_, 'k>,
        program: &mut Program<'k>,
        io: &LayerIo<'_>,
        rows: usize,
        _backward: Backward,
    ) -> bool {
        if let Some(input_grad) = io.input_grad {
            let from_to = [&io.output_grad.buffer, &input_grad.buffer];
            self.record_pass(context, program, from_to, rows, false);
        }
        false
    }
}

/// A node of the plan as the training programs record it.
pub(crate) type DeviceLayer = Box<dyn DevicePasses>;

/// A token's leading decimal number and the rest.
pub(crate) fn leading_number(text: &str) -> Option<(usize, &str)> {
    let digits = text.len() - text.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let value = text[..digits].parse().ok()?;
    Some((value, &text[digits..]))
}

/// `value`, or why it is not at least 1.
pub(crate) fn positive(what: &str, value: usize) -> std::result::Result<usize, String> {
    match value {
        0 => Err(format!("{what} must be at least 1")),
        _ => Ok(value),
    }
}

/// Where value `index` of a flat tensor, numbered as PyTorch's `nn.Flatten` numbers a
/// C × H × W tensor (channel, row, column), sits in ours (row, column, channel), where the flat
/// tensor was flattened from `image`.
pub(crate) fn channels_last_index(image: Option<Shape>, index: usize) -> usize {
    match image {
        Some(s) => {
            let (c, pixel) = (index / (s.height * s.width), index % (s.height * s.width));
            pixel * s.channels + c
        }
        None => index,
    }
}

/// A pool's windows: `size` × `size`, `stride` apart, 'valid' (max and average pools share them).
pub(crate) struct PoolWindows {
    pub size: usize,
    pub stride: usize,
}

impl PoolWindows {
    /// The pool's token: `<name><size>`, and `s<stride>` where the stride is not the size.
    pub fn token(&self, name: &str) -> String {
        match self.stride == self.size {
            true => format!("{name}{}", self.size),
            false => format!("{name}{}s{}", self.size, self.stride),
        }
    }

    pub fn geometry(&self, input: Shape) -> Option<Geometry> {
        Geometry::square(
            input,
            input.channels,
            self.size,
            self.stride,
            Padding::Valid,
        )
    }

    pub fn output_shape(&self, input: Shape) -> std::result::Result<Shape, String> {
        let size = self.size;
        let geometry = self
            .geometry(input)
            .ok_or_else(|| format!("its {size}×{size} pool is larger than its input, {input}"))?;
        Ok(geometry.output)
    }

    pub fn sizes_are_valid(&self) -> bool {
        self.size > 0 && self.stride > 0
    }
}

/// A pool's size and stride from the text after its name.
pub(crate) fn pool_size(kind: &str, rest: &str) -> std::result::Result<(usize, usize), String> {
    let (size, rest) =
        leading_number(rest).ok_or_else(|| format!("{kind} needs a size, e.g. {kind}2"))?;
    let size = positive("the pool size", size)?;
    let stride = match rest {
        "" => size,
        _ => match rest.strip_prefix('s').and_then(leading_number) {
            Some((stride, "")) => positive("the stride", stride)?,
            _ => return Err(format!("unexpected {rest:?} (a stride is s<n>)")),
        },
    };
    Ok((size, stride))
}
