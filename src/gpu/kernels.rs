//! Every compute pipeline, built once per device, with its bind group layout.

use std::sync::OnceLock;

use wgpu::{BindGroupLayoutEntry, BindingType, BufferBindingType, ShaderStages};

use super::Gpu;
use super::buffers::grid_1d;
use super::matmul::{MatmulKernels, MatmulTiling, MatmulVariant};
use crate::shapes::Geometry;

/// The kind of one binding slot, as declared in the kernel's WGSL header.
///
/// Kernel parameters (shapes, offsets, hyperparameters) are read from small read-only storage
/// buffers, not uniform buffers: lavapipe (Mesa 22.3) inlines uniform values into a freshly
/// compiled shader variant whenever a pipeline is bound again, so a training step, which switches
/// pipelines every dispatch, recompiled shaders and leaked their code (≈ 0.5 MB and several ms a
/// step).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Slot {
    Params,
    Read,
    ReadWrite,
    /// A texture mirror of a buffer (`mirror::TextureMirror`), read with `textureLoad`.
    Mirror,
}

/// A pipeline and the layout its bind groups are made with.
pub struct Kernel {
    pub name: &'static str,
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    /// Binding numbers, in the order `bind` takes resources.
    bindings: Vec<u32>,
    /// Whether the kernel may write the resource at each of those bindings.
    writable: Vec<bool>,
}

impl Kernel {
    /// A bind group for this kernel; `resources` in binding order.
    pub fn bind(&self, gpu: &Gpu, resources: &[wgpu::BindingResource<'_>]) -> wgpu::BindGroup {
        assert_eq!(
            resources.len(),
            self.bindings.len(),
            "kernel {} takes {} bindings",
            self.name,
            self.bindings.len()
        );
        let entries: Vec<wgpu::BindGroupEntry> = self
            .bindings
            .iter()
            .zip(resources)
            .map(|(&binding, resource)| wgpu::BindGroupEntry {
                binding,
                resource: resource.clone(),
            })
            .collect();
        gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(self.name),
            layout: &self.layout,
            entries: &entries,
        })
    }

    /// The buffers among `resources` (in binding order) that the kernel may write.
    pub fn written<'a>(&self, resources: &[wgpu::BindingResource<'a>]) -> Vec<&'a wgpu::Buffer> {
        resources
            .iter()
            .zip(&self.writable)
            .filter_map(|(resource, &writable)| match resource {
                wgpu::BindingResource::Buffer(binding) if writable => Some(binding.buffer),
                _ => None,
            })
            .collect()
    }
}

/// Every kernel the trainer runs. Built once (matmul_nn's per-activation pipelines, and the
/// average pool, BatchNorm and element-wise families, when a program first asks for them, as
/// programs are built); pipelines are never created during training.
pub struct Kernels {
    pub matmul: MatmulKernels,
    pub activation_backward: Kernel,
    pub softmax_cross_entropy: Kernel,
    pub softmax_mean_squared_error: Kernel,
    pub gather_batch: Kernel,
    pub gather_batch_transposed: Kernel,
    /// gather.wgsl's standardising and augmenting gather.
    pub gather_images: Kernel,
    /// activation.wgsl: dz = dy ⊙ f'(y) in place, for a convolution's output.
    pub apply_derivative: Kernel,
    pub conv: ConvKernels,
    pub pool: PoolKernels,
    /// The families only some models use, each built when a program first asks for it (its
    /// pipelines cost start-up time on lavapipe that an MLP or a convnet need not pay).
    avgpool: OnceLock<AvgPoolKernels>,
    batchnorm: OnceLock<BatchNormKernels>,
    elementwise: OnceLock<ElementwiseKernels>,
    device: wgpu::Device,
    pub dropout_forward: Kernel,
    pub dropout_backward: Kernel,
    pub sum_metrics: Kernel,
    /// The optimizer updates on float words (optimizer.wgsl), for every adapter.
    pub optimizer_floats: OptimizerKernels,
    /// The same on 64-bit words (optimizer_packed.wgsl), built only where training uses them.
    pub optimizer_packed: Option<OptimizerKernels>,
    pub advance_step: Kernel,
}

/// conv2d.wgsl: the patch matrix of a convolution and the gather of its input gradient, for any
/// channel count and four channels at a time.
pub struct ConvKernels {
    pub im2col: Kernel,
    pub im2col_quads: Kernel,
    pub col2im: Kernel,
    pub col2im_quads: Kernel,
}

impl ConvKernels {
    /// The patch-matrix kernel for `geometry` (four channels at a time where they come in
    /// fours) and its invocations over `samples` samples, one per patch row.
    pub fn im2col_for(&self, geometry: &Geometry, samples: usize) -> (&Kernel, usize) {
        let rows = samples * geometry.positions();
        match geometry.input.channels % 4 {
            0 => (&self.im2col_quads, rows),
            _ => (&self.im2col, rows),
        }
    }

    /// The input-gradient gather for `geometry` (four channels at a time where they come in
    /// fours) and its invocations over `samples` samples, one per input value or quad.
    pub fn col2im_for(&self, geometry: &Geometry, samples: usize) -> (&Kernel, usize) {
        let values = samples * geometry.input.len();
        match geometry.input.channels % 4 {
            0 => (&self.col2im_quads, values / 4),
            _ => (&self.col2im, values),
        }
    }
}

/// pool.wgsl: max pooling and its gather backward, per channel and four channels at a time.
pub struct PoolKernels {
    pub forward: Kernel,
    pub forward_quads: Kernel,
    pub backward: Kernel,
    pub backward_quads: Kernel,
    pub backward_tiles_quads: Kernel,
}

impl PoolKernels {
    /// The forward kernel for `geometry` and its invocations over `samples` samples.
    pub fn forward_for(&self, geometry: &Geometry, samples: usize) -> (&Kernel, usize) {
        let values = samples * geometry.output.len();
        match geometry.input.channels % 4 {
            0 => (&self.forward_quads, values / 4),
            _ => (&self.forward, values),
        }
    }

    /// The backward kernel for `geometry` over `samples` samples: where the channels come in
    /// fours and the windows tile the input, one invocation per window's quad of channels,
    /// reading the derivative below at the pool's output; otherwise one per input value (or
    /// quad), reading it at the pool's input.
    pub fn backward_for(&self, geometry: &Geometry, samples: usize) -> PoolBackward<'_> {
        let tiles = geometry.rows.stride == geometry.rows.size
            && geometry.columns.stride == geometry.columns.size;
        let (kernel, invocations, reads_output) = match (geometry.input.channels % 4, tiles) {
            (0, true) => (
                &self.backward_tiles_quads,
                samples * geometry.output.len() / 4,
                true,
            ),
            (0, false) => (
                &self.backward_quads,
                samples * geometry.input.len() / 4,
                false,
            ),
            _ => (&self.backward, samples * geometry.input.len(), false),
        };
        PoolBackward {
            kernel,
            invocations,
            reads_output,
        }
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

/// avgpool.wgsl: average pooling (and global average pooling) and its gather backward.
pub struct AvgPoolKernels {
    pub forward: Kernel,
    pub backward: Kernel,
}

impl AvgPoolKernels {
    /// The kernel and grid of the forward pass (or the backward) over `rows` samples of
    /// `geometry`: an invocation per output value (per input value backward).
    pub fn launch(
        &self,
        forward: bool,
        geometry: &crate::shapes::Geometry,
        rows: usize,
        max_groups: u32,
    ) -> (&Kernel, [u32; 3]) {
        let (kernel, values) = match forward {
            true => (&self.forward, rows * geometry.output.len()),
            false => (&self.backward, rows * geometry.input.len()),
        };
        (kernel, grid_1d(values, ROW_WORKGROUP, max_groups))
    }
}

/// batchnorm.wgsl: BatchNorm's per-channel statistics, normalisation and backward passes, for
/// any channel count and four channels at a time.
pub struct BatchNormKernels {
    pub statistics: Kernel,
    pub normalize: Kernel,
    pub backward_sums: Kernel,
    pub backward_input: Kernel,
    pub statistics_quads: Kernel,
    pub normalize_quads: Kernel,
    pub backward_sums_quads: Kernel,
    pub backward_input_quads: Kernel,
    pub backward_input_evaluation: Kernel,
}

/// BatchNorm's passes, for `BatchNormKernels::launch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormPass {
    Statistics,
    Normalize,
    BackwardSums,
    BackwardInput,
    /// The input gradient in evaluation (one channel at a time, whatever the count).
    BackwardInputEvaluation,
}

/// batchnorm.wgsl's `ROWS_PER_INVOCATION`: the rows of a channel quad each invocation of
/// `batchnorm_normalize_quads` and `batchnorm_backward_input_quads` takes.
const NORM_ROWS_PER_INVOCATION: usize = 8;

impl BatchNormKernels {
    /// The kernel and grid of `pass` over `values` values per channel of `channels` channels:
    /// the vec4 entry points where the channels come in fours; a workgroup per channel (or four)
    /// for the sums, an invocation per value (or per 8 rows of four channels) for the rest.
    pub fn launch(
        &self,
        pass: NormPass,
        channels: usize,
        values: usize,
        max_groups: u32,
    ) -> (&Kernel, [u32; 3]) {
        let quads = channels.is_multiple_of(4);
        let lanes = if quads { 4 } else { 1 };
        let per_channel = [(channels / lanes) as u32, 1, 1];
        // The _quads elementwise passes take several rows of a channel quad per invocation.
        let rows = if quads {
            values.div_ceil(NORM_ROWS_PER_INVOCATION)
        } else {
            values
        };
        let per_value = grid_1d(rows * channels / lanes, ROW_WORKGROUP, max_groups);
        let (scalar, four, grid) = match pass {
            NormPass::Statistics => (&self.statistics, &self.statistics_quads, per_channel),
            NormPass::Normalize => (&self.normalize, &self.normalize_quads, per_value),
            NormPass::BackwardSums => (&self.backward_sums, &self.backward_sums_quads, per_channel),
            NormPass::BackwardInput => {
                (&self.backward_input, &self.backward_input_quads, per_value)
            }
            NormPass::BackwardInputEvaluation => {
                let grid = grid_1d(values * channels, ROW_WORKGROUP, max_groups);
                return (&self.backward_input_evaluation, grid);
            }
        };
        (if quads { four } else { scalar }, grid)
    }

    fn new(device: &wgpu::Device, module: &wgpu::ShaderModule) -> Self {
        use Slot::*;
        let statistics = [(0, Params), (1, Read), (2, ReadWrite), (3, ReadWrite)];
        let normalize = [
            (0, Params),
            (1, Read),
            (2, Read),
            (3, Read),
            (4, Read),
            (7, ReadWrite),
        ];
        let sums = [
            (0, Params),
            (1, Read),
            (2, Read),
            (5, Read),
            (6, ReadWrite),
            (8, Read),
        ];
        let input = [
            (0, Params),
            (1, Read),
            (2, Read),
            (4, Read),
            (5, Read),
            (6, Read),
            (7, ReadWrite),
            (8, Read),
        ];
        let input_evaluation = [
            (0, Params),
            (3, Read),
            (4, Read),
            (5, Read),
            (7, ReadWrite),
            (8, Read),
        ];
        let kernel = |name, slots: &[(u32, Slot)]| build(device, module, name, slots, &[]);
        BatchNormKernels {
            statistics: kernel("batchnorm_statistics", &statistics),
            normalize: kernel("batchnorm_normalize", &normalize),
            backward_sums: kernel("batchnorm_backward_sums", &sums),
            backward_input: kernel("batchnorm_backward_input", &input),
            statistics_quads: kernel("batchnorm_statistics_quads", &statistics),
            normalize_quads: kernel("batchnorm_normalize_quads", &normalize),
            backward_sums_quads: kernel("batchnorm_backward_sums_quads", &sums),
            backward_input_quads: kernel("batchnorm_backward_input_quads", &input),
            backward_input_evaluation: kernel(
                "batchnorm_backward_input_evaluation",
                &input_evaluation,
            ),
        }
    }
}

/// elementwise.wgsl: sums, copies and activations of flat tensors.
pub struct ElementwiseKernels {
    pub add: Kernel,
    pub add_assign: Kernel,
    pub copy: Kernel,
    pub activate: Kernel,
    pub activation_derivative: Kernel,
}

impl ElementwiseKernels {
    fn new(device: &wgpu::Device, module: &wgpu::ShaderModule) -> Self {
        use Slot::*;
        ElementwiseKernels {
            add: build(
                device,
                module,
                "add",
                &[(0, Params), (1, Read), (2, Read), (3, ReadWrite)],
                &[],
            ),
            add_assign: build(
                device,
                module,
                "add_assign",
                &[(0, Params), (2, Read), (3, ReadWrite)],
                &[],
            ),
            copy: build(
                device,
                module,
                "copy",
                &[(0, Params), (1, Read), (3, ReadWrite)],
                &[],
            ),
            activate: build(
                device,
                module,
                "activate_values",
                &[(0, Params), (1, Read), (3, ReadWrite)],
                &[],
            ),
            activation_derivative: build(
                device,
                module,
                "activation_derivative",
                &[(0, Params), (1, Read), (2, Read), (3, ReadWrite)],
                &[],
            ),
        }
    }
}

impl ElementwiseKernels {
    /// The grid of any of them over `count` values: an invocation per 8 vec4
    /// (`VEC4S_PER_INVOCATION` in elementwise.wgsl).
    pub fn grid(count: usize, max_groups: u32) -> [u32; 3] {
        grid_1d(count.div_ceil(32), ROW_WORKGROUP, max_groups)
    }
}

/// The two parameter updates of one optimizer module; each updates every parameter in one
/// dispatch of `optimizer_grid`, with the same bindings in either module.
pub struct OptimizerKernels {
    pub sgd: Kernel,
    pub momentum: Kernel,
    pub adam: Kernel,
}

/// How the optimizer kernels access the parameter-sized buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimizerWords {
    /// vec4<f32> (optimizer.wgsl).
    Floats,
    /// The same bits as vec4<u64> (optimizer_packed.wgsl): half the memory operations, which
    /// lavapipe performs one lane and component at a time.
    Packed,
}

impl OptimizerWords {
    /// How a person names the access: "vec4<f32>" or "packed vec4<u64>".
    pub fn name(self) -> &'static str {
        match self {
            OptimizerWords::Floats => "vec4<f32>",
            OptimizerWords::Packed => "packed vec4<u64>",
        }
    }

    /// Packed words on CPU adapters that have 64-bit integers (half the memory operations on
    /// lavapipe); floats elsewhere, where 64-bit arithmetic may be emulated and memory accesses
    /// are vectorised anyway.
    pub fn preferred_for(gpu: &Gpu) -> Self {
        let cpu = gpu.adapter.get_info().device_type == wgpu::DeviceType::Cpu;
        if cpu && gpu.device.features().contains(wgpu::Features::SHADER_INT64) {
            OptimizerWords::Packed
        } else {
            OptimizerWords::Floats
        }
    }
}

/// Workgroup width of the element-wise and per-row kernels (`@workgroup_size(64)` in their WGSL).
pub const ROW_WORKGROUP: u32 = 64;

/// The grid of a batch gather of `words` packed pixel words (gather.wgsl: 4 each).
pub fn gather_grid(words: usize, max_groups: u32) -> [u32; 3] {
    grid_1d(words.div_ceil(4), ROW_WORKGROUP, max_groups)
}

/// The grid of a transposing batch gather of `rows` samples of `words_per_sample` words
/// (gather.wgsl `gather_batch_transposed`: a tile of 4 rows' word each).
pub fn gather_transposed_grid(rows: usize, words_per_sample: usize, max_groups: u32) -> [u32; 3] {
    grid_1d(
        rows.div_ceil(4) * words_per_sample,
        ROW_WORKGROUP,
        max_groups,
    )
}

/// gather.wgsl's bindings 0-6 (`gather_batch_transposed` adds 7).
const GATHER_SLOTS: [(u32, Slot); 7] = [
    (0, Slot::Read),
    (1, Slot::Params),
    (2, Slot::Read),
    (3, Slot::Read),
    (4, Slot::Read),
    (5, Slot::ReadWrite),
    (6, Slot::ReadWrite),
];

/// The grid of an optimizer update over `count` parameters (optimizer.wgsl: 16 each).
pub fn optimizer_grid(count: usize, max_groups: u32) -> [u32; 3] {
    grid_1d(count.div_ceil(16), ROW_WORKGROUP, max_groups)
}

impl Kernels {
    /// Every kernel, with the matmul variant this adapter runs best.
    pub fn new(gpu: &Gpu) -> Kernels {
        let preferred = MatmulVariant::preferred_for(gpu.adapter.get_info().device_type);
        Self::with_matmul(gpu, MatmulTiling::default(), preferred)
    }

    pub fn with_matmul(gpu: &Gpu, tiling: MatmulTiling, preferred: MatmulVariant) -> Kernels {
        use Slot::*;
        let module = |label: &str, source: &str| shader_module(&gpu.device, label, source);
        let activation = module("activation.wgsl", crate::shader_source!("activation.wgsl"));
        let loss = module("loss.wgsl", crate::shader_source!("loss.wgsl"));
        let gather = module("gather.wgsl", crate::shader_source!("gather.wgsl"));
        let metrics = module("metrics.wgsl", crate::shader_source!("metrics.wgsl"));
        let optimizer = module("optimizer.wgsl", crate::shader_source!("optimizer.wgsl"));
        // Built only where training uses it (and so checked where it runs).
        let packed = OptimizerWords::preferred_for(gpu) == OptimizerWords::Packed;
        let optimizer_packed = packed.then(|| {
            module(
                "optimizer_packed.wgsl",
                crate::shader_source!("optimizer_packed.wgsl"),
            )
        });
        let schedule = module("schedule.wgsl", crate::shader_source!("schedule.wgsl"));
        let conv = module("conv2d.wgsl", crate::shader_source!("conv2d.wgsl"));
        let pool = module("pool.wgsl", crate::shader_source!("pool.wgsl"));
        let dropout = module("dropout.wgsl", crate::shader_source!("dropout.wgsl"));
        let device = &gpu.device;
        let im2col_slots = [(0, Params), (1, Read), (2, ReadWrite)];
        let col2im_slots = [(0, Params), (1, Read), (2, ReadWrite), (3, Read)];
        let pool_forward_slots = [(0, Params), (1, Read), (2, ReadWrite), (3, ReadWrite)];
        let pool_backward_slots = [(0, Params), (1, Read), (2, ReadWrite), (3, Read), (4, Read)];
        let dropout_slots = [(0, Read), (1, Params), (2, Read), (3, ReadWrite)];
        let dropout_backward_slots = [(0, Read), (1, Params), (2, Read), (3, ReadWrite), (4, Read)];

        let loss_slots = [
            (0, Read),
            (1, Params),
            (2, Read),
            (3, Read),
            (4, ReadWrite),
            (5, ReadWrite),
            (6, ReadWrite),
            (7, ReadWrite),
        ];
        Kernels {
            matmul: MatmulKernels::new(gpu, tiling, preferred),
            activation_backward: build(
                &gpu.device,
                &activation,
                "activation_backward",
                &[(0, Params), (1, ReadWrite), (2, Read), (3, ReadWrite)],
                &[],
            ),
            softmax_cross_entropy: build(
                &gpu.device,
                &loss,
                "softmax_cross_entropy",
                &loss_slots,
                &[],
            ),
            softmax_mean_squared_error: build(
                &gpu.device,
                &loss,
                "softmax_mean_squared_error",
                &loss_slots,
                &[],
            ),
            apply_derivative: build(
                device,
                &activation,
                "apply_derivative",
                &[(0, Params), (1, ReadWrite), (2, Read)],
                &[],
            ),
            conv: ConvKernels {
                im2col: build(device, &conv, "im2col", &im2col_slots, &[]),
                im2col_quads: build(device, &conv, "im2col_quads", &im2col_slots, &[]),
                col2im: build(device, &conv, "col2im", &col2im_slots, &[]),
                col2im_quads: build(device, &conv, "col2im_quads", &col2im_slots, &[]),
            },
            pool: PoolKernels {
                forward: build(device, &pool, "maxpool_forward", &pool_forward_slots, &[]),
                forward_quads: build(
                    device,
                    &pool,
                    "maxpool_forward_quads",
                    &pool_forward_slots,
                    &[],
                ),
                backward: build(device, &pool, "maxpool_backward", &pool_backward_slots, &[]),
                backward_quads: build(
                    device,
                    &pool,
                    "maxpool_backward_quads",
                    &pool_backward_slots,
                    &[],
                ),
                backward_tiles_quads: build(
                    device,
                    &pool,
                    "maxpool_backward_tiles_quads",
                    &pool_backward_slots,
                    &[],
                ),
            },
            avgpool: OnceLock::new(),
            batchnorm: OnceLock::new(),
            elementwise: OnceLock::new(),
            device: gpu.device.clone(),
            dropout_forward: build(device, &dropout, "dropout_forward", &dropout_slots, &[]),
            dropout_backward: build(
                device,
                &dropout,
                "dropout_backward",
                &dropout_backward_slots,
                &[],
            ),
            gather_batch: build(&gpu.device, &gather, "gather_batch", &GATHER_SLOTS, &[]),
            gather_images: build(&gpu.device, &gather, "gather_images", &GATHER_SLOTS, &[]),
            gather_batch_transposed: build(
                &gpu.device,
                &gather,
                "gather_batch_transposed",
                &[GATHER_SLOTS.as_slice(), &[(7, ReadWrite)]].concat(),
                &[],
            ),
            sum_metrics: build(
                &gpu.device,
                &metrics,
                "sum_metrics",
                &[(0, Params), (1, Read), (2, Read), (3, ReadWrite)],
                &[],
            ),
            optimizer_floats: OptimizerKernels::new(&gpu.device, &optimizer),
            optimizer_packed: optimizer_packed
                .map(|module| OptimizerKernels::new(&gpu.device, &module)),
            advance_step: build(
                &gpu.device,
                &schedule,
                "advance_step",
                &[(0, ReadWrite)],
                &[],
            ),
        }
    }
}

/// A module of `source`, for the families built on first use.
fn shader_module(device: &wgpu::Device, label: &str, source: &str) -> wgpu::ShaderModule {
    device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(label),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    })
}

impl Kernels {
    /// avgpool.wgsl's kernels (built on first use).
    pub fn avgpool(&self) -> &AvgPoolKernels {
        self.avgpool.get_or_init(|| {
            use Slot::*;
            let device = &self.device;
            let module = shader_module(
                device,
                "avgpool.wgsl",
                crate::shader_source!("avgpool.wgsl"),
            );
            let slots = [(0, Params), (1, Read), (2, ReadWrite)];
            AvgPoolKernels {
                forward: build(device, &module, "avgpool_forward", &slots, &[]),
                backward: build(device, &module, "avgpool_backward", &slots, &[]),
            }
        })
    }

    /// batchnorm.wgsl's kernels (built on first use).
    pub fn batchnorm(&self) -> &BatchNormKernels {
        self.batchnorm.get_or_init(|| {
            let source = crate::shader_source!("batchnorm.wgsl");
            let module = shader_module(&self.device, "batchnorm.wgsl", source);
            BatchNormKernels::new(&self.device, &module)
        })
    }

    /// elementwise.wgsl's kernels (built on first use).
    pub fn elementwise(&self) -> &ElementwiseKernels {
        self.elementwise.get_or_init(|| {
            let source = crate::shader_source!("elementwise.wgsl");
            let module = shader_module(&self.device, "elementwise.wgsl", source);
            ElementwiseKernels::new(&self.device, &module)
        })
    }
}

impl OptimizerKernels {
    fn new(device: &wgpu::Device, module: &wgpu::ShaderModule) -> Self {
        use Slot::*;
        let updated = [(0, Read), (1, Params), (2, ReadWrite), (3, Read)];
        OptimizerKernels {
            sgd: build(device, module, "sgd_update", &updated, &[]),
            momentum: build(
                device,
                module,
                "momentum_update",
                &[updated.as_slice(), &[(4, ReadWrite)]].concat(),
                &[],
            ),
            adam: build(
                device,
                module,
                "adam_update",
                &[updated.as_slice(), &[(4, ReadWrite), (5, ReadWrite)]].concat(),
                &[],
            ),
        }
    }
}

impl Kernels {
    /// The optimizer updates with `words`, if the device has them.
    pub fn optimizer_with(&self, words: OptimizerWords) -> Option<&OptimizerKernels> {
        match words {
            OptimizerWords::Floats => Some(&self.optimizer_floats),
            OptimizerWords::Packed => self.optimizer_packed.as_ref(),
        }
    }

    /// The optimizer updates training uses: the packed ones wherever they were built.
    pub fn optimizer(&self) -> &OptimizerKernels {
        self.optimizer_packed
            .as_ref()
            .unwrap_or(&self.optimizer_floats)
    }
}

pub(super) fn build(
    device: &wgpu::Device,
    module: &wgpu::ShaderModule,
    entry_point: &'static str,
    slots: &[(u32, Slot)],
    constants: &[(&str, f64)],
) -> Kernel {
    let entries: Vec<BindGroupLayoutEntry> = slots
        .iter()
        .map(|&(binding, slot)| BindGroupLayoutEntry {
            binding,
            visibility: ShaderStages::COMPUTE,
            ty: match slot {
                Slot::Params | Slot::Read | Slot::ReadWrite => BindingType::Buffer {
                    ty: BufferBindingType::Storage {
                        read_only: slot != Slot::ReadWrite,
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                Slot::Mirror => BindingType::Texture {
                    sample_type: wgpu::TextureSampleType::Float { filterable: false },
                    view_dimension: wgpu::TextureViewDimension::D2,
                    multisampled: false,
                },
            },
            count: None,
        })
        .collect();
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(entry_point),
        entries: &entries,
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(entry_point),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(entry_point),
        layout: Some(&pipeline_layout),
        module,
        entry_point: Some(entry_point),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants,
            ..Default::default()
        },
        cache: None,
    });
    Kernel {
        name: entry_point,
        pipeline,
        layout,
        bindings: slots.iter().map(|&(b, _)| b).collect(),
        writable: slots.iter().map(|&(_, s)| s == Slot::ReadWrite).collect(),
    }
}
