//! Conv2D as matrix products over the patch matrix (im2col; `shaders/conv2d.wgsl`).
//!
//! Forward, x `[rows, H, W, C]` → y `[rows, OH, OW, F]`: P = im2col(x) `[rows OH OW, Kp]` (each
//! row a window, channel fastest, then a one and zeros to Kp), y = f(P W) with W the layer's
//! whole `[Kp, F]` weight matrix (its bias row meets P's ones). Backward, from dy: dz = dy ⊙ f'(y)
//! (unless the layer above applied it), [dW; db; 0] = Pᵀ dz, and, where a layer below needs it,
//! dx straight from dz and W (matmul_vec4.wgsl's `conv_input_grad`) where the register kernels
//! take it, else dP = dz Wᵀ `[rows OH OW, Kp]` and dx = col2im(dP) ⊙ below'(x).
//! Where the register kernels take it (`MatmulKernels::takes_images`: channels and filters in
//! fours), P is never written: the forward product and the weight gradient read its values
//! from x itself (matmul_vec4.wgsl's `conv_forward`, `conv_weight_grad_parts`), bit for bit
//! the same products.

use wgpu::{BindingResource, Buffer};

use super::context::LayerContext;
use super::kind::{
    DeviceArgs, LayerKind, Parameters, Product, ReferenceBackward, ReferenceForward, TensorMapping,
    TokenOptions,
};
use super::{Backward, DeviceLayer, DevicePasses, DeviceTensor, LayerIo, leading_number, positive};
use crate::error::Result;
use crate::gpu::buffers::grid_1d;
use crate::gpu::kernels::ROW_WORKGROUP;
use crate::gpu::program::Program;
use crate::gpu::uniforms::{ActivationShape, ConvShape, MatmulDims};
use crate::gpu::{Gpu, Kernels, TextureMirror};
use crate::reference;
use crate::shapes::{Geometry, LayerActivation, NormParams, Padding, Shape, WeightMatrix};

/// A convolution in a training program, with its patch matrix and the patch matrix's gradient
/// where its kernels need them.
pub(crate) struct ConvDevice {
    geometry: Geometry,
    matrix: WeightMatrix,
    activation: LayerActivation,
    /// None where the forward product and the weight gradient read the input image itself
    /// (`MatmulKernels::takes_images`).
    patches: Option<DeviceTensor>,
    /// None where the input gradient comes straight from dz (`conv_input_grad`).
    patch_grads: Option<Buffer>,
    /// The weight gradient's partial products, where it is computed in parts along K.
    weight_grad_parts: Option<Buffer>,
}

/// Floats of one sample's rows of the patch matrix: a window per output position.
pub(crate) fn patch_floats_per_sample(geometry: &Geometry, matrix: &WeightMatrix) -> usize {
    geometry.positions() * matrix.rows
}

/// Why a layer without a patch matrix finds the image kernels: `ConvDevice::new` asked.
const IMAGE_KERNELS: &str = "ConvDevice::new found the image kernels for this convolution";

impl ConvDevice {
    pub fn new(
        gpu: &Gpu,
        kernels: &Kernels,
        geometry: Geometry,
        matrix: WeightMatrix,
        activation: LayerActivation,
        batch: usize,
    ) -> Result<Self> {
        let positions = batch * geometry.positions();
        let bytes = (batch * patch_floats_per_sample(&geometry, &matrix) * 4) as u64;
        // A smaller batch splits into as many parts or fewer.
        let split =
            (kernels.matmul).split_along_k(&MatmulDims::conv_weight_grad(positions, &matrix));
        let weight_grad_parts = match split {
            Some(split) => Some(
                gpu.storage_buffer("weight gradient parts", (split.scratch_floats * 4) as u64)?,
            ),
            None => None,
        };
        // The image and dz have mirrors wherever the products read mirrors and they fit one
        // (the parameters always do: they are no larger than a storage binding).
        let mirrored = |floats: usize| TextureMirror::fits(gpu, (batch * floats * 4) as u64);
        let dz_mirrored = mirrored(geometry.positions() * matrix.outputs);
        let images = kernels.matmul.takes_images(&geometry, &matrix)
            && mirrored(geometry.input.len())
            && dz_mirrored;
        let patches = match images {
            true => None,
            false => Some(DeviceTensor::new(gpu, kernels, "patch matrix", bytes)?),
        };
        let direct_input_grad =
            dz_mirrored && (kernels.matmul).takes_direct_input_grad(&geometry, &matrix, batch);
        let patch_grads = match direct_input_grad {
            true => None,
            false => Some(gpu.storage_buffer("patch matrix gradient", bytes)?),
        };
        Ok(ConvDevice {
            weight_grad_parts,
            patches,
            patch_grads,
            geometry,
            matrix,
            activation,
        })
    }

    /// The convolution's shape for `rows` samples, with its ones column's value.
    fn shape(&self, rows: usize, below: LayerActivation) -> ConvShape {
        ConvShape::new(rows, &self.geometry, self.matrix.rows, below).with_bias(self.matrix.bias)
    }

    /// Bytes of the input image at `rows` samples.
    fn input_bytes(&self, rows: usize) -> u64 {
        (rows * self.geometry.input.len() * 4) as u64
    }
}

impl DevicePasses for ConvDevice {
    fn record_forward<'k>(
        &self,
        context: &LayerContext<'_, 'k>,
        program: &mut Program<'k>,
        io: &LayerIo<'_>,
        rows: usize,
        _training: bool,
    ) {
        let g = &self.geometry;
        let shape = self.shape(rows, LayerActivation::Identity);
        let dims = MatmulDims::conv_forward(rows * g.positions(), &self.matrix, self.activation);
        let Some(patches) = &self.patches else {
            let operands = [io.input.operand(), context.params_operand()];
            let matmul = &context.kernels.matmul;
            let product = matmul.image_forward(&dims, &shape, operands);
            let product = product.expect(IMAGE_KERNELS);
            let x_bytes = self.input_bytes(rows);
            let out = &io.output.buffer;
            context.image_product(program, &product, operands, x_bytes, &shape, out, None);
            return;
        };
        let im2col_shape = context.gpu.params_with("im2col shape", &shape);
        let resources = [
            im2col_shape.as_entire_binding(),
            io.input.buffer.as_entire_binding(),
            patches.buffer.as_entire_binding(),
        ];
        let (kernel, invocations) = context.kernels.conv.im2col_for(g, rows);
        let grid = grid_1d(invocations, ROW_WORKGROUP, context.max_groups());
        program.dispatch(context.gpu, kernel, &resources, grid);
        let operands = [patches.operand(), context.params_operand()];
        context.matmul(program, dims, operands, &io.output.buffer, None);
    }

    fn record_backward<'k>(
        &self,
        context: &LayerContext<'_, 'k>,
        program: &mut Program<'k>,
        io: &LayerIo<'_>,
        rows: usize,
        backward: Backward,
    ) -> bool {
        let g = &self.geometry;
        let positions = rows * g.positions();
        let gpu = context.gpu;
        if !backward.derivative_applied && self.activation != LayerActivation::Identity {
            let shape = gpu.params_with(
                "derivative shape",
                &ActivationShape {
                    rows: positions as u32,
                    cols: self.matrix.outputs as u32,
                    bias_offset: 0,
                    activation: self.activation.shader_code(),
                },
            );
            let resources = [
                shape.as_entire_binding(),
                io.output_grad.buffer.as_entire_binding(),
                io.output.buffer.as_entire_binding(),
            ];
            let values = positions * self.matrix.outputs;
            let grid = grid_1d(values.div_ceil(4), ROW_WORKGROUP, context.max_groups());
            program.dispatch(gpu, &context.kernels.apply_derivative, &resources, grid);
        }
        // An explanation's backward pass wants the input gradient alone.
        if backward.training {
            let dims = MatmulDims::conv_weight_grad(positions, &self.matrix);
            let scratch = self.weight_grad_parts.as_ref();
            match &self.patches {
                Some(patches) => {
                    let operands = [patches.operand(), io.output_grad.operand()];
                    context.matmul_in_parts(program, dims, operands, context.grads, scratch);
                }
                None => {
                    let operands = [io.input.operand(), io.output_grad.operand()];
                    let shape = self.shape(rows, LayerActivation::Identity);
                    let matmul = &context.kernels.matmul;
                    let product = matmul.image_weight_grad(&dims, &shape, operands);
                    let product = product.expect(IMAGE_KERNELS);
                    let x_bytes = self.input_bytes(rows);
                    let grads = context.grads;
                    context.image_product(
                        program, &product, operands, x_bytes, &shape, grads, scratch,
                    );
                }
            }
        }
        let Some(input_grad) = io.input_grad else {
            return false;
        };
        let dims = MatmulDims::conv_input_grad(rows, g, &self.matrix);
        let shape = ConvShape::new(rows, g, self.matrix.rows, backward.below);
        let operands = [io.output_grad.operand(), context.params_operand()];
        let direct = (context
            .kernels
            .matmul
            .conv_input_grad(&dims, &shape, operands))
        .zip(operands[0].mirror.zip(operands[1].mirror));
        if let Some(((kernel, grid), (grads, params))) = direct {
            // It reads all of dZ and the tap rows of W.
            let m = &self.matrix;
            program.refresh(grads, (positions * m.outputs * 4) as u64);
            program.refresh(
                params,
                ((m.weight_offset + m.inputs * m.outputs) * 4) as u64,
            );
            let dims = gpu.params_with("conv input grad dims", &dims);
            let shape = gpu.params_with("conv input grad shape", &shape);
            let resources = [
                dims.as_entire_binding(),
                BindingResource::TextureView(&grads.view),
                BindingResource::TextureView(&params.view),
                input_grad.buffer.as_entire_binding(),
                shape.as_entire_binding(),
                io.input.buffer.as_entire_binding(),
            ];
            program.dispatch(gpu, kernel, &resources, grid);
            return true;
        }
        let patch_grads = (self.patch_grads.as_ref())
            .expect("ConvDevice::new keeps the patch gradient where conv_input_grad does not run");
        let dims = MatmulDims::conv_patch_grad(positions, &self.matrix);
        context.matmul(program, dims, operands, patch_grads, None);
        let shape = ConvShape::new(rows, g, self.matrix.rows, backward.below);
        let shape = gpu.params_with("col2im shape", &shape);
        let resources = [
            shape.as_entire_binding(),
            patch_grads.as_entire_binding(),
            input_grad.buffer.as_entire_binding(),
            io.input.buffer.as_entire_binding(),
        ];
        let (kernel, invocations) = context.kernels.conv.col2im_for(g, rows);
        let grid = grid_1d(invocations, ROW_WORKGROUP, context.max_groups());
        program.dispatch(gpu, kernel, &resources, grid);
        true
    }
}

/// The patch matrix of x, CPU reference: its ones column zeros for a layer without a bias.
fn patch_matrix(x: &[f32], rows: usize, geometry: &Geometry, m: &WeightMatrix) -> Vec<f32> {
    let mut patches = reference::im2col(x, rows, geometry, m.rows);
    if !m.bias {
        for row in patches.chunks_mut(m.rows) {
            row[m.inputs] = 0.0;
        }
    }
    patches
}

/// Conv2D forward, CPU reference: x `[rows, H, W, C]` → f(im2col(x) W) `[rows, OH, OW, F]`.
pub fn reference_forward(
    geometry: &Geometry,
    m: &WeightMatrix,
    activation: LayerActivation,
    params: &[f32],
    x: &[f32],
    rows: usize,
) -> Vec<f32> {
    let patches = patch_matrix(x, rows, geometry, m);
    let positions = rows * geometry.positions();
    let mut y = vec![0.0; positions * m.outputs];
    let dims = MatmulDims::conv_forward(positions, m, activation);
    reference::matmul(&dims, &patches, params, &mut y);
    y
}

/// Conv2D backward, CPU reference: from dz `[rows, OH, OW, F]` (the activation's derivative
/// applied), [dW; db; 0] into `grads` over the layer's matrix; dx `[rows, H, W, C]` if
/// `input_grad`.
#[allow(clippy::too_many_arguments)]
pub fn reference_backward(
    geometry: &Geometry,
    m: &WeightMatrix,
    params: &[f32],
    x: &[f32],
    dz: &[f32],
    rows: usize,
    grads: &mut [f32],
    input_grad: bool,
) -> Option<Vec<f32>> {
    let patches = patch_matrix(x, rows, geometry, m);
    let positions = rows * geometry.positions();
    reference::matmul(
        &MatmulDims::conv_weight_grad(positions, m),
        &patches,
        dz,
        grads,
    );
    input_grad.then(|| {
        let mut patch_grads = vec![0.0; positions * m.rows];
        let dims = MatmulDims::conv_patch_grad(positions, m);
        reference::matmul(&dims, dz, params, &mut patch_grads);
        reference::col2im(
            &patch_grads,
            rows,
            geometry,
            m.rows,
            x,
            LayerActivation::Identity,
        )
    })
}

/// Conv2D as `--layers` names it: `conv<filters>k<size>[s<stride>][same|p<pad>][:activation][:nobias]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conv2d {
    pub filters: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: Padding,
    pub activation: LayerActivation,
    pub bias: bool,
}

impl Conv2d {
    /// The token as `--help` and the errors of `--layers` describe it.
    pub const SYNTAX: &'static str =
        "conv<filters>k<size>[s<stride>][same|p<pad>][:<activation>][:nobias]";

    /// Reads `conv<filters>k<size>...`.
    pub fn parse(body: &str, options: &TokenOptions) -> Option<std::result::Result<Self, String>> {
        let rest = body.strip_prefix("conv")?;
        Some((|| {
            let (filters, rest) =
                leading_number(rest).ok_or("conv needs a filter count, e.g. conv32k3")?;
            let rest = rest
                .strip_prefix('k')
                .ok_or("conv needs a kernel size after its filter count, e.g. conv32k3")?;
            let (kernel, rest) = leading_number(rest).ok_or("conv needs a kernel size, e.g. k3")?;
            let (stride, rest) = match rest.strip_prefix('s').and_then(leading_number) {
                Some((stride, rest)) => (stride, rest),
                None => (1, rest),
            };
            let padding = match rest {
                "" | "valid" => Padding::Valid,
                "same" => Padding::Same,
                _ => match rest.strip_prefix('p').and_then(leading_number) {
                    Some((pad, "")) => Padding::Explicit(pad),
                    _ => {
                        return Err(format!(
                            "unexpected {rest:?} (padding is valid, same or p<zeros>)"
                        ));
                    }
                },
            };
            Ok(Conv2d {
                filters: positive("the filter count", filters)?,
                kernel: positive("the kernel size", kernel)?,
                stride: positive("the stride", stride)?,
                padding,
                activation: options.activation(),
                bias: options.bias,
            })
        })())
    }
}

impl LayerKind for Conv2d {
    fn takes_default_activation(&self) -> bool {
        true
    }

    fn token(&self) -> String {
        let stride = match self.stride {
            1 => String::new(),
            stride => format!("s{stride}"),
        };
        let padding = match self.padding {
            Padding::Valid => String::new(),
            Padding::Same => "same".into(),
            Padding::Explicit(pad) => format!("p{pad}"),
        };
        let bias = if self.bias { "" } else { ":nobias" };
        format!(
            "conv{}k{}{stride}{padding}:{}{bias}",
            self.filters,
            self.kernel,
            self.activation.name()
        )
    }

    fn output_shape(&self, input: Shape) -> std::result::Result<Shape, String> {
        let k = self.kernel;
        let geometry = self
            .geometry(input)
            .ok_or_else(|| format!("its {k}×{k} kernel is larger than its input, {input}"))?;
        Ok(geometry.output)
    }

    fn sizes_are_valid(&self) -> bool {
        self.filters > 0 && self.kernel > 0 && self.stride > 0
    }

    fn geometry(&self, input: Shape) -> Option<Geometry> {
        Geometry::square(input, self.filters, self.kernel, self.stride, self.padding)
    }

    fn activation(&self) -> LayerActivation {
        self.activation
    }

    fn parameters(&self, input: Shape) -> Option<Parameters> {
        let patch = self
            .kernel
            .checked_mul(self.kernel)?
            .checked_mul(input.channels)?;
        // The patch, the bias's row of ones, zeros to a multiple of 4 (the vec4 products read
        // whole rows of four).
        let rows = patch.checked_add(4)?.next_multiple_of(4);
        rows.checked_mul(self.filters)?;
        Some(Parameters::Matrix {
            inputs: patch,
            outputs: self.filters,
            rows: (patch + 1).next_multiple_of(4),
            bias: self.bias,
            // Keras counts a convolution's fans over its kernel: k² · filters out.
            fan_out: self.kernel * self.kernel * self.filters,
        })
    }

    fn scratch_per_sample(
        &self,
        input: Shape,
        matrix: Option<WeightMatrix>,
    ) -> Option<(&'static str, usize)> {
        let geometry = self.geometry(input)?;
        Some(("patch matrix", patch_floats_per_sample(&geometry, &matrix?)))
    }

    fn device(&self, args: &DeviceArgs<'_>) -> Result<DeviceLayer> {
        let geometry = self
            .geometry(args.input)
            .expect("a planned layer fits its input");
        let matrix = args.matrix.expect("a convolution has a matrix");
        let device = ConvDevice::new(
            args.gpu,
            args.kernels,
            geometry,
            matrix,
            self.activation,
            args.batch,
        )?;
        Ok(Box::new(device))
    }

    fn reference_forward(&self, args: ReferenceForward<'_>) -> Vec<f32> {
        let geometry = self
            .geometry(args.input)
            .expect("a planned layer fits its input");
        let m = args.matrix.expect("a convolution has a matrix");
        reference_forward(
            &geometry,
            &m,
            self.activation,
            args.params,
            args.x,
            args.rows,
        )
    }

    fn reference_backward(&self, args: ReferenceBackward<'_>) -> Option<Vec<f32>> {
        let geometry = self
            .geometry(args.input)
            .expect("a planned layer fits its input");
        let m = args.matrix.expect("a convolution has a matrix");
        let ReferenceBackward {
            params,
            x,
            dz,
            rows,
            grads,
            input_grad,
            ..
        } = args;
        reference_backward(&geometry, &m, params, x, dz, rows, grads, input_grad)
    }

    /// `nn.Conv2d`'s weight `[out_channels, in_channels, kh, kw]`, and its bias where it has one.
    fn file_tensors(
        &self,
        name: &str,
        input: Shape,
        matrix: Option<WeightMatrix>,
        _norm: Option<NormParams>,
        _flattened_from: Option<Shape>,
    ) -> Vec<TensorMapping> {
        let m = matrix.expect("a convolution has a matrix");
        let (filters, kernel, channels) = (self.filters, self.kernel, input.channels);
        // PyTorch's [filter, channel, row, column] from our row (ky kernel + kx) channels + c.
        let weight = move |j: usize| {
            let (f, rest) = (
                j / (channels * kernel * kernel),
                j % (channels * kernel * kernel),
            );
            let (c, tap) = (rest / (kernel * kernel), rest % (kernel * kernel));
            m.weight_offset + (tap * channels + c) * m.outputs + f
        };
        let mut tensors = vec![TensorMapping {
            name: format!("{name}.weight"),
            shape: vec![filters, channels, kernel, kernel],
            position: Box::new(weight),
        }];
        if m.bias {
            tensors.push(TensorMapping {
                name: format!("{name}.bias"),
                shape: vec![m.outputs],
                position: Box::new(move |j| m.bias_offset + j),
            });
        }
        tensors
    }

    /// Model FLOPs without the bias column and padding the products carry.
    fn products(&self, rows: usize, input: Shape, m: &WeightMatrix) -> Vec<Product> {
        let geometry = self
            .geometry(input)
            .expect("a planned layer fits its input");
        let positions = rows * geometry.positions();
        let flops = 2.0 * positions as f64 * m.inputs as f64 * m.outputs as f64;
        [
            (
                "forward",
                MatmulDims::conv_forward(positions, m, self.activation),
            ),
            ("weight grad", MatmulDims::conv_weight_grad(positions, m)),
            ("input grad", MatmulDims::conv_patch_grad(positions, m)),
        ]
        .into_iter()
        .map(|(part, dims)| Product {
            kind: "conv",
            part,
            dims,
            flops,
            direct: (part == "input grad").then(|| {
                let shape = ConvShape::new(rows, &geometry, m.rows, LayerActivation::Identity);
                (MatmulDims::conv_input_grad(rows, &geometry, m), shape)
            }),
            image: (part != "input grad").then(|| {
                ConvShape::new(rows, &geometry, m.rows, LayerActivation::Identity).with_bias(m.bias)
            }),
            padded: None,
        })
        .collect()
    }
}
