// The optimizers' hyperparameters (optimizer.wgsl, optimizer_packed.wgsl), fixed for a run; what
// changes per step (the learning rate, Adam's step size, AdamW's decay) is in the step schedule
// (shared/step.wgsl). Host twin: src/gpu/uniforms.rs `OptimizerHyper`.

struct Hyper {
    count: u32,
    beta1: f32,
    beta2: f32,
    epsilon: f32,
    // SGD's momentum factor (torch.optim.SGD's `momentum`).
    momentum: f32,
    // L2 weight decay, added to the gradient as weight_decay * p (SGD and Adam, as PyTorch
    // does; 0 for AdamW, whose decoupled decay is the step's decay_factor).
    weight_decay: f32,
    // 1: Nesterov momentum.
    nesterov: u32,
    _pad0: u32,
}
