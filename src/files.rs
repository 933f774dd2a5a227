//! Writing files so that an interrupted run never leaves a truncated file under the final name:
//! write a temporary file in the same folder, flush and sync it, then rename it into place.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Replaces `path` with `bytes`, atomically.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = folder_of(path);
    let mut temp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    let (first_half, second_half) = bytes.split_at(bytes.len() / 2);
    temp.write_all(first_half)
        .and_then(|()| temp.flush())
        .map_err(|e| Error::io(temp.path(), e))?;
    crate::failpoint::reach(crate::failpoint::FILE_WRITE);
    temp.write_all(second_half)
        .map_err(|e| Error::io(temp.path(), e))?;
    // Temporary files are private (0600); the result should read like any file the user writes.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let permissions = std::fs::Permissions::from_mode(0o644);
        std::fs::set_permissions(temp.path(), permissions)
            .map_err(|e| Error::io(temp.path(), e))?;
    }
    temp.flush().map_err(|e| Error::io(temp.path(), e))?;
    temp.as_file()
        .sync_all()
        .map_err(|e| Error::io(temp.path(), e))?;
    temp.persist(path).map_err(|e| Error::io(path, e.error))?;
    // Make the rename itself durable where the platform allows syncing a folder.
    if let Ok(folder) = std::fs::File::open(dir) {
        let _ = folder.sync_all();
    }
    Ok(())
}

/// Prefix of the temporary files `write_atomically` creates (and a killed process leaves).
pub const TEMP_PREFIX: &str = ".shadertrain-";

/// Appends one line to a text file, rewriting it atomically (the file stays whole at every moment).
pub fn append_line_atomically(path: &Path, line: &str) -> Result<()> {
    let mut content = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io(path, e)),
    };
    if !content.is_empty() && !content.ends_with(b"\n") {
        content.push(b'\n');
    }
    content.extend_from_slice(line.as_bytes());
    content.push(b'\n');
    write_atomically(path, &content)
}

/// Why a file could not be written at `path` (checked before work that would be lost): it is a
/// folder, its folder does not exist, or nothing can be created there.
pub fn check_file_writable(path: &Path) -> Result<(), String> {
    if path.is_dir() {
        return Err("that is a folder; give a file name".into());
    }
    let folder = folder_of(path);
    if !folder.is_dir() {
        return Err(format!("the folder {} does not exist", folder.display()));
    }
    try_creating_a_file_in(folder)
}

/// Why `dir` could not be used as an output folder: it is a file, or the folder (or, when it
/// does not exist yet, the nearest folder above it, where it would be created) is not writable.
pub fn check_folder_writable(dir: &Path) -> Result<(), String> {
    if dir.exists() && !dir.is_dir() {
        return Err("that is a file, not a folder".into());
    }
    let existing = dir
        .ancestors()
        .map(|a| {
            if a.as_os_str().is_empty() {
                Path::new(".")
            } else {
                a
            }
        })
        .find(|a| a.is_dir())
        .unwrap_or(Path::new("."));
    try_creating_a_file_in(existing)
}

fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn try_creating_a_file_in(folder: &Path) -> Result<(), String> {
    tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(folder)
        .map(drop)
        .map_err(|e| format!("cannot write in {}: {e}", folder.display()))
}
