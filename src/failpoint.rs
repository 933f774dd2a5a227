//! Named moments where a test can freeze the process so that it can SIGKILL it exactly there
//! (the resume tests kill a run in the middle of writing a checkpoint, for instance).
//!
//! Inert unless the environment variable `SHADERTRAIN_STALL_AT` is `NAME:N`: the N-th time
//! (counting from 1) the process reaches the point NAME, it writes `stalled at NAME` to stderr
//! and sleeps until killed.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

pub const STALL_ENV: &str = "SHADERTRAIN_STALL_AT";

/// Inside an atomic file write: half the bytes are in the temporary file, not yet renamed.
pub const FILE_WRITE: &str = "file-write";
/// After an epoch's evaluation, before its checkpoint.
pub const EPOCH_END: &str = "epoch-end";

fn target() -> Option<&'static (String, usize)> {
    static TARGET: OnceLock<Option<(String, usize)>> = OnceLock::new();
    TARGET
        .get_or_init(|| {
            let spec = std::env::var(STALL_ENV).ok()?;
            let (name, count) = spec.rsplit_once(':')?;
            Some((name.to_string(), count.parse().ok()?))
        })
        .as_ref()
}

/// Marks that the process has reached `point`; stalls there forever if the environment asks.
pub fn reach(point: &str) {
    static REACHED: AtomicUsize = AtomicUsize::new(0);
    let Some((name, count)) = target() else {
        return;
    };
    if name == point && REACHED.fetch_add(1, Ordering::SeqCst) + 1 == *count {
        eprintln!("stalled at {point}");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}
