//! Compiles the kernels in `shaders/` from WESL (WGSL with `import`) to plain WGSL at build time,
//! so that the declarations several kernels share (`shaders/shared/`) exist once, and the runtime
//! and naga see ordinary WGSL. `shader_source!` includes the result.

use std::path::Path;

use wesl::{ManglerKind, Wesl};

fn main() {
    println!("cargo::rerun-if-changed=shaders");
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let mut compiler = Wesl::new("shaders");
    // Shared names are unique across the tree (a clash fails this build), so the compiled
    // kernels keep the names their sources and headers use.
    compiler.set_mangler(ManglerKind::None);
    let mut kernels: Vec<_> = std::fs::read_dir("shaders")
        .expect("the shaders folder")
        .map(|entry| entry.expect("a readable shaders folder").path())
        .filter(|path| path.extension().is_some_and(|e| e == "wgsl"))
        .collect();
    kernels.sort();
    let mut failed = false;
    for kernel in &kernels {
        let stem = kernel.file_stem().and_then(|s| s.to_str()).expect("a name");
        let module = format!("package::{stem}").parse().expect("a module path");
        let source = std::fs::read_to_string(kernel).expect("a readable kernel file");
        // A kernel file that tests the feature `mirrors` (`@if(mirrors)`) is also compiled with
        // it, as `<stem>_mirrors.wgsl`: its passes reading texture mirrors of their operands.
        let variants = match source.contains("@if(mirrors)") {
            true => &[false, true][..],
            false => &[false],
        };
        for &mirrors in variants {
            compiler.set_feature("mirrors", mirrors);
            let name = match mirrors {
                true => format!("{stem}_mirrors.wgsl"),
                false => format!("{stem}.wgsl"),
            };
            match compiler.compile(&module) {
                Ok(compiled) => {
                    let out = Path::new(&out_dir).join(name);
                    std::fs::write(out, compiled.to_string()).expect("OUT_DIR is writable");
                }
                Err(error) => {
                    eprintln!("{} ({name}): {error}", kernel.display());
                    failed = true;
                }
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}
