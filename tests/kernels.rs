//! Every kernel against its CPU reference on random data, on shapes that are not multiples of
//! any tile.

mod common;

use common::{assert_close, gpu, kernels, random_dataset, random_vec};
use shadertrain::gpu::ops;
use shadertrain::gpu::uniforms::{MatmulDims, OptimizerHyper};
use shadertrain::model::{Activation, DenseLayer, LayerActivation, Loss};
use shadertrain::reference;
use shadertrain::rng::Rng;

const SHAPES: [(usize, usize, usize); 5] = [
    (1, 1, 1),
    (7, 13, 5),
    (3, 65, 129),
    (64, 64, 16),
    (129, 785, 257),
];

const ACTIVATIONS: [LayerActivation; 4] = [
    LayerActivation::Identity,
    LayerActivation::Hidden(Activation::Relu),
    LayerActivation::Hidden(Activation::Sigmoid),
    LayerActivation::Hidden(Activation::Tanh),
];

fn check_matmul(
    what: &str,
    dims: MatmulDims,
    lhs_len: usize,
    rhs_len: usize,
    out_len: usize,
    rng: &mut Rng,
) {
    let lhs = random_vec(rng, lhs_len, -1.0, 1.0);
    let rhs = random_vec(rng, rhs_len, -1.0, 1.0);
    // Elements of the output buffer outside C must survive: start from random contents.
    let initial = random_vec(rng, out_len, -1.0, 1.0);
    let mut expected = initial.clone();
    reference::matmul(&dims, &lhs, &rhs, &mut expected);
    let actual = ops::matmul(gpu(), kernels(), &dims, &lhs, &rhs, &initial).unwrap();
    assert_close(what, &actual, &expected, 1e-5, 1e-4);
}

#[test]
fn matmul_plain_matches_reference() {
    let mut rng = Rng::new(1);
    for (m, n, k) in SHAPES {
        let dims = MatmulDims::plain(m, n, k);
        check_matmul(&format!("{m}x{n}x{k}"), dims, m * k, k * n, m * n, &mut rng);
    }
}

/// The three dense-layer products, with the weight inside a larger flat buffer.
#[test]
fn matmul_layer_products_match_reference() {
    let mut rng = Rng::new(2);
    for (rows, outputs, inputs) in SHAPES {
        let layer = DenseLayer {
            inputs,
            outputs,
            weight_offset: 37,
            bias_offset: 37 + inputs * outputs,
        };
        let params = 37 + inputs * outputs + outputs + 11;
        let shape = format!("rows {rows}, {inputs} -> {outputs}");
        check_matmul(
            &format!("forward {shape}"),
            MatmulDims::layer_forward(rows, &layer),
            rows * inputs,
            params,
            rows * outputs,
            &mut rng,
        );
        check_matmul(
            &format!("weight grad {shape}"),
            MatmulDims::layer_weight_grad(rows, &layer),
            rows * inputs,
            rows * outputs,
            params,
            &mut rng,
        );
        check_matmul(
            &format!("input grad {shape}"),
            MatmulDims::layer_input_grad(rows, &layer),
            rows * outputs,
            params,
            rows * inputs,
            &mut rng,
        );
    }
}

#[test]
fn bias_activation_forward_matches_reference() {
    let mut rng = Rng::new(3);
    for activation in ACTIVATIONS {
        for (rows, cols) in [(1, 1), (7, 13), (129, 257)] {
            let values = random_vec(&mut rng, rows * cols, -4.0, 4.0);
            let bias = random_vec(&mut rng, cols, -1.0, 1.0);
            let mut expected = values.clone();
            reference::bias_activation_forward(&mut expected, &bias, activation);
            let actual =
                ops::bias_activation_forward(gpu(), kernels(), &values, &bias, activation).unwrap();
            assert_close(
                &format!("{activation:?} {rows}x{cols}"),
                &actual,
                &expected,
                1e-6,
                1e-5,
            );
        }
    }
}

#[test]
fn activation_backward_and_bias_grad_match_reference() {
    let mut rng = Rng::new(4);
    for activation in ACTIVATIONS {
        for (rows, cols) in [(1, 1), (7, 13), (129, 257)] {
            let grad = random_vec(&mut rng, rows * cols, -1.0, 1.0);
            // Outputs in the range each activation produces (relu: half of them zero).
            let mut output = random_vec(&mut rng, rows * cols, -3.0, 3.0);
            reference::bias_activation_forward(&mut output, &vec![0.0; cols], activation);
            let mut expected = grad.clone();
            let expected_bias =
                reference::activation_backward(&mut expected, &output, cols, activation);
            let (actual, actual_bias) =
                ops::activation_backward(gpu(), kernels(), &grad, &output, cols, activation)
                    .unwrap();
            let what = format!("{activation:?} {rows}x{cols}");
            assert_close(&format!("{what} dz"), &actual, &expected, 1e-6, 1e-5);
            assert_close(
                &format!("{what} bias grad"),
                &actual_bias,
                &expected_bias,
                1e-5,
                1e-4,
            );
        }
    }
}

#[test]
fn softmax_losses_match_reference() {
    let mut rng = Rng::new(5);
    for loss in [Loss::Xent, Loss::Mse] {
        for (rows, classes) in [(1, 2), (7, 10), (129, 3)] {
            let logits = random_vec(&mut rng, rows * classes, -8.0, 8.0);
            let labels: Vec<u32> = (0..rows).map(|_| rng.below(classes) as u32).collect();
            let start = 5;
            let expected = reference::softmax_loss(loss, &logits, &labels, classes);
            let actual =
                ops::softmax_loss(gpu(), kernels(), loss, &logits, &labels, classes, start)
                    .unwrap();
            let what = format!("{loss:?} {rows}x{classes}");
            assert_close(
                &format!("{what} loss"),
                &actual.sample_loss,
                &expected.sample_loss,
                1e-5,
                1e-4,
            );
            assert_close(
                &format!("{what} grad"),
                &actual.logits_grad,
                &expected.logits_grad,
                1e-6,
                1e-4,
            );
            assert_eq!(
                actual.sample_correct, expected.sample_correct,
                "{what} correct flags"
            );
        }
    }
}

#[test]
fn gather_builds_the_normalised_batch_in_order() {
    let mut rng = Rng::new(6);
    let data = random_dataset(&mut rng, 37, 12, 10);
    let mut order: Vec<u32> = (0..37).collect();
    rng.shuffle(&mut order);
    for (start, rows) in [(0, 1), (3, 16), (30, 7)] {
        let (x, y) = reference::gather_batch(&data, &order, start, rows);
        let (gx, gy) = ops::gather_batch(gpu(), kernels(), &data, &order, start, rows).unwrap();
        assert_close(&format!("batch x at {start}"), &gx, &x, 0.0, 1e-6);
        assert_eq!(gy, y, "batch labels at {start}");
    }
}

#[test]
fn metric_sums_match_reference() {
    let mut rng = Rng::new(7);
    for count in [1, 255, 1000, 60001] {
        let loss = random_vec(&mut rng, count, 0.0, 3.0);
        let correct: Vec<u32> = (0..count).map(|_| rng.below(2) as u32).collect();
        let (sum, hits) = ops::sum_metrics(gpu(), kernels(), &loss, &correct).unwrap();
        let expected: f64 = loss.iter().map(|&l| l as f64).sum();
        assert_close(
            &format!("loss sum of {count}"),
            &[sum],
            &[expected as f32],
            1e-4,
            1e-5,
        );
        assert_eq!(
            hits,
            correct.iter().sum::<u32>(),
            "correct count of {count}"
        );
    }
}

#[test]
fn sgd_step_matches_reference() {
    let mut rng = Rng::new(8);
    for count in [1, 1001] {
        let params = random_vec(&mut rng, count, -1.0, 1.0);
        let grads = random_vec(&mut rng, count, -1.0, 1.0);
        let mut expected = params.clone();
        reference::sgd_update(&mut expected, &grads, 0.05);
        let actual = ops::sgd_update(gpu(), kernels(), &params, &grads, 0.05).unwrap();
        assert_close(&format!("sgd {count}"), &actual, &expected, 1e-7, 1e-6);
    }
}

#[test]
fn adam_step_matches_reference() {
    let mut rng = Rng::new(9);
    let hyper = |count: usize| OptimizerHyper {
        count: count as u32,
        learning_rate: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        epsilon: 1e-7,
        _pad: [0; 3],
    };
    for (count, t) in [(1, 1), (1001, 1), (1001, 57)] {
        let params = random_vec(&mut rng, count, -1.0, 1.0);
        let grads = random_vec(&mut rng, count, -1.0, 1.0);
        let m = random_vec(&mut rng, count, -0.1, 0.1);
        let v = random_vec(&mut rng, count, 0.0, 0.01);
        let step_size = reference::adam_step_size(1e-3, 0.9, 0.999, t);
        let (mut ep, mut em, mut ev) = (params.clone(), m.clone(), v.clone());
        reference::adam_update(&mut ep, &grads, &mut em, &mut ev, &hyper(count), step_size);
        let (ap, am, av) = ops::adam_update(
            gpu(),
            kernels(),
            &params,
            &grads,
            &m,
            &v,
            &hyper(count),
            step_size,
        )
        .unwrap();
        let what = format!("adam {count} at t={t}");
        assert_close(&format!("{what} params"), &ap, &ep, 1e-7, 1e-5);
        assert_close(&format!("{what} m"), &am, &em, 1e-8, 1e-5);
        assert_close(&format!("{what} v"), &av, &ev, 1e-10, 1e-5);
    }
}
