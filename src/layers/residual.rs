//! A residual block's sum (`shaders/elementwise.wgsl` `add`): the node that ends a block.
//!
//! Forward, a and b `[rows, features]` (the branch's and the shortcut's outputs) → y = a + b.
//! Backward: da = db = dy. The trainer routes that gradient (`train::context`): each input's
//! gradient is dy's buffer itself where nothing changes it in place, else a copy, and a tensor
//! with several consumers gets the sum of their gradients in the consumers' order.

use super::context::LayerContext;
use super::{Backward, DevicePasses, LayerIo};
use crate::gpu::program::Program;
use crate::shapes::{LayerActivation, Shape};

/// A residual sum in a training program.
pub(crate) struct AddDevice {
    features: usize,
}

impl AddDevice {
    pub fn new(output: Shape) -> Self {
        AddDevice {
            features: output.len(),
        }
    }
}

impl DevicePasses for AddDevice {
    fn record_forward<'k>(
        &self,
        context: &LayerContext<'_, 'k>,
        program: &mut Program<'k>,
        io: &LayerIo<'_>,
        rows: usize,
        _training: bool,
    ) {
        let second = io.second_input.expect("a residual sum has two inputs");
        context.elementwise(
            program,
            |k| &k.add,
            rows * self.features,
            LayerActivation::Identity,
            [Some(io.input), Some(second)],
            &io.output.buffer,
        );
    }

    fn record_backward<'k>(
        &self,
        _context: &LayerContext<'_, 'k>,
        _program: &mut Program<'k>,
        _io: &LayerIo<'_>,
        _rows: usize,
        _backward: Backward,
    ) -> bool {
        // The trainer routes a residual sum's gradient to its inputs.
        false
    }
}

/// Residual sum, CPU reference: a + b, element by element (also the sum of two gradients).
pub fn reference_forward(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(&a, &b)| a + b).collect()
}
