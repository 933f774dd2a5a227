//! The GPU side: device context, buffers, kernels and their host-side uniform structs.

pub mod buffers;
pub mod context;
pub mod kernels;
pub mod matmul;
pub mod mirror;
pub mod ops;
pub mod uniforms;

pub use context::{AdapterRequest, AdapterSummary, BackendChoice, Gpu, list_adapters};
pub use kernels::{Kernel, Kernels};
pub use matmul::{MatmulOperand, MatmulTiling, MatmulVariant};
pub use mirror::TextureMirror;
