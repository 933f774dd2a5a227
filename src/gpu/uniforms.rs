//! Host twins of the parameter structs of the shared kernels in `shaders/` (a layer kind's own
//! live in its file). Field order and padding match the WGSL declarations exactly (every field is
//! 4 bytes; each struct is padded to 16 bytes); a unit test compares each with the compiled
//! kernels' layout (`twins`, which the layer kinds' tests use too).

use bytemuck::{Pod, Zeroable};

use crate::input::{Augmentation, Standardisation};
use crate::shapes::{Geometry, LayerActivation, Shape, WeightMatrix};

/// `Dims` in matmul.wgsl: C[m, n] = Σ_k A(m, k) B(k, n), A and B read through strides.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct MatmulDims {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub a_offset: u32,
    pub a_row_stride: u32,
    pub a_col_stride: u32,
    pub b_offset: u32,
    pub b_row_stride: u32,
    pub b_col_stride: u32,
    pub c_offset: u32,
    /// With an epilogue, the bias's offset in the B buffer (the flat parameters).
    pub bias_offset: u32,
    /// `NO_EPILOGUE`; 1 + an activation code: C = f(A B + bias), see `layer_forward_activated`;
    /// `DERIVATIVE_EPILOGUE` + an activation code: C = (A B) ⊙ f'(a), see
    /// `layer_input_grad_through`; or `ACTIVATION_EPILOGUE` + an activation code: C = f(A B),
    /// see `conv_forward`.
    pub epilogue: u32,
    /// matmul_parts's and matmul_tn_parts's number of slices of K
    /// (`MatmulKernels::split_along_k`); 1 elsewhere.
    pub parts: u32,
}

/// `MatmulDims::epilogue` when C is the plain product.
pub const NO_EPILOGUE: u32 = 0;

/// `MatmulDims::epilogue` base of the backward epilogue: `DERIVATIVE_EPILOGUE` + an activation
/// code multiplies each element of C by f'(a), the derivative taken from the output a = f(z) of
/// the layer below, read at C's position from a third operand (matmul_vec4.wgsl's matmul_nt
/// only).
pub const DERIVATIVE_EPILOGUE: u32 = 8;

/// `MatmulDims::epilogue` base of the forward epilogue without a bias: `ACTIVATION_EPILOGUE` + an
/// activation code stores f(C), for a convolution's product, whose last k multiplies the bias row
/// of its weight matrix by the patch matrix's column of ones.
pub const ACTIVATION_EPILOGUE: u32 = 16;

impl MatmulDims {
    /// C[m×n] = A[m×k] · B[k×n], every matrix row-major and contiguous from offset 0.
    pub fn plain(m: usize, n: usize, k: usize) -> Self {
        MatmulDims {
            m: m as u32,
            n: n as u32,
            k: k as u32,
            a_offset: 0,
            a_row_stride: k as u32,
            a_col_stride: 1,
            b_offset: 0,
            b_row_stride: n as u32,
            b_col_stride: 1,
            c_offset: 0,
            bias_offset: 0,
            epilogue: NO_EPILOGUE,
            parts: 1,
        }
    }

    /// Forward product of a dense layer: Y[rows×out] = X[rows×in] · W, W read from the
    /// parameter buffer at the layer's weight offset.
    pub fn layer_forward(rows: usize, layer: &WeightMatrix) -> Self {
        MatmulDims {
            b_offset: layer.weight_offset as u32,
            ..Self::plain(rows, layer.outputs, layer.inputs)
        }
    }

    /// The whole forward pass of a dense layer in one product: Y = f(X W + b), the bias (read
    /// from the parameter buffer) and the activation applied as each element is stored.
    pub fn layer_forward_activated(
        rows: usize,
        layer: &WeightMatrix,
        activation: LayerActivation,
    ) -> Self {
        MatmulDims {
            bias_offset: layer.bias_offset as u32,
            epilogue: 1 + activation.shader_code(),
            ..Self::layer_forward(rows, layer)
        }
    }

    /// The activation of the forward epilogue, if there is one.
    pub fn epilogue_activation(&self) -> Option<LayerActivation> {
        match self.epilogue {
            NO_EPILOGUE => None,
            e if e < DERIVATIVE_EPILOGUE => LayerActivation::from_shader_code(e - 1),
            e if e >= ACTIVATION_EPILOGUE => {
                LayerActivation::from_shader_code(e - ACTIVATION_EPILOGUE)
            }
            _ => None,
        }
    }

    /// Whether the forward epilogue adds the bias read at `bias_offset`.
    pub fn epilogue_adds_bias(&self) -> bool {
        NO_EPILOGUE < self.epilogue && self.epilogue < DERIVATIVE_EPILOGUE
    }

    /// The activation whose derivative the backward epilogue applies, if there is one.
    pub fn derivative_activation(&self) -> Option<LayerActivation> {
        match self.epilogue {
            e if (DERIVATIVE_EPILOGUE..ACTIVATION_EPILOGUE).contains(&e) => {
                LayerActivation::from_shader_code(e - DERIVATIVE_EPILOGUE)
            }
            _ => None,
        }
    }

    /// A convolution's forward product over `positions` output positions (rows of the patch
    /// matrix P `[positions, m.rows]`, `conv2d.wgsl`): Y = f(P W) with W the whole weight matrix,
    /// whose bias row meets P's column of ones.
    pub fn conv_forward(positions: usize, m: &WeightMatrix, activation: LayerActivation) -> Self {
        MatmulDims {
            b_offset: m.weight_offset as u32,
            epilogue: ACTIVATION_EPILOGUE + activation.shader_code(),
            ..Self::plain(positions, m.outputs, m.rows)
        }
    }

    /// A convolution's weight and bias gradient: [dW; db; 0] = Pᵀ dZ, written over the whole
    /// weight matrix (its padding rows get zero).
    pub fn conv_weight_grad(positions: usize, m: &WeightMatrix) -> Self {
        MatmulDims {
            a_row_stride: 1,
            a_col_stride: m.rows as u32,
            c_offset: m.weight_offset as u32,
            ..Self::plain(m.rows, m.outputs, positions)
        }
    }

    /// The gradient of a convolution's patch matrix: dP `[positions, m.rows]` = dZ Wᵀ.
    pub fn conv_patch_grad(positions: usize, m: &WeightMatrix) -> Self {
        MatmulDims {
            b_offset: m.weight_offset as u32,
            b_row_stride: 1,
            b_col_stride: m.outputs as u32,
            ..Self::plain(positions, m.rows, m.outputs)
        }
    }

    /// A convolution's input gradient straight from its output's gradient dZ
    /// (matmul_vec4.wgsl's `conv_input_grad`): M the input's pixels over `samples` samples, N its
    /// channels, K taps × filters; W at the layer's weight offset, rows F long.
    pub fn conv_input_grad(samples: usize, geometry: &Geometry, m: &WeightMatrix) -> Self {
        let pixels = samples * geometry.input.height * geometry.input.width;
        let k = geometry.window_len() * m.outputs;
        MatmulDims {
            b_offset: m.weight_offset as u32,
            b_row_stride: 1,
            b_col_stride: m.outputs as u32,
            ..Self::plain(pixels, geometry.input.channels, k)
        }
    }

    /// Weight gradient: dW[in×out] = Xᵀ · dY, written into the gradient buffer at the layer's
    /// weight offset; Xᵀ is X[rows×in] read column-wise.
    pub fn layer_weight_grad(rows: usize, layer: &WeightMatrix) -> Self {
        MatmulDims {
            a_row_stride: 1,
            a_col_stride: layer.inputs as u32,
            c_offset: layer.weight_offset as u32,
            ..Self::plain(layer.inputs, layer.outputs, rows)
        }
    }

    /// Weight and bias gradient from the batch stored transposed with a row of ones below it
    /// (gather.wgsl's `gather_batch_transposed`: Xᵀ row-major [in × stride], then row `in` all
    /// ones) as one forward-form product: [dW; db] = [Xᵀ; 1ᵀ] · dY, whose last row lands on the
    /// bias gradient because the bias follows the weights in the parameter layout.
    pub fn layer_weight_and_bias_grad_transposed(
        rows: usize,
        layer: &WeightMatrix,
        stride: usize,
    ) -> Self {
        assert_eq!(
            layer.bias_offset,
            layer.weight_offset + layer.inputs * layer.outputs,
            "the bias follows the weights"
        );
        MatmulDims {
            a_row_stride: stride as u32,
            c_offset: layer.weight_offset as u32,
            ..Self::plain(layer.inputs + 1, layer.outputs, rows)
        }
    }

    /// Input gradient: dX[rows×in] = dY · Wᵀ, Wᵀ being W[in×out] read column-wise.
    pub fn layer_input_grad(rows: usize, layer: &WeightMatrix) -> Self {
        MatmulDims {
            b_offset: layer.weight_offset as u32,
            b_row_stride: 1,
            b_col_stride: layer.outputs as u32,
            ..Self::plain(rows, layer.inputs, layer.outputs)
        }
    }

    /// The input gradient carried on through the activation `below` of the layer beneath (whose
    /// output X is this layer's input): dL/dZ = (dY · Wᵀ) ⊙ below'(X), which is what
    /// activation.wgsl would otherwise compute in a dispatch of its own.
    pub fn layer_input_grad_through(
        rows: usize,
        layer: &WeightMatrix,
        below: LayerActivation,
    ) -> Self {
        MatmulDims {
            epilogue: DERIVATIVE_EPILOGUE + below.shader_code(),
            ..Self::layer_input_grad(rows, layer)
        }
    }

    pub fn lhs_index(&self, m: usize, k: usize) -> usize {
        self.a_offset as usize + m * self.a_row_stride as usize + k * self.a_col_stride as usize
    }

    pub fn rhs_index(&self, k: usize, n: usize) -> usize {
        self.b_offset as usize + k * self.b_row_stride as usize + n * self.b_col_stride as usize
    }

    pub fn out_index(&self, m: usize, n: usize) -> usize {
        self.c_offset as usize + m * self.n as usize + n
    }

    /// The bytes of each operand buffer the product reads from its start: A, B (with the bias
    /// where the epilogue adds one) and C's positions (where a backward epilogue reads the layer
    /// beneath's output there). What a texture mirror must hold for it.
    pub fn read_bytes(&self) -> [u64; 3] {
        let (m, n, k) = (self.m as usize, self.n as usize, self.k as usize);
        if m == 0 || n == 0 || k == 0 {
            return [0; 3];
        }
        let adds_bias = (1..DERIVATIVE_EPILOGUE).contains(&self.epilogue);
        let bias_end = match adds_bias {
            true => self.bias_offset as usize + n,
            false => 0,
        };
        let floats = [
            self.lhs_index(m - 1, k - 1) + 1,
            (self.rhs_index(k - 1, n - 1) + 1).max(bias_end),
            self.out_index(m - 1, n - 1) + 1,
        ];
        floats.map(|f| 4 * f as u64)
    }
}

/// `Shape` in activation.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct ActivationShape {
    pub rows: u32,
    pub cols: u32,
    pub bias_offset: u32,
    pub activation: u32,
}

/// `Step` in shared/step.wgsl: what changes from one step to the next. The schedule buffer
/// holds a 16-byte header (the cursor) and then one of these per step.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct StepParams {
    pub batch_start: u32,
    pub rows: u32,
    pub adam_step_size: f32,
    /// The training step's number in the run, from 1 (0 in evaluation): dropout keys its masks
    /// by it.
    pub number: u32,
    /// The step's learning rate, from the run's schedule (`crate::train::schedule`).
    pub learning_rate: f32,
    /// AdamW's decoupled decay: the parameters are multiplied by it before the step
    /// (1 − lr · weight decay; 1 for every other optimizer).
    pub decay_factor: f32,
    pub _pad: [u32; 2],
}

impl StepParams {
    /// A step over `rows` samples from slot `batch_start` that updates nothing (evaluation).
    pub fn rows_at(batch_start: usize, rows: usize) -> Self {
        StepParams {
            batch_start: batch_start as u32,
            rows: rows as u32,
            adam_step_size: 0.0,
            number: 0,
            learning_rate: 0.0,
            decay_factor: 1.0,
            _pad: [0; 2],
        }
    }
}

/// Bytes before the first step in the schedule buffer (the cursor and its padding).
pub const SCHEDULE_HEADER_BYTES: u64 = 16;

/// A schedule buffer's bytes: the cursor at 0, then `steps`.
pub fn schedule_bytes(steps: &[StepParams]) -> Vec<u8> {
    let mut bytes = vec![0u8; SCHEDULE_HEADER_BYTES as usize];
    bytes.extend_from_slice(bytemuck::cast_slice(steps));
    bytes
}

/// `Shape` in gather.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct GatherShape {
    pub words_per_sample: u32,
    /// vec4 per row of the transposed batch (gather_batch_transposed).
    pub transposed_quads: u32,
    /// gather_images: the images' shape, and what it does to the pixels (`crate::input`).
    pub height: u32,
    pub width: u32,
    pub channels: u32,
    pub standardise: u32,
    pub augment: u32,
    pub crop: u32,
    pub flip: u32,
    pub cutout: u32,
    pub key: u32,
    pub _pad: u32,
    pub mean: [f32; 4],
    /// The standard deviations (`std` is a reserved word in WGSL).
    pub deviation: [f32; 4],
}

impl GatherShape {
    /// The gather of samples of `shape` (`transposed_quads`: gather_batch_transposed's rows),
    /// standardised and augmented (with the run's key) as given, for gather_images.
    pub fn new(
        shape: Shape,
        transposed_quads: usize,
        standardisation: Option<&Standardisation>,
        augmentation: Option<(&Augmentation, u32)>,
    ) -> Self {
        let (mut mean, mut deviation) = ([0.0; 4], [1.0; 4]);
        if let Some(s) = standardisation {
            mean[..s.mean.len()].copy_from_slice(&s.mean);
            deviation[..s.std.len()].copy_from_slice(&s.std);
        }
        let (a, key) = augmentation.map_or((Augmentation::default(), 0), |(a, k)| (*a, k));
        GatherShape {
            words_per_sample: (shape.len() / 4) as u32,
            transposed_quads: transposed_quads as u32,
            height: shape.height as u32,
            width: shape.width as u32,
            channels: shape.channels as u32,
            standardise: standardisation.is_some() as u32,
            augment: augmentation.is_some() as u32,
            crop: a.crop,
            flip: a.flip as u32,
            cutout: a.cutout,
            key,
            _pad: 0,
            mean,
            deviation,
        }
    }
}

/// `Shape` in loss.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct LossShape {
    pub classes: u32,
    pub write_gradient: u32,
    /// Cross-entropy's label smoothing ε: the target is (1 − ε) one-hot + ε / classes.
    pub label_smoothing: f32,
    pub _pad: u32,
}

/// `Shape` in metrics.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct MetricsShape {
    pub count: u32,
    pub slot: u32,
    pub _pad: [u32; 2],
}

/// `Hyper` in shared/optimizer_hyper.wgsl: what the update rules (shared/update_rules.wgsl)
/// hold fixed for a run.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct OptimizerHyper {
    pub count: u32,
    pub beta1: f32,
    pub beta2: f32,
    pub epsilon: f32,
    /// SGD's momentum factor.
    pub momentum: f32,
    /// L2 decay added to the gradient (SGD, Adam); 0 for AdamW, whose decay is the step's.
    pub weight_decay: f32,
    /// 1: Nesterov momentum.
    pub nesterov: u32,
    pub _pad: u32,
}

/// `ConvShape` in conv2d.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct ConvShape {
    pub samples: u32,
    pub in_height: u32,
    pub in_width: u32,
    pub channels: u32,
    pub out_height: u32,
    pub out_width: u32,
    pub kernel_height: u32,
    pub kernel_width: u32,
    pub stride_y: u32,
    pub stride_x: u32,
    pub pad_y: u32,
    pub pad_x: u32,
    /// Floats per row of the patch matrix.
    pub columns: u32,
    /// col2im: the activation code of the layer beneath whose derivative is applied.
    pub derivative: u32,
    /// im2col's ones column: 1, or 0 for a convolution without a bias.
    pub bias: u32,
    pub _pad: u32,
}

impl ConvShape {
    /// The shape of a convolution over `samples` samples (`derivative`: of the layer beneath).
    pub fn new(
        samples: usize,
        geometry: &Geometry,
        columns: usize,
        derivative: LayerActivation,
    ) -> Self {
        let (rows, cols) = (geometry.rows, geometry.columns);
        ConvShape {
            samples: samples as u32,
            in_height: rows.input as u32,
            in_width: cols.input as u32,
            channels: geometry.input.channels as u32,
            out_height: rows.output as u32,
            out_width: cols.output as u32,
            kernel_height: rows.size as u32,
            kernel_width: cols.size as u32,
            stride_y: rows.stride as u32,
            stride_x: cols.stride as u32,
            pad_y: rows.pad as u32,
            pad_x: cols.pad as u32,
            columns: columns as u32,
            derivative: derivative.shader_code(),
            bias: 1,
            _pad: 0,
        }
    }

    /// The same with im2col's ones column for a layer with (`bias`) or without a bias.
    pub fn with_bias(self, bias: bool) -> Self {
        ConvShape {
            bias: bias as u32,
            ..self
        }
    }
}

/// `ElementwiseShape` in elementwise.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct ElementwiseShape {
    pub count: u32,
    /// `activate_values`, `activation_derivative`: the activation's code.
    pub activation: u32,
    pub _pad: [u32; 2],
}

/// `Shape` in peak.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct PeakShape {
    pub iterations: u32,
    pub _pad: [u32; 3],
}

/// What the layout tests of host structs against their WGSL twins share: here for this file's
/// structs, and in each layer kind's file for its own.
#[cfg(test)]
pub(crate) mod twins {
    /// A host struct's size and the offsets of its named fields.
    pub(crate) struct HostLayout {
        pub size: usize,
        pub fields: Vec<(&'static str, usize)>,
    }

    /// `host_layout!(Type { field, ... })`: the struct's size and those fields' offsets.
    macro_rules! host_layout {
        ($ty:ty { $($field:ident),* $(,)? }) => {
            $crate::gpu::uniforms::twins::HostLayout {
                size: std::mem::size_of::<$ty>(),
                fields: vec![$((stringify!($field), std::mem::offset_of!($ty, $field))),*],
            }
        };
    }
    pub(crate) use host_layout;

    /// The compiled kernel's struct `name`: its size and each member's (name, offset), as naga
    /// lays it out.
    fn wgsl_layout(kernel: &str, source: &str, name: &str) -> (u32, Vec<(String, u32)>) {
        let module = naga::front::wgsl::parse_str(source)
            .unwrap_or_else(|e| panic!("{kernel}: {}", e.emit_to_string(source)));
        let found = module.types.iter().find_map(|(_, ty)| match &ty.inner {
            naga::TypeInner::Struct { members, span } if ty.name.as_deref() == Some(name) => {
                let members = members
                    .iter()
                    .map(|m| (m.name.clone().unwrap_or_default(), m.offset))
                    .collect();
                Some((*span, members))
            }
            _ => None,
        });
        found.unwrap_or_else(|| panic!("{kernel} declares no struct {name}"))
    }

    /// The struct `name` of `kernel` (its compiled `source`) against its host twin: the same
    /// size, and each member not named `_…` at the offset of the Rust field of that name. A
    /// drifted copy would be read as other numbers, silently.
    pub(crate) fn assert_twin(kernel: &str, source: &str, name: &str, host: HostLayout) {
        let (size, members) = wgsl_layout(kernel, source, name);
        assert_eq!(size as usize, host.size, "{kernel} {name}: size");
        let named: Vec<(String, usize)> = members
            .into_iter()
            .filter(|(member, _)| !member.starts_with('_'))
            .map(|(member, offset)| (member, offset as usize))
            .collect();
        let host_fields: Vec<(String, usize)> = (host.fields.iter())
            .map(|&(field, offset)| (field.to_string(), offset))
            .collect();
        assert_eq!(named, host_fields, "{kernel} {name}: members and offsets");
    }

    /// `StepParams`' layout, which every kernel reading the step schedule declares as `Step`.
    pub(crate) fn step_layout() -> HostLayout {
        host_layout!(super::StepParams {
            batch_start,
            rows,
            adam_step_size,
            number,
            learning_rate,
            decay_factor
        })
    }

    /// The `Schedule` struct's steps start where the host writes them.
    pub(crate) fn schedule_steps_offset(kernel: &str, source: &str) -> Option<u32> {
        let (_, members) = wgsl_layout(kernel, source, "Schedule");
        members.iter().find(|(m, _)| m == "steps").map(|&(_, o)| o)
    }
}

#[cfg(test)]
mod tests {
    use super::twins::{HostLayout, assert_twin, host_layout, schedule_steps_offset, step_layout};
    use super::*;

    /// Every WGSL struct of this file that the host writes, in every kernel that binds it,
    /// against its Rust twin.
    #[test]
    fn host_structs_have_the_layout_of_their_wgsl_twins() {
        let dims = || {
            host_layout!(MatmulDims {
                m,
                n,
                k,
                a_offset,
                a_row_stride,
                a_col_stride,
                b_offset,
                b_row_stride,
                b_col_stride,
                c_offset,
                bias_offset,
                epilogue,
                parts
            })
        };
        let step = step_layout;
        let hyper = || {
            host_layout!(OptimizerHyper {
                count,
                beta1,
                beta2,
                epsilon,
                momentum,
                weight_decay,
                nesterov
            })
        };
        let cases: Vec<(&str, &str, &str, HostLayout)> = vec![
            (
                "matmul.wgsl",
                crate::shader_source!("matmul.wgsl"),
                "Dims",
                dims(),
            ),
            (
                "matmul_vec4.wgsl",
                crate::shader_source!("matmul_vec4.wgsl"),
                "Dims",
                dims(),
            ),
            (
                "activation.wgsl",
                crate::shader_source!("activation.wgsl"),
                "Shape",
                host_layout!(ActivationShape {
                    rows,
                    cols,
                    bias_offset,
                    activation
                }),
            ),
            (
                "gather.wgsl",
                crate::shader_source!("gather.wgsl"),
                "Step",
                step(),
            ),
            (
                "gather.wgsl",
                crate::shader_source!("gather.wgsl"),
                "Shape",
                host_layout!(GatherShape {
                    words_per_sample,
                    transposed_quads,
                    height,
                    width,
                    channels,
                    standardise,
                    augment,
                    crop,
                    flip,
                    cutout,
                    key,
                    mean,
                    deviation
                }),
            ),
            (
                "loss.wgsl",
                crate::shader_source!("loss.wgsl"),
                "Step",
                step(),
            ),
            (
                "loss.wgsl",
                crate::shader_source!("loss.wgsl"),
                "Shape",
                host_layout!(LossShape {
                    classes,
                    write_gradient,
                    label_smoothing
                }),
            ),
            (
                "metrics.wgsl",
                crate::shader_source!("metrics.wgsl"),
                "Shape",
                host_layout!(MetricsShape { count, slot }),
            ),
            (
                "optimizer.wgsl",
                crate::shader_source!("optimizer.wgsl"),
                "Step",
                step(),
            ),
            (
                "optimizer.wgsl",
                crate::shader_source!("optimizer.wgsl"),
                "Hyper",
                hyper(),
            ),
            (
                "optimizer_packed.wgsl",
                crate::shader_source!("optimizer_packed.wgsl"),
                "Step",
                step(),
            ),
            (
                "optimizer_packed.wgsl",
                crate::shader_source!("optimizer_packed.wgsl"),
                "Hyper",
                hyper(),
            ),
            (
                "conv2d.wgsl",
                crate::shader_source!("conv2d.wgsl"),
                "ConvShape",
                host_layout!(ConvShape {
                    samples,
                    in_height,
                    in_width,
                    channels,
                    out_height,
                    out_width,
                    kernel_height,
                    kernel_width,
                    stride_y,
                    stride_x,
                    pad_y,
                    pad_x,
                    columns,
                    derivative,
                    bias
                }),
            ),
            (
                "elementwise.wgsl",
                crate::shader_source!("elementwise.wgsl"),
                "ElementwiseShape",
                host_layout!(ElementwiseShape { count, activation }),
            ),
            (
                "peak.wgsl",
                crate::shader_source!("peak.wgsl"),
                "Shape",
                host_layout!(PeakShape { iterations }),
            ),
        ];
        for (kernel, source, name, host) in cases {
            assert_twin(kernel, source, name, host);
        }
        // The steps follow the schedule's header.
        for (kernel, source) in [
            ("schedule.wgsl", crate::shader_source!("schedule.wgsl")),
            ("gather.wgsl", crate::shader_source!("gather.wgsl")),
        ] {
            let steps = schedule_steps_offset(kernel, source);
            assert_eq!(
                steps,
                Some(SCHEDULE_HEADER_BYTES as u32),
                "{kernel} Schedule"
            );
        }
    }
}
