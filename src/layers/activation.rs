//! An activation as a layer of its own (`relu`, `sigmoid`, `tanh`; `shaders/elementwise.wgsl`).
//!
//! Forward, x `[rows, features]` → y = f(x). Backward, from dy: dx = dy ⊙ f'(y), with f' taken
//! from the output as every activation's backward pass here does.

use super::context::LayerContext;
use super::kind::{DeviceArgs, LayerKind, ReferenceBackward, ReferenceForward, TokenOptions};
use super::{Backward, DeviceLayer, DevicePasses, LayerIo};
use crate::error::Result;
use crate::gpu::program::Program;
use crate::shapes::{Activation, LayerActivation, Shape};

/// An activation layer in a training program.
pub(crate) struct ActivationDevice {
    features: usize,
    activation: LayerActivation,
}

impl ActivationDevice {
    pub fn new(input: Shape, activation: LayerActivation) -> Self {
        ActivationDevice {
            features: input.len(),
            activation,
        }
    }
}

impl DevicePasses for ActivationDevice {
    fn record_forward<'k>(
        &self,
        context: &LayerContext<'_, 'k>,
        program: &mut Program<'k>,
        io: &LayerIo<'_>,
        rows: usize,
        _training: bool,
    ) {
        context.elementwise(
            program,
            |k| &k.activate,
            rows * self.features,
            self.activation,
            [Some(io.input), None],
            &io.output.buffer,
        );
    }

    fn record_backward<'k>(
        &self,
        context: &LayerContext<'_, 'k>,
        program: &mut Program<'k>,
        io: &LayerIo<'_>,
        rows: usize,
        _backward: Backward,
    ) -> bool {
        let Some(input_grad) = io.input_grad else {
            return false;
        };
        context.elementwise(
            program,
            |k| &k.activation_derivative,
            rows * self.features,
            self.activation,
            [Some(io.output_grad), Some(io.output)],
            &input_grad.buffer,
        );
        false
    }
}

/// Activation forward, CPU reference: x `[rows, features]` → f(x).
pub fn reference_forward(activation: LayerActivation, x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| activation.apply(v)).collect()
}

/// Activation backward, CPU reference: from y = f(x) and dy `[rows, features]`, dx = dy ⊙ f'(y).
pub fn reference_backward(activation: LayerActivation, y: &[f32], dy: &[f32]) -> Vec<f32> {
    (dy.iter().zip(y))
        .map(|(&g, &a)| g * activation.derivative_from_output(a))
        .collect()
}

/// An activation as a layer: `relu`, `sigmoid` or `tanh`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActivationLayer(pub Activation);

impl ActivationLayer {
    /// The token as `--help` and the errors of `--layers` describe it.
    pub const SYNTAX: &'static str = "relu, sigmoid, tanh";

    /// Reads `relu`, `sigmoid` or `tanh`.
    pub fn parse(body: &str, options: &TokenOptions) -> Option<std::result::Result<Self, String>> {
        let activation = match LayerActivation::from_name(body)? {
            LayerActivation::Hidden(activation) => activation,
            LayerActivation::Identity => return None,
        };
        Some(options.plain(ActivationLayer(activation)))
    }

    fn function(&self) -> LayerActivation {
        LayerActivation::Hidden(self.0)
    }
}

impl LayerKind for ActivationLayer {
    fn token(&self) -> String {
        self.function().name().into()
    }

    fn output_shape(&self, input: Shape) -> std::result::Result<Shape, String> {
        Ok(input)
    }

    /// Each value stays in its place: a dense layer after it still reads a Flatten's order.
    fn keeps_order(&self) -> bool {
        true
    }

    fn device(&self, args: &DeviceArgs<'_>) -> Result<DeviceLayer> {
        Ok(Box::new(ActivationDevice::new(args.input, self.function())))
    }

    fn reference_forward(&self, args: ReferenceForward<'_>) -> Vec<f32> {
        reference_forward(self.function(), args.x)
    }

    fn reference_backward(&self, args: ReferenceBackward<'_>) -> Option<Vec<f32>> {
        Some(reference_backward(self.function(), args.y, args.dz))
    }
}
