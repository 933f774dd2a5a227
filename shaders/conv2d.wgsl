// The data movement of a convolution computed as matrix products (the products themselves are
// matmul.wgsl's / matmul_vec4.wgsl's): the patch matrix of the forward pass and the gather of the
// input gradient from the patch matrix's gradient (where matmul_vec4.wgsl's conv_input_grad does
// not compute it straight from dZ: see MatmulKernels::conv_input_grad). Tensors are
// channels-last: sample n's value at (y, x, c) of an H x W x C image is x[((n H + y) W + x) C + c].
//
// im2col, im2col_quads (rows R = samples * OH * OW, columns shape.columns = Kp):
//   P[(n, oy, ox), (ky KW + kx) C + c] = x[n, oy sy + ky - py, ox sx + kx - px, c]   (0 outside)
//   P[(n, oy, ox), KH KW C] = B          (times the bias row of the weight matrix: the bias;
//                                        B = shape.bias: 1, or 0 for a layer without a bias,
//                                        whose bias row then gets no gradient and stays 0)
//   P[(n, oy, ox), k] = 0                for KH KW C < k < Kp
// Then Y = P W (one product: k = Kp, the bias in it, the activation in its epilogue),
// dW = Pᵀ dZ (the ones column makes its row KH KW C the bias gradient) and dP = dZ Wᵀ.
// col2im, col2im_quads: the input gradient, each value the sum of the patch entries that copied
// it, kernel rows then columns in ascending order, times the derivative of the layer beneath:
//   dX[n, y, x, c] = (sum over ky, kx with (y + py - ky) / sy = oy and (x + px - kx) / sx = ox
//                     whole and inside the output of dP[(n, oy, ox), (ky KW + kx) C + c])
//                    * f'(X[n, y, x, c])        f = shape.derivative (shared/activations.wgsl)
// The _quads entry points move four channels at a time and need C % 4 == 0; the others any C.
//
// Bindings (group 0):
//   0 shape   storage, read        ConvShape (shared/conv_shape.wgsl)
//   1 input  storage, read        im2col: x f32 [samples, H, W, C]; col2im: dP f32 [R, Kp]
//   2 output  storage, read_write  im2col: P f32 [R, Kp];             col2im: dX f32 [samples, H, W, C]
//   3 below   storage, read        col2im: X f32 [samples, H, W, C], the output of the layer
//                                  beneath (any buffer where shape.derivative is 0)
//
// Workgroup: 64 invocations. Dispatch grid, folded into (x, y) with x <= 65535 (invocation =
// (y * num_workgroups.x + x) * 64 + local):
//   im2col, im2col_quads  R invocations, one per patch row
//   col2im        samples H W C invocations, one per input value
//   col2im_quads  samples H W C / 4, one per vec4 of channels

import package::shared::activations::{derivative_from_output, derivative_from_output4};
import package::shared::grid::flat_invocation;
import package::shared::divide::quotient;
import package::shared::conv_shape::{ConvShape, padded_pixel, window_corner};

@group(0) @binding(0) var<storage, read> shape: ConvShape;
@group(0) @binding(1) var<storage, read> input: array<f32>;
@group(0) @binding(2) var<storage, read_write> output: array<f32>;
@group(0) @binding(3) var<storage, read> below: array<f32>;
@group(0) @binding(1) var<storage, read> input_quads: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> output_quads: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> below_quads: array<vec4<f32>>;

// A patch row's window: its sample, its top-left corner in the padded image, and the shape's
// fields its taps need, read from the shape once (on lavapipe each read inside a loop is another
// round of per-lane loads).
struct Window {
    n: u32,
    top: u32,
    left: u32,
    height: u32,
    width: u32,
    pad_y: u32,
    pad_x: u32,
    kernel_height: u32,
    kernel_width: u32,
}

fn window_of(row: u32) -> Window {
    let c = window_corner(row, shape.out_height, shape.out_width, shape.stride_y, shape.stride_x);
    return Window(c.n, c.top, c.left, shape.in_height, shape.in_width,
        shape.pad_y, shape.pad_x, shape.kernel_height, shape.kernel_width);
}

// No input pixel: a tap in the padding.
const OUTSIDE: u32 = 0xffffffffu;

// The input pixel (n H + y) W + x under tap (ky, kx) of window w, or OUTSIDE.
fn tap_pixel(w: Window, ky: u32, kx: u32) -> u32 {
    // Unsigned: a position left of or above the image wraps to a huge value, outside too.
    let y = w.top + ky - w.pad_y;
    let x = w.left + kx - w.pad_x;
    if (w.top + ky < w.pad_y || w.left + kx < w.pad_x || y >= w.height || x >= w.width) {
        return OUTSIDE;
    }
    return (w.n * w.height + y) * w.width + x;
}

// im2col and im2col_quads: one invocation per patch row, which it writes as Kp / 4 vec4 (a
// window's values, then the ones column and zeros), so that the row's position is found once
// rather than once per tap, and a row of a few-channel image (C = 1: KH KW + 1 values) takes a
// few vec4 stores rather than a tap's invocation each.
@compute @workgroup_size(64)
fn im2col(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let row = flat_invocation(gid, groups, 64u);
    if (row >= shape.samples * shape.out_height * shape.out_width) {
        return;
    }
    let channels = shape.channels;
    let w = window_of(row);
    var pending = vec4<f32>(0.0);
    var filled = 0u;
    var at = row * (shape.columns / 4u);
    for (var ky = 0u; ky < w.kernel_height; ky++) {
        for (var kx = 0u; kx < w.kernel_width; kx++) {
            let pixel = tap_pixel(w, ky, kx);
            for (var c = 0u; c < channels; c++) {
                var value = 0.0;
                if (pixel != OUTSIDE) {
                    value = input[pixel * channels + c];
                }
                pending[filled] = value;
                filled++;
                if (filled == 4u) {
                    output_quads[at] = pending;
                    at++;
                    filled = 0u;
                }
            }
        }
    }
    // The ones column, then zeros to Kp: one last vec4, since KH KW C + 1 <= Kp < KH KW C + 5.
    pending[filled] = f32(shape.bias);
    for (var j = filled + 1u; j < 4u; j++) {
        pending[j] = 0.0;
    }
    output_quads[at] = pending;
}

@compute @workgroup_size(64)
fn im2col_quads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let row = flat_invocation(gid, groups, 64u);
    if (row >= shape.samples * shape.out_height * shape.out_width) {
        return;
    }
    let quads = shape.channels / 4u;
    let w = window_of(row);
    var at = row * (shape.columns / 4u);
    for (var ky = 0u; ky < w.kernel_height; ky++) {
        for (var kx = 0u; kx < w.kernel_width; kx++) {
            let pixel = tap_pixel(w, ky, kx);
            for (var q = 0u; q < quads; q++) {
                var value = vec4<f32>(0.0);
                if (pixel != OUTSIDE) {
                    value = input_quads[pixel * quads + q];
                }
                output_quads[at] = value;
                at++;
            }
        }
    }
    // KH KW C is a multiple of 4, so the tail is one vec4: the one and three zeros.
    output_quads[at] = vec4<f32>(f32(shape.bias), 0.0, 0.0, 0.0);
}

// The output positions along one axis whose windows hold the padded position p: o from
// `last` down `count` positions, each at kernel offset p - o stride (ascending as o descends).
struct Span {
    last: u32,
    count: u32,
}

fn windows_over(p: u32, size: u32, stride: u32, outputs: u32) -> Span {
    // o stride <= p and o < outputs ...
    let last = min(quotient(p, stride), outputs - 1u);
    // ... and p - o stride < size.
    var first = 0u;
    if (p + 1u > size) {
        first = quotient(p + 1u - size + stride - 1u, stride);
    }
    if (first > last) {
        return Span(0u, 0u);
    }
    return Span(last, last - first + 1u);
}

// Where an input value's gradient gathers from: the patch rows (output positions) whose windows
// hold its pixel, and the pixel's place in each.
struct Gather {
    // The first patch row of the pixel's sample.
    sample_row: u32,
    rows: Span,
    columns: Span,
    padded_y: u32,
    padded_x: u32,
}

// The input pixel of index `pixel` (n H W + y W + x).
fn gather_of(pixel: u32) -> Gather {
    let p = padded_pixel(pixel, shape.in_height, shape.in_width, shape.pad_y, shape.pad_x);
    return Gather(p.n * shape.out_height * shape.out_width,
        windows_over(p.padded_y, shape.kernel_height, shape.stride_y, shape.out_height),
        windows_over(p.padded_x, shape.kernel_width, shape.stride_x, shape.out_width),
        p.padded_y, p.padded_x);
}

@compute @workgroup_size(64)
fn col2im(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = flat_invocation(gid, groups, 64u);
    let channels = shape.channels;
    if (index >= shape.samples * shape.in_height * shape.in_width * channels) {
        return;
    }
    let pixel = quotient(index, channels);
    let g = gather_of(pixel);
    let c = index - pixel * channels;
    let columns = shape.columns;
    let out_width = shape.out_width;
    let kernel_width = shape.kernel_width;
    let stride_y = shape.stride_y;
    let stride_x = shape.stride_x;
    var sum = 0.0;
    for (var i = 0u; i < g.rows.count; i++) {
        let oy = g.rows.last - i;
        let ky = g.padded_y - oy * stride_y;
        let first_row = g.sample_row + oy * out_width;
        for (var j = 0u; j < g.columns.count; j++) {
            let ox = g.columns.last - j;
            let kx = g.padded_x - ox * stride_x;
            sum += input[(first_row + ox) * columns + (ky * kernel_width + kx) * channels + c];
        }
    }
    output[index] = sum * derivative_from_output(shape.derivative, below[index]);
}

@compute @workgroup_size(64)
fn col2im_quads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = flat_invocation(gid, groups, 64u);
    let quads = shape.channels / 4u;
    if (index >= shape.samples * shape.in_height * shape.in_width * quads) {
        return;
    }
    let pixel = quotient(index, quads);
    let g = gather_of(pixel);
    let q = index - pixel * quads;
    let row_quads = shape.columns / 4u;
    let out_width = shape.out_width;
    let kernel_width = shape.kernel_width;
    let stride_y = shape.stride_y;
    let stride_x = shape.stride_x;
    var sum = vec4<f32>(0.0);
    for (var i = 0u; i < g.rows.count; i++) {
        let oy = g.rows.last - i;
        let ky = g.padded_y - oy * stride_y;
        let first_row = g.sample_row + oy * out_width;
        for (var j = 0u; j < g.columns.count; j++) {
            let ox = g.columns.last - j;
            let kx = g.padded_x - ox * stride_x;
            sum += input_quads[(first_row + ox) * row_quads + (ky * kernel_width + kx) * quads + q];
        }
    }
    output_quads[index] = sum * derivative_from_output4(shape.derivative, below_quads[index]);
}
