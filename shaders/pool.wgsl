// 2-D max pooling, channels-last (x[((n H + y) W + x) C + c]), 'valid' windows of SY x SX,
// strides (TY, TX): OH = (H - SY) / TY + 1, OW = (W - SX) / TX + 1.
//
// maxpool_forward, maxpool_forward_quads:
//   Y[n, oy, ox, c] = max over dy < SY, dx < SX of X[n, oy TY + dy, ox TX + dx, c]
//   A[n, oy, ox, c] = dy SX + dx of the first maximum in row-major window order
// maxpool_backward, maxpool_backward_quads: a gather, no scatter (so deterministic): each input
// value sums the gradient of every output whose window it won, in output order, times the
// derivative of the layer beneath:
//   dX[n, y, x, c] = (sum over (oy, ox) with A[n, oy, ox, c] = (y - oy TY) SX + (x - ox TX)
//                     of dY[n, oy, ox, c]) * f'(X[n, y, x, c])      f = shape.derivative
// Values in no window (past the last whole one) get 0. Where the windows tile the input
// (stride = size), maxpool_backward finds each value's one window directly, without the loop.
// The _quads entry points take four channels at a time and need C % 4 == 0; the host takes
// maxpool_backward_tiles_quads for them where the windows tile.
// maxpool_backward_tiles_quads: the same where the windows tile the input, one invocation per
// output quad writing its whole window (and, for the last window of a row or column, the values
// past it, which are in no window: 0), so that the index arithmetic and the loads of dY and A
// are paid once per window rather than once per input value; the derivative below is read at
// the pool's output (see binding 4), once per window:
//   dX[n, y, x, c] = (A[n, oy, ox, c] = offset of (y, x) in its window) ? dY[n, oy, ox, c] *
//                    f'(Y[n, oy, ox, c]) : 0
//
// Bindings (group 0):
//   0 shape   storage, read        PoolShape (shared/pool_shape.wgsl)
//   1 input   storage, read        forward: X f32 [samples, H, W, C]; backward: dY [samples, OH, OW, C]
//   2 output  storage, read_write  forward: Y f32 [samples, OH, OW, C]; backward: dX [samples, H, W, C]
//   3 argmax  storage, forward read_write / backward read   u32 [samples, OH, OW, C]
//   4 below   storage, read        backward: X, the layer beneath's output (any buffer where
//                                  shape.derivative is 0); maxpool_backward_tiles_quads: Y,
//                                  the pool's output [samples, OH, OW, C] (the maximum of each
//                                  window, the one value whose derivative counts)
// Compiled with the feature `mirrors` (pool_mirrors.wgsl), the _quads entry points bind 1 (and the
// backward ones 4) as texture_2d<f32>: rgba32float mirrors of those buffers, vec4 i at the texel
// (i % MIRROR_ROW_TEXELS, i / MIRROR_ROW_TEXELS) (shared/mirror.wgsl).
//
// Workgroup: 64 invocations. Dispatch grid, folded into (x, y) with x <= 65535 (invocation =
// (y * num_workgroups.x + x) * 64 + local): one invocation per output value (forward) or input
// value (backward), a quarter as many for the _quads entry points; maxpool_backward_tiles_quads
// one per output quad, samples OH OW C / 4.

import package::shared::activations::{derivative_from_output, derivative_from_output4};
import package::shared::grid::flat_invocation;
import package::shared::divide::quotient;
import package::shared::pool_shape::PoolShape;
import package::shared::mirror::mirrored;


@group(0) @binding(0) var<storage, read> shape: PoolShape;
@group(0) @binding(1) var<storage, read> input: array<f32>;
@group(0) @binding(2) var<storage, read_write> output: array<f32>;
@group(0) @binding(3) var<storage, read_write> argmax_out: array<u32>;
@group(0) @binding(3) var<storage, read> argmax_in: array<u32>;
@group(0) @binding(4) var<storage, read> below: array<f32>;
@group(0) @binding(2) var<storage, read_write> output_quads: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> argmax_out_quads: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> argmax_in_quads: array<vec4<u32>>;

// The _quads entry points read bindings 1 and 4 through input_quad and below_quad: from the
// storage buffers, or in the variant compiled with the feature `mirrors` (pool_mirrors.wgsl)
// from their texture mirrors (src/gpu/mirror.rs), whose fetches lavapipe vectorises where it
// loads a buffer lane by lane.
@if(!mirrors) @group(0) @binding(1) var<storage, read> input_quads: array<vec4<f32>>;
@if(!mirrors) @group(0) @binding(4) var<storage, read> below_quads: array<vec4<f32>>;
@if(mirrors) @group(0) @binding(1) var input_mirror: texture_2d<f32>;
@if(mirrors) @group(0) @binding(4) var below_mirror: texture_2d<f32>;

// vec4 i of bindings 1 and 4.
@if(!mirrors) fn input_quad(i: u32) -> vec4<f32> { return input_quads[i]; }
@else fn input_quad(i: u32) -> vec4<f32> { return mirrored(input_mirror, i); }
@if(!mirrors) fn below_quad(i: u32) -> vec4<f32> { return below_quads[i]; }
@else fn below_quad(i: u32) -> vec4<f32> { return mirrored(below_mirror, i); }

// Where a value's window lies, read from the shape once.
struct Windows {
    in_height: u32,
    in_width: u32,
    out_height: u32,
    out_width: u32,
    channels: u32,
    size_y: u32,
    size_x: u32,
    stride_y: u32,
    stride_x: u32,
}

fn windows() -> Windows {
    return Windows(shape.in_height, shape.in_width, shape.out_height, shape.out_width, shape.channels,
        shape.size_y, shape.size_x, shape.stride_y, shape.stride_x);
}

// A pixel (n, y, x) of an image `height` x `width`, from its index n H W + y W + x.
struct Pixel {
    n: u32,
    y: u32,
    x: u32,
}

fn pixel_of(index: u32, height: u32, width: u32) -> Pixel {
    let n = quotient(index, height * width);
    let in_sample = index - n * height * width;
    let y = quotient(in_sample, width);
    return Pixel(n, y, in_sample - y * width);
}

// The index, in channel units, of the first value of output pixel `o`'s window (its channel 0).
fn window_start(w: Windows, o: Pixel) -> u32 {
    return ((o.n * w.in_height + o.y * w.stride_y) * w.in_width + o.x * w.stride_x) * w.channels;
}

// The output pixel whose window holds input pixel `p` at offset (dy, dx), as an index into the
// output's pixels, or none (0xffffffff).
fn window_at(w: Windows, p: Pixel, dy: u32, dx: u32) -> u32 {
    if (dy > p.y || dx > p.x) {
        return 0xffffffffu;
    }
    let sy = p.y - dy;
    let sx = p.x - dx;
    let oy = quotient(sy, w.stride_y);
    let ox = quotient(sx, w.stride_x);
    if (sy != oy * w.stride_y || sx != ox * w.stride_x || oy >= w.out_height || ox >= w.out_width) {
        return 0xffffffffu;
    }
    return (p.n * w.out_height + oy) * w.out_width + ox;
}

// Whether the windows tile the input (stride = size, Keras' default): then an input pixel lies
// in at most one window, found without a loop.
fn tiles(w: Windows) -> bool {
    return w.stride_y == w.size_y && w.stride_x == w.size_x;
}

// The output pixel whose window holds `p` where windows tile (none: 0xffffffff), and `p`'s
// place in that window (dy SX + dx).
struct Tile {
    pixel: u32,
    offset: u32,
}

fn tile_of(w: Windows, p: Pixel) -> Tile {
    let oy = quotient(p.y, w.size_y);
    let ox = quotient(p.x, w.size_x);
    if (oy >= w.out_height || ox >= w.out_width) {
        return Tile(0xffffffffu, 0u);
    }
    return Tile((p.n * w.out_height + oy) * w.out_width + ox, (p.y - oy * w.size_y) * w.size_x + p.x - ox * w.size_x);
}

@compute @workgroup_size(64)
fn maxpool_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = flat_invocation(gid, groups, 64u);
    let w = windows();
    if (index >= shape.samples * w.out_height * w.out_width * w.channels) {
        return;
    }
    let pixel = quotient(index, w.channels);
    let first = window_start(w, pixel_of(pixel, w.out_height, w.out_width)) + index - pixel * w.channels;
    var best = input[first];
    var best_at = 0u;
    for (var dy = 0u; dy < w.size_y; dy++) {
        for (var dx = 0u; dx < w.size_x; dx++) {
            let v = input[first + (dy * w.in_width + dx) * w.channels];
            if (v > best) {
                best = v;
                best_at = dy * w.size_x + dx;
            }
        }
    }
    output[index] = best;
    argmax_out[index] = best_at;
}

@compute @workgroup_size(64)
fn maxpool_forward_quads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = flat_invocation(gid, groups, 64u);
    let w = windows();
    let quads = w.channels / 4u;
    if (index >= shape.samples * w.out_height * w.out_width * quads) {
        return;
    }
    let pixel = quotient(index, quads);
    let first = window_start(w, pixel_of(pixel, w.out_height, w.out_width)) / 4u + index - pixel * quads;
    var best = input_quad(first);
    var best_at = vec4<u32>(0u);
    for (var dy = 0u; dy < w.size_y; dy++) {
        for (var dx = 0u; dx < w.size_x; dx++) {
            let v = input_quad(first + (dy * w.in_width + dx) * quads);
            let better = v > best;
            best = select(best, v, better);
            best_at = select(best_at, vec4<u32>(dy * w.size_x + dx), better);
        }
    }
    output_quads[index] = best;
    argmax_out_quads[index] = best_at;
}

@compute @workgroup_size(64)
fn maxpool_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = flat_invocation(gid, groups, 64u);
    let w = windows();
    if (index >= shape.samples * w.in_height * w.in_width * w.channels) {
        return;
    }
    let pixel = quotient(index, w.channels);
    let p = pixel_of(pixel, w.in_height, w.in_width);
    let c = index - pixel * w.channels;
    let derivative = derivative_from_output(shape.derivative, below[index]);
    if (tiles(w)) {
        let o = tile_of(w, p);
        var value = 0.0;
        if (o.pixel != 0xffffffffu && argmax_in[o.pixel * w.channels + c] == o.offset) {
            value = input[o.pixel * w.channels + c];
        }
        output[index] = value * derivative;
        return;
    }
    var sum = 0.0;
    for (var dy = 0u; dy < w.size_y; dy++) {
        for (var dx = 0u; dx < w.size_x; dx++) {
            let o = window_at(w, p, dy, dx);
            if (o != 0xffffffffu) {
                let at = o * w.channels + c;
                if (argmax_in[at] == dy * w.size_x + dx) {
                    sum += input[at];
                }
            }
        }
    }
    output[index] = sum * derivative;
}

@compute @workgroup_size(64)
fn maxpool_backward_quads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = flat_invocation(gid, groups, 64u);
    let w = windows();
    let quads = w.channels / 4u;
    if (index >= shape.samples * w.in_height * w.in_width * quads) {
        return;
    }
    let pixel = quotient(index, quads);
    let p = pixel_of(pixel, w.in_height, w.in_width);
    let q = index - pixel * quads;
    let derivative = derivative_from_output4(shape.derivative, below_quad(index));
    var sum = vec4<f32>(0.0);
    for (var dy = 0u; dy < w.size_y; dy++) {
        for (var dx = 0u; dx < w.size_x; dx++) {
            let o = window_at(w, p, dy, dx);
            if (o != 0xffffffffu) {
                let at = o * quads + q;
                let won = argmax_in_quads[at] == vec4<u32>(dy * w.size_x + dx);
                sum += select(vec4<f32>(0.0), input_quad(at), won);
            }
        }
    }
    output_quads[index] = sum * derivative;
}

// dX at input pixel (y, x), channel quad q, of sample n: `value` where `won`, else 0.
fn store_tile_value(w: Windows, n: u32, y: u32, x: u32, q: u32, won: vec4<bool>, value: vec4<f32>) {
    let at = ((n * w.in_height + y) * w.in_width + x) * (w.channels / 4u) + q;
    output_quads[at] = select(vec4<f32>(0.0), value, won);
}

@compute @workgroup_size(64)
fn maxpool_backward_tiles_quads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = flat_invocation(gid, groups, 64u);
    let w = windows();
    let quads = w.channels / 4u;
    if (index >= shape.samples * w.out_height * w.out_width * quads) {
        return;
    }
    let pixel = quotient(index, quads);
    let o = pixel_of(pixel, w.out_height, w.out_width);
    let q = index - pixel * quads;
    // The derivative below counts only at each window's maximum (elsewhere it multiplies a 0,
    // and every activation's derivative is finite and not negative), where X is the pool's
    // output Y: one load of Y per window instead of one of X per value.
    let value = input_quad(index) * derivative_from_output4(shape.derivative, below_quad(index));
    let won_at = argmax_in_quads[index];
    let y0 = o.y * w.size_y;
    let x0 = o.x * w.size_x;
    // The last window of a row (column) also covers the values right of (below) it.
    var y_end = y0 + w.size_y;
    if (o.y + 1u == w.out_height) {
        y_end = w.in_height;
    }
    var x_end = x0 + w.size_x;
    if (o.x + 1u == w.out_width) {
        x_end = w.in_width;
    }
    for (var y = y0; y < y_end; y++) {
        for (var x = x0; x < x_end; x++) {
            let inside = y < y0 + w.size_y && x < x0 + w.size_x;
            let offset = (y - y0) * w.size_x + (x - x0);
            let won = select(vec4<bool>(false), won_at == vec4<u32>(offset), inside);
            store_tile_value(w, o.n, y, x, q, won, value);
        }
    }
}
