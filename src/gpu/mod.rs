//! The GPU side: device context, buffers, kernels and their host-side uniform structs.

pub mod buffers;
pub mod context;
pub mod kernel;
pub mod kernels;
pub mod matmul;
pub mod mirror;
pub mod ops;
pub mod program;
pub mod uniforms;

/// The WGSL of the kernel file `shaders/$name`, as `build.rs` compiled it (its `import`s of
/// `shaders/shared/` resolved).
#[macro_export]
macro_rules! shader_source {
    ($name:literal) => {
        include_str!(concat!(env!("OUT_DIR"), "/", $name))
    };
}

pub use context::{AdapterRequest, AdapterSummary, BackendChoice, Gpu, list_adapters};
pub use kernels::{Kernel, Kernels};
pub use matmul::{MatmulOperand, MatmulTiling, MatmulVariant};
pub use mirror::TextureMirror;
