//! AvgPool2D and global average pooling (`shaders/avgpool.wgsl`), 'valid' windows; the global
//! pool is the window of the whole image.
//!
//! Forward, x `[rows, H, W, C]` → y `[rows, OH, OW, C]`, each the mean of its window. Backward,
//! from dy, a gather: dx at each input the sum of dy over the windows holding it, over the window's
//! size.

use super::context::LayerContext;
use super::kind::{DeviceArgs, LayerKind, ReferenceBackward, ReferenceForward, TokenOptions};
use super::pool::PoolShape;
use super::{BufferToBufferPasses, DeviceLayer, PoolWindows, pool_size};
use crate::error::Result;
use crate::gpu::buffers::grid_1d;
use crate::gpu::kernels::{FamilyModule, KernelFamily, ROW_WORKGROUP, Slot};
use crate::gpu::program::Program;
use crate::gpu::{Gpu, Kernel, Kernels, ops};
use crate::shapes::{Geometry, LayerActivation, Padding, Shape, Window};

/// avgpool.wgsl: average pooling (and global average pooling) and its gather backward, and both
/// four channels at a time where the output is one window.
pub struct AvgPoolKernels {
    pub forward: Kernel,
    pub backward: Kernel,
    pub global_forward_quads: Kernel,
    pub global_backward_quads: Kernel,
}

impl AvgPoolKernels {
    /// The kernel and grid of the forward pass (or the backward) over `rows` samples of
    /// `geometry`: an invocation per output value (per input value backward), or where the
    /// output is one window and the channels come in fours, one per sample's channel quad.
    pub fn launch(
        &self,
        forward: bool,
        geometry: &Geometry,
        rows: usize,
        max_groups: u32,
    ) -> (&Kernel, [u32; 3]) {
        let channels = geometry.input.channels;
        let one_window = geometry.rows.output == 1 && geometry.columns.output == 1;
        let (kernel, invocations) = match (one_window && channels.is_multiple_of(4), forward) {
            (true, true) => (&self.global_forward_quads, rows * channels / 4),
            (true, false) => (&self.global_backward_quads, rows * channels / 4),
            (false, true) => (&self.forward, rows * geometry.output.len()),
            (false, false) => (&self.backward, rows * geometry.input.len()),
        };
        (kernel, grid_1d(invocations, ROW_WORKGROUP, max_groups))
    }
}

impl KernelFamily for AvgPoolKernels {
    const SHADER: (&'static str, &'static str) =
        ("avgpool.wgsl", crate::shader_source!("avgpool.wgsl"));

    fn build(module: &FamilyModule<'_>) -> Self {
        use Slot::*;
        let slots = [(0, Params), (1, Read), (2, ReadWrite)];
        AvgPoolKernels {
            forward: module.kernel("avgpool_forward", &slots),
            backward: module.kernel("avgpool_backward", &slots),
            global_forward_quads: module.kernel("avgpool_global_forward_quads", &slots),
            global_backward_quads: module.kernel("avgpool_global_backward_quads", &slots),
        }
    }
}

/// An average pool in a training program.
pub(crate) struct AvgPoolDevice {
    geometry: Geometry,
}

impl AvgPoolDevice {
    pub fn new(geometry: Geometry) -> Self {
        AvgPoolDevice { geometry }
    }
}

impl BufferToBufferPasses for AvgPoolDevice {
    fn record_pass<'k>(
        &self,
        context: &LayerContext<'_, 'k>,
        program: &mut Program<'k>,
        [from, to]: [&wgpu::Buffer; 2],
        rows: usize,
        forward: bool,
    ) {
        let g = &self.geometry;
        let shape = PoolShape::new(rows, g, LayerActivation::Identity);
        let shape = context.gpu.params_with("avgpool shape", &shape);
        let resources = [
            shape.as_entire_binding(),
            from.as_entire_binding(),
            to.as_entire_binding(),
        ];
        let kernels = context.kernels.family::<AvgPoolKernels>();
        let (kernel, grid) = kernels.launch(forward, g, rows, context.max_groups());
        program.dispatch(context.gpu, kernel, &resources, grid);
    }
}

/// AvgPool2D forward, CPU reference: x `[rows, H, W, C]` → y `[rows, OH, OW, C]`, each window
/// summed in row-major order, then divided by its size.
pub fn reference_forward(geometry: &Geometry, x: &[f32], rows: usize) -> Vec<f32> {
    let (input, output) = (geometry.input, geometry.output);
    let (wy, wx) = (geometry.rows, geometry.columns);
    let channels = input.channels;
    let size = (wy.size * wx.size) as f32;
    let mut y = Vec::with_capacity(rows * output.len());
    for n in 0..rows {
        for oy in 0..output.height {
            for ox in 0..output.width {
                for c in 0..channels {
                    let mut sum = 0.0f32;
                    for dy in 0..wy.size {
                        for dx in 0..wx.size {
                            let (iy, ix) = (oy * wy.stride + dy, ox * wx.stride + dx);
                            sum += x[((n * input.height + iy) * input.width + ix) * channels + c];
                        }
                    }
                    y.push(sum / size);
                }
            }
        }
    }
    y
}

/// AvgPool2D backward, CPU reference: dy `[rows, OH, OW, C]` → dx `[rows, H, W, C]`, each input
/// the sum of dy over the windows holding it (window offsets in row-major order), over the
/// window's size.
pub fn reference_backward(geometry: &Geometry, dy: &[f32], rows: usize) -> Vec<f32> {
    let (input, output) = (geometry.input, geometry.output);
    let (wy, wx) = (geometry.rows, geometry.columns);
    let channels = input.channels;
    let size = (wy.size * wx.size) as f32;
    let mut dx = vec![0.0f32; rows * input.len()];
    for n in 0..rows {
        for iy in 0..input.height {
            for ix in 0..input.width {
                for c in 0..channels {
                    let mut sum = 0.0f32;
                    for oy_offset in 0..wy.size {
                        for ox_offset in 0..wx.size {
                            let (Some(oy), Some(ox)) =
                                (wy.output_at(iy, oy_offset), wx.output_at(ix, ox_offset))
                            else {
                                continue;
                            };
                            sum +=
                                dy[((n * output.height + oy) * output.width + ox) * channels + c];
                        }
                    }
                    dx[((n * input.height + iy) * input.width + ix) * channels + c] = sum / size;
                }
            }
        }
    }
    dx
}

/// avgpool.wgsl run once on host data, for `selftest`: `avgpool_forward` of x, or
/// `avgpool_backward` of dy (`forward` false).
pub fn gpu_pass(
    gpu: &Gpu,
    kernels: &Kernels,
    values: &[f32],
    rows: usize,
    geometry: &Geometry,
    forward: bool,
) -> Result<Vec<f32>> {
    let shape = PoolShape::new(rows, geometry, LayerActivation::Identity);
    let shape = gpu.params_with("shape", &shape);
    let input = gpu.storage_with("input", values)?;
    let (kernel, grid) =
        kernels
            .family::<AvgPoolKernels>()
            .launch(forward, geometry, rows, ops::max_groups(gpu));
    let len = rows
        * match forward {
            true => geometry.output.len(),
            false => geometry.input.len(),
        };
    let out = gpu.storage_with("output", &vec![f32::NAN; len])?;
    let resources = [
        shape.as_entire_binding(),
        input.as_entire_binding(),
        out.as_entire_binding(),
    ];
    ops::dispatch(gpu, kernel, &kernel.bind(gpu, &resources), grid);
    gpu.read_back(&out, len)
}

/// AvgPool2D as `--layers` names it: `avgpool<size>[s<stride>]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AvgPool2d {
    pub size: usize,
    pub stride: usize,
}

impl AvgPool2d {
    /// The token as `--help` and the errors of `--layers` describe it.
    pub const SYNTAX: &'static str = "avgpool<size>[s<stride>]";

    /// Reads `avgpool<size>[s<stride>]`.
    pub fn parse(body: &str, options: &TokenOptions) -> Option<std::result::Result<Self, String>> {
        let rest = body.strip_prefix("avgpool")?;
        Some(
            pool_size("avgpool", rest)
                .and_then(|(size, stride)| options.plain(AvgPool2d { size, stride })),
        )
    }
}

/// Global average pooling, `gap`: C × H × W → C.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobalAvgPool;

impl GlobalAvgPool {
    /// The token as `--help` and the errors of `--layers` describe it.
    pub const SYNTAX: &'static str = "gap (global average pool)";

    /// Reads `gap`.
    pub fn parse(body: &str, options: &TokenOptions) -> Option<std::result::Result<Self, String>> {
        (body == "gap").then(|| options.plain(GlobalAvgPool))
    }
}

// What the two average pools share: their passes and references over their windows.

fn windows_over(layer: &dyn LayerKind, input: Shape) -> Geometry {
    layer
        .geometry(input)
        .expect("a planned layer fits its input")
}

fn average_device(layer: &dyn LayerKind, args: &DeviceArgs<'_>) -> Result<DeviceLayer> {
    Ok(Box::new(AvgPoolDevice::new(windows_over(
        layer, args.input,
    ))))
}

fn average_forward(layer: &dyn LayerKind, args: ReferenceForward<'_>) -> Vec<f32> {
    reference_forward(&windows_over(layer, args.input), args.x, args.rows)
}

fn average_backward(layer: &dyn LayerKind, args: ReferenceBackward<'_>) -> Option<Vec<f32>> {
    Some(reference_backward(
        &windows_over(layer, args.input),
        args.dz,
        args.rows,
    ))
}

impl AvgPool2d {
    fn windows(&self) -> PoolWindows {
        PoolWindows {
            size: self.size,
            stride: self.stride,
        }
    }
}

impl LayerKind for AvgPool2d {
    fn combines_positions(&self) -> bool {
        true
    }

    fn token(&self) -> String {
        self.windows().token("avgpool")
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
        average_device(self, args)
    }

    fn reference_forward(&self, args: ReferenceForward<'_>) -> Vec<f32> {
        average_forward(self, args)
    }

    fn reference_backward(&self, args: ReferenceBackward<'_>) -> Option<Vec<f32>> {
        average_backward(self, args)
    }
}

impl LayerKind for GlobalAvgPool {
    fn combines_positions(&self) -> bool {
        true
    }

    fn averages_each_channel(&self) -> bool {
        true
    }

    fn token(&self) -> String {
        "gap".into()
    }

    fn output_shape(&self, input: Shape) -> std::result::Result<Shape, String> {
        Ok(Shape::flat(input.channels))
    }

    /// The window of the whole image.
    fn geometry(&self, input: Shape) -> Option<Geometry> {
        let rows = Window::new(input.height, 1, Padding::Valid, input.height)?;
        let columns = Window::new(input.width, 1, Padding::Valid, input.width)?;
        Some(Geometry {
            input,
            output: Shape::image(input.channels, 1, 1),
            rows,
            columns,
        })
    }

    fn device(&self, args: &DeviceArgs<'_>) -> Result<DeviceLayer> {
        average_device(self, args)
    }

    fn reference_forward(&self, args: ReferenceForward<'_>) -> Vec<f32> {
        average_forward(self, args)
    }

    fn reference_backward(&self, args: ReferenceBackward<'_>) -> Option<Vec<f32>> {
        average_backward(self, args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::uniforms::twins::assert_twin;
    use crate::layers::pool::pool_shape_layout;

    /// The host structs this kind writes have the layout of their WGSL twins.
    #[test]
    fn host_structs_have_the_layout_of_their_wgsl_twins() {
        let (name, source) = AvgPoolKernels::SHADER;
        assert_twin(name, source, "PoolShape", pool_shape_layout());
    }
}
