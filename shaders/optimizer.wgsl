// Parameter updates over the whole flat parameter buffer in one dispatch. (optimizer_packed.wgsl
// is the same on 64-bit words, for CPU adapters.)
//
// sgd_update:       p -= lr (g + wd p)                                   (torch.optim.SGD)
// momentum_update:  d = g + wd p; b = mu b + d; p -= lr (Nesterov ? d + mu b : b)
// adam_update:      d = g + wd p; m = beta1 m + (1 - beta1) d; v = beta2 v + (1 - beta2) d^2
//                   p = p decay_factor - step_size m / (sqrt(v) + epsilon)   (Adam, AdamW)
// (the rules in full: shared/update_rules.wgsl). The learning rate, Adam's bias-corrected step
// size and AdamW's decay factor depend on the step, so the host computes them per step into the
// step schedule, and many steps can be recorded before any runs.
//
// Parameters are updated as vec4, VEC4S_PER_INVOCATION consecutive vec4 per invocation: on a CPU
// adapter every buffer access costs much the same whatever its width, and every read of `hyper`
// or the schedule is one more such access, so each invocation reads those once for 16
// parameters. The buffers hold whole groups of 16 parameters (the host sizes every storage
// buffer to a multiple of 64 bytes); the padding after the last parameter has zero gradient and
// zero value, so it stays zero.
//
// Bindings (group 0):
//   0 schedule storage, read             Schedule (shared/step.wgsl, bound by current_step)
//   1 hyper    storage, read             Hyper (shared/optimizer_hyper.wgsl)
//   2 params   storage, read_write       vec4<f32> [4 ceil(count / 16)]
//   3 grads    storage, read             vec4<f32> [4 ceil(count / 16)]
//   4 moment1  storage, read_write       vec4<f32> [4 ceil(count / 16)] (momentum: b; adam: m)
//   5 moment2  storage, read_write       vec4<f32> [4 ceil(count / 16)] (adam: v)
//
// Workgroup: 64 invocations, each updating 4 vec4 (16 parameters). Dispatch grid:
// ceil(count / 1024) workgroups as (x, y) with x <= 65535 (invocation = (y * num_workgroups.x + x)
// * 64 + local).

import package::shared::step::current_step;
import package::shared::optimizer_hyper::Hyper;
import package::shared::update_rules::{plain_sgd, momentum_sgd, adam};

@group(0) @binding(1) var<storage, read> hyper: Hyper;
@group(0) @binding(2) var<storage, read_write> params: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> grads: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> moment1: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> moment2: array<vec4<f32>>;

const VEC4S_PER_INVOCATION: u32 = 4u;

// The first of this invocation's vec4.
fn first_vec4(gid: vec3<u32>, groups: vec3<u32>) -> u32 {
    return (gid.y * groups.x * 64u + gid.x) * VEC4S_PER_INVOCATION;
}

@compute @workgroup_size(64)
fn sgd_update(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let first = first_vec4(gid, groups);
    if (first >= (hyper.count + 3u) / 4u) {
        return;
    }
    let h = hyper;
    let learning_rate = current_step().learning_rate;
    for (var j = 0u; j < VEC4S_PER_INVOCATION; j++) {
        let i = first + j;
        params[i] = plain_sgd(h, learning_rate, params[i], grads[i]);
    }
}

@compute @workgroup_size(64)
fn momentum_update(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let first = first_vec4(gid, groups);
    if (first >= (hyper.count + 3u) / 4u) {
        return;
    }
    let h = hyper;
    let learning_rate = current_step().learning_rate;
    for (var j = 0u; j < VEC4S_PER_INVOCATION; j++) {
        let i = first + j;
        let next = momentum_sgd(h, learning_rate, params[i], grads[i], moment1[i]);
        moment1[i] = next.buffer;
        params[i] = next.p;
    }
}

@compute @workgroup_size(64)
fn adam_update(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let first = first_vec4(gid, groups);
    if (first >= (hyper.count + 3u) / 4u) {
        return;
    }
    let h = hyper;
    let step = current_step();
    for (var j = 0u; j < VEC4S_PER_INVOCATION; j++) {
        let i = first + j;
        let next = adam(h, step.adam_step_size, step.decay_factor, params[i], grads[i], moment1[i], moment2[i]);
        moment1[i] = next.m;
        moment2[i] = next.v;
        params[i] = next.p;
    }
}
