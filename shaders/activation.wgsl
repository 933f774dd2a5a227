// The activation's backward pass and the bias-gradient reduction of a dense layer. (Its forward
// pass, f(z + bias), is the epilogue of the layer's matmul: see matmul.wgsl.)
//
// Shape.activation is an activation code, and f' is taken from the layer's output a = f(z), as
// shared/activations.wgsl says.
//
// activation_backward:       grad[r, j] *= f'(operand[r, j])                            (in place)
//                            grads[bias_offset + j] = sum_r grad[r, j]                  (bias gradient)
// With the identity (f' = 1) only the bias gradient is written.
// apply_derivative:          grad[i] *= f'(operand[i])  for i < rows cols              (in place)
// (for a convolution's output, whose bias gradient its weight-gradient product computes)
//
// Bindings (group 0):
//   0 shape   storage, read        Shape below
//   1 values  storage, read_write  f32 [rows, cols] row-major: dL/da in, dL/dz out
//   2 operand storage, read        f32 [rows, cols], the layer's forward output a
//   3 grads   storage, read_write  flat gradient buffer (bias gradient at bias_offset;
//                                  activation_backward only)
//
// Workgroup: 64 invocations. Dispatch grid: activation_backward, one invocation per column,
// (ceil(cols / 64), 1, 1); apply_derivative, one per 4 values, ceil(rows cols / 256) workgroups
// folded into (x, y) with x <= 65535 (invocation = (y * num_workgroups.x + x) * 64 + local).

import package::shared::activations::{IDENTITY, derivative_from_output};
import package::shared::grid::flat_invocation;

struct Shape {
    rows: u32,
    cols: u32,
    bias_offset: u32,
    activation: u32,
}

@group(0) @binding(0) var<storage, read> shape: Shape;
@group(0) @binding(1) var<storage, read_write> values: array<f32>;
@group(0) @binding(2) var<storage, read> operand: array<f32>;
@group(0) @binding(3) var<storage, read_write> grads: array<f32>;

@compute @workgroup_size(64)
fn activation_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    if (j >= shape.cols) {
        return;
    }
    // The shape read once: on lavapipe every read of `shape` inside the loop would be another
    // round of per-lane loads, as many as the loop's own.
    let rows = shape.rows;
    let cols = shape.cols;
    let activation = shape.activation;
    var bias_grad = 0.0;
    if (activation == IDENTITY) {
        // f' = 1: the values stay as they are (so this is all there is to do for the output
        // layer, and for a layer whose derivative the next layer's input-gradient product
        // already applied: see matmul_vec4.wgsl).
        for (var r = 0u; r < rows; r++) {
            bias_grad += values[r * cols + j];
        }
    } else {
        for (var r = 0u; r < rows; r++) {
            let i = r * cols + j;
            let g = values[i] * derivative_from_output(activation, operand[i]);
            values[i] = g;
            bias_grad += g;
        }
    }
    grads[shape.bias_offset + j] = bias_grad;
}

@compute @workgroup_size(64)
fn apply_derivative(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let first = flat_invocation(gid, groups, 64u) * 4u;
    let count = shape.rows * shape.cols;
    let activation = shape.activation;
    for (var i = first; i < min(first + 4u, count); i++) {
        values[i] *= derivative_from_output(activation, operand[i]);
    }
}
