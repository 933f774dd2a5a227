//! Flatten: C × H × W as a vector of C·H·W. Tensors are channels-last, so nothing moves: its
//! output is its input's buffer and its input gradient its output gradient's (the trainer shares
//! them), and it records nothing. PyTorch's `nn.Flatten` numbers the values (channel, row,
//! column), which the dense layer after it accounts for in model files.

use super::context::LayerContext;
use super::{Backward, DevicePasses, LayerIo};
use crate::gpu::program::Program;

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
