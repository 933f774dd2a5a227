// Inverted dropout. In training each value is kept or zeroed by a counter-based hash of
// (layer key, training step, element), so a step's mask is the same on every run and after a
// resume, and is recomputed (not stored) by the backward pass:
//   keep(i)  = mix(i ^ mix(step.number ^ shape.layer_key)) >= shape.threshold   (rate 2^32)
//   dropout_forward:   Y[i] = keep(i) ? X[i] * shape.scale : 0     scale = 1 / (1 - rate)
//                      (in evaluation, shape.training = 0: Y[i] = X[i])
//   dropout_backward:  dX[i] = (keep(i) ? dY[i] * shape.scale : 0) * f'(B[i])
//                      (in evaluation, an explanation's gradients: dX[i] = dY[i] * f'(B[i]))
//                      f = shape.derivative, of the layer beneath, B its output (this layer's input)
// mix is lowbias32 (Chris Wellons); src/reference.rs has the same functions.
//
// Bindings (group 0):
//   0 schedule storage, read        Schedule (shared/step.wgsl, bound by current_step): the step number
//   1 shape    storage, read        DropoutShape below
//   2 input    storage, read        f32 [count]: X forward, dY backward
//   3 output   storage, read_write  f32 [count]: Y forward, dX backward
//   4 below    storage, read        backward: f32 [count], B (any buffer where shape.derivative is 0)
//
// Workgroup: 64 invocations, each VALUES_PER_INVOCATION (4) consecutive values. Dispatch grid:
// ceil(count / 256) workgroups, folded into (x, y) with x <= 65535 (invocation =
// (y * num_workgroups.x + x) * 64 + local).

import package::shared::step::current_step;
import package::shared::activations::derivative_from_output;
import package::shared::grid::flat_invocation;
import package::shared::hash::mix;

struct DropoutShape {
    count: u32,
    threshold: u32,
    scale: f32,
    layer_key: u32,
    derivative: u32,
    training: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(1) var<storage, read> shape: DropoutShape;
@group(0) @binding(2) var<storage, read> input: array<f32>;
@group(0) @binding(3) var<storage, read_write> output: array<f32>;
@group(0) @binding(4) var<storage, read> below: array<f32>;

const VALUES_PER_INVOCATION: u32 = 4u;

// Values i of this invocation are first .. first + 3 below `count`.
fn first_value(gid: vec3<u32>, groups: vec3<u32>) -> u32 {
    return flat_invocation(gid, groups, 64u) * VALUES_PER_INVOCATION;
}

@compute @workgroup_size(64)
fn dropout_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let first = first_value(gid, groups);
    let count = shape.count;
    let training = shape.training != 0u;
    let step_key = mix(current_step().number ^ shape.layer_key);
    let threshold = shape.threshold;
    let scale = shape.scale;
    for (var i = first; i < min(first + VALUES_PER_INVOCATION, count); i++) {
        var value = input[i];
        if (training) {
            value = select(0.0, value * scale, mix(i ^ step_key) >= threshold);
        }
        output[i] = value;
    }
}

@compute @workgroup_size(64)
fn dropout_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let first = first_value(gid, groups);
    let count = shape.count;
    let step_key = mix(current_step().number ^ shape.layer_key);
    let threshold = shape.threshold;
    let scale = shape.scale;
    let derivative = shape.derivative;
    let training = shape.training != 0u;
    for (var i = first; i < min(first + VALUES_PER_INVOCATION, count); i++) {
        var kept = input[i];
        if (training) {
            kept = select(0.0, kept * scale, mix(i ^ step_key) >= threshold);
        }
        output[i] = kept * derivative_from_output(derivative, below[i]);
    }
}
