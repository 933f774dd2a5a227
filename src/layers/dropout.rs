//! Dropout (`shaders/dropout.wgsl`): inverted dropout in training, the identity in evaluation.
//!
//! Forward, x `[rows, features]` → y: in training y = x / (1 - rate) where a counter-based hash
//! of (layer key, step number, element) keeps the value, else 0; in evaluation y = x. Backward:
//! dx = the same mask and scale applied to dy (in evaluation dy itself), ⊙ below'(x). The mask is
//! recomputed, not stored, and depends on nothing but the seed, the step number and the element,
//! so a rerun and a resume draw the same masks.

use super::context::LayerContext;
use super::kind::{DeviceArgs, LayerKind, ReferenceBackward, ReferenceForward, TokenOptions};
use super::{Backward, DeviceLayer, DevicePasses, LayerIo};
use crate::error::Result;
use crate::gpu::buffers::grid_1d;
use crate::gpu::kernels::{FamilyModule, KernelFamily, ROW_WORKGROUP, Slot};
use crate::gpu::program::Program;
use crate::gpu::uniforms::StepParams;
use crate::gpu::{Gpu, Kernel, Kernels, ops};
use crate::reference;
use crate::rng::{dropout_layer_key, dropout_threshold};
use crate::shapes::{LayerActivation, Shape};

/// `DropoutShape` in dropout.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct DropoutShape {
    pub count: u32,
    /// A value is dropped where its hash is below this (rate · 2³²).
    pub threshold: u32,
    /// 1 / (1 - rate).
    pub scale: f32,
    pub layer_key: u32,
    /// Backward: the activation code of the layer beneath whose derivative is applied.
    pub derivative: u32,
    /// 0 in evaluation: the forward pass copies its input.
    pub training: u32,
    pub _pad: [u32; 2],
}

/// dropout.wgsl: the forward pass and its backward.
pub struct DropoutKernels {
    pub forward: Kernel,
    pub backward: Kernel,
}

impl KernelFamily for DropoutKernels {
    const SHADER: (&'static str, &'static str) =
        ("dropout.wgsl", crate::shader_source!("dropout.wgsl"));

    fn build(module: &FamilyModule<'_>) -> Self {
        use Slot::*;
        let forward = [(0, Read), (1, Params), (2, Read), (3, ReadWrite)];
        let backward = [(0, Read), (1, Params), (2, Read), (3, ReadWrite), (4, Read)];
        DropoutKernels {
            forward: module.kernel("dropout_forward", &forward),
            backward: module.kernel("dropout_backward", &backward),
        }
    }
}

/// A dropout layer in a training program.
pub(crate) struct DropoutDevice {
    features: usize,
    rate: f32,
    layer_key: u32,
}

impl DropoutDevice {
    pub fn new(input: Shape, rate: f32, layer_key: u32) -> Self {
        DropoutDevice {
            features: input.len(),
            rate,
            layer_key,
        }
    }

    fn shape(&self, rows: usize, training: bool, below: LayerActivation) -> DropoutShape {
        DropoutShape {
            count: (rows * self.features) as u32,
            threshold: dropout_threshold(self.rate),
            scale: 1.0 / (1.0 - self.rate),
            layer_key: self.layer_key,
            derivative: below.shader_code(),
            training: training as u32,
            _pad: [0; 2],
        }
    }

    fn grid(&self, context: &LayerContext<'_, '_>, rows: usize) -> [u32; 3] {
        let invocations = (rows * self.features).div_ceil(4);
        grid_1d(invocations, ROW_WORKGROUP, context.max_groups())
    }
}

impl DevicePasses for DropoutDevice {
    fn record_forward<'k>(
        &self,
        context: &LayerContext<'_, 'k>,
        program: &mut Program<'k>,
        io: &LayerIo<'_>,
        rows: usize,
        training: bool,
    ) {
        let shape = self.shape(rows, training, LayerActivation::Identity);
        let shape = context.gpu.params_with("dropout shape", &shape);
        let resources = [
            context.schedule.as_entire_binding(),
            shape.as_entire_binding(),
            io.input.buffer.as_entire_binding(),
            io.output.buffer.as_entire_binding(),
        ];
        let kernel = &context.kernels.family::<DropoutKernels>().forward;
        program.dispatch(context.gpu, kernel, &resources, self.grid(context, rows));
    }

    fn record_backward<'k>(
        &self,
        context: &LayerContext<'_, 'k>,
        program: &mut Program<'k>,
        io: &LayerIo<'_>,
        rows: usize,
        backward: Backward,
    ) -> bool {
        let Some(input_grad) = io.input_grad else {
            return false;
        };
        let shape = self.shape(rows, backward.training, backward.below);
        let shape = context.gpu.params_with("dropout shape", &shape);
        let resources = [
            context.schedule.as_entire_binding(),
            shape.as_entire_binding(),
            io.output_grad.buffer.as_entire_binding(),
            input_grad.buffer.as_entire_binding(),
            io.input.buffer.as_entire_binding(),
        ];
        let kernel = &context.kernels.family::<DropoutKernels>().backward;
        program.dispatch(context.gpu, kernel, &resources, self.grid(context, rows));
        true
    }
}

/// Dropout forward, CPU reference: x `[rows, features]` at training step `step` (None: evaluation).
pub fn reference_forward(x: &[f32], rate: f32, layer_key: u32, step: Option<u32>) -> Vec<f32> {
    match step {
        Some(step) => reference::dropout_forward(x, layer_key, step, rate),
        None => x.to_vec(),
    }
}

/// Dropout backward, CPU reference: dy → dx with the forward pass's mask and scale.
pub fn reference_backward(dy: &[f32], rate: f32, layer_key: u32, step: u32) -> Vec<f32> {
    reference::dropout_forward(dy, layer_key, step, rate)
}

/// dropout.wgsl run once on host data, for `selftest`, at training step `step` (0 with
/// `training` off): `dropout_forward` of x, or with `backward` = Some((x, below))
/// `dropout_backward` of the values as output gradients.
#[allow(clippy::too_many_arguments)]
pub fn gpu_pass(
    gpu: &Gpu,
    kernels: &Kernels,
    values: &[f32],
    rate: f32,
    layer_key: u32,
    step: u32,
    training: bool,
    backward: Option<(&[f32], LayerActivation)>,
) -> Result<Vec<f32>> {
    let schedule = ops::schedule(
        gpu,
        StepParams {
            number: step,
            ..StepParams::rows_at(0, 0)
        },
    )?;
    let below = backward.map_or(LayerActivation::Identity, |(_, below)| below);
    let shape = DropoutShape {
        count: values.len() as u32,
        threshold: dropout_threshold(rate),
        scale: 1.0 / (1.0 - rate),
        layer_key,
        derivative: below.shader_code(),
        training: training as u32,
        _pad: [0; 2],
    };
    let shape = gpu.params_with("shape", &shape);
    let input = gpu.storage_with("input", values)?;
    let out = gpu.storage_with("output", &vec![f32::NAN; values.len()])?;
    let mut resources = vec![
        schedule.as_entire_binding(),
        shape.as_entire_binding(),
        input.as_entire_binding(),
        out.as_entire_binding(),
    ];
    let below_buffer = backward
        .map(|(x, _)| gpu.storage_with("below", x))
        .transpose()?;
    let kernel = match &below_buffer {
        Some(buffer) => {
            resources.push(buffer.as_entire_binding());
            &kernels.family::<DropoutKernels>().backward
        }
        None => &kernels.family::<DropoutKernels>().forward,
    };
    let grid = ops::grid_of(gpu, values.len().div_ceil(4));
    ops::dispatch(gpu, kernel, &kernel.bind(gpu, &resources), grid);
    gpu.read_back(&out, values.len())
}

/// Dropout as `--layers` names it: `dropout<rate>`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dropout {
    pub rate: f32,
}

impl Dropout {
    /// The token as `--help` and the errors of `--layers` describe it.
    pub const SYNTAX: &'static str = "dropout<rate>";

    /// Reads `dropout<rate>`.
    pub fn parse(body: &str, options: &TokenOptions) -> Option<std::result::Result<Self, String>> {
        let rest = body.strip_prefix("dropout")?;
        Some((|| {
            let rate: f32 = rest
                .parse()
                .map_err(|_| "dropout needs a rate, e.g. dropout0.5".to_string())?;
            if !(0.0..1.0).contains(&rate) {
                return Err(format!(
                    "the dropout rate must be at least 0 and below 1, got {rate}"
                ));
            }
            options.plain(Dropout { rate })
        })())
    }
}

impl LayerKind for Dropout {
    fn token(&self) -> String {
        format!("dropout{}", self.rate)
    }

    fn output_shape(&self, input: Shape) -> std::result::Result<Shape, String> {
        Ok(input)
    }

    fn sizes_are_valid(&self) -> bool {
        (0.0..1.0).contains(&self.rate)
    }

    fn keeps_order(&self) -> bool {
        true
    }

    fn device(&self, args: &DeviceArgs<'_>) -> Result<DeviceLayer> {
        let key = dropout_layer_key(args.seed, args.node);
        Ok(Box::new(DropoutDevice::new(args.input, self.rate, key)))
    }

    fn reference_forward(&self, args: ReferenceForward<'_>) -> Vec<f32> {
        let key = args
            .training
            .map(|k| (dropout_layer_key(k.seed, args.node), k.step));
        let layer_key = key.map_or(0, |(layer_key, _)| layer_key);
        reference_forward(args.x, self.rate, layer_key, key.map(|(_, step)| step))
    }

    fn reference_backward(&self, args: ReferenceBackward<'_>) -> Option<Vec<f32>> {
        let Some(key) = args.training else {
            return Some(args.dz.to_vec());
        };
        let layer_key = dropout_layer_key(key.seed, args.node);
        Some(reference_backward(args.dz, self.rate, layer_key, key.step))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::uniforms::twins::{assert_twin, host_layout, step_layout};

    /// The host structs this kind writes have the layout of their WGSL twins.
    #[test]
    fn host_structs_have_the_layout_of_their_wgsl_twins() {
        let (name, source) = DropoutKernels::SHADER;
        assert_twin(name, source, "Step", step_layout());
        let shape = host_layout!(DropoutShape {
            count,
            threshold,
            scale,
            layer_key,
            derivative,
            training
        });
        assert_twin(name, source, "DropoutShape", shape);
    }
}
