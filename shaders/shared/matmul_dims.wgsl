// The parameters of a matrix product C[m, n] = sum_k A(m, k) B(k, n), A and B read through
// offsets and strides (in floats): matmul.wgsl and matmul_vec4.wgsl say how each kernel reads
// them. Host twin: src/gpu/uniforms.rs `MatmulDims`.

struct Dims {
    m: u32,
    n: u32,
    k: u32,
    a_offset: u32,
    a_row_stride: u32,
    a_col_stride: u32,
    b_offset: u32,
    b_row_stride: u32,
    b_col_stride: u32,
    c_offset: u32,
    // With an epilogue, the bias's offset in the B buffer.
    bias_offset: u32,
    // NO_EPILOGUE: the plain product; 1 + an activation code: the forward epilogue f(C + bias);
    // DERIVATIVE_EPILOGUE + an activation code: the backward epilogue C * f'(a);
    // ACTIVATION_EPILOGUE + an activation code: f(C) (a product whose last k carries the bias).
    epilogue: u32,
    // matmul_parts, matmul_tn_parts: the number of slices K is split into (each a part of the
    // output, which matmul_sum_parts adds); 1 for every other kernel.
    parts: u32,
}

const NO_EPILOGUE: u32 = 0u;
const DERIVATIVE_EPILOGUE: u32 = 8u;
const ACTIVATION_EPILOGUE: u32 = 16u;
