//! Named moments where a test can freeze the process, to SIGKILL it exactly there, or have it
//! signal itself (the resume tests kill or stop a run in the middle of writing a checkpoint).
//!
//! Inert unless the environment variable `SHADERTRAIN_STALL_AT` is `NAME:N`: the N-th time
//! (counting from 1) the process reaches the point NAME, it writes `stalled at NAME` to stderr
//! and sleeps until killed. Or `SHADERTRAIN_RAISE_AT` is `NAME:N:SIGNAL[:TIMES]`: there the
//! process sends itself the signal (a number) TIMES times (default 1), as a user or a job
//! scheduler would, at a moment a test chooses.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

pub const STALL_ENV: &str = "SHADERTRAIN_STALL_AT";

/// Inside an atomic file write: half the bytes are in the temporary file, not yet renamed.
pub const FILE_WRITE: &str = "file-write";
/// After an epoch's evaluation, before its checkpoint.
pub const EPOCH_END: &str = "epoch-end";

/// After a chunk of training steps is submitted to the GPU.
pub const CHUNK_SUBMITTED: &str = "chunk-submitted";

/// After a chunk of an evaluation (not its last) is submitted to the GPU.
pub const EVALUATION_CHUNK: &str = "evaluation-chunk";

pub const RAISE_ENV: &str = "SHADERTRAIN_RAISE_AT";

/// What the environment asks: the point, the count, and for RAISE_ENV the signal and repeats.
type Target = (String, usize, Option<(i32, usize)>);

fn target() -> Option<&'static Target> {
    static TARGET: OnceLock<Option<Target>> = OnceLock::new();
    TARGET
        .get_or_init(|| {
            if let Ok(spec) = std::env::var(STALL_ENV) {
                let (name, count) = spec.rsplit_once(':')?;
                return Some((name.to_string(), count.parse().ok()?, None));
            }
            let spec = std::env::var(RAISE_ENV).ok()?;
            let parts: Vec<&str> = spec.split(':').collect();
            let times = parts.get(3).map_or(Some(1), |t| t.parse().ok())?;
            Some((
                parts.first()?.to_string(),
                parts.get(1)?.parse().ok()?,
                Some((parts.get(2)?.parse().ok()?, times)),
            ))
        })
        .as_ref()
}

/// Marks that the process has reached `point`; stalls there forever, or raises a signal, if
/// the environment asks.
pub fn reach(point: &str) {
    static REACHED: AtomicUsize = AtomicUsize::new(0);
    let Some((name, count, raise)) = target() else {
        return;
    };
    if name == point && REACHED.fetch_add(1, Ordering::SeqCst) + 1 == *count {
        if let Some((signal, times)) = raise {
            #[cfg(not(unix))]
            let _ = (signal, times);
            #[cfg(unix)]
            for _ in 0..*times {
                // SAFETY: raise only sends a signal to this process.
                unsafe { libc::raise(*signal) };
            }
            return;
        }
        eprintln!("stalled at {point}");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}
