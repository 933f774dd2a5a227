// Sums the per-sample loss and correct flags of a whole epoch (training or test) into one total,
// on the GPU, so the host reads back a few bytes once per epoch.
//
//   totals[2 slot]     = bitcast<u32>(sum_{i < count} sample_loss[i])
//   totals[2 slot + 1] = sum_{i < count} sample_correct[i]
// The summation order is fixed (strided partial sums, then a tree), so results are reproducible.
//
// Bindings (group 0):
//   0 shape           storage, read        Shape below
//   1 sample_loss     storage, read        f32 [count]
//   2 sample_correct  storage, read        u32 [count]
//   3 totals          storage, read_write  u32 [2 * slots]
//
// Workgroup: WORKGROUP invocations (a power of two). Dispatch grid: (1, 1, 1).

struct Shape {
    count: u32,
    slot: u32,
    _pad0: u32,
    _pad1: u32,
}

const WORKGROUP: u32 = 256u;

@group(0) @binding(0) var<storage, read> shape: Shape;
@group(0) @binding(1) var<storage, read> sample_loss: array<f32>;
@group(0) @binding(2) var<storage, read> sample_correct: array<u32>;
@group(0) @binding(3) var<storage, read_write> totals: array<u32>;

var<workgroup> loss_partial: array<f32, WORKGROUP>;
var<workgroup> correct_partial: array<u32, WORKGROUP>;

@compute @workgroup_size(WORKGROUP)
fn sum_metrics(@builtin(local_invocation_index) lane: u32) {
    var loss = 0.0;
    var correct = 0u;
    for (var i = lane; i < shape.count; i += WORKGROUP) {
        loss += sample_loss[i];
        correct += sample_correct[i];
    }
    loss_partial[lane] = loss;
    correct_partial[lane] = correct;
    workgroupBarrier();
    for (var width = WORKGROUP / 2u; width > 0u; width /= 2u) {
        if (lane < width) {
            loss_partial[lane] += loss_partial[lane + width];
            correct_partial[lane] += correct_partial[lane + width];
        }
        workgroupBarrier();
    }
    if (lane == 0u) {
        totals[2u * shape.slot] = bitcast<u32>(loss_partial[0]);
        totals[2u * shape.slot + 1u] = correct_partial[0];
    }
}
