//! Convolutional networks: the CPU reference's gradients of Conv2D, MaxPool2D and Dropout
//! against finite differences, the GPU's forward + backward and a whole GPU epoch against the
//! reference, on shapes that fit no tile (3 channels, odd image sizes, kernels 3 and 5, strides
//! 1 and 2, 'same' padding, overlapping pools, batches of 5), and dropout's masks from run to run.

mod common;

use common::{
    assert_first_batch_gradients_match, assert_gradients_match_finite_differences,
    assert_trains_like_the_reference, gpu, kernels, random_vec,
};
use shadertrain::data::Dataset;
use shadertrain::gpu::uniforms::MatmulDims;
use shadertrain::gpu::{Kernels, MatmulTiling, MatmulVariant};
use shadertrain::model::reference::{StepKey, forward};
use shadertrain::model::{Activation, Loss, ModelSpec, Shape, parse_layers};
use shadertrain::reference;
use shadertrain::rng::Rng;
use shadertrain::train::{OptimizerKind, TrainConfig, Trainer};

/// A model of `layers` (hidden activation `activation`) on inputs of `input`, 3 classes.
fn spec(input: Shape, layers: &str, activation: Activation, loss: Loss) -> ModelSpec {
    let spec = ModelSpec {
        input,
        layers: parse_layers(layers, activation).unwrap(),
        loss,
        standardisation: None,
    };
    spec.validate().unwrap();
    spec
}

/// Models that reach every layer's kernels: both im2col and col2im forms (3 and 4 or 8
/// channels), strides, 'same' padding, pools over odd sizes and overlapping windows, dropout
/// before a dense layer and between convolutions, a dense layer with a convolution below.
const MODELS: [&str; 3] = [
    "conv4k3,maxpool2,conv8k3same,flatten,dropout0.3,dense3",
    "conv5k5s2same,maxpool3s2,flatten,dense6,dense3",
    "conv8k3,dropout0.5,conv4k3s2,maxpool2s1,flatten,dense3",
];

fn random_images(rng: &mut Rng, samples: usize, shape: Shape, classes: usize) -> Dataset {
    let pixels = (0..samples * shape.len())
        .map(|_| rng.below(256) as u8)
        .collect();
    let labels = (0..samples).map(|_| rng.below(classes) as u8).collect();
    Dataset::with_shape(shape, classes, pixels, labels).unwrap()
}

#[test]
fn reference_gradients_match_finite_differences() {
    let mut rng = Rng::new(31);
    let input = Shape::image(3, 7, 9);
    // Smooth activations only: a finite difference across relu's kink means nothing. Pools'
    // maxima move only where two window values are within the step of each other, which random
    // values almost never are.
    for (layers, activation, loss) in [
        (MODELS[0], Activation::Tanh, Loss::Xent),
        (MODELS[1], Activation::Sigmoid, Loss::Mse),
        (MODELS[2], Activation::Tanh, Loss::Xent),
    ] {
        let spec = spec(input, layers, activation, loss);
        let layout = spec.layout();
        let mut params = spec.glorot_uniform(&mut rng);
        for p in params.iter_mut() {
            *p += rng.uniform(-0.1, 0.1);
        }
        // The padding rows of a convolution's matrix are not parameters: they stay zero.
        for m in &layout.matrices {
            params[m.bias_offset + m.outputs..m.end()].fill(0.0);
        }
        let rows = 5;
        let x = random_vec(&mut rng, rows * input.len(), 0.0, 1.0);
        let labels: Vec<u32> = (0..rows).map(|_| rng.below(3) as u32).collect();
        let key = StepKey { seed: 4, step: 9 };
        // Small enough that no pool's maximum moves to another value of its window.
        let eps = 5e-4;
        let trained: Vec<usize> = (layout.matrices.iter())
            .flat_map(|m| m.weight_offset..m.bias_offset + m.outputs)
            .collect();
        let batch = (&x[..], &labels[..]);
        let tolerance = (2e-4, 2e-2);
        assert_gradients_match_finite_differences(
            layers, &spec, &params, batch, key, &trained, eps, tolerance,
        );
    }
}

#[test]
fn gpu_forward_backward_matches_reference() {
    let mut rng = Rng::new(32);
    let input = Shape::image(3, 7, 12);
    let data = random_images(&mut rng, 13, input, 3);
    for layers in MODELS {
        for activation in [Activation::Relu, Activation::Tanh] {
            let spec = spec(input, layers, activation, Loss::Xent);
            // Batches of 5 (13 samples: two full batches and a partial one).
            let what = format!("{layers} ({activation:?})");
            assert_first_batch_gradients_match(&what, &spec, (&data, 5), (1e-6, 1e-3));
        }
    }
}

#[test]
fn gpu_epoch_matches_reference() {
    let mut rng = Rng::new(33);
    let input = Shape::image(3, 7, 12);
    let data = random_images(&mut rng, 23, input, 3);
    for (layers, optimizer) in [
        (MODELS[0], OptimizerKind::Adam),
        (MODELS[1], OptimizerKind::Sgd),
        (MODELS[2], OptimizerKind::Adam),
    ] {
        let spec = spec(input, layers, Activation::Relu, Loss::Xent);
        let config = TrainConfig {
            batch_size: 5,
            learning_rate: 0.01,
            optimizer,
            seed: 6,
            steps_per_submit: 2,
            ..TrainConfig::default()
        };
        assert_trains_like_the_reference(layers, kernels(), &spec, &config, &data);
    }
}

/// On the tiled kernels (a GPU's), a convolution's weight gradient over a long batch runs in
/// parts along K (matmul_parts, then matmul_sum_parts): the epoch still trains as the reference,
/// its last, partial batch unsplit.
#[test]
fn the_tiled_split_weight_gradient_trains_like_the_reference() {
    let kernels = Kernels::with_matmul(gpu(), MatmulTiling::default(), MatmulVariant::Tiled);
    let mut rng = Rng::new(34);
    let input = Shape::image(3, 12, 15);
    let data = random_images(&mut rng, 19, input, 3);
    let layers = "conv4k3,maxpool2,flatten,dense3";
    let spec = spec(input, layers, Activation::Relu, Loss::Xent);
    let config = TrainConfig {
        batch_size: 8,
        learning_rate: 0.01,
        seed: 6,
        ..TrainConfig::default()
    };
    // K: 8 samples of 10 x 13 output positions; the partial batch of 3 has too few.
    let matrix = &spec.layout().matrices[0];
    let split = |samples: usize| {
        let dims = MatmulDims::conv_weight_grad(samples * 10 * 13, matrix);
        kernels.matmul.split_along_k(&dims).is_some()
    };
    assert!(
        split(8) && !split(3),
        "the full batches' weight gradient splits"
    );
    assert_trains_like_the_reference(layers, &kernels, &spec, &config, &data);
}

/// Dropout masks come from (seed, step, element): the same seed gives the same run, another seed
/// another one, and a validation split is evaluated without dropout (so it equals an evaluation
/// of the trained weights).
#[test]
fn dropout_runs_repeat_and_depend_on_the_seed() {
    let mut rng = Rng::new(34);
    let input = Shape::image(1, 8, 8);
    let data = random_images(&mut rng, 40, input, 3);
    let spec = spec(
        input,
        "conv4k3,maxpool2,flatten,dropout0.5,dense3",
        Activation::Relu,
        Loss::Xent,
    );
    let run = |seed: u64| {
        let config = TrainConfig {
            batch_size: 8,
            seed,
            shuffle: false,
            validation_split: 0.25,
            ..TrainConfig::default()
        };
        let mut trainer =
            Trainer::new(gpu(), kernels(), spec.clone(), config, &data, &data).unwrap();
        let metrics = trainer.run_epoch().unwrap();
        (metrics, trainer.parameters().unwrap())
    };
    let (first, params) = run(1);
    let (again, params_again) = run(1);
    assert_eq!(params, params_again, "the same seed, other weights");
    assert_eq!(
        (first.train_loss, first.validation),
        (again.train_loss, again.validation)
    );
    let (_, other) = run(2);
    assert_ne!(params, other, "another seed should draw other masks");
    // Validation: the last 10 samples, evaluated in evaluation mode.
    let held_out = data.truncated(40);
    let order: Vec<u32> = (30..40).collect();
    let (x, y) = reference::gather_batch(&held_out, &order, 0, 10);
    let logits = forward(&spec, &params, &x).pop().unwrap();
    let expected = reference::softmax_loss(Loss::Xent, 0.0, &logits, &y, 3);
    let correct = expected.sample_correct.iter().sum::<u32>() as f64 / 10.0;
    let validation = first.validation.expect("a validation split");
    assert_eq!(validation.accuracy, correct);
    let loss = expected.sample_loss.iter().map(|&l| l as f64).sum::<f64>() / 10.0;
    assert!(
        (validation.loss - loss).abs() < 1e-5 * loss,
        "{validation:?} vs {loss}"
    );
}
