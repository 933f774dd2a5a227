//! MaxPool2D (`shaders/pool.wgsl`), 'valid' windows.
//!
//! Forward, x `[rows, H, W, C]` → y `[rows, OH, OW, C]`, each the maximum of its window, and the
//! argmax of each (its offset in the window), kept for the backward pass. Backward, from dy, a
//! gather: dx at each input the sum of dy over the windows it won, ⊙ below'(x).

use wgpu::Buffer;

use super::context::LayerContext;
use super::kind::{DeviceArgs, LayerKind, ReferenceBackward, ReferenceForward, TokenOptions};
use super::{Backward, DeviceLayer, DevicePasses, LayerIo, PoolWindows, pool_size};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::gpu::buffers::grid_1d;
use crate::gpu::kernels::ROW_WORKGROUP;
use crate::gpu::program::Program;
use crate::gpu::uniforms::PoolShape;
use crate::reference;
use crate::shapes::{Geometry, LayerActivation, Shape};

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
        let resources = [
            shape.as_entire_binding(),
            io.input.buffer.as_entire_binding(),
            io.output.buffer.as_entire_binding(),
            self.argmax.as_entire_binding(),
        ];
        let (kernel, invocations) = context.kernels.pool.forward_for(g, rows);
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
        let chosen = context.kernels.pool.backward_for(g, rows);
        let below = match chosen.reads_output {
            true => io.output,
            false => io.input,
        };
        let resources = [
            shape.as_entire_binding(),
            io.output_grad.buffer.as_entire_binding(),
            input_grad.buffer.as_entire_binding(),
            self.argmax.as_entire_binding(),
            below.buffer.as_entire_binding(),
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

/// MaxPool2D as `--layers` names it: `maxpool<size>[s<stride>]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPool2d {
    pub size: usize,
    pub stride: usize,
}

impl MaxPool2d {
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
