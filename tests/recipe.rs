//! Today's training recipe: SGD with (Nesterov) momentum, weight decay, AdamW, learning-rate
//! schedules with warm-up, and label smoothing. Each definition against figures PyTorch 2.15
//! computed (embedded: the tests do not need PyTorch), and the GPU's training against the CPU
//! reference.

mod common;

use common::{
    assert_close, assert_trains_epochs_like_the_reference, gpu, kernels, random_dataset,
    with_nesterov_recipe,
};
use shadertrain::data::Dataset;
use shadertrain::input::{Augmentation, Standardisation};
use shadertrain::model::{Activation, Loss, ModelSpec, Shape, parse_layers};
use shadertrain::reference::softmax_loss;
use shadertrain::rng::Rng;
use shadertrain::train::optimizer::{self, UpdateRule};
use shadertrain::train::schedule::learning_rate;
use shadertrain::train::{LrSchedule, OptimizerKind, RunLength, TrainConfig, Trainer};

/// A run of 2 epochs of 10 steps with a 0.4-epoch (4-step) warm-up at base rate 0.5, each
/// step's rate as PyTorch's schedulers give it (bench/pytorch_optim.py's definitions: LambdaLR
/// warm-up then CosineAnnealingLR(T_max = 16) for cosine, MultiStepLR([10, 15], 0.1) for step,
/// OneCycleLR(max_lr 0.5, total_steps 20, pct_start 4/20 or its default 0.3, linear,
/// cycle_momentum False)).
#[test]
fn schedules_give_pytorchs_rates() {
    let warm = RunLength::new(2, 10, Some(0.4));
    let cold = RunLength::new(2, 10, None);
    let cases: [(&str, LrSchedule, RunLength, [f64; 20]); 5] = [
        (
            "constant with warm-up",
            LrSchedule::Constant,
            warm,
            [
                0.125, 0.25, 0.375, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5,
                0.5, 0.5, 0.5, 0.5, 0.5,
            ],
        ),
        (
            "cosine with warm-up",
            LrSchedule::Cosine,
            warm,
            [
                0.125,
                0.25,
                0.375,
                0.5,
                0.5,
                0.4951963201008076,
                0.4809698831278217,
                0.45786740307563634,
                0.42677669529663687,
                0.38889255825490054,
                0.34567085809127246,
                0.2987725805040321,
                0.25,
                0.20122741949596795,
                0.15432914190872757,
                0.11110744174509951,
                0.07322330470336313,
                0.04213259692436366,
                0.019030116872178315,
                0.004803679899192392,
            ],
        ),
        (
            "step",
            LrSchedule::Step,
            cold,
            [
                0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.05, 0.05, 0.05, 0.05, 0.05,
                0.005, 0.005, 0.005, 0.005, 0.005,
            ],
        ),
        (
            "onecycle with warm-up",
            LrSchedule::OneCycle,
            warm,
            [
                0.02,
                0.18,
                0.34,
                0.5,
                0.468750125,
                0.43750025,
                0.406250375,
                0.3750005,
                0.343750625,
                0.31250075,
                0.281250875,
                0.250001,
                0.218751125,
                0.18750125,
                0.156251375,
                0.1250015,
                0.093751625,
                0.06250175,
                0.031251875,
                2.000000000002e-06,
            ],
        ),
        (
            "onecycle",
            LrSchedule::OneCycle,
            cold,
            [
                0.02,
                0.116,
                0.212,
                0.308,
                0.404,
                0.5,
                0.46428585714285714,
                0.4285717142857143,
                0.3928575714285714,
                0.35714342857142856,
                0.32142928571428575,
                0.28571514285714283,
                0.250001,
                0.21428685714285717,
                0.17857271428571425,
                0.14285857142857145,
                0.10714442857142858,
                0.07143028571428572,
                0.03571614285714286,
                2.000000000002e-06,
            ],
        ),
    ];
    for (what, schedule, run, expected) in cases {
        let actual: Vec<f32> = (0..20)
            .map(|i| learning_rate(schedule, 0.5, i, run))
            .collect();
        let expected: Vec<f32> = expected.iter().map(|&r| r as f32).collect();
        assert_close(what, &actual, &expected, 1e-9, 1e-6);
    }
}

/// Ten steps of each optimizer on the quadratic ½ Σ c_i p_i² (gradient c ⊙ p) from
/// p = (1, −2, 0.5, 0.25), c = (1, 0.5, 2, 4), base rate 0.1, against PyTorch's parameters
/// after the same ten steps (its optimizer and scheduler stepped per step; Adam's ε 1e-12, so
/// that its placement, Keras' here and PyTorch's there, does not matter).
#[test]
fn updates_equal_pytorchs() {
    let sgd = TrainConfig {
        optimizer: OptimizerKind::Sgd,
        learning_rate: 0.1,
        epochs: 1,
        ..TrainConfig::default()
    };
    let adam = TrainConfig {
        optimizer: OptimizerKind::Adam,
        epsilon: 1e-12,
        ..sgd.clone()
    };
    let cases: [(&str, TrainConfig, [f64; 4]); 5] = [
        (
            "sgd, weight decay 0.05",
            TrainConfig {
                weight_decay: 0.05,
                ..sgd.clone()
            },
            [
                0.3297845423221588,
                -1.1359208822250366,
                0.05042446404695511,
                0.0013903033686801791,
            ],
        ),
        (
            "sgd, momentum 0.9",
            TrainConfig {
                momentum: 0.9,
                ..sgd.clone()
            },
            [
                -0.5887892842292786,
                0.6218457221984863,
                0.002199911279603839,
                0.12916967272758484,
            ],
        ),
        (
            "sgd, nesterov 0.9, weight decay 0.05, cosine after a 2-step warm-up",
            TrainConfig {
                momentum: 0.9,
                nesterov: true,
                weight_decay: 0.05,
                lr_schedule: LrSchedule::Cosine,
                warmup_epochs: Some(0.2),
                ..sgd.clone()
            },
            [
                -0.2986871302127838,
                -0.10802653431892395,
                -0.1614704430103302,
                0.012051822617650032,
            ],
        ),
        (
            "adam, L2 0.05, step",
            TrainConfig {
                weight_decay: 0.05,
                lr_schedule: LrSchedule::Step,
                ..adam.clone()
            },
            [
                0.48668381571769714,
                -1.4805415868759155,
                0.011950397863984108,
                -0.12609456479549408,
            ],
        ),
        (
            "adamw 0.05, onecycle rising over 2 steps",
            TrainConfig {
                optimizer: OptimizerKind::Adamw,
                weight_decay: 0.05,
                lr_schedule: LrSchedule::OneCycle,
                warmup_epochs: Some(0.2),
                ..adam.clone()
            },
            [
                0.5373600125312805,
                -1.5092884302139282,
                0.0683770701289177,
                -0.09736151248216629,
            ],
        ),
    ];
    let curvature = [1.0f32, 0.5, 2.0, 4.0];
    for (what, config, expected) in cases {
        config.validate().unwrap();
        let run = RunLength::new(1, 10, config.warmup_epochs);
        let mut params = vec![1.0f32, -2.0, 0.5, 0.25];
        let names = UpdateRule::of(&config).state_names();
        let mut state = vec![vec![0.0; 4]; names.len()];
        for t in 1..=10 {
            let grads: Vec<f32> = params.iter().zip(curvature).map(|(p, c)| c * p).collect();
            let step = optimizer::training_step(&config, run, t, 0, 0);
            optimizer::reference_update(&config, &step, &mut params, &grads, &mut state).unwrap();
        }
        assert_close(what, &params, &expected.map(|p| p as f32), 1e-6, 1e-5);
    }
}

/// Cross-entropy with label smoothing 0.1 against PyTorch's
/// F.cross_entropy(z, y, label_smoothing=0.1): per-sample losses, and the gradient of their mean.
#[test]
fn label_smoothing_equals_pytorchs() {
    let logits = [2.0, -1.0, 0.5, 0.1, 0.2, -3.0];
    let out = softmax_loss(Loss::Xent, 0.1, &logits, &[0, 2], 3);
    let loss: [f64; 2] = [0.3913113474845886, 3.6555702686309814];
    let loss = loss.map(|l| l as f32);
    assert_close("smoothed loss", &out.sample_loss, &loss, 1e-6, 1e-6);
    let grad: [f64; 6] = [
        -0.07386815547943115,
        0.0028896182775497437,
        0.07097852975130081,
        0.21586766839027405,
        0.2403235286474228,
        -0.45619118213653564,
    ];
    let grad = grad.map(|g| g as f32);
    assert_close("smoothed gradient", &out.logits_grad, &grad, 1e-7, 1e-5);
}

/// Two epochs on the GPU, a partial last batch in each, equal the reference's for every
/// optimizer, schedule and label smoothing: parameters, training figures and the rate.
#[test]
fn every_optimizer_and_schedule_trains_like_the_reference() {
    let mut rng = Rng::new(27);
    let data = random_dataset(&mut rng, 50, 12, 4);
    let spec = ModelSpec::mlp(Shape::flat(12), &[10, 7], 4, Activation::Relu, Loss::Xent);
    let base = TrainConfig {
        batch_size: 16,
        learning_rate: 0.05,
        optimizer: OptimizerKind::Sgd,
        seed: 9,
        steps_per_submit: 3,
        epochs: 2,
        ..TrainConfig::default()
    };
    let cases = [
        (
            "sgd with weight decay",
            TrainConfig {
                weight_decay: 0.01,
                ..base.clone()
            },
        ),
        (
            "sgd with momentum and a step schedule",
            TrainConfig {
                momentum: 0.9,
                lr_schedule: LrSchedule::Step,
                ..base.clone()
            },
        ),
        (
            "sgd with nesterov, decay, warm-up, cosine and label smoothing",
            with_nesterov_recipe(base.clone()),
        ),
        (
            "adam with L2 decay and a warm-up",
            TrainConfig {
                optimizer: OptimizerKind::Adam,
                learning_rate: 0.01,
                weight_decay: 0.01,
                warmup_epochs: Some(1.0),
                ..base.clone()
            },
        ),
        (
            "adamw with onecycle",
            TrainConfig {
                optimizer: OptimizerKind::Adamw,
                learning_rate: 0.01,
                weight_decay: 0.05,
                lr_schedule: LrSchedule::OneCycle,
                ..base.clone()
            },
        ),
    ];
    for (what, config) in cases {
        config.validate().unwrap();
        assert_trains_epochs_like_the_reference(what, kernels(), &spec, &config, &data, 2);
    }
}

/// Flags that contradict each other are refused with the flag named, as PyTorch refuses them.
#[test]
fn contradicting_settings_are_refused() {
    let sgd = TrainConfig {
        optimizer: OptimizerKind::Sgd,
        ..TrainConfig::default()
    };
    let cases = [
        (
            TrainConfig {
                nesterov: true,
                ..sgd.clone()
            },
            "--nesterov",
        ),
        (
            TrainConfig {
                momentum: 0.9,
                ..TrainConfig::default()
            },
            "--momentum is SGD's",
        ),
        (
            TrainConfig {
                momentum: 1.5,
                ..sgd.clone()
            },
            "--momentum must be",
        ),
        (
            TrainConfig {
                weight_decay: -1.0,
                ..sgd.clone()
            },
            "--weight-decay",
        ),
        (
            TrainConfig {
                warmup_epochs: Some(11.0),
                ..sgd.clone()
            },
            "--warmup-epochs",
        ),
        (
            TrainConfig {
                label_smoothing: 1.5,
                ..sgd.clone()
            },
            "--label-smoothing",
        ),
    ];
    for (config, expected) in cases {
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains(expected), "{expected}: {error}");
    }
}

/// Standardised and augmented images (crops, flips, cutout) train two epochs on the GPU as the
/// reference does, through a convolution; evaluation sees them standardised only.
#[test]
fn standardised_augmented_images_train_like_the_reference() {
    let mut rng = Rng::new(31);
    let shape = Shape::image(3, 6, 6);
    let pixels = (0..45 * shape.len())
        .map(|_| rng.below(256) as u8)
        .collect();
    let labels = (0..45).map(|_| rng.below(3) as u8).collect();
    let data = Dataset::with_shape(shape, 3, pixels, labels).unwrap();
    let spec = ModelSpec {
        input: shape,
        layers: parse_layers("conv4k3p1,flatten,dense3", Activation::Relu).unwrap(),
        loss: Loss::Xent,
        standardisation: Some(Standardisation::of(&data).unwrap()),
    };
    spec.validate().unwrap();
    let config = TrainConfig {
        batch_size: 16,
        learning_rate: 0.01,
        seed: 4,
        epochs: 2,
        augmentation: Augmentation {
            crop: 2,
            flip: true,
            cutout: 2,
        },
        ..TrainConfig::default()
    };
    let what = "crop2,flip,cutout2 on standardised 3x6x6 images";
    assert_trains_epochs_like_the_reference(what, kernels(), &spec, &config, &data, 2);
    // Without the augmentation the run is another.
    let plain = TrainConfig {
        augmentation: Augmentation::default(),
        ..config.clone()
    };
    let mut with = Trainer::new(gpu(), kernels(), spec.clone(), config, &data, &data).unwrap();
    let mut without = Trainer::new(gpu(), kernels(), spec, plain, &data, &data).unwrap();
    with.run_epoch().unwrap();
    without.run_epoch().unwrap();
    assert_ne!(with.parameters().unwrap(), without.parameters().unwrap());
}
