// Element-wise kernels over flat tensors of `count` values: a residual block's sum, the sums of a
// tensor's gradients from its several consumers, copies, and an activation as a layer of its own
// (src/layers/residual.rs, src/layers/activation.rs; the trainer's gradient routing).
//
// add:                    out[i] = a[i] + b[i]
// add_assign:             out[i] = out[i] + b[i]
// copy:                   out[i] = a[i]
// activate_values:        out[i] = f(a[i])                f = shape.activation (shared/activations.wgsl)
// activation_derivative:  out[i] = a[i] f'(b[i])          a = dY, b = Y = f(X): out = dX
// Each value is one addition or product, so the sums of gradients are made in the order the
// host dispatches them: deterministic. Values go four at a time, as vec4: ceil(count / 4) of
// them, the last one's lanes past `count` inside the buffer's padding (the host sizes every
// storage buffer to a multiple of 64 bytes) or past the batch's rows, which no kernel reads.
//
// Bindings (group 0):
//   0 shape   storage, read        ElementwiseShape below
//   1 a       storage, read        vec4<f32> [ceil(count / 4)] (not add_assign)
//   2 b       storage, read        vec4<f32> [ceil(count / 4)] (add, add_assign, activation_derivative)
//   3 out     storage, read_write  vec4<f32> [ceil(count / 4)]
// Compiled with the feature `mirrors` (elementwise_mirrors.wgsl), a and b are texture_2d<f32>:
// rgba32float mirrors of those buffers, vec4 i at the texel (i % MIRROR_ROW_TEXELS,
// i / MIRROR_ROW_TEXELS) (shared/mirror.wgsl).
//
// Workgroup: 64 invocations. Dispatch grid, folded into (x, y) with x <= 65535 (invocation =
// (y * num_workgroups.x + x) * 64 + local): one invocation per VEC4S_PER_INVOCATION (8) vec4,
// ceil(count / 32).

import package::shared::activations::{activate4, derivative_from_output4};
import package::shared::grid::flat_invocation;
import package::shared::mirror::mirrored;

struct ElementwiseShape {
    count: u32,
    activation: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> shape: ElementwiseShape;
@group(0) @binding(3) var<storage, read_write> out: array<vec4<f32>>;

// The inputs, read through a_at and b_at: storage buffers, or in the variant compiled with the
// feature `mirrors` (elementwise_mirrors.wgsl) their texture mirrors (src/gpu/mirror.rs), whose
// fetches lavapipe vectorises where it loads a buffer lane by lane.
@if(!mirrors) @group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@if(!mirrors) @group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@if(mirrors) @group(0) @binding(1) var a_mirror: texture_2d<f32>;
@if(mirrors) @group(0) @binding(2) var b_mirror: texture_2d<f32>;

// vec4 i of a, b.
@if(!mirrors) fn a_at(i: u32) -> vec4<f32> { return a[i]; }
@else fn a_at(i: u32) -> vec4<f32> { return mirrored(a_mirror, i); }
@if(!mirrors) fn b_at(i: u32) -> vec4<f32> { return b[i]; }
@else fn b_at(i: u32) -> vec4<f32> { return mirrored(b_mirror, i); }

// The vec4 an invocation takes: VEC4S_PER_INVOCATION consecutive ones (first, end), none past
// ceil(count / 4). Several per invocation: on lavapipe each invocation pays its index
// arithmetic and its read of `shape` before any value moves.
const VEC4S_PER_INVOCATION: u32 = 8u;

fn span(gid: vec3<u32>, groups: vec3<u32>) -> vec2<u32> {
    let first = flat_invocation(gid, groups, 64u) * VEC4S_PER_INVOCATION;
    return vec2<u32>(first, min(first + VEC4S_PER_INVOCATION, (shape.count + 3u) / 4u));
}

@compute @workgroup_size(64)
fn add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let s = span(gid, groups);
    for (var i = s.x; i < s.y; i++) {
        out[i] = a_at(i) + b_at(i);
    }
}

@compute @workgroup_size(64)
fn add_assign(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let s = span(gid, groups);
    for (var i = s.x; i < s.y; i++) {
        out[i] = out[i] + b_at(i);
    }
}

@compute @workgroup_size(64)
fn copy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let s = span(gid, groups);
    for (var i = s.x; i < s.y; i++) {
        out[i] = a_at(i);
    }
}

@compute @workgroup_size(64)
fn activate_values(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let s = span(gid, groups);
    let activation = shape.activation;
    for (var i = s.x; i < s.y; i++) {
        out[i] = activate4(activation, a_at(i));
    }
}

@compute @workgroup_size(64)
fn activation_derivative(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let s = span(gid, groups);
    let activation = shape.activation;
    for (var i = s.x; i < s.y; i++) {
        out[i] = a_at(i) * derivative_from_output4(activation, b_at(i));
    }
}
