//! Fetching dataset files from a list of mirrors. Each file is streamed into a temporary file in
//! the target folder, verified by the MD5 of its decompressed content, synced, then renamed into
//! place: a failure or a bad mirror never leaves a partial file under the final name.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use flate2::read::GzDecoder;
use md5::{Digest, Md5};

use super::idx::GZIP_MAGIC;
#[cfg(not(target_arch = "wasm32"))]
use crate::error::{Error, Result};
#[cfg(not(target_arch = "wasm32"))]
use std::io::Write;

/// One file of a dataset: fetched as `<mirror><stem>.gz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    pub stem: String,
    /// Hex MD5 of the decompressed content.
    pub md5: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Base URLs, tried in order.
    pub mirrors: Vec<String>,
    pub files: Vec<RemoteFile>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadOptions {
    /// Limit on opening a connection.
    pub connect_timeout: Duration,
    /// Limit on any single read: a mirror that sends nothing for this long is abandoned.
    pub stall_timeout: Duration,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            connect_timeout: Duration::from_secs(15),
            stall_timeout: Duration::from_secs(30),
        }
    }
}

/// What happens during a download, for a caller that shows progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownloadEvent<'a> {
    AlreadyPresent {
        file: &'a str,
    },
    Started {
        file: &'a str,
        url: &'a str,
        bytes: Option<u64>,
    },
    Progress {
        file: &'a str,
        received: u64,
    },
    MirrorFailed {
        file: &'a str,
        url: &'a str,
        reason: &'a str,
    },
    Verified {
        file: &'a str,
        url: &'a str,
    },
}

/// No dataset file is anywhere near this; a mirror sending more is refused.
#[cfg(not(target_arch = "wasm32"))]
const MAX_FILE_BYTES: u64 = 256 << 20;

/// Hex MD5 of a file's content, decompressed first when it is gzip.
pub fn content_md5(path: &Path) -> std::io::Result<String> {
    file_md5(path, true)
}

/// Hex MD5 of a file's bytes, decompressed first where `decompress` and it is gzip.
fn file_md5(path: &Path, decompress: bool) -> std::io::Result<String> {
    let file = BufReader::new(File::open(path)?);
    let mut content: Box<dyn Read> = if decompress && is_gzip(path)? {
        Box::new(GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut hasher = Md5::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        match content.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(super::idx::hex(&hasher.finalize()))
}

fn is_gzip(path: &Path) -> std::io::Result<bool> {
    let mut magic = Vec::with_capacity(2);
    File::open(path)?.take(2).read_to_end(&mut magic)?;
    Ok(magic == GZIP_MAGIC)
}

/// The file in `dir` holding `stem`, gzip or raw, if there is one.
pub fn existing_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    [dir.join(format!("{stem}.gz")), dir.join(stem)]
        .into_iter()
        .find(|p| p.is_file())
}

#[cfg(not(target_arch = "wasm32"))]
/// Makes `dir` hold every file of `source`, verified; files already there and correct are kept.
pub fn download(
    source: &Source,
    dir: &Path,
    options: &DownloadOptions,
    on_event: &mut dyn FnMut(DownloadEvent),
) -> Result<()> {
    in_new_folders(dir, || download_into(source, dir, options, on_event))
}

#[cfg(not(target_arch = "wasm32"))]
/// Makes `dir` (and the folders above it that are missing), then runs `work`; when it fails,
/// the folders made here go again where `work` left them empty.
fn in_new_folders(dir: &Path, work: impl FnOnce() -> Result<()>) -> Result<()> {
    // The folders this call makes (data/ and data/mnist/, say), deepest first.
    let created: Vec<&Path> = dir
        .ancestors()
        .filter(|a| !a.as_os_str().is_empty())
        .take_while(|a| !a.exists())
        .collect();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let result = work();
    if result.is_err() {
        // Only succeeds while empty: folders this call made and filled with nothing go again.
        for folder in created {
            let _ = std::fs::remove_dir(folder);
        }
    }
    result
}

#[cfg(not(target_arch = "wasm32"))]
/// An HTTP agent with the download's time limits.
fn agent(options: &DownloadOptions) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(options.connect_timeout)
        .timeout_read(options.stall_timeout)
        .build()
}

#[cfg(not(target_arch = "wasm32"))]
fn download_into(
    source: &Source,
    dir: &Path,
    options: &DownloadOptions,
    on_event: &mut dyn FnMut(DownloadEvent),
) -> Result<()> {
    let agent = agent(options);
    for file in &source.files {
        if let Some(path) = existing_file(dir, &file.stem)
            && content_md5(&path).is_ok_and(|md5| md5 == file.md5)
        {
            on_event(DownloadEvent::AlreadyPresent { file: &file.stem });
            continue;
        }
        let mut failures = Vec::new();
        let mut done = false;
        for mirror in &source.mirrors {
            let url = format!("{}/{}.gz", mirror.trim_end_matches('/'), file.stem);
            match fetch(&agent, &url, dir, file, on_event)? {
                Ok(()) => {
                    on_event(DownloadEvent::Verified {
                        file: &file.stem,
                        url: &url,
                    });
                    done = true;
                    break;
                }
                Err(reason) => {
                    on_event(DownloadEvent::MirrorFailed {
                        file: &file.stem,
                        url: &url,
                        reason: &reason,
                    });
                    failures.push(format!("{url}: {reason}"));
                }
            }
        }
        if !done {
            let stems: Vec<&str> = source.files.iter().map(|f| f.stem.as_str()).collect();
            return Err(Error::Download {
                file: file.stem.clone(),
                dir: dir.to_path_buf(),
                attempts: failures.join("; "),
                needed: match &stems[..] {
                    [one] => format!("the file {one}"),
                    [first, second] => format!("the files {first} and {second}"),
                    all => format!("the {} IDX files", all.len()),
                },
            });
        }
    }
    Ok(())
}

#[cfg(not(target_arch = "wasm32"))]
/// `url` streamed into a temporary file in `dir`, whole (as long as announced), for the file
/// `name`; errors as `fetch`'s.
fn stream(
    agent: &ureq::Agent,
    url: &str,
    dir: &Path,
    name: &str,
    on_event: &mut dyn FnMut(DownloadEvent),
) -> Result<Result<tempfile::NamedTempFile, String>> {
    let response = match agent.get(url).call() {
        Ok(response) => response,
        Err(ureq::Error::Status(code, response)) => {
            return Ok(Err(format!("HTTP {code} {}", response.status_text())));
        }
        // ureq's message starts with the URL, which the caller already names.
        Err(e) => {
            let message = e.to_string();
            let reason = message
                .strip_prefix(&format!("{url}: "))
                .unwrap_or(&message);
            return Ok(Err(reason.to_string()));
        }
    };
    let expected_bytes = response
        .header("Content-Length")
        .and_then(|v| v.parse::<u64>().ok());
    on_event(DownloadEvent::Started {
        file: name,
        url,
        bytes: expected_bytes,
    });
    if expected_bytes.is_some_and(|b| b > MAX_FILE_BYTES) {
        return Ok(Err(format!(
            "announces {} bytes, more than any dataset file",
            expected_bytes.unwrap_or_default()
        )));
    }
    let mut temp = tempfile::Builder::new()
        .prefix(".download-")
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    let mut reader = response.into_reader().take(MAX_FILE_BYTES + 1);
    let mut buffer = vec![0u8; 1 << 16];
    let mut received = 0u64;
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                ) =>
            {
                return Ok(Err(format!("stalled after {received} bytes: {e}")));
            }
            Err(e) => return Ok(Err(format!("failed after {received} bytes: {e}"))),
        };
        temp.write_all(&buffer[..n])
            .map_err(|e| Error::io(temp.path(), e))?;
        received += n as u64;
        on_event(DownloadEvent::Progress {
            file: name,
            received,
        });
    }
    if received > MAX_FILE_BYTES {
        return Ok(Err("sent more bytes than any dataset file has".into()));
    }
    if let Some(expected) = expected_bytes.filter(|&b| b != received) {
        return Ok(Err(format!(
            "truncated: received {received} of {expected} bytes"
        )));
    }
    temp.flush().map_err(|e| Error::io(temp.path(), e))?;
    Ok(Ok(temp))
}

#[cfg(not(target_arch = "wasm32"))]
/// One attempt from one mirror. The outer error is local (the folder cannot be written) and
/// ends the download; the inner one is the mirror's fault, and the next mirror is tried.
fn fetch(
    agent: &ureq::Agent,
    url: &str,
    dir: &Path,
    file: &RemoteFile,
    on_event: &mut dyn FnMut(DownloadEvent),
) -> Result<Result<(), String>> {
    let temp = match stream(agent, url, dir, &file.stem, on_event)? {
        Ok(temp) => temp,
        Err(reason) => return Ok(Err(reason)),
    };
    match content_md5(temp.path()) {
        Ok(md5) if md5 == file.md5 => {}
        Ok(md5) => {
            return Ok(Err(format!(
                "checksum mismatch: decompressed content has MD5 {md5}, expected {}",
                file.md5
            )));
        }
        Err(e) => return Ok(Err(format!("unreadable content: {e}"))),
    }
    temp.as_file()
        .sync_all()
        .map_err(|e| Error::io(temp.path(), e))?;
    let gzip = is_gzip(temp.path()).map_err(|e| Error::io(temp.path(), e))?;
    let (name, other) = if gzip {
        (format!("{}.gz", file.stem), file.stem.clone())
    } else {
        (file.stem.clone(), format!("{}.gz", file.stem))
    };
    let target = dir.join(name);
    temp.persist(&target)
        .map_err(|e| Error::io(&target, e.error))?;
    // A stale copy under the other name (which failed its checksum) would shadow this one.
    match std::fs::remove_file(dir.join(&other)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(Error::io(dir.join(other), e));
        }
        _ => {}
    }
    Ok(Ok(()))
}

/// A dataset published as one archive (a gzip-compressed tar), fetched as `<mirror><name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteArchive {
    pub mirrors: Vec<String>,
    pub name: String,
    /// Hex MD5 of the archive's bytes, as published.
    pub md5: String,
    /// Its published size.
    pub bytes: u64,
    /// The folder inside it whose files are unpacked (nothing else is).
    pub keep_under: String,
}

#[cfg(not(target_arch = "wasm32"))]
/// Makes `dir` hold `archive`, verified by its MD5 (kept as `dir/<name>`; an existing correct
/// copy is used), unpacked: the files under its `keep_under/` into `dir/keep_under/`, each
/// written through a temporary file. A failure leaves no partial file under a final name, and
/// removes the folders this call made.
pub fn download_archive(
    archive: &RemoteArchive,
    dir: &Path,
    options: &DownloadOptions,
    on_event: &mut dyn FnMut(DownloadEvent),
) -> Result<()> {
    in_new_folders(dir, || {
        fetch_archive(archive, dir, options, on_event).and_then(|()| unpack(archive, dir))
    })
}

#[cfg(not(target_arch = "wasm32"))]
fn fetch_archive(
    archive: &RemoteArchive,
    dir: &Path,
    options: &DownloadOptions,
    on_event: &mut dyn FnMut(DownloadEvent),
) -> Result<()> {
    let target = dir.join(&archive.name);
    if target.is_file() && file_md5(&target, false).is_ok_and(|md5| md5 == archive.md5) {
        on_event(DownloadEvent::AlreadyPresent {
            file: &archive.name,
        });
        return Ok(());
    }
    let agent = agent(options);
    let mut failures = Vec::new();
    for mirror in &archive.mirrors {
        let url = format!("{}/{}", mirror.trim_end_matches('/'), archive.name);
        let outcome = match stream(&agent, &url, dir, &archive.name, on_event)? {
            Err(reason) => Err(reason),
            Ok(temp) => match file_md5(temp.path(), false) {
                Ok(md5) if md5 == archive.md5 => {
                    temp.as_file()
                        .sync_all()
                        .map_err(|e| Error::io(temp.path(), e))?;
                    temp.persist(&target)
                        .map_err(|e| Error::io(&target, e.error))?;
                    Ok(())
                }
                Ok(md5) => Err(format!(
                    "checksum mismatch: the archive has MD5 {md5}, expected {} (the published \
                     one)",
                    archive.md5
                )),
                Err(e) => Err(format!("unreadable: {e}")),
            },
        };
        match outcome {
            Ok(()) => {
                on_event(DownloadEvent::Verified {
                    file: &archive.name,
                    url: &url,
                });
                return Ok(());
            }
            Err(reason) => {
                on_event(DownloadEvent::MirrorFailed {
                    file: &archive.name,
                    url: &url,
                    reason: &reason,
                });
                failures.push(format!("{url}: {reason}"));
            }
        }
    }
    Err(Error::Download {
        file: archive.name.clone(),
        dir: dir.to_path_buf(),
        attempts: failures.join("; "),
        needed: format!("the archive {} ({} bytes)", archive.name, archive.bytes),
    })
}

#[cfg(not(target_arch = "wasm32"))]
/// The files under `keep_under/` of the verified archive in `dir`, unpacked into a temporary
/// folder, then moved into `dir/keep_under/` one by one.
fn unpack(archive: &RemoteArchive, dir: &Path) -> Result<()> {
    let path = dir.join(&archive.name);
    let bad = |problem: String| Error::Dataset {
        dir: dir.to_path_buf(),
        problem: format!("{}: {problem}", archive.name),
    };
    let staging = tempfile::Builder::new()
        .prefix(".unpack-")
        .tempdir_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
    let mut tar = tar::Archive::new(GzDecoder::new(BufReader::new(file)));
    let mut unpacked = Vec::new();
    let entries = tar
        .entries()
        .map_err(|e| bad(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("damaged: {e}")))?;
        let name = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
        let inside = name.strip_prefix(&archive.keep_under).ok().filter(|rest| {
            rest.components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
                && rest.components().count() == 1
        });
        let (Some(rest), true) = (inside, entry.header().entry_type().is_file()) else {
            continue;
        };
        let target = staging.path().join(rest);
        let mut out = File::create(&target).map_err(|e| Error::io(&target, e))?;
        std::io::copy(&mut entry, &mut out).map_err(|e| bad(format!("damaged: {e}")))?;
        out.sync_all().map_err(|e| Error::io(&target, e))?;
        unpacked.push(rest.to_path_buf());
    }
    if unpacked.is_empty() {
        return Err(bad(format!("holds no files under {}/", archive.keep_under)));
    }
    let final_dir = dir.join(&archive.keep_under);
    std::fs::create_dir_all(&final_dir).map_err(|e| Error::io(&final_dir, e))?;
    for rest in unpacked {
        let target = final_dir.join(&rest);
        std::fs::rename(staging.path().join(&rest), &target).map_err(|e| Error::io(&target, e))?;
    }
    Ok(())
}
