// Global max pooling, channels-last: X [samples, P, C] (P = H W positions, row-major) ->
// Y [samples, C], each channel's largest value over the image (Keras' GlobalMaxPooling2D,
// PyTorch's AdaptiveMaxPool2d(1) then flatten).
//
// global_max_pool_forward: one invocation per (n, c), the positions in order:
//   Y[n, c] = X[n, p*, c], A[n, c] = p*, p* the first position of the largest value
//   (a later value replaces the best only where it is larger).
// global_max_pool_backward: a gather, no scatter (so deterministic): one invocation per input
// value,
//   dX[n, p, c] = dY[n, c] where p = A[n, c], else 0.
//
// Bindings (group 0):
//   0 shape   storage, read        GlobalMaxPoolShape
//   1 input   storage, read        forward: X f32 [samples, P, C]; backward: dY f32 [samples, C]
//   2 output  storage, read_write  forward: Y f32 [samples, C]; backward: dX f32 [samples, P, C]
//   3 argmax  storage, forward read_write / backward read   A u32 [samples, C]
//
// Workgroup: 64 invocations. Dispatch grid, folded into (x, y) with x <= 65535 (invocation =
// (y * num_workgroups.x + x) * 64 + local): samples C invocations forward, samples P C backward.

import package::shared::grid::flat_invocation;
import package::shared::divide::quotient;

struct GlobalMaxPoolShape {
    samples: u32,
    positions: u32,
    channels: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> shape: GlobalMaxPoolShape;
@group(0) @binding(1) var<storage, read> input: array<f32>;
@group(0) @binding(2) var<storage, read_write> output: array<f32>;
@group(0) @binding(3) var<storage, read_write> argmax_out: array<u32>;
@group(0) @binding(3) var<storage, read> argmax_in: array<u32>;

@compute @workgroup_size(64)
fn global_max_pool_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = flat_invocation(gid, groups, 64u);
    if (index >= shape.samples * shape.channels) {
        return;
    }
    let n = quotient(index, shape.channels);
    let c = index - n * shape.channels;
    let first = n * shape.positions * shape.channels + c;
    var best = input[first];
    var best_position = 0u;
    for (var p = 1u; p < shape.positions; p++) {
        let value = input[first + p * shape.channels];
        if (value > best) {
            best = value;
            best_position = p;
        }
    }
    output[index] = best;
    argmax_out[index] = best_position;
}

@compute @workgroup_size(64)
fn global_max_pool_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = flat_invocation(gid, groups, 64u);
    if (index >= shape.samples * shape.positions * shape.channels) {
        return;
    }
    let pixel = quotient(index, shape.channels);
    let c = index - pixel * shape.channels;
    let n = quotient(pixel, shape.positions);
    let p = pixel - n * shape.positions;
    let pooled = n * shape.channels + c;
    output[index] = select(0.0, input[pooled], argmax_in[pooled] == p);
}
