// optimizer.wgsl's updates (the same rules, shared/update_rules.wgsl, so bit for bit the same
// results) on the same buffers read as 64-bit words: a vec4<u64> holds 8 consecutive parameters,
// the parameter 2j in the low half of its word j (little-endian, as every Vulkan, Metal and D3D12
// device stores it). For CPU adapters: lavapipe (Mesa 22.3) loads and stores a storage buffer one
// lane and one component at a time, so 8 parameters as four 64-bit components are half the
// memory operations of two vec4<f32>. Needs `Features::SHADER_INT64`; the host builds this module
// only on devices that have it.
//
// sgd_update:       p -= lr (g + wd p)
// momentum_update:  d = g + wd p; b = mu b + d; p -= lr (Nesterov ? d + mu b : b)
// adam_update:      d = g + wd p; m = beta1 m + (1 - beta1) d; v = beta2 v + (1 - beta2) d^2
//                   p = p decay_factor - step_size m / (sqrt(v) + epsilon)
// (lr, step_size and decay_factor from the step schedule, as in optimizer.wgsl.)
//
// Bindings (group 0), as optimizer.wgsl's, each parameter-sized buffer as 64-bit words:
//   0 schedule storage, read             Schedule (shared/step.wgsl, bound by current_step)
//   1 hyper    storage, read             Hyper (shared/optimizer_hyper.wgsl)
//   2 params   storage, read_write       vec4<u64> [2 ceil(count / 16)]
//   3 grads    storage, read             vec4<u64> [2 ceil(count / 16)]
//   4 moment1  storage, read_write       vec4<u64> [2 ceil(count / 16)] (momentum: b; adam: m)
//   5 moment2  storage, read_write       vec4<u64> [2 ceil(count / 16)] (adam: v)
//
// Workgroup: 64 invocations, each updating 2 vec4<u64> (16 parameters, as in optimizer.wgsl, so
// the grid is the same): ceil(count / 1024) workgroups as (x, y) with x <= 65535 (invocation =
// (y * num_workgroups.x + x) * 64 + local).

import package::shared::step::current_step;
import package::shared::optimizer_hyper::Hyper;
import package::shared::update_rules::{plain_sgd, momentum_sgd, adam};

@group(0) @binding(1) var<storage, read> hyper: Hyper;
@group(0) @binding(2) var<storage, read_write> params: array<vec4<u64>>;
@group(0) @binding(3) var<storage, read> grads: array<vec4<u64>>;
@group(0) @binding(4) var<storage, read_write> moment1: array<vec4<u64>>;
@group(0) @binding(5) var<storage, read_write> moment2: array<vec4<u64>>;

const WORDS_PER_INVOCATION: u32 = 2u;

// Parameters 0-3 of a word (half = 0) or 4-7 (half = 1).
fn unpack(word: vec4<u64>, half: u32) -> vec4<f32> {
    let pair = select(word.xy, word.zw, half == 1u);
    return bitcast<vec4<f32>>(vec4<u32>(u32(pair.x & 0xfffffffflu), u32(pair.x >> 32u), u32(pair.y & 0xfffffffflu), u32(pair.y >> 32u)));
}

// The word holding parameters 0-3 in `low` and 4-7 in `high`.
fn pack(low: vec4<f32>, high: vec4<f32>) -> vec4<u64> {
    let l = vec4<u64>(bitcast<vec4<u32>>(low));
    let h = vec4<u64>(bitcast<vec4<u32>>(high));
    return vec4<u64>(l.x | (l.y << 32u), l.z | (l.w << 32u), h.x | (h.y << 32u), h.z | (h.w << 32u));
}

// The first of this invocation's words.
fn first_word(gid: vec3<u32>, groups: vec3<u32>) -> u32 {
    return (gid.y * groups.x * 64u + gid.x) * WORDS_PER_INVOCATION;
}

@compute @workgroup_size(64)
fn sgd_update(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let first = first_word(gid, groups);
    if (first >= (hyper.count + 7u) / 8u) {
        return;
    }
    let h = hyper;
    let learning_rate = current_step().learning_rate;
    for (var j = 0u; j < WORDS_PER_INVOCATION; j++) {
        let i = first + j;
        let p = params[i];
        let g = grads[i];
        params[i] = pack(plain_sgd(h, learning_rate, unpack(p, 0u), unpack(g, 0u)), plain_sgd(h, learning_rate, unpack(p, 1u), unpack(g, 1u)));
    }
}

@compute @workgroup_size(64)
fn momentum_update(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let first = first_word(gid, groups);
    if (first >= (hyper.count + 7u) / 8u) {
        return;
    }
    let h = hyper;
    let learning_rate = current_step().learning_rate;
    for (var j = 0u; j < WORDS_PER_INVOCATION; j++) {
        let i = first + j;
        let p = params[i];
        let g = grads[i];
        let b = moment1[i];
        let low = momentum_sgd(h, learning_rate, unpack(p, 0u), unpack(g, 0u), unpack(b, 0u));
        let high = momentum_sgd(h, learning_rate, unpack(p, 1u), unpack(g, 1u), unpack(b, 1u));
        moment1[i] = pack(low.buffer, high.buffer);
        params[i] = pack(low.p, high.p);
    }
}

@compute @workgroup_size(64)
fn adam_update(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let first = first_word(gid, groups);
    if (first >= (hyper.count + 7u) / 8u) {
        return;
    }
    let h = hyper;
    let step = current_step();
    for (var j = 0u; j < WORDS_PER_INVOCATION; j++) {
        let i = first + j;
        let p = params[i];
        let g = grads[i];
        let m = moment1[i];
        let v = moment2[i];
        let low = adam(h, step.adam_step_size, step.decay_factor, unpack(p, 0u), unpack(g, 0u), unpack(m, 0u), unpack(v, 0u));
        let high = adam(h, step.adam_step_size, step.decay_factor, unpack(p, 1u), unpack(g, 1u), unpack(m, 1u), unpack(v, 1u));
        moment1[i] = pack(low.m, high.m);
        moment2[i] = pack(low.v, high.v);
        params[i] = pack(low.p, high.p);
    }
}
