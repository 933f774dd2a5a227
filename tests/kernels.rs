//! Every kernel against its CPU reference (`shadertrain::selftest`, the same checks
//! `shadertrain selftest` prints), one test per kernel family.

mod common;

use common::{gpu, kernels};
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
fn matmul_registers() {
    check("matmul (registers)");
}

#[test]
fn matmul_dense_layer_products_registers() {
    check("matmul dense-layer products (registers)");
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
fn metric_sums() {
    check("metric sums");
}

#[test]
fn sgd_update() {
    check("sgd update");
}

#[test]
fn adam_update() {
    check("adam update");
}

#[test]
fn every_check_has_a_test() {
    assert_eq!(
        selftest::CHECKS.len(),
        10,
        "add a test above for each new check"
    );
}
