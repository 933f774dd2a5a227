// 2-D average pooling, channels-last (x[((n H + y) W + x) C + c]), 'valid' windows of SY x SX,
// strides (TY, TX): OH = (H - SY) / TY + 1, OW = (W - SX) / TX + 1. Global average pooling is the
// window of the whole image (SY = H, SX = W), whose output C x 1 x 1 is the flat vector of C.
//
// avgpool_forward:
//   Y[n, oy, ox, c] = (sum over dy < SY, dx < SX of X[n, oy TY + dy, ox TX + dx, c]) / (SY SX)
//   summed in row-major window order.
// avgpool_backward: a gather, no scatter (so deterministic): each input value sums the gradient of
// every output whose window holds it, in window-offset order (dy, then dx, descending output),
//   dX[n, y, x, c] = (sum over (dy, dx) with (y - dy) / TY = oy and (x - dx) / TX = ox whole and
//                     inside the output of dY[n, oy, ox, c]) / (SY SX)
// Values in no window (past the last whole one) get 0.
// avgpool_global_forward_quads, avgpool_global_backward_quads: the same where the output is one
// window (1 x 1: global average pooling) and C % 4 == 0, four channels at a time, an invocation
// per sample's channel quad that reads the shape once (on lavapipe each read of it is a round of
// per-lane loads, which cost more than the invocation's values): the same sums in the same order.
//
// Bindings (group 0):
//   0 shape   storage, read        PoolShape (shared/pool_shape.wgsl; derivative unused)
//   1 input   storage, read        forward: X f32 [samples, H, W, C]; backward: dY [samples, OH, OW, C]
//   2 output  storage, read_write  forward: Y f32 [samples, OH, OW, C]; backward: dX [samples, H, W, C]
//
// Workgroup: 64 invocations. Dispatch grid, folded into (x, y) with x <= 65535 (invocation =
// (y * num_workgroups.x + x) * 64 + local): one invocation per output value (forward) or input
// value (backward); the _global_quads entry points one per sample's channel quad, samples C / 4.
// Those bind 1 and 2 as vec4<f32> [samples, H, W, C / 4] and [samples, C / 4] (or the reverse).

import package::shared::grid::flat_invocation;
import package::shared::divide::quotient;
import package::shared::pool_shape::PoolShape;

@group(0) @binding(0) var<storage, read> shape: PoolShape;
@group(0) @binding(1) var<storage, read> input: array<f32>;
@group(0) @binding(2) var<storage, read_write> output: array<f32>;
@group(0) @binding(1) var<storage, read> input_quads: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> output_quads: array<vec4<f32>>;

// Value `index` of an n x height x width x C tensor as (n, y, x, c).
struct Position {
    n: u32,
    y: u32,
    x: u32,
    c: u32,
}

fn position_of(index: u32, height: u32, width: u32) -> Position {
    let pixel = quotient(index, shape.channels);
    let c = index - pixel * shape.channels;
    let row = quotient(pixel, width);
    let x = pixel - row * width;
    let n = quotient(row, height);
    return Position(n, row - n * height, x, c);
}

@compute @workgroup_size(64)
fn avgpool_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = flat_invocation(gid, groups, 64u);
    if (index >= shape.samples * shape.out_height * shape.out_width * shape.channels) {
        return;
    }
    let o = position_of(index, shape.out_height, shape.out_width);
    var sum = 0.0;
    for (var dy = 0u; dy < shape.size_y; dy++) {
        let row = (o.n * shape.in_height + o.y * shape.stride_y + dy) * shape.in_width;
        for (var dx = 0u; dx < shape.size_x; dx++) {
            sum += input[(row + o.x * shape.stride_x + dx) * shape.channels + o.c];
        }
    }
    output[index] = sum / f32(shape.size_y * shape.size_x);
}

@compute @workgroup_size(64)
fn avgpool_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = flat_invocation(gid, groups, 64u);
    if (index >= shape.samples * shape.in_height * shape.in_width * shape.channels) {
        return;
    }
    let p = position_of(index, shape.in_height, shape.in_width);
    if (shape.out_height == 1u && shape.out_width == 1u) {
        // One window (global average pooling): the loop below in one step.
        var value = 0.0;
        if (p.y < shape.size_y && p.x < shape.size_x) {
            value = input[p.n * shape.channels + p.c] / f32(shape.size_y * shape.size_x);
        }
        output[index] = value;
        return;
    }
    var sum = 0.0;
    for (var dy = 0u; dy < shape.size_y && dy <= p.y; dy++) {
        let start_y = p.y - dy;
        let oy = quotient(start_y, shape.stride_y);
        if (oy * shape.stride_y != start_y || oy >= shape.out_height) {
            continue;
        }
        for (var dx = 0u; dx < shape.size_x && dx <= p.x; dx++) {
            let start_x = p.x - dx;
            let ox = quotient(start_x, shape.stride_x);
            if (ox * shape.stride_x != start_x || ox >= shape.out_width) {
                continue;
            }
            sum += input[((p.n * shape.out_height + oy) * shape.out_width + ox) * shape.channels + p.c];
        }
    }
    output[index] = sum / f32(shape.size_y * shape.size_x);
}

// The sample and channel quad of a _global_quads invocation (a sample past the last for the
// invocations past the tensor, which the caller skips).
fn sample_quad(gid: vec3<u32>, groups: vec3<u32>, quads: u32) -> vec2<u32> {
    let index = flat_invocation(gid, groups, 64u);
    let n = quotient(index, quads);
    return vec2<u32>(n, index - n * quads);
}

@compute @workgroup_size(64)
fn avgpool_global_forward_quads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let quads = shape.channels / 4u;
    let at = sample_quad(gid, groups, quads);
    if (at.x >= shape.samples) {
        return;
    }
    let size_y = shape.size_y;
    let size_x = shape.size_x;
    let width = shape.in_width;
    let image = at.x * shape.in_height;
    var sum = vec4<f32>(0.0);
    for (var dy = 0u; dy < size_y; dy++) {
        let row = (image + dy) * width;
        for (var dx = 0u; dx < size_x; dx++) {
            sum += input_quads[(row + dx) * quads + at.y];
        }
    }
    output_quads[at.x * quads + at.y] = sum / f32(size_y * size_x);
}

@compute @workgroup_size(64)
fn avgpool_global_backward_quads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let quads = shape.channels / 4u;
    let at = sample_quad(gid, groups, quads);
    if (at.x >= shape.samples) {
        return;
    }
    let size_y = shape.size_y;
    let size_x = shape.size_x;
    let height = shape.in_height;
    let width = shape.in_width;
    let value = input_quads[at.x * quads + at.y] / f32(size_y * size_x);
    for (var y = 0u; y < height; y++) {
        let row = (at.x * height + y) * width;
        for (var x = 0u; x < width; x++) {
            let inside = y < size_y && x < size_x;
            output_quads[(row + x) * quads + at.y] = select(vec4<f32>(0.0), value, inside);
        }
    }
}
