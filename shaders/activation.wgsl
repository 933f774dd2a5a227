// Bias + activation, forward and backward, and the bias-gradient reduction of a dense layer.
//
// Activation codes (Shape.activation): 0 identity, 1 relu, 2 sigmoid, 3 tanh.
// The derivative is taken from the layer's output a = f(z), which is all backward needs:
//   relu' = (a > 0), sigmoid' = a (1 - a), tanh' = 1 - a^2, identity' = 1.
//
// bias_activation_forward:   values[r, j] = f(values[r, j] + operand[bias_offset + j])   (in place)
// activation_backward:       grad[r, j] *= f'(operand[r, j])                            (in place)
//                            grads[bias_offset + j] = sum_r grad[r, j]                  (bias gradient)
//
// Bindings (group 0):
//   0 shape   storage, read        Shape below
//   1 values  storage, read_write  f32 [rows, cols] row-major (forward: pre-activation in, output out;
//                                  backward: dL/da in, dL/dz out)
//   2 operand storage, read        forward: flat parameter buffer (bias at bias_offset)
//             storage, read        backward: f32 [rows, cols], the layer's forward output a
//   3 grads   storage, read_write  backward only: flat gradient buffer (bias gradient at bias_offset)
//
// Workgroup: 64 invocations.
// Dispatch grid: forward, one invocation per element, ceil(rows * cols / 64) workgroups laid out
// as (x, y) with x <= 65535 (index = (y * num_workgroups.x + x) * 64 + local);
// backward, one invocation per column, (ceil(cols / 64), 1, 1).

struct Shape {
    rows: u32,
    cols: u32,
    bias_offset: u32,
    activation: u32,
}

const IDENTITY: u32 = 0u;
const RELU: u32 = 1u;
const SIGMOID: u32 = 2u;
const TANH: u32 = 3u;

@group(0) @binding(0) var<storage, read> shape: Shape;
@group(0) @binding(1) var<storage, read_write> values: array<f32>;
@group(0) @binding(2) var<storage, read> operand: array<f32>;
@group(0) @binding(3) var<storage, read_write> grads: array<f32>;

fn activate(z: f32) -> f32 {
    switch shape.activation {
        case RELU: { return max(z, 0.0); }
        case SIGMOID: { return 1.0 / (1.0 + exp(-z)); }
        case TANH: { return tanh(z); }
        default: { return z; }
    }
}

fn derivative_from_output(a: f32) -> f32 {
    switch shape.activation {
        case RELU: { return select(0.0, 1.0, a > 0.0); }
        case SIGMOID: { return a * (1.0 - a); }
        case TANH: { return 1.0 - a * a; }
        default: { return 1.0; }
    }
}

@compute @workgroup_size(64)
fn bias_activation_forward(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let i = gid.y * groups.x * 64u + gid.x;
    if (i >= shape.rows * shape.cols) {
        return;
    }
    values[i] = activate(values[i] + operand[shape.bias_offset + i % shape.cols]);
}

@compute @workgroup_size(64)
fn activation_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    if (j >= shape.cols) {
        return;
    }
    var bias_grad = 0.0;
    for (var r = 0u; r < shape.rows; r++) {
        let i = r * shape.cols + j;
        let g = values[i] * derivative_from_output(operand[i]);
        values[i] = g;
        bias_grad += g;
    }
    grads[shape.bias_offset + j] = bias_grad;
}
