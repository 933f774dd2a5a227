// The geometry of a convolution (conv2d.wgsl, matmul_vec4.wgsl's conv_input_grad; host twin
// src/gpu/uniforms.rs `ConvShape`): an input of samples x H x W x C, channels-last, a KH x KW
// kernel at strides (SY, SX) over the input padded by (PY, PX) zeros before, an output of
// OH x OW positions.
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

// Input pixel `pixel` (n H W + y W + x) of an H x W input padded by (PY, PX) zeros before: its
// sample, and its position in the padded input. (The fields as arguments, not the whole shape:
// on lavapipe each field read is a round of per-lane loads.)
struct PaddedPixel {
    n: u32,
    padded_y: u32,
    padded_x: u32,
}

fn padded_pixel(pixel: u32, height: u32, width: u32, pad_y: u32, pad_x: u32) -> PaddedPixel {
    let per_sample = height * width;
    let n = quotient(pixel, per_sample);
    let in_sample = pixel - n * per_sample;
    let y = quotient(in_sample, width);
    return PaddedPixel(n, y + pad_y, in_sample - y * width + pad_x);
}

// Output position m (n OH OW + oy OW + ox) of an OH x OW output: its sample, and the row and
// column of its window's top-left tap in the padded input at strides (SY, SX).
struct WindowCorner {
    n: u32,
    top: u32,
    left: u32,
}

fn window_corner(m: u32, out_height: u32, out_width: u32, stride_y: u32, stride_x: u32) -> WindowCorner {
    let positions = out_height * out_width;
    let n = quotient(m, positions);
    let position = m - n * positions;
    let oy = quotient(position, out_width);
    return WindowCorner(n, oy * stride_y, (position - oy * out_width) * stride_x);
}
