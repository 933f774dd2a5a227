//! Explanations: the class score's gradients on the GPU against the CPU reference and finite
//! differences, integrated gradients' completeness, Grad-CAM against its definition.

mod common;

use common::{assert_close, gpu, kernels, random_vec};
use shadertrain::explain::{
    DEFAULT_STEPS, Explainer, Method, deletion_ratio, grad_cam_feature, grad_cam_map,
    integrated_map, mass_on_ink, reference_map, resize_bilinear, saliency_map,
};
use shadertrain::layers::dense;
use shadertrain::model::reference::{class_score_gradients, forward};
use shadertrain::model::{Activation, Loss, ModelSpec, Shape, parse_layers};
use shadertrain::rng::Rng;
use shadertrain::train::ScoreGradients;

/// Models with every kind an explanation walks back through: dropout (the identity in
/// evaluation), pools, BatchNorm (its running statistics) and residual sums.
const MODELS: [(&str, &str); 3] = [
    ("mlp", "flatten,dense24:relu,dropout0.5,dense16:tanh,dense5"),
    (
        "convnet",
        "conv4k3:relu,maxpool2,conv6k3:relu,flatten,dropout0.5,dense5",
    ),
    (
        "resnet",
        "conv4k3p1:nobias,bn:relu,res(conv4k3p1:nobias,bn:relu,conv4k3p1:nobias,bn),relu,\
         res(conv8k3s2p1,bn:relu,conv8k3p1|conv8k1s2:nobias,bn),relu,gap,dense5",
    ),
];

fn spec(layers: &str, input: Shape) -> ModelSpec {
    let spec = ModelSpec {
        input,
        layers: parse_layers(layers, Activation::Relu).unwrap(),
        loss: Loss::Xent,
        standardisation: None,
    };
    spec.validate().unwrap();
    spec
}

/// Glorot weights, and BatchNorm γ, β and running statistics away from their initial 1, 0, 0, 1
/// (which would hide a pass that ignored them).
fn parameters(spec: &ModelSpec, rng: &mut Rng) -> Vec<f32> {
    let mut params = spec.glorot_uniform(rng);
    let layout = spec.plan().unwrap().layout;
    for norm in layout.norms.iter().flatten() {
        for j in 0..norm.channels {
            params[norm.gamma + j] = rng.uniform(0.5, 1.5);
            params[norm.beta + j] = rng.uniform(-0.2, 0.2);
            params[norm.running_mean + j] = rng.uniform(-0.2, 0.2);
            params[norm.running_var + j] = rng.uniform(0.5, 1.5);
        }
    }
    params
}

fn score(spec: &ModelSpec, params: &[f32], x: &[f32], class: usize) -> f32 {
    forward(spec, params, x).pop().unwrap()[class]
}

/// An explanation's backward pass through a 10-class layer that computes on its matrix padded
/// to 12 outputs (`dense::padded_matrix`, where the kernels read mirrors): dY is padded, the
/// input gradient is the padded product's, and no weight gradient is taken.
#[test]
fn input_gradients_through_a_padded_layer_equal_the_reference() {
    let input = Shape::image(1, 10, 10);
    let spec = spec("flatten,dense128:tanh,dense10", input);
    let mut rng = Rng::new(37);
    let params = parameters(&spec, &mut rng);
    let last = spec.layout().matrices[1];
    if kernels().matmul.reads_mirrors() {
        assert!(dense::padded_matrix(kernels(), &last, 5).is_some());
    }
    let x = random_vec(&mut rng, 3 * input.len(), 0.0, 1.0);
    // Class 0 for the second sample: a copy that read past a row of dY would carry its 1 in.
    let classes = [7, 0, 9];
    let probe = ScoreGradients::new(gpu(), kernels(), &spec, &params, 5, None).unwrap();
    let result = probe.gradients(&x, Some(&classes)).unwrap();
    let (activations, grads) = class_score_gradients(&spec, &params, &x, &classes);
    let logits = activations.last().unwrap();
    assert_close("logits", &result.logits, logits, 1e-5, 1e-4);
    assert_close("dS/dx", &result.input_grad, &grads[0], 1e-5, 1e-3);
    assert!(
        grads[0].iter().any(|g| g.abs() > 1e-3),
        "the check would be empty"
    );
}

#[test]
fn input_gradients_equal_the_reference_and_finite_differences() {
    let input = Shape::image(1, 10, 10);
    let mut rng = Rng::new(31);
    for (name, layers) in MODELS {
        let spec = spec(layers, input);
        let params = parameters(&spec, &mut rng);
        // Three samples in programs built for five: the padding rows must not leak in.
        let x = random_vec(&mut rng, 3 * input.len(), 0.0, 1.0);
        let classes = [1, 4, 0];
        let probe = ScoreGradients::new(gpu(), kernels(), &spec, &params, 5, None).unwrap();
        let result = probe.gradients(&x, Some(&classes)).unwrap();
        let (activations, grads) = class_score_gradients(&spec, &params, &x, &classes);
        let logits = activations.last().unwrap();
        assert_close(
            &format!("{name} logits"),
            &result.logits,
            logits,
            1e-5,
            1e-4,
        );
        assert_close(
            &format!("{name} dS/dx"),
            &result.input_grad,
            &grads[0],
            1e-5,
            1e-3,
        );
        assert!(
            grads[0].iter().filter(|g| g.abs() > 1e-4).count() > grads[0].len() / 4,
            "{name}: the input gradient mostly vanishes: the check would be empty"
        );

        // Central differences of the score at the coordinates of the first sample where the
        // gradient is largest, and at some chosen at random.
        let first = &grads[0][..input.len()];
        let mut coordinates: Vec<usize> = (0..input.len()).collect();
        coordinates.sort_by(|&a, &b| first[b].abs().total_cmp(&first[a].abs()));
        coordinates.truncate(6);
        coordinates.extend((0..6).map(|_| rng.below(input.len())));
        let sample = &x[..input.len()];
        let eps = 1e-3;
        let numeric: Vec<f32> = (coordinates.iter())
            .map(|&i| {
                let mut up = sample.to_vec();
                up[i] += eps;
                let mut down = sample.to_vec();
                down[i] -= eps;
                let difference = score(&spec, &params, &up, classes[0])
                    - score(&spec, &params, &down, classes[0]);
                difference / (2.0 * eps)
            })
            .collect();
        let analytic: Vec<f32> = coordinates.iter().map(|&i| result.input_grad[i]).collect();
        assert_close(
            &format!("{name} finite differences"),
            &analytic,
            &numeric,
            2e-3,
            2e-2,
        );
    }
}

#[test]
fn without_classes_the_predicted_class_is_explained() {
    let input = Shape::image(1, 10, 10);
    let mut rng = Rng::new(32);
    let spec = spec(MODELS[1].1, input);
    let params = parameters(&spec, &mut rng);
    let x = random_vec(&mut rng, 4 * input.len(), 0.0, 1.0);
    let probe = ScoreGradients::new(gpu(), kernels(), &spec, &params, 4, None).unwrap();
    let result = probe.gradients(&x, None).unwrap();
    let logits = forward(&spec, &params, &x).pop().unwrap();
    let predicted: Vec<usize> = (logits.chunks(5))
        .map(|row| (0..5).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap())
        .collect();
    assert_eq!(result.classes, predicted);
    let (_, grads) = class_score_gradients(&spec, &params, &x, &predicted);
    assert_close("dS/dx", &result.input_grad, &grads[0], 1e-5, 1e-3);
    let error = probe.gradients(&x, Some(&[0, 1, 2, 5])).unwrap_err();
    assert!(error.to_string().contains("class 5"), "{error}");
    let explainer =
        Explainer::new(gpu(), kernels(), &spec, &params, Method::Saliency, (4, 1)).unwrap();
    let error = explainer.explain(&x, Some(&[0, 1])).unwrap_err();
    assert!(error.to_string().contains("2 classes given"), "{error}");
    let explainer =
        Explainer::new(gpu(), kernels(), &spec, &params, Method::Integrated, (4, 2)).unwrap();
    let error = explainer.explain(&x, Some(&[0, 1, 9, 5])).unwrap_err();
    assert!(error.to_string().contains("class 9"), "{error}");
}

#[test]
fn grad_cam_weighs_the_last_feature_map_as_the_reference_does() {
    let input = Shape::image(1, 10, 10);
    let mut rng = Rng::new(33);
    for (name, layers) in &MODELS[1..] {
        let spec = spec(layers, input);
        let plan = spec.plan().unwrap();
        let feature = grad_cam_feature(&plan).unwrap();
        let shape = plan.tensors[feature].shape;
        assert!(shape.height > 1, "{name}: a spatial map");
        let params = parameters(&spec, &mut rng);
        let x = random_vec(&mut rng, 2 * input.len(), 0.0, 1.0);
        let classes = [3, 2];
        let probe =
            ScoreGradients::new(gpu(), kernels(), &spec, &params, 2, Some(feature)).unwrap();
        let result = probe.gradients(&x, Some(&classes)).unwrap();
        let (activations, grads) = class_score_gradients(&spec, &params, &x, &classes);
        let got = result.feature.unwrap();
        assert_close(
            &format!("{name} A"),
            &got.values,
            &activations[feature],
            1e-5,
            1e-4,
        );
        assert_close(
            &format!("{name} dS/dA"),
            &got.grad,
            &grads[feature],
            1e-5,
            1e-3,
        );
        let explainer =
            Explainer::new(gpu(), kernels(), &spec, &params, Method::GradCam, (2, 1)).unwrap();
        let explanations = explainer.explain(&x, Some(&classes)).unwrap();
        for (i, explanation) in explanations.iter().enumerate() {
            let at = i * shape.len()..(i + 1) * shape.len();
            let expected = grad_cam_map(
                &activations[feature][at.clone()],
                &grads[feature][at],
                shape,
                input,
            );
            assert_close(
                &format!("{name} map {i}"),
                &explanation.map,
                &expected,
                1e-5,
                1e-3,
            );
            assert!(explanation.map.iter().all(|&v| v >= 0.0));
        }
    }
    // The MLP has no feature map: Grad-CAM is refused, integrated gradients are its default.
    let mlp = spec(MODELS[0].1, input);
    assert_eq!(grad_cam_feature(&mlp.plan().unwrap()), None);
    assert_eq!(
        Method::default_for(&mlp.plan().unwrap()),
        Method::Integrated
    );
    let params = mlp.glorot_uniform(&mut rng);
    let refused = Explainer::new(gpu(), kernels(), &mlp, &params, Method::GradCam, (1, 1));
    assert!(refused.err().unwrap().to_string().contains("gradcam"));
}

/// The web page's heat map (one drawing, the CPU reference, the model's default method) is the
/// explain command's on the GPU: integrated gradients for the MLP and the convnet, Grad-CAM for
/// the ResNet.
#[test]
fn the_reference_map_is_the_default_explanation() {
    let input = Shape::image(1, 10, 10);
    let mut rng = Rng::new(35);
    for (name, layers) in MODELS {
        let spec = spec(layers, input);
        let params = parameters(&spec, &mut rng);
        let x = random_vec(&mut rng, input.len(), 0.0, 1.0);
        let method = Method::default_for(&spec.plan().unwrap());
        let (used, map) = reference_map(&spec, &params, &x, 3).unwrap();
        assert_eq!(used, method, "{name}");
        let explainer = Explainer::new(
            gpu(),
            kernels(),
            &spec,
            &params,
            method,
            (16, DEFAULT_STEPS),
        )
        .unwrap();
        let on_gpu = explainer.explain(&x, Some(&[3])).unwrap().remove(0).map;
        assert!(on_gpu.iter().any(|&m| m > 0.0), "{name}: an empty map");
        assert_close(&format!("{name} map"), &map, &on_gpu, 1e-5, 1e-4);
    }
    let names: Vec<Method> = (MODELS.iter())
        .map(|(_, layers)| Method::default_for(&spec(layers, input).plan().unwrap()))
        .collect();
    assert_eq!(
        names,
        [Method::Integrated, Method::Integrated, Method::GradCam]
    );
}

#[test]
fn integrated_gradients_sum_to_the_score_difference() {
    let input = Shape::image(1, 10, 10);
    let mut rng = Rng::new(34);
    for (name, layers) in MODELS {
        let spec = spec(layers, input);
        let params = parameters(&spec, &mut rng);
        let x = random_vec(&mut rng, input.len(), 0.0, 1.0);
        // Path points in batches of 16, so that several submissions add up.
        let explainer = Explainer::new(
            gpu(),
            kernels(),
            &spec,
            &params,
            Method::Integrated,
            (16, 256),
        )
        .unwrap();
        let ig = explainer.integrated_gradients(&x, 2).unwrap();
        let black = vec![0.0; input.len()];
        assert_close(
            &format!("{name} scores"),
            &[ig.score, ig.baseline_score],
            &[
                score(&spec, &params, &x, 2),
                score(&spec, &params, &black, 2),
            ],
            1e-5,
            1e-4,
        );
        let sum: f32 = ig.attributions.iter().sum();
        let difference = ig.score - ig.baseline_score;
        assert!(
            difference.abs() > 0.05,
            "{name}: the scores barely differ ({difference}): completeness would say nothing"
        );
        assert!(
            (sum - difference).abs() <= 0.02 * difference.abs() + 1e-3,
            "{name}: integrated gradients sum to {sum}, the score differs by {difference}"
        );
        // The map is the attributions' magnitude.
        let map = explainer.explain(&x, Some(&[2])).unwrap().remove(0).map;
        assert_close(
            &format!("{name} map"),
            &map,
            &integrated_map(&ig.attributions, input),
            1e-6,
            1e-5,
        );
    }
}

#[test]
fn maps_reduce_channels_and_resize_as_documented() {
    let rgb = Shape::image(3, 1, 2);
    assert_eq!(
        saliency_map(&[0.1, -0.5, 0.2, 0.0, 0.3, -0.1], rgb),
        vec![0.5, 0.3]
    );
    assert_eq!(
        integrated_map(&[0.5, -0.25, 0.25, 1.0, 0.0, -1.0], rgb),
        vec![1.0, 2.0]
    );
    // PyTorch: F.interpolate(torch.tensor([[[[0., 1.], [2., 3.]]]]), size=(4, 4),
    // mode="bilinear", align_corners=False).
    let resized = resize_bilinear(&[0.0, 1.0, 2.0, 3.0], (2, 2), (4, 4));
    let expected = [
        0.0, 0.25, 0.75, 1.0, 0.5, 0.75, 1.25, 1.5, 1.5, 1.75, 2.25, 2.5, 2.0, 2.25, 2.75, 3.0,
    ];
    assert_close("resize", &resized, &expected, 1e-6, 0.0);
}

#[test]
fn default_maps_of_trained_models_lie_on_the_digits_and_pick_the_pixels_that_matter() {
    use shadertrain::data::{Dataset, Split};
    use shadertrain::train::{TrainConfig, Trainer};
    let dir = common::mnist_dir();
    let full = Dataset::load_mnist(&dir, Split::Train).unwrap();
    let test = Dataset::load_mnist(&dir, Split::Test).unwrap();
    let features = full.features();
    let subset = |data: &Dataset, n: usize| Dataset {
        pixels: data.pixels[..n * features].to_vec(),
        labels: data.labels[..n].to_vec(),
        ..data.clone()
    };
    let digits = 50;
    let test = subset(&test, digits);
    let x: Vec<f32> = test.pixels.iter().map(|&p| p as f32 / 255.0).collect();
    // One epoch each: the MLP on the whole training set, the convnet on a tenth in small
    // batches (as many steps, a fraction of the time).
    let models = [
        ("mlp", ModelSpec::reference(), 60_000, 128),
        (
            "convnet",
            ModelSpec::convnet(Shape::image(1, 28, 28), 10),
            6_144,
            32,
        ),
    ];
    for (name, spec, samples, batch_size) in models {
        let config = TrainConfig {
            epochs: 1,
            batch_size,
            ..TrainConfig::default()
        };
        let train = subset(&full, samples);
        let mut trainer =
            Trainer::new(gpu(), kernels(), spec.clone(), config, &train, &test).unwrap();
        let accuracy = trainer.run_epoch().unwrap().test_accuracy;
        assert!(accuracy > 0.9, "{name}: trained to {accuracy}");
        let params = trainer.parameters().unwrap();
        let method = Method::default_for(&spec.plan().unwrap());
        assert_eq!(method, Method::Integrated, "{name}");
        let explain = |method| {
            let explainer =
                Explainer::new(gpu(), kernels(), &spec, &params, method, (64, 32)).unwrap();
            (explainer.explain(&x, None).unwrap().into_iter())
                .map(|e| (e.class, e.map))
                .collect::<Vec<_>>()
        };
        let measure = |maps: &[(usize, Vec<f32>)]| {
            let mass = (maps.iter().enumerate())
                .map(|(i, (_, map))| {
                    mass_on_ink(map, &test.pixels[i * features..(i + 1) * features], 28)
                })
                .sum::<f64>()
                / maps.len() as f64;
            let deletion = deletion_ratio((&spec, &params), (&x, &test.pixels, 0.0), maps, 20, 9);
            (mass, deletion)
        };
        let (mass, deletion) = measure(&explain(method));
        assert!(
            mass > 2.0 && deletion > 1.5,
            "{name}: the default map's mass on the digit is {mass:.2}x the image's average, \
             its 20 top pixels lower the score {deletion:.2}x as much as 20 inked at random"
        );
        if name == "mlp" {
            // Plain saliency of an MLP spreads over the background (the measurement in
            // PyTorch: 1.09x): both checks tell it from a map on the digit.
            let (mass, deletion) = measure(&explain(Method::Saliency));
            assert!(
                mass < 1.5 && deletion < 1.0,
                "{name} saliency: mass {mass:.2}x, deletion {deletion:.2}x"
            );
        }
    }
}
