//! The `shadertrain` command: a thin layer of argument parsing and printing over the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};

mod cli;

use shadertrain::data::{DATA_ENV, Dataset, DatasetKind, Split, default_dir};
use shadertrain::gpu::{AdapterRequest, BackendChoice, Gpu, Kernels, list_adapters};
use shadertrain::model::{Activation, Loss, ModelSpec};
use shadertrain::model_file::{load_model, save_model};
use shadertrain::train::{OptimizerKind, TrainConfig, Trainer};

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
    /// Train an MLP classifier on MNIST and print train/test loss and accuracy after each epoch.
    Train(TrainArgs),
    /// List every GPU adapter wgpu can see, marking the one `train` would use.
    Adapters(AdapterArgs),
    /// Measure the training step on the chosen adapter: start-up times, ms per step, GFLOP/s of the
    /// step and of each matmul shape against the adapter's FMA peak, GPU work per epoch, host
    /// memory. Takes train's flags (--epochs is ignored: one epoch is timed).
    Bench(BenchArgs),
    /// Evaluate a saved model on its dataset's test set: loss, accuracy, per-class accuracy and
    /// a confusion matrix.
    Eval(EvalArgs),
    /// Classify images (PNG or JPEG, any size; preprocessed as MNIST was) or test samples with a
    /// saved model, printing the top three classes.
    Predict(PredictArgs),
    /// Draw loss and accuracy (train and test) against epochs from a `train --metrics` log, as
    /// PNG or SVG (by the output's extension).
    Plot(PlotArgs),
    /// Run every kernel on random data against the CPU reference and report the worst error of
    /// each; exits non-zero if any is outside its tolerance. Run this first on an unusual GPU.
    Selftest(AdapterArgs),
    /// Download a dataset's four files from its mirrors, verifying each against its checksum.
    Download(DownloadArgs),
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    recipe: TrainArgs,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Training steps in the steady-state timing (after 32 warm-up steps).
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
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    adapter: AdapterArgs,
}

#[derive(Args)]
struct PredictArgs {
    /// A model written by `train --save`.
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
    /// Image files to classify.
    #[arg(value_name = "IMAGE")]
    images: Vec<PathBuf>,
    /// Classify test image N of the model's dataset instead (repeatable).
    #[arg(long = "index", value_name = "N")]
    indices: Vec<usize>,
    #[command(flatten)]
    data: DataArgs,
    /// Print one JSON array instead of lines.
    #[arg(long)]
    json: bool,
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
    #[arg(long, value_enum, default_value_t = DatasetKind::Mnist)]
    dataset: DatasetKind,
    /// Folder to put the files in [default: data/<dataset>/].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

#[derive(Args)]
struct AdapterArgs {
    /// Graphics API to look for adapters through.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    /// Use the adapter whose name contains this text (case-insensitive), e.g. "llvmpipe" or "nvidia".
    #[arg(long, value_name = "SUBSTRING")]
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
    /// Folder holding the dataset's four IDX files (train-images-idx3-ubyte[.gz], ...) [default:
    /// data/<dataset>/, then where a system package installs it; downloaded when absent].
    #[arg(long, value_name = "DIR", env = DATA_ENV)]
    data: Option<PathBuf>,
    /// Never download: stop with a message when the dataset is not on disk.
    #[arg(long)]
    offline: bool,
}

impl DataArgs {
    fn dir(&self, kind: DatasetKind) -> shadertrain::Result<PathBuf> {
        cli::dataset_dir(kind, self.data.as_deref(), self.offline)
    }
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Dataset to train on.
    #[arg(long, value_enum, default_value_t = DatasetKind::Mnist)]
    dataset: DatasetKind,
    /// Passes over the training set.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Samples per gradient step (the last batch of an epoch may be smaller; it is trained on too).
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Learning rate [default: 0.001 for adam, 0.01 for sgd, as in Keras].
    #[arg(long)]
    lr: Option<f32>,
    /// Seed for the weight initialisation and the per-epoch shuffles; the same seed on the same
    /// adapter gives the same run.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Hidden layer widths, comma-separated; "none" (or "") for a linear softmax classifier.
    #[arg(long, default_value = "256,128", value_parser = parse_hidden)]
    hidden: Hidden,
    /// Activation of the hidden layers.
    #[arg(long, value_enum, default_value_t = Activation::Relu)]
    activation: Activation,
    /// Loss on the softmax output: cross-entropy, or mean squared error against one-hot targets.
    #[arg(long, value_enum, default_value_t = Loss::Xent)]
    loss: Loss,
    /// Optimizer: Adam (β1 0.9, β2 0.999, ε 1e-7) or plain gradient descent.
    #[arg(long, value_enum, default_value_t = OptimizerKind::Adam)]
    optimizer: OptimizerKind,
    /// Train in file order instead of shuffling every epoch (to reproduce a run step by step
    /// in another framework).
    #[arg(long)]
    no_shuffle: bool,
    /// Stop after this many training steps in all, mid-epoch if need be.
    #[arg(long, value_name = "N")]
    max_steps: Option<u64>,
    /// Start from the weights of this safetensors model (fine-tuning); its layer sizes must
    /// match the model being trained.
    #[arg(long, value_name = "PATH")]
    init: Option<PathBuf>,
    /// After training, write the model here as a safetensors file (PyTorch nn.Linear layout).
    #[arg(long, value_name = "PATH")]
    save: Option<PathBuf>,
    /// Append one JSON object per epoch (every printed figure and a timestamp) to this file.
    #[arg(long, value_name = "PATH")]
    metrics: Option<PathBuf>,
    #[command(flatten)]
    adapter: AdapterArgs,
}

#[derive(Clone, Debug)]
struct Hidden(Vec<usize>);

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
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Train(args) => train(args),
        Command::Bench(args) => bench(args, process_start),
        Command::Adapters(args) => {
            adapters(&args);
            Ok(())
        }
        Command::Eval(args) => cli::eval::run(
            &args.model,
            |kind| args.data.dir(kind),
            &args.adapter.request(),
            args.json,
        ),
        Command::Predict(args) => cli::predict::run(
            &args.model,
            &args.images,
            &args.indices,
            |kind| args.data.dir(kind),
            args.json,
        ),
        Command::Plot(args) => plot(&args),
        Command::Selftest(args) => cli::selftest(&args.request()),
        Command::Download(args) => {
            let dir = args.dir.unwrap_or_else(|| default_dir(args.dataset));
            cli::fetch_dataset(args.dataset, &dir)
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn adapters(args: &AdapterArgs) {
    let found = list_adapters(&args.request());
    if found.is_empty() {
        println!(
            "no adapters found. On Linux without a GPU, `apt-get install mesa-vulkan-drivers` gives a software one (lavapipe)."
        );
        return;
    }
    println!(
        "  {:>5}  {:<40} {:<8} {:<14} driver",
        "index", "name", "backend", "type"
    );
    for a in found {
        println!(
            "{} {:>5}  {:<40} {:<8} {:<14} {}",
            if a.chosen { "*" } else { " " },
            a.index,
            a.name,
            a.backend,
            a.device_type,
            a.driver
        );
    }
    println!("(* = the adapter `train` uses with these options)");
}

fn plot(args: &PlotArgs) -> shadertrain::Result<()> {
    use shadertrain::plot::{curves_png, curves_svg, read_metrics};
    let extension = args
        .output
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_lowercase);
    let bytes = match extension.as_deref() {
        Some("svg") => curves_svg(&read_metrics(&args.metrics)?).into_bytes(),
        Some("png") => curves_png(&read_metrics(&args.metrics)?)?,
        _ => {
            return Err(shadertrain::Error::Config(format!(
                "-o {}: give a .png or .svg file name",
                args.output.display()
            )));
        }
    };
    shadertrain::files::write_atomically(&args.output, &bytes)?;
    println!("wrote {}", args.output.display());
    Ok(())
}

/// What `train` and `bench` load and build from the recipe flags.
struct Recipe {
    data_dir: PathBuf,
    train_set: Dataset,
    test_set: Dataset,
    spec: ModelSpec,
    config: TrainConfig,
}

fn recipe(args: &TrainArgs) -> shadertrain::Result<Recipe> {
    let data_dir = args.data.dir(args.dataset)?;
    let train_set = Dataset::load_mnist(&data_dir, Split::Train)?;
    let test_set = Dataset::load_mnist(&data_dir, Split::Test)?;
    let spec = ModelSpec {
        inputs: train_set.features,
        hidden: args.hidden.0.clone(),
        classes: train_set.classes,
        activation: args.activation,
        loss: args.loss,
    };
    let config = TrainConfig {
        epochs: args.epochs,
        batch_size: args.batch_size,
        learning_rate: args.lr.unwrap_or(match args.optimizer {
            OptimizerKind::Adam => 1e-3,
            OptimizerKind::Sgd => 1e-2,
        }),
        seed: args.seed,
        optimizer: args.optimizer,
        shuffle: !args.no_shuffle,
        max_steps: args.max_steps,
        ..TrainConfig::default()
    };
    Ok(Recipe {
        data_dir,
        train_set,
        test_set,
        spec,
        config,
    })
}

fn bench(args: BenchArgs, process_start: Instant) -> shadertrain::Result<()> {
    let recipe = recipe(&args.recipe)?;
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
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("plain data serialises")
        );
    } else {
        cli::bench::print(&report);
    }
    Ok(())
}

fn train(args: TrainArgs) -> shadertrain::Result<()> {
    // Fail before training, not after, when an output cannot be written.
    for (flag, path) in [("--save", &args.save), ("--metrics", &args.metrics)] {
        if let Some(parent) = path.as_ref().and_then(|p| p.parent())
            && !parent.as_os_str().is_empty()
            && !parent.is_dir()
        {
            return Err(shadertrain::Error::Config(format!(
                "{flag} {}: the folder {} does not exist",
                path.as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                parent.display()
            )));
        }
    }
    let Recipe {
        data_dir,
        train_set,
        test_set,
        spec,
        config,
    } = recipe(&args)?;
    let gpu = Gpu::open(&args.adapter.request())?;
    let kernels = Kernels::new(&gpu);
    println!("adapter: {}", gpu.adapter_name());
    println!(
        "data: {} from {} ({} training, {} test samples; classes {})",
        args.dataset.name(),
        data_dir.display(),
        train_set.samples(),
        test_set.samples(),
        args.dataset.class_names().join(", ")
    );
    println!(
        "model: {}  activation {:?}, loss {:?}, optimizer {:?} (lr {}), batch {}, seed {}",
        spec.widths()
            .iter()
            .map(|w| w.to_string())
            .collect::<Vec<_>>()
            .join("-"),
        spec.activation,
        spec.loss,
        config.optimizer,
        config.learning_rate,
        config.batch_size,
        config.seed
    );
    let epochs = config.epochs;
    // Checked before any work, like the output paths.
    let init = match &args.init {
        Some(path) => {
            let saved = load_model(path)?;
            if saved.spec.widths() != spec.widths() {
                return Err(shadertrain::Error::Config(format!(
                    "--init {}: its layer sizes {:?} differ from the model being trained, {:?}",
                    path.display(),
                    saved.spec.widths(),
                    spec.widths()
                )));
            }
            Some((path, saved.params))
        }
        None => None,
    };
    let mut trainer = Trainer::new(&gpu, &kernels, spec, config, &train_set, &test_set)?;
    // The data lives on the GPU now.
    drop((train_set, test_set));
    if let Some((path, params)) = init {
        trainer.set_parameters(&params)?;
        println!("initialised from {}", path.display());
    }
    println!(
        "{:>5} {:>10} {:>9} {:>10} {:>9} {:>8} {:>10}",
        "epoch", "train_loss", "train_acc", "test_loss", "test_acc", "seconds", "samples/s"
    );
    for _ in 0..epochs {
        if trainer.finished() {
            break;
        }
        let m = trainer.run_epoch()?;
        if let Some(path) = &args.metrics {
            let timestamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default();
            let line = serde_json::json!({
                "timestamp_unix_s": timestamp,
                "dataset": args.dataset.name(),
                "epoch": m.epoch,
                "train_samples": m.train_samples,
                "train_loss": m.train_loss,
                "train_accuracy": m.train_accuracy,
                "test_loss": m.test_loss,
                "test_accuracy": m.test_accuracy,
                "seconds": m.seconds,
                "samples_per_second": m.samples_per_second,
            });
            shadertrain::files::append_line_atomically(path, &line.to_string())?;
        }
        println!(
            "{:>5} {:>10.4} {:>8.2}% {:>10.4} {:>8.2}% {:>8.2} {:>10.0}",
            m.epoch,
            m.train_loss,
            100.0 * m.train_accuracy,
            m.test_loss,
            100.0 * m.test_accuracy,
            m.seconds,
            m.samples_per_second
        );
    }
    if let Some(path) = &args.save {
        let params = trainer.parameters()?;
        save_model(path, trainer.spec(), &params, args.dataset)?;
        println!("saved the model to {}", path.display());
    }
    Ok(())
}
