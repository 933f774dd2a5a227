//! The matmul kernels and the choice between them for each product of a step.
//!
//! Two implementations of the same product (see the WGSL headers):
//! - `Tiled` (matmul.wgsl): workgroup-memory tiles and scalar loads; any shape and strides. The
//!   usual GPU design: threads of a workgroup share each loaded tile.
//! - `Registers`: no workgroup memory, each invocation's block of C in registers: 8×8 or 8×16 blocks
//!   from aligned vec4 loads, shared between neighbouring lanes through subgroup shuffles
//!   (matmul_vec4.wgsl), where shapes and offsets are multiples of 4 and the device has
//!   subgroups; else 4×4 blocks from scalar loads (`matmul_blocks` in matmul.wgsl). The variant
//!   for CPU adapters such as lavapipe, where buffer and workgroup loads are done lane by lane.
//!   The vec4 kernels read A and B from texture mirrors of their buffers
//!   (`mirror::TextureMirror`), whose loads lavapipe vectorises: operands come as
//!   `MatmulOperand`s, and a product whose operands have no mirror takes the scalar blocks.
//!
//! Every product of a step runs on the adapter's preferred variant. A weight-gradient-form
//! product with a long K and few blocks of C runs in parts along K on either variant
//! (`split_along_k`): `matmul_parts` or `matmul_tn_parts`, then `matmul_sum_parts`.

use std::sync::OnceLock;

use serde::Serialize;

use wgpu::{BindGroup, BindingResource, Buffer, CommandEncoder};

use super::Gpu;
use super::buffers::grid_1d;
use super::kernel::{Kernel, ROW_WORKGROUP, Slot, build};
use super::mirror::TextureMirror;
use super::uniforms::{ConvShape, MatmulDims, NO_EPILOGUE};
use crate::shapes::{Geometry, LayerActivation, WeightMatrix};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MatmulVariant {
    /// matmul.wgsl: workgroup-memory tiles (GPUs).
    Tiled,
    /// Register blocks without workgroup memory (CPU adapters).
    Registers,
}

impl MatmulVariant {
    /// The variant an adapter of this type runs best (measured on lavapipe; on GPUs sharing
    /// tiles through workgroup memory is the established design).
    pub fn preferred_for(device_type: wgpu::DeviceType) -> Self {
        match device_type {
            wgpu::DeviceType::Cpu => MatmulVariant::Registers,
            _ => MatmulVariant::Tiled,
        }
    }
}

/// Tile shape of the tiled kernel (its `override` constants).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatmulTiling {
    /// Invocations along M and N; each computes a 4×4 block, so a tile is 4·wg_m × 4·wg_n.
    pub wg_m: u32,
    pub wg_n: u32,
    /// Depth of the K slab staged in workgroup memory.
    pub tile_k: u32,
}

impl Default for MatmulTiling {
    fn default() -> Self {
        MatmulTiling {
            wg_m: 16,
            wg_n: 16,
            tile_k: 32,
        }
    }
}

/// The block of C each invocation of a vec4 register kernel computes (matmul_vec4.wgsl, where a
/// workgroup covers 8 x 8 blocks): 8 x 16 where the loads allow sharing a wide block's operands
/// (forward, weight gradient), 8 x 8 for the input gradient, whose B is loaded transposed.
fn register_block(form: RegisterForm) -> (u32, u32) {
    match form {
        RegisterForm::Nt => (8, 8),
        RegisterForm::Nn | RegisterForm::Tn => (8, 16),
    }
}

/// Activation codes of matmul_vec4.wgsl's forward epilogue (`LayerActivation::shader_code`).
const FORWARD_ACTIVATIONS: usize = 4;

/// Bindings of matmul_vec4.wgsl's kernels (matmul_nt adds `below`).
const VEC4_SLOTS: [(u32, Slot); 4] = [
    (0, Slot::Params),
    (1, Slot::Mirror),
    (2, Slot::Mirror),
    (3, Slot::ReadWrite),
];

/// Whether this device can run matmul_vec4.wgsl: subgroup operations, in subgroups of 8 to 64
/// invocations (groups of 8 lanes must lie inside one subgroup, and a subgroup inside the
/// workgroup of 64).
fn has_register_subgroups(gpu: &Gpu) -> bool {
    let info = gpu.adapter.get_info();
    gpu.device.features().contains(wgpu::Features::SUBGROUP)
        && info.subgroup_min_size >= 8
        && info.subgroup_max_size <= 64
}

/// Whether both operands have texture mirrors.
fn mirrored(lhs: MatmulOperand<'_>, rhs: MatmulOperand<'_>) -> bool {
    lhs.mirror.is_some() && rhs.mirror.is_some()
}

/// `dispatch`, which must have the epilogue `dims` asks for: a kernel without the backward
/// epilogue would silently store the plain product.
fn checked<'k>(dispatch: MatmulDispatch<'k>, dims: &MatmulDims) -> MatmulDispatch<'k> {
    assert!(
        dims.derivative_activation().is_none() || dispatch.reads_below,
        "only matmul_vec4.wgsl's matmul_nt has the backward epilogue ({dims:?})"
    );
    dispatch
}

/// The storage orders the register kernels handle, one entry point each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RegisterForm {
    /// A row-major, B row-major: forward products.
    Nn,
    /// A stored transposed ([K, M]), B row-major: weight gradients.
    Tn,
    /// A row-major, B stored transposed ([N, K]): input gradients.
    Nt,
}

impl RegisterForm {
    /// The form that computes `dims` with aligned vec4 loads only, if any.
    fn of(d: &MatmulDims) -> Option<Self> {
        let aligned = |values: &[u32]| values.iter().all(|v| v % 4 == 0);
        let offsets = [d.n, d.a_offset, d.b_offset, d.c_offset, d.bias_offset];
        if d.m == 0 || d.n == 0 || d.k == 0 || !aligned(&offsets) {
            return None;
        }
        let b_row_major = d.b_col_stride == 1 && aligned(&[d.b_row_stride]);
        let b_transposed = d.b_row_stride == 1 && aligned(&[d.b_col_stride]);
        let a_row_major = d.a_col_stride == 1 && aligned(&[d.a_row_stride]);
        let a_transposed = d.a_row_stride == 1 && aligned(&[d.a_col_stride]);
        // The forward form has the forward epilogue (bias + activation), the input-gradient
        // form the backward one (the derivative of the activation below).
        let plain = d.epilogue == NO_EPILOGUE;
        let backward = d.derivative_activation().is_some();
        if a_row_major && b_row_major && aligned(&[d.k]) && !backward {
            Some(RegisterForm::Nn)
        } else if a_transposed && b_row_major && aligned(&[d.m]) && plain {
            Some(RegisterForm::Tn)
        } else if a_row_major && b_transposed && aligned(&[d.k]) && (plain || backward) {
            Some(RegisterForm::Nt)
        } else {
            None
        }
    }
}

/// Every matmul pipeline, and the adapter's preferred variant.
pub struct MatmulKernels {
    pub tiled: Kernel,
    pub tiling: MatmulTiling,
    /// matmul.wgsl's matmul_parts: the tiled product over one slice of K per part.
    tiled_parts: Kernel,
    blocks: Kernel,
    sum_parts: Kernel,
    /// matmul_vec4.wgsl's forms, on devices with suitable subgroups (else `blocks` serves the
    /// register variant on every shape).
    vec4: Option<Vec4Kernels>,
    pub preferred: MatmulVariant,
    max_groups: u32,
}

struct Vec4Kernels {
    module: wgpu::ShaderModule,
    device: wgpu::Device,
    /// matmul_nn specialised for each forward activation (by `LayerActivation::shader_code`)
    /// and workgroup arrangement (`nn_across`), each built when a product first asks for it,
    /// while programs are built: creating one is slow on lavapipe, and a model uses a few.
    nn: [[OnceLock<Kernel>; NN_ARRANGEMENTS]; FORWARD_ACTIVATIONS],
    tn: Kernel,
    tn_parts: Kernel,
    /// matmul_tn_shared_parts for each `TN_ACROSS` (1, 2, 4, 8) and `TN_DOWN` (1, 2, 4, 8;
    /// their product at most 8), built on first use.
    tn_shared_parts: SharedPartsKernels,
    nt: Kernel,
    conv_input_grad: Kernel,
    /// conv_forward as `nn` (per activation and arrangement), built on first use.
    conv_forward: [[OnceLock<Kernel>; NN_ARRANGEMENTS]; FORWARD_ACTIVATIONS],
    /// conv_weight_grad_parts as `tn_shared_parts` (per arrangement), built on first use.
    conv_weight_grad_parts: SharedPartsKernels,
}

/// A shared-parts entry point per (`TN_ACROSS`, `TN_DOWN`) index.
type SharedPartsKernels = [[OnceLock<Kernel>; TN_ARRANGEMENTS]; TN_ARRANGEMENTS];

/// matmul_tn_shared_parts' `TN_ACROSS` values: groups across a workgroup (16 columns each).
const TN_ARRANGEMENTS: usize = 4;

/// The `TN_ACROSS` index (0..4 for 1, 2, 4, 8 groups across) of the narrowest arrangement whose
/// workgroup is as wide as a product `n` columns wide, or the widest.
fn tn_across(n: u32) -> usize {
    match n {
        0..=16 => 0,
        17..=32 => 1,
        33..=64 => 2,
        _ => 3,
    }
}

/// Rows of C from which a split weight gradient shares its loads (matmul_tn_shared_parts): a
/// group's 8 lanes each a block of 8 rows.
const SHARED_PARTS_MIN_M: u32 = 64;

/// matmul_nn's `NN_ACROSS` values: groups of lanes across a workgroup, which covers
/// 32 NN_ACROSS columns.
const NN_ARRANGEMENTS: usize = 3;

/// The `NN_ACROSS` index (0, 1, 2 for 1, 2, 4 groups across) of the narrowest arrangement whose
/// workgroup is as wide as a product `n` columns wide, or the widest.
fn nn_across(n: u32) -> usize {
    match n {
        0..=32 => 0,
        33..=64 => 1,
        _ => 2,
    }
}

impl Vec4Kernels {
    /// matmul_tn_shared_parts for `dims` in `parts`, and its grid.
    fn tn_shared_parts(&self, dims: &MatmulDims, parts: u32) -> (&Kernel, [u32; 3]) {
        self.shared_parts(
            &self.tn_shared_parts,
            "matmul_tn_shared_parts",
            &VEC4_SLOTS,
            dims,
            parts,
        )
    }

    /// `entry` (matmul_tn_shared_parts or conv_weight_grad_parts) from `kernels` for a product
    /// of `dims` in `parts`, and its grid. A workgroup's 8 groups of lanes span the product's
    /// width (`tn_across`), then as many groups of 64 rows as it has, up to the rest; groups
    /// left over take further parts, where they would otherwise compute clamped copies of the
    /// last rows (a 16-channel convolution's weight gradient has 148 rows: 3 groups of 8).
    fn shared_parts<'s>(
        &'s self,
        kernels: &'s SharedPartsKernels,
        entry: &'static str,
        slots: &[(u32, Slot)],
        dims: &MatmulDims,
        parts: u32,
    ) -> (&'s Kernel, [u32; 3]) {
        let across_index = tn_across(dims.n);
        let across = 1u32 << across_index;
        let down = (8 / across).min(dims.m.div_ceil(64).next_power_of_two());
        let kernel = kernels[across_index][down.trailing_zeros() as usize].get_or_init(|| {
            let constants = [("TN_ACROSS", across as f64), ("TN_DOWN", down as f64)];
            build(&self.device, &self.module, entry, slots, &constants)
        });
        let parts_per_workgroup = 8 / (across * down);
        let grid = [
            dims.n.div_ceil(16 * across),
            dims.m.div_ceil(64 * down),
            parts.div_ceil(parts_per_workgroup),
        ];
        (kernel, grid)
    }

    /// matmul_nn for the forward activation and width of `dims` (any activation where it has no
    /// epilogue).
    fn nn(&self, dims: &MatmulDims) -> &Kernel {
        self.forward(&self.nn, "matmul_nn", &VEC4_SLOTS, dims)
    }

    /// `entry` (matmul_nn or conv_forward) from `kernels` for the forward activation and width
    /// of `dims`.
    fn forward<'s>(
        &'s self,
        kernels: &'s [[OnceLock<Kernel>; NN_ARRANGEMENTS]; FORWARD_ACTIVATIONS],
        entry: &'static str,
        slots: &[(u32, Slot)],
        dims: &MatmulDims,
    ) -> &'s Kernel {
        let code = dims.epilogue_activation().map_or(0, |a| a.shader_code());
        let across = nn_across(dims.n);
        kernels[code as usize][across].get_or_init(|| {
            let constants = [
                ("ACTIVATION", code as f64),
                ("NN_ACROSS", (1u32 << across) as f64),
            ];
            build(&self.device, &self.module, entry, slots, &constants)
        })
    }
}

/// The bindings of conv_forward and conv_weight_grad_parts: the register kernels' and the
/// convolution's shape.
const IMAGE_SLOTS: [(u32, Slot); 5] = [
    (0, Slot::Params),
    (1, Slot::Mirror),
    (2, Slot::Mirror),
    (3, Slot::ReadWrite),
    (5, Slot::Params),
];

/// A convolution's forward product or weight gradient computed from its input image, without
/// the patch matrix (`MatmulKernels::image_forward`, `image_weight_grad`): the kernel, its grid
/// and dims (the parts' where the product is split along K), and where split, the sum of the
/// parts and its dims, over a scratch of `scratch_floats`.
pub struct ImageProduct<'k> {
    pub kernel: &'k Kernel,
    pub grid: [u32; 3],
    pub dims: MatmulDims,
    pub sum: Option<(MatmulDispatch<'k>, MatmulDims)>,
    pub scratch_floats: usize,
}

impl<'k> ImageProduct<'k> {
    /// A product in one dispatch, storing C itself.
    fn single(kernel: &'k Kernel, grid: [u32; 3], dims: MatmulDims) -> Self {
        ImageProduct {
            kernel,
            grid,
            dims,
            sum: None,
            scratch_floats: 0,
        }
    }
}

/// A product computed in parts along K (`MatmulKernels::split_along_k`): `parts` writes
/// `parts_dims.parts` partial products into a scratch buffer of `scratch_floats`, `sum` adds them
/// in a fixed order into the product's place.
pub struct SplitProduct<'k> {
    pub parts: MatmulDispatch<'k>,
    pub parts_dims: MatmulDims,
    pub sum: MatmulDispatch<'k>,
    pub sum_dims: MatmulDims,
    pub scratch_floats: usize,
}

impl<'k> SplitProduct<'k> {
    /// Bind groups for the parts, then the sum, over scratch and dims buffers of their own: the
    /// product run alone (a training program binds its layer's scratch through `Program`).
    pub fn bind_alone(
        &self,
        gpu: &Gpu,
        [lhs, rhs]: [MatmulOperand<'_>; 2],
        out: &Buffer,
        encoder: &mut CommandEncoder,
    ) -> crate::error::Result<[(&MatmulDispatch<'k>, BindGroup); 2]> {
        let scratch = gpu.storage_buffer("matmul parts", (self.scratch_floats * 4) as u64)?;
        let parts_dims = gpu.params_with("matmul parts dims", &self.parts_dims);
        let sum_dims = gpu.params_with("matmul sum dims", &self.sum_dims);
        let parts = (self.parts).bind(gpu, &parts_dims, lhs, rhs, &scratch, None, encoder);
        let sum = (self.sum.kernel).bind(gpu, &self.sum_resources(&sum_dims, &scratch, out));
        Ok([(&self.parts, parts), (&self.sum, sum)])
    }

    /// The sum kernel's bindings: its dims, the parts (bound as both operands; it reads one),
    /// and C.
    pub fn sum_resources<'b>(
        &self,
        sum_dims: &'b Buffer,
        scratch: &'b Buffer,
        out: &'b Buffer,
    ) -> [BindingResource<'b>; 4] {
        [
            sum_dims.as_entire_binding(),
            scratch.as_entire_binding(),
            scratch.as_entire_binding(),
            out.as_entire_binding(),
        ]
    }
}

/// The parts along K of a weight-gradient-form product on the register kernels (1: unsplit).
fn register_parts(dims: &MatmulDims) -> u32 {
    if dims.k < SPLIT_MIN_K {
        return 1;
    }
    let blocks = dims.m.div_ceil(8) * dims.n.div_ceil(16);
    SPLIT_INVOCATIONS
        .div_ceil(blocks)
        .min(dims.k / SPLIT_MIN_PART_K)
        .max(1)
}

/// Products split along K only from this K on (shorter ones fill the adapter unsplit)...
const SPLIT_MIN_K: u32 = 1024;
/// ... on the register variant into parts of at least this many k...
const SPLIT_MIN_PART_K: u32 = 256;
/// ... and into as many parts as give the blocks of C this many invocations in all.
const SPLIT_INVOCATIONS: u32 = 512;
/// On the tiled variant (GPUs), into as many parts as give this many workgroups: an H200's 132
/// SMs four times over, each SM holding several workgroups at once...
const TILED_SPLIT_WORKGROUPS: u32 = 4 * 132;
/// ... each part at least this many k: matmul_sum_parts reads the parts one after another, so
/// more, shorter parts trade its time for theirs (conv 0 of the convnet, K 86528: 169 parts).
const TILED_SPLIT_MIN_PART_K: u32 = 512;

/// A kernel to dispatch for one product, with its grid.
pub struct MatmulDispatch<'k> {
    pub kernel: &'k Kernel,
    pub grid: [u32; 3],
    pub variant: MatmulVariant,
    /// Whether the kernel reads A and B from texture mirrors (else from the buffers).
    pub reads_mirrors: bool,
    /// Whether the kernel takes the mirror of the layer output its backward epilogue reads
    /// (matmul_vec4.wgsl's matmul_nt).
    pub reads_below: bool,
}

/// An operand of a product: the buffer holding it, and the buffer's texture mirror if it has
/// one.
#[derive(Clone, Copy)]
pub struct MatmulOperand<'a> {
    pub buffer: &'a Buffer,
    pub mirror: Option<&'a TextureMirror>,
}

impl<'a> MatmulOperand<'a> {
    pub fn new(buffer: &'a Buffer, mirror: Option<&'a TextureMirror>) -> Self {
        MatmulOperand { buffer, mirror }
    }
}

impl<'k> MatmulDispatch<'k> {
    /// The resources this product binds, in binding order (`dims` is its parameter buffer, and
    /// `reads` the bytes it reads of A, B and `below` (`MatmulDims::read_bytes`); `below`, for
    /// a backward epilogue, the mirror of the layer output it reads). Where the kernel reads
    /// mirrors, hands each one it reads to `refresh` with the bytes it reads, whose copy must
    /// run before the dispatch.
    #[allow(clippy::too_many_arguments)]
    pub fn resources<'a>(
        &self,
        (dims, reads): (&'a Buffer, [u64; 3]),
        lhs: MatmulOperand<'a>,
        rhs: MatmulOperand<'a>,
        out: &'a Buffer,
        below: Option<&'a TextureMirror>,
        refresh: &mut dyn FnMut(&TextureMirror, u64),
    ) -> Vec<BindingResource<'a>> {
        if !self.reads_mirrors {
            return vec![
                dims.as_entire_binding(),
                lhs.buffer.as_entire_binding(),
                rhs.buffer.as_entire_binding(),
                out.as_entire_binding(),
            ];
        }
        const NO_MIRROR: &str = "a mirror-reading matmul kernel chosen for an operand without one";
        let (lhs, rhs) = (lhs.mirror.expect(NO_MIRROR), rhs.mirror.expect(NO_MIRROR));
        refresh(lhs, reads[0]);
        refresh(rhs, reads[1]);
        let mut resources = vec![
            dims.as_entire_binding(),
            BindingResource::TextureView(&lhs.view),
            BindingResource::TextureView(&rhs.view),
            out.as_entire_binding(),
        ];
        if self.reads_below {
            // Without a backward epilogue the kernel reads nothing there: any mirror will do.
            let below = match below {
                Some(below) => {
                    refresh(below, reads[2]);
                    below
                }
                None => lhs,
            };
            resources.push(BindingResource::TextureView(&below.view));
        }
        resources
    }

    /// The bind group of `resources`, refreshing into `encoder` the mirrors it reads (for a
    /// product run on its own, outside a training program).
    #[allow(clippy::too_many_arguments)]
    pub fn bind(
        &self,
        gpu: &Gpu,
        dims: &Buffer,
        lhs: MatmulOperand<'_>,
        rhs: MatmulOperand<'_>,
        out: &Buffer,
        below: Option<&TextureMirror>,
        encoder: &mut CommandEncoder,
    ) -> BindGroup {
        // Run once on their own, the operands are copied whole (a refresh stops at the buffer's end).
        let mut refresh = |mirror: &TextureMirror, bytes| mirror.record_refresh_of(encoder, bytes);
        let whole = [u64::MAX; 3];
        let resources = self.resources((dims, whole), lhs, rhs, out, below, &mut refresh);
        self.kernel.bind(gpu, &resources)
    }
}

impl MatmulKernels {
    pub(super) fn new(gpu: &Gpu, tiling: MatmulTiling, preferred: MatmulVariant) -> Self {
        use Slot::*;
        let slots = [(0, Params), (1, Read), (2, Read), (3, ReadWrite)];
        let module = |label: &str, source: &str| {
            gpu.device
                .create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(label),
                    source: wgpu::ShaderSource::Wgsl(source.into()),
                })
        };
        let tiled = module("matmul.wgsl", crate::shader_source!("matmul.wgsl"));
        let tiling_constants = [
            ("WG_M", tiling.wg_m as f64),
            ("WG_N", tiling.wg_n as f64),
            ("TILE_K", tiling.tile_k as f64),
        ];
        let vec4 = has_register_subgroups(gpu).then(|| {
            let registers = module(
                "matmul_vec4.wgsl",
                crate::shader_source!("matmul_vec4.wgsl"),
            );
            let with_below = [VEC4_SLOTS.as_slice(), &[(4, Mirror)]].concat();
            Vec4Kernels {
                tn: build(&gpu.device, &registers, "matmul_tn", &VEC4_SLOTS, &[]),
                tn_parts: build(&gpu.device, &registers, "matmul_tn_parts", &VEC4_SLOTS, &[]),
                tn_shared_parts: Default::default(),
                nt: build(&gpu.device, &registers, "matmul_nt", &with_below, &[]),
                conv_input_grad: build(
                    &gpu.device,
                    &registers,
                    "conv_input_grad",
                    &[VEC4_SLOTS.as_slice(), &[(5, Params), (6, Read)]].concat(),
                    &[],
                ),
                nn: Default::default(),
                conv_forward: Default::default(),
                conv_weight_grad_parts: Default::default(),
                module: registers,
                device: gpu.device.clone(),
            }
        });
        MatmulKernels {
            tiled: build(&gpu.device, &tiled, "matmul", &slots, &tiling_constants),
            tiling,
            tiled_parts: build(
                &gpu.device,
                &tiled,
                "matmul_parts",
                &slots,
                &tiling_constants,
            ),
            blocks: build(&gpu.device, &tiled, "matmul_blocks", &slots, &[]),
            sum_parts: build(&gpu.device, &tiled, "matmul_sum_parts", &slots, &[]),
            vec4,
            preferred,
            max_groups: gpu.limits.max_compute_workgroups_per_dimension,
        }
    }

    /// What computes `dims` with `variant`, on operands that have texture mirrors.
    pub fn with_variant(&self, dims: &MatmulDims, variant: MatmulVariant) -> MatmulDispatch<'_> {
        checked(self.choose(dims, variant, true), dims)
    }

    /// What computes `dims` on the adapter's preferred variant, on operands that have texture
    /// mirrors.
    pub fn for_dims(&self, dims: &MatmulDims) -> MatmulDispatch<'_> {
        self.with_variant(dims, self.preferred)
    }

    /// What computes `dims` on the preferred variant for these operands: a mirror-reading
    /// kernel only if both have mirrors.
    pub fn for_operands(
        &self,
        dims: &MatmulDims,
        lhs: MatmulOperand<'_>,
        rhs: MatmulOperand<'_>,
    ) -> MatmulDispatch<'_> {
        checked(self.choose(dims, self.preferred, mirrored(lhs, rhs)), dims)
    }

    /// Whether `dims`, a product with the backward epilogue, can run on the preferred variant
    /// with these operands (only matmul_vec4.wgsl's matmul_nt has that epilogue).
    pub fn has_backward_epilogue(
        &self,
        dims: &MatmulDims,
        lhs: MatmulOperand<'_>,
        rhs: MatmulOperand<'_>,
    ) -> bool {
        self.choose(dims, self.preferred, mirrored(lhs, rhs))
            .reads_below
    }

    /// Whether products on the preferred variant may read texture mirrors (so their operands
    /// are worth mirroring).
    pub fn reads_mirrors(&self) -> bool {
        self.preferred == MatmulVariant::Registers && self.vec4.is_some()
    }

    /// The kernel for `dims` (`mirrored`: whether the operands have mirrors), whether or not it
    /// has the epilogue `dims` asks for (`checked` says).
    fn choose(
        &self,
        dims: &MatmulDims,
        variant: MatmulVariant,
        mirrored: bool,
    ) -> MatmulDispatch<'_> {
        let vec4 = self.vec4.as_ref().filter(|_| mirrored);
        let form = RegisterForm::of(dims);
        let (kernel, grid, reads_mirrors) = match variant {
            MatmulVariant::Tiled => (&self.tiled, self.tiled_grid(dims), false),
            MatmulVariant::Registers => match (vec4, form) {
                // A weight gradient narrower than matmul_tn's 128-column workgroups, whose
                // other groups would compute clamped copies of its columns: the shared parts
                // kernel in one part, its groups arranged for the width (the same blocks and
                // sums as matmul_tn's).
                (Some(vec4), Some(RegisterForm::Tn))
                    if tn_across(dims.n) < TN_ARRANGEMENTS - 1 && dims.m >= SHARED_PARTS_MIN_M =>
                {
                    let (kernel, grid) = vec4.tn_shared_parts(dims, 1);
                    (kernel, grid, true)
                }
                (Some(vec4), Some(form)) => {
                    let kernel = match form {
                        RegisterForm::Nn => vec4.nn(dims),
                        RegisterForm::Tn => &vec4.tn,
                        RegisterForm::Nt => &vec4.nt,
                    };
                    // A workgroup: 8 blocks along N times 8 along M, or for matmul_nn
                    // 2 NN_ACROSS times 32 / NN_ACROSS.
                    let (block_m, block_n) = register_block(form);
                    let (across, down) = match form {
                        RegisterForm::Nn => {
                            let across = 1 << nn_across(dims.n);
                            (2 * across, 32 / across)
                        }
                        _ => (8, 8),
                    };
                    let grid = [
                        dims.n.div_ceil(across * block_n),
                        dims.m.div_ceil(down * block_m),
                        1,
                    ];
                    (kernel, grid, true)
                }
                _ => {
                    let blocks = dims.m.div_ceil(4) as usize * dims.n.div_ceil(4) as usize;
                    (
                        &self.blocks,
                        grid_1d(blocks, ROW_WORKGROUP, self.max_groups),
                        false,
                    )
                }
            },
        };
        MatmulDispatch {
            kernel,
            grid,
            variant,
            reads_mirrors,
            reads_below: reads_mirrors && form == Some(RegisterForm::Nt),
        }
    }

    /// What computes a convolution's input gradient `dims` (`MatmulDims::conv_input_grad`, of
    /// the convolution `shape`) straight from its output's gradient, if the preferred variant
    /// does (matmul_vec4.wgsl's `conv_input_grad`: on the register kernels, both operands
    /// mirrored, channels and filters in fours); else the caller takes the patch matrix's
    /// gradient and col2im. At a stride above 1 each workgroup takes pixels of one class (the
    /// same position in the stride's window), whose taps read the same kernel rows and
    /// columns, so that it loops over those taps alone (when every pixel looped over every
    /// tap, ResNet-8's strided convolutions ran 3-5 times slower than the patch matrix's
    /// gradient product).
    pub fn conv_input_grad(
        &self,
        dims: &MatmulDims,
        shape: &ConvShape,
        [lhs, rhs]: [MatmulOperand<'_>; 2],
    ) -> Option<(&Kernel, [u32; 3])> {
        let vec4 = self.vec4.as_ref()?;
        let grid = self.direct_input_grad_grid(dims, shape)?;
        mirrored(lhs, rhs).then_some((&vec4.conv_input_grad, grid))
    }

    /// Whether a convolution of `geometry` with weights `matrix`, in batches of up to `batch`
    /// samples, takes its input gradient straight from dz (`conv_input_grad`) where dz and
    /// the parameters have mirrors: a layer that does needs no patch matrix gradient.
    pub fn takes_direct_input_grad(
        &self,
        geometry: &Geometry,
        matrix: &WeightMatrix,
        batch: usize,
    ) -> bool {
        let dims = MatmulDims::conv_input_grad(batch, geometry, matrix);
        let shape = ConvShape::new(batch, geometry, matrix.rows, LayerActivation::Identity);
        self.vec4.is_some() && self.direct_input_grad_grid(&dims, &shape).is_some()
    }

    /// conv_input_grad's grid for `dims` of the convolution `shape`, where the preferred
    /// variant runs it on such a shape (mirrors aside).
    fn direct_input_grad_grid(&self, dims: &MatmulDims, shape: &ConvShape) -> Option<[u32; 3]> {
        let aligned = [
            dims.n,
            dims.b_col_stride,
            dims.a_offset,
            dims.b_offset,
            dims.c_offset,
        ]
        .iter()
        .all(|v| v % 4 == 0);
        // A workgroup covers 32 columns and 128 rows of one class of pixels (the grid's z: a
        // class per position in a stride's window); the first class is the largest.
        let (sy, sx) = (shape.stride_y, shape.stride_x);
        let largest_class =
            shape.samples * shape.in_height.div_ceil(sy) * shape.in_width.div_ceil(sx);
        let grid = [dims.n.div_ceil(32), largest_class.div_ceil(128), sy * sx];
        let runs = self.preferred == MatmulVariant::Registers
            && aligned
            && dims.m > 0
            && dims.n > 0
            && grid.iter().all(|&groups| groups <= self.max_groups);
        runs.then_some(grid)
    }

    /// Whether a convolution of `geometry` with weights `matrix` computes its forward product
    /// and weight gradient from its input image (`image_forward`, `image_weight_grad`) where its
    /// operands have mirrors: on the register kernels, channels and filters in fours, and at
    /// least 64 rows of W (the weight gradient shares its loads as matmul_tn_shared_parts does:
    /// a 1×1 projection's few rows keep the patch matrix). A layer that does needs no patch
    /// matrix.
    pub fn takes_images(&self, geometry: &Geometry, matrix: &WeightMatrix) -> bool {
        let channels = geometry.input.channels;
        self.reads_mirrors()
            && channels.is_multiple_of(4)
            && matrix.outputs.is_multiple_of(4)
            && matrix.weight_offset.is_multiple_of(4)
            && matrix.rows == geometry.window_len() * channels + 4
            && matrix.rows as u32 >= SHARED_PARTS_MIN_M
    }

    /// conv_forward for `dims` (`MatmulDims::conv_forward`) of the convolution `shape` (with its
    /// ones column's value), reading X (lhs) and W (rhs) from their mirrors, where
    /// `takes_images` holds for it; the grid is matmul_nn's.
    pub fn image_forward(
        &self,
        dims: &MatmulDims,
        shape: &ConvShape,
        [lhs, rhs]: [MatmulOperand<'_>; 2],
    ) -> Option<ImageProduct<'_>> {
        let vec4 = self.vec4.as_ref()?;
        let nn = self.choose(dims, MatmulVariant::Registers, mirrored(lhs, rhs));
        let fits = nn.reads_mirrors && self.image_shape_fits(dims, shape);
        fits.then(|| {
            let kernel = vec4.forward(&vec4.conv_forward, "conv_forward", &IMAGE_SLOTS, dims);
            ImageProduct::single(kernel, nn.grid, *dims)
        })
    }

    /// conv_weight_grad_parts for `dims` (`MatmulDims::conv_weight_grad`) of the convolution
    /// `shape`, reading X (lhs) and dZ (rhs) from their mirrors, where `takes_images` holds for
    /// it: in the parts `split_for` would give the patch matrix's product (so the same sums),
    /// a single part written straight into C.
    pub fn image_weight_grad(
        &self,
        dims: &MatmulDims,
        shape: &ConvShape,
        [lhs, rhs]: [MatmulOperand<'_>; 2],
    ) -> Option<ImageProduct<'_>> {
        let vec4 = self.vec4.as_ref()?;
        let form = RegisterForm::of(dims) == Some(RegisterForm::Tn);
        let shared = dims.m >= SHARED_PARTS_MIN_M;
        if !(form && shared && mirrored(lhs, rhs) && self.image_shape_fits(dims, shape)) {
            return None;
        }
        let parts = register_parts(dims);
        let slots = &IMAGE_SLOTS;
        let entry = "conv_weight_grad_parts";
        let (kernel, grid) =
            vec4.shared_parts(&vec4.conv_weight_grad_parts, entry, slots, dims, parts);
        if parts == 1 {
            let dims = MatmulDims { parts, ..*dims };
            return Some(ImageProduct::single(kernel, grid, dims));
        }
        let parts_kernel = self.dispatch(kernel, grid, true);
        let split = self.split_product(dims, parts, parts_kernel, MatmulVariant::Registers);
        Some(ImageProduct {
            kernel,
            grid,
            dims: split.parts_dims,
            sum: Some((split.sum, split.sum_dims)),
            scratch_floats: split.scratch_floats,
        })
    }

    /// Whether the image kernels take the convolution `shape` with `dims`: channels and filters
    /// in fours, aligned offsets, and rows of W as the patch matrix's (taps × C, then 4), at
    /// least 64 of them (as `takes_images` says).
    fn image_shape_fits(&self, dims: &MatmulDims, shape: &ConvShape) -> bool {
        let taps = shape.kernel_height * shape.kernel_width;
        let aligned = [dims.n, dims.a_offset, dims.b_offset, dims.c_offset]
            .iter()
            .all(|v| v % 4 == 0);
        self.preferred == MatmulVariant::Registers
            && aligned
            && shape.channels.is_multiple_of(4)
            && shape.columns == taps * shape.channels + 4
            && shape.columns >= SHARED_PARTS_MIN_M
            && dims.m > 0
            && dims.n > 0
    }

    /// The first layer's weight and bias gradient on the transposed batch
    /// (`MatmulDims::layer_weight_and_bias_grad_transposed`, rows `stride` floats long), where a
    /// step computes it so: where the products read mirrors and the vec4 forward kernel takes it
    /// (faster there than the weight-gradient form). The training programs and `bench` both ask
    /// this.
    pub fn transposed_first_weight_grad(
        &self,
        rows: usize,
        layer: &WeightMatrix,
        stride: usize,
    ) -> Option<MatmulDims> {
        let dims = MatmulDims::layer_weight_and_bias_grad_transposed(rows, layer, stride);
        (self.reads_mirrors() && self.takes_vec4(&dims)).then_some(dims)
    }

    /// `dims` in parts along K where the preferred variant computes it so (`split_with`).
    /// The split of `dims` over these operands: only where both have the mirrors the register
    /// parts kernel reads (a mirror can be missing where a buffer exceeds the texture limits).
    pub fn split_for(
        &self,
        dims: &MatmulDims,
        operands: [&MatmulOperand<'_>; 2],
    ) -> Option<SplitProduct<'_>> {
        self.split_for_variant(dims, self.preferred, operands)
    }

    /// `split_for` on `variant` (the tiled parts kernel reads buffers, so any operands do).
    pub fn split_for_variant(
        &self,
        dims: &MatmulDims,
        variant: MatmulVariant,
        [lhs, rhs]: [&MatmulOperand<'_>; 2],
    ) -> Option<SplitProduct<'_>> {
        let readable = variant == MatmulVariant::Tiled || mirrored(*lhs, *rhs);
        readable.then(|| self.split_with(dims, variant)).flatten()
    }

    /// `split_with` on the preferred variant.
    pub fn split_along_k(&self, dims: &MatmulDims) -> Option<SplitProduct<'_>> {
        self.split_with(dims, self.preferred)
    }

    /// `dims` in parts along K where `variant` computes it so (operands with mirrors, for the
    /// register variant): a weight-gradient-form product (A stored transposed) whose K is long
    /// and whose C has too few blocks to fill the adapter, such as a convolution's weight
    /// gradient.
    pub fn split_with(
        &self,
        dims: &MatmulDims,
        variant: MatmulVariant,
    ) -> Option<SplitProduct<'_>> {
        match variant {
            MatmulVariant::Tiled => self.split_tiled(dims),
            MatmulVariant::Registers => self.split_registers(dims),
        }
    }

    fn split_tiled(&self, dims: &MatmulDims) -> Option<SplitProduct<'_>> {
        let weight_grad_form = dims.a_row_stride == 1 && dims.epilogue == NO_EPILOGUE;
        if !weight_grad_form || dims.m == 0 || dims.n == 0 || dims.k < SPLIT_MIN_K {
            return None;
        }
        let [tiles_n, tiles_m, _] = self.tiled_grid(dims);
        let parts = TILED_SPLIT_WORKGROUPS
            .div_ceil(tiles_n * tiles_m)
            .min(dims.k / TILED_SPLIT_MIN_PART_K);
        (parts >= 2).then(|| {
            let parts_kernel = self.dispatch(&self.tiled_parts, [tiles_n, tiles_m, parts], false);
            self.split_product(dims, parts, parts_kernel, MatmulVariant::Tiled)
        })
    }

    fn split_registers(&self, dims: &MatmulDims) -> Option<SplitProduct<'_>> {
        let vec4 = self.vec4.as_ref()?;
        if RegisterForm::of(dims) != Some(RegisterForm::Tn) {
            return None;
        }
        let parts = register_parts(dims);
        if parts < 2 {
            return None;
        }
        let blocks = dims.m.div_ceil(8) * dims.n.div_ceil(16);
        // The same parts either way (so the same sums): with shared loads where C has the rows.
        let (kernel, grid) = match dims.m >= SHARED_PARTS_MIN_M {
            true => vec4.tn_shared_parts(dims, parts),
            false => {
                let invocations = (blocks * parts) as usize;
                let grid = grid_1d(invocations, ROW_WORKGROUP, self.max_groups);
                (&vec4.tn_parts, grid)
            }
        };
        let parts_kernel = MatmulDispatch {
            variant: MatmulVariant::Registers,
            ..self.dispatch(kernel, grid, true)
        };
        Some(self.split_product(dims, parts, parts_kernel, MatmulVariant::Registers))
    }

    /// A dispatch of a parts or sum kernel (never with an epilogue).
    fn dispatch<'s>(
        &'s self,
        kernel: &'s Kernel,
        grid: [u32; 3],
        reads_mirrors: bool,
    ) -> MatmulDispatch<'s> {
        MatmulDispatch {
            kernel,
            grid,
            variant: MatmulVariant::Tiled,
            reads_mirrors,
            reads_below: false,
        }
    }

    /// `dims` as `parts` (writing its parts to scratch from 0) then their sum into C.
    fn split_product<'s>(
        &'s self,
        dims: &MatmulDims,
        parts: u32,
        parts_kernel: MatmulDispatch<'s>,
        variant: MatmulVariant,
    ) -> SplitProduct<'s> {
        let values = dims.m * dims.n;
        let parts_dims = MatmulDims {
            c_offset: 0,
            parts,
            ..*dims
        };
        let sum_dims = MatmulDims {
            parts,
            ..MatmulDims {
                c_offset: dims.c_offset,
                ..MatmulDims::plain(dims.m as usize, dims.n as usize, 0)
            }
        };
        let sum_grid = grid_1d(values.div_ceil(4) as usize, ROW_WORKGROUP, self.max_groups);
        SplitProduct {
            parts: parts_kernel,
            parts_dims,
            sum: MatmulDispatch {
                variant,
                ..self.dispatch(&self.sum_parts, sum_grid, false)
            },
            sum_dims,
            scratch_floats: (parts * values) as usize,
        }
    }

    /// The tiled kernel's grid for `dims`: (tiles along N, tiles along M, 1).
    fn tiled_grid(&self, dims: &MatmulDims) -> [u32; 3] {
        [
            dims.n.div_ceil(4 * self.tiling.wg_n),
            dims.m.div_ceil(4 * self.tiling.wg_m),
            1,
        ]
    }

    /// Whether the register variant computes `dims` with its vec4 kernels where the operands
    /// have mirrors (else with 4×4 scalar blocks).
    pub fn takes_vec4(&self, dims: &MatmulDims) -> bool {
        self.vec4.is_some() && RegisterForm::of(dims).is_some()
    }
}
