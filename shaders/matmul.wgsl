// Dense-layer matrix product, register- and workgroup-tiled.
//
//   C[m, n] = sum_k A(m, k) * B(k, n)        for m < M, n < N, k < K
//
// A and B are read through offsets and strides, so this one kernel computes all three products
// of a dense layer without materialising a transpose (W is [in, out] row-major, X is [rows, in]):
//   forward      Y  = X  W     A = X  (row stride in, col stride 1)   B = W  (row stride out, col stride 1)
//   weight grad  dW = Xᵀ dY    A = Xᵀ (row stride 1, col stride in)   B = dY (row stride out, col stride 1)
//   input grad   dX = dY Wᵀ    A = dY (row stride out, col stride 1)  B = Wᵀ (row stride 1, col stride out)
//
// Epilogue (dims.epilogue): 0 stores the product; 1 + an activation code (shared/activations.wgsl: 0
// identity, 1 relu, 2 sigmoid, 3 tanh) stores f(C[m, n] + B_buffer[bias_offset + n]), which
// makes the product a dense layer's whole forward pass: Y = f(X W + b), W and b both in the flat
// parameter buffer bound as rhs; 16 + an activation code stores f(C[m, n]) (a convolution's
// product, whose last k multiplies the bias row by a column of ones: conv2d.wgsl).
//
// Bindings (group 0):
//   0 dims   storage, read        Dims (shared/matmul_dims.wgsl; a storage buffer, not a uniform: see src/gpu/kernel.rs)
//   1 lhs    storage, read        f32 array holding A at dims.a_offset
//   2 rhs    storage, read        f32 array holding B at dims.b_offset
//   3 out    storage, read_write  f32 array; C is row-major [M, N] at dims.c_offset
//
// Workgroup: (WG_N, WG_M) invocations; each computes a 4x4 block of C, so a workgroup covers a
// (4 WG_M) x (4 WG_N) tile, stepping through K in slabs of TILE_K staged in workgroup memory.
// Dispatch grid: (ceil(N / (4 WG_N)), ceil(M / (4 WG_M)), 1).
// Shapes need not be multiples of any tile: loads outside A or B read zero, stores outside C are skipped.
//
// matmul_parts: the same tiles with K split into dims.parts slices, for products whose C has too
// few tiles to fill a GPU and whose K is long (a convolution's weight gradient, K its output
// positions: one workgroup would walk all of K alone). Part p (the grid's z) sums its own slice:
//   C_p[m, n] = sum over k in slice p of A(m, k) B(k, n), stored row-major at dims.c_offset + p M N
// slice p = [p floor(K / parts), (p + 1) floor(K / parts)), the last slice running to K; no
// epilogue. matmul_sum_parts below then adds the parts in order.
// Dispatch grid: (ceil(N / (4 WG_N)), ceil(M / (4 WG_M)), parts).

import package::shared::matmul_dims::{Dims, NO_EPILOGUE, ACTIVATION_EPILOGUE};
import package::shared::activations::activate;
import package::shared::grid::flat_invocation;

override WG_M: u32 = 16u;
override WG_N: u32 = 16u;
override TILE_K: u32 = 16u;

@group(0) @binding(0) var<storage, read> dims: Dims;
@group(0) @binding(1) var<storage, read> lhs: array<f32>;
@group(0) @binding(2) var<storage, read> rhs: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// a_tile[k * WG_M + i] holds A rows 4i..4i+3 of the tile at slab column k; b_tile likewise for B columns.
var<workgroup> a_tile: array<vec4<f32>, TILE_K * WG_M>;
var<workgroup> b_tile: array<vec4<f32>, TILE_K * WG_N>;

// The value stored at C[m, n] (see Epilogue above; `epilogue` and `bias_offset` from dims).
fn finish(value: f32, n: u32, epilogue: u32, bias_offset: u32) -> f32 {
    if (epilogue == NO_EPILOGUE) {
        return value;
    }
    if (epilogue >= ACTIVATION_EPILOGUE) {
        return activate(epilogue - ACTIVATION_EPILOGUE, value);
    }
    return activate(epilogue - 1u, value + rhs[bias_offset + n]);
}

// Stores row m of a 4 x 4 block (columns n0..n0+3), the part inside C, through the epilogue.
fn store_row(row: vec4<f32>, m: u32, n0: u32, to: Destination) {
    if (m >= to.m_end) {
        return;
    }
    let start = to.c_offset + m * to.n_end + n0;
    out[start] = finish(row.x, n0, to.epilogue, to.bias_offset);
    if (n0 + 1u < to.n_end) {
        out[start + 1u] = finish(row.y, n0 + 1u, to.epilogue, to.bias_offset);
    }
    if (n0 + 2u < to.n_end) {
        out[start + 2u] = finish(row.z, n0 + 2u, to.epilogue, to.bias_offset);
    }
    if (n0 + 3u < to.n_end) {
        out[start + 3u] = finish(row.w, n0 + 3u, to.epilogue, to.bias_offset);
    }
}

// Where a block goes in C, read from dims once: on lavapipe each read of `dims` at a store would
// be another round of per-lane loads, as many as the stores' own.
struct Destination {
    m_end: u32,
    n_end: u32,
    c_offset: u32,
    epilogue: u32,
    bias_offset: u32,
}

// Stores the 4 x 4 block acc (row r in acc[r]) at C[m0.., n0..], the part inside C. Row by row
// with constant indices: in a loop that NIR does not unroll (it has branches) acc would be
// indexed dynamically, which lavapipe does through scratch memory, lane by lane.
fn store_block(acc: array<vec4<f32>, 4>, m0: u32, n0: u32) {
    store_block_to(acc, m0, n0, Destination(dims.m, dims.n, dims.c_offset, dims.epilogue, dims.bias_offset));
}

fn store_block_to(acc: array<vec4<f32>, 4>, m0: u32, n0: u32, to: Destination) {
    if (n0 >= to.n_end) {
        return;
    }
    store_row(acc[0], m0, n0, to);
    store_row(acc[1], m0 + 1u, n0, to);
    store_row(acc[2], m0 + 2u, n0, to);
    store_row(acc[3], m0 + 3u, n0, to);
}

// k_end: the end of the K range being summed (K, or a part's slice end).
fn load_a(m: u32, k: u32, k_end: u32) -> f32 {
    if (m < dims.m && k < k_end) {
        return lhs[dims.a_offset + m * dims.a_row_stride + k * dims.a_col_stride];
    }
    return 0.0;
}

fn load_b(k: u32, n: u32, k_end: u32) -> f32 {
    if (k < k_end && n < dims.n) {
        return rhs[dims.b_offset + k * dims.b_row_stride + n * dims.b_col_stride];
    }
    return 0.0;
}

// This invocation's 4 x 4 block of the workgroup's tile, summed over k_begin <= k < k_end.
fn tile_product(lid: vec3<u32>, wid: vec3<u32>, k_begin: u32, k_end: u32) -> array<vec4<f32>, 4> {
    let tile_m = wid.y * WG_M * 4u;
    let tile_n = wid.x * WG_N * 4u;
    let flat = lid.y * WG_N + lid.x;
    let threads = WG_M * WG_N;
    var acc = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));

    for (var k0 = k_begin; k0 < k_end; k0 += TILE_K) {
        for (var i = flat; i < TILE_K * WG_M; i += threads) {
            let k = k0 + i / WG_M;
            let m = tile_m + (i % WG_M) * 4u;
            a_tile[i] = vec4<f32>(load_a(m, k, k_end), load_a(m + 1u, k, k_end), load_a(m + 2u, k, k_end), load_a(m + 3u, k, k_end));
        }
        for (var i = flat; i < TILE_K * WG_N; i += threads) {
            let k = k0 + i / WG_N;
            let n = tile_n + (i % WG_N) * 4u;
            b_tile[i] = vec4<f32>(load_b(k, n, k_end), load_b(k, n + 1u, k_end), load_b(k, n + 2u, k_end), load_b(k, n + 3u, k_end));
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk++) {
            let a = a_tile[kk * WG_M + lid.y];
            let b = b_tile[kk * WG_N + lid.x];
            acc[0] = fma(vec4<f32>(a.x), b, acc[0]);
            acc[1] = fma(vec4<f32>(a.y), b, acc[1]);
            acc[2] = fma(vec4<f32>(a.z), b, acc[2]);
            acc[3] = fma(vec4<f32>(a.w), b, acc[3]);
        }
        workgroupBarrier();
    }
    return acc;
}

@compute @workgroup_size(WG_N, WG_M)
fn matmul(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let acc = tile_product(lid, wid, 0u, dims.k);
    store_block(acc, wid.y * WG_M * 4u + lid.y * 4u, wid.x * WG_N * 4u + lid.x * 4u);
}

@compute @workgroup_size(WG_N, WG_M)
fn matmul_parts(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let parts = dims.parts;
    let part = wid.z;
    let slice = dims.k / parts;
    let k_begin = part * slice;
    // The last part takes the k past parts floor(K / parts).
    let k_end = select(k_begin + slice, dims.k, part + 1u == parts);
    let acc = tile_product(lid, wid, k_begin, k_end);
    let to = Destination(dims.m, dims.n, dims.c_offset + part * dims.m * dims.n, NO_EPILOGUE, 0u);
    store_block_to(acc, wid.y * WG_M * 4u + lid.y * 4u, wid.x * WG_N * 4u + lid.x * 4u, to);
}

// matmul_blocks: the same product without workgroup memory, for CPU adapters (see
// matmul_vec4.wgsl) on shapes the vec4 kernels cannot take, such as a 10-class output layer.
// Each invocation computes a 4 x 4 block of C from scalar loads at clamped (valid) indices;
// blocks are numbered along N first.
// Workgroup: 64 invocations. Dispatch grid: ceil(ceil(M / 4) ceil(N / 4) / 64) workgroups as
// (x, y) with x <= 65535 (block = (y * num_workgroups.x + x) * 64 + local).
@compute @workgroup_size(64)
fn matmul_blocks(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let block = gid.y * groups.x * 64u + gid.x;
    let n_blocks = (dims.n + 3u) / 4u;
    let m0 = (block / n_blocks) * 4u;
    let n0 = (block % n_blocks) * 4u;
    if (m0 >= dims.m) {
        return;
    }
    // `dims` read once, before the loops: every read of it inside a loop is another round of
    // per-lane loads on lavapipe.
    let last_row = vec4<u32>(dims.m - 1u);
    let last_col = vec4<u32>(dims.n - 1u);
    let a_row = dims.a_offset + min(m0 + vec4<u32>(0u, 1u, 2u, 3u), last_row) * dims.a_row_stride;
    let b_col = dims.b_offset + min(n0 + vec4<u32>(0u, 1u, 2u, 3u), last_col) * dims.b_col_stride;
    var acc = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    let k_end = dims.k;
    let a_col_stride = dims.a_col_stride;
    let b_row_stride = dims.b_row_stride;
    for (var k = 0u; k < k_end; k++) {
        let a_k = k * a_col_stride;
        let b_k = k * b_row_stride;
        let b = vec4<f32>(rhs[b_col.x + b_k], rhs[b_col.y + b_k], rhs[b_col.z + b_k], rhs[b_col.w + b_k]);
        acc[0] = fma(vec4<f32>(lhs[a_row.x + a_k]), b, acc[0]);
        acc[1] = fma(vec4<f32>(lhs[a_row.y + a_k]), b, acc[1]);
        acc[2] = fma(vec4<f32>(lhs[a_row.z + a_k]), b, acc[2]);
        acc[3] = fma(vec4<f32>(lhs[a_row.w + a_k]), b, acc[3]);
    }
    store_block(acc, m0, n0);
}

// matmul_sum_parts: the sum of the partial products of matmul_parts above or matmul_tn_parts
// (matmul_vec4.wgsl), in part order, so that the result does not depend on how the parts were
// scheduled:
//   C[c_offset + i] = sum over p < parts of lhs[a_offset + p M N + i]      for i < M N
// (rhs is not read). M N need not be a multiple of 4 (it is for matmul_tn_parts, whose N is).
// Workgroup: 64 invocations, one per four values of C. Dispatch grid: ceil(M N / 256)
// workgroups as (x, y) with x <= 65535 (invocation = (y * num_workgroups.x + x) * 64 + local).
@compute @workgroup_size(64)
fn matmul_sum_parts(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let first = 4u * flat_invocation(gid, groups, 64u);
    let values = dims.m * dims.n;
    if (first >= values) {
        return;
    }
    let parts = dims.parts;
    if (first + 4u > values) {
        // The last values of a C whose size is no multiple of 4, one at a time in the same order.
        for (var i = first; i < values; i++) {
            var value = 0.0;
            for (var p = 0u; p < parts; p++) {
                value += lhs[dims.a_offset + p * values + i];
            }
            out[dims.c_offset + i] = value;
        }
        return;
    }
    var sum = vec4<f32>(0.0);
    var at = dims.a_offset + first;
    for (var p = 0u; p < parts; p++) {
        sum += vec4<f32>(lhs[at], lhs[at + 1u], lhs[at + 2u], lhs[at + 3u]);
        at += values;
    }
    let to = dims.c_offset + first;
    out[to] = sum.x;
    out[to + 1u] = sum.y;
    out[to + 2u] = sum.z;
    out[to + 3u] = sum.w;
}
