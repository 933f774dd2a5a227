//! SIGINT and SIGTERM during training: the first asks the run to stop at the next chunk
//! boundary and save what it has; a second ends the process at once, as the default would.
//! Each says so on stderr the moment it arrives, the second with what was kept.
//!
//! Our own `sigaction` handler, installed after the GPU is set up, replaces any handler a
//! driver installed before (lavapipe's LLVM installs one that restores the default and raises
//! the signal again, which would end the process at the first signal). It does not chain.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, Ordering};

use shadertrain::Result;

/// A signal that asked the run to stop.
#[derive(Clone, Copy, Debug)]
pub struct Received {
    pub name: &'static str,
    /// What a shell reports for a process the signal ended: 128 + its number.
    pub exit_code: u8,
}

/// The first stop signal's number, 0 until one arrives.
static FIRST_SIGNAL: AtomicI32 = AtomicI32::new(0);
/// The flag the trainer watches; a leaked `Arc` so that the handler only loads a pointer.
static STOP_FLAG: AtomicPtr<AtomicBool> = AtomicPtr::new(std::ptr::null_mut());
/// What a second signal says was kept (see `say_what_is_kept`): a leaked line, never freed.
static KEPT: AtomicPtr<Vec<u8>> = AtomicPtr::new(std::ptr::null_mut());

/// Sets what a second signal, which ends the process at once, says was kept. Called rarely
/// (when the run starts, at its first checkpoint): each call leaks its line, since a handler
/// may be reading the one before.
pub fn say_what_is_kept(line: String) {
    let leaked = Box::into_raw(Box::new(line.into_bytes()));
    KEPT.store(leaked, Ordering::SeqCst);
}

/// Writes `bytes` to stderr from a signal handler (write(2) is async-signal-safe).
#[cfg(unix)]
fn write_to_stderr(bytes: &[u8]) {
    // SAFETY: write on fd 2 with a valid buffer; a failure is ignored (nothing else can be done).
    unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
}

/// Async-signal-safe: atomics, write(2) and `_exit` only.
#[cfg(unix)]
extern "C" fn on_stop_signal(signal: libc::c_int) {
    let name: &[u8] = match signal {
        libc::SIGINT => b"SIGINT",
        _ => b"SIGTERM",
    };
    if FIRST_SIGNAL
        .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        write_to_stderr(b"\n");
        write_to_stderr(name);
        write_to_stderr(b" again: exiting at once; ");
        let kept = KEPT.load(Ordering::SeqCst);
        if !kept.is_null() {
            // SAFETY: the pointer comes from a leaked Box and is never freed or changed.
            write_to_stderr(unsafe { &*kept });
        }
        write_to_stderr(b"\n");
        // SAFETY: _exit is async-signal-safe and ends the process without unwinding.
        unsafe { libc::_exit(128 + signal) };
    }
    write_to_stderr(b"\n");
    write_to_stderr(name);
    write_to_stderr(
        b": stopping after the steps under way and saving the run (send it again to exit at once)\n",
    );
    let flag = STOP_FLAG.load(Ordering::SeqCst);
    if !flag.is_null() {
        // SAFETY: the pointer comes from a leaked Arc and is never freed.
        unsafe { (*flag).store(true, Ordering::SeqCst) };
    }
}

/// The handlers, once installed.
pub struct Interrupt {
    requested: Arc<AtomicBool>,
}

#[cfg(unix)]
const STOP_SIGNALS: [(libc::c_int, &str); 2] =
    [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM")];

impl Interrupt {
    /// Installs the handlers (on Unix; elsewhere the default stays and no stop is requested).
    pub fn register() -> Result<Interrupt> {
        let requested = Arc::new(AtomicBool::new(false));
        // Leaked: a handler may read it at any moment, for the rest of the process.
        STOP_FLAG.store(
            Arc::into_raw(requested.clone()).cast_mut(),
            Ordering::SeqCst,
        );
        #[cfg(unix)]
        for (signal, name) in STOP_SIGNALS {
            // SAFETY: a zeroed sigaction with a handler and an empty mask is valid; the handler
            // is async-signal-safe.
            let installed = unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as usize;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(signal, &action, std::ptr::null_mut())
            };
            if installed != 0 {
                return Err(shadertrain::Error::Config(format!(
                    "cannot handle {name} for training: {}",
                    std::io::Error::last_os_error()
                )));
            }
        }
        Ok(Interrupt { requested })
    }

    /// Set by the first stop signal.
    pub fn requested(&self) -> Arc<AtomicBool> {
        self.requested.clone()
    }

    /// The first stop signal, if one arrived.
    pub fn received(&self) -> Option<Received> {
        let signal = FIRST_SIGNAL.load(Ordering::SeqCst);
        #[cfg(unix)]
        for (number, name) in STOP_SIGNALS {
            if number == signal {
                return Some(Received {
                    name,
                    exit_code: 128 + number as u8,
                });
            }
        }
        let _ = signal;
        None
    }
}
