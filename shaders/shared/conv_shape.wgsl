// The geometry of a convolution (conv2d.wgsl, matmul_vec4.wgsl's conv_input_grad; host twin
// src/gpu/uniforms.rs `ConvShape`): an input of samples x H x W x C, channels-last, a KH x KW
// kernel at strides (SY, SX) over the input padded by (PY, PX) zeros before, an output of
// OH x OW positions.
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
