//! One error type for the library: every failure a user can cause or meet is a value with a
//! message that names the file, flag or device limit involved.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: {problem}")]
    MalformedIdx { path: PathBuf, problem: String },

    #[error("dataset in {dir}: {problem}")]
    Dataset { dir: PathBuf, problem: String },

    #[error(
        "no GPU adapter found (backends tried: {backends}). On Linux without a GPU, install a \
         software Vulkan driver (Debian/Ubuntu: `apt-get install mesa-vulkan-drivers`, which provides \
         lavapipe), or choose another backend with --backend"
    )]
    NoAdapter { backends: String },

    #[error(
        "no adapter's name contains {wanted:?} (--adapter); the adapters seen are: {seen}. Give a \
         part of one of those names, or leave --adapter out to take the best one"
    )]
    NoMatchingAdapter { wanted: String, seen: String },

    #[error("could not open a device on adapter {adapter}: {reason}")]
    Device { adapter: String, reason: String },

    #[error(
        "{what} needs {bytes} bytes, more than this adapter allows in one {limit_name} ({limit} bytes); \
         use a smaller model, batch size or dataset, or another adapter"
    )]
    BufferTooLarge {
        what: String,
        bytes: u64,
        limit: u64,
        limit_name: &'static str,
    },

    #[error(
        "could not download {file} into {dir}: every mirror failed ({attempts}). Without network, put \
         {needed} (raw or .gz) in that folder yourself, or point --data at a folder that has them"
    )]
    Download {
        file: String,
        dir: PathBuf,
        attempts: String,
        /// What the command needs, as the message names it ("the files t10k-images-idx3-ubyte
        /// and t10k-labels-idx1-ubyte").
        needed: String,
    },

    #[error("image {path}: {problem}")]
    Image { path: PathBuf, problem: String },

    /// A readable image that shows nothing to classify (blank, or a few pixels in all).
    #[error("image {path}: {problem}")]
    EmptyImage { path: PathBuf, problem: String },

    #[error("metrics log {path}: {problem}")]
    MetricsLog { path: PathBuf, problem: String },

    #[error("model file {path}: {problem}")]
    ModelFile { path: PathBuf, problem: String },

    #[error("checkpoint {path}: {problem}")]
    Checkpoint { path: PathBuf, problem: String },

    #[error("checkpoint {path} is damaged: {problem}")]
    DamagedCheckpoint { path: PathBuf, problem: String },

    #[error(
        "the checkpoint folder {dir} is in use by {holder}: another run is writing there. Wait \
         for it to end, or give this run another --checkpoint-dir"
    )]
    FolderInUse { dir: PathBuf, holder: String },

    #[error("{flag} {path}: {problem}")]
    Unwritable {
        flag: &'static str,
        path: PathBuf,
        problem: String,
    },

    #[error(
        "training diverged in epoch {epoch}: the {what} is {value}. Nothing was saved from this \
         epoch on (the last checkpoint and any model file are left as they were); try a lower \
         --lr (this run: {learning_rate:?})"
    )]
    Diverged {
        epoch: usize,
        what: &'static str,
        value: f64,
        learning_rate: f32,
    },

    /// Not a failure of the run: a signal stopped it, and `then` says what was kept.
    #[error("stopped by {signal} after step {steps_done}: {then}")]
    Interrupted {
        signal: &'static str,
        exit_code: u8,
        steps_done: u64,
        then: String,
    },

    /// A stop asked for through `Trainer::stop_when` came before an evaluation finished; the
    /// training state is whole.
    #[error("stopped on request before the evaluation finished")]
    Stopped,

    #[error("reading results back from the GPU failed: {0}")]
    Readback(String),

    #[error("selftest failed: {0} disagree with the CPU reference on this adapter")]
    SelftestFailed(String),

    #[error("the web page: {0}")]
    Web(String),

    #[error("{0}")]
    Config(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
