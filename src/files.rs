//! Writing what the user points at without harming it.
//!
//! A file is replaced atomically (a temporary file in the same folder, flushed and synced, then
//! renamed into place), so an interrupted run never leaves a truncated file under the final name.
//! A symbolic link is written through: its target is replaced and the link kept. A path that is
//! not a regular file (a device, a named pipe, a socket, a folder) is never replaced: outputs
//! refuse it, and a log (`AppendLog`) streams to a device or a pipe without reading it.

use std::fs::{File, Metadata};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// How many symbolic links are followed before a path is taken as a loop (Linux's limit).
const MAX_LINKS: usize = 40;

/// Replaces the file at `path` (or, through symbolic links, the file they lead to) with `bytes`,
/// atomically. Refuses a path that exists and is not a regular file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(problem) = not_a_regular_file(path) {
        return Err(Error::io(
            path,
            std::io::Error::other(format!("{problem}; not replaced")),
        ));
    }
    let existing = std::fs::metadata(path).ok();
    let target = follow_links(path).map_err(|e| Error::io(path, e))?;
    let dir = folder_of(&target);
    let mut temp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .permissions(new_file_permissions())
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    let (first_half, second_half) = bytes.split_at(bytes.len() / 2);
    temp.write_all(first_half)
        .and_then(|()| temp.flush())
        .map_err(|e| Error::io(temp.path(), e))?;
    crate::failpoint::reach(crate::failpoint::FILE_WRITE);
    temp.write_all(second_half)
        .map_err(|e| Error::io(temp.path(), e))?;
    // The result keeps the permissions of the file it replaces; a new one was created as any
    // file the user writes is (0666 less the umask), not as a private temporary file.
    if let Some(meta) = existing {
        std::fs::set_permissions(temp.path(), meta.permissions())
            .map_err(|e| Error::io(temp.path(), e))?;
    }
    temp.flush().map_err(|e| Error::io(temp.path(), e))?;
    temp.as_file()
        .sync_all()
        .map_err(|e| Error::io(temp.path(), e))?;
    temp.persist(&target)
        .map_err(|e| Error::io(&target, e.error))?;
    // Make the rename itself durable where the platform allows syncing a folder.
    if let Ok(folder) = File::open(dir) {
        let _ = folder.sync_all();
    }
    Ok(())
}

/// The mode a new file is created with before the umask: 0666, as editors and shells use.
#[cfg(unix)]
fn new_file_permissions() -> std::fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    std::fs::Permissions::from_mode(0o666)
}

#[cfg(not(unix))]
fn new_file_permissions() -> std::fs::Permissions {
    // Only the read-only flag exists here; a new file is writable.
    let file = tempfile::tempfile().expect("a temporary file");
    file.metadata().expect("its metadata").permissions()
}

/// Prefix of the temporary files `write_atomically` creates (and a killed process leaves).
pub const TEMP_PREFIX: &str = ".shadertrain-";

/// The path that `path` leads to once every symbolic link in its last component is followed
/// (the path itself when it is no link, or does not exist). A dangling link leads to where its
/// target would be created.
pub fn follow_links(path: &Path) -> std::io::Result<PathBuf> {
    let mut current = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        match std::fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = std::fs::read_link(&current)?;
                current = folder_of(&current).join(target);
            }
            _ => return Ok(current),
        }
    }
    Err(std::io::Error::other(format!(
        "more than {MAX_LINKS} symbolic links in a row (a loop?)"
    )))
}

/// What kind of thing `meta` describes, as a user would name it ("a named pipe (FIFO)").
pub fn kind_of(meta: &Metadata) -> &'static str {
    let file_type = meta.file_type();
    if file_type.is_dir() {
        return "a folder";
    }
    if file_type.is_file() {
        return "a regular file";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_char_device() {
            return "a character device";
        }
        if file_type.is_block_device() {
            return "a block device";
        }
        if file_type.is_fifo() {
            return "a named pipe (FIFO)";
        }
        if file_type.is_socket() {
            return "a socket";
        }
    }
    "not a regular file"
}

/// Why `path` is no place for a file, when it exists and is not a regular file: "that is a
/// character device, not a regular file" (or "it links to X, which is ..."). The kernel
/// resolves the links, those that are not paths too (/dev/stdout on a pipe).
fn not_a_regular_file(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path)
        .ok()
        .filter(|meta| !meta.is_file())?;
    let kind = kind_of(&meta);
    let through = follow_links(path)
        .ok()
        .filter(|target| target != path && target.exists());
    Some(match through {
        None => format!("that is {kind}, not a regular file"),
        Some(target) => format!(
            "it links to {}, which is {kind}, not a regular file",
            target.display()
        ),
    })
}

/// Why a file could not be written at `path` (checked before work that would be lost): it is
/// not a regular file (nor a link to one), its folder does not exist, or nothing can be created
/// there.
pub fn check_file_writable(path: &Path) -> Result<(), String> {
    if let Some(problem) = not_a_regular_file(path) {
        let hint = match path.is_dir() {
            true => "give a file name",
            false => "give a file's path",
        };
        return Err(format!("{problem}; {hint}"));
    }
    if let Ok(meta) = std::fs::metadata(path)
        && standard_stream_of(&meta).is_some()
    {
        return Err("that is this program's own output; give a file's path".into());
    }
    let target = follow_links(path).map_err(|e| e.to_string())?;
    let folder = folder_of(&target);
    if !folder.is_dir() {
        return Err(format!("the folder {} does not exist", folder.display()));
    }
    try_creating_a_file_in(folder)
}

/// Why lines could not be appended to `path` (checked before work that would be lost): a
/// regular file or a place to create one as `check_file_writable` says; a character device or a
/// named pipe is streamed to; a folder, a block device or a socket is refused.
pub fn check_log_writable(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(meta) if is_stream(&meta) => Ok(()),
        Ok(meta) if !meta.is_file() => Err(format!(
            "that is {}: give a file's path, or a character device or named pipe to stream to",
            kind_of(&meta)
        )),
        Ok(_) => File::options()
            .append(true)
            .open(path)
            .map(drop)
            .map_err(|e| format!("cannot append to it: {e}")),
        Err(_) => check_file_writable(path),
    }
}

/// Whether `meta` is something a log streams to rather than a file it keeps: a character
/// device (a terminal, /dev/null) or a named pipe.
fn is_stream(meta: &Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let file_type = meta.file_type();
        file_type.is_char_device() || file_type.is_fifo()
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        false
    }
}

/// Why `dir` could not be used as an output folder: it is not a folder, or the folder (or, when
/// it does not exist yet, the nearest folder above it, where it would be created) is not
/// writable.
pub fn check_folder_writable(dir: &Path) -> Result<(), String> {
    if let Ok(meta) = std::fs::metadata(dir)
        && !meta.is_dir()
    {
        return Err(format!("that is {}, not a folder", kind_of(&meta)));
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

/// Whether two output paths end at the same file: the same file on disk when both exist, else
/// the same place once links and the folder are resolved.
pub fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    if let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) {
        return same_identity(&ma, &mb);
    }
    let place = |path: &Path| -> Option<PathBuf> {
        let target = follow_links(path).ok()?;
        let folder = folder_of(&target).canonicalize().ok()?;
        Some(folder.join(target.file_name()?))
    };
    match (place(a), place(b)) {
        (Some(a), Some(b)) => a == b,
        _ => a == b,
    }
}

/// The folder a file at `path` is in ("." for a bare name).
pub fn folder_of(path: &Path) -> &Path {
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

/// A text log that lines are appended to, one write each, as they come. A regular file (or a
/// link to one) is kept whole: it is read once, to count its lines, and a line that cannot be
/// written whole is taken back. A character device or named pipe is a stream: written, never
/// read, its lines not counted.
#[derive(Debug)]
pub struct AppendLog {
    path: PathBuf,
    sink: Sink,
}

#[derive(Debug)]
enum Sink {
    /// A regular file, created at the first line when it does not exist yet.
    File {
        file: Option<File>,
        lines: usize,
        /// Whether the file's last line lacks its newline (the next line starts with one).
        unterminated: bool,
    },
    Stream(File),
}

impl AppendLog {
    /// Opens the log at `path`. A named pipe must have a reader already: a run never waits for
    /// one.
    pub fn open(path: &Path) -> Result<AppendLog> {
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(AppendLog {
                    path: path.to_path_buf(),
                    sink: Sink::File {
                        file: None,
                        lines: 0,
                        unterminated: false,
                    },
                });
            }
            Err(e) => return Err(Error::io(path, e)),
        };
        let unusable = |problem: String| Error::MetricsLog {
            path: path.to_path_buf(),
            problem,
        };
        // This process's own stdout or stderr (/dev/stdout, or the file it is redirected to):
        // written through that descriptor, sharing its position, and never counted or cut.
        if let Some(own) = standard_stream_of(&meta) {
            return Ok(AppendLog {
                path: path.to_path_buf(),
                sink: Sink::Stream(own.map_err(|e| Error::io(path, e))?),
            });
        }
        if is_stream(&meta) {
            return Ok(AppendLog {
                path: path.to_path_buf(),
                sink: Sink::Stream(open_stream(path).map_err(unusable)?),
            });
        }
        if !meta.is_file() {
            return Err(unusable(format!("that is {}", kind_of(&meta))));
        }
        let mut file = File::options()
            .read(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        let (lines, unterminated) =
            count_lines(&mut file, meta.len()).map_err(|e| Error::io(path, e))?;
        Ok(AppendLog {
            path: path.to_path_buf(),
            sink: Sink::File {
                file: Some(file),
                lines,
                unterminated,
            },
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lines in the file (complete or not); None for a stream.
    pub fn lines(&self) -> Option<usize> {
        match &self.sink {
            Sink::File { lines, .. } => Some(*lines),
            Sink::Stream(_) => None,
        }
    }

    pub fn is_stream(&self) -> bool {
        matches!(self.sink, Sink::Stream(_))
    }

    /// Removes a last line that lacks its newline (a write cut short by a crash), so that it
    /// is written again whole (a stream is left alone).
    pub fn drop_torn_last_line(&mut self) -> Result<()> {
        match &self.sink {
            Sink::File {
                lines,
                unterminated: true,
                ..
            } => self.truncate_to(lines - 1),
            _ => Ok(()),
        }
    }

    /// Keeps only the first `keep` lines of a file (a stream is left alone).
    pub fn truncate_to(&mut self, keep: usize) -> Result<()> {
        let Sink::File {
            file: Some(file),
            lines,
            unterminated,
        } = &mut self.sink
        else {
            return Ok(());
        };
        if keep >= *lines {
            return Ok(());
        }
        let path = &self.path;
        let length = byte_length_of_lines(file, keep).map_err(|e| Error::io(path, e))?;
        file.set_len(length)
            .and_then(|()| file.sync_data())
            .map_err(|e| Error::io(path, e))?;
        *lines = keep;
        *unterminated = false;
        Ok(())
    }

    /// Appends `line` and a newline in one write. A file is synced, and left as it was when the
    /// line cannot be written whole (a full disk).
    pub fn append(&mut self, line: &str) -> Result<()> {
        let path = &self.path;
        match &mut self.sink {
            Sink::Stream(stream) => stream
                .write_all(format!("{line}\n").as_bytes())
                .map_err(|e| Error::io(path, e)),
            Sink::File {
                file,
                lines,
                unterminated,
            } => {
                let file = match file {
                    Some(file) => file,
                    None => file.insert(
                        File::options()
                            .read(true)
                            .append(true)
                            .create(true)
                            .open(path)
                            .map_err(|e| Error::io(path, e))?,
                    ),
                };
                let separator = if *unterminated { "\n" } else { "" };
                let before = file.metadata().map_err(|e| Error::io(path, e))?.len();
                let written = file
                    .write_all(format!("{separator}{line}\n").as_bytes())
                    .and_then(|()| file.sync_data());
                if let Err(e) = written {
                    let _ = file.set_len(before);
                    return Err(Error::io(path, e));
                }
                *lines += 1;
                *unterminated = false;
                Ok(())
            }
        }
    }
}

/// A duplicate of this process's stdout or stderr when `meta` is the file one of them writes to.
#[cfg(unix)]
fn standard_stream_of(meta: &Metadata) -> Option<std::io::Result<File>> {
    use std::os::fd::AsFd;
    let duplicate = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned().map(File::from);
    let (stdout, stderr) = (std::io::stdout(), std::io::stderr());
    [stdout.as_fd(), stderr.as_fd()].into_iter().find_map(|fd| {
        let own = duplicate(fd).and_then(|file| file.metadata()).ok()?;
        same_identity(&own, meta).then(|| duplicate(fd))
    })
}

#[cfg(not(unix))]
fn standard_stream_of(_: &Metadata) -> Option<std::io::Result<File>> {
    None
}

/// Whether two metadata describe one file on disk.
#[cfg(unix)]
fn same_identity(a: &Metadata, b: &Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

/// Opens a character device or named pipe for writing; a pipe without a reader is refused at
/// once instead of waiting for one.
#[cfg(unix)]
fn open_stream(path: &Path) -> std::result::Result<File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let file = File::options()
        .append(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENXIO) => "no process is reading this named pipe; start its reader first \
                                  (e.g. `cat` on it), then the run"
                .to_string(),
            _ => format!("cannot write to it: {e}"),
        })?;
    // Writes then wait for a slow reader, as writes to a pipe should.
    // SAFETY: fcntl on a descriptor this function owns.
    let cleared = unsafe {
        let fd = file.as_raw_fd();
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) == 0
    };
    match cleared {
        true => Ok(file),
        false => Err(format!(
            "cannot make writes to it blocking: {}",
            std::io::Error::last_os_error()
        )),
    }
}

#[cfg(not(unix))]
fn open_stream(path: &Path) -> std::result::Result<File, String> {
    File::options()
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot write to it: {e}"))
}

/// Lines in the first `length` bytes of `file` (a last line without its newline counts), and
/// whether that last line lacks its newline. Reads no further than `length`, however the file
/// grows meanwhile.
fn count_lines(file: &mut File, length: u64) -> std::io::Result<(usize, bool)> {
    file.seek(SeekFrom::Start(0))?;
    let mut reader = std::io::BufReader::new(file.take(length));
    let mut buffer = [0u8; 1 << 16];
    let (mut newlines, mut last) = (0, None);
    loop {
        let n = reader.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        newlines += buffer[..n].iter().filter(|&&b| b == b'\n').count();
        last = Some(buffer[n - 1]);
    }
    let unterminated = last.is_some_and(|b| b != b'\n');
    Ok((newlines + usize::from(unterminated), unterminated))
}

/// The bytes the first `lines` lines of `file` take, their newlines included.
fn byte_length_of_lines(file: &mut File, lines: usize) -> std::io::Result<u64> {
    if lines == 0 {
        return Ok(0);
    }
    file.seek(SeekFrom::Start(0))?;
    let mut reader = std::io::BufReader::new(&*file);
    let mut buffer = [0u8; 1 << 16];
    let (mut offset, mut seen) = (0u64, 0);
    loop {
        let n = reader.read(&mut buffer)?;
        if n == 0 {
            return Ok(offset);
        }
        for (i, &b) in buffer[..n].iter().enumerate() {
            if b == b'\n' {
                seen += 1;
                if seen == lines {
                    return Ok(offset + i as u64 + 1);
                }
            }
        }
        offset += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_counts_its_lines_finishes_a_torn_one_and_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        std::fs::write(&path, "a\nb\nc").unwrap();
        let mut log = AppendLog::open(&path).unwrap();
        assert_eq!(log.lines(), Some(3));
        log.append("d").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a\nb\nc\nd\n");
        log.truncate_to(2).unwrap();
        log.append("e").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a\nb\ne\n");
        assert_eq!(log.lines(), Some(3));
    }

    #[test]
    fn a_torn_last_line_is_dropped_to_be_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        std::fs::write(&path, "{\"epoch\":1}\n{\"epo").unwrap();
        let mut log = AppendLog::open(&path).unwrap();
        assert_eq!(log.lines(), Some(2));
        log.drop_torn_last_line().unwrap();
        assert_eq!(log.lines(), Some(1));
        log.append("{\"epoch\":2}").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"epoch\":1}\n{\"epoch\":2}\n"
        );
        // A whole last line stays.
        log.drop_torn_last_line().unwrap();
        assert_eq!(log.lines(), Some(2));
    }

    #[test]
    fn a_new_log_is_created_at_its_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let mut log = AppendLog::open(&path).unwrap();
        assert!(!path.exists());
        log.append("x").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "x\n");
    }

    #[cfg(unix)]
    #[test]
    fn writing_through_a_link_replaces_its_target_and_keeps_the_link() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target.bin");
        let link = dir.path().join("link.bin");
        std::fs::write(&target, b"old").unwrap();
        std::os::unix::fs::symlink("target.bin", &link).unwrap();
        write_atomically(&link, b"new").unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        // A dangling link is written through too: its target is created.
        std::os::unix::fs::symlink("new.bin", dir.path().join("dangling")).unwrap();
        write_atomically(&dir.path().join("dangling"), b"made").unwrap();
        assert_eq!(std::fs::read(dir.path().join("new.bin")).unwrap(), b"made");
        assert!(same_file(&link, &target));
        assert!(!same_file(&link, &dir.path().join("new.bin")));
    }
}
