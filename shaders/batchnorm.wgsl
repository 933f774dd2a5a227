// BatchNorm over the channels of channels-last tensors, as PyTorch's BatchNorm2d (BatchNorm1d
// over the features of a flat tensor): X is [N, C] with N = samples H W values per channel,
// channel c's values X[i C + c].
//
// batchnorm_statistics (training), one workgroup per channel:
//   mean[c] = (sum_i X[i, c]) / N,  var[c] = (sum_i (X[i, c] - mean[c])^2) / N   (biased)
//   invstd[c] = 1 / sqrt(var[c] + eps)
//   running_mean[c] = (1 - m) running_mean[c] + m mean[c]
//   running_var[c]  = (1 - m) running_var[c]  + m var[c] N / (N - 1)   (unbiased; var if N = 1)
// batchnorm_normalize: Y[i, c] = f((X[i, c] - mean[c]) invstd[c] gamma[c] + beta[c]), with the
//   batch's statistics in training and, in evaluation, mean = running_mean and
//   invstd = 1 / sqrt(running_var + eps) (computed here, so evaluation needs no statistics pass);
//   f = shape.activation (shared/activations.wgsl): the activation after the BatchNorm (`bn:relu`)
//   is folded into this pass.
// The backward passes take dZ = dY f'(Y), the activation's derivative from the output (f =
// shape.activation, the identity where the layer above applied it), and x̂ = (X - mean) invstd:
// batchnorm_backward_sums, one workgroup per channel:
//   dbeta[c] = sum_i dZ[i, c],  dgamma[c] = sum_i dZ[i, c] x̂[i, c]   (into the gradient buffer)
// batchnorm_backward_input:
//   dX[i, c] = gamma[c] invstd[c] (dZ[i, c] - dbeta[c] / N - x̂[i, c] dgamma[c] / N)
// batchnorm_backward_input_evaluation (an explanation's gradients, in evaluation):
//   dX[i, c] = gamma[c] dZ[i, c] / sqrt(running_var[c] + eps)
// Sums per channel: each of the 64 invocations adds the values i = local, local + 64, ... in
// order, then the 64 partial sums are added in a fixed tree: no atomics, the same bits every run.
// The _quads entry points do the same four channels at a time (vec4 of X, dY, Y, dX and the
// statistics) and need C % 4 == 0: the same sums in the same order, lane by lane.
//
// Bindings (group 0):
//   0 shape    storage, read        NormShape below
//   1 x        storage, read        X f32 [N, C]
//   2 stats    storage, read_write / read   f32 [2 C]: mean, then invstd (the layer's own)
//   3 state    storage, read_write (statistics) / read (normalize)   the state buffer, running
//                                   mean and variance at shape.running_mean, shape.running_var
//   4 params   storage, read        the trained parameters, gamma at shape.gamma, beta at shape.beta
//   5 dy       storage, read        dY f32 [N, C]
//   6 grads    storage, read_write (sums) / read (input)   the gradient buffer, dgamma at
//                                   shape.gamma, dbeta at shape.beta
//   7 out      storage, read_write  normalize: Y f32 [N, C]; backward_input: dX f32 [N, C]
//   8 y        storage, read        backward: Y f32 [N, C], the forward pass's output
// statistics binds 0-3; normalize 0-4 and 7; backward_sums 0, 1, 2, 5, 6, 8; backward_input 0,
// 1, 2, 4-8; backward_input_evaluation 0, 3, 4, 5, 7, 8.
// Compiled with the feature `mirrors` (batchnorm_mirrors.wgsl), the _quads passes bind X, dY and Y
// (1, 5, 8) as texture_2d<f32>: rgba32float mirrors of those buffers, vec4 i at the texel
// (i % MIRROR_ROW_TEXELS, i / MIRROR_ROW_TEXELS) (shared/mirror.wgsl).
//
// Workgroup: 64 invocations. Grids: statistics and backward_sums C workgroups (x), C / 4 for
// _quads; normalize, backward_input and backward_input_evaluation one invocation per value, and for _quads one per
// ROWS_PER_INVOCATION (8) rows of a channel quad (ceil(N / 8) C / 4 invocations), folded into
// (x, y) with x <= 65535 (invocation = (y * num_workgroups.x + x) * 64 + local).

import package::shared::activations::{activate, activate4, derivative_from_output, derivative_from_output4};
import package::shared::grid::flat_invocation;
import package::shared::divide::quotient;
import package::shared::mirror::mirrored;

struct NormShape {
    // N: values per channel (samples x positions).
    values: u32,
    channels: u32,
    gamma: u32,
    beta: u32,
    running_mean: u32,
    running_var: u32,
    // 1 in training: normalize by the batch's statistics.
    training: u32,
    momentum: f32,
    epsilon: f32,
    // normalize: the activation after the normalisation; backward: whose derivative dZ takes.
    activation: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> shape: NormShape;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> stats_out: array<f32>;
@group(0) @binding(2) var<storage, read> stats: array<f32>;
@group(0) @binding(3) var<storage, read_write> state_out: array<f32>;
@group(0) @binding(3) var<storage, read> state: array<f32>;
@group(0) @binding(4) var<storage, read> params: array<f32>;
@group(0) @binding(5) var<storage, read> dy: array<f32>;
@group(0) @binding(6) var<storage, read_write> grads_out: array<f32>;
@group(0) @binding(6) var<storage, read> grads: array<f32>;
@group(0) @binding(7) var<storage, read_write> out: array<f32>;
@group(0) @binding(8) var<storage, read> y: array<f32>;

@group(0) @binding(2) var<storage, read_write> stats4_out: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> stats4: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> out4: array<vec4<f32>>;

// The _quads passes read X, dY and Y through x_quad, dy_quad and y_quad: from the storage
// buffers, or in the variant compiled with the feature `mirrors` (batchnorm_mirrors.wgsl) from
// their texture mirrors (src/gpu/mirror.rs), whose fetches lavapipe vectorises where it loads a
// buffer lane by lane.
@if(!mirrors) @group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;
@if(!mirrors) @group(0) @binding(5) var<storage, read> dy4: array<vec4<f32>>;
@if(!mirrors) @group(0) @binding(8) var<storage, read> y4: array<vec4<f32>>;
@if(mirrors) @group(0) @binding(1) var x_mirror: texture_2d<f32>;
@if(mirrors) @group(0) @binding(5) var dy_mirror: texture_2d<f32>;
@if(mirrors) @group(0) @binding(8) var y_mirror: texture_2d<f32>;

// vec4 i of X, dY, Y.
@if(!mirrors) fn x_quad(i: u32) -> vec4<f32> { return x4[i]; }
@else fn x_quad(i: u32) -> vec4<f32> { return mirrored(x_mirror, i); }
@if(!mirrors) fn dy_quad(i: u32) -> vec4<f32> { return dy4[i]; }
@else fn dy_quad(i: u32) -> vec4<f32> { return mirrored(dy_mirror, i); }
@if(!mirrors) fn y_quad(i: u32) -> vec4<f32> { return y4[i]; }
@else fn y_quad(i: u32) -> vec4<f32> { return mirrored(y_mirror, i); }

var<workgroup> partial: array<f32, 64>;
var<workgroup> partial2: array<f32, 64>;

// Adds the workgroup's 64 partial sums (and partial2's) in a fixed tree; every invocation
// returns the totals.
fn reduce(local: u32, first: f32, second: f32) -> vec2<f32> {
    partial[local] = first;
    partial2[local] = second;
    workgroupBarrier();
    for (var width = 32u; width > 0u; width = width / 2u) {
        if (local < width) {
            partial[local] = partial[local] + partial[local + width];
            partial2[local] = partial2[local] + partial2[local + width];
        }
        workgroupBarrier();
    }
    let totals = vec2<f32>(partial[0], partial2[0]);
    workgroupBarrier();
    return totals;
}

@compute @workgroup_size(64)
fn batchnorm_statistics(@builtin(workgroup_id) group: vec3<u32>, @builtin(local_invocation_index) local: u32) {
    let c = group.x;
    let channels = shape.channels;
    let n = shape.values;
    var sum = 0.0;
    for (var i = local; i < n; i += 64u) {
        sum += x[i * channels + c];
    }
    let mean = reduce(local, sum, 0.0).x / f32(n);
    var squares = 0.0;
    for (var i = local; i < n; i += 64u) {
        let d = x[i * channels + c] - mean;
        squares += d * d;
    }
    let variance = reduce(local, squares, 0.0).x / f32(n);
    if (local == 0u) {
        stats_out[c] = mean;
        stats_out[channels + c] = 1.0 / sqrt(variance + shape.epsilon);
        var unbiased = variance;
        if (n > 1u) {
            unbiased = variance * f32(n) / f32(n - 1u);
        }
        let m = shape.momentum;
        let mean_at = shape.running_mean + c;
        let var_at = shape.running_var + c;
        state_out[mean_at] = (1.0 - m) * state_out[mean_at] + m * mean;
        state_out[var_at] = (1.0 - m) * state_out[var_at] + m * unbiased;
    }
}

@compute @workgroup_size(64)
fn batchnorm_normalize(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = flat_invocation(gid, groups, 64u);
    let channels = shape.channels;
    if (index >= shape.values * channels) {
        return;
    }
    let c = index - quotient(index, channels) * channels;
    var mean = 0.0;
    var invstd = 0.0;
    if (shape.training == 1u) {
        mean = stats[c];
        invstd = stats[channels + c];
    } else {
        mean = state[shape.running_mean + c];
        invstd = 1.0 / sqrt(state[shape.running_var + c] + shape.epsilon);
    }
    let normalized = (x[index] - mean) * invstd * params[shape.gamma + c] + params[shape.beta + c];
    out[index] = activate(shape.activation, normalized);
}

@compute @workgroup_size(64)
fn batchnorm_backward_sums(@builtin(workgroup_id) group: vec3<u32>, @builtin(local_invocation_index) local: u32) {
    let c = group.x;
    let channels = shape.channels;
    let mean = stats[c];
    let invstd = stats[channels + c];
    var sum = 0.0;
    var dot = 0.0;
    for (var i = local; i < shape.values; i += 64u) {
        let g = dy[i * channels + c] * derivative_from_output(shape.activation, y[i * channels + c]);
        sum += g;
        dot += g * (x[i * channels + c] - mean) * invstd;
    }
    let totals = reduce(local, sum, dot);
    if (local == 0u) {
        grads_out[shape.beta + c] = totals.x;
        grads_out[shape.gamma + c] = totals.y;
    }
}

@compute @workgroup_size(64)
fn batchnorm_backward_input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = flat_invocation(gid, groups, 64u);
    let channels = shape.channels;
    if (index >= shape.values * channels) {
        return;
    }
    let c = index - quotient(index, channels) * channels;
    let n = f32(shape.values);
    let invstd = stats[channels + c];
    let normalized = (x[index] - stats[c]) * invstd;
    let mean_grad = grads[shape.beta + c] / n;
    let mean_dot = grads[shape.gamma + c] / n;
    let g = dy[index] * derivative_from_output(shape.activation, y[index]);
    out[index] = params[shape.gamma + c] * invstd * (g - mean_grad - normalized * mean_dot);
}

@compute @workgroup_size(64)
fn batchnorm_backward_input_evaluation(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = flat_invocation(gid, groups, 64u);
    let channels = shape.channels;
    if (index >= shape.values * channels) {
        return;
    }
    let c = index - quotient(index, channels) * channels;
    let invstd = 1.0 / sqrt(state[shape.running_var + c] + shape.epsilon);
    let g = dy[index] * derivative_from_output(shape.activation, y[index]);
    out[index] = params[shape.gamma + c] * invstd * g;
}

var<workgroup> partial4: array<vec4<f32>, 64>;
var<workgroup> partial4b: array<vec4<f32>, 64>;

// `reduce` four channels at a time.
fn reduce4(local: u32, first: vec4<f32>, second: vec4<f32>) -> array<vec4<f32>, 2> {
    partial4[local] = first;
    partial4b[local] = second;
    workgroupBarrier();
    for (var width = 32u; width > 0u; width = width / 2u) {
        if (local < width) {
            partial4[local] = partial4[local] + partial4[local + width];
            partial4b[local] = partial4b[local] + partial4b[local + width];
        }
        workgroupBarrier();
    }
    let totals = array<vec4<f32>, 2>(partial4[0], partial4b[0]);
    workgroupBarrier();
    return totals;
}

// Four consecutive floats of the parameters (state, gradients) from `start`.
fn params4(start: u32) -> vec4<f32> {
    return vec4<f32>(params[start], params[start + 1u], params[start + 2u], params[start + 3u]);
}

fn state4(start: u32) -> vec4<f32> {
    return vec4<f32>(state[start], state[start + 1u], state[start + 2u], state[start + 3u]);
}

fn grads4(start: u32) -> vec4<f32> {
    return vec4<f32>(grads[start], grads[start + 1u], grads[start + 2u], grads[start + 3u]);
}

@compute @workgroup_size(64)
fn batchnorm_statistics_quads(@builtin(workgroup_id) group: vec3<u32>, @builtin(local_invocation_index) local: u32) {
    let q = group.x;
    let quads = shape.channels / 4u;
    let n = shape.values;
    var sum = vec4<f32>(0.0);
    for (var i = local; i < n; i += 64u) {
        sum += x_quad(i * quads + q);
    }
    let mean = reduce4(local, sum, vec4<f32>(0.0))[0] / f32(n);
    var squares = vec4<f32>(0.0);
    for (var i = local; i < n; i += 64u) {
        let d = x_quad(i * quads + q) - mean;
        squares += d * d;
    }
    let variance = reduce4(local, squares, vec4<f32>(0.0))[0] / f32(n);
    if (local == 0u) {
        stats4_out[q] = mean;
        stats4_out[quads + q] = 1.0 / sqrt(variance + shape.epsilon);
        var unbiased = variance;
        if (n > 1u) {
            unbiased = variance * f32(n) / f32(n - 1u);
        }
        let m = shape.momentum;
        for (var k = 0u; k < 4u; k++) {
            let mean_at = shape.running_mean + 4u * q + k;
            let var_at = shape.running_var + 4u * q + k;
            state_out[mean_at] = (1.0 - m) * state_out[mean_at] + m * mean[k];
            state_out[var_at] = (1.0 - m) * state_out[var_at] + m * unbiased[k];
        }
    }
}

// The rows (values of a channel quad) an invocation of the _quads elementwise passes takes: the
// channel's constants (statistics, gamma, beta: a dozen scalar loads, each a round of loads on a
// CPU adapter) are read once for them all.
const ROWS_PER_INVOCATION: u32 = 8u;

// The rows and channel quad of an invocation of the _quads elementwise passes: (first row, end
// row, quad); none past the tensor.
fn row_block(gid: vec3<u32>, groups: vec3<u32>, quads: u32) -> vec3<u32> {
    let invocation = flat_invocation(gid, groups, 64u);
    let blocks = (shape.values + ROWS_PER_INVOCATION - 1u) / ROWS_PER_INVOCATION;
    if (invocation >= blocks * quads) {
        return vec3<u32>(0u, 0u, 0u);
    }
    let block = quotient(invocation, quads);
    let first = block * ROWS_PER_INVOCATION;
    return vec3<u32>(first, min(first + ROWS_PER_INVOCATION, shape.values), invocation - block * quads);
}

@compute @workgroup_size(64)
fn batchnorm_normalize_quads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let quads = shape.channels / 4u;
    let rows = row_block(gid, groups, quads);
    if (rows.x >= rows.y) {
        return;
    }
    let q = rows.z;
    var mean = vec4<f32>(0.0);
    var invstd = vec4<f32>(0.0);
    if (shape.training == 1u) {
        mean = stats4[q];
        invstd = stats4[quads + q];
    } else {
        mean = state4(shape.running_mean + 4u * q);
        invstd = 1.0 / sqrt(state4(shape.running_var + 4u * q) + shape.epsilon);
    }
    let gamma = params4(shape.gamma + 4u * q);
    let beta = params4(shape.beta + 4u * q);
    let activation = shape.activation;
    for (var i = rows.x; i < rows.y; i++) {
        let index = i * quads + q;
        let normalized = (x_quad(index) - mean) * invstd * gamma + beta;
        out4[index] = activate4(activation, normalized);
    }
}

@compute @workgroup_size(64)
fn batchnorm_backward_sums_quads(@builtin(workgroup_id) group: vec3<u32>, @builtin(local_invocation_index) local: u32) {
    let q = group.x;
    let quads = shape.channels / 4u;
    let mean = stats4[q];
    let invstd = stats4[quads + q];
    var sum = vec4<f32>(0.0);
    var dot = vec4<f32>(0.0);
    for (var i = local; i < shape.values; i += 64u) {
        let g = dy_quad(i * quads + q) * derivative_from_output4(shape.activation, y_quad(i * quads + q));
        sum += g;
        dot += g * (x_quad(i * quads + q) - mean) * invstd;
    }
    let totals = reduce4(local, sum, dot);
    if (local == 0u) {
        for (var k = 0u; k < 4u; k++) {
            grads_out[shape.beta + 4u * q + k] = totals[0][k];
            grads_out[shape.gamma + 4u * q + k] = totals[1][k];
        }
    }
}

@compute @workgroup_size(64)
fn batchnorm_backward_input_quads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let quads = shape.channels / 4u;
    let rows = row_block(gid, groups, quads);
    if (rows.x >= rows.y) {
        return;
    }
    let q = rows.z;
    let n = f32(shape.values);
    let mean = stats4[q];
    let invstd = stats4[quads + q];
    let mean_grad = grads4(shape.beta + 4u * q) / n;
    let mean_dot = grads4(shape.gamma + 4u * q) / n;
    let scale = params4(shape.gamma + 4u * q) * invstd;
    let activation = shape.activation;
    for (var i = rows.x; i < rows.y; i++) {
        let index = i * quads + q;
        let normalized = (x_quad(index) - mean) * invstd;
        let g = dy_quad(index) * derivative_from_output4(activation, y_quad(index));
        out4[index] = scale * (g - mean_grad - normalized * mean_dot);
    }
}
