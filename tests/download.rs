//! Downloads from a loopback HTTP server (127.0.0.1, port 0) whose mirrors misbehave in each way
//! a real one can: missing file, corrupted content, truncated body, stalled connection.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use flate2::Compression;
use flate2::write::GzEncoder;
use shadertrain::data::catalog::{DatasetKind, FILE_STEMS};
use shadertrain::data::cifar;
use shadertrain::data::download::{
    DownloadEvent, DownloadOptions, RemoteArchive, RemoteFile, Source, content_md5, download,
    download_archive,
};
use shadertrain::data::idx::encode_idx_u8;
use shadertrain::data::{Dataset, Split};

#[derive(Clone)]
enum Reply {
    Body(Vec<u8>),
    /// Announces the whole body, sends half, closes.
    Truncated(Vec<u8>),
    /// Sends the headers and a few bytes, then nothing for 3 s.
    Stall(Vec<u8>),
}

/// Serves `routes` (path → reply; anything else is a 404) on a loopback port, for at most
/// 200 connections; returns the base URL.
fn serve(routes: HashMap<String, Reply>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let routes = Arc::new(routes);
    std::thread::spawn(move || {
        for stream in listener.incoming().take(200).flatten() {
            let routes = routes.clone();
            std::thread::spawn(move || respond(stream, &routes));
        }
    });
    base
}

fn respond(mut stream: TcpStream, routes: &HashMap<String, Reply>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
            break;
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string();
    let head = |len: usize| {
        format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
    };
    let _ = match routes.get(&path) {
        None => stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        Some(Reply::Body(body)) => stream
            .write_all(head(body.len()).as_bytes())
            .and_then(|_| stream.write_all(body)),
        Some(Reply::Truncated(body)) => stream
            .write_all(head(body.len()).as_bytes())
            .and_then(|_| stream.write_all(&body[..body.len() / 2])),
        Some(Reply::Stall(body)) => {
            let sent = stream
                .write_all(head(body.len()).as_bytes())
                .and_then(|_| stream.write_all(&body[..10.min(body.len())]))
                .and_then(|_| stream.flush());
            std::thread::sleep(Duration::from_secs(3));
            sent
        }
    };
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn md5_of(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, bytes).unwrap();
    content_md5(&path).unwrap()
}

/// Two small IDX files, their remote description, and their gzip bytes.
fn synthetic_files() -> Vec<(RemoteFile, Vec<u8>)> {
    [
        (
            "train-images-idx3-ubyte",
            encode_idx_u8(&[300, 4, 4], &[9; 4800]),
        ),
        ("train-labels-idx1-ubyte", encode_idx_u8(&[300], &[3; 300])),
    ]
    .into_iter()
    .map(|(stem, raw)| {
        let file = RemoteFile {
            stem: stem.to_string(),
            md5: md5_of(&raw),
        };
        (file, gzip(&raw))
    })
    .collect()
}

fn corrupted(gz: &[u8]) -> Vec<u8> {
    let mut bytes = gz.to_vec();
    let n = bytes.len();
    bytes[n - 12] ^= 0xff; // inside the deflate data / CRC
    bytes
}

fn routes_for(
    files: &[(RemoteFile, Vec<u8>)],
    mirror: &str,
    make: impl Fn(&[u8]) -> Reply,
) -> HashMap<String, Reply> {
    files
        .iter()
        .map(|(f, gz)| (format!("/{mirror}/{}.gz", f.stem), make(gz)))
        .collect()
}

fn options() -> DownloadOptions {
    DownloadOptions {
        connect_timeout: Duration::from_secs(2),
        stall_timeout: Duration::from_millis(500),
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn bad_mirrors_are_reported_and_the_good_one_is_used() {
    let files = synthetic_files();
    let mut routes = routes_for(&files, "good", |gz| Reply::Body(gz.to_vec()));
    routes.extend(routes_for(&files, "corrupt", |gz| {
        Reply::Body(corrupted(gz))
    }));
    routes.extend(routes_for(&files, "truncated", |gz| {
        Reply::Truncated(gz.to_vec())
    }));
    routes.extend(routes_for(&files, "stall", |gz| Reply::Stall(gz.to_vec())));
    let base = serve(routes);
    let source = Source {
        mirrors: ["missing", "corrupt", "truncated", "stall", "good"]
            .iter()
            .map(|m| format!("{base}/{m}/"))
            .collect(),
        files: files.iter().map(|(f, _)| f.clone()).collect(),
    };
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    download(&source, dir.path(), &options(), &mut |event| {
        if let DownloadEvent::MirrorFailed { url, reason, .. } = event {
            failures.push(format!("{url}: {reason}"));
        }
    })
    .unwrap();
    assert_eq!(
        names_in(dir.path()),
        vec!["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    );
    assert_eq!(failures.len(), 8, "{failures:#?}");
    for (mirror, why) in [
        ("missing", "404"),
        ("corrupt", ""),
        ("truncated", "truncated"),
        ("stall", "stalled"),
    ] {
        assert!(
            failures
                .iter()
                .any(|f| f.contains(&format!("/{mirror}/")) && f.contains(why)),
            "no {mirror} failure mentioning {why:?}: {failures:#?}"
        );
    }
    let data = Dataset::load_mnist(dir.path(), Split::Train).unwrap();
    assert_eq!(data.samples(), 300);
}

#[test]
fn all_mirrors_bad_is_a_clear_error_and_leaves_nothing() {
    let files = synthetic_files();
    let mut routes = routes_for(&files, "corrupt", |gz| Reply::Body(corrupted(gz)));
    routes.extend(routes_for(&files, "truncated", |gz| {
        Reply::Truncated(gz.to_vec())
    }));
    let base = serve(routes);
    let source = Source {
        // A closed port first: refused at once, then the next mirror.
        mirrors: vec![
            "http://127.0.0.1:1/".into(),
            format!("{base}/corrupt/"),
            format!("{base}/truncated/"),
        ],
        files: files.iter().map(|(f, _)| f.clone()).collect(),
    };
    let dir = tempfile::tempdir().unwrap();
    // data/mnist/ inside it, neither of which exists: both are made, and both go again.
    let target = dir.path().join("data/mnist");
    let message = download(&source, &target, &options(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(message.contains("train-images-idx3-ubyte"), "{message}");
    for mirror in ["127.0.0.1:1", "/corrupt/", "/truncated/"] {
        assert!(message.contains(mirror), "{message} should name {mirror}");
    }
    // The files this download needed, not "the four IDX files".
    assert!(
        message.contains(
            "put the files train-images-idx3-ubyte and train-labels-idx1-ubyte (raw or .gz)"
        ),
        "{message}"
    );
    assert!(
        names_in(dir.path()).is_empty(),
        "left behind: {:?}",
        names_in(dir.path())
    );
}

#[test]
fn verified_files_are_not_fetched_again() {
    let files = synthetic_files();
    let base = serve(routes_for(&files, "good", |gz| Reply::Body(gz.to_vec())));
    let mut source = Source {
        mirrors: vec![format!("{base}/good/")],
        files: files.iter().map(|(f, _)| f.clone()).collect(),
    };
    let dir = tempfile::tempdir().unwrap();
    download(&source, dir.path(), &options(), &mut |_| {}).unwrap();
    source.mirrors = vec![format!("{base}/nothing-here/")];
    let mut present = 0;
    download(&source, dir.path(), &options(), &mut |event| {
        present += matches!(event, DownloadEvent::AlreadyPresent { .. }) as usize;
    })
    .unwrap();
    assert_eq!(present, 2);
}

/// The pinned checksums accept the real files, served re-compressed from the local copies.
#[test]
fn pinned_checksums_accept_the_real_datasets() {
    let mut local = vec![(DatasetKind::Mnist, common::mnist_dir())];
    let fashion = Path::new("/usr/share/datasets/fashion-mnist");
    if fashion.is_dir() {
        local.push((DatasetKind::FashionMnist, fashion.to_path_buf()));
    }
    for (kind, from) in local {
        let routes = FILE_STEMS
            .iter()
            .map(|stem| {
                let path = shadertrain::data::download::existing_file(&from, stem).unwrap();
                let mut raw = Vec::new();
                std::io::Read::read_to_end(
                    &mut flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap()),
                    &mut raw,
                )
                .unwrap();
                (
                    format!("/{}/{stem}.gz", kind.name()),
                    Reply::Body(gzip(&raw)),
                )
            })
            .collect();
        let base = serve(routes);
        let source = Source {
            mirrors: vec![format!("{base}/{}/", kind.name())],
            ..kind.source()
        };
        let dir = tempfile::tempdir().unwrap();
        download(&source, dir.path(), &options(), &mut |_| {}).unwrap();
        assert_eq!(
            Dataset::load_mnist(dir.path(), Split::Test)
                .unwrap()
                .samples(),
            10_000
        );
    }
}

#[test]
fn a_corrupt_local_copy_is_replaced_not_kept_beside() {
    let files = synthetic_files();
    // The mirror serves the content uncompressed; the folder holds a corrupt gzip copy.
    let raw: HashMap<String, Reply> = files
        .iter()
        .map(|(f, gz)| {
            let mut content = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut content)
                .unwrap();
            (format!("/raw/{}.gz", f.stem), Reply::Body(content))
        })
        .collect();
    let base = serve(raw);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("train-images-idx3-ubyte.gz"),
        corrupted(&files[0].1),
    )
    .unwrap();
    let source = Source {
        mirrors: vec![format!("{base}/raw/")],
        files: files.iter().map(|(f, _)| f.clone()).collect(),
    };
    download(&source, dir.path(), &options(), &mut |_| {}).unwrap();
    assert_eq!(
        names_in(dir.path()),
        vec!["train-images-idx3-ubyte", "train-labels-idx1-ubyte"]
    );
    assert_eq!(
        Dataset::load_mnist(dir.path(), Split::Train)
            .unwrap()
            .samples(),
        300
    );
}

/// A CIFAR-format archive as the published one is laid out (`cifar-10-batches-bin/` and its
/// batches), with a file beside that folder, which is not unpacked; and its bytes' MD5.
fn cifar_archive() -> (Vec<u8>, String) {
    let work = tempfile::tempdir().unwrap();
    let batches = work.path().join("cifar-10-batches-bin");
    common::write_cifar_batches(&batches, 2, 3);
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    builder
        .append_dir_all("cifar-10-batches-bin", &batches)
        .unwrap();
    let outside = b"not part of the data";
    let mut header = tar::Header::new_gnu();
    header.set_size(outside.len() as u64);
    header.set_cksum();
    builder
        .append_data(&mut header, "outside.txt", &outside[..])
        .unwrap();
    let bytes = builder.into_inner().unwrap().finish().unwrap();
    let digest = <md5::Md5 as md5::Digest>::digest(&bytes);
    let md5 = digest.iter().map(|b| format!("{b:02x}")).collect();
    (bytes, md5)
}

fn archive_at(base: &str, mirrors: &[&str], md5: &str) -> RemoteArchive {
    RemoteArchive {
        mirrors: mirrors.iter().map(|m| format!("{base}/{m}/")).collect(),
        md5: md5.to_string(),
        ..cifar::archive()
    }
}

#[test]
fn an_archive_is_verified_unpacked_and_then_reused() {
    let (bytes, md5) = cifar_archive();
    let name = cifar::archive().name;
    let base = serve(HashMap::from([(
        format!("/good/{name}"),
        Reply::Body(bytes),
    )]));
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("data").join("cifar10");
    let archive = archive_at(&base, &["missing", "good"], &md5);
    let mut events = Vec::new();
    download_archive(&archive, &dir, &options(), &mut |e| {
        events.push(format!("{e:?}"))
    })
    .unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.contains("MirrorFailed") && e.contains("404"))
    );
    assert!(events.iter().any(|e| e.contains("Verified")));
    assert_eq!(names_in(&dir), ["cifar-10-batches-bin", name.as_str()]);
    let batches = names_in(&dir.join("cifar-10-batches-bin"));
    assert_eq!(batches.len(), 6, "{batches:?}");
    let (test, _) = Dataset::load_digested(DatasetKind::Cifar10, &dir, Split::Test).unwrap();
    assert_eq!(test.samples(), 3);
    // The verified archive is not fetched again.
    let mut events = Vec::new();
    download_archive(&archive, &dir, &options(), &mut |e| {
        events.push(format!("{e:?}"))
    })
    .unwrap();
    assert!(events[0].contains("AlreadyPresent"), "{events:?}");
}

#[test]
fn an_archive_with_another_checksum_is_refused_and_leaves_nothing() {
    let (bytes, md5) = cifar_archive();
    let name = cifar::archive().name;
    let base = serve(HashMap::from([(
        format!("/good/{name}"),
        Reply::Body(bytes),
    )]));
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("data").join("cifar10");
    let last = if md5.ends_with('0') { "1" } else { "0" };
    let wrong = format!("{}{last}", &md5[..31]);
    let archive = archive_at(&base, &["good"], &wrong);
    let error = download_archive(&archive, &dir, &options(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("checksum mismatch") && error.contains(&md5) && error.contains(&wrong),
        "{error}"
    );
    assert!(
        !work.path().join("data").exists(),
        "the folders it made are gone"
    );
}
