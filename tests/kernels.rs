//! Every kernel against its CPU reference (`shadertrain::selftest`, the same checks
//! `shadertrain selftest` prints), one test per kernel family.

mod common;

use common::{gpu, kernels};
use shadertrain::gpu::uniforms::MatmulDims;
use shadertrain::gpu::{Kernels, MatmulOperand, MatmulTiling, MatmulVariant, TextureMirror};
use shadertrain::selftest;

fn check(name: &str) {
    let result = selftest::run(gpu(), kernels(), name).unwrap();
    assert!(
        result.passed(),
        "{name}: {} ({:.2}x the tolerance)",
        result.worst,
        result.worst_ratio
    );
}

#[test]
fn matmul_tiled() {
    check("matmul (tiled)");
}

#[test]
fn matmul_dense_layer_products_tiled() {
    check("matmul dense-layer products (tiled)");
}

#[test]
fn matmul_split_along_k_tiled() {
    check("matmul split along K (tiled)");
}

#[test]
fn matmul_registers() {
    check("matmul (registers)");
}

#[test]
fn matmul_dense_layer_products_registers() {
    check("matmul dense-layer products (registers)");
}

#[test]
fn matmul_convolution_products_tiled() {
    check("matmul convolution products (tiled)");
}

#[test]
fn matmul_convolution_products_registers() {
    check("matmul convolution products (registers)");
}

#[test]
fn conv2d_patch_matrix() {
    check("conv2d patch matrix (im2col)");
}

#[test]
fn conv2d_input_gradient() {
    check("conv2d input gradient (col2im)");
}

#[test]
fn conv2d_input_gradient_direct() {
    check("conv2d input gradient (direct)");
    // lavapipe, where the suite runs, computes a convolution's input gradient directly: the
    // check must have compared something.
    let result = selftest::run(gpu(), kernels(), "conv2d input gradient (direct)").unwrap();
    assert!(!result.worst.starts_with("not run"), "{}", result.worst);
}

#[test]
fn conv2d_products_from_the_image() {
    check("conv2d products from the image");
    // lavapipe, where the suite runs, reads convolutions' images directly: the check must have
    // compared something.
    let result = selftest::run(gpu(), kernels(), "conv2d products from the image").unwrap();
    assert!(!result.worst.starts_with("not run"), "{}", result.worst);
}

#[test]
fn max_pool_forward_and_backward() {
    check("max pool forward + backward");
}

#[test]
fn column_copies() {
    check("column copies (padding)");
}

#[test]
fn dropout_forward_and_backward() {
    check("dropout forward + backward");
}

#[test]
fn activation_backward_and_bias_gradient() {
    check("activation backward + bias gradient");
}

#[test]
fn softmax_losses() {
    check("softmax losses");
}

#[test]
fn batch_gather() {
    check("batch gather");
}

#[test]
fn image_gather() {
    check("image gather");
}

#[test]
fn metric_sums() {
    check("metric sums");
}

#[test]
fn sgd_update() {
    check("sgd update");
}

#[test]
fn momentum_update() {
    check("momentum update");
}

#[test]
fn adam_update() {
    check("adam update");
}

#[test]
fn average_pool_forward_backward() {
    check("average pool forward + backward");
}

#[test]
fn batchnorm_forward_backward() {
    check("batchnorm forward + backward");
}

#[test]
fn residual_sums_and_activations() {
    check("residual sums and activations");
}

#[test]
fn global_max_pool_forward_backward() {
    check("global max pool forward + backward");
}

#[test]
fn every_check_has_a_test() {
    assert_eq!(
        selftest::CHECKS.len(),
        26,
        "add a test above for each new check"
    );
}

/// The register variant's vec4 kernels read texture mirrors of their operands; a product with
/// an operand that has none (a buffer too large for the device's textures) runs on the scalar
/// blocks, which read buffers.
#[test]
fn register_products_without_mirrors_fall_back_to_buffer_kernels() {
    let kernels = Kernels::with_matmul(gpu(), MatmulTiling::default(), MatmulVariant::Registers);
    let dims = MatmulDims::plain(64, 64, 64);
    let buffer = gpu().storage_buffer("operand", 64 * 64 * 4).unwrap();
    let mirror = TextureMirror::new(gpu(), "operand mirror", &buffer).unwrap();
    let with = MatmulOperand::new(&buffer, Some(&mirror));
    let without = MatmulOperand::new(&buffer, None);
    assert_eq!(
        kernels.matmul.for_operands(&dims, with, with).reads_mirrors,
        kernels.matmul.takes_vec4(&dims)
    );
    for (lhs, rhs) in [(with, without), (without, with), (without, without)] {
        let chosen = kernels.matmul.for_operands(&dims, lhs, rhs);
        assert!(!chosen.reads_mirrors);
        assert_eq!(chosen.kernel.name, "matmul_blocks");
        assert_eq!(chosen.variant, MatmulVariant::Registers);
    }
}
