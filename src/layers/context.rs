//! What a layer records its dispatches through: the device and kernels, the flat parameter,
//! gradient and state buffers, the step schedule, and the products' choice of kernel variant. The
//! trainer (`crate::train`) makes one per model; layers know nothing else of it.

use wgpu::{BindingResource, Buffer};

use crate::error::Result;
use crate::gpu::kernels::ElementwiseKernels;
use crate::gpu::matmul::ImageProduct;
use crate::gpu::program::Program;
use crate::gpu::uniforms::{ConvShape, ElementwiseShape, MatmulDims};
use crate::gpu::{Gpu, Kernel, Kernels, MatmulOperand, TextureMirror};
use crate::shapes::{LayerActivation, WeightMatrix};

use super::{DeviceTensor, read_from_mirrors};

/// The resources every layer's dispatches may bind, and the helpers that record products.
pub(crate) struct LayerContext<'a, 'k> {
    pub(crate) gpu: &'k Gpu,
    pub(crate) kernels: &'k Kernels,
    pub(crate) params: &'a DeviceTensor,
    pub(crate) grads: &'a Buffer,
    /// BatchNorm's running statistics (`ParamLayout::state`).
    pub(crate) state: &'a Buffer,
    pub(crate) schedule: &'a Buffer,
    pub(crate) input_transposed: Option<&'a TransposedInput>,
    /// The weight matrix of the dense layer that reads the batch itself (after any Flatten), if
    /// the first layer with parameters is one.
    pub(crate) batch_dense: Option<WeightMatrix>,
}

/// The training batch stored transposed, for the first layer's weight gradient as a forward-form
/// product (gather.wgsl's `gather_batch_transposed` writes it): on the register kernels the
/// forward blocks compute that shape faster than the weight-gradient form (docs/performance.md).
/// A row of ones below it (written
/// once, never gathered) makes the same product sum the bias gradient too, which saves
/// activation.wgsl's dispatch for that layer where its derivative is already applied.
pub(crate) struct TransposedInput {
    pub(crate) buffer: Buffer,
    mirror: TextureMirror,
    /// vec4 per row: the batch size rounded up to 4, over 4.
    pub(crate) quads: usize,
}

impl TransposedInput {
    /// Made where the matmul kernels read mirrors (the register kernels); elsewhere the
    /// weight-gradient form reads X through strides as fast.
    pub(crate) fn new(
        gpu: &Gpu,
        kernels: &Kernels,
        inputs: usize,
        batch: usize,
    ) -> Result<Option<Self>> {
        if !kernels.matmul.reads_mirrors() {
            return Ok(None);
        }
        let quads = batch.div_ceil(4);
        let buffer = gpu.storage_buffer("batch transposed", ((inputs + 1) * quads * 16) as u64)?;
        let ones = vec![1.0f32; 4 * quads];
        let ones_row = (inputs * quads * 16) as u64;
        gpu.queue
            .write_buffer(&buffer, ones_row, bytemuck::cast_slice(&ones));
        Ok(
            TextureMirror::new(gpu, "batch transposed mirror", &buffer).map(|mirror| {
                TransposedInput {
                    buffer,
                    mirror,
                    quads,
                }
            }),
        )
    }
}

impl<'a, 'k> LayerContext<'a, 'k> {
    pub(crate) fn max_groups(&self) -> u32 {
        self.gpu.limits.max_compute_workgroups_per_dimension
    }

    /// Records the product `dims` (`below`: the mirror a backward epilogue reads).
    pub(crate) fn matmul(
        &self,
        program: &mut Program<'k>,
        dims: MatmulDims,
        [lhs, rhs]: [MatmulOperand<'_>; 2],
        out: &Buffer,
        below: Option<&TextureMirror>,
    ) {
        let chosen = self.kernels.matmul.for_operands(&dims, lhs, rhs);
        let uniform = self.gpu.params_with("matmul dims", &dims);
        let reads = (&uniform, dims.read_bytes());
        let resources = chosen.resources(reads, lhs, rhs, out, below, &mut |mirror, bytes| {
            program.refresh(mirror, bytes)
        });
        program.dispatch(self.gpu, chosen.kernel, &resources, chosen.grid);
    }

    /// Records the product `dims` in parts along K where the kernels split it
    /// (`MatmulKernels::split_along_k`), the parts in `scratch` (sized for the largest split the
    /// caller records; without one, unsplit).
    pub(crate) fn matmul_in_parts(
        &self,
        program: &mut Program<'k>,
        dims: MatmulDims,
        [lhs, rhs]: [MatmulOperand<'_>; 2],
        out: &Buffer,
        scratch: Option<&Buffer>,
    ) {
        let split = self.kernels.matmul.split_for(&dims, [&lhs, &rhs]);
        let (Some(split), Some(scratch)) = (split, scratch) else {
            return self.matmul(program, dims, [lhs, rhs], out, None);
        };
        assert!(
            (split.scratch_floats * 4) as u64 <= scratch.size(),
            "a split product's parts fit its scratch buffer"
        );
        let uniform = self.gpu.params_with("matmul parts dims", &split.parts_dims);
        let reads = (&uniform, split.parts_dims.read_bytes());
        let resources =
            split
                .parts
                .resources(reads, lhs, rhs, scratch, None, &mut |mirror, bytes| {
                    program.refresh(mirror, bytes)
                });
        program.dispatch(self.gpu, split.parts.kernel, &resources, split.parts.grid);
        let uniform = self.gpu.params_with("matmul sum dims", &split.sum_dims);
        let resources = split.sum_resources(&uniform, scratch, out);
        program.dispatch(self.gpu, split.sum.kernel, &resources, split.sum.grid);
    }

    /// Records a convolution's product read from its input image (`MatmulKernels::image_forward`,
    /// `image_weight_grad`): lhs is the image X, of which it reads `lhs_bytes`; `shape` the
    /// convolution's; a split product's parts go to `scratch`, then their sum to `out`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn image_product(
        &self,
        program: &mut Program<'k>,
        product: &ImageProduct<'k>,
        [lhs, rhs]: [MatmulOperand<'_>; 2],
        lhs_bytes: u64,
        shape: &ConvShape,
        out: &Buffer,
        scratch: Option<&Buffer>,
    ) {
        const MIRRORED: &str = "the image kernels are chosen only for operands with mirrors";
        let (lhs, rhs) = (lhs.mirror.expect(MIRRORED), rhs.mirror.expect(MIRRORED));
        program.refresh(lhs, lhs_bytes);
        program.refresh(rhs, product.dims.read_bytes()[1]);
        let target = match (&product.sum, scratch) {
            (None, _) => out,
            (Some(_), Some(scratch)) => scratch,
            (Some(_), None) => panic!("a split image product is given its scratch buffer"),
        };
        let dims = self.gpu.params_with("image product dims", &product.dims);
        let shape = self.gpu.params_with("image product shape", shape);
        let resources = [
            dims.as_entire_binding(),
            BindingResource::TextureView(&lhs.view),
            BindingResource::TextureView(&rhs.view),
            target.as_entire_binding(),
            shape.as_entire_binding(),
        ];
        program.dispatch(self.gpu, product.kernel, &resources, product.grid);
        if let Some((sum, sum_dims)) = &product.sum {
            let uniform = self.gpu.params_with("matmul sum dims", sum_dims);
            let resources = [
                uniform.as_entire_binding(),
                target.as_entire_binding(),
                target.as_entire_binding(),
                out.as_entire_binding(),
            ];
            program.dispatch(self.gpu, sum.kernel, &resources, sum.grid);
        }
    }

    pub(crate) fn params_operand(&self) -> MatmulOperand<'a> {
        self.params.operand()
    }

    /// The weight and bias gradient of the dense layer reading the batch, on the transposed
    /// batch, where it runs on the register kernels' forward form (not where a partial batch's
    /// rows are not a multiple of 4). `forward` (whether to gather the batch transposed too) and
    /// that layer's backward pass both ask this for the same rows, so they agree.
    pub(crate) fn first_weight_grad_transposed(
        &self,
        rows: usize,
    ) -> Option<(MatmulDims, MatmulOperand<'a>)> {
        let transposed = self.input_transposed?;
        let matrix = self.batch_dense.as_ref()?;
        let stride = 4 * transposed.quads;
        let dims = (self.kernels.matmul).transposed_first_weight_grad(rows, matrix, stride)?;
        Some((
            dims,
            MatmulOperand::new(&transposed.buffer, Some(&transposed.mirror)),
        ))
    }

    /// Records the kernel of elementwise.wgsl that `pick` chooses, over `count` values:
    /// `inputs` a and b where it reads them, from their mirrors where each has one (refreshed
    /// for the values read), into `out`; `activation` for the activation kernels.
    pub(crate) fn elementwise(
        &self,
        program: &mut Program<'k>,
        pick: fn(&ElementwiseKernels) -> &Kernel,
        count: usize,
        activation: LayerActivation,
        inputs: [Option<&DeviceTensor>; 2],
        out: &Buffer,
    ) {
        let shape = ElementwiseShape {
            count: count as u32,
            activation: activation.shader_code(),
            _pad: [0; 2],
        };
        let shape = self.gpu.params_with("elementwise shape", &shape);
        let inputs: Vec<(&DeviceTensor, usize)> = inputs
            .into_iter()
            .flatten()
            .map(|input| (input, count * 4))
            .collect();
        let mirrored = read_from_mirrors(program, true, &inputs);
        let mut resources = vec![shape.as_entire_binding()];
        resources.extend(inputs.iter().map(|(input, _)| input.read_binding(mirrored)));
        resources.push(out.as_entire_binding());
        let grid = ElementwiseKernels::grid(count, self.max_groups());
        let kernel = pick(self.kernels.elementwise(mirrored));
        program.dispatch(self.gpu, kernel, &resources, grid);
    }
}
