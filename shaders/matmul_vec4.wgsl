// Dense-layer matrix products, register-tiled with vec4 loads and no workgroup memory: the
// variant for CPU adapters such as lavapipe, where workgroup memory is ordinary memory and loads,
// not FMAs, are the cost, so each loaded vec4 must feed as many FMAs as possible. The operands are
// read from texture mirrors of their buffers (src/gpu/mirror.rs): lavapipe fetches texels with
// SIMD code but loads from a storage buffer lane by lane.
//
//   C[m, n] = sum_k A(m, k) * B(k, n)        for m < M, n < N, k < K
//
// One entry point per storage order of the operands (the same Dims as matmul.wgsl; offsets and
// strides in floats, all multiples of 4 so that every load is one aligned vec4):
//   matmul_nn  A row-major [M, K] (a_col_stride 1), B row-major [K, N] (b_col_stride 1)
//              forward  Y = X W; and the first layer's [dW; db] = [Xᵀ; 1ᵀ] dY, on the batch
//              the gather also stored transposed with a row of ones below (gather.wgsl)
//   matmul_tn  A stored [K, M] (a_row_stride 1),   B row-major [K, N]
//              weight grad  dW = Xᵀ dY
//   matmul_nt  A row-major [M, K],                 B stored [N, K] (b_row_stride 1)
//              input grad  dX = dY Wᵀ
//   matmul_tn_parts  as matmul_tn, K split into dims.parts slices whose partial products
//              matmul.wgsl's matmul_sum_parts adds (see the entry point)
//   matmul_tn_shared_parts  matmul_tn_parts' parts with matmul_tn's shared loads, for M >= 64
//              (see the entry point)
//   conv_input_grad  a convolution's input gradient straight from its output's gradient dZ,
//              without the patch matrix's gradient and col2im (conv2d.wgsl), through the
//              derivative of the layer beneath (conv.derivative, X in below_values):
//                dX[(n, y, x), c] = (sum over taps (ky, kx), ascending, of
//                                    sum over f of dZ[(n, oy, ox), f] W[(ky KW + kx) C + c, f])
//                                   * f'(X[n, y, x, c])
//              where oy = (y + PY - ky) / SY and ox = (x + PX - kx) / SX are whole and inside
//              the output (else the tap adds nothing): M = samples H W, N = C, each tap's sum
//              over f, a product like matmul_nt's with B = W's rows of the tap, rounded on
//              its own before the sum over taps (so the bits are the patch-matrix path's).
//              dims: m, n = C, a_offset (dZ [samples OH OW, F]), b_offset (W), b_col_stride
//              = F, c_offset; C % 4 == 0 and F % 4 == 0. A workgroup computes pixels of one
//              class, the grid's z (y % SY, x % SX: one class at stride 1, in pixel order),
//              over the taps ky = y + PY (mod SY), kx = x + PX (mod SX) alone: the others
//              never read a whole output position.
//   conv_forward  a convolution's forward product Y = f(P W) (matmul_nn's, the same blocks,
//              loads of B and FMAs in the same order) with A = P, the patch matrix, read from
//              the input image X [samples H W, C] instead of a matrix im2col wrote: for output
//              position m and k = (ky KW + kx) C + c,
//                P[m, k] = X[(n, oy SY + ky - PY, ox SX + kx - PX), c]   (0 in the padding)
//              and after the taps the quad (bias, 0, 0, 0), bias = conv.bias (the ones column
//              the bias row of W meets). dims as matmul_nn's for P (K = KH KW C + 4), with
//              a_offset X's place; C % 4 == 0, so that a quad of k is a texel of X's mirror.
//   conv_weight_grad_parts  a convolution's weight gradient [dW; db; 0] = Pᵀ dZ as
//              matmul_tn_shared_parts computes it (the same parts, blocks and order), P read
//              from X as above, one output position after another along K; dims as for the
//              patch matrix's product (M = KH KW C + 4 >= 64), dims.parts 1 storing C itself.
// Epilogue (dims.epilogue): 0 stores the product. matmul_nn, as in matmul.wgsl: 1 + an
// activation code stores f(C + bias), the bias a vec4 per column quad at vec4 bias_offset / 4 + q
// of the B buffer (its mirror), or 16 + an activation code stores f(C) (a convolution's product,
// its bias in the last k); f is the pipeline's ACTIVATION (an override constant: one matmul_nn
// pipeline per activation, as code for every activation on 32 accumulators is slow to compile on
// lavapipe). matmul_nt: DERIVATIVE_EPILOGUE + an activation code stores
// C ⊙ f'(a), a read from `below` at C's position (the output a = f(z) of the layer beneath,
// activation codes and derivatives as in shared/activations.wgsl): the input gradient carried through
// that layer's activation, for which activation.wgsl then only sums the bias gradient.
// Requirements (checked by the host, which uses matmul.wgsl otherwise): N % 4 == 0, every offset
// (the bias's too) and stride a multiple of 4, K % 4 == 0 for nn and nt, M % 4 == 0 for tn; and
// subgroups (the host builds this module only on a device with them) of 8 to 64 invocations.
//
// Bindings (group 0):
//   0 dims   storage, read        Dims (shared/matmul_dims.wgsl)
//   1 lhs    texture_2d<f32>      rgba32float mirror of the buffer holding A at dims.a_offset:
//                                 its vec4 i is the texel (i % MIRROR_ROW_TEXELS, i / MIRROR_ROW_TEXELS)
//   2 rhs    texture_2d<f32>      likewise for the buffer holding B (and the bias) at dims.b_offset
//   3 out    storage, read_write  vec4<f32> array; C is row-major [M, N] at dims.c_offset / 4
//   4 below  texture_2d<f32>      matmul_nt only: mirror of the buffer holding a, its vec4 i
//                                 beside C's vec4 i (any mirror where the epilogue is 0)
//   5 conv   storage, read        conv_input_grad, conv_forward, conv_weight_grad_parts only:
//                                 ConvShape (shared/conv_shape.wgsl); for the latter two lhs
//                                 is the mirror of X
//   6 below_values storage, read  conv_input_grad only: X vec4 [samples H W C / 4] (any buffer
//                                 where conv.derivative is 0)
//
// Each invocation computes a block of C in registers: 8 x 16 (8 rows, four vec4 of columns, in
// 32 vec4 accumulators) in matmul_nn and matmul_tn, 8 x 8 (two vec4 of columns, 16
// accumulators) in matmul_nt. A workgroup is 8 groups of 8 lanes, numbered through the subgroup
// builtins so that a group lies inside one subgroup, and the lanes of a group share what they
// load through subgroupShuffle (a SIMD shuffle, no memory access): in matmul_nn the group is
// 4 x 2 blocks, each row of A loaded by one of the 2 lanes needing it and each k row of B by one
// of the 4; in matmul_nt 2 x 4 blocks, each row of A loaded by one of 4 lanes and each part of B
// by one of 2; in matmul_tn the group's blocks share their 16 columns, so each lane loads 2 of
// the 16 vec4 of B four k need. Per four k a lane then loads 8 vec4 for 128 vec4 FMAs (nn; 48
// unshared), 6 for 64 (nt; 16 unshared) or 10 for 128 (tn; 24 unshared), with the same
// arithmetic in the same order as unshared: on lavapipe loads per FMA are the cost. Blocks past
// M or N are computed on clamped (valid) indices and not stored, so M and N need not be
// multiples of a block, and every lane takes part in every shuffle.
// conv_input_grad computes 8 x 8 blocks as matmul_nt does, the rows it loads per four k found
// per tap from the pixel's position.
// Workgroup: 64 invocations covering 8 x 8 blocks (matmul_nn and conv_forward: 2 NN_ACROSS x
// 32 / NN_ACROSS; conv_input_grad: 4 x 16, 32 columns and 128 rows).
// Dispatch grid: (ceil(N / (block columns of a workgroup)), ceil(M / (its rows)), 1); for
// conv_input_grad M is the largest class's pixels and z the SY SX classes; the shared parts
// kernels' at their entry point.

import package::shared::matmul_dims::{Dims, NO_EPILOGUE, DERIVATIVE_EPILOGUE, ACTIVATION_EPILOGUE};
import package::shared::activations::{activate4, derivative_from_output4};
import package::shared::mirror::mirrored;
import package::shared::grid::flat_invocation;
import package::shared::conv_shape::{ConvShape, padded_pixel, window_corner};
import package::shared::divide::quotient;

// matmul_nn's forward activation (activation.wgsl's codes; see Epilogue above).
override ACTIVATION: u32 = 0u;
// matmul_nn's groups across a workgroup (1, 2 or 4): 4 covers 128 columns and 64 rows of C, 1
// covers 32 columns and 256 rows, so that a narrow product (a convolution's: N = its filters)
// leaves no lane computing columns past N.
override NN_ACROSS: u32 = 4u;

@group(0) @binding(0) var<storage, read> dims: Dims;
@group(0) @binding(1) var lhs: texture_2d<f32>;
@group(0) @binding(2) var rhs: texture_2d<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(4) var below: texture_2d<f32>;

fn lhs_at(i: u32) -> vec4<f32> {
    return mirrored(lhs, i);
}

fn rhs_at(i: u32) -> vec4<f32> {
    return mirrored(rhs, i);
}

// The 8 x 8 block of C (matmul_nt): row r, columns 0-3 in lo[r] and 4-7 in hi[r].
struct Block {
    lo: array<vec4<f32>, 8>,
    hi: array<vec4<f32>, 8>,
}

// The 8 x 16 block of C: row r, columns 4c..4c+3 in c<c>[r].
struct WideBlock {
    c0: array<vec4<f32>, 8>,
    c1: array<vec4<f32>, 8>,
    c2: array<vec4<f32>, 8>,
    c3: array<vec4<f32>, 8>,
}

// acc + a.x b0 + a.y b1 + a.z b2 + a.w b3: one row's contribution of four k.
fn row4(acc: vec4<f32>, a: vec4<f32>, b0: vec4<f32>, b1: vec4<f32>, b2: vec4<f32>, b3: vec4<f32>) -> vec4<f32> {
    return fma(vec4<f32>(a.w), b3, fma(vec4<f32>(a.z), b2, fma(vec4<f32>(a.y), b1, fma(vec4<f32>(a.x), b0, acc))));
}

// The four values stored at C[m, 4q..4q+3] (see Epilogue above).
fn finish(value: vec4<f32>, q: u32, epilogue: u32, bias_offset: u32) -> vec4<f32> {
    if (epilogue == NO_EPILOGUE) {
        return value;
    }
    if (epilogue >= ACTIVATION_EPILOGUE) {
        return activate4(ACTIVATION, value);
    }
    return activate4(ACTIVATION, value + rhs_at(bias_offset / 4u + q));
}

// The four values stored at C[m, 4q..4q+3] by matmul_nt, C's vec4 i (see Epilogue above).
fn through_derivative(value: vec4<f32>, i: u32, epilogue: u32) -> vec4<f32> {
    if (epilogue < DERIVATIVE_EPILOGUE) {
        return value;
    }
    return value * derivative_from_output4(epilogue - DERIVATIVE_EPILOGUE, mirrored(below, i));
}

// Where a block's rows go in C, read from dims once.
struct Destination {
    base: u32,
    columns: u32,
    m_end: u32,
    epilogue: u32,
    bias_offset: u32,
}

fn destination() -> Destination {
    return Destination(dims.c_offset / 4u, dims.n / 4u, dims.m, dims.epilogue, dims.bias_offset);
}

// Stores the two vec4 of a row of an 8 x 8 block, C's vec4 start and start + 1 (columns q0 and
// q0 + 1), the second only inside C.
fn store_pair(to: Destination, start: u32, q0: u32, first: vec4<f32>, second: vec4<f32>) {
    out[start] = first;
    if (q0 + 1u < to.columns) {
        out[start + 1u] = second;
    }
}

// Row m of an 8 x 8 block through the backward epilogue, if the row lies inside C.
fn store_backward_row(to: Destination, lo: vec4<f32>, hi: vec4<f32>, m: u32, q0: u32) {
    if (m < to.m_end) {
        let start = to.base + m * to.columns + q0;
        let first = through_derivative(lo, start, to.epilogue);
        let second = through_derivative(hi, start + 1u, to.epilogue);
        store_pair(to, start, q0, first, second);
    }
}

// Stores the rows and columns of an 8 x 8 block that lie inside C through matmul_nt's epilogue
// (and store_forward_wide, below, a wide block through matmul_nn's): two functions, so that
// neither kernel carries the other's epilogue code (an exp and a tanh per value in the forward
// one, large enough to slow the first dispatch's compilation) or binding. `dims` is read once, as
// in every kernel here: on lavapipe each read inside a loop is another round of per-lane loads.
// Row by row with constant indices: a loop over the rows that NIR does not unroll (it has
// branches) would index the block dynamically, which lavapipe does through scratch memory, lane
// by lane.
fn store_backward(block: Block, m0: u32, q0: u32) {
    let to = destination();
    store_backward_row(to, block.lo[0], block.hi[0], m0, q0);
    store_backward_row(to, block.lo[1], block.hi[1], m0 + 1u, q0);
    store_backward_row(to, block.lo[2], block.hi[2], m0 + 2u, q0);
    store_backward_row(to, block.lo[3], block.hi[3], m0 + 3u, q0);
    store_backward_row(to, block.lo[4], block.hi[4], m0 + 4u, q0);
    store_backward_row(to, block.lo[5], block.hi[5], m0 + 5u, q0);
    store_backward_row(to, block.lo[6], block.hi[6], m0 + 6u, q0);
    store_backward_row(to, block.lo[7], block.hi[7], m0 + 7u, q0);
}

// Start of row m of a row-major matrix, in vec4, with m clamped into 0..rows.
fn row_start(offset: u32, stride: u32, m: u32, rows: u32) -> u32 {
    return offset / 4u + min(m, rows - 1u) * (stride / 4u);
}

// This invocation's place: its group's first lane in the subgroup, its index in the group, and
// its block's (column, row) index in the grid of blocks.
struct Lane {
    group_base: u32,
    index: u32,
    block: vec2<u32>,
}

// The builtins every entry point takes.
struct Invocation {
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(subgroup_id) subgroup: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) subgroup_size: u32,
}

// A group's 8 lanes as blocks of the same 16 columns, one below the other (matmul_tn).
fn lane_of_columns(invocation: Invocation) -> Lane {
    let flat = invocation.subgroup * invocation.subgroup_size + invocation.lane;
    let workgroup = invocation.workgroup;
    let block = vec2<u32>(workgroup.x * 8u + flat / 8u, workgroup.y * 8u + flat % 8u);
    return Lane(invocation.lane & ~7u, invocation.lane & 7u, block);
}


// A group's 8 lanes as blocks `width` wide and 8 / width high: lane i at column i % width and
// row i / width of its group; a workgroup's 8 groups as `across` across and 8 / across down.
// matmul_nt: 2 x 4 blocks (width 4: lanes c and c + 4 share columns, lanes 4 j..4 j + 3 share
// rows), 2 groups across; matmul_nn: 4 x 2 (width 2: lanes 2 j and 2 j + 1 share the rows of
// block row j, lanes c, c + 2, c + 4 and c + 6 the columns of block column c), NN_ACROSS groups
// across.
fn lane_of_tiles(invocation: Invocation, width: u32, across: u32) -> Lane {
    let flat = invocation.subgroup * invocation.subgroup_size + invocation.lane;
    let group = flat / 8u;
    let i = flat % 8u;
    let down = 8u / across;
    let high = 8u / width;
    let workgroup = invocation.workgroup;
    let block = vec2<u32>(workgroup.x * across * width + (group % across) * width + i % width, workgroup.y * down * high + (group / across) * high + i / width);
    return Lane(invocation.lane & ~7u, invocation.lane & 7u, block);
}

// The two rows of A (per four k) this lane loads for the 4 lanes of its group that share its
// block's rows (matmul_nt): rows 2 c and 2 c + 1 of the block for col_sel c, and the
// first of those 4 lanes.
struct SharedRows {
    even: u32,
    odd: u32,
    source: u32,
}

fn shared_rows(lane: Lane, m0: u32) -> SharedRows {
    let col_sel = lane.index % 4u;
    return SharedRows(
        row_start(dims.a_offset, dims.a_row_stride, m0 + 2u * col_sel, dims.m),
        row_start(dims.a_offset, dims.a_row_stride, m0 + 2u * col_sel + 1u, dims.m),
        lane.group_base + 4u * (lane.index / 4u),
    );
}

// block += (the block's 8 rows of A at four k, gathered from the lanes sharing them) x (B at those
// k: b[j] columns 0-3 and b[4 + j] columns 4-7 at k j).
fn add_shared_rows(block: ptr<function, Block>, rows: SharedRows, k4: u32, b: array<vec4<f32>, 8>) {
    add_shared_values(block, lhs_at(rows.even + k4), lhs_at(rows.odd + k4), rows.source, b);
}

// add_shared_rows on the values this lane loaded (its even and odd row at the four k).
fn add_shared_values(block: ptr<function, Block>, mine_even: vec4<f32>, mine_odd: vec4<f32>, source: u32, b: array<vec4<f32>, 8>) {
    for (var r = 0u; r < 4u; r++) {
        let a_even = subgroupShuffle(mine_even, source + r);
        let a_odd = subgroupShuffle(mine_odd, source + r);
        (*block).lo[2u * r] = row4((*block).lo[2u * r], a_even, b[0], b[1], b[2], b[3]);
        (*block).hi[2u * r] = row4((*block).hi[2u * r], a_even, b[4], b[5], b[6], b[7]);
        (*block).lo[2u * r + 1u] = row4((*block).lo[2u * r + 1u], a_odd, b[0], b[1], b[2], b[3]);
        (*block).hi[2u * r + 1u] = row4((*block).hi[2u * r + 1u], a_odd, b[4], b[5], b[6], b[7]);
    }
}

// One column quad of a wide block over four k: acc[r] += rows[r] (A's row r at the four k) x B
// at the four k, which the lanes source, source + 2, source + 4 and source + 6 loaded (`mine`:
// this lane's part, k index / 2).
fn add_quad(acc: ptr<function, array<vec4<f32>, 8>>, rows: array<vec4<f32>, 8>, mine: vec4<f32>, source: u32) {
    let b0 = subgroupShuffle(mine, source);
    let b1 = subgroupShuffle(mine, source + 2u);
    let b2 = subgroupShuffle(mine, source + 4u);
    let b3 = subgroupShuffle(mine, source + 6u);
    for (var r = 0u; r < 8u; r++) {
        (*acc)[r] = row4((*acc)[r], rows[r], b0, b1, b2, b3);
    }
}

// Row m of a wide block through the forward epilogue (matmul_nn), if the row lies inside C;
// each of its four vec4 only inside C.
fn store_forward_wide_row(to: Destination, c0: vec4<f32>, c1: vec4<f32>, c2: vec4<f32>, c3: vec4<f32>, m: u32, q0: u32) {
    if (m < to.m_end) {
        let start = to.base + m * to.columns + q0;
        out[start] = finish(c0, q0, to.epilogue, to.bias_offset);
        if (q0 + 1u < to.columns) {
            out[start + 1u] = finish(c1, q0 + 1u, to.epilogue, to.bias_offset);
        }
        if (q0 + 2u < to.columns) {
            out[start + 2u] = finish(c2, q0 + 2u, to.epilogue, to.bias_offset);
        }
        if (q0 + 3u < to.columns) {
            out[start + 3u] = finish(c3, q0 + 3u, to.epilogue, to.bias_offset);
        }
    }
}

fn store_forward_wide(block: WideBlock, m0: u32, q0: u32) {
    let to = destination();
    store_forward_wide_row(to, block.c0[0], block.c1[0], block.c2[0], block.c3[0], m0, q0);
    store_forward_wide_row(to, block.c0[1], block.c1[1], block.c2[1], block.c3[1], m0 + 1u, q0);
    store_forward_wide_row(to, block.c0[2], block.c1[2], block.c2[2], block.c3[2], m0 + 2u, q0);
    store_forward_wide_row(to, block.c0[3], block.c1[3], block.c2[3], block.c3[3], m0 + 3u, q0);
    store_forward_wide_row(to, block.c0[4], block.c1[4], block.c2[4], block.c3[4], m0 + 4u, q0);
    store_forward_wide_row(to, block.c0[5], block.c1[5], block.c2[5], block.c3[5], m0 + 5u, q0);
    store_forward_wide_row(to, block.c0[6], block.c1[6], block.c2[6], block.c3[6], m0 + 6u, q0);
    store_forward_wide_row(to, block.c0[7], block.c1[7], block.c2[7], block.c3[7], m0 + 7u, q0);
}

@compute @workgroup_size(64)
fn matmul_nn(invocation: Invocation) {
    let lane = lane_of_tiles(invocation, 2u, NN_ACROSS);
    let m0 = lane.block.y * 8u;
    let q_first = lane.block.x * 4u;
    let last = dims.n / 4u - 1u;
    let q = vec4<u32>(min(q_first, last), min(q_first + 1u, last), min(q_first + 2u, last), min(q_first + 3u, last));
    // A: this lane loads rows 4 h .. 4 h + 3 of its block (h = index % 2) for itself and the
    // other lane of its block row; B: the four column quads at k row index / 2 of each four k,
    // for the 4 lanes of its block column.
    let h = lane.index % 2u;
    let a0 = row_start(dims.a_offset, dims.a_row_stride, m0 + 4u * h, dims.m);
    let a1 = row_start(dims.a_offset, dims.a_row_stride, m0 + 4u * h + 1u, dims.m);
    let a2 = row_start(dims.a_offset, dims.a_row_stride, m0 + 4u * h + 2u, dims.m);
    let a3 = row_start(dims.a_offset, dims.a_row_stride, m0 + 4u * h + 3u, dims.m);
    let a_source = lane.group_base + 2u * (lane.index / 2u);
    let b_source = lane.group_base + h;
    let b_stride = dims.b_row_stride / 4u;
    let b_first = dims.b_offset / 4u + (lane.index / 2u) * b_stride;
    let k4_end = dims.k / 4u;
    // The block's four column quads in four arrays rather than a WideBlock: naga's SPIR-V writer
    // fails on a pointer to a struct member passed to a function ("Expression is not cached").
    var c0: array<vec4<f32>, 8>;
    var c1: array<vec4<f32>, 8>;
    var c2: array<vec4<f32>, 8>;
    var c3: array<vec4<f32>, 8>;
    for (var k4 = 0u; k4 < k4_end; k4++) {
        let mine = array<vec4<f32>, 4>(lhs_at(a0 + k4), lhs_at(a1 + k4), lhs_at(a2 + k4), lhs_at(a3 + k4));
        let b = b_first + 4u * k4 * b_stride;
        nn_four_k(&c0, &c1, &c2, &c3, mine, a_source, NnColumns(b, q, b_source));
    }
    if (m0 < dims.m && q_first <= last) {
        store_forward_wide(WideBlock(c0, c1, c2, c3), m0, q_first);
    }
}

// Where a lane of matmul_nn (and conv_forward) loads B at four k: the four column quads `q` of
// B's row `row` (a vec4 index; the k row index / 2 of the four), shared with the lanes
// `source`, source + 2, source + 4 and source + 6.
struct NnColumns {
    row: u32,
    q: vec4<u32>,
    source: u32,
}

// matmul_nn's four k: the block's 8 rows of A at those k, gathered from the lanes that loaded
// them (`mine`: this lane's 4 rows, the other lane of its block row `a_source + 1`'s), times B's
// 16 columns, added into c0..c3.
fn nn_four_k(c0: ptr<function, array<vec4<f32>, 8>>, c1: ptr<function, array<vec4<f32>, 8>>, c2: ptr<function, array<vec4<f32>, 8>>, c3: ptr<function, array<vec4<f32>, 8>>, mine: array<vec4<f32>, 4>, a_source: u32, b: NnColumns) {
    let rows = array<vec4<f32>, 8>(
        subgroupShuffle(mine[0], a_source), subgroupShuffle(mine[1], a_source),
        subgroupShuffle(mine[2], a_source), subgroupShuffle(mine[3], a_source),
        subgroupShuffle(mine[0], a_source + 1u), subgroupShuffle(mine[1], a_source + 1u),
        subgroupShuffle(mine[2], a_source + 1u), subgroupShuffle(mine[3], a_source + 1u),
    );
    add_quad(c0, rows, rhs_at(b.row + b.q.x), b.source);
    add_quad(c1, rows, rhs_at(b.row + b.q.y), b.source);
    add_quad(c2, rows, rhs_at(b.row + b.q.z), b.source);
    add_quad(c3, rows, rhs_at(b.row + b.q.w), b.source);
}

// B's 8 columns at four k (vec4 k4 of each column's row `b_row[c]` of the stored [N, K], loaded
// by this lane and the one 4 lanes on from b_source), transposed so that element j holds
// B(4 k4 + j, columns 0-3) and element 4 + j B(4 k4 + j, columns 4-7).
fn transposed_columns(b_row: array<u32, 4>, k4: u32, b_source: u32) -> array<vec4<f32>, 8> {
    var mine: array<vec4<f32>, 4>;
    for (var c = 0u; c < 4u; c++) {
        mine[c] = rhs_at(b_row[c] + k4);
    }
    var t: array<vec4<f32>, 8>;
    for (var c = 0u; c < 4u; c++) {
        t[c] = subgroupShuffle(mine[c], b_source);
        t[c + 4u] = subgroupShuffle(mine[c], b_source + 4u);
    }
    let lo0 = vec4<f32>(t[0].x, t[1].x, t[2].x, t[3].x);
    let lo1 = vec4<f32>(t[0].y, t[1].y, t[2].y, t[3].y);
    let lo2 = vec4<f32>(t[0].z, t[1].z, t[2].z, t[3].z);
    let lo3 = vec4<f32>(t[0].w, t[1].w, t[2].w, t[3].w);
    let hi0 = vec4<f32>(t[4].x, t[5].x, t[6].x, t[7].x);
    let hi1 = vec4<f32>(t[4].y, t[5].y, t[6].y, t[7].y);
    let hi2 = vec4<f32>(t[4].z, t[5].z, t[6].z, t[7].z);
    let hi3 = vec4<f32>(t[4].w, t[5].w, t[6].w, t[7].w);
    return array<vec4<f32>, 8>(lo0, lo1, lo2, lo3, hi0, hi1, hi2, hi3);
}

@compute @workgroup_size(64)
fn matmul_nt(invocation: Invocation) {
    let lane = lane_of_tiles(invocation, 4u, 2u);
    let m0 = lane.block.y * 8u;
    let q_first = lane.block.x * 2u;
    let row_sel = lane.index / 4u;
    let col_sel = lane.index % 4u;
    let rows = shared_rows(lane, m0);
    // B(k, n) = rhs_at(b_offset + n b_col_stride + k): column n of B is a row of the stored [N, K].
    // The 2 lanes sharing these 8 columns load four each (4 row_sel .. 4 row_sel + 3).
    var b_row: array<u32, 4>;
    for (var c = 0u; c < 4u; c++) {
        b_row[c] = row_start(dims.b_offset, dims.b_col_stride, 4u * q_first + 4u * row_sel + c, dims.n);
    }
    let b_source = lane.group_base + col_sel;
    let k4_end = dims.k / 4u;
    var block: Block;
    for (var k4 = 0u; k4 < k4_end; k4++) {
        // Columns 0-7 at k4's four k (t[c]: column c), transposed so that lo_j holds
        // B(4 k4 + j, columns 0-3).
        add_shared_rows(&block, rows, k4, transposed_columns(b_row, k4, b_source));
    }
    if (m0 < dims.m && q_first <= dims.n / 4u - 1u) {
        store_backward(block, m0, q_first);
    }
}

// conv_input_grad (see the header).

@group(0) @binding(5) var<storage, read> conv: ConvShape;
@group(0) @binding(6) var<storage, read> below_values: array<vec4<f32>>;

// No dZ row: a tap whose output position lies outside the output.
const NO_SOURCE: u32 = 0xffffffffu;

// One of a lane's rows of dX, an input pixel: its position in the padded input, and the first
// row of dZ of its sample.
struct InputPixel {
    sample_row: u32,
    padded_y: u32,
    padded_x: u32,
}

fn input_pixel(m: u32) -> InputPixel {
    let p = padded_pixel(m, conv.in_height, conv.in_width, conv.pad_y, conv.pad_x);
    return InputPixel(p.n * conv.out_height * conv.out_width, p.padded_y, p.padded_x);
}

// The first vec4 of the row of dZ (rows `row_quads` vec4 long from vec4 `first`) that kernel tap
// (ky, kx) of pixel p reads, or NO_SOURCE.
fn tap_source(p: InputPixel, ky: u32, kx: u32, first: u32, row_quads: u32) -> u32 {
    if (ky > p.padded_y || kx > p.padded_x) {
        return NO_SOURCE;
    }
    let sy = p.padded_y - ky;
    let sx = p.padded_x - kx;
    let oy = quotient(sy, conv.stride_y);
    let ox = quotient(sx, conv.stride_x);
    if (sy != oy * conv.stride_y || sx != ox * conv.stride_x || oy >= conv.out_height || ox >= conv.out_width) {
        return NO_SOURCE;
    }
    return first + (p.sample_row + oy * conv.out_width + ox) * row_quads;
}

// dZ's vec4 f4 of the row from `source`, zeros for NO_SOURCE (loading a texel of row 0 instead:
// every lane loads, so that no load is masked).
fn tap_value(source: u32, f4: u32) -> vec4<f32> {
    let none = source == NO_SOURCE;
    let value = lhs_at(select(source, 0u, none) + f4);
    return select(value, vec4<f32>(0.0), none);
}

// Row m (an input pixel) of an 8 x 8 block of dX through conv.derivative (X, in below_values,
// has dX's layout from vec4 0).
fn store_input_grad_row(to: Destination, derivative: u32, lo: vec4<f32>, hi: vec4<f32>, m: u32, q0: u32) {
    let at = m * to.columns + q0;
    let first = lo * derivative_from_output4(derivative, below_values[at]);
    let second = hi * derivative_from_output4(derivative, below_values[at + 1u]);
    store_pair(to, to.base + at, q0, first, second);
}

// The input pixels whose taps read the same kernel rows and columns: those with y % SY == cy
// and x % SX == cx (at stride 1 every pixel, in order), rows_y x columns_x of them a sample.
struct PixelClass {
    cy: u32,
    cx: u32,
    rows_y: u32,
    columns_x: u32,
    // Pixels of the class over all samples: the rows of dX it computes.
    size: u32,
}

fn pixel_class(index: u32) -> PixelClass {
    let sy = conv.stride_y;
    let sx = conv.stride_x;
    let cy = quotient(index, sx);
    let cx = index - cy * sx;
    let rows_y = select(0u, (conv.in_height - cy + sy - 1u) / sy, cy < conv.in_height);
    let columns_x = select(0u, (conv.in_width - cx + sx - 1u) / sx, cx < conv.in_width);
    return PixelClass(cy, cx, rows_y, columns_x, conv.samples * rows_y * columns_x);
}

// The input pixel (n H W + y W + x) of row r of the class `pixels` (sample, then rows, then columns).
fn class_pixel(r: u32, pixels: PixelClass) -> u32 {
    let per_sample = pixels.rows_y * pixels.columns_x;
    let n = quotient(r, per_sample);
    let in_sample = r - n * per_sample;
    let yy = quotient(in_sample, pixels.columns_x);
    let y = yy * conv.stride_y + pixels.cy;
    let x = (in_sample - yy * pixels.columns_x) * conv.stride_x + pixels.cx;
    return (n * conv.in_height + y) * conv.in_width + x;
}

// Row r of an 8 x 8 block of dX (row m0 + r of the class `pixels`) through conv.derivative, if inside.
fn store_class_row(to: Destination, derivative: u32, lo: vec4<f32>, hi: vec4<f32>, m: u32, pixels: PixelClass, q0: u32) {
    if (m < pixels.size) {
        store_input_grad_row(to, derivative, lo, hi, class_pixel(m, pixels), q0);
    }
}

fn store_input_grad(block: Block, m0: u32, pixels: PixelClass, q0: u32) {
    let to = destination();
    let derivative = conv.derivative;
    store_class_row(to, derivative, block.lo[0], block.hi[0], m0, pixels, q0);
    store_class_row(to, derivative, block.lo[1], block.hi[1], m0 + 1u, pixels, q0);
    store_class_row(to, derivative, block.lo[2], block.hi[2], m0 + 2u, pixels, q0);
    store_class_row(to, derivative, block.lo[3], block.hi[3], m0 + 3u, pixels, q0);
    store_class_row(to, derivative, block.lo[4], block.hi[4], m0 + 4u, pixels, q0);
    store_class_row(to, derivative, block.lo[5], block.hi[5], m0 + 5u, pixels, q0);
    store_class_row(to, derivative, block.lo[6], block.hi[6], m0 + 6u, pixels, q0);
    store_class_row(to, derivative, block.lo[7], block.hi[7], m0 + 7u, pixels, q0);
}

@compute @workgroup_size(64)
fn conv_input_grad(invocation: Invocation) {
    let lane = lane_of_tiles(invocation, 4u, 1u);
    let m0 = lane.block.y * 8u;
    let q_first = lane.block.x * 2u;
    let row_sel = lane.index / 4u;
    let col_sel = lane.index % 4u;
    // The workgroup's rows are pixels of one class (the grid's z).
    let pixels = pixel_class(invocation.workgroup.z);
    // The two rows of the block this lane loads for the 4 lanes sharing them (as matmul_nt's
    // shared_rows), clamped into the pixels (a pixels without pixels stores nothing).
    let last_row = max(pixels.size, 1u) - 1u;
    let even = input_pixel(class_pixel(min(m0 + 2u * col_sel, last_row), pixels));
    let odd = input_pixel(class_pixel(min(m0 + 2u * col_sel + 1u, last_row), pixels));
    let source = lane.group_base + 4u * (lane.index / 4u);
    // W's column f of input channel n under tap t at vec4 b_offset / 4 + (t C + n) F / 4 + f / 4:
    // per tap, B stored [N, K] with rows F long, each tap C F / 4 vec4 on.
    let filter_quads = dims.b_col_stride / 4u;
    var b_row: array<u32, 4>;
    for (var c = 0u; c < 4u; c++) {
        b_row[c] = row_start(dims.b_offset, dims.b_col_stride, 4u * q_first + 4u * row_sel + c, dims.n);
    }
    let b_source = lane.group_base + col_sel;
    let first = dims.a_offset / 4u;
    let tap_quads = conv.channels * filter_quads;
    let kernel_height = conv.kernel_height;
    let kernel_width = conv.kernel_width;
    // Only the taps whose output position can be whole for the pixels: ky = cy + PY (mod SY),
    // likewise kx (every tap at stride 1).
    let sy = conv.stride_y;
    let sx = conv.stride_x;
    let first_ky = (pixels.cy + conv.pad_y) % sy;
    let first_kx = (pixels.cx + conv.pad_x) % sx;
    var total: Block;
    for (var ky = first_ky; ky < kernel_height; ky += sy) {
        for (var kx = first_kx; kx < kernel_width; kx += sx) {
            let from_even = tap_source(even, ky, kx, first, filter_quads);
            let from_odd = tap_source(odd, ky, kx, first, filter_quads);
            let tap_first = (ky * kernel_width + kx) * tap_quads;
            // Each tap's sum on its own, then added: the patch matrix's gradient and col2im's
            // sum over taps, in their order, so the bits are theirs.
            var block: Block;
            for (var f4 = 0u; f4 < filter_quads; f4++) {
                let b_values = transposed_columns(b_row, tap_first + f4, b_source);
                add_shared_values(&block, tap_value(from_even, f4), tap_value(from_odd, f4), source, b_values);
            }
            for (var r = 0u; r < 8u; r++) {
                total.lo[r] += block.lo[r];
                total.hi[r] += block.hi[r];
            }
        }
    }
    if (q_first <= dims.n / 4u - 1u) {
        store_input_grad(total, m0, pixels, q_first);
    }
}

// matmul_tn.

// Stores the rows and columns of a wide block that lie inside the C whose vec4 0 is `base`.
fn store_wide(block: WideBlock, m0: u32, q0: u32, base: u32) {
    let to = destination();
    let columns = to.columns;
    let m_end = to.m_end;
    for (var r = 0u; r < 8u; r++) {
        let m = m0 + r;
        if (m < m_end) {
            let row = base + m * columns;
            out[row + q0] = block.c0[r];
            if (q0 + 1u < columns) {
                out[row + q0 + 1u] = block.c1[r];
            }
            if (q0 + 2u < columns) {
                out[row + q0 + 2u] = block.c2[r];
            }
            if (q0 + 3u < columns) {
                out[row + q0 + 3u] = block.c3[r];
            }
        }
    }
}

// One k of matmul_tn: block += (A's rows m0..m0+7 at k: a_lo, a_hi) x (B's 16 columns at k:
// b0..b3).
fn tn_step(block: ptr<function, WideBlock>, a_lo: vec4<f32>, a_hi: vec4<f32>, b0: vec4<f32>, b1: vec4<f32>, b2: vec4<f32>, b3: vec4<f32>) {
    for (var r = 0u; r < 4u; r++) {
        (*block).c0[r] = fma(vec4<f32>(a_lo[r]), b0, (*block).c0[r]);
        (*block).c1[r] = fma(vec4<f32>(a_lo[r]), b1, (*block).c1[r]);
        (*block).c2[r] = fma(vec4<f32>(a_lo[r]), b2, (*block).c2[r]);
        (*block).c3[r] = fma(vec4<f32>(a_lo[r]), b3, (*block).c3[r]);
        (*block).c0[r + 4u] = fma(vec4<f32>(a_hi[r]), b0, (*block).c0[r + 4u]);
        (*block).c1[r + 4u] = fma(vec4<f32>(a_hi[r]), b1, (*block).c1[r + 4u]);
        (*block).c2[r + 4u] = fma(vec4<f32>(a_hi[r]), b2, (*block).c2[r + 4u]);
        (*block).c3[r + 4u] = fma(vec4<f32>(a_hi[r]), b3, (*block).c3[r + 4u]);
    }
}

// The wide block of C at `lane` (a group's lanes: blocks of the same 16 columns) over k_begin
// (a multiple of 4) .. k_end, as matmul_tn computes it: the lanes of a group share B, the larger
// part: per four k, 16 vec4 of B (2 loads per lane) and 8 of A.
fn tn_slice(lane: Lane, k_begin: u32, k_end: u32) -> WideBlock {
    let m0 = lane.block.y * 8u;
    let q_first = lane.block.x * 4u;
    let last = dims.n / 4u - 1u;
    let q = vec4<u32>(min(q_first, last), min(q_first + 1u, last), min(q_first + 2u, last), min(q_first + 3u, last));
    // A(m, k) = lhs_at(a_offset + k a_col_stride + m): rows m0..m0+7 are two vec4 of A's row k,
    // at a_k + mq.x and a_k + mq.y (clamped into A).
    let a_stride = dims.a_col_stride / 4u;
    let mq0 = min(m0 / 4u, dims.m / 4u - 1u);
    let mq = vec2<u32>(mq0, min(mq0 + 1u, dims.m / 4u - 1u));
    let b_stride = dims.b_row_stride / 4u;
    var block: WideBlock;
    var a_k = dims.a_offset / 4u + k_begin * a_stride;
    var b_k = dims.b_offset / 4u + k_begin * b_stride;
    // B at k 4 k4 + j: vec4 columns 0, 1 from lane 2 j, columns 2, 3 from lane 2 j + 1.
    let my_k = lane.index / 2u;
    let my_columns = select(q.xy, q.zw, (lane.index & 1u) == 1u);
    let k4_count = (k_end - k_begin) / 4u;
    for (var k4 = 0u; k4 < k4_count; k4++) {
        let b_row = b_k + my_k * b_stride;
        let mine0 = rhs_at(b_row + my_columns.x);
        let mine1 = rhs_at(b_row + my_columns.y);
        for (var j = 0u; j < 4u; j++) {
            let source = lane.group_base + 2u * j;
            let b0 = subgroupShuffle(mine0, source);
            let b1 = subgroupShuffle(mine1, source);
            let b2 = subgroupShuffle(mine0, source + 1u);
            let b3 = subgroupShuffle(mine1, source + 1u);
            tn_step(&block, lhs_at(a_k + mq.x), lhs_at(a_k + mq.y), b0, b1, b2, b3);
            a_k += a_stride;
        }
        b_k += 4u * b_stride;
    }
    for (var k = k_begin + 4u * k4_count; k < k_end; k++) {
        tn_step(&block, lhs_at(a_k + mq.x), lhs_at(a_k + mq.y), rhs_at(b_k + q.x), rhs_at(b_k + q.y), rhs_at(b_k + q.z), rhs_at(b_k + q.w));
        a_k += a_stride;
        b_k += b_stride;
    }
    return block;
}

@compute @workgroup_size(64)
fn matmul_tn(invocation: Invocation) {
    let lane = lane_of_columns(invocation);
    let block = tn_slice(lane, 0u, dims.k);
    let m0 = lane.block.y * 8u;
    let q_first = lane.block.x * 4u;
    if (m0 < dims.m && q_first <= dims.n / 4u - 1u) {
        store_wide(block, m0, q_first, dims.c_offset / 4u);
    }
}

// matmul_tn_shared_parts: matmul_tn_parts' parts (the same slices of K, stored in the same
// places) computed as matmul_tn computes its blocks, the lanes of a group sharing B: for a
// product with enough rows of C to give a group's 8 lanes a block each (M >= 64), where the
// unshared parts load 24 vec4 per four k and a lane here 10. A workgroup's 8 groups are
// TN_ACROSS across (16 TN_ACROSS columns), TN_DOWN down (64 TN_DOWN rows), and
// PARTS_PER_WORKGROUP = 8 / (TN_ACROSS TN_DOWN) parts deep: group g computes part
// workgroup_id.z PARTS_PER_WORKGROUP + g / (TN_ACROSS TN_DOWN) (one past the last part stores
// nothing). Dispatch grid: (ceil(N / (16 TN_ACROSS)), ceil(M / (64 TN_DOWN)),
// ceil(parts / PARTS_PER_WORKGROUP)); the same for conv_weight_grad_parts.
override TN_ACROSS: u32 = 8u;
override TN_DOWN: u32 = 1u;

// A lane of matmul_tn_shared_parts (or conv_weight_grad_parts): its block, and its part's
// slice of K.
struct SharedPart {
    lane: Lane,
    part: u32,
    k_begin: u32,
    k_end: u32,
}

fn shared_part(invocation: Invocation) -> SharedPart {
    let workgroup = invocation.workgroup;
    let flat = invocation.subgroup * invocation.subgroup_size + invocation.lane;
    let group = flat / 8u;
    let layer = TN_ACROSS * TN_DOWN;
    let row_group = (group % layer) / TN_ACROSS;
    let block = vec2<u32>(workgroup.x * TN_ACROSS + group % TN_ACROSS, (workgroup.y * TN_DOWN + row_group) * 8u + flat % 8u);
    let lane = Lane(invocation.lane & ~7u, invocation.lane & 7u, block);
    let part = workgroup.z * (8u / layer) + group / layer;
    let parts = dims.parts;
    let k4_all = dims.k / 4u;
    let slice = (k4_all + parts - 1u) / parts;
    let k_begin = 4u * min(part * slice, k4_all);
    var k_end = 4u * min(part * slice + slice, k4_all);
    if (part == parts - 1u) {
        k_end = dims.k;
    }
    return SharedPart(lane, part, k_begin, k_end);
}

// Stores a part's block at C's place + part M N (C's own place for a single part).
fn store_part(sum: WideBlock, at: SharedPart) {
    let m0 = at.lane.block.y * 8u;
    let q_first = at.lane.block.x * 4u;
    if (m0 < dims.m && q_first <= dims.n / 4u - 1u && at.part < dims.parts) {
        store_wide(sum, m0, q_first, (dims.c_offset + at.part * dims.m * dims.n) / 4u);
    }
}

@compute @workgroup_size(64)
fn matmul_tn_shared_parts(invocation: Invocation) {
    let at = shared_part(invocation);
    store_part(tn_slice(at.lane, at.k_begin, at.k_end), at);
}

// matmul_tn_parts: matmul_tn's product split along K, for shapes with few blocks of C and a long
// K (a convolution's weight gradient, K its output positions), where matmul_tn's grid would leave
// most lanes and cores idle. K's k / 4 are cut into dims.parts slices of equal length (the last
// slice also takes the k past the last multiple of 4), and each invocation computes one 8 x 16
// block over one slice, its loads not shared:
//   C_p[m, n] = sum over k in slice p of A(m, k) B(k, n), stored at C's place + p M N
// Invocation i: block i % blocks (numbered along N first; blocks = ceil(M / 8) ceil(N / 16)) of
// part i / blocks. matmul.wgsl's matmul_sum_parts then adds the parts in order.
// Workgroup: 64 invocations. Dispatch grid: ceil(blocks parts / 64) workgroups as (x, y) with
// x <= 65535 (invocation = (y * num_workgroups.x + x) * 64 + local).
@compute @workgroup_size(64)
fn matmul_tn_parts(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = flat_invocation(gid, groups, 64u);
    let blocks_n = (dims.n + 15u) / 16u;
    let blocks = blocks_n * ((dims.m + 7u) / 8u);
    let parts = dims.parts;
    if (index >= blocks * parts) {
        return;
    }
    let part = index / blocks;
    let block = index - part * blocks;
    let block_row = block / blocks_n;
    let m0 = block_row * 8u;
    let q_first = (block - block_row * blocks_n) * 4u;
    let last = dims.n / 4u - 1u;
    let q = vec4<u32>(min(q_first, last), min(q_first + 1u, last), min(q_first + 2u, last), min(q_first + 3u, last));
    let mq0 = min(m0 / 4u, dims.m / 4u - 1u);
    let mq = vec2<u32>(mq0, min(mq0 + 1u, dims.m / 4u - 1u));
    let a_stride = dims.a_col_stride / 4u;
    let b_stride = dims.b_row_stride / 4u;
    let k4_all = dims.k / 4u;
    let slice = (k4_all + parts - 1u) / parts;
    let k_begin = 4u * min(part * slice, k4_all);
    var k_end = 4u * min(part * slice + slice, k4_all);
    if (part == parts - 1u) {
        k_end = dims.k;
    }
    var a_k = dims.a_offset / 4u + k_begin * a_stride;
    var b_k = dims.b_offset / 4u + k_begin * b_stride;
    var block_sum: WideBlock;
    for (var k = k_begin; k < k_end; k++) {
        tn_step(&block_sum, lhs_at(a_k + mq.x), lhs_at(a_k + mq.y), rhs_at(b_k + q.x), rhs_at(b_k + q.y), rhs_at(b_k + q.z), rhs_at(b_k + q.w));
        a_k += a_stride;
        b_k += b_stride;
    }
    if (m0 < dims.m && q_first <= last) {
        store_wide(block_sum, m0, q_first, (dims.c_offset + part * dims.m * dims.n) / 4u);
    }
}

// conv_forward and conv_weight_grad_parts (see the header): a convolution's products over its
// input image itself, reading the patch matrix's values where im2col would have put them.

// One output position's window: the input pixel where its sample starts (n H W), and the row
// and column of its top-left tap in the padded input.
struct Window {
    sample_pixel: u32,
    top: u32,
    left: u32,
}

// The input image as the windows read it, from `conv` once.
struct Image {
    height: u32,
    width: u32,
    pad_y: u32,
    pad_x: u32,
    channel_quads: u32,
    // The vec4 where X starts in the lhs mirror.
    first: u32,
}

fn image() -> Image {
    return Image(conv.in_height, conv.in_width, conv.pad_y, conv.pad_x, conv.channels / 4u, dims.a_offset / 4u);
}

// The window of output position m (samples OH OW positions, row by row).
fn window_of(m: u32) -> Window {
    let c = window_corner(m, conv.out_height, conv.out_width, conv.stride_y, conv.stride_x);
    return Window(c.n * conv.in_height * conv.in_width, c.top, c.left);
}

// The first vec4 of the channels of the input pixel under tap (ky, kx) of window w, or NO_SOURCE
// where the tap lies in the padding.
fn window_source(w: Window, ky: u32, kx: u32, image: Image) -> u32 {
    let py = w.top + ky;
    let px = w.left + kx;
    if (py < image.pad_y || px < image.pad_x || py - image.pad_y >= image.height || px - image.pad_x >= image.width) {
        return NO_SOURCE;
    }
    return image.first + (w.sample_pixel + (py - image.pad_y) * image.width + px - image.pad_x) * image.channel_quads;
}

// The patch matrix's last four columns in every row: its ones column (the bias row of W meets
// it; 0 where the layer has no bias) and zeros.
fn ones_quad() -> vec4<f32> {
    return vec4<f32>(f32(conv.bias), 0.0, 0.0, 0.0);
}

@compute @workgroup_size(64)
fn conv_forward(invocation: Invocation) {
    let lane = lane_of_tiles(invocation, 2u, NN_ACROSS);
    let m0 = lane.block.y * 8u;
    let q_first = lane.block.x * 4u;
    let last = dims.n / 4u - 1u;
    let q = vec4<u32>(min(q_first, last), min(q_first + 1u, last), min(q_first + 2u, last), min(q_first + 3u, last));
    // As matmul_nn: this lane's rows are 4 h .. 4 h + 3 of its block, windows here.
    let h = lane.index % 2u;
    let last_row = dims.m - 1u;
    let w0 = window_of(min(m0 + 4u * h, last_row));
    let w1 = window_of(min(m0 + 4u * h + 1u, last_row));
    let w2 = window_of(min(m0 + 4u * h + 2u, last_row));
    let w3 = window_of(min(m0 + 4u * h + 3u, last_row));
    let image = image();
    let a_source = lane.group_base + 2u * (lane.index / 2u);
    let b_source = lane.group_base + h;
    let b_stride = dims.b_row_stride / 4u;
    let b_first = dims.b_offset / 4u + (lane.index / 2u) * b_stride;
    let kernel_height = conv.kernel_height;
    let kernel_width = conv.kernel_width;
    var c0: array<vec4<f32>, 8>;
    var c1: array<vec4<f32>, 8>;
    var c2: array<vec4<f32>, 8>;
    var c3: array<vec4<f32>, 8>;
    // k runs over the taps, channels fastest, as along a row of the patch matrix.
    var b = b_first;
    for (var ky = 0u; ky < kernel_height; ky++) {
        for (var kx = 0u; kx < kernel_width; kx++) {
            let s0 = window_source(w0, ky, kx, image);
            let s1 = window_source(w1, ky, kx, image);
            let s2 = window_source(w2, ky, kx, image);
            let s3 = window_source(w3, ky, kx, image);
            for (var cq = 0u; cq < image.channel_quads; cq++) {
                let mine = array<vec4<f32>, 4>(tap_value(s0, cq), tap_value(s1, cq), tap_value(s2, cq), tap_value(s3, cq));
                nn_four_k(&c0, &c1, &c2, &c3, mine, a_source, NnColumns(b, q, b_source));
                b += 4u * b_stride;
            }
        }
    }
    let ones = ones_quad();
    nn_four_k(&c0, &c1, &c2, &c3, array<vec4<f32>, 4>(ones, ones, ones, ones), a_source, NnColumns(b, q, b_source));
    if (m0 < dims.m && q_first <= last) {
        store_forward_wide(WideBlock(c0, c1, c2, c3), m0, q_first);
    }
}

// One of the two quads of patch columns a lane of conv_weight_grad_parts reads per k (its block's
// 8 rows of C are patch columns 8 block.y .. 8 block.y + 7): tap (ky, kx) and channel quad cq,
// or the ones quad.
struct PatchQuad {
    ky: u32,
    kx: u32,
    cq: u32,
    ones: bool,
}

fn patch_quad(mq: u32, image: Image) -> PatchQuad {
    let tap = quotient(mq, image.channel_quads);
    let ky = quotient(tap, conv.kernel_width);
    let ones = tap >= conv.kernel_height * conv.kernel_width;
    return PatchQuad(ky, tap - ky * conv.kernel_width, mq - tap * image.channel_quads, ones);
}

// The patch matrix's vec4 at quad p of the row of window w.
fn patch_value(w: Window, p: PatchQuad, image: Image, ones: vec4<f32>) -> vec4<f32> {
    let value = tap_value(window_source(w, p.ky, p.kx, image), p.cq);
    return select(value, ones, p.ones);
}

// Output positions in order: the window after w (o: w's column and row in the output).
struct Walk {
    window: Window,
    column: u32,
    row: u32,
}

fn walk_from(m: u32) -> Walk {
    let window = window_of(m);
    return Walk(window, window.left / conv.stride_x, window.top / conv.stride_y);
}

// The walk one position on, for an output `size` (OW, OH) with strides `stride` (SX, SY) over
// an input of `input_pixels` (H W) a sample.
fn step_walk(walk: ptr<function, Walk>, size: vec2<u32>, stride: vec2<u32>, input_pixels: u32) {
    (*walk).column += 1u;
    (*walk).window.left += stride.x;
    if ((*walk).column == size.x) {
        (*walk).column = 0u;
        (*walk).window.left = 0u;
        (*walk).row += 1u;
        (*walk).window.top += stride.y;
        if ((*walk).row == size.y) {
            (*walk).row = 0u;
            (*walk).window.top = 0u;
            (*walk).window.sample_pixel += input_pixels;
        }
    }
}

// tn_slice with A the patch matrix read from the image: the same loads of B, the same FMAs in
// the same order.
fn tn_slice_image(lane: Lane, k_begin: u32, k_end: u32) -> WideBlock {
    let m0 = lane.block.y * 8u;
    let q_first = lane.block.x * 4u;
    let last = dims.n / 4u - 1u;
    let q = vec4<u32>(min(q_first, last), min(q_first + 1u, last), min(q_first + 2u, last), min(q_first + 3u, last));
    let image = image();
    let mq0 = min(m0 / 4u, dims.m / 4u - 1u);
    let lo = patch_quad(mq0, image);
    let hi = patch_quad(min(mq0 + 1u, dims.m / 4u - 1u), image);
    let ones = ones_quad();
    let size = vec2<u32>(conv.out_width, conv.out_height);
    let stride = vec2<u32>(conv.stride_x, conv.stride_y);
    let input_pixels = image.height * image.width;
    var walk = walk_from(k_begin);
    let b_stride = dims.b_row_stride / 4u;
    var block: WideBlock;
    var b_k = dims.b_offset / 4u + k_begin * b_stride;
    let my_k = lane.index / 2u;
    let my_columns = select(q.xy, q.zw, (lane.index & 1u) == 1u);
    let k4_count = (k_end - k_begin) / 4u;
    for (var k4 = 0u; k4 < k4_count; k4++) {
        let b_row = b_k + my_k * b_stride;
        let mine0 = rhs_at(b_row + my_columns.x);
        let mine1 = rhs_at(b_row + my_columns.y);
        for (var j = 0u; j < 4u; j++) {
            let source = lane.group_base + 2u * j;
            let b0 = subgroupShuffle(mine0, source);
            let b1 = subgroupShuffle(mine1, source);
            let b2 = subgroupShuffle(mine0, source + 1u);
            let b3 = subgroupShuffle(mine1, source + 1u);
            tn_step(&block, patch_value(walk.window, lo, image, ones), patch_value(walk.window, hi, image, ones), b0, b1, b2, b3);
            step_walk(&walk, size, stride, input_pixels);
        }
        b_k += 4u * b_stride;
    }
    for (var k = k_begin + 4u * k4_count; k < k_end; k++) {
        tn_step(&block, patch_value(walk.window, lo, image, ones), patch_value(walk.window, hi, image, ones), rhs_at(b_k + q.x), rhs_at(b_k + q.y), rhs_at(b_k + q.z), rhs_at(b_k + q.w));
        step_walk(&walk, size, stride, input_pixels);
        b_k += b_stride;
    }
    return block;
}

@compute @workgroup_size(64)
fn conv_weight_grad_parts(invocation: Invocation) {
    let at = shared_part(invocation);
    store_part(tn_slice_image(at.lane, at.k_begin, at.k_end), at);
}
