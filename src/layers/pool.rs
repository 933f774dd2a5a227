//! MaxPool2D (`shaders/pool.wgsl`), 'valid' windows.
//!
//! Forward, x `[rows, H, W, C]` → y `[rows, OH, OW, C]`, each the maximum of its window, and the
//! argmax of each (its offset in the window), kept for the backward pass. Backward, from dy, a
//! gather: dx at each input the sum of dy over the windows it won, ⊙ below'(x).

use wgpu::Buffer;

use super::context::LayerContext;
use super::kind::{DeviceArgs, LayerKind, ReferenceBackward, ReferenceForward, TokenOptions};
use super::{
    Backward, DeviceLayer, DevicePasses, DeviceTensor, LayerIo, PoolWindows, pool_size,
    read_from_mirrors,
};
use crate::error::Result;
use crate::gpu::buffers::grid_1d;
use crate::gpu::kernels::{FamilyModule, KernelFamily, ROW_WORKGROUP, Slot};
use crate::gpu::program::Program;
use crate::gpu::{Gpu, Kernel, Kernels, ops};
use crate::reference;
use crate::shapes::{Geometry, LayerActivation, Shape};

/// `PoolShape` in pool.wgsl and avgpool.wgsl (shaders/shared/pool_shape.wgsl).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PoolShape {
    pub samples: u32,
    pub in_height: u32,
    pub in_width: u32,
    pub channels: u32,
    pub out_height: u32,
    pub out_width: u32,
    pub size_y: u32,
    pub size_x: u32,
    pub stride_y: u32,
    pub stride_x: u32,
    /// Backward: the activation code of the layer beneath whose derivative is applied.
    pub derivative: u32,
    pub _pad: u32,
}

impl PoolShape {
    /// The shape of `samples` samples through `geometry`'s windows; `derivative`: the activation
    /// of the layer beneath, whose derivative a max pool's backward applies.
    pub fn new(samples: usize, geometry: &Geometry, derivative: LayerActivation) -> Self {
        let (rows, cols) = (geometry.rows, geometry.columns);
        PoolShape {
            samples: samples as u32,
            in_height: rows.input as u32,
            in_width: cols.input as u32,
            channels: geometry.input.channels as u32,
            out_height: rows.output as u32,
            out_width: cols.output as u32,
            size_y: rows.size as u32,
            size_x: cols.size as u32,
            stride_y: rows.stride as u32,
            stride_x: cols.stride as u32,
            derivative: derivative.shader_code(),
            _pad: 0,
        }
    }
}

/// pool.wgsl: max pooling and its gather backward, per channel and four channels at a time.
pub struct PoolKernels {
    pub forward: Kernel,
    pub backward: Kernel,
    pub quads: PoolQuadKernels,
}

/// The four-channel kernels of pool.wgsl, reading buffers, or their mirrors (`PoolMirrorKernels`).
pub struct PoolQuadKernels {
    pub forward: Kernel,
    pub backward: Kernel,
    pub backward_tiles: Kernel,
}

/// pool_mirrors.wgsl (pool.wgsl with the feature `mirrors`): the four-channel kernels reading
/// X (forward), dY and the derivative's operand (backward) from their texture mirrors, for the
/// adapters whose products read mirrors (lavapipe, which loads a buffer lane by lane and
/// fetches texels as vectors).
pub struct PoolMirrorKernels(pub PoolQuadKernels);

impl PoolQuadKernels {
    /// The module's _quads entry points, binding 1 and 4 as `operands` (buffers or mirrors).
    fn build(module: &FamilyModule<'_>, operands: Slot) -> Self {
        use Slot::*;
        let forward = [(0, Params), (1, operands), (2, ReadWrite), (3, ReadWrite)];
        let backward = [
            (0, Params),
            (1, operands),
            (2, ReadWrite),
            (3, Read),
            (4, operands),
        ];
        PoolQuadKernels {
            forward: module.kernel("maxpool_forward_quads", &forward),
            backward: module.kernel("maxpool_backward_quads", &backward),
            backward_tiles: module.kernel("maxpool_backward_tiles_quads", &backward),
        }
    }
}

impl PoolKernels {
    /// The forward kernel for `geometry` and its invocations over `samples` samples
    /// (`mirror_kernels`' where given and the channels come in fours).
    pub fn forward_for<'k>(
        &'k self,
        mirror_kernels: Option<&'k PoolMirrorKernels>,
        geometry: &Geometry,
        samples: usize,
    ) -> (&'k Kernel, usize) {
        let values = samples * geometry.output.len();
        match geometry.input.channels % 4 {
            0 => (&self.quads_from(mirror_kernels).forward, values / 4),
            _ => (&self.forward, values),
        }
    }

    /// The backward kernel for `geometry` over `samples` samples: where the channels come in
    /// fours and the windows tile the input, one invocation per window's quad of channels,
    /// reading the derivative below at the pool's output; otherwise one per input value (or
    /// quad), reading it at the pool's input. `mirror_kernels`' where given and the channels
    /// come in fours.
    pub fn backward_for<'k>(
        &'k self,
        mirror_kernels: Option<&'k PoolMirrorKernels>,
        geometry: &Geometry,
        samples: usize,
    ) -> PoolBackward<'k> {
        let tiles = geometry.rows.stride == geometry.rows.size
            && geometry.columns.stride == geometry.columns.size;
        let quads = self.quads_from(mirror_kernels);
        let (kernel, invocations, reads_output) = match (geometry.input.channels % 4, tiles) {
            (0, true) => (
                &quads.backward_tiles,
                samples * geometry.output.len() / 4,
                true,
            ),
            (0, false) => (&quads.backward, samples * geometry.input.len() / 4, false),
            _ => (&self.backward, samples * geometry.input.len(), false),
        };
        PoolBackward {
            kernel,
            invocations,
            reads_output,
        }
    }

    fn quads_from<'k>(
        &'k self,
        mirror_kernels: Option<&'k PoolMirrorKernels>,
    ) -> &'k PoolQuadKernels {
        mirror_kernels.map_or(&self.quads, |mirror_kernels| &mirror_kernels.0)
    }
}

/// A max pool's backward dispatch (`PoolKernels::backward_for`).
pub struct PoolBackward<'k> {
    pub kernel: &'k Kernel,
    pub invocations: usize,
    /// Whether the kernel's `below` binding takes the pool's output (each window's maximum, the
    /// one value of a window whose derivative counts) rather than its input.
    pub reads_output: bool,
}

impl KernelFamily for PoolKernels {
    const SHADER: (&'static str, &'static str) = ("pool.wgsl", crate::shader_source!("pool.wgsl"));

    fn build(module: &FamilyModule<'_>) -> Self {
        use Slot::*;
        let forward = [(0, Params), (1, Read), (2, ReadWrite), (3, ReadWrite)];
        let backward = [(0, Params), (1, Read), (2, ReadWrite), (3, Read), (4, Read)];
        PoolKernels {
            forward: module.kernel("maxpool_forward", &forward),
            backward: module.kernel("maxpool_backward", &backward),
            quads: PoolQuadKernels::build(module, Read),
        }
    }
}

impl KernelFamily for PoolMirrorKernels {
    const SHADER: (&'static str, &'static str) = (
        "pool_mirrors.wgsl",
        crate::shader_source!("pool_mirrors.wgsl"),
    );

    fn build(module: &FamilyModule<'_>) -> Self {
        PoolMirrorKernels(PoolQuadKernels::build(module, Slot::Mirror))
    }
}

/// A max pool in a training program, with where each output's maximum was.
pub(crate) struct PoolDevice {
    geometry: Geometry,
    argmax: Buffer,
}

impl PoolDevice {
    pub fn new(gpu: &Gpu, geometry: Geometry, batch: usize) -> Result<Self> {
        let bytes = (batch * geometry.output.len() * 4) as u64;
        Ok(PoolDevice {
            argmax: gpu.storage_buffer("pool argmax", bytes)?,
            geometry,
        })
    }
}

impl PoolDevice {
    /// The mirror kernels where the channels come in fours and every one of `operands` (with
    /// the bytes a pass reads of it) has a mirror, which are then refreshed; else `None`.
    fn mirror_kernels<'k>(
        &self,
        context: &LayerContext<'_, 'k>,
        program: &mut Program<'k>,
        operands: &[(&DeviceTensor, usize)],
    ) -> Option<&'k PoolMirrorKernels> {
        let eligible = self.geometry.input.channels.is_multiple_of(4);
        let mirrored = read_from_mirrors(program, eligible, operands);
        mirrored.then(|| context.kernels.family::<PoolMirrorKernels>())
    }
}

impl DevicePasses for PoolDevice {
    fn record_forward<'k>(
        &self,
        context: &LayerContext<'_, 'k>,
        program: &mut Program<'k>,
        io: &LayerIo<'_>,
        rows: usize,
        _training: bool,
    ) {
        let g = &self.geometry;
        let shape = context.gpu.params_with(
            "pool shape",
            &PoolShape::new(rows, g, LayerActivation::Identity),
        );
        let input_bytes = rows * g.input.len() * 4;
        let mirror_kernels = self.mirror_kernels(context, program, &[(io.input, input_bytes)]);
        let resources = [
            shape.as_entire_binding(),
            io.input.read_binding(mirror_kernels.is_some()),
            io.output.buffer.as_entire_binding(),
            self.argmax.as_entire_binding(),
        ];
        let kernels = context.kernels.family::<PoolKernels>();
        let (kernel, invocations) = kernels.forward_for(mirror_kernels, g, rows);
        let grid = grid_1d(invocations, ROW_WORKGROUP, context.max_groups());
        program.dispatch(context.gpu, kernel, &resources, grid);
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
        let g = &self.geometry;
        let shape = context
            .gpu
            .params_with("pool shape", &PoolShape::new(rows, g, backward.below));
        let kernels = context.kernels.family::<PoolKernels>();
        // Which tensor the derivative is read at does not depend on the form.
        let below = match kernels.backward_for(None, g, rows).reads_output {
            true => (io.output, rows * g.output.len() * 4),
            false => (io.input, rows * g.input.len() * 4),
        };
        let dy = (io.output_grad, rows * g.output.len() * 4);
        let mirror_kernels = self.mirror_kernels(context, program, &[dy, below]);
        let chosen = kernels.backward_for(mirror_kernels, g, rows);
        let resources = [
            shape.as_entire_binding(),
            io.output_grad.read_binding(mirror_kernels.is_some()),
            input_grad.buffer.as_entire_binding(),
            self.argmax.as_entire_binding(),
            below.0.read_binding(mirror_kernels.is_some()),
        ];
        let grid = grid_1d(chosen.invocations, ROW_WORKGROUP, context.max_groups());
        program.dispatch(context.gpu, chosen.kernel, &resources, grid);
        true
    }
}

/// MaxPool2D forward, CPU reference: x `[rows, H, W, C]` → (y `[rows, OH, OW, C]`, argmax).
pub fn reference_forward(geometry: &Geometry, x: &[f32], rows: usize) -> (Vec<f32>, Vec<u32>) {
    reference::maxpool_forward(x, rows, geometry)
}

/// MaxPool2D backward, CPU reference: dy `[rows, OH, OW, C]` → dx `[rows, H, W, C]`.
pub fn reference_backward(geometry: &Geometry, x: &[f32], dy: &[f32], rows: usize) -> Vec<f32> {
    let (_, argmax) = reference::maxpool_forward(x, rows, geometry);
    reference::maxpool_backward(dy, &argmax, rows, geometry, x, LayerActivation::Identity)
}

/// pool.wgsl `maxpool_forward` (`_quads` where the channels come in fours; from mirrors where
/// `mirrored`) run once on host data, for `selftest`: (y, argmax).
pub fn gpu_forward(
    gpu: &Gpu,
    kernels: &Kernels,
    x: &[f32],
    rows: usize,
    geometry: &Geometry,
    mirrored: bool,
) -> Result<(Vec<f32>, Vec<u32>)> {
    let shape = PoolShape::new(rows, geometry, LayerActivation::Identity);
    let shape = gpu.params_with("shape", &shape);
    // Only the four-channel kernels have a mirror form.
    let mirrored = mirrored && geometry.input.channels.is_multiple_of(4);
    let x_tensor = DeviceTensor::from_host(gpu, "x", x, mirrored)?;
    let len = rows * geometry.output.len();
    let y = gpu.storage_with("y", &vec![f32::NAN; len])?;
    let argmax = gpu.storage_with("argmax", &vec![u32::MAX; len])?;
    let mirror_kernels = mirrored.then(|| kernels.family::<PoolMirrorKernels>());
    let family = kernels.family::<PoolKernels>();
    let (kernel, invocations) = family.forward_for(mirror_kernels, geometry, rows);
    let resources = [
        shape.as_entire_binding(),
        x_tensor.read_binding(mirror_kernels.is_some()),
        y.as_entire_binding(),
        argmax.as_entire_binding(),
    ];
    let grid = ops::grid_of(gpu, invocations);
    ops::dispatch(gpu, kernel, &kernel.bind(gpu, &resources), grid);
    Ok((gpu.read_back(&y, len)?, gpu.read_back(&argmax, len)?))
}

/// pool.wgsl `maxpool_backward` (`_quads` where the channels come in fours; from mirrors where
/// `mirrored`): the input gradient, times below'(x).
#[allow(clippy::too_many_arguments)]
pub fn gpu_backward(
    gpu: &Gpu,
    kernels: &Kernels,
    output_grads: &[f32],
    argmax: &[u32],
    rows: usize,
    geometry: &Geometry,
    x: &[f32],
    below: LayerActivation,
    mirrored: bool,
) -> Result<Vec<f32>> {
    let shape = gpu.params_with("shape", &PoolShape::new(rows, geometry, below));
    // Only the four-channel kernels have a mirror form.
    let mirrored = mirrored && geometry.input.channels.is_multiple_of(4);
    let grads = DeviceTensor::from_host(gpu, "output grads", output_grads, mirrored)?;
    let argmax_buffer = gpu.storage_with("argmax", argmax)?;
    let mirror_kernels = mirrored.then(|| kernels.family::<PoolMirrorKernels>());
    let family = kernels.family::<PoolKernels>();
    let chosen = family.backward_for(mirror_kernels, geometry, rows);
    // Where the kernel reads the derivative at the pool's output: x's values at the argmax.
    let below_values = match chosen.reads_output {
        true => reference::maxpool_winners(x, argmax, rows, geometry),
        false => x.to_vec(),
    };
    let below_tensor = DeviceTensor::from_host(gpu, "below", &below_values, mirrored)?;
    let len = rows * geometry.input.len();
    let out = gpu.storage_with("input grads", &vec![f32::NAN; len])?;
    let resources = [
        shape.as_entire_binding(),
        grads.read_binding(mirror_kernels.is_some()),
        out.as_entire_binding(),
        argmax_buffer.as_entire_binding(),
        below_tensor.read_binding(mirror_kernels.is_some()),
    ];
    let grid = ops::grid_of(gpu, chosen.invocations);
    ops::dispatch(
        gpu,
        chosen.kernel,
        &chosen.kernel.bind(gpu, &resources),
        grid,
    );
    gpu.read_back(&out, len)
}

/// MaxPool2D as `--layers` names it: `maxpool<size>[s<stride>]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPool2d {
    pub size: usize,
    pub stride: usize,
}

impl MaxPool2d {
    /// The token as `--help` and the errors of `--layers` describe it.
    pub const SYNTAX: &'static str = "maxpool<size>[s<stride>]";

    /// Reads `maxpool<size>[s<stride>]`.
    pub fn parse(body: &str, options: &TokenOptions) -> Option<std::result::Result<Self, String>> {
        let rest = body.strip_prefix("maxpool")?;
        Some(
            pool_size("maxpool", rest)
                .and_then(|(size, stride)| options.plain(MaxPool2d { size, stride })),
        )
    }
}

impl MaxPool2d {
    fn windows(&self) -> PoolWindows {
        PoolWindows {
            size: self.size,
            stride: self.stride,
        }
    }
}

impl LayerKind for MaxPool2d {
    fn combines_positions(&self) -> bool {
        true
    }

    fn token(&self) -> String {
        self.windows().token("maxpool")
    }

    fn output_shape(&self, input: Shape) -> std::result::Result<Shape, String> {
        self.windows().output_shape(input)
    }

    fn sizes_are_valid(&self) -> bool {
        self.windows().sizes_are_valid()
    }

    fn geometry(&self, input: Shape) -> Option<Geometry> {
        self.windows().geometry(input)
    }

    fn device(&self, args: &DeviceArgs<'_>) -> Result<DeviceLayer> {
        let geometry = self
            .geometry(args.input)
            .expect("a planned layer fits its input");
        Ok(Box::new(PoolDevice::new(args.gpu, geometry, args.batch)?))
    }

    fn reference_forward(&self, args: ReferenceForward<'_>) -> Vec<f32> {
        let geometry = self
            .geometry(args.input)
            .expect("a planned layer fits its input");
        reference_forward(&geometry, args.x, args.rows).0
    }

    fn reference_backward(&self, args: ReferenceBackward<'_>) -> Option<Vec<f32>> {
        let geometry = self
            .geometry(args.input)
            .expect("a planned layer fits its input");
        Some(reference_backward(&geometry, args.x, args.dz, args.rows))
    }
}

/// `PoolShape`'s layout, which pool.wgsl and avgpool.wgsl declare.
#[cfg(test)]
pub(crate) fn pool_shape_layout() -> crate::gpu::uniforms::twins::HostLayout {
    crate::gpu::uniforms::twins::host_layout!(PoolShape {
        samples,
        in_height,
        in_width,
        channels,
        out_height,
        out_width,
        size_y,
        size_x,
        stride_y,
        stride_x,
        derivative
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::uniforms::twins::assert_twin;

    /// The host structs this kind writes have the layout of their WGSL twins.
    #[test]
    fn host_structs_have_the_layout_of_their_wgsl_twins() {
        let (name, source) = PoolKernels::SHADER;
        assert_twin(name, source, "PoolShape", pool_shape_layout());
    }
}
