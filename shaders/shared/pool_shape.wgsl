// The windows of a pooling kernel (pool.wgsl, avgpool.wgsl; src/layers/pool.rs `PoolShape`):
// an input of samples x H x W x C, channels-last, 'valid' windows of SY x SX, strides (TY, TX),
// an output of OH x OW.
struct PoolShape {
    samples: u32,
    in_height: u32,
    in_width: u32,
    channels: u32,
    out_height: u32,
    out_width: u32,
    size_y: u32,
    size_x: u32,
    stride_y: u32,
    stride_x: u32,
    // maxpool_backward: the activation code of the layer beneath whose derivative is applied.
    derivative: u32,
    _pad: u32,
}
