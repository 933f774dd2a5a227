// The optimizers' hyperparameters (optimizer.wgsl, optimizer_packed.wgsl). Host twin:
// src/gpu/uniforms.rs `OptimizerHyper`.

struct Hyper {
    count: u32,
    learning_rate: f32,
    beta1: f32,
    beta2: f32,
    epsilon: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}
