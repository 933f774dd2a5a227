//! Global max pooling, `gmp` (`shaders/global_max_pool.wgsl`): Keras' GlobalMaxPooling2D,
//! PyTorch's `nn.AdaptiveMaxPool2d(1)` then `nn.Flatten()`. No parameters, so no tensors in a
//! model file.
//!
//! Forward, x `[rows, H, W, C]` → y `[rows, C]`, each channel's largest value over the image's
//! positions (the first of equal largest ones, row-major), and where it was (argmax `[rows, C]`),
//! kept for the backward pass. Backward, from dy `[rows, C]`, a gather: dx `[rows, H, W, C]`
//! is dy at each channel's argmax and 0 elsewhere.

use wgpu::Buffer;

use super::context::LayerContext;
use super::kind::{DeviceArgs, LayerKind, ReferenceBackward, ReferenceForward, TokenOptions};
use super::{BufferToBufferPasses, DeviceLayer};
use crate::error::Result;
use crate::gpu::buffers::grid_1d;
use crate::gpu::kernels::{FamilyModule, KernelFamily, ROW_WORKGROUP, Slot};
use crate::gpu::program::Program;
use crate::gpu::{Gpu, Kernel, Kernels, ops};
use crate::shapes::Shape;

/// `GlobalMaxPoolShape` in global_max_pool.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct GlobalMaxPoolShape {
    pub samples: u32,
    /// H · W.
    pub positions: u32,
    pub channels: u32,
    pub _pad: u32,
}

impl GlobalMaxPoolShape {
    pub fn new(samples: usize, input: Shape) -> Self {
        GlobalMaxPoolShape {
            samples: samples as u32,
            positions: (input.height * input.width) as u32,
            channels: input.channels as u32,
            _pad: 0,
        }
    }
}

/// global_max_pool.wgsl: the forward pass (maximum and argmax) and its gather backward.
pub struct GlobalMaxPoolKernels {
    pub forward: Kernel,
    pub backward: Kernel,
}

impl GlobalMaxPoolKernels {
    /// The kernel and grid of the forward pass (or the backward) over `rows` samples of `input`:
    /// an invocation per output value (per input value backward).
    pub fn launch(
        &self,
        forward: bool,
        input: Shape,
        rows: usize,
        max_groups: u32,
    ) -> (&Kernel, [u32; 3]) {
        let (kernel, values) = match forward {
            true => (&self.forward, rows * input.channels),
            false => (&self.backward, rows * input.len()),
        };
        (kernel, grid_1d(values, ROW_WORKGROUP, max_groups))
    }
}

impl KernelFamily for GlobalMaxPoolKernels {
    const SHADER: (&'static str, &'static str) = (
        "global_max_pool.wgsl",
        crate::shader_source!("global_max_pool.wgsl"),
    );

    fn build(module: &FamilyModule<'_>) -> Self {
        use Slot::*;
        GlobalMaxPoolKernels {
            forward: module.kernel(
                "global_max_pool_forward",
                &[(0, Params), (1, Read), (2, ReadWrite), (3, ReadWrite)],
            ),
            backward: module.kernel(
                "global_max_pool_backward",
                &[(0, Params), (1, Read), (2, ReadWrite), (3, Read)],
            ),
        }
    }
}

/// A global max pool in a training program, with where each channel's maximum was.
pub(crate) struct GlobalMaxPoolDevice {
    input: Shape,
    argmax: Buffer,
}

impl BufferToBufferPasses for GlobalMaxPoolDevice {
    fn record_pass<'k>(
        &self,
        context: &LayerContext<'_, 'k>,
        program: &mut Program<'k>,
        [from, to]: [&Buffer; 2],
        rows: usize,
        forward: bool,
    ) {
        let shape = GlobalMaxPoolShape::new(rows, self.input);
        let shape = context.gpu.params_with("global max pool shape", &shape);
        let resources = [
            shape.as_entire_binding(),
            from.as_entire_binding(),
            to.as_entire_binding(),
            self.argmax.as_entire_binding(),
        ];
        let kernels = context.kernels.family::<GlobalMaxPoolKernels>();
        let (kernel, grid) = kernels.launch(forward, self.input, rows, context.max_groups());
        program.dispatch(context.gpu, kernel, &resources, grid);
    }
}

/// Global max pooling forward, CPU reference: x `[rows, H, W, C]` → (y `[rows, C]`, argmax
/// `[rows, C]`), the positions taken in row-major order.
pub fn reference_forward(input: Shape, x: &[f32], rows: usize) -> (Vec<f32>, Vec<u32>) {
    let (positions, channels) = (input.height * input.width, input.channels);
    let mut y = Vec::with_capacity(rows * channels);
    let mut argmax = Vec::with_capacity(rows * channels);
    for n in 0..rows {
        let sample = &x[n * positions * channels..(n + 1) * positions * channels];
        for c in 0..channels {
            let mut best = (sample[c], 0);
            for p in 1..positions {
                let value = sample[p * channels + c];
                if value > best.0 {
                    best = (value, p as u32);
                }
            }
            y.push(best.0);
            argmax.push(best.1);
        }
    }
    (y, argmax)
}

/// Global max pooling backward, CPU reference: dy `[rows, C]` → dx `[rows, H, W, C]`, dy at
/// each channel's argmax (from the forward pass of x), 0 elsewhere.
pub fn reference_backward(input: Shape, x: &[f32], dy: &[f32], rows: usize) -> Vec<f32> {
    let (_, argmax) = reference_forward(input, x, rows);
    let channels = input.channels;
    let mut dx = vec![0.0; rows * input.len()];
    for (pooled, (&p, &grad)) in argmax.iter().zip(dy).enumerate() {
        let (n, c) = (pooled / channels, pooled % channels);
        dx[(n * input.height * input.width + p as usize) * channels + c] = grad;
    }
    dx
}

/// global_max_pool.wgsl run once on host data, for `selftest`: the forward pass of x
/// `[rows, H, W, C]` (y and argmax), then the backward pass of dy `[rows, C]` (dx).
pub fn gpu_passes(
    gpu: &Gpu,
    kernels: &Kernels,
    input: Shape,
    x: &[f32],
    dy: &[f32],
    rows: usize,
) -> Result<(Vec<f32>, Vec<u32>, Vec<f32>)> {
    let shape = gpu.params_with("shape", &GlobalMaxPoolShape::new(rows, input));
    let family = kernels.family::<GlobalMaxPoolKernels>();
    let pooled = rows * input.channels;
    let x = gpu.storage_with("x", x)?;
    let y = gpu.storage_with("y", &vec![f32::NAN; pooled])?;
    let argmax = gpu.storage_with("argmax", &vec![u32::MAX; pooled])?;
    let dy = gpu.storage_with("dy", dy)?;
    let dx = gpu.storage_with("dx", &vec![f32::NAN; rows * input.len()])?;
    for (forward, from, to) in [(true, &x, &y), (false, &dy, &dx)] {
        let (kernel, grid) = family.launch(forward, input, rows, ops::max_groups(gpu));
        let resources = [
            shape.as_entire_binding(),
            from.as_entire_binding(),
            to.as_entire_binding(),
            argmax.as_entire_binding(),
        ];
        ops::dispatch(gpu, kernel, &kernel.bind(gpu, &resources), grid);
    }
    Ok((
        gpu.read_back(&y, pooled)?,
        gpu.read_back(&argmax, pooled)?,
        gpu.read_back(&dx, rows * input.len())?,
    ))
}

/// Global max pooling as `--layers` names it: `gmp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobalMaxPool;

impl GlobalMaxPool {
    /// The token as `--help` and the errors of `--layers` describe it.
    pub const SYNTAX: &'static str = "gmp (global max pool)";

    /// Reads `gmp`.
    pub fn parse(body: &str, options: &TokenOptions) -> Option<std::result::Result<Self, String>> {
        (body == "gmp").then(|| options.plain(GlobalMaxPool))
    }
}

impl LayerKind for GlobalMaxPool {
    fn token(&self) -> String {
        "gmp".into()
    }

    fn output_shape(&self, input: Shape) -> std::result::Result<Shape, String> {
        Ok(Shape::flat(input.channels))
    }

    fn combines_positions(&self) -> bool {
        true
    }

    fn scratch_per_sample(
        &self,
        input: Shape,
        _matrix: Option<crate::shapes::WeightMatrix>,
    ) -> Option<(&'static str, usize)> {
        Some(("global max pool argmax", input.channels * 4))
    }

    fn device(&self, args: &DeviceArgs<'_>) -> Result<DeviceLayer> {
        let bytes = (args.batch * args.input.channels * 4) as u64;
        Ok(Box::new(GlobalMaxPoolDevice {
            input: args.input,
            argmax: args.gpu.storage_buffer("global max pool argmax", bytes)?,
        }))
    }

    fn reference_forward(&self, args: ReferenceForward<'_>) -> Vec<f32> {
        reference_forward(args.input, args.x, args.rows).0
    }

    fn reference_backward(&self, args: ReferenceBackward<'_>) -> Option<Vec<f32>> {
        Some(reference_backward(args.input, args.x, args.dz, args.rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::uniforms::twins::{assert_twin, host_layout};

    /// The host struct this kind writes has the layout of its WGSL twin.
    #[test]
    fn host_structs_have_the_layout_of_their_wgsl_twins() {
        let (name, source) = GlobalMaxPoolKernels::SHADER;
        let shape = host_layout!(GlobalMaxPoolShape {
            samples,
            positions,
            channels
        });
        assert_twin(name, source, "GlobalMaxPoolShape", shape);
    }

    /// The first of equal maxima wins, and the gradient goes to it alone.
    #[test]
    fn reference_takes_the_first_largest_value() {
        let input = Shape::image(2, 1, 3);
        // Positions 0, 1, 2 of channels 0 and 1; channel 0's maximum 5 at 1 and 2.
        let x = [1.0, -4.0, 5.0, -2.0, 5.0, -3.0];
        let (y, argmax) = reference_forward(input, &x, 1);
        assert_eq!((y, argmax), (vec![5.0, -2.0], vec![1, 1]));
        let dx = reference_backward(input, &x, &[0.5, -1.0], 1);
        assert_eq!(dx, [0.0, 0.0, 0.5, -1.0, 0.0, 0.0]);
    }
}
