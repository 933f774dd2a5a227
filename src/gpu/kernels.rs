//! The kernels the trainer runs, built once per device: the families every model or the trainer
//! shares, and the layer kinds' own families (declared in their files), built on first use.

use std::any::{Any, TypeId};

use elsa::sync::FrozenMap;

use super::Gpu;
use super::buffers::grid_1d;
pub use super::kernel::{Kernel, ROW_WORKGROUP, Slot};
use super::kernel::{build, shader_module};
use super::matmul::{MatmulKernels, MatmulTiling, MatmulVariant};
use crate::shapes::Geometry;

/// Every kernel the trainer runs. Built once (matmul_nn's per-activation pipelines, and the
/// layer kinds' and element-wise families, when a program first asks for them, as programs are
/// built); pipelines are never created during training.
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
    /// The families only some models use (the layer kinds', declared in their files, and the
    /// element-wise sums of residual networks), each built when a program first asks for it
    /// (`Kernels::family`): their pipelines cost start-up time on lavapipe that a model without
    /// them need not pay.
    families: FrozenMap<TypeId, Box<dyn StoredFamily>>,
    device: wgpu::Device,
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

/// elementwise.wgsl: sums, copies and activations of flat tensors.
pub struct ElementwiseKernels {
    pub add: Kernel,
    pub add_assign: Kernel,
    pub copy: Kernel,
    pub activate: Kernel,
    pub activation_derivative: Kernel,
}

impl KernelFamily for ElementwiseKernels {
    const SHADER: (&'static str, &'static str) = (
        "elementwise.wgsl",
        crate::shader_source!("elementwise.wgsl"),
    );

    fn build(module: &FamilyModule<'_>) -> Self {
        ElementwiseKernels::with_inputs(module, Slot::Read)
    }
}

/// elementwise_mirrors.wgsl (elementwise.wgsl with the feature `mirrors`): the same kernels
/// reading a and b from their texture mirrors, for the adapters whose products read mirrors
/// (lavapipe, which loads a buffer lane by lane and fetches texels as vectors).
pub struct ElementwiseMirrorKernels(pub ElementwiseKernels);

impl KernelFamily for ElementwiseMirrorKernels {
    const SHADER: (&'static str, &'static str) = (
        "elementwise_mirrors.wgsl",
        crate::shader_source!("elementwise_mirrors.wgsl"),
    );

    fn build(module: &FamilyModule<'_>) -> Self {
        ElementwiseMirrorKernels(ElementwiseKernels::with_inputs(module, Slot::Mirror))
    }
}

impl ElementwiseKernels {
    /// The module's kernels, binding a and b as `inputs` (buffers or mirrors).
    fn with_inputs(module: &FamilyModule<'_>, inputs: Slot) -> Self {
        use Slot::*;
        let one = [(0, Params), (1, inputs), (3, ReadWrite)];
        let two = [(0, Params), (1, inputs), (2, inputs), (3, ReadWrite)];
        ElementwiseKernels {
            add: module.kernel("add", &two),
            add_assign: module.kernel("add_assign", &[(0, Params), (2, inputs), (3, ReadWrite)]),
            copy: module.kernel("copy", &one),
            activate: module.kernel("activate_values", &one),
            activation_derivative: module.kernel("activation_derivative", &two),
        }
    }

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
        let device = &gpu.device;
        let im2col_slots = [(0, Params), (1, Read), (2, ReadWrite)];
        let col2im_slots = [(0, Params), (1, Read), (2, ReadWrite), (3, Read)];

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
            families: FrozenMap::new(),
            device: gpu.device.clone(),
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

/// A family of kernels from one shader file, built the first time a program asks for it
/// (`Kernels::family`). A layer kind declares its own in its file.
pub trait KernelFamily: Sized + Any + wgpu::WasmNotSendSync {
    /// The kernel file's name under `shaders/` and its source (`crate::shader_source!`).
    const SHADER: (&'static str, &'static str);

    /// Its pipelines, from the file's module.
    fn build(module: &FamilyModule<'_>) -> Self;
}

/// A built family, as `Kernels` keeps it: shared between threads natively (a test's kernels
/// are), as wgpu's types are there.
trait StoredFamily: Any + wgpu::WasmNotSendSync {}

impl<F: KernelFamily> StoredFamily for F {}

/// A family's compiled shader file, from which `KernelFamily::build` makes its kernels.
pub struct FamilyModule<'a> {
    device: &'a wgpu::Device,
    module: wgpu::ShaderModule,
}

impl FamilyModule<'_> {
    /// The kernel of `entry_point`, taking the resources of `slots` (binding number and kind, in
    /// the order `Kernel::bind` takes them).
    pub fn kernel(&self, entry_point: &'static str, slots: &[(u32, Slot)]) -> Kernel {
        build(self.device, &self.module, entry_point, slots, &[])
    }
}

impl Kernels {
    /// The kernels of family `F`, built on first use and kept (two threads asking at once may
    /// both build it; the first stored is the one every caller gets).
    pub fn family<F: KernelFamily>(&self) -> &F {
        let key = TypeId::of::<F>();
        let family = match self.families.get(&key) {
            Some(family) => family,
            None => {
                let (label, source) = F::SHADER;
                let module = FamilyModule {
                    device: &self.device,
                    module: shader_module(&self.device, label, source),
                };
                self.families.insert(key, Box::new(F::build(&module)))
            }
        };
        let family: &dyn Any = family;
        family
            .downcast_ref()
            .expect("a family is stored under its own type")
    }

    /// elementwise.wgsl's kernels (built on first use); `mirrored`: those reading their
    /// inputs' texture mirrors.
    pub fn elementwise(&self, mirrored: bool) -> &ElementwiseKernels {
        match mirrored {
            true => &self.family::<ElementwiseMirrorKernels>().0,
            false => self.family(),
        }
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
