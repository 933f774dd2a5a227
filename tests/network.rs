//! Whole-network checks: the CPU reference's gradients against finite differences, the GPU's
//! forward + backward against the reference, and a whole GPU training epoch against the
//! reference stepping through the same batches.

mod common;

use common::{
    assert_close, assert_trains_like_the_reference, gpu, kernels, random_dataset, random_vec,
    reference_epoch,
};
use shadertrain::gpu::uniforms::MatmulDims;
use shadertrain::gpu::{Kernels, MatmulTiling, MatmulVariant};
use shadertrain::layers::dense;
use shadertrain::model::reference::{StepKey, forward, forward_backward};
use shadertrain::model::{Activation, Loss, ModelSpec, Shape, parse_layers};
use shadertrain::reference;
use shadertrain::rng::Rng;
use shadertrain::train::{OptimizerKind, TrainConfig, Trainer};

fn small_spec(features: usize, classes: usize, activation: Activation, loss: Loss) -> ModelSpec {
    ModelSpec::mlp(Shape::flat(features), &[7, 5], classes, activation, loss)
}

const CASES: [(Activation, Loss); 4] = [
    (Activation::Relu, Loss::Xent),
    (Activation::Sigmoid, Loss::Xent),
    (Activation::Tanh, Loss::Mse),
    (Activation::Relu, Loss::Mse),
];

#[test]
fn reference_gradients_match_finite_differences() {
    let mut rng = Rng::new(11);
    // Smooth activations only: relu's kink makes a finite difference meaningless near 0.
    for (activation, loss) in [
        (Activation::Sigmoid, Loss::Xent),
        (Activation::Tanh, Loss::Xent),
        (Activation::Tanh, Loss::Mse),
        (Activation::Sigmoid, Loss::Mse),
    ] {
        let spec = ModelSpec::mlp(Shape::flat(6), &[5, 4], 3, activation, loss);
        let layout = spec.layout();
        let params = random_vec(&mut rng, layout.total, -1.0, 1.0);
        let rows = 9;
        let x = random_vec(&mut rng, rows * spec.input.len(), 0.0, 1.0);
        let labels: Vec<u32> = (0..rows).map(|_| rng.below(3) as u32).collect();
        let analytic = forward_backward(&spec, &params, &x, &labels, StepKey::default()).grads;
        let eps = 3e-3;
        let numeric: Vec<f32> = (0..layout.total)
            .map(|i| {
                let mut plus = params.clone();
                plus[i] += eps;
                let mut minus = params.clone();
                minus[i] -= eps;
                let up =
                    forward_backward(&spec, &plus, &x, &labels, StepKey::default()).mean_loss();
                let down =
                    forward_backward(&spec, &minus, &x, &labels, StepKey::default()).mean_loss();
                ((up - down) / (2.0 * eps as f64)) as f32
            })
            .collect();
        assert!(
            analytic.iter().any(|g| g.abs() > 1e-3),
            "gradients vanish: the check would be empty"
        );
        assert_close(
            &format!("{activation:?} {loss:?}"),
            &analytic,
            &numeric,
            2e-4,
            2e-2,
        );
    }
}

#[test]
fn gpu_forward_backward_matches_reference() {
    let mut rng = Rng::new(12);
    let data = random_dataset(&mut rng, 40, 12, 3);
    for (activation, loss) in CASES {
        let spec = small_spec(12, 3, activation, loss);
        for batch_size in [16, 40, 64] {
            let config = TrainConfig {
                batch_size,
                ..TrainConfig::default()
            };
            let trainer =
                Trainer::new(gpu(), kernels(), spec.clone(), config, &data, &data).unwrap();
            let params = trainer.parameters().unwrap();
            let rows = batch_size.min(data.samples());
            let order: Vec<u32> = (0..data.samples() as u32).collect();
            let (x, y) = reference::gather_batch(&data, &order, 0, rows);
            let expected = forward_backward(&spec, &params, &x, &y, StepKey::default()).grads;
            let actual = trainer.first_batch_gradients().unwrap();
            assert_close(
                &format!("{activation:?} {loss:?} batch {batch_size} gradients"),
                &actual,
                &expected,
                1e-6,
                1e-3,
            );
        }
    }
}

#[test]
fn gpu_epoch_with_partial_last_batch_matches_reference() {
    let mut rng = Rng::new(13);
    let data = random_dataset(&mut rng, 50, 12, 4);
    for optimizer in [OptimizerKind::Adam, OptimizerKind::Sgd] {
        for (activation, loss) in CASES {
            let spec = small_spec(12, 4, activation, loss);
            let config = TrainConfig {
                batch_size: 16,
                learning_rate: 0.01,
                optimizer,
                seed: 5,
                steps_per_submit: 3,
                ..TrainConfig::default()
            };
            let what = format!("{optimizer:?} {activation:?} {loss:?}");
            assert_trains_like_the_reference(&what, kernels(), &spec, &config, &data);
        }
    }
}

/// Both matmul variants train the same epoch as the reference, on a model whose shapes the
/// register kernels take (multiples of 4) with a partial last batch.
#[test]
fn both_matmul_variants_train_like_the_reference() {
    let mut rng = Rng::new(16);
    let data = random_dataset(&mut rng, 70, 12, 4);
    let spec = ModelSpec::mlp(Shape::flat(12), &[8, 16], 4, Activation::Tanh, Loss::Xent);
    let config = TrainConfig {
        batch_size: 16,
        learning_rate: 0.01,
        seed: 6,
        ..TrainConfig::default()
    };
    for variant in [MatmulVariant::Tiled, MatmulVariant::Registers] {
        let kernels = Kernels::with_matmul(gpu(), MatmulTiling::default(), variant);
        let layout = spec.layout();
        for dims in [
            MatmulDims::layer_forward(16, &layout.matrices[1]),
            MatmulDims::layer_weight_grad(16, &layout.matrices[1]),
            MatmulDims::layer_input_grad(16, &layout.matrices[1]),
        ] {
            assert_eq!(kernels.matmul.for_dims(&dims).variant, variant);
            assert!(kernels.matmul.takes_vec4(&dims), "{dims:?}");
        }
        assert_trains_like_the_reference(&format!("{variant:?}"), &kernels, &spec, &config, &data);
    }
}

/// The register kernels' first-layer weight and bias gradient on the transposed batch
/// (`gather_batch_transposed` and a row of ones), in the cases the previous test does not reach:
/// a partial batch they take (8 rows in rows of 16), 10 classes (the output layer's products on
/// its matrix padded to 12 columns, its input gradient carrying the derivative below), a
/// first layer whose derivative the layer above does not apply (its output also feeds a residual
/// sum), and a model without hidden layers (the first layer is the output layer).
#[test]
fn the_transposed_first_weight_gradient_trains_like_the_reference() {
    let kernels = Kernels::with_matmul(gpu(), MatmulTiling::default(), MatmulVariant::Registers);
    let cases = [
        ("partial batch of 8", 72, "dense8,dense16,dense4:linear", 4),
        ("ten classes", 72, "dense64,dense10:linear", 10),
        (
            "derivative not fused",
            64,
            "dense8,res(dense8),dense4:linear",
            4,
        ),
        ("no hidden layer", 64, "dense4:linear", 4),
    ];
    for (what, samples, layers, classes) in cases {
        let mut rng = Rng::new(17);
        let data = random_dataset(&mut rng, samples, 12, classes);
        let spec = ModelSpec {
            input: Shape::flat(12),
            layers: parse_layers(layers, Activation::Sigmoid).unwrap(),
            loss: Loss::Xent,
            standardisation: None,
        };
        spec.validate().unwrap();
        let config = TrainConfig {
            batch_size: 16,
            learning_rate: 0.01,
            seed: 7,
            ..TrainConfig::default()
        };
        let layout = spec.layout();
        let first = layout.matrices[0];
        let transposed = MatmulDims::layer_weight_and_bias_grad_transposed(16, &first, 16);
        assert!(kernels.matmul.takes_vec4(&transposed), "{what}");
        let last = layout.matrices.last().unwrap();
        let padded = dense::padded_matrix(&kernels, last, 16);
        assert_eq!(padded.is_some(), classes == 10, "{what}");
        assert_trains_like_the_reference(what, &kernels, &spec, &config, &data);
    }
}

/// The budget of issue 3, checked by counting: chunks of `steps_per_submit` steps per
/// submission, one more for the evaluation, and one readback per epoch.
#[test]
fn an_epoch_submits_in_chunks_and_reads_back_once() {
    let mut rng = Rng::new(14);
    let train = random_dataset(&mut rng, 1000, 12, 3);
    let test = random_dataset(&mut rng, 100, 12, 3);
    let spec = small_spec(12, 3, Activation::Relu, Loss::Xent);
    let config = TrainConfig {
        batch_size: 8,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(gpu(), kernels(), spec, config, &train, &test).unwrap();
    let work = trainer.run_epoch().unwrap().work;
    let steps = 1000usize.div_ceil(8);
    // The evaluation does not step at the training batch: the 100 test samples are one step.
    assert_eq!(trainer.evaluation_batch(), 100);
    assert_eq!(work.readbacks, 1);
    assert_eq!(work.submits, steps.div_ceil(32) + 1, "{work:?}");
    // Per training step: gather, 3 matmuls with bias + activation in their epilogue, loss,
    // 3 × (activation backward + weight grad), 2 input grads, update, schedule advance = 15
    // (the shared kernels: widths 12 -> 3 are not vec4 ones, so every product is strided);
    // for the one test step the 5 forward dispatches and the advance; two metric reductions.
    assert_eq!(work.dispatches, steps * 15 + 6 + 2, "{work:?}");
}

/// A training batch of 1 evaluates in batches of up to 1024 rows (here one full and a partial
/// one), with the CPU reference's per-sample results, and so does a trainer of another batch
/// size with the same parameters, to the bit.
#[test]
fn the_evaluation_batch_does_not_follow_the_training_batch_or_change_results() {
    let mut rng = Rng::new(19);
    let train = random_dataset(&mut rng, 40, 12, 3);
    let test = random_dataset(&mut rng, 1500, 12, 3);
    let spec = small_spec(12, 3, Activation::Relu, Loss::Xent);
    let trainer_of = |batch_size| {
        let config = TrainConfig {
            batch_size,
            ..TrainConfig::default()
        };
        Trainer::new(gpu(), kernels(), spec.clone(), config, &train, &test).unwrap()
    };
    let mut one = trainer_of(1);
    assert_eq!(one.evaluation_batch(), 1024);
    let m = one.run_epoch().unwrap();
    assert_eq!(m.work.readbacks, 1);
    let params = one.parameters().unwrap();
    let evaluation = one.evaluate().unwrap();
    assert_eq!(
        (m.test_loss, m.test_accuracy),
        (evaluation.loss, evaluation.accuracy)
    );

    let order: Vec<u32> = (0..1500).collect();
    let (x, y) = reference::gather_batch(&test, &order, 0, 1500);
    let logits = forward(&spec, &params, &x).pop().unwrap();
    let expected = reference::softmax_loss(spec.loss, 0.0, &logits, &y, 3);
    let predictions: Vec<u32> = (logits.chunks(3))
        .map(|row| (0..3).fold(0, |best, c| if row[c] > row[best] { c } else { best }) as u32)
        .collect();
    let differing = (evaluation.predictions.iter().zip(&predictions))
        .filter(|(a, b)| a != b)
        .count();
    assert!(
        differing <= 2,
        "{differing} of 1500 predictions differ from the reference"
    );
    let loss = expected.sample_loss.iter().map(|&l| l as f64).sum::<f64>() / 1500.0;
    assert!(
        (evaluation.loss - loss).abs() <= 1e-5 * loss,
        "{} vs {loss}",
        evaluation.loss
    );

    let other = trainer_of(64);
    other.set_parameters(&params).unwrap();
    let again = other.evaluate().unwrap();
    assert_eq!(again.loss.to_bits(), evaluation.loss.to_bits());
    assert_eq!(again.predictions, evaluation.predictions);
}

/// `--no-shuffle` and `--max-steps`: two steps in file order, stopping mid-epoch, equal the
/// reference's first two steps; the epoch's metrics count only the samples trained.
#[test]
fn file_order_and_a_step_limit_reproduce_the_reference_step_by_step() {
    let mut rng = Rng::new(15);
    let data = random_dataset(&mut rng, 50, 12, 4);
    let spec = small_spec(12, 4, Activation::Tanh, Loss::Xent);
    let config = TrainConfig {
        batch_size: 16,
        learning_rate: 0.01,
        shuffle: false,
        max_steps: Some(2),
        ..TrainConfig::default()
    };
    let mut trainer =
        Trainer::new(gpu(), kernels(), spec.clone(), config.clone(), &data, &data).unwrap();
    let metrics = trainer.run_epoch().unwrap();
    assert!(trainer.finished());
    assert!(trainer.run_epoch().is_err(), "nothing is left to train");
    assert_eq!(metrics.train_samples, 32);
    // The test figures of an epoch cut short are those of the weights it ended with.
    let evaluation = trainer.evaluate().unwrap();
    assert_eq!(metrics.test_loss, evaluation.loss);
    assert_eq!(metrics.test_accuracy, evaluation.accuracy);

    let expected = reference_epoch(&spec, &config, &data);
    assert_eq!(expected.train_samples, 32);
    assert_close(
        "parameters after 2 steps",
        &trainer.parameters().unwrap(),
        &expected.params,
        1e-6,
        1e-4,
    );
    assert_close(
        "train loss",
        &[metrics.train_loss as f32],
        &[expected.train_loss as f32],
        1e-6,
        1e-5,
    );
}
