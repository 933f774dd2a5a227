//! Every kernel the trainer uses, run on random data and compared with `crate::reference`, on
//! shapes that are not multiples of any tile. `shadertrain selftest` prints these checks; the
//! kernel tests assert them.

use crate::data::Dataset;
use crate::error::Result;
use crate::gpu::kernels::{OptimizerKernels, OptimizerWords};
use crate::gpu::ops::ImageProductKind;
use crate::gpu::uniforms::MatmulDims;
use crate::gpu::{Gpu, Kernels, MatmulVariant, ops};
use crate::input::{self, Augmentation, Standardisation};
use crate::layers::avgpool::{AvgPool2d, GlobalAvgPool};
use crate::layers::conv2d::Conv2d;
use crate::layers::dense::{self, ColumnCopy};
use crate::layers::pool::MaxPool2d;
use crate::layers::{activation, avgpool, batchnorm, dropout, global_max_pool, pool, residual};
use crate::model::{
    Activation, Geometry, LayerActivation, LayerSpec, Loss, NormParams, Padding, Shape,
    WeightMatrix,
};
use crate::reference::{self, worst_element};
use crate::rng::Rng;
use crate::train::optimizer::{self, UpdateRule};
use crate::train::{LrSchedule, OptimizerKind, RunLength, TrainConfig};

/// The outcome of one check: the worst element over every shape tried.
#[derive(Debug, Clone)]
pub struct CheckResult {
    pub name: String,
    /// The worst element's error as a multiple of its tolerance (≤ 1 passes), and where it was.
    pub worst_ratio: f64,
    pub worst: String,
}

impl CheckResult {
    pub fn passed(&self) -> bool {
        self.worst_ratio <= 1.0
    }
}

/// Accumulates comparisons for one check.
pub struct Tally {
    name: String,
    worst_ratio: f64,
    worst: String,
}

impl Tally {
    fn new(name: impl Into<String>) -> Self {
        Tally {
            name: name.into(),
            worst_ratio: 0.0,
            worst: "exact".into(),
        }
    }

    pub(crate) fn close(
        &mut self,
        case: &str,
        actual: &[f32],
        expected: &[f32],
        atol: f32,
        rtol: f32,
    ) {
        if actual.len() != expected.len() {
            self.worst_ratio = f64::INFINITY;
            self.worst = format!(
                "{case}: {} values, expected {}",
                actual.len(),
                expected.len()
            );
        } else if let Some(m) = worst_element(actual, expected, atol, rtol)
            && m.ratio >= self.worst_ratio
        {
            self.worst_ratio = m.ratio;
            self.worst = format!("{case}: {m}");
        }
    }

    fn equal<T: PartialEq + std::fmt::Debug>(&mut self, case: &str, actual: &[T], expected: &[T]) {
        if let Some(i) =
            (0..actual.len().max(expected.len())).find(|&i| actual.get(i) != expected.get(i))
        {
            self.worst_ratio = f64::INFINITY;
            self.worst = format!(
                "{case}: element {i} is {:?}, expected {:?}",
                actual.get(i),
                expected.get(i)
            );
        }
    }

    fn fail(&mut self, problem: &str) {
        self.worst_ratio = f64::INFINITY;
        self.worst = problem.to_string();
    }

    fn finish(self) -> CheckResult {
        CheckResult {
            name: self.name,
            worst_ratio: self.worst_ratio,
            worst: self.worst,
        }
    }
}

/// (M, N, K) for the tiled kernel: any shape.
const MATMUL_SHAPES: [(usize, usize, usize); 5] = [
    (1, 1, 1),
    (7, 13, 5),
    (3, 65, 129),
    (64, 64, 16),
    (129, 785, 257),
];

/// (M, N, K) for the vec4 register kernels: N and K in multiples of 4, M (and, in the
/// dense-layer products, the batch) anything; partial blocks and workgroups along every side.
const REGISTER_SHAPES: [(usize, usize, usize); 5] = [
    (1, 4, 4),
    (7, 12, 20),
    (3, 68, 132),
    (64, 64, 16),
    (129, 788, 260),
];

const ACTIVATIONS: [LayerActivation; 4] = [
    LayerActivation::Identity,
    LayerActivation::Hidden(Activation::Relu),
    LayerActivation::Hidden(Activation::Sigmoid),
    LayerActivation::Hidden(Activation::Tanh),
];

fn random_vec(rng: &mut Rng, len: usize, low: f32, high: f32) -> Vec<f32> {
    (0..len).map(|_| rng.uniform(low, high)).collect()
}

/// One check: its name and what it runs, recording into a tally.
pub struct Check {
    pub name: &'static str,
    run: fn(&Gpu, &Kernels, &mut Tally, &mut Rng) -> Result<()>,
}

/// Every check, in the order `selftest` performs them.
pub const CHECKS: [Check; 26] = [
    Check {
        name: "matmul (tiled)",
        run: |gpu, kernels, tally, rng| {
            check_plain_matmuls(gpu, kernels, tally, MatmulVariant::Tiled, rng)
        },
    },
    Check {
        name: "matmul dense-layer products (tiled)",
        run: |gpu, kernels, tally, rng| {
            check_layer_matmuls(gpu, kernels, tally, MatmulVariant::Tiled, rng)
        },
    },
    Check {
        name: "matmul split along K (tiled)",
        run: |gpu, kernels, tally, rng| check_tiled_splits(gpu, kernels, tally, rng),
    },
    Check {
        name: "matmul (registers)",
        run: |gpu, kernels, tally, rng| {
            check_plain_matmuls(gpu, kernels, tally, MatmulVariant::Registers, rng)
        },
    },
    Check {
        name: "matmul dense-layer products (registers)",
        run: |gpu, kernels, tally, rng| {
            check_layer_matmuls(gpu, kernels, tally, MatmulVariant::Registers, rng)
        },
    },
    Check {
        name: "matmul convolution products (tiled)",
        run: |gpu, kernels, tally, rng| {
            check_conv_matmuls(gpu, kernels, tally, MatmulVariant::Tiled, rng)
        },
    },
    Check {
        name: "matmul convolution products (registers)",
        run: |gpu, kernels, tally, rng| {
            check_conv_matmuls(gpu, kernels, tally, MatmulVariant::Registers, rng)
        },
    },
    Check {
        name: "conv2d patch matrix (im2col)",
        run: check_conv2d_patch_matrix_im2col,
    },
    Check {
        name: "conv2d input gradient (col2im)",
        run: check_conv2d_input_gradient_col2im,
    },
    Check {
        name: "conv2d input gradient (direct)",
        run: check_conv2d_input_gradient_direct,
    },
    Check {
        name: "conv2d products from the image",
        run: check_conv2d_image_products,
    },
    Check {
        name: "max pool forward + backward",
        run: check_max_pool_forward_backward,
    },
    Check {
        name: "column copies (padding)",
        run: check_column_copies,
    },
    Check {
        name: "dropout forward + backward",
        run: check_dropout_forward_backward,
    },
    Check {
        name: "average pool forward + backward",
        run: check_average_pool_forward_backward,
    },
    Check {
        name: "global max pool forward + backward",
        run: check_global_max_pool_forward_backward,
    },
    Check {
        name: "batchnorm forward + backward",
        run: check_batchnorm_forward_backward,
    },
    Check {
        name: "residual sums and activations",
        run: check_residual_sums_and_activations,
    },
    Check {
        name: "activation backward + bias gradient",
        run: check_activation_backward_bias_gradient,
    },
    Check {
        name: "softmax losses",
        run: check_softmax_losses,
    },
    Check {
        name: "batch gather",
        run: check_batch_gather,
    },
    Check {
        name: "image gather",
        run: check_image_gather,
    },
    Check {
        name: "metric sums",
        run: check_metric_sums,
    },
    Check {
        name: "sgd update",
        run: check_sgd_update,
    },
    Check {
        name: "momentum update",
        run: check_momentum_update,
    },
    Check {
        name: "adam update",
        run: check_adam_update,
    },
];

/// Runs the named check (one of `CHECKS`).
pub fn run(gpu: &Gpu, kernels: &Kernels, name: &str) -> Result<CheckResult> {
    let check = (CHECKS.iter().find(|check| check.name == name))
        .ok_or_else(|| crate::Error::Config(format!("no selftest check is named {name:?}")))?;
    let mut rng = Rng::new(0x5e1f_7e57);
    let mut tally = Tally::new(name);
    (check.run)(gpu, kernels, &mut tally, &mut rng)?;
    Ok(tally.finish())
}

/// selftest's "conv2d patch matrix (im2col)".
fn check_conv2d_patch_matrix_im2col(
    gpu: &Gpu,
    kernels: &Kernels,
    tally: &mut Tally,
    rng: &mut Rng,
) -> Result<()> {
    for (what, geometry, m) in conv_cases() {
        let x = random_vec(rng, CONV_BATCH * geometry.input.len(), -1.0, 1.0);
        let expected = reference::im2col(&x, CONV_BATCH, &geometry, m.rows);
        let actual = ops::im2col(gpu, kernels, &x, CONV_BATCH, &geometry, m.rows)?;
        tally.close(&what, &actual, &expected, 0.0, 0.0);
    }
    Ok(())
}

/// selftest's "conv2d input gradient (col2im)".
fn check_conv2d_input_gradient_col2im(
    gpu: &Gpu,
    kernels: &Kernels,
    tally: &mut Tally,
    rng: &mut Rng,
) -> Result<()> {
    for (what, geometry, m) in conv_cases() {
        for below in ACTIVATIONS {
            let positions = CONV_BATCH * geometry.positions();
            let grads = random_vec(rng, positions * m.rows, -1.0, 1.0);
            let x = activated(rng, CONV_BATCH * geometry.input.len(), below);
            let expected = reference::col2im(&grads, CONV_BATCH, &geometry, m.rows, &x, below);
            let actual = ops::col2im(
                gpu, kernels, &grads, CONV_BATCH, &geometry, m.rows, &x, below,
            )?;
            let case = format!("{what}, through {}", below.name());
            tally.close(&case, &actual, &expected, 1e-6, 1e-6);
        }
    }
    Ok(())
}

/// selftest's "conv2d input gradient (direct)": matmul_vec4.wgsl's conv_input_grad against
/// the patch matrix's gradient and col2im, on the cases with channels and filters in fours.
fn check_conv2d_input_gradient_direct(
    gpu: &Gpu,
    kernels: &Kernels,
    tally: &mut Tally,
    rng: &mut Rng,
) -> Result<()> {
    let mut ran = false;
    for (what, geometry, m) in conv_cases() {
        if !geometry.input.channels.is_multiple_of(4) || !m.outputs.is_multiple_of(4) {
            continue;
        }
        let positions = CONV_BATCH * geometry.positions();
        let params = random_vec(rng, m.end() + 11, -1.0, 1.0);
        for below in ACTIVATIONS {
            let dz = random_vec(rng, positions * m.outputs, -1.0, 1.0);
            let x = activated(rng, CONV_BATCH * geometry.input.len(), below);
            let actual = ops::conv_input_grad(
                gpu, kernels, &dz, &params, CONV_BATCH, &geometry, &m, &x, below,
            )?;
            let Some(actual) = actual else {
                continue;
            };
            let mut patch_grads = vec![0.0; positions * m.rows];
            let dims = MatmulDims::conv_patch_grad(positions, &m);
            reference::matmul(&dims, &dz, &params, &mut patch_grads);
            let expected =
                reference::col2im(&patch_grads, CONV_BATCH, &geometry, m.rows, &x, below);
            let case = format!("{what}, through {}", below.name());
            tally.close(&case, &actual, &expected, 1e-6, 1e-6);
            ran = true;
        }
    }
    if !ran {
        tally.worst = "not run: this adapter computes the patch matrix's gradient instead".into();
    }
    Ok(())
}

/// selftest's "conv2d products from the image": matmul_vec4.wgsl's conv_forward and
/// conv_weight_grad_parts against the patch matrix's products, with and without a bias, the
/// weight gradient also over a batch long enough to be split along K.
fn check_conv2d_image_products(
    gpu: &Gpu,
    kernels: &Kernels,
    tally: &mut Tally,
    rng: &mut Rng,
) -> Result<()> {
    let mut ran = false;
    for (what, geometry, m) in conv_cases() {
        if !kernels.matmul.takes_images(&geometry, &m) {
            continue;
        }
        for bias in [true, false] {
            let m = WeightMatrix { bias, ..m };
            let what = format!("{what}{}", if bias { "" } else { ":nobias" });
            let params = random_vec(rng, m.end() + 11, -1.0, 1.0);
            let long_rows = LONG_CONV_POSITIONS.div_ceil(geometry.positions());
            for rows in [CONV_BATCH, long_rows] {
                let positions = rows * geometry.positions();
                let x = random_vec(rng, rows * geometry.input.len(), -1.0, 1.0);
                let mut patches = reference::im2col(&x, rows, &geometry, m.rows);
                if !bias {
                    let ones = geometry.window_len() * geometry.input.channels;
                    patches
                        .iter_mut()
                        .skip(ones)
                        .step_by(m.rows)
                        .for_each(|v| *v = 0.0);
                }
                let mut cases = vec![ImageProductKind::WeightGrad];
                if rows == CONV_BATCH {
                    cases.extend(ACTIVATIONS.map(ImageProductKind::Forward));
                }
                for kind in cases {
                    let (dims, rhs, out_len, case) = match kind {
                        ImageProductKind::Forward(f) => {
                            let dims = MatmulDims::conv_forward(positions, &m, f);
                            let case = format!("{what} forward + {}", f.name());
                            (dims, params.clone(), positions * m.outputs, case)
                        }
                        ImageProductKind::WeightGrad => {
                            let dims = MatmulDims::conv_weight_grad(positions, &m);
                            let dz = random_vec(rng, positions * m.outputs, -1.0, 1.0);
                            let case = format!("{what} weight grad, {rows} samples");
                            (dims, dz, params.len(), case)
                        }
                    };
                    // Elements outside C must survive.
                    let initial = random_vec(rng, out_len, -1.0, 1.0);
                    let mut expected = initial.clone();
                    reference::matmul(&dims, &patches, &rhs, &mut expected);
                    let actual = ops::conv_image_product(
                        gpu, kernels, kind, &x, &rhs, rows, &geometry, &m, &initial,
                    )?;
                    let Some(actual) = actual else {
                        continue;
                    };
                    let atol = 1e-6 + 1e-7 * dims.k as f32;
                    tally.close(&case, &actual, &expected, atol, 1e-4);
                    ran = true;
                }
            }
        }
    }
    if !ran {
        tally.worst = "not run: this adapter computes convolutions over the patch matrix".into();
    }
    Ok(())
}

/// selftest's "max pool forward + backward".
fn check_max_pool_forward_backward(
    gpu: &Gpu,
    kernels: &Kernels,
    tally: &mut Tally,
    rng: &mut Rng,
) -> Result<()> {
    for (what, geometry) in pool_cases() {
        // Values on a coarse grid, so that windows hold ties: the first maximum wins.
        let x: Vec<f32> = (0..CONV_BATCH * geometry.input.len())
            .map(|_| rng.below(7) as f32 - 3.0)
            .collect();
        let (expected, expected_argmax) = reference::maxpool_forward(&x, CONV_BATCH, &geometry);
        // The four-channel kernels also as they read texture mirrors.
        let forms: &[bool] = match geometry.input.channels % 4 {
            0 => &[false, true],
            _ => &[false],
        };
        for &mirrored in forms {
            let what = format!("{what}{}", if mirrored { ", from mirrors" } else { "" });
            let (actual, argmax) =
                pool::gpu_forward(gpu, kernels, &x, CONV_BATCH, &geometry, mirrored)?;
            tally.close(&format!("{what} forward"), &actual, &expected, 0.0, 0.0);
            tally.equal(&format!("{what} argmax"), &argmax, &expected_argmax);
            for below in ACTIVATIONS {
                let dy = random_vec(rng, expected.len(), -1.0, 1.0);
                let below_x = activated(rng, x.len(), below);
                let expected = reference::maxpool_backward(
                    &dy,
                    &expected_argmax,
                    CONV_BATCH,
                    &geometry,
                    &below_x,
                    below,
                );
                let actual = pool::gpu_backward(
                    gpu,
                    kernels,
                    &dy,
                    &expected_argmax,
                    CONV_BATCH,
                    &geometry,
                    &below_x,
                    below,
                    mirrored,
                )?;
                let case = format!("{what} backward through {}", below.name());
                tally.close(&case, &actual, &expected, 1e-7, 1e-6);
            }
        }
    }
    Ok(())
}

/// selftest's "dropout forward + backward".
fn check_dropout_forward_backward(
    gpu: &Gpu,
    kernels: &Kernels,
    tally: &mut Tally,
    rng: &mut Rng,
) -> Result<()> {
    for (rate, step, len) in [(0.5, 1, 185), (0.3, 7, 1001), (0.0, 2, 64), (0.9, 3, 300)] {
        let key = crate::rng::dropout_layer_key(0x5eed, 5);
        let x = random_vec(rng, len, -1.0, 1.0);
        let case = format!("rate {rate}, step {step}, {len} values");
        let expected = reference::dropout_forward(&x, key, step, rate);
        let actual = dropout::gpu_pass(gpu, kernels, &x, rate, key, step, true, None)?;
        tally.close(&format!("{case} forward"), &actual, &expected, 0.0, 0.0);
        let kept = expected.iter().filter(|&&v| v != 0.0).count() as f64 / len as f64;
        if (kept - (1.0 - rate as f64)).abs() > 0.1 {
            tally.fail(&format!("{case}: kept {kept:.3} of the values"));
        }
        let actual = dropout::gpu_pass(gpu, kernels, &x, rate, key, 0, false, None)?;
        tally.close(&format!("{case} evaluation"), &actual, &x, 0.0, 0.0);
        for below in ACTIVATIONS {
            let dy = random_vec(rng, len, -1.0, 1.0);
            let below_x = activated(rng, len, below);
            let expected = reference::dropout_backward(&dy, key, step, rate, &below_x, below);
            let backward = Some((below_x.as_slice(), below));
            let actual = dropout::gpu_pass(gpu, kernels, &dy, rate, key, step, true, backward)?;
            let case = format!("{case} backward through {}", below.name());
            tally.close(&case, &actual, &expected, 1e-7, 1e-6);
        }
    }
    Ok(())
}

/// selftest's "column copies (padding)": pad.wgsl's strided copy both ways, as a dense layer
/// pads its 10 outputs to 12 and back, at offsets, over rows that fill no workgroup; the values
/// outside the copy stay as they were.
fn check_column_copies(
    gpu: &Gpu,
    kernels: &Kernels,
    tally: &mut Tally,
    rng: &mut Rng,
) -> Result<()> {
    let case = |rows, copied, written, in_offset, in_stride, out_offset, out_stride| ColumnCopy {
        rows,
        copied,
        written,
        in_offset,
        in_stride,
        out_offset,
        out_stride,
        _pad: 0,
    };
    for copy in [
        case(1601, 10, 12, 7, 10, 0, 12),
        case(129, 10, 10, 0, 12, 5, 10),
        case(67, 3, 4, 2, 3, 4, 4),
        case(1, 1, 8, 0, 1, 3, 8),
    ] {
        let rows = copy.rows as usize;
        let input = random_vec(
            rng,
            copy.in_offset as usize + rows * copy.in_stride as usize,
            -1.0,
            1.0,
        );
        let output = random_vec(
            rng,
            copy.out_offset as usize + rows * copy.out_stride as usize + 3,
            -1.0,
            1.0,
        );
        let expected = dense::reference_copy_columns(&copy, &input, &output);
        let actual = dense::gpu_copy_columns(gpu, kernels, copy, &input, &output)?;
        let what = format!(
            "{rows} rows of {} into {} columns",
            copy.copied, copy.written
        );
        tally.close(&what, &actual, &expected, 0.0, 0.0);
    }
    Ok(())
}

/// selftest's "average pool forward + backward".
fn check_average_pool_forward_backward(
    gpu: &Gpu,
    kernels: &Kernels,
    tally: &mut Tally,
    rng: &mut Rng,
) -> Result<()> {
    // The max pools' windows, a global average pool, and one 3×3 window over a 5×5 image (the
    // four-channel one-window kernels, which write 0 past the window).
    let image = Shape::image(8, 7, 5);
    let global = LayerSpec::GlobalAvgPool(GlobalAvgPool).geometry(image);
    let global = (format!("{image}, gap"), global.expect("the case fits"));
    let corner = LayerSpec::AvgPool2d(AvgPool2d { size: 3, stride: 3 });
    let corner_image = Shape::image(4, 5, 5);
    let corner = (
        format!("{corner_image}, {}", corner.token()),
        corner.geometry(corner_image).expect("the case fits"),
    );
    for (what, geometry) in pool_cases().into_iter().chain([global, corner]) {
        let x = random_vec(rng, CONV_BATCH * geometry.input.len(), -1.0, 1.0);
        let expected = avgpool::reference_forward(&geometry, &x, CONV_BATCH);
        let actual = avgpool::gpu_pass(gpu, kernels, &x, CONV_BATCH, &geometry, true)?;
        tally.close(&format!("{what} forward"), &actual, &expected, 1e-7, 1e-6);
        let dy = random_vec(rng, expected.len(), -1.0, 1.0);
        let expected = avgpool::reference_backward(&geometry, &dy, CONV_BATCH);
        let actual = avgpool::gpu_pass(gpu, kernels, &dy, CONV_BATCH, &geometry, false)?;
        tally.close(&format!("{what} backward"), &actual, &expected, 1e-7, 1e-6);
    }
    Ok(())
}

/// selftest's "global max pool forward + backward": both passes against the reference, on
/// images of 1, 3 and 8 channels (5 × 7, and one position), ties included.
fn check_global_max_pool_forward_backward(
    gpu: &Gpu,
    kernels: &Kernels,
    tally: &mut Tally,
    rng: &mut Rng,
) -> Result<()> {
    let rows = 5;
    for input in [
        Shape::image(1, 5, 7),
        Shape::image(3, 5, 7),
        Shape::image(8, 1, 1),
    ] {
        // Values in eighths, so that equal maxima occur.
        let x: Vec<f32> = (0..rows * input.len())
            .map(|_| rng.below(16) as f32 / 8.0 - 1.0)
            .collect();
        let dy: Vec<f32> = (0..rows * input.channels)
            .map(|_| rng.uniform(-1.0, 1.0))
            .collect();
        let (y, argmax, dx) = global_max_pool::gpu_passes(gpu, kernels, input, &x, &dy, rows)?;
        let (expected_y, expected_argmax) = global_max_pool::reference_forward(input, &x, rows);
        tally.equal(&format!("{input} forward"), &y, &expected_y);
        tally.equal(&format!("{input} argmax"), &argmax, &expected_argmax);
        let expected_dx = global_max_pool::reference_backward(input, &x, &dy, rows);
        tally.equal(&format!("{input} backward"), &dx, &expected_dx);
    }
    Ok(())
}

/// selftest's "batchnorm forward + backward".
fn check_batchnorm_forward_backward(
    gpu: &Gpu,
    kernels: &Kernels,
    tally: &mut Tally,
    rng: &mut Rng,
) -> Result<()> {
    // Channels-last [values, C]: 3 channels of 5 samples of 7×9, 4 and 8 channels (the
    // vec4 kernels; 8 channels of 3 × 450 values span three rows of a mirror), 12 features of
    // 5 samples (BatchNorm1d), 1 channel.
    let shapes = [
        (3, 5 * 63),
        (4, 5 * 63),
        (8, 5 * 35),
        (8, 3 * 450),
        (12, 5),
        (1, 7),
    ];
    for (channels, values) in shapes {
        let x = random_vec(rng, channels * values, -2.0, 3.0);
        let dy = random_vec(rng, channels * values, -1.0, 1.0);
        let gamma = random_vec(rng, channels, 0.5, 1.5);
        let beta = random_vec(rng, channels, -0.5, 0.5);
        let mean = random_vec(rng, channels, -0.5, 0.5);
        let var = random_vec(rng, channels, 0.5, 2.0);
        let norm = NormParams {
            channels,
            gamma: 0,
            beta: channels,
            running_mean: 0,
            running_var: channels,
        };
        let params = [gamma.clone(), beta.clone()].concat();
        let inputs = batchnorm::NormInputs {
            gamma: &gamma,
            beta: &beta,
            running_mean: &mean,
            running_var: &var,
        };
        // The four-channel passes also as they read texture mirrors of X, dY and Y.
        let forms: &[bool] = match channels % 4 {
            0 => &[false, true],
            _ => &[false],
        };
        // The identity, and activations folded in (`bn:relu`, `bn:tanh`).
        let activations = [ACTIVATIONS[0], ACTIVATIONS[1], ACTIVATIONS[3]];
        for (f, &mirrored) in activations
            .into_iter()
            .flat_map(|f| forms.iter().map(move |m| (f, m)))
        {
            let from = if mirrored { ", from mirrors" } else { "" };
            let what = format!("{channels} channels of {values} values, {}{from}", f.name());
            for training in [false, true] {
                let (mut expected, running) =
                    batchnorm::reference_forward(&norm, &params, (&mean, &var), &x, training);
                expected.iter_mut().for_each(|v| *v = f.apply(*v));
                let actual =
                    batchnorm::gpu_passes(gpu, kernels, &x, &inputs, f, training, None, mirrored)?;
                let mode = if training { "training" } else { "evaluation" };
                let case = format!("{what}, {mode} forward");
                tally.close(&case, &actual.values, &expected, 1e-5, 1e-4);
                if let Some((new_mean, new_var)) = running {
                    let state = [new_mean, new_var].concat();
                    let case = format!("{what}, running statistics");
                    tally.close(&case, &actual.state, &state, 1e-6, 1e-5);
                }
            }
            // The backward passes take dy through f' from the training forward's output.
            let (mut y, _) = batchnorm::reference_forward(&norm, &params, (&mean, &var), &x, true);
            y.iter_mut().for_each(|v| *v = f.apply(*v));
            let mut dz = dy.clone();
            reference::apply_derivative(&mut dz, &y, f);
            let mut grads = vec![0.0; 2 * channels];
            let expected = batchnorm::reference_backward(&norm, &params, &x, &dz, &mut grads, true)
                .expect("an input gradient");
            let actual =
                batchnorm::gpu_passes(gpu, kernels, &x, &inputs, f, true, Some(&dy[..]), mirrored)?;
            let case = format!("{what}, dγ and dβ");
            tally.close(&case, &actual.dgamma_dbeta, &grads, 1e-5, 1e-4);
            tally.close(
                &format!("{what}, dx"),
                &actual.values,
                &expected,
                1e-5,
                1e-3,
            );
            // In evaluation (an explanation's gradients): through the running statistics.
            let (mut y, _) = batchnorm::reference_forward(&norm, &params, (&mean, &var), &x, false);
            y.iter_mut().for_each(|v| *v = f.apply(*v));
            let mut dz = dy.clone();
            reference::apply_derivative(&mut dz, &y, f);
            let state = [params.clone(), mean.clone(), var.clone()].concat();
            let state_norm = NormParams {
                running_mean: 2 * channels,
                running_var: 3 * channels,
                ..norm
            };
            let expected = batchnorm::reference_backward_evaluation(&state_norm, &state, &dz);
            let actual = batchnorm::gpu_passes(
                gpu,
                kernels,
                &x,
                &inputs,
                f,
                false,
                Some(&dy[..]),
                mirrored,
            )?;
            let case = format!("{what}, dx in evaluation");
            tally.close(&case, &actual.values, &expected, 1e-5, 1e-3);
        }
    }
    Ok(())
}

/// selftest's "residual sums and activations".
fn check_residual_sums_and_activations(
    gpu: &Gpu,
    kernels: &Kernels,
    tally: &mut Tally,
    rng: &mut Rng,
) -> Result<()> {
    // Counts that are and are not whole vec4, each leaving the last invocation's eight vec4
    // part-filled (5,000 values: 1,250 vec4, beyond a mirror's first row), from buffers and
    // from mirrors.
    for (count, mirrored) in [4, 37, 1000, 5000]
        .into_iter()
        .flat_map(|c| [(c, false), (c, true)])
    {
        let a = random_vec(rng, count, -2.0, 2.0);
        let b = random_vec(rng, count, -2.0, 2.0);
        let none = vec![f32::NAN; count];
        let identity = LayerActivation::Identity;
        let run = |pick, inputs: [Option<&[f32]>; 2], out: &[f32], f| {
            ops::elementwise(gpu, kernels, pick, mirrored, inputs, out, f)
        };
        let what = format!(
            "{count} values{}",
            if mirrored { " from mirrors" } else { "" }
        );
        let sum = residual::reference_forward(&a, &b);
        let actual = run(|k| &k.add, [Some(&a), Some(&b)], &none, identity)?;
        tally.close(&format!("{what}, a + b"), &actual, &sum, 0.0, 0.0);
        let actual = run(|k| &k.add_assign, [None, Some(&b)], &a, identity)?;
        tally.close(&format!("{what}, a += b"), &actual, &sum, 0.0, 0.0);
        let actual = run(|k| &k.copy, [Some(&a), None], &none, identity)?;
        tally.close(&format!("{what}, copy"), &actual, &a, 0.0, 0.0);
        for f in &ACTIVATIONS[1..] {
            let expected = activation::reference_forward(*f, &a);
            let actual = run(|k| &k.activate, [Some(&a), None], &none, *f)?;
            let case = format!("{what}, {}", f.name());
            tally.close(&case, &actual, &expected, 1e-6, 1e-5);
            let dy = &b;
            let expected = activation::reference_backward(*f, &expected, dy);
            let y = activation::reference_forward(*f, &a);
            let inputs = [Some(&dy[..]), Some(&y[..])];
            let actual = run(|k| &k.activation_derivative, inputs, &none, *f)?;
            let case = format!("{what}, {} backward", f.name());
            tally.close(&case, &actual, &expected, 1e-6, 1e-5);
        }
    }
    Ok(())
}

/// selftest's "activation backward + bias gradient".
fn check_activation_backward_bias_gradient(
    gpu: &Gpu,
    kernels: &Kernels,
    tally: &mut Tally,
    rng: &mut Rng,
) -> Result<()> {
    for activation in ACTIVATIONS {
        for (rows, cols) in [(1, 1), (7, 13), (129, 257)] {
            let grad = random_vec(rng, rows * cols, -1.0, 1.0);
            // Outputs in the activation's range (relu: about half exactly zero).
            let mut output = random_vec(rng, rows * cols, -3.0, 3.0);
            reference::bias_activation_forward(&mut output, &vec![0.0; cols], activation);
            let mut expected = grad.clone();
            let expected_bias =
                reference::activation_backward(&mut expected, &output, cols, activation);
            let (actual, actual_bias) =
                ops::activation_backward(gpu, kernels, &grad, &output, cols, activation)?;
            let case = format!("{} {rows}x{cols}", activation.name());
            tally.close(&format!("{case} dz"), &actual, &expected, 1e-6, 1e-5);
            tally.close(
                &format!("{case} bias grad"),
                &actual_bias,
                &expected_bias,
                1e-5,
                1e-4,
            );
            // apply_derivative: the same dz, with no bias gradient (a convolution's).
            let actual = ops::apply_derivative(gpu, kernels, &grad, &output, activation)?;
            tally.close(&format!("{case} dz alone"), &actual, &expected, 1e-6, 1e-5);
        }
    }
    Ok(())
}

/// selftest's "softmax losses".
fn check_softmax_losses(
    gpu: &Gpu,
    kernels: &Kernels,
    tally: &mut Tally,
    rng: &mut Rng,
) -> Result<()> {
    // Cross-entropy plain and with label smoothing; MSE takes none.
    for (loss, smoothing) in [(Loss::Xent, 0.0), (Loss::Xent, 0.1), (Loss::Mse, 0.0)] {
        for (rows, classes) in [(1, 2), (7, 10), (129, 3)] {
            let logits = random_vec(rng, rows * classes, -8.0, 8.0);
            let labels: Vec<u32> = (0..rows).map(|_| rng.below(classes) as u32).collect();
            let expected = reference::softmax_loss(loss, smoothing, &logits, &labels, classes);
            let actual =
                ops::softmax_loss(gpu, kernels, loss, smoothing, &logits, &labels, classes, 5)?;
            let case = format!(
                "{} (label smoothing {smoothing}) {rows}x{classes}",
                crate::model_file::name_of(&loss)
            );
            tally.close(
                &format!("{case} loss"),
                &actual.sample_loss,
                &expected.sample_loss,
                1e-5,
                1e-4,
            );
            // MSE's gradient subtracts nearly equal terms: an absolute floor of 1e-6.
            tally.close(
                &format!("{case} grad"),
                &actual.logits_grad,
                &expected.logits_grad,
                1e-6,
                1e-4,
            );
            tally.equal(
                &format!("{case} correct"),
                &actual.sample_correct,
                &expected.sample_correct,
            );
            tally.equal(
                &format!("{case} prediction"),
                &actual.sample_prediction,
                &expected.sample_prediction,
            );
        }
    }
    Ok(())
}

/// selftest's "batch gather".
fn check_batch_gather(
    gpu: &Gpu,
    kernels: &Kernels,
    tally: &mut Tally,
    rng: &mut Rng,
) -> Result<()> {
    let pixels = (0..37 * 12).map(|_| rng.below(256) as u8).collect();
    let labels = (0..37).map(|_| rng.below(10) as u8).collect();
    let data = Dataset::new(12, 10, pixels, labels)?;
    let mut order: Vec<u32> = (0..37).collect();
    rng.shuffle(&mut order);
    for (start, rows) in [(0, 1), (3, 16), (30, 7)] {
        let (x, y) = reference::gather_batch(&data, &order, start, rows);
        let gathered = ops::gather_batch(gpu, kernels, &data, &order, start, rows, None, None)?;
        tally.close(&format!("x at {start}"), &gathered.x, &x, 0.0, 1e-6);
        tally.equal(&format!("y at {start}"), &gathered.y, &y);
        // Transposed too, into rows longer than the batch (a batch size of 20).
        let quads = 5;
        let transposed = Some(quads);
        let gathered =
            ops::gather_batch(gpu, kernels, &data, &order, start, rows, transposed, None)?;
        // The written columns: the batch's, and zeros to the next multiple of 4.
        let written = rows.next_multiple_of(4);
        let mut x_t = vec![0.0; data.features() * written];
        for (r, row) in x.chunks(data.features()).enumerate() {
            for (f, &value) in row.iter().enumerate() {
                x_t[f * written + r] = value;
            }
        }
        // Its rows (one more past them: the kernel must not reach it), each split into the
        // written columns and the rest, which must keep their NaN.
        let all_t = gathered.x_transposed.expect("asked for");
        let rows_t: Vec<&[f32]> = all_t.chunks(4 * quads).collect();
        let actual_t: Vec<f32> = rows_t[..data.features()]
            .iter()
            .flat_map(|row| row[..written].to_vec())
            .collect();
        let untouched = (rows_t[..data.features()].iter())
            .flat_map(|row| &row[written..])
            .chain(rows_t[data.features()])
            .filter(|v| !v.is_nan())
            .count();
        tally.equal(
            &format!("x transposed at {start}, elsewhere"),
            &[untouched],
            &[0],
        );
        tally.close(
            &format!("x at {start}, transposing"),
            &gathered.x,
            &x,
            0.0,
            1e-6,
        );
        tally.equal(&format!("y at {start}, transposing"), &gathered.y, &y);
        tally.close(
            &format!("x transposed at {start}"),
            &actual_t,
            &x_t,
            0.0,
            1e-6,
        );
    }
    Ok(())
}

/// selftest's "image gather": images of 1, 3 and 4 channels (odd sides), standardised, and
/// augmented by crops, flips and cutout at two step numbers, against the reference; and the
/// augmentation moves pixels (the check cannot pass on an identity).
fn check_image_gather(
    gpu: &Gpu,
    kernels: &Kernels,
    tally: &mut Tally,
    rng: &mut Rng,
) -> Result<()> {
    for (channels, height, width) in [(1, 7, 8), (3, 5, 4), (4, 9, 7)] {
        let shape = Shape::image(channels, height, width);
        let samples = 23;
        let pixels = (0..samples * shape.len())
            .map(|_| rng.below(256) as u8)
            .collect();
        let labels = (0..samples).map(|_| rng.below(10) as u8).collect();
        let data = Dataset::with_shape(shape, 10, pixels, labels)?;
        let standardisation = Standardisation::of(&data)?;
        let mut order: Vec<u32> = (0..samples as u32).collect();
        rng.shuffle(&mut order);
        let augmentations = [
            None,
            Some(Augmentation {
                crop: 2,
                flip: true,
                cutout: 3,
            }),
            Some(Augmentation {
                crop: 1,
                flip: false,
                cutout: 0,
            }),
        ];
        for augmentation in &augmentations {
            for (standardised, step) in [(false, 5), (true, 6)] {
                let standardisation = standardised.then_some(&standardisation);
                let key = crate::input::augmentation_key(9);
                let augment = augmentation.as_ref().map(|a| (a, key));
                let (start, rows) = (3, 17);
                let (x, y) = input::gather_batch(
                    &data,
                    &order,
                    start,
                    rows,
                    standardisation,
                    augment.map(|(a, key)| (a, key, step)),
                );
                let images = ops::ImageGather {
                    standardisation,
                    augmentation: augment,
                    step,
                };
                let gathered = ops::gather_batch(
                    gpu,
                    kernels,
                    &data,
                    &order,
                    start,
                    rows,
                    None,
                    Some(images),
                )?;
                let case = format!(
                    "{shape}, {}, standardised {standardised}, step {step}",
                    augmentation.map_or("none".to_string(), |a| a.describe())
                );
                tally.close(&format!("{case}: x"), &gathered.x, &x, 1e-6, 1e-5);
                tally.equal(&format!("{case}: y"), &gathered.y, &y);
                if augmentation.is_some() && !standardised {
                    let (plain, _) = reference::gather_batch(&data, &order, start, rows);
                    let moved = plain.iter().zip(&x).filter(|(a, b)| a != b).count();
                    tally.equal(&format!("{case}: pixels moved"), &[moved > 0], &[true]);
                }
            }
        }
    }
    Ok(())
}

/// selftest's "metric sums".
fn check_metric_sums(gpu: &Gpu, kernels: &Kernels, tally: &mut Tally, rng: &mut Rng) -> Result<()> {
    for count in [1, 255, 1000, 60001] {
        let loss = random_vec(rng, count, 0.0, 3.0);
        let correct: Vec<u32> = (0..count).map(|_| rng.below(2) as u32).collect();
        let (sum, hits) = ops::sum_metrics(gpu, kernels, &loss, &correct)?;
        let expected: f64 = loss.iter().map(|&l| l as f64).sum();
        tally.close(
            &format!("loss sum of {count}"),
            &[sum],
            &[expected as f32],
            1e-4,
            1e-5,
        );
        tally.equal(
            &format!("correct count of {count}"),
            &[hits],
            &[correct.iter().sum::<u32>()],
        );
    }
    Ok(())
}

/// selftest's "sgd update": torch.optim.SGD without momentum, with and without weight decay.
fn check_sgd_update(gpu: &Gpu, kernels: &Kernels, tally: &mut Tally, rng: &mut Rng) -> Result<()> {
    let sgd = TrainConfig {
        optimizer: OptimizerKind::Sgd,
        learning_rate: 0.05,
        ..TrainConfig::default()
    };
    let decayed = TrainConfig {
        weight_decay: 5e-4,
        ..sgd.clone()
    };
    check_updates(
        gpu,
        kernels,
        tally,
        rng,
        &[("sgd", sgd), ("sgd, decay", decayed)],
    )
}

/// selftest's "momentum update": SGD with momentum, Nesterov's or not, with weight decay and a
/// warm-up.
fn check_momentum_update(
    gpu: &Gpu,
    kernels: &Kernels,
    tally: &mut Tally,
    rng: &mut Rng,
) -> Result<()> {
    let momentum = TrainConfig {
        optimizer: OptimizerKind::Sgd,
        learning_rate: 0.1,
        momentum: 0.9,
        ..TrainConfig::default()
    };
    let nesterov = TrainConfig {
        nesterov: true,
        weight_decay: 5e-4,
        lr_schedule: LrSchedule::Cosine,
        warmup_epochs: Some(0.5),
        ..momentum.clone()
    };
    let cases = [
        ("momentum", momentum),
        ("nesterov, decay, cosine", nesterov),
    ];
    check_updates(gpu, kernels, tally, rng, &cases)
}

/// selftest's "adam update": Adam, Adam with L2 decay, AdamW.
fn check_adam_update(gpu: &Gpu, kernels: &Kernels, tally: &mut Tally, rng: &mut Rng) -> Result<()> {
    let adam = TrainConfig::default();
    let decayed = TrainConfig {
        weight_decay: 1e-2,
        ..adam.clone()
    };
    let adamw = TrainConfig {
        optimizer: OptimizerKind::Adamw,
        lr_schedule: LrSchedule::OneCycle,
        ..decayed.clone()
    };
    let cases = [("adam", adam), ("adam, decay", decayed), ("adamw", adamw)];
    check_updates(gpu, kernels, tally, rng, &cases)
}

/// Each configuration's update, by each build of the optimizer kernels, against the reference:
/// random parameters, gradients and state, at several step numbers of a 10-epoch run of 100
/// steps an epoch; both builds give the same bits.
fn check_updates(
    gpu: &Gpu,
    kernels: &Kernels,
    tally: &mut Tally,
    rng: &mut Rng,
    configs: &[(&str, TrainConfig)],
) -> Result<()> {
    for (name, config) in configs {
        let rule = UpdateRule::of(config);
        let run = RunLength::new(config.epochs, 100, config.warmup_epochs);
        for (count, t) in [(1, 1), (1001, 1), (1001, 57), (20_011, 3)] {
            let step = optimizer::training_step(config, run, t, 0, 0);
            let hyper = optimizer::hyper(config, count);
            let params = random_vec(rng, count, -1.0, 1.0);
            let grads = random_vec(rng, count, -1.0, 1.0);
            // A momentum buffer or Adam's first moment, then its (non-negative) second.
            let state: Vec<Vec<f32>> = (0..rule.state_names().len())
                .map(|i| match i {
                    0 => random_vec(rng, count, -0.1, 0.1),
                    _ => random_vec(rng, count, 0.0, 0.01),
                })
                .collect();
            let (mut expected, mut expected_state) = (params.clone(), state.clone());
            optimizer::reference_update(config, &step, &mut expected, &grads, &mut expected_state)?;
            let mut first: Option<Vec<u32>> = None;
            for (words, optimizer) in optimizers(kernels) {
                let kernel = rule.kernel(optimizer);
                let (actual, actual_state) =
                    ops::optimizer_update(gpu, kernel, &hyper, step, &params, &grads, &state)?;
                let case = format!(
                    "{name}, {} words, {count} parameters at t={t}",
                    words.name()
                );
                tally.close(&format!("{case} params"), &actual, &expected, 1e-7, 1e-5);
                let names = rule.state_names();
                for ((tensor, actual), expected) in
                    names.iter().zip(&actual_state).zip(&expected_state)
                {
                    tally.close(&format!("{case} {tensor}"), actual, expected, 1e-9, 1e-5);
                }
                same_bits(
                    tally,
                    &case,
                    &mut first,
                    &[vec![actual], actual_state].concat().concat(),
                );
            }
        }
    }
    Ok(())
}

/// Samples per batch in the convolution, pool and dropout checks.
const CONV_BATCH: usize = 5;

/// Convolutions that fit no tile: odd images, 1, 3, 4 and 8 channels (the last two through the
/// four-channel kernels), kernels 1, 3 and 5, strides 1 and 2, 'valid' and 'same'; with a weight
/// matrix inside a larger parameter buffer, as in training.
fn conv_cases() -> Vec<(String, Geometry, WeightMatrix)> {
    let cases = [
        (3, 7, 9, 5, 3, 1, Padding::Valid),
        (3, 7, 9, 6, 5, 2, Padding::Same),
        (8, 7, 9, 4, 3, 1, Padding::Same),
        (4, 6, 5, 8, 5, 1, Padding::Valid),
        (1, 9, 7, 4, 3, 1, Padding::Valid),
        (8, 9, 7, 12, 3, 2, Padding::Valid),
        (4, 9, 7, 8, 3, 2, Padding::Same),
        (8, 7, 9, 4, 1, 2, Padding::Valid),
    ];
    cases
        .into_iter()
        .map(
            |(channels, height, width, filters, kernel, stride, padding)| {
                let layer = LayerSpec::Conv2d(Conv2d {
                    bias: true,
                    filters,
                    kernel,
                    stride,
                    padding,
                    activation: LayerActivation::Identity,
                });
                let input = Shape::image(channels, height, width);
                let geometry = layer.geometry(input).expect("the case fits");
                let inputs = kernel * kernel * channels;
                let offset = 36;
                let matrix = WeightMatrix {
                    bias: true,
                    inputs,
                    outputs: filters,
                    rows: (inputs + 1).next_multiple_of(4),
                    weight_offset: offset,
                    bias_offset: offset + inputs * filters,
                };
                let what = format!("{input}, {}", layer.token());
                (what, geometry, matrix)
            },
        )
        .collect()
}

/// Pools over odd images, overlapping windows, and 1, 3, 4 and 8 channels.
fn pool_cases() -> Vec<(String, Geometry)> {
    [
        (3, 7, 9, 2, 2),
        (8, 7, 9, 3, 2),
        (4, 5, 5, 2, 1),
        (1, 9, 7, 2, 2),
        (8, 7, 9, 2, 2),
        (4, 6, 4, 3, 3),
        // 5 samples of 22×22×8 in 4,840 texels, their 11×11 maxima in 1,210; of 23×23×8 in
        // 5,290, their 3×3 windows' 11×11 maxima in 1,210: past a mirror's first row in each.
        (8, 22, 22, 2, 2),
        (8, 23, 23, 3, 2),
    ]
    .into_iter()
    .map(|(channels, height, width, size, stride)| {
        let layer = LayerSpec::MaxPool2d(MaxPool2d { size, stride });
        let input = Shape::image(channels, height, width);
        let geometry = layer.geometry(input).expect("the case fits");
        (format!("{input}, {}", layer.token()), geometry)
    })
    .collect()
}

/// `len` outputs of `activation` (relu: about half exactly zero).
fn activated(rng: &mut Rng, len: usize, activation: LayerActivation) -> Vec<f32> {
    let mut values = random_vec(rng, len, -3.0, 3.0);
    reference::bias_activation_forward(&mut values, &[0.0], activation);
    values
}

/// Output positions of the long-batch weight-gradient case: long enough to be split along K,
/// odd so that the last part has a tail of k past a multiple of 4.
const LONG_CONV_POSITIONS: usize = 2 * 1024 + 3;

/// The three products of a convolution through `variant`, on `conv_cases`: forward (with each
/// activation), weight and bias gradient, patch-matrix gradient.
fn check_conv_matmuls(
    gpu: &Gpu,
    kernels: &Kernels,
    tally: &mut Tally,
    variant: MatmulVariant,
    rng: &mut Rng,
) -> Result<()> {
    for (what, geometry, m) in conv_cases() {
        let positions = CONV_BATCH * geometry.positions();
        let params = m.end() + 11;
        let (patches, outputs) = (positions * m.rows, positions * m.outputs);
        for activation in ACTIVATIONS {
            let dims = MatmulDims::conv_forward(positions, &m, activation);
            let case = format!("{what} forward + {}", activation.name());
            check_matmul(
                gpu,
                kernels,
                tally,
                variant,
                &case,
                dims,
                [patches, params, outputs],
                rng,
            )?;
        }
        let dims = MatmulDims::conv_weight_grad(positions, &m);
        let case = format!("{what} weight grad");
        check_matmul(
            gpu,
            kernels,
            tally,
            variant,
            &case,
            dims,
            [patches, outputs, params],
            rng,
        )?;
        // A batch long enough for the kernels to split the weight gradient along K
        // (`MatmulKernels::split_with`), its K no multiple of 4.
        let long = LONG_CONV_POSITIONS;
        let dims = MatmulDims::conv_weight_grad(long, &m);
        let split = kernels.matmul.split_with(&dims, variant);
        let split = match split {
            Some(split) => format!("in {} parts", split.parts_dims.parts),
            None => "unsplit".to_string(),
        };
        let case = format!("{what} weight grad over {long} positions, {split}");
        let lens = [long * m.rows, long * m.outputs, params];
        check_matmul(gpu, kernels, tally, variant, &case, dims, lens, rng)?;
        let dims = MatmulDims::conv_patch_grad(positions, &m);
        let case = format!("{what} patch grad");
        check_matmul(
            gpu,
            kernels,
            tally,
            variant,
            &case,
            dims,
            [outputs, params, patches],
            rng,
        )?;
    }
    Ok(())
}

/// Weight-gradient-form products (A stored transposed) that the tiled kernels split along K
/// (matmul_parts, then matmul_sum_parts), (M, N, K): sides that fit no tile and C sizes no
/// multiple of 4, and the convnet's two weight gradients over fewer positions (its M N K:
/// 12 32 86528 and 292 64 15488).
const TILED_SPLIT_SHAPES: [(usize, usize, usize); 4] = [
    (13, 7, 2051),
    (70, 65, 1543),
    (12, 32, 86528 / 16),
    (292, 64, 15488 / 8),
];

/// The tiled split products of `TILED_SPLIT_SHAPES`, with A, B and C inside larger buffers at
/// odd offsets and strides, against the reference; the first twice, for the same bits.
fn check_tiled_splits(
    gpu: &Gpu,
    kernels: &Kernels,
    tally: &mut Tally,
    rng: &mut Rng,
) -> Result<()> {
    let variant = MatmulVariant::Tiled;
    for (i, (m, n, k)) in TILED_SPLIT_SHAPES.into_iter().enumerate() {
        let dims = MatmulDims {
            a_offset: 5,
            a_row_stride: 1,
            a_col_stride: m as u32 + 3,
            b_offset: 3,
            b_row_stride: n as u32 + 1,
            c_offset: 37,
            ..MatmulDims::plain(m, n, k)
        };
        let Some(split) = kernels.matmul.split_with(&dims, variant) else {
            tally.fail(&format!("{m}x{n}x{k} is not split along K"));
            continue;
        };
        let case = format!("{m}x{n}x{k} in {} parts", split.parts_dims.parts);
        let lens = [
            dims.lhs_index(m - 1, k - 1) + 1,
            dims.rhs_index(k - 1, n - 1) + 1,
            dims.out_index(m - 1, n - 1) + 11,
        ];
        if i == 0 {
            let [lhs, rhs, out] = lens.map(|len| random_vec(rng, len, -1.0, 1.0));
            let first = ops::matmul(gpu, kernels, variant, &dims, &lhs, &rhs, None, &out)?;
            let again = ops::matmul(gpu, kernels, variant, &dims, &lhs, &rhs, None, &out)?;
            let bits = |values: &[f32]| values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            tally.equal(&format!("{case}, run twice"), &bits(&again), &bits(&first));
        }
        check_matmul(gpu, kernels, tally, variant, &case, dims, lens, rng)?;
    }
    Ok(())
}

/// Checks that `values` has the bits of the first optimizer module's output on the same inputs
/// (`first`, recorded by the first call): the modules do the same arithmetic in the same order.
fn same_bits(tally: &mut Tally, case: &str, first: &mut Option<Vec<u32>>, values: &[f32]) {
    let bits: Vec<u32> = values.iter().map(|v| v.to_bits()).collect();
    match first {
        Some(first) => tally.equal(&format!("{case}, bits as the float module's"), &bits, first),
        None => *first = Some(bits),
    }
}

/// Every optimizer module the device has built (the float one, and the packed one where training
/// uses it).
fn optimizers(kernels: &Kernels) -> Vec<(OptimizerWords, &OptimizerKernels)> {
    [OptimizerWords::Floats, OptimizerWords::Packed]
        .into_iter()
        .filter_map(|words| Some((words, kernels.optimizer_with(words)?)))
        .collect()
}

/// The shapes each variant is checked on: the register variant on shapes for both of its
/// kernels (vec4 blocks, and 4×4 scalar blocks for the other shapes).
fn shapes_for(variant: MatmulVariant) -> Vec<(usize, usize, usize)> {
    match variant {
        MatmulVariant::Tiled => MATMUL_SHAPES.to_vec(),
        MatmulVariant::Registers => [REGISTER_SHAPES, MATMUL_SHAPES].concat(),
    }
}

/// C = A B with every matrix row-major and contiguous.
fn check_plain_matmuls(
    gpu: &Gpu,
    kernels: &Kernels,
    tally: &mut Tally,
    variant: MatmulVariant,
    rng: &mut Rng,
) -> Result<()> {
    for (m, n, k) in shapes_for(variant) {
        let dims = MatmulDims::plain(m, n, k);
        let lens = [m * k, k * n, m * n];
        check_matmul(
            gpu,
            kernels,
            tally,
            variant,
            &format!("{m}x{n}x{k}"),
            dims,
            lens,
            rng,
        )?;
    }
    Ok(())
}

/// The three products of a dense layer, with the weight and bias inside a larger flat buffer as
/// in training, the forward product also with each activation fused into its epilogue.
fn check_layer_matmuls(
    gpu: &Gpu,
    kernels: &Kernels,
    tally: &mut Tally,
    variant: MatmulVariant,
    rng: &mut Rng,
) -> Result<()> {
    for (rows, outputs, inputs) in shapes_for(variant) {
        // An offset the vec4 kernels can read where the widths allow them.
        let offset = if inputs % 4 == 0 && outputs % 4 == 0 {
            36
        } else {
            37
        };
        let layer = WeightMatrix {
            bias: true,
            inputs,
            outputs,
            rows: inputs + 1,
            weight_offset: offset,
            bias_offset: offset + inputs * outputs,
        };
        let params = offset + inputs * outputs + outputs + 11;
        let stride = rows.next_multiple_of(4) + 4;
        let shape = format!("rows {rows}, {inputs}->{outputs}");
        let cases = [
            (
                "forward",
                MatmulDims::layer_forward(rows, &layer),
                [rows * inputs, params, rows * outputs],
            ),
            (
                "weight grad",
                MatmulDims::layer_weight_grad(rows, &layer),
                [rows * inputs, rows * outputs, params],
            ),
            (
                "input grad",
                MatmulDims::layer_input_grad(rows, &layer),
                [rows * outputs, params, rows * inputs],
            ),
            // The first layer's form on the register kernels: the batch transposed, in rows
            // longer than the batch, and a row below (ones in training) giving the bias row.
            (
                "weight and bias grad on the transposed batch",
                MatmulDims::layer_weight_and_bias_grad_transposed(rows, &layer, stride),
                [(inputs + 1) * stride, rows * outputs, params],
            ),
        ];
        for (what, dims, lens) in cases {
            let case = format!("{what} {shape}");
            check_matmul(gpu, kernels, tally, variant, &case, dims, lens, rng)?;
        }
        for activation in ACTIVATIONS {
            let dims = MatmulDims::layer_forward_activated(rows, &layer, activation);
            let lens = [rows * inputs, params, rows * outputs];
            let case = format!("forward + bias + {} {shape}", activation.name());
            check_matmul(gpu, kernels, tally, variant, &case, dims, lens, rng)?;
            // The backward epilogue: only the vec4 input-gradient kernel has it.
            let dims = MatmulDims::layer_input_grad_through(rows, &layer, activation);
            if variant == MatmulVariant::Registers && kernels.matmul.takes_vec4(&dims) {
                let lens = [rows * outputs, params, rows * inputs];
                let case = format!("input grad through {} {shape}", activation.name());
                check_matmul(gpu, kernels, tally, variant, &case, dims, lens, rng)?;
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn check_matmul(
    gpu: &Gpu,
    kernels: &Kernels,
    tally: &mut Tally,
    variant: MatmulVariant,
    case: &str,
    dims: MatmulDims,
    [lhs_len, rhs_len, out_len]: [usize; 3],
    rng: &mut Rng,
) -> Result<()> {
    let lhs = random_vec(rng, lhs_len, -1.0, 1.0);
    let rhs = random_vec(rng, rhs_len, -1.0, 1.0);
    // Elements of the output buffer outside C must survive: start from random contents.
    let initial = random_vec(rng, out_len, -1.0, 1.0);
    let mut expected = initial.clone();
    // A backward epilogue reads the layer output beneath, beside C (as in training).
    let below = dims
        .derivative_activation()
        .map(|_| random_vec(rng, out_len, -1.0, 1.0));
    match &below {
        Some(below) => {
            reference::matmul_through_derivative(&dims, &lhs, &rhs, below, &mut expected)
        }
        None => reference::matmul(&dims, &lhs, &rhs, &mut expected),
    }
    let below = below.as_deref();
    let actual = ops::matmul(gpu, kernels, variant, &dims, &lhs, &rhs, below, &initial)?;
    // f32 accumulation error grows with the dot-product length; near-zero sums of K terms of
    // magnitude ~1 need an absolute floor proportional to K.
    let atol = 1e-6 + 1e-7 * dims.k as f32;
    tally.close(case, &actual, &expected, atol, 1e-4);
    Ok(())
}
