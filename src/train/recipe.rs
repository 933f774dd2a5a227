//! The presets' recipes: each preset's network and its training defaults (Keras' for the MLP and
//! the convnet, He et al.'s CIFAR recipe for the ResNets), with whatever the user chose instead.
//! The command line and the web page build their runs from here, so the same choices train the
//! same bits in both.

use super::config::{OptimizerKind, TrainConfig};
use super::schedule::LrSchedule;
use crate::data::DatasetKind;
use crate::error::{Error, Result};
use crate::input::Augmentation;
use crate::model::{Activation, Loss, ModelSpec};
use crate::shapes::Shape;

/// The models `--model` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelPreset {
    /// Flatten, dense layers of --hidden widths with --activation, a linear dense layer.
    Mlp,
    /// Keras' mnist_convnet.
    Convnet,
    /// He et al.'s ResNet-8: 3×3 conv, BatchNorm, ReLU, three stages of one basic block (16, 32,
    /// 64 channels), global average pooling, dense.
    Resnet8,
    /// He et al.'s ResNet-20: the same with three blocks per stage.
    Resnet20,
}

impl ModelPreset {
    /// Basic blocks per stage of a ResNet preset.
    pub fn resnet_blocks(self) -> Option<usize> {
        match self {
            ModelPreset::Resnet8 => Some(1),
            ModelPreset::Resnet20 => Some(3),
            _ => None,
        }
    }

    /// The preset's network on samples of `input` for `classes` classes (the MLP with its
    /// default widths, 256 and 128, and ReLU), trained with `loss`.
    pub fn spec(self, input: Shape, classes: usize, loss: Loss) -> ModelSpec {
        let spec = match (self, self.resnet_blocks()) {
            (_, Some(blocks)) => ModelSpec::resnet(input, blocks, classes),
            (ModelPreset::Convnet, _) => ModelSpec::convnet(input, classes),
            _ => ModelSpec::mlp(input, &[256, 128], classes, Activation::Relu, loss),
        };
        ModelSpec { loss, ..spec }
    }
}

/// What the user chose of the training recipe; `None` takes the preset's default.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingChoices {
    pub epochs: Option<usize>,
    pub batch_size: usize,
    pub lr: Option<f32>,
    pub seed: u64,
    pub optimizer: Option<OptimizerKind>,
    pub momentum: Option<f32>,
    pub nesterov: Option<bool>,
    pub weight_decay: Option<f32>,
    pub lr_schedule: Option<LrSchedule>,
    pub warmup_epochs: Option<f64>,
    pub label_smoothing: Option<f32>,
    pub shuffle: bool,
    pub max_steps: Option<u64>,
    pub validation_split: Option<f64>,
    pub augmentation: Option<Augmentation>,
}

impl Default for TrainingChoices {
    fn default() -> Self {
        let config = TrainConfig::default();
        TrainingChoices {
            epochs: None,
            batch_size: config.batch_size,
            lr: None,
            seed: config.seed,
            optimizer: None,
            momentum: None,
            nesterov: None,
            weight_decay: None,
            lr_schedule: None,
            warmup_epochs: None,
            label_smoothing: None,
            shuffle: true,
            max_steps: None,
            validation_split: None,
            augmentation: None,
        }
    }
}

impl TrainingChoices {
    /// The fraction of the training set held out for validation: the convnet's recipe holds
    /// out a tenth, as Keras' example does.
    pub fn validation_split_for(&self, preset: Option<ModelPreset>) -> f64 {
        (self.validation_split).unwrap_or(if preset == Some(ModelPreset::Convnet) {
            0.1
        } else {
            0.0
        })
    }

    /// The training configuration of `preset` (`None`: a layer list, trained as the MLP is)
    /// with these choices, for a model trained with `loss` on `dataset` (the published dataset
    /// the files are, if any: the ResNet recipe flips the mirror-symmetric ones, Fashion-MNIST
    /// and CIFAR-10, besides its crops). A choice given wins; the ResNet recipe's momentum,
    /// decay and rate are SGD's, so another optimizer takes its own defaults.
    pub fn config(
        &self,
        preset: Option<ModelPreset>,
        loss: Loss,
        dataset: Option<DatasetKind>,
    ) -> Result<TrainConfig> {
        let convnet = preset == Some(ModelPreset::Convnet);
        let resnet = preset.and_then(ModelPreset::resnet_blocks).is_some();
        let optimizer = self.optimizer.unwrap_or(match resnet {
            true => OptimizerKind::Sgd,
            false => OptimizerKind::Adam,
        });
        let resnet_sgd = resnet && optimizer == OptimizerKind::Sgd;
        let momentum = self.momentum.unwrap_or(if resnet_sgd { 0.9 } else { 0.0 });
        if self.label_smoothing.is_some_and(|s| s != 0.0) && loss != Loss::Xent {
            return Err(Error::Config(format!(
                "--label-smoothing smooths cross-entropy's targets; --loss {} takes none",
                crate::model_file::name_of(&loss)
            )));
        }
        Ok(TrainConfig {
            epochs: self.epochs.unwrap_or(match convnet || resnet {
                true => 15,
                false => 10,
            }),
            batch_size: self.batch_size,
            learning_rate: self.lr.unwrap_or(match optimizer {
                OptimizerKind::Adam | OptimizerKind::Adamw => 1e-3,
                OptimizerKind::Sgd if resnet => 0.1,
                OptimizerKind::Sgd => 1e-2,
            }),
            seed: self.seed,
            optimizer,
            momentum,
            nesterov: self.nesterov.unwrap_or(resnet_sgd && momentum > 0.0),
            weight_decay: self.weight_decay.unwrap_or(match optimizer {
                OptimizerKind::Adamw => 1e-2,
                OptimizerKind::Sgd if resnet => 5e-4,
                _ => 0.0,
            }),
            lr_schedule: self.lr_schedule.unwrap_or(match resnet {
                true => LrSchedule::Cosine,
                false => LrSchedule::Constant,
            }),
            warmup_epochs: self.warmup_epochs.or(resnet.then_some(1.0)),
            label_smoothing: (self.label_smoothing).unwrap_or(if resnet && loss == Loss::Xent {
                0.1
            } else {
                0.0
            }),
            shuffle: self.shuffle,
            max_steps: self.max_steps,
            validation_split: self.validation_split_for(preset),
            augmentation: self.augmentation.unwrap_or(Augmentation {
                crop: if resnet { 2 } else { 0 },
                flip: resnet
                    && matches!(
                        dataset,
                        Some(DatasetKind::FashionMnist | DatasetKind::Cifar10)
                    ),
                cutout: 0,
            }),
            ..TrainConfig::default()
        })
    }
}
