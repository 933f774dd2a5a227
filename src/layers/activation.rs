//! An activation as a layer of its own (`relu`, `sigmoid`, `tanh`; `shaders/elementwise.wgsl`).
//!
//! Forward, x `[rows, features]` → y = f(x). Backward, from dy: dx = dy ⊙ f'(y), with f' taken
//! from the output as every activation's backward pass here does.

use super::context::LayerContext;
use super::kind::{DeviceArgs, LayerKind, ReferenceBackward, ReferenceForward, TokenOptions};
use super::{Backward, DeviceLayer, DevicePasses, LayerIo};
use crate::error::Result;
use crate::gpu::kernels::ElementwiseKernels;
use crate::gpu::program::Program;
use crate::gpu::uniforms::ElementwiseShape;
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

    fn shape(&self, context: &LayerContext<'_, '_>, rows: usize) -> (wgpu::Buffer, [u32; 3]) {
        let count = rows * self.features;
        let shape = ElementwiseShape {
            count: count as u32,
            activation: self.activation.shader_code(),
            _pad: [0; 2],
        };
        let grid = ElementwiseKernels::grid(count, context.max_groups());
        (context.gpu.params_with("activation shape", &shape), grid)
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
        let (shape, grid) = self.shape(context, rows);
        let resources = [
            shape.as_entire_binding(),
            io.input.buffer.as_entire_binding(),
            io.output.buffer.as_entire_binding(),
        ];
        let kernel = &context.kernels.elementwise().activate;
        program.dispatch(context.gpu, kernel, &resources, grid);
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
        let (shape, grid) = self.shape(context, rows);
        let resources = [
            shape.as_entire_binding(),
            io.output_grad.buffer.as_entire_binding(),
            io.output.buffer.as_entire_binding(),
            input_grad.buffer.as_entire_binding(),
        ];
        let kernel = &context.kernels.elementwise().activation_derivative;
        program.dispatch(context.gpu, kernel, &resources, grid);
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
