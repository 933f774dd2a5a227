//! Deeper models: BatchNorm (over channels and over features), residual blocks (identity and
//! projection shortcuts, nested), standalone activations, average and global average pooling,
//! convolutions without a bias and with PyTorch's padding. The CPU reference's gradients against
//! finite differences, the GPU's forward + backward and a whole GPU epoch (running statistics
//! included) against the reference, on shapes that fit no tile (3 channels, 7×12 images, batches
//! of 5); same seed, same bits; the ResNet presets' sizes and PyTorch's names in their files;
//! the errors of specs that cannot be built.

mod common;

use common::{
    assert_close, assert_first_batch_gradients_match, assert_gradients_match_finite_differences,
    assert_trains_like_the_reference, gpu, kernels, random_vec,
};
use shadertrain::data::{DataIdentity, Dataset, DatasetKind};
use shadertrain::model::reference::{StepKey, forward, forward_backward};
use shadertrain::model::{Activation, Loss, ModelSpec, Shape, parse_layers};
use shadertrain::model_file::{load_model, load_parameters_for, save_model};
use shadertrain::reference;
use shadertrain::rng::Rng;
use shadertrain::train::{OptimizerKind, TrainConfig, Trainer};

/// Models that reach every new kernel: BatchNorm over 4 channels (the stem), over 3 and 6
/// channels and over features, with its activation as a layer of its own and folded in (`bn:`,
/// whose derivative the convolution after it applies in one case); identity and projection
/// shortcuts; a branch that ends in an activation applied in place (its sum's input is copied);
/// a nested block, whose input has three consumers; average and global average pooling; `{a}`
/// is the hidden activation.
const MODELS: [&str; 3] = [
    "conv4k3p1:nobias,bn:{a},res(conv4k3p1:nobias,bn,{a},conv4k3p1:nobias,bn),{a},gap,dense3",
    "conv3k3same,bn,res(conv6k3s2p1,bn:{a},conv6k3p1:{a}|conv6k1s2:nobias,bn),{a},avgpool2s1,flatten,dense3",
    "flatten,dense12,bn:{a},res(res(dense12:{a},dense12)),dense3",
];

fn spec(input: Shape, layers: &str, activation: &str) -> ModelSpec {
    let spec = ModelSpec {
        input,
        layers: parse_layers(&layers.replace("{a}", activation), Activation::Relu).unwrap(),
        loss: Loss::Xent,
        standardisation: None,
    };
    spec.validate().unwrap();
    spec
}

fn random_images(rng: &mut Rng, samples: usize, shape: Shape, classes: usize) -> Dataset {
    let pixels = (0..samples * shape.len())
        .map(|_| rng.below(256) as u8)
        .collect();
    let labels = (0..samples).map(|_| rng.below(classes) as u8).collect();
    Dataset::with_shape(shape, classes, pixels, labels).unwrap()
}

#[test]
fn reference_gradients_match_finite_differences() {
    let mut rng = Rng::new(41);
    let input = Shape::image(3, 7, 9);
    for layers in MODELS {
        // Smooth activations only: a finite difference across relu's kink means nothing.
        let spec = spec(input, layers, "tanh");
        let layout = spec.layout();
        let mut params = spec.glorot_uniform(&mut rng);
        for p in params[..layout.trained].iter_mut() {
            *p += rng.uniform(-0.1, 0.1);
        }
        for m in &layout.matrices {
            params[m.bias_offset + m.outputs..m.end()].fill(0.0);
            if !m.bias {
                params[m.bias_offset..m.bias_offset + m.outputs].fill(0.0);
            }
        }
        let rows = 5;
        let x = random_vec(&mut rng, rows * input.len(), 0.0, 1.0);
        let labels: Vec<u32> = (0..rows).map(|_| rng.below(3) as u32).collect();
        let key = StepKey { seed: 4, step: 9 };
        let mut trained: Vec<usize> = (layout.matrices.iter())
            .flat_map(|m| m.weight_offset..m.bias_offset + if m.bias { m.outputs } else { 0 })
            .collect();
        for norm in layout.norms.iter().flatten() {
            trained.extend(norm.gamma..norm.beta + norm.channels);
        }
        let batch = (&x[..], &labels[..]);
        assert_gradients_match_finite_differences(
            layers,
            &spec,
            &params,
            batch,
            key,
            &trained,
            1e-3,
            (3e-4, 3e-2),
        );
    }
}

/// A tensor read by two nodes gets the sum of their gradients (llm.c's residual): in
/// `dense8,res(tanh),dense3`, h (dense8's output) feeds the branch's tanh and, as the identity
/// shortcut, the sum y = tanh(h) + h, so dL/dh = dL/dy ⊙ (1 - tanh²(h)) + dL/dy, which the
/// dense layer's bias gradient sums over the batch.
#[test]
fn a_tensor_read_twice_gets_the_sum_of_both_gradients() {
    let spec = spec(Shape::flat(8), "dense8:linear,res(tanh),dense3", "tanh");
    let mut rng = Rng::new(5);
    let params = spec.glorot_uniform(&mut rng);
    let rows = 2;
    let x = random_vec(&mut rng, rows * 8, -1.0, 1.0);
    let step = forward_backward(&spec, &params, &x, &[0, 2], StepKey::default());
    let plan = spec.plan().unwrap();
    // Tensors: 0 the input, 1 dense8's output (read by tanh and by the sum), 2 tanh's, 3 the
    // sum, 4 the logits.
    assert_eq!(plan.tensors[1].consumers, [1, 2]);
    let (h, sum) = (&step.activations[1], &step.activations[3]);
    for i in 0..h.len() {
        assert!((sum[i] - (h[i].tanh() + h[i])).abs() < 1e-6);
    }
    let layout = spec.layout();
    let (first, last) = (layout.matrices[0], layout.matrices[1]);
    let mut bias_grad = [0.0f64; 8];
    for r in 0..rows {
        for (i, sum) in bias_grad.iter_mut().enumerate() {
            // dL/dy = dL/dlogits · Wᵀ of dense3.
            let dy: f64 = (0..3)
                .map(|o| {
                    let w = params[last.weight_offset + i * 3 + o] as f64;
                    step.loss.logits_grad[r * 3 + o] as f64 * w
                })
                .sum();
            let t = (h[r * 8 + i] as f64).tanh();
            *sum += dy * (1.0 - t * t) + dy;
        }
    }
    let expected: Vec<f32> = bias_grad.iter().map(|&g| g as f32).collect();
    let actual = &step.grads[first.bias_offset..first.bias_offset + 8];
    assert_close("dense8's bias gradient", actual, &expected, 1e-6, 1e-4);
    // Without the shortcut's part the gradient would be visibly different.
    assert!(expected.iter().any(|g| g.abs() > 1e-3));
}

#[test]
fn gpu_forward_backward_matches_reference() {
    let mut rng = Rng::new(42);
    let input = Shape::image(3, 7, 12);
    let data = random_images(&mut rng, 13, input, 3);
    for layers in MODELS {
        for activation in ["relu", "tanh"] {
            let spec = spec(input, layers, activation);
            let what = format!("{layers} ({activation})");
            assert_first_batch_gradients_match(&what, &spec, (&data, 5), (1e-5, 1e-3));
        }
    }
}

#[test]
fn gpu_epoch_matches_reference_running_statistics_included() {
    let mut rng = Rng::new(43);
    let input = Shape::image(3, 7, 12);
    let data = random_images(&mut rng, 23, input, 3);
    // A bias before a BatchNorm has no gradient but rounding noise, which Adam scales to whole
    // steps: Adam only where the layers before BatchNorms have no bias.
    for (layers, optimizer) in [
        (MODELS[0], OptimizerKind::Adam),
        (MODELS[1], OptimizerKind::Sgd),
        (MODELS[2], OptimizerKind::Sgd),
    ] {
        let spec = spec(input, layers, "relu");
        let config = TrainConfig {
            batch_size: 5,
            seed: 9,
            optimizer,
            learning_rate: 0.01,
            ..TrainConfig::default()
        };
        assert_trains_like_the_reference(layers, kernels(), &spec, &config, &data);
    }
}

#[test]
fn the_same_seed_gives_the_same_bits() {
    let mut rng = Rng::new(44);
    let input = Shape::image(3, 7, 12);
    let data = random_images(&mut rng, 23, input, 3);
    let spec = spec(input, MODELS[1], "relu");
    let run = || {
        let config = TrainConfig {
            batch_size: 5,
            seed: 3,
            ..TrainConfig::default()
        };
        let mut trainer =
            Trainer::new(gpu(), kernels(), spec.clone(), config, &data, &data).unwrap();
        let metrics = [trainer.run_epoch().unwrap(), trainer.run_epoch().unwrap()];
        let bits: Vec<u32> = (trainer.parameters().unwrap().iter())
            .map(|p| p.to_bits())
            .collect();
        (bits, metrics.map(|m| m.test_loss.to_bits()))
    };
    let first = run();
    let layout = spec.layout();
    // The running statistics moved away from their start (0 and 1).
    let state = &first.0[layout.trained..];
    assert!(state.iter().any(|&b| b != 0 && b != 1f32.to_bits()));
    assert_eq!(first, run());
}

#[test]
fn resnet_presets_have_pytorchs_parameter_counts() {
    let mnist = Shape::image(1, 28, 28);
    let count = |blocks| {
        let spec = ModelSpec::resnet(mnist, blocks, 10);
        spec.validate().unwrap();
        spec.layout().parameter_count()
    };
    assert_eq!(count(1), 77_754);
    assert_eq!(count(3), 272_186);
    let shapes = ModelSpec::resnet(mnist, 1, 10).shapes().unwrap();
    // Stride 2 with PyTorch's padding 1 halves 28 to 14 and 14 to 7.
    assert!(shapes.contains(&Shape::image(32, 14, 14)));
    assert!(shapes.contains(&Shape::image(64, 7, 7)));
    assert!(shapes.contains(&Shape::flat(64)));
}

#[test]
fn a_saved_resnet_has_pytorchs_names_and_loads_back() {
    let spec = ModelSpec::resnet(Shape::image(1, 28, 28), 1, 10);
    let mut params = spec.glorot_uniform(&mut Rng::new(2));
    let layout = spec.layout();
    // Running statistics that are not the initial ones, to see them come back.
    for (i, p) in params[layout.trained..].iter_mut().enumerate() {
        *p = 0.5 + i as f32 / 1000.0;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resnet8.safetensors");
    let data = DataIdentity::published(DatasetKind::Mnist);
    save_model(&path, &spec, &params, &data, 42).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let shape = |name: &str| file.tensor(name).map(|t| t.shape().to_vec()).ok();
    assert_eq!(shape("layers.0.weight"), Some(vec![16, 1, 3, 3]));
    assert_eq!(shape("layers.0.bias"), None, "the stem has no bias");
    assert_eq!(shape("layers.1.running_var"), Some(vec![16]));
    assert_eq!(shape("layers.1.num_batches_tracked"), Some(vec![]));
    assert_eq!(shape("layers.2.branch.0.weight"), Some(vec![16, 16, 3, 3]));
    assert_eq!(shape("layers.2.branch.3.bias"), Some(vec![16]));
    assert_eq!(
        shape("layers.3.shortcut.0.weight"),
        Some(vec![32, 16, 1, 1])
    );
    assert_eq!(shape("layers.4.shortcut.1.running_mean"), Some(vec![64]));
    assert_eq!(shape("layers.5.weight"), Some(vec![10, 64]));
    // 5 tensors per BatchNorm (9 of them), a weight per conv (9), the dense weight and bias.
    assert_eq!(file.len(), 9 * 5 + 9 + 2);
    let saved = load_model(&path).unwrap();
    assert_eq!(saved.spec, spec);
    assert_eq!(saved.params, params);
    assert_eq!(saved.batches_tracked, 42);
    // A state dict converted whole with .float() holds its counters as floats: --init still
    // reads them; a counter of another shape is refused, naming it.
    let rewritten = |counter: &dyn Fn() -> (safetensors::Dtype, Vec<usize>, Vec<u8>)| {
        let tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = (file.tensors())
            .into_iter()
            .map(|(name, view)| match name.ends_with("num_batches_tracked") {
                true => {
                    let (dtype, shape, data) = counter();
                    (name, dtype, shape, data)
                }
                false => (
                    name,
                    view.dtype(),
                    view.shape().to_vec(),
                    view.data().to_vec(),
                ),
            })
            .collect();
        let views = tensors.iter().map(|(name, dtype, shape, data)| {
            let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), data);
            (name.clone(), view.unwrap())
        });
        let path = dir.path().join("rewritten.safetensors");
        std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
        load_parameters_for(&path, &spec)
    };
    let float = || {
        (
            safetensors::Dtype::F32,
            vec![],
            42f32.to_le_bytes().to_vec(),
        )
    };
    let weights = rewritten(&float).unwrap();
    assert_eq!((weights.params, weights.batches_tracked), (params, 42));
    let pair = || (safetensors::Dtype::I64, vec![2], [0u8; 16].to_vec());
    let message = rewritten(&pair).unwrap_err().to_string();
    assert!(message.contains("num_batches_tracked"), "{message}");
}

#[test]
fn specs_that_cannot_be_built_are_refused_with_the_block_and_shapes() {
    let image = Shape::image(1, 28, 28);
    let refused = |layers: &str| {
        let layers = parse_layers(layers, Activation::Relu).unwrap();
        let spec = ModelSpec {
            input: image,
            layers,
            loss: Loss::Xent,
            standardisation: None,
        };
        spec.validate().unwrap_err().to_string()
    };
    let error = refused("conv8k3p1,res(conv16k3s2p1,bn),gap,dense10");
    assert!(error.contains("layer 2 (res(conv16k3s2p1"), "{error}");
    assert!(
        error.contains("16×14×14") && error.contains("8×28×28"),
        "{error}"
    );
    let error = refused("conv8k3p1,res(conv8k3p1|conv8k1s2),gap,dense10");
    assert!(error.contains("its shortcut makes 8×14×14"), "{error}");
    let error = refused("flatten,bn,res(dense10,dense5),dense10");
    assert!(
        error.contains("layer 3") && error.contains("784"),
        "{error}"
    );
    // Blocks nested past what the parser's recursion allows.
    let deep = format!("{}flatten{},dense10", "res(".repeat(40), ")".repeat(40));
    for (layers, expected) in [
        (deep.as_str(), "nest at most 32"),
        (
            "conv8k3,res(conv8k3same,bnn),gap,dense10",
            "branch layer 2 (\"bnn\"): not a layer",
        ),
        ("conv8k3,res(),dense10", "branch has no layers"),
        ("conv8k3,res(conv8k3same,dense10", "without its ')'"),
        ("gap:relu,dense10", "only dense and conv"),
        ("bn:nobias,flatten,dense10", "only conv layers take :nobias"),
        ("dense10:nobias", "only conv layers take :nobias"),
        ("conv8k3x1,gap,dense10", "p<zeros>"),
        ("conv8k3,res(bn|bn|bn),gap,dense10", "one '|'"),
    ] {
        let error = parse_layers(layers, Activation::Relu).unwrap_err();
        assert!(error.contains(expected), "{layers}: {error}");
    }
}

/// Evaluation normalises by the running statistics (BatchNorm in eval mode, as PyTorch's
/// `model.eval()`): the GPU's test figures after an epoch equal the CPU reference's evaluation of
/// the trained weights and statistics.
#[test]
fn gpu_evaluation_uses_the_running_statistics_as_the_reference_does() {
    let mut rng = Rng::new(45);
    let input = Shape::image(3, 7, 12);
    let train = random_images(&mut rng, 23, input, 3);
    let test = random_images(&mut rng, 37, input, 3);
    for layers in MODELS {
        let spec = spec(input, layers, "relu");
        let config = TrainConfig {
            batch_size: 5,
            seed: 2,
            ..TrainConfig::default()
        };
        let mut trainer =
            Trainer::new(gpu(), kernels(), spec.clone(), config, &train, &test).unwrap();
        let metrics = trainer.run_epoch().unwrap();
        let params = trainer.parameters().unwrap();
        let order: Vec<u32> = (0..test.samples() as u32).collect();
        let (x, y) = reference::gather_batch(&test, &order, 0, test.samples());
        let logits = forward(&spec, &params, &x).pop().unwrap();
        let expected = reference::softmax_loss(Loss::Xent, 0.0, &logits, &y, 3);
        let loss = expected.sample_loss.iter().map(|&l| l as f64).sum::<f64>() / 37.0;
        let correct = expected.sample_correct.iter().sum::<u32>() as f64 / 37.0;
        assert_close(
            &format!("{layers} test loss"),
            &[metrics.test_loss as f32],
            &[loss as f32],
            1e-6,
            1e-5,
        );
        assert_eq!(metrics.test_accuracy, correct, "{layers} test accuracy");
    }
}

/// A dense layer reading the batch through a Flatten of its own, beside another one (only one
/// may take its weight gradient on the transposed batch), and a block's sum whose inputs come
/// through Flattens from layers that apply their activation's derivative in place (the sum's
/// output gradient, which both inputs share, must not be changed by either).
#[test]
fn gpu_gradients_match_where_the_batch_or_a_flatten_is_shared() {
    let mut rng = Rng::new(46);
    let input = Shape::image(3, 7, 12);
    let data = random_images(&mut rng, 13, input, 3);
    for layers in [
        "res(flatten,dense8|flatten,dense8),dense3",
        "conv4k3p1:{a},res(conv4k3p1:{a},flatten|flatten),dense3",
    ] {
        for activation in ["relu", "tanh"] {
            let spec = spec(input, layers, activation);
            let what = format!("{layers} ({activation})");
            // Batches of 8: the transposed batch's product takes rows in fours.
            assert_first_batch_gradients_match(&what, &spec, (&data, 8), (1e-5, 1e-3));
        }
    }
}

/// A dense layer and a BatchNorm after a Flatten (through an activation and the BatchNorm) hold
/// their tensors in the order of PyTorch's `nn.Flatten`: (channel, row, column).
#[test]
fn tensors_after_a_flatten_are_in_pytorchs_order() {
    let spec = spec(
        Shape::image(1, 8, 8),
        "conv4k3,flatten,relu,bn,dense3",
        "relu",
    );
    let layout = spec.layout();
    let mut params: Vec<f32> = (0..layout.total).map(|i| i as f32).collect();
    // The padding rows of a convolution's matrix are not parameters: files do not hold them.
    for m in &layout.matrices {
        params[m.bias_offset + m.outputs..m.end()].fill(0.0);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    save_model(
        &path,
        &spec,
        &params,
        &DataIdentity::published(DatasetKind::Mnist),
        0,
    )
    .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let value = |name: &str, index: usize| {
        let data = file.tensor(name).unwrap().data().to_vec();
        f32::from_le_bytes(data[4 * index..4 * index + 4].try_into().unwrap())
    };
    // conv4k3 makes 4×6×6; PyTorch's feature 81 is (channel 2, row 1, column 3), ours
    // (row 1, column 3, channel 2): (1·6 + 3)·4 + 2 = 38.
    let (pytorch, ours) = (2 * 36 + 6 + 3, (6 + 3) * 4 + 2);
    let dense = layout.matrices[1];
    let out = 1;
    assert_eq!(
        value("layers.2.weight", out * 144 + pytorch),
        params[dense.weight_offset + ours * 3 + out]
    );
    let norm = layout.norms.iter().flatten().next().unwrap();
    assert_eq!(
        value("layers.1.running_mean", pytorch),
        params[norm.running_mean + ours]
    );
    assert_eq!(value("layers.1.weight", pytorch), params[norm.gamma + ours]);
    assert_eq!(load_model(&path).unwrap().params, params);
}

/// Global max pooling (`gmp`), a kind added as its own file and shader: the reference's
/// gradients against finite differences, the GPU's first batch and a whole GPU epoch against the
/// reference, the same bits twice, and a saved model read back (a kind without tensors).
#[test]
fn global_max_pooling_trains_like_the_reference() {
    let mut rng = Rng::new(46);
    let input = Shape::image(3, 7, 12);
    let layers = "conv4k3p1,bn:{a},gmp,dense3";
    let smooth = spec(input, layers, "tanh");
    let layout = smooth.layout();
    let params = smooth.glorot_uniform(&mut rng);
    let rows = 5;
    let x = random_vec(&mut rng, rows * input.len(), 0.0, 1.0);
    let labels: Vec<u32> = (0..rows).map(|_| rng.below(3) as u32).collect();
    let mut trained: Vec<usize> = (layout.matrices.iter())
        .flat_map(|m| m.weight_offset..m.bias_offset + m.outputs)
        .collect();
    for norm in layout.norms.iter().flatten() {
        trained.extend(norm.gamma..norm.beta + norm.channels);
    }
    assert_gradients_match_finite_differences(
        layers,
        &smooth,
        &params,
        (&x[..], &labels[..]),
        StepKey::default(),
        &trained,
        1e-3,
        (3e-4, 3e-2),
    );
    let data = random_images(&mut rng, 23, input, 3);
    for activation in ["relu", "tanh"] {
        let spec = spec(input, layers, activation);
        let what = format!("{layers} ({activation})");
        assert_first_batch_gradients_match(&what, &spec, (&data, 5), (1e-5, 1e-3));
    }
    let spec = spec(input, layers, "relu");
    let config = TrainConfig {
        batch_size: 5,
        seed: 9,
        optimizer: OptimizerKind::Sgd,
        learning_rate: 0.01,
        ..TrainConfig::default()
    };
    assert_trains_like_the_reference(layers, kernels(), &spec, &config, &data);
    let train = || {
        let mut trainer =
            Trainer::new(gpu(), kernels(), spec.clone(), config.clone(), &data, &data).unwrap();
        trainer.run_epoch().unwrap();
        trainer.parameters().unwrap()
    };
    let trained_params = train();
    let bits = |params: &[f32]| params.iter().map(|p| p.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&trained_params),
        bits(&train()),
        "same seed, same bits"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gmp.safetensors");
    let identity = DataIdentity::published(DatasetKind::Mnist);
    save_model(&path, &spec, &trained_params, &identity, 0).unwrap();
    let saved = load_model(&path).unwrap();
    assert_eq!(saved.spec, spec);
    assert_eq!(bits(&saved.params), bits(&trained_params));
}
