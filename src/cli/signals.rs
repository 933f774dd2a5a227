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

/// A line assembled in a signal handler, on the stack (no allocation), written in one write(2).
#[cfg(unix)]
struct HandlerLine {
    bytes: [u8; 1024],
    len: usize,
}

#[cfg(unix)]
impl HandlerLine {
    fn new() -> Self {
        HandlerLine {
            bytes: [0; 1024],
            len: 0,
        }
    }

    /// Appends what fits.
    fn push(&mut self, text: &[u8]) {
        let room = self.bytes.len() - self.len;
        let n = text.len().min(room);
        self.bytes[self.len..self.len + n].copy_from_slice(&text[..n]);
        self.len += n;
    }

    /// Writes the line to stderr: one write(2), async-signal-safe; a failure is ignored.
    fn write(&self) {
        // SAFETY: write on fd 2 with a valid buffer of `len` bytes.
        unsafe { libc::write(2, self.bytes.as_ptr().cast(), self.len) };
    }
}

/// Where the calling thread's errno is, which a handler must leave as it found it (None where
/// this file does not know how to find it).
#[cfg(unix)]
fn errno_location() -> Option<*mut libc::c_int> {
    // SAFETY: these return the calling thread's errno slot.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    return Some(unsafe { libc::__errno_location() });
    #[cfg(any(target_os = "macos", target_os = "ios", target_os = "freebsd"))]
    return Some(unsafe { libc::__error() });
    #[allow(unreachable_code)]
    None
}

/// Async-signal-safe: atomics, write(2) and `_exit` only; errno is kept.
#[cfg(unix)]
extern "C" fn on_stop_signal(signal: libc::c_int) {
    let errno = errno_location();
    // SAFETY: the slot is the thread's own; read now, restored before returning.
    let saved_errno = errno.map(|slot| unsafe { *slot });
    let name: &[u8] = match signal {
        libc::SIGINT => b"SIGINT",
        _ => b"SIGTERM",
    };
    let mut line = HandlerLine::new();
    if FIRST_SIGNAL
        .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        line.push(b"\n");
        line.push(name);
        line.push(b" again: exiting at once; ");
        let kept = KEPT.load(Ordering::SeqCst);
        if !kept.is_null() {
            // SAFETY: the pointer comes from a leaked Box and is never freed or changed.
            line.push(unsafe { &*kept });
        }
        line.push(b"\n");
        line.write();
        // SAFETY: _exit is async-signal-safe and ends the process without unwinding.
        unsafe { libc::_exit(128 + signal) };
    }
    // The stop first: a write blocked on a full stderr must not hold it back.
    let flag = STOP_FLAG.load(Ordering::SeqCst);
    if !flag.is_null() {
        // SAFETY: the pointer comes from a leaked Arc and is never freed.
        unsafe { (*flag).store(true, Ordering::SeqCst) };
    }
    line.push(b"\n");
    line.push(name);
    line.push(
        b": stopping after the steps under way and saving the run (send it again to exit at once)\n",
    );
    line.write();
    if let (Some(slot), Some(value)) = (errno, saved_errno) {
        // SAFETY: as above.
        unsafe { *slot = value };
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
