//! `shadertrain web`: builds the web page (this crate's library compiled to wasm32, bound to
//! JavaScript by wasm-bindgen, beside the page in src/web/) into a folder and serves that folder
//! on 127.0.0.1. The folder is a static site: any static host serves it as well.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use shadertrain::{Error, Result};

/// The page's own files, beside what wasm-bindgen writes (shadertrain.js, shadertrain_bg.wasm).
const PAGE: [(&str, &str); 2] = [
    ("index.html", include_str!("../web/index.html")),
    ("page.js", include_str!("../web/page.js")),
];

const WASM_TARGET: &str = "wasm32-unknown-unknown";

/// The wasm-bindgen crate's version, which Cargo.toml pins: wasm-bindgen-cli must be the same.
const WASM_BINDGEN_VERSION: &str = "0.2.130";

/// What `shadertrain web` does.
pub struct WebOptions {
    /// The folder the page is built into and served from.
    pub out: PathBuf,
    /// Port on 127.0.0.1; 0 takes a free one.
    pub port: u16,
    /// Build the page first (otherwise serve what `out` holds).
    pub build: bool,
    /// Serve the page after building it.
    pub serve: bool,
}

pub fn run(options: &WebOptions) -> Result<()> {
    if options.build {
        build(&options.out)?;
        println!("built the page into {}", options.out.display());
    }
    if options.serve {
        serve(&options.out, options.port)?;
    }
    Ok(())
}

/// Runs `command`, its output going to the terminal; an error naming `what` when it fails.
fn run_tool(mut command: Command, what: &str, hint: &str) -> Result<()> {
    let status =
        (command.status()).map_err(|e| Error::Web(format!("could not run {what}: {e}; {hint}")))?;
    match status.success() {
        true => Ok(()),
        false => Err(Error::Web(format!("{what} failed ({status}); {hint}"))),
    }
}

/// Compiles the library for the browser and writes the page into `out`. Needs the source tree
/// this binary was built from, the wasm32 target and wasm-bindgen-cli at the version of the
/// wasm-bindgen crate the build uses.
fn build(out: &Path) -> Result<()> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"));
    if !source.join("Cargo.toml").is_file() {
        return Err(Error::Web(format!(
            "the page is built from shadertrain's source tree, and {} no longer holds it: run \
             `cargo run --release -- web` in a checkout",
            source.display()
        )));
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut compile = Command::new(cargo);
    compile
        .current_dir(source)
        .args(["rustc", "--release", "--lib", "--crate-type", "cdylib"])
        .args(["--target", WASM_TARGET]);
    run_tool(
        compile,
        "cargo (compiling the library for wasm32)",
        &format!("is the target installed? `rustup target add {WASM_TARGET}`"),
    )?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| source.join("target"));
    let wasm = target_dir
        .join(WASM_TARGET)
        .join("release/shadertrain.wasm");
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut bind = Command::new("wasm-bindgen");
    bind.args(["--target", "web", "--no-typescript", "--out-dir"])
        .arg(out)
        .arg(&wasm);
    run_tool(
        bind,
        "wasm-bindgen",
        &format!(
            "it must be installed at the version of the wasm-bindgen crate: \
             `cargo install wasm-bindgen-cli --version {WASM_BINDGEN_VERSION}`"
        ),
    )?;
    for (name, text) in PAGE {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}

/// Serves `dir` on 127.0.0.1:`port` until the process is stopped: each request on a thread of
/// its own, GET only, files inside `dir` only.
fn serve(dir: &Path, port: u16) -> Result<()> {
    if !dir.join("index.html").is_file() {
        return Err(Error::Web(format!(
            "{} holds no built page: build it first (leave out --no-build)",
            dir.display()
        )));
    }
    let listener = TcpListener::bind(("127.0.0.1", port))
        .map_err(|e| Error::Web(format!("could not listen on 127.0.0.1:{port}: {e}")))?;
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(port);
    println!("serving the page at http://127.0.0.1:{port}/ (Ctrl-C stops)");
    for stream in listener.incoming().flatten() {
        let dir = dir.to_path_buf();
        std::thread::spawn(move || {
            // A client that goes away mid-answer is no concern of the server's.
            let _ = answer(stream, &dir);
        });
    }
    Ok(())
}

/// The file under `dir` a request's target names (`/` is index.html), or None where the target
/// leaves `dir` or is not a plain relative path.
fn file_for(dir: &Path, target: &str) -> Option<PathBuf> {
    let path = target.split(['?', '#']).next()?.trim_start_matches('/');
    let path = if path.is_empty() { "index.html" } else { path };
    let relative = Path::new(path);
    let plain = (relative.components()).all(|c| matches!(c, Component::Normal(_)));
    (plain && !path.contains(['%', '\\'])).then(|| dir.join(relative))
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

fn answer(stream: TcpStream, dir: &Path) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
    }
    let mut words = request.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let found = match method {
        "GET" => file_for(dir, target).and_then(|path| {
            let body = std::fs::read(&path).ok()?;
            Some((content_type(&path), body))
        }),
        _ => None,
    };
    let (status, kind, body) = match found {
        Some((kind, body)) => ("200 OK", kind, body),
        None if method != "GET" => (
            "405 Method Not Allowed",
            "text/plain",
            b"GET only\n".to_vec(),
        ),
        None => ("404 Not Found", "text/plain", b"not found\n".to_vec()),
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(&body)?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wasm_bindgen_version_asked_for_is_the_one_cargo_toml_pins() {
        let manifest = include_str!("../../Cargo.toml");
        let pin = format!("wasm-bindgen = \"={WASM_BINDGEN_VERSION}\"");
        assert!(manifest.contains(&pin), "Cargo.toml lacks {pin}");
    }

    #[test]
    fn only_plain_paths_inside_the_folder_are_served() {
        let dir = Path::new("/srv/page");
        assert_eq!(file_for(dir, "/"), Some(dir.join("index.html")));
        assert_eq!(file_for(dir, "/?autorun=1"), Some(dir.join("index.html")));
        assert_eq!(file_for(dir, "/data/t10k"), Some(dir.join("data/t10k")));
        for outside in ["/../etc/passwd", "/a/../../b", "/%2e%2e/x", "/a\\b"] {
            assert_eq!(file_for(dir, outside), None, "{outside}");
        }
    }
}
