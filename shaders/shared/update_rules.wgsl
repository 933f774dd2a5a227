// The optimizers' update rules on four parameters, each as PyTorch defines it (Adam with Keras'
// placement of epsilon); optimizer.wgsl and optimizer_packed.wgsl apply them to their words.
// Host twin: src/reference.rs `sgd_update`, `momentum_update`, `adam_update`.
//
// plain_sgd (torch.optim.SGD, momentum 0):
//   p -= lr (g + wd p)
// momentum_sgd (torch.optim.SGD, momentum mu, dampening 0):
//   d = g + wd p;  b = mu b + d;  p -= lr (d + mu b) with Nesterov, lr b without.
//   (b starts at zero, so the first step's b is d, as PyTorch's first step sets it.)
// adam (Kingma & Ba; torch.optim.Adam's L2 decay, or torch.optim.AdamW's decoupled decay):
//   d = g + wd p;  m = beta1 m + (1 - beta1) d;  v = beta2 v + (1 - beta2) d^2
//   p = p decay_factor - step_size m / (sqrt(v) + epsilon)
//   step_size = lr_t sqrt(1 - beta2^t) / (1 - beta1^t), decay_factor = 1 - lr_t wd for AdamW
//   (wd then 0 in `hyper`), 1 for Adam; both from the step schedule.
// With wd = 0 and decay_factor = 1 each rule reduces exactly to its form without decay.

import package::shared::optimizer_hyper::Hyper;

fn plain_sgd(hyper: Hyper, learning_rate: f32, p: vec4<f32>, g: vec4<f32>) -> vec4<f32> {
    return p - learning_rate * (g + hyper.weight_decay * p);
}

// Parameters and momentum buffer after a step of momentum_sgd.
struct MomentumState {
    p: vec4<f32>,
    buffer: vec4<f32>,
}

fn momentum_sgd(hyper: Hyper, learning_rate: f32, p: vec4<f32>, g: vec4<f32>, buffer: vec4<f32>) -> MomentumState {
    let d = g + hyper.weight_decay * p;
    let b = hyper.momentum * buffer + d;
    let direction = select(b, d + hyper.momentum * b, hyper.nesterov != 0u);
    return MomentumState(p - learning_rate * direction, b);
}

// Parameters, first and second moment after a step of adam.
struct AdamState {
    p: vec4<f32>,
    m: vec4<f32>,
    v: vec4<f32>,
}

fn adam(hyper: Hyper, step_size: f32, decay_factor: f32, p: vec4<f32>, g: vec4<f32>, m_before: vec4<f32>, v_before: vec4<f32>) -> AdamState {
    let d = g + hyper.weight_decay * p;
    let m = hyper.beta1 * m_before + (1.0 - hyper.beta1) * d;
    let v = hyper.beta2 * v_before + (1.0 - hyper.beta2) * d * d;
    return AdamState(p * decay_factor - step_size * m / (sqrt(v) + vec4<f32>(hyper.epsilon)), m, v);
}
