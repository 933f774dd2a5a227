//! The `shadertrain` command: a thin layer of argument parsing and printing over the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

/// `print!` that ends the process quietly when stdout is a closed pipe (see `cli::output`).
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::output::write(std::io::stdout().lock(), format_args!($($arg)*)) };
}

/// `println!` that ends the process quietly when stdout is a closed pipe.
macro_rules! outln {
    () => { out!("\n") };
    ($($arg:tt)*) => { out!("{}\n", format_args!($($arg)*)) };
}

/// `eprintln!` that ends the process quietly when stderr is a closed pipe.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::output::write(std::io::stderr().lock(), format_args!("{}\n", format_args!($($arg)*)))
    };
}

mod cli;

use shadertrain::Error;
use shadertrain::data::{DATA_ENV, DatasetKind, default_dir};
use shadertrain::gpu::{AdapterRequest, BackendChoice, list_adapters};
use shadertrain::input::Augmentation;
use shadertrain::model::{Activation, Loss, parse_layers};
use shadertrain::train::{LrSchedule, ModelPreset, OptimizerKind};

#[derive(Parser)]
#[command(
    name = "shadertrain",
    version,
    about = "Train neural networks on any GPU (or a software one) with WGSL compute shaders"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a classifier (an MLP, Keras' MNIST convnet, or any layer list) on MNIST or
    /// Fashion-MNIST and print training, validation and test loss and accuracy after each epoch.
    Train(TrainArgs),
    /// List every GPU adapter wgpu can see, marking the one `train` would use.
    Adapters(AdapterArgs),
    /// Measure the training step on the chosen adapter: start-up times, ms per step, GFLOP/s of the
    /// step and of each matmul shape against the adapter's FMA peak, GPU work per epoch, host
    /// memory. Takes train's model, data and optimisation flags; one epoch is timed.
    Bench(BenchArgs),
    /// Evaluate a saved model on its data's test set: loss, accuracy, per-class accuracy and a
    /// confusion matrix.
    Eval(EvalArgs),
    /// Classify images (PNG or JPEG, any size, told apart by content; prepared as the model's
    /// data was made) or test samples with a saved model, printing the top three classes.
    Predict(PredictArgs),
    /// Show why a saved model decided: for each image (or test sample), the top classes and a
    /// heat map of what the class's score rests on (saliency, integrated gradients or
    /// Grad-CAM), drawn beside the input into a PNG or SVG, or listed as JSON.
    Explain(ExplainArgs),
    /// Draw loss and accuracy (train, validation where held out, and test) against epochs from a
    /// `train --metrics` log, as PNG or SVG (by the output's extension); of a log holding several
    /// runs, the last.
    Plot(PlotArgs),
    /// Run every kernel on random data against the CPU reference and report the worst error of
    /// each; exits non-zero if any is outside its tolerance. Run this first on an unusual GPU.
    Selftest(AdapterArgs),
    /// Download a dataset's four files from its mirrors, verifying each against its checksum.
    Download(DownloadArgs),
    /// Build the web page that trains in the browser (the same kernels through WebGPU; the data
    /// never leaves the machine) and serve it on 127.0.0.1. Needs this source tree, `rustup
    /// target add wasm32-unknown-unknown` and `cargo install wasm-bindgen-cli --version 0.2.130`.
    Web(WebArgs),
}

#[derive(Args)]
struct WebArgs {
    /// The folder the page is built into and served from (a static site: any host serves it).
    #[arg(long, default_value = "target/web")]
    out: PathBuf,
    /// Port on 127.0.0.1 (0: any free one; the URL is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Serve what --out holds without building it again.
    #[arg(long, conflicts_with = "no_serve")]
    no_build: bool,
    /// Build the page and stop.
    #[arg(long)]
    no_serve: bool,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    recipe: RecipeArgs,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Training steps in each steady-state timing window (after 32 warm-up steps; the best of
    /// three windows is reported).
    #[arg(long, default_value_t = 64)]
    steps: usize,
}

#[derive(Args)]
struct EvalArgs {
    /// A model written by `train --save`.
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// Evaluate on data other than the model's (its files' checksums are recorded in the model)
    /// on purpose, e.g. to measure transfer to another dataset.
    #[arg(long)]
    allow_other_data: bool,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
    /// Also list the K test images with the highest loss (index, true and predicted class, the
    /// prediction's probability, the loss).
    #[arg(long, value_name = "K", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    worst: Option<usize>,
    /// Draw the --worst images into this .png or .svg file, as a captioned grid.
    #[arg(short = 'o', long = "output", value_name = "PATH", requires = "worst")]
    output: Option<PathBuf>,
    #[command(flatten)]
    adapter: AdapterArgs,
}

/// A saved model and the inputs `predict` and `explain` take to it.
#[derive(Args)]
struct ModelInputs {
    /// A model written by `train --save`.
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
    /// Image files (PNG or JPEG, any size, told apart by content; prepared as the model's data
    /// was made).
    #[arg(value_name = "IMAGE")]
    images: Vec<PathBuf>,
    /// Also take test image N of the model's data (repeatable).
    #[arg(long = "index", value_name = "N")]
    indices: Vec<usize>,
    #[command(flatten)]
    data: DataArgs,
    /// Take --index samples from data other than the model's on purpose.
    #[arg(long)]
    allow_other_data: bool,
}

#[derive(Args)]
struct PredictArgs {
    #[command(flatten)]
    inputs: ModelInputs,
    /// Print one JSON array instead of lines.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ExplainArgs {
    #[command(flatten)]
    inputs: ModelInputs,
    /// saliency: |d score / d input| (Simonyan et al.); integrated: integrated gradients from
    /// a black image (Sundararajan et al.); gradcam: the last convolutional feature map weighed
    /// by its pooled gradient (Selvaraju et al.) [default: gradcam where that map is globally
    /// pooled (ResNets), else integrated]
    #[arg(long, value_name = "METHOD", value_parser = parse_method)]
    method: Option<shadertrain::explain::Method>,
    /// Explain the score of class C (a number) instead of the predicted class.
    #[arg(long, value_name = "C")]
    class: Option<usize>,
    /// Integrated gradients' path points per input.
    #[arg(long, default_value_t = shadertrain::explain::DEFAULT_STEPS, value_name = "N",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4096))]
    steps: usize,
    /// Draw each input, its heat map and the map over it into this .png or .svg file.
    #[arg(short = 'o', long = "output", value_name = "PATH")]
    output: Option<PathBuf>,
    /// Print one JSON array (top classes, the class explained and its map) instead of lines.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    adapter: AdapterArgs,
}

fn parse_method(text: &str) -> Result<shadertrain::explain::Method, String> {
    shadertrain::explain::Method::parse(text).ok_or_else(|| {
        format!(
            "unknown method {text:?}; one of {}",
            shadertrain::explain::Method::NAMES.join(", ")
        )
    })
}

#[derive(Args)]
struct PlotArgs {
    /// A log written by `train --metrics`.
    #[arg(value_name = "METRICS")]
    metrics: PathBuf,
    /// The picture to write: NAME.png or NAME.svg.
    #[arg(short, long, value_name = "PATH")]
    output: PathBuf,
}

#[derive(Args)]
struct DownloadArgs {
    /// Which dataset to fetch.
    #[arg(long, value_enum, default_value_t = DatasetKind::Mnist)]
    dataset: DatasetKind,
    /// Folder to put the files in [default: data/<dataset>/].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

#[derive(Args)]
struct AdapterArgs {
    /// Graphics API to look for adapters through.
    #[arg(help_heading = "Adapter", long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    /// Use the adapter whose name contains this text (case-insensitive), e.g. "llvmpipe" or "nvidia".
    #[arg(help_heading = "Adapter", long, value_name = "SUBSTRING")]
    adapter: Option<String>,
}

impl AdapterArgs {
    fn request(&self) -> AdapterRequest {
        AdapterRequest {
            backend: self.backend,
            name_contains: self.adapter.clone(),
        }
    }
}

/// Where the dataset is, for every command that reads one.
#[derive(Args)]
struct DataArgs {
    /// Folder holding the dataset's IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte,
    /// t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each raw or .gz; eval and predict read only
    /// the t10k pair), or for CIFAR-10 its binary batches (the folder cifar-10-batches-bin/ or
    /// one holding it) [default: data/<dataset>/, then where a system package installs it;
    /// downloaded when absent].
    #[arg(help_heading = "Data", long, value_name = "DIR", env = DATA_ENV)]
    data: Option<PathBuf>,
    /// Never download: stop with a message when the dataset is not on disk.
    #[arg(help_heading = "Data", long)]
    offline: bool,
}

impl DataArgs {
    /// The folder holding the whole dataset.
    fn dir(&self, kind: DatasetKind) -> shadertrain::Result<PathBuf> {
        if kind == DatasetKind::Folder {
            return self.folder();
        }
        cli::dataset_dir(kind, self.data.as_deref(), self.offline, kind.files())
    }

    /// The image folder --data names (nothing is downloaded for one).
    fn folder(&self) -> shadertrain::Result<PathBuf> {
        match &self.data {
            Some(dir) if shadertrain::data::folder::is_image_folder(dir) => Ok(dir.clone()),
            Some(dir) => Err(Error::Dataset {
                dir: dir.clone(),
                problem: "it has no train/ folder: an image folder holds train/<class>/ (and \
                          test/<class>/) sub-folders of PNG or JPEG files"
                    .into(),
            }),
            None => Err(Error::Config(
                "--dataset folder reads the image folder --data DIR names".into(),
            )),
        }
    }

    /// The folder holding the test split: all that `eval` and `predict` read.
    fn test_dir(&self, kind: DatasetKind) -> shadertrain::Result<PathBuf> {
        if kind == DatasetKind::Folder {
            return self.folder();
        }
        cli::dataset_dir(kind, self.data.as_deref(), self.offline, kind.test_files())
    }
}

#[derive(Args)]
/// The recipe: data, model, optimisation and adapter (what `train` and `bench` share).
struct RecipeArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Which dataset: where its files are looked for and downloaded from, and its class names
    /// (files that are another published dataset, by checksum, are refused); folder: an image
    /// folder, --data DIR holding train/<class>/* and test/<class>/* (PNG or JPEG; without
    /// test/, --validation-split F holds out the last F of each class as the test set).
    #[arg(help_heading = "Data", long, value_enum, default_value_t = DatasetKind::Mnist)]
    dataset: DatasetKind,
    /// An image folder's images resized (bilinear) to this height x width, e.g. 32x32 [default:
    /// the first image's size, which every image must then have].
    #[arg(help_heading = "Data", long, value_name = "HxW", value_parser = parse_image_size)]
    image_size: Option<ImageSize>,
    /// An image folder's images as 1 (grey) or 3 (RGB) channels [default: 3 where any image
    /// has colour, else 1].
    #[arg(help_heading = "Data", long, value_name = "N", value_parser = parse_channels)]
    channels: Option<usize>,
    /// The model: the reference MLP (--hidden, --activation), Keras' mnist_convnet
    /// (conv32k3, maxpool2, conv64k3, maxpool2, flatten, dropout0.5, dense; 15 epochs and
    /// --validation-split 0.1 unless given), or He et al.'s CIFAR ResNet-8 or ResNet-20
    /// (BatchNorm, residual blocks, global average pooling; the README shows the PyTorch module
    /// that loads its file) [default: mlp].
    #[arg(help_heading = "Model", long, value_enum, conflicts_with = "layers")]
    model: Option<ModelPreset>,
    #[arg(
        help_heading = "Model",
        long,
        value_name = "LIST",
        value_parser = check_layers,
        conflicts_with = "hidden",
        help = format!(
            "Any model (instead of --model / --hidden) as {}.",
            shadertrain::model::layers_syntax()
        )
    )]
    layers: Option<String>,
    /// Hold out this fraction of the training set, its last samples as loaded (Keras'
    /// validation_split), and report val_loss and val_acc every epoch [default: 0; 0.1 with
    /// --model convnet].
    #[arg(
        help_heading = "Training",
        long,
        value_name = "F",
        allow_negative_numbers = true
    )]
    validation_split: Option<f64>,
    /// Samples per gradient step (the last batch of an epoch may be smaller; it is trained on too).
    /// Evaluation takes larger batches of its own (up to 1024), with the same results.
    #[arg(help_heading = "Training", long, default_value_t = 128)]
    batch_size: usize,
    /// Learning rate [default: 0.001 for adam, 0.01 for sgd, as in Keras].
    #[arg(help_heading = "Training", long, allow_negative_numbers = true)]
    lr: Option<f32>,
    /// Seed for the weight initialisation and the per-epoch shuffles; the same seed on the same
    /// adapter gives the same run.
    #[arg(help_heading = "Training", long, default_value_t = 0)]
    seed: u64,
    /// The MLP's hidden layer widths, comma-separated; "none" (or "") for a linear softmax
    /// classifier [default: 256,128].
    #[arg(help_heading = "Model", long, value_name = "WIDTHS", value_parser = parse_hidden)]
    hidden: Option<Hidden>,
    /// Activation of the hidden layers (of every layer with weights but the last).
    #[arg(help_heading = "Model", long, value_enum, default_value_t = Activation::Relu)]
    activation: Activation,
    /// Loss on the softmax output: cross-entropy, or mean squared error against one-hot targets.
    #[arg(help_heading = "Model", long, value_enum, default_value_t = Loss::Xent)]
    loss: Loss,
    /// Optimizer: Adam (β1 0.9, β2 0.999, ε 1e-7), AdamW (the same with decoupled weight
    /// decay), or SGD (plain, or with --momentum and --nesterov), each as torch.optim's
    /// [default: adam; sgd for the ResNet presets].
    #[arg(help_heading = "Training", long, value_enum)]
    optimizer: Option<OptimizerKind>,
    /// SGD's momentum factor (torch.optim.SGD's, dampening 0) [default: 0, plain SGD; 0.9 for
    /// the ResNet presets].
    #[arg(
        help_heading = "Training",
        long,
        value_name = "M",
        allow_negative_numbers = true
    )]
    momentum: Option<f32>,
    /// Nesterov momentum (SGD with a --momentum); --nesterov false turns the ResNet presets'
    /// off.
    #[arg(help_heading = "Training", long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    nesterov: Option<bool>,
    /// Weight decay: added to the gradient as decay × weight for SGD and Adam (PyTorch's
    /// weight_decay), decoupled for AdamW (every weight shrinks by lr × decay each step); over
    /// every trained parameter [default: 0; 0.01 for adamw, as in PyTorch; 5e-4 for the ResNet
    /// presets' SGD].
    #[arg(
        help_heading = "Training",
        long,
        value_name = "W",
        allow_negative_numbers = true
    )]
    weight_decay: Option<f32>,
    /// How the learning rate changes over the run, per step: constant, cosine (a half cosine to
    /// 0 at the end), onecycle (PyTorch's OneCycleLR, linear: from lr/25 up to lr over the
    /// warm-up, 30 % of the run unless given, then down to lr/25e4) or step (÷10 at 50 % and
    /// at 75 % of the run) [default: constant; cosine for the ResNet presets].
    #[arg(help_heading = "Training", long, value_name = "SCHEDULE", value_enum)]
    lr_schedule: Option<LrSchedule>,
    /// Raise the learning rate linearly from lr/W to lr over the first F epochs (W: the
    /// warm-up's steps; fractions of an epoch allowed) [default: none; 1 for the ResNet
    /// presets].
    #[arg(
        help_heading = "Training",
        long,
        value_name = "F",
        allow_negative_numbers = true
    )]
    warmup_epochs: Option<f64>,
    /// Standardise each channel of the input by the training set's mean and standard deviation
    /// (stored in the model, so eval, predict and PyTorch apply the same); --normalize false
    /// turns the ResNet presets' off [default: off; on for the ResNet presets].
    #[arg(help_heading = "Training", long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    normalize: Option<bool>,
    /// Random changes to each training image, on the GPU, comma-separated: crop<P> (pad P pixels
    /// with black and take a random crop of the original size), flip (mirror left-right half the
    /// time), cutout<S> (an S×S square set to 0 after standardisation); or none. Evaluation sees
    /// the images unchanged [default: none; crop2 for the ResNet presets, crop2,flip on
    /// Fashion-MNIST].
    #[arg(help_heading = "Training", long, value_name = "LIST", value_parser = Augmentation::parse)]
    augment: Option<Augmentation>,
    /// Cross-entropy against (1 − S) one-hot + S / classes, as PyTorch's label_smoothing; the
    /// training loss shown includes it, the test and validation losses do not [default: 0; 0.1
    /// for the ResNet presets].
    #[arg(
        help_heading = "Training",
        long,
        value_name = "S",
        allow_negative_numbers = true
    )]
    label_smoothing: Option<f32>,
    /// Train in file order instead of shuffling every epoch (to reproduce a run step by step
    /// in another framework).
    #[arg(help_heading = "Training", long)]
    no_shuffle: bool,
    /// Stop after this many training steps in all, mid-epoch if need be (that epoch's figures
    /// are marked partial; resuming with a higher limit goes on inside it).
    #[arg(help_heading = "Training", long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_steps: Option<u64>,
    #[command(flatten)]
    adapter: AdapterArgs,
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    recipe: RecipeArgs,
    /// Passes over the training set [default: 10; 15 with --model convnet].
    #[arg(help_heading = "Training", long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    epochs: Option<usize>,
    /// Start from the weights of this safetensors model (fine-tuning); its layer sizes must
    /// match the model being trained.
    #[arg(help_heading = "Training", long, value_name = "PATH")]
    init: Option<PathBuf>,
    /// After training, write the model here as a safetensors file (PyTorch's tensor layouts).
    #[arg(help_heading = "Outputs", long, value_name = "PATH")]
    save: Option<PathBuf>,
    /// Append one JSON object per epoch (every printed figure and a timestamp) to this file, or
    /// stream them to a terminal, /dev/stdout or a named pipe.
    #[arg(help_heading = "Outputs", long, value_name = "PATH")]
    metrics: Option<PathBuf>,
    /// Also append the epoch's running training loss and accuracy every N steps ("kind":
    /// "interval" lines; read without waiting on the GPU per step).
    #[arg(help_heading = "Outputs", long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    metrics_every: Option<u64>,
    /// Write checkpoints (weights, Adam moments, counters, shuffle state, position in the
    /// epoch, configuration) into this folder at every epoch end, and every --checkpoint-every
    /// steps.
    #[arg(help_heading = "Checkpoints", long, value_name = "DIR")]
    checkpoint_dir: Option<PathBuf>,
    /// Also write a checkpoint every N training steps.
    #[arg(help_heading = "Checkpoints", long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    checkpoint_every: Option<u64>,
    /// How many of the newest checkpoints to keep in the folder.
    #[arg(
        help_heading = "Checkpoints",
        long,
        value_name = "N",
        default_value_t = 2
    )]
    keep_checkpoints: usize,
    /// Continue the run whose checkpoints are in DIR from its newest complete one: on the same
    /// adapter the result is bit-identical to an uninterrupted run. Flags left out take the
    /// checkpoint's values; flags given must agree with it. --epochs and --max-steps may
    /// change, but not to a point the checkpoint has passed (refused); at the point it has
    /// reached, nothing is trained. With no checkpoint in DIR yet, the run starts from the
    /// beginning.
    #[arg(
        help_heading = "Checkpoints",
        long,
        value_name = "DIR",
        conflicts_with = "init"
    )]
    resume: Option<PathBuf>,
}

/// `--layers`: a usage error at the token that does not parse.
fn check_layers(text: &str) -> Result<String, String> {
    parse_layers(text, Activation::Relu).map(|_| text.to_string())
}

#[derive(Clone, Debug)]
struct Hidden(Vec<usize>);

fn parse_channels(text: &str) -> Result<usize, String> {
    match text.trim() {
        "1" => Ok(1),
        "3" => Ok(3),
        _ => Err(format!("{text:?}: give 1 (grey) or 3 (RGB)")),
    }
}

/// `--image-size HxW`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ImageSize(u32, u32);

fn parse_image_size(text: &str) -> Result<ImageSize, String> {
    let sizes: Vec<Option<u32>> = text
        .split(['x', 'X'])
        .map(|s| s.trim().parse().ok())
        .collect();
    match sizes[..] {
        [Some(h), Some(w)] if (1..=4096).contains(&h) && (1..=4096).contains(&w) => {
            Ok(ImageSize(h, w))
        }
        _ => Err(format!(
            "{text:?} is not a size: give height x width in pixels, e.g. 32x32"
        )),
    }
}

fn parse_hidden(text: &str) -> Result<Hidden, String> {
    let text = text.trim();
    if text.is_empty() || text.eq_ignore_ascii_case("none") {
        return Ok(Hidden(vec![]));
    }
    text.split(',')
        .map(|w| match w.trim().parse::<usize>() {
            Ok(0) | Err(_) => Err(format!(
                "expected comma-separated positive layer widths like 256,128 (or \"none\"), got {w:?}"
            )),
            Ok(width) => Ok(width),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Hidden)
}

fn main() -> ExitCode {
    let process_start = Instant::now();
    let _runtime_dir = give_mesa_a_runtime_dir();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let outcome = match cli.command {
        Command::Train(args) => {
            let train_matches = matches
                .subcommand_matches("train")
                .expect("the train command");
            let given = |id: &str| {
                train_matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
            };
            cli::train::run(args, &given)
        }
        Command::Bench(args) => bench(args, process_start),
        Command::Adapters(args) => adapters(&args),
        Command::Eval(args) => cli::eval::run(
            &args.model,
            |kind| args.data.test_dir(kind),
            &args.adapter.request(),
            args.allow_other_data,
            args.json,
            args.worst.map(|count| cli::eval::Worst {
                count,
                picture: args.output.as_deref(),
            }),
        ),
        Command::Predict(args) => cli::predict::run(
            &args.inputs.model,
            &args.inputs.images,
            &args.inputs.indices,
            |kind| args.inputs.data.test_dir(kind),
            args.inputs.allow_other_data,
            args.json,
        ),
        Command::Explain(args) => cli::explain::run(
            &cli::explain::ExplainRequest {
                model: &args.inputs.model,
                images: &args.inputs.images,
                indices: &args.inputs.indices,
                method: args.method,
                class: args.class,
                steps: args.steps,
                picture: args.output.as_deref(),
                other_data: args.inputs.allow_other_data,
                as_json: args.json,
            },
            |kind| args.inputs.data.test_dir(kind),
            &args.adapter.request(),
        ),
        Command::Plot(args) => plot(&args),
        Command::Selftest(args) => cli::selftest(&args.request()),
        Command::Web(args) => cli::web::run(&cli::web::WebOptions {
            out: args.out,
            port: args.port,
            build: !args.no_build,
            serve: !args.no_serve,
        }),
        Command::Download(args) => {
            let dir = args.dir.unwrap_or_else(|| default_dir(args.dataset));
            shadertrain::files::check_folder_writable(&dir)
                .map_err(|problem| Error::Unwritable {
                    flag: "--dir",
                    path: dir.clone(),
                    problem,
                })
                .and_then(|()| cli::fetch_dataset(args.dataset, &dir))
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ Error::Interrupted { exit_code, .. }) => {
            errln!("{e}");
            ExitCode::from(exit_code)
        }
        Err(e) => {
            errln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Mesa's drivers print "XDG_RUNTIME_DIR is invalid" to the terminal when it is unset (under
/// cron, ssh without a session, containers): point it at a private folder that lives as long as
/// the process.
fn give_mesa_a_runtime_dir() -> Option<tempfile::TempDir> {
    if std::env::var_os("XDG_RUNTIME_DIR").is_some() {
        return None;
    }
    let dir = tempfile::Builder::new()
        .prefix("shadertrain-runtime-")
        .tempdir()
        .ok()?;
    // SAFETY: called first thing in main, before any other thread exists.
    unsafe { std::env::set_var("XDG_RUNTIME_DIR", dir.path()) };
    Some(dir)
}

fn adapters(args: &AdapterArgs) -> shadertrain::Result<()> {
    let found = list_adapters(&args.request())?;
    outln!(
        "  {:>5}  {:<40} {:<8} {:<14} driver",
        "index",
        "name",
        "backend",
        "type"
    );
    for a in found {
        outln!(
            "{} {:>5}  {:<40} {:<8} {:<14} {}",
            if a.chosen { "*" } else { " " },
            a.index,
            a.name,
            a.backend,
            a.device_type,
            a.driver
        );
    }
    outln!("(* = the adapter `train` uses with these options)");
    Ok(())
}

fn plot(args: &PlotArgs) -> shadertrain::Result<()> {
    use shadertrain::plot::{curves_png, curves_svg, read_runs};
    shadertrain::files::check_file_writable(&args.output).map_err(|problem| {
        shadertrain::Error::Unwritable {
            flag: "-o",
            path: args.output.clone(),
            problem,
        }
    })?;
    let extension = args
        .output
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_lowercase);
    if !matches!(extension.as_deref(), Some("svg" | "png")) {
        return Err(shadertrain::Error::Config(format!(
            "-o {}: give a .png or .svg file name",
            args.output.display()
        )));
    }
    let mut runs = read_runs(&args.metrics)?;
    let points = runs.pop().expect("at least one run");
    let bytes = match extension.as_deref() {
        Some("svg") => curves_svg(&points).into_bytes(),
        _ => curves_png(&points)?,
    };
    shadertrain::files::write_atomically(&args.output, &bytes)?;
    if !runs.is_empty() {
        outln!(
            "{} holds {} runs (--metrics appends; the epoch count starts again): drawing the last, \
             epochs {} to {}",
            args.metrics.display(),
            runs.len() + 1,
            points[0].epoch,
            points[points.len() - 1].epoch
        );
    }
    outln!("wrote {}", args.output.display());
    Ok(())
}

fn bench(args: BenchArgs, process_start: Instant) -> shadertrain::Result<()> {
    if let Some(max) = args.recipe.max_steps {
        return Err(Error::Config(format!(
            "--max-steps {max}: bench takes a fixed number of steps ({} here: 1, 32 to warm up \
             and 3 windows of --steps {}), then one epoch, and is not limited by --max-steps; \
             leave it out, and give a smaller --steps for shorter windows",
            33 + 3 * args.steps.max(1),
            args.steps
        )));
    }
    let recipe = cli::recipe::recipe(&args.recipe, None, None)?;
    let report = cli::bench::run(
        &args.recipe.adapter.request(),
        &recipe.spec,
        &recipe.config,
        recipe.train_set,
        recipe.test_set,
        args.steps,
        process_start,
    )?;
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&report).expect("plain data serialises")
        );
    } else {
        cli::bench::print(&report);
    }
    Ok(())
}
