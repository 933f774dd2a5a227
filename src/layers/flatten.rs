//! Flatten: C × H × W as a vector of C·H·W. Tensors are channels-last, so nothing moves: its
//! output is its input's buffer and its input gradient its output gradient's (the trainer shares
//! them), and it records nothing. PyTorch's `nn.Flatten` numbers the values (channel, row,
//! column), which the dense layer after it accounts for in model files.

use super::context::LayerContext;
use super::kind::{DeviceArgs, LayerKind, ReferenceBackward, ReferenceForward, TokenOptions};
use super::{Backward, DeviceLayer, DevicePasses, LayerIo};
use crate::error::Result;
use crate::gpu::program::Program;
use crate::shapes::Shape;

/// A Flatten in a training program.
pub(crate) struct FlattenDevice;

impl DevicePasses for FlattenDevice {
    fn record_forward<'k>(
        &self,
        _context: &LayerContext<'_, 'k>,
        _program: &mut Program<'k>,
        _io: &LayerIo<'_>,
        _rows: usize,
        _training: bool,
    ) {
    }

    /// Its input gradient is its output gradient: whatever was applied to it stays applied.
    fn record_backward<'k>(
        &self,
        _context: &LayerContext<'_, 'k>,
        _program: &mut Program<'k>,
        _io: &LayerIo<'_>,
        _rows: usize,
        backward: Backward,
    ) -> bool {
        backward.derivative_applied
    }
}

/// Flatten as `--layers` names it: `flatten`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flatten;

impl Flatten {
    /// The token as `--help` and the errors of `--layers` describe it.
    pub const SYNTAX: &'static str = "flatten";

    /// Reads `flatten`.
    pub fn parse(body: &str, options: &TokenOptions) -> Option<std::result::Result<Self, String>> {
        (body == "flatten").then(|| options.plain(Flatten))
    }
}

impl LayerKind for Flatten {
    fn combines_positions(&self) -> bool {
        true
    }

    fn token(&self) -> String {
        "flatten".into()
    }

    fn output_shape(&self, input: Shape) -> std::result::Result<Shape, String> {
        Ok(Shape::flat(input.len()))
    }

    fn moves_nothing(&self) -> bool {
        true
    }

    fn device(&self, _args: &DeviceArgs<'_>) -> Result<DeviceLayer> {
        Ok(Box::new(FlattenDevice))
    }

    fn reference_forward(&self, args: ReferenceForward<'_>) -> Vec<f32> {
        args.x.to_vec()
    }

    fn reference_backward(&self, args: ReferenceBackward<'_>) -> Option<Vec<f32>> {
        Some(args.dz.to_vec())
    }
}
