//! Printing for the commands: a closed pipe on stdout or stderr (`shadertrain eval | head -1`)
//! ends the process quietly, as it ends Unix tools, instead of a panic ("failed printing to
//! stdout: Broken pipe", exit 101). Other write errors (a full disk under `> file`) are ignored:
//! the run's own files are its record.

use std::io::Write;

/// Writes `text` to `stream`, or ends the process as SIGPIPE would when the reader is gone.
pub fn write(mut stream: impl Write, text: std::fmt::Arguments<'_>) {
    let written = stream.write_fmt(text).and_then(|()| stream.flush());
    if let Err(e) = written
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        end_as_by_sigpipe();
    }
}

fn end_as_by_sigpipe() -> ! {
    // SAFETY: restoring the default action and raising the signal ends the process the way a
    // closed pipe ends any program that has not ignored SIGPIPE (Rust's runtime ignores it).
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    std::process::exit(141)
}
