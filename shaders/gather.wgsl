// Builds a training batch on the GPU from the dataset stored once as bytes.
//
//   sample  = order[step.batch_start + r]                         for r < step.rows
//   x[r, f] = pixels_u8[sample * features + f] / 255              for f < features
//   y[r]    = labels[sample]
// The pixel bytes are packed four to a u32 (little-endian), and features is a multiple of 4,
// so a word unpacks into one vec4 of the batch. Each invocation unpacks WORDS_PER_INVOCATION
// consecutive words of the batch (in row-major order): on lavapipe every read of the schedule,
// the shape and the order is a round of per-lane loads, which this shares between them.
//
// Bindings (group 0):
//   0 schedule storage, read             Schedule below; this step's position in the epoch order
//   1 shape    storage, read             Shape below
//   2 pixels   storage, read             u32 [samples * features / 4]
//   3 labels   storage, read             u32 [samples]
//   4 order    storage, read             u32 [samples], this epoch's sample order
//   5 batch_x  storage, read_write       vec4<f32> [rows, features / 4] row-major
//   6 batch_y  storage, read_write       u32 [rows]
//
// Workgroup: 64 invocations, each WORDS_PER_INVOCATION (4) packed words. Dispatch grid:
// ceil(rows * features / 4 / 4 / 64) workgroups as (x, y) with x <= 65535
// (invocation = (y * num_workgroups.x + x) * 64 + local).

struct Step {
    batch_start: u32,
    rows: u32,
    adam_step_size: f32,
    _pad: u32,
}

// The step schedule (see schedule.wgsl): steps[cursor] is the step being run.
struct Schedule {
    cursor: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    steps: array<Step>,
}

struct Shape {
    words_per_sample: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> schedule: Schedule;

fn current_step() -> Step {
    return schedule.steps[schedule.cursor];
}
@group(0) @binding(1) var<storage, read> shape: Shape;
@group(0) @binding(2) var<storage, read> pixels: array<u32>;
@group(0) @binding(3) var<storage, read> labels: array<u32>;
@group(0) @binding(4) var<storage, read> order: array<u32>;
@group(0) @binding(5) var<storage, read_write> batch_x: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> batch_y: array<u32>;

const WORDS_PER_INVOCATION: u32 = 4u;

// Four packed pixel bytes, unpacked and scaled to [0, 1].
fn unpacked(packed: u32) -> vec4<f32> {
    let bytes = vec4<u32>(packed & 0xffu, (packed >> 8u) & 0xffu, (packed >> 16u) & 0xffu, packed >> 24u);
    return vec4<f32>(bytes) / 255.0;
}

@compute @workgroup_size(64)
fn gather_batch(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let step = current_step();
    let words = shape.words_per_sample;
    let total = step.rows * words;
    let first = (gid.y * groups.x * 64u + gid.x) * WORDS_PER_INVOCATION;
    if (first >= total) {
        return;
    }
    let first_row = first / words;
    let first_sample = order[step.batch_start + first_row];
    for (var j = 0u; j < WORDS_PER_INVOCATION; j++) {
        let i = first + j;
        if (i < total) {
            let row = i / words;
            let word = i % words;
            var sample = first_sample;
            if (row != first_row) {
                sample = order[step.batch_start + row];
            }
            batch_x[i] = unpacked(pixels[sample * words + word]);
            if (word == 0u) {
                batch_y[row] = labels[sample];
            }
        }
    }
}
