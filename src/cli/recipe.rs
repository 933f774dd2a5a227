//! The recipe flags made into what `train` and `bench` run: the data, its identity, the model
//! (a preset or a layer list) and the training configuration, each refused with a message that
//! names the flag before anything is printed about the run.

use std::path::{Path, PathBuf};

use shadertrain::Error;
use shadertrain::data::folder::{self, FolderOptions, FolderSplit};
use shadertrain::data::{DataIdentity, Dataset, DatasetKind, FileDigests, Split};
use shadertrain::input::Standardisation;
use shadertrain::model::{ModelSpec, parse_layers};
use shadertrain::train::{ModelPreset, TrainConfig, TrainingChoices};

use crate::{Hidden, ImageSize, RecipeArgs};

/// What `train` and `bench` load and build from the recipe flags.
pub(crate) struct Recipe {
    pub(crate) data_dir: PathBuf,
    /// What the files in `data_dir` are.
    pub(crate) data: DataIdentity,
    pub(crate) train_set: Dataset,
    pub(crate) test_set: Dataset,
    pub(crate) spec: ModelSpec,
    pub(crate) config: TrainConfig,
    /// What the run should say about its data (a cache used, a test set held out).
    pub(crate) notes: Vec<String>,
}

/// `epochs`: `train --epochs` (bench times one epoch). `claimed`: the dataset the files are said
/// to be, and who says so (`--dataset`, a checkpoint): files that are another published dataset
/// are refused, and custom files take its class names.
pub(crate) fn recipe(
    args: &RecipeArgs,
    epochs: Option<usize>,
    claimed: Option<(DatasetKind, &str)>,
) -> shadertrain::Result<Recipe> {
    let resnet_blocks = args.model.and_then(ModelPreset::resnet_blocks);
    let preset = args.model.filter(|&m| m != ModelPreset::Mlp);
    if let (Some(preset), Some(Hidden(widths))) = (preset, &args.hidden) {
        let widths: Vec<String> = widths.iter().map(usize::to_string).collect();
        let widths = if widths.is_empty() {
            "none".into()
        } else {
            widths.join(",")
        };
        return Err(Error::Config(format!(
            "--hidden {widths} sets the MLP's widths, and --model {} has layers of its own: \
             give --model mlp (or leave --model out), or a --layers list for another network",
            shadertrain::model_file::name_of(&preset)
        )));
    }
    let data_dir = args.data.dir(args.dataset)?;
    let mut notes = Vec::new();
    let mut test_held_out = false;
    let (train_set, test_set, data) = if args.dataset == DatasetKind::Folder {
        let loaded = load_folder(args, &data_dir, &mut notes)?;
        test_held_out = loaded.3;
        (loaded.0, loaded.1, loaded.2)
    } else {
        let (train_set, mut digests) =
            Dataset::load_digested(args.dataset, &data_dir, Split::Train)?;
        let (test_set, test_digests) =
            Dataset::load_digested(args.dataset, &data_dir, Split::Test)?;
        digests.extend(test_digests);
        let custom_labels = claimed.map(|(kind, _)| kind).unwrap_or_default();
        (
            train_set,
            test_set,
            DataIdentity::identify(digests, custom_labels),
        )
    };
    if let (Some(files), Some((kind, by))) = (data.dataset, claimed)
        && files != kind
    {
        return Err(shadertrain::Error::Dataset {
            dir: data_dir,
            problem: format!(
                "these files are {} (each one's content has {}'s published MD5), but {by} says {}: \
                 point --data at {}'s files{}",
                files.name(),
                files.name(),
                kind.name(),
                kind.name(),
                if by == "--dataset" {
                    ", or leave --dataset out"
                } else {
                    ""
                }
            ),
        });
    }
    let classes = train_set.classes;
    // A ResNet preset wins over a layer list, which wins over the convnet preset.
    let spec = match (&args.layers, args.model) {
        (_, Some(preset)) if preset.resnet_blocks().is_some() => {
            preset.spec(train_set.shape, classes, args.loss)
        }
        (None, Some(ModelPreset::Convnet)) => {
            ModelPreset::Convnet.spec(train_set.shape, classes, args.loss)
        }
        (Some(layers), _) => ModelSpec {
            input: train_set.shape,
            layers: parse_layers(layers, args.activation)
                .map_err(|e| shadertrain::Error::Config(format!("--layers: {e}")))?,
            loss: args.loss,
            standardisation: None,
        },
        (None, _) => ModelSpec::mlp(
            train_set.shape,
            args.hidden.as_ref().map_or(&[256, 128][..], |h| &h.0),
            classes,
            args.activation,
            args.loss,
        ),
    };
    let resnet = resnet_blocks.is_some();
    let spec = ModelSpec {
        standardisation: match args.normalize.unwrap_or(resnet) {
            true => Some(standardisation_of(&train_set, args, test_held_out)?),
            false => None,
        },
        ..spec
    };
    spec.validate().map_err(|e| {
        let problem = match e {
            shadertrain::Error::Config(problem) => problem,
            other => other.to_string(),
        };
        shadertrain::Error::Config(format!(
            "the model does not fit the data's samples of {}: {problem}",
            spec.input
        ))
    })?;
    let dataset = data.dataset.or(claimed.map(|(kind, _)| kind));
    let mut config = training_choices(args, epochs).config(args.model, spec.loss, dataset)?;
    if test_held_out {
        // The fraction made the test set; nothing more is held out.
        config.test_split = config.validation_split;
        config.validation_split = 0.0;
    }
    // Before anything is printed about the run.
    config.validate()?;
    Ok(Recipe {
        data_dir,
        data,
        train_set,
        test_set,
        spec,
        config,
        notes,
    })
}

/// An image folder's splits and identity: train/, and test/ or, where it has none, the last
/// `--validation-split` of each class of train/ (then true). `notes` gets what the run should
/// say: the cache used, the test set held out.
fn load_folder(
    args: &RecipeArgs,
    dir: &Path,
    notes: &mut Vec<String>,
) -> shadertrain::Result<(Dataset, Dataset, DataIdentity, bool)> {
    let options = FolderOptions {
        size: args.image_size.map(|ImageSize(h, w)| (h, w)),
        channels: args.channels,
    };
    let mut cached = |split: &FolderSplit| {
        if let Some(cache) = &split.cached {
            notes.push(format!(
                "decoded images read from the cache {}",
                cache.display()
            ));
        }
    };
    let train = folder::load(dir, Split::Train, options, None)?;
    cached(&train);
    let mut md5 = FileDigests::from([("train".to_string(), train.md5.clone())]);
    let (train_set, test_set, held_out) = match folder::split_dir(dir, Split::Test).is_dir() {
        true => {
            let test = folder::load(dir, Split::Test, options, Some(&train.class_names))?;
            cached(&test);
            md5.insert("test".to_string(), test.md5.clone());
            (train.data, test.data, false)
        }
        false => {
            let Some(fraction) = args.validation_split.filter(|&f| f > 0.0 && f < 1.0) else {
                return Err(Error::Dataset {
                    dir: dir.to_path_buf(),
                    problem: "it has no test/ folder: give --validation-split F to hold out \
                              the last F of each class of train/ as the test set"
                        .into(),
                });
            };
            let (kept, test) = train.data.hold_out_per_class(fraction)?;
            notes.push(format!(
                "test: the last {} of each class of train/ ({} images; the folder has no test/, \
                 so --validation-split {fraction} makes the test set)",
                fraction,
                test.samples()
            ));
            (kept, test, true)
        }
    };
    let data = DataIdentity {
        classes: Some(train.class_names),
        ..DataIdentity::identify(md5, DatasetKind::Folder)
    };
    Ok((train_set, test_set, data, held_out))
}

/// The standardisation of the samples that train: the training set without the part
/// `--validation-split` holds out (its last samples), as the trainer splits it.
fn standardisation_of(
    train_set: &Dataset,
    args: &RecipeArgs,
    test_held_out: bool,
) -> shadertrain::Result<Standardisation> {
    let split = match test_held_out {
        // The fraction already took the folder's test set out.
        true => 0.0,
        false => training_choices(args, None).validation_split_for(args.model),
    };
    let (training, _) = train_set.split_validation(split)?;
    Standardisation::of(&training)
}

/// The training flags as choices of the recipe (`epochs`: `train --epochs`; bench times one).
fn training_choices(args: &RecipeArgs, epochs: Option<usize>) -> TrainingChoices {
    TrainingChoices {
        epochs,
        batch_size: args.batch_size,
        lr: args.lr,
        seed: args.seed,
        optimizer: args.optimizer,
        momentum: args.momentum,
        nesterov: args.nesterov,
        weight_decay: args.weight_decay,
        lr_schedule: args.lr_schedule,
        warmup_epochs: args.warmup_epochs,
        label_smoothing: args.label_smoothing,
        shuffle: !args.no_shuffle,
        max_steps: args.max_steps,
        validation_split: args.validation_split,
        augmentation: args.augment,
    }
}
