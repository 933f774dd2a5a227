// The data movement of a convolution computed as matrix products (the products themselves are
// matmul.wgsl's / matmul_vec4.wgsl's): the patch matrix of the forward pass and the gather of the
// input gradient from the patch matrix's gradient. Tensors are channels-last: sample n's value
// at (y, x, c) of an H x W x C image is x[((n H + y) W + x) C + c].
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
//   0 shape   storage, read        ConvShape below
//   1 input  storage, read        im2col: x f32 [samples, H, W, C]; col2im: dP f32 [R, Kp]
//   2 output  storage, read_write  im2col: P f32 [R, Kp];             col2im: dX f32 [samples, H, W, C]
//   3 below   storage, read        col2im: X f32 [samples, H, W, C], the output of the layer
//                                  beneath (any buffer where shape.derivative is 0)
//
// Workgroup: 64 invocations. Dispatch grid, folded into (x, y) with x <= 65535 (invocation =
// (y * num_workgroups.x + x) * 64 + local):
//   im2col        R (KH KW + 1) invocations: (row, tap), tap KH KW writing columns KH KW C..Kp
//   im2col_quads  the same, each tap moving C / 4 vec4
//   col2im        samples H W C invocations, one per input value
//   col2im_quads  samples H W C / 4, one per vec4 of channels

import package::shared::activations::{derivative_from_output, derivative_from_output4};
import package::shared::grid::flat_invocation;
import package::shared::divide::quotient;

struct ConvShape {
    samples: u32,
    in_height: u32,
    in_width: u32,
    channels: u32,
    out_height: u32,
    out_width: u32,
    kernel_height: u32,
    kernel_width: u32,
    stride_y: u32,
    stride_x: u32,
    pad_y: u32,
    pad_x: u32,
    // Kp: the patch matrix's row length, KH KW C + 1 rounded up to a multiple of 4.
    columns: u32,
    // col2im: the activation code of the layer beneath whose derivative is applied (0: none).
    derivative: u32,
    // im2col: the ones column's value, 1 (0: the layer has no bias).
    bias: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> shape: ConvShape;
@group(0) @binding(1) var<storage, read> input: array<f32>;
@group(0) @binding(2) var<storage, read_write> output: array<f32>;
@group(0) @binding(3) var<storage, read> below: array<f32>;
@group(0) @binding(1) var<storage, read> input_quads: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> output_quads: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> below_quads: array<vec4<f32>>;

// A patch row and tap of im2col, read from the shape once.
struct Tap {
    row: u32,
    tap: u32,
    taps: u32,
    // The first input value of the tap's pixel (its channel 0), if the pixel is inside the image.
    inside: bool,
    first: u32,
}

fn tap_of(index: u32) -> Tap {
    let taps = shape.kernel_height * shape.kernel_width;
    let row = quotient(index, taps + 1u);
    let tap = index - row * (taps + 1u);
    let positions = shape.out_height * shape.out_width;
    let n = quotient(row, positions);
    let position = row - n * positions;
    let oy = quotient(position, shape.out_width);
    let ox = position - oy * shape.out_width;
    let ky = quotient(tap, shape.kernel_width);
    let kx = tap - ky * shape.kernel_width;
    // Unsigned: a position left of or above the image wraps to a huge value, outside too.
    let y = oy * shape.stride_y + ky - shape.pad_y;
    let x = ox * shape.stride_x + kx - shape.pad_x;
    let inside = oy * shape.stride_y + ky >= shape.pad_y && ox * shape.stride_x + kx >= shape.pad_x
        && y < shape.in_height && x < shape.in_width;
    return Tap(row, tap, taps, inside, ((n * shape.in_height + y) * shape.in_width + x) * shape.channels);
}

@compute @workgroup_size(64)
fn im2col(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = flat_invocation(gid, groups, 64u);
    let rows = shape.samples * shape.out_height * shape.out_width;
    let taps = shape.kernel_height * shape.kernel_width;
    if (index >= rows * (taps + 1u)) {
        return;
    }
    let t = tap_of(index);
    let channels = shape.channels;
    let columns = shape.columns;
    let start = t.row * columns + t.tap * channels;
    if (t.tap == taps) {
        // The tail: the ones column and the zeros after it.
        output[start] = f32(shape.bias);
        for (var k = start + 1u; k < (t.row + 1u) * columns; k++) {
            output[k] = 0.0;
        }
        return;
    }
    for (var c = 0u; c < channels; c++) {
        var value = 0.0;
        if (t.inside) {
            value = input[t.first + c];
        }
        output[start + c] = value;
    }
}

@compute @workgroup_size(64)
fn im2col_quads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = flat_invocation(gid, groups, 64u);
    let rows = shape.samples * shape.out_height * shape.out_width;
    let taps = shape.kernel_height * shape.kernel_width;
    if (index >= rows * (taps + 1u)) {
        return;
    }
    let t = tap_of(index);
    let quads = shape.channels / 4u;
    let start = (t.row * shape.columns + t.tap * shape.channels) / 4u;
    if (t.tap == taps) {
        // KH KW C is a multiple of 4, so the tail is one vec4: the one and three zeros.
        output_quads[start] = vec4<f32>(f32(shape.bias), 0.0, 0.0, 0.0);
        return;
    }
    let first = t.first / 4u;
    for (var q = 0u; q < quads; q++) {
        var value = vec4<f32>(0.0);
        if (t.inside) {
            value = input_quads[first + q];
        }
        output_quads[start + q] = value;
    }
}

// Where an input value's gradient gathers from, read from the shape once.
struct Gather {
    n: u32,
    y: u32,
    x: u32,
    kernel_height: u32,
    kernel_width: u32,
    stride_y: u32,
    stride_x: u32,
    out_height: u32,
    out_width: u32,
    // (y + pad_y, x + pad_x): the position in the padded image.
    padded_y: u32,
    padded_x: u32,
}

// The input pixel of index `pixel` (n H W + y W + x).
fn gather_of(pixel: u32) -> Gather {
    let per_sample = shape.in_height * shape.in_width;
    let n = quotient(pixel, per_sample);
    let in_sample = pixel - n * per_sample;
    let y = quotient(in_sample, shape.in_width);
    let x = in_sample - y * shape.in_width;
    return Gather(n, y, x, shape.kernel_height, shape.kernel_width, shape.stride_y, shape.stride_x,
        shape.out_height, shape.out_width, y + shape.pad_y, x + shape.pad_x);
}

// The patch-matrix row that copied the pixel under kernel position (ky, kx), or none (-1 as u32).
fn patch_row(g: Gather, ky: u32, kx: u32) -> u32 {
    if (ky > g.padded_y || kx > g.padded_x) {
        return 0xffffffffu;
    }
    let sy = g.padded_y - ky;
    let sx = g.padded_x - kx;
    let oy = quotient(sy, g.stride_y);
    let ox = quotient(sx, g.stride_x);
    if (sy != oy * g.stride_y || sx != ox * g.stride_x || oy >= g.out_height || ox >= g.out_width) {
        return 0xffffffffu;
    }
    return (g.n * g.out_height + oy) * g.out_width + ox;
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
    var sum = 0.0;
    for (var ky = 0u; ky < g.kernel_height; ky++) {
        for (var kx = 0u; kx < g.kernel_width; kx++) {
            let row = patch_row(g, ky, kx);
            if (row != 0xffffffffu) {
                sum += input[row * columns + (ky * g.kernel_width + kx) * channels + c];
            }
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
    var sum = vec4<f32>(0.0);
    for (var ky = 0u; ky < g.kernel_height; ky++) {
        for (var kx = 0u; kx < g.kernel_width; kx++) {
            let row = patch_row(g, ky, kx);
            if (row != 0xffffffffu) {
                sum += input_quads[row * row_quads + (ky * g.kernel_width + kx) * quads + q];
            }
        }
    }
    output_quads[index] = sum * derivative_from_output4(shape.derivative, below_quads[index]);
}
