// Builds a training batch on the GPU from the dataset stored once as bytes.
//
//   sample  = order[step.batch_start + r]                         for r < step.rows
//   x[r, f] = pixels_u8[sample * features + f] / 255              for f < features
//   y[r]    = labels[sample]
// The pixel bytes are packed four to a u32 (little-endian), and features is a multiple of 4,
// so each invocation unpacks one word into one vec4 of the batch.
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
// Workgroup: 64 invocations, one per packed word. Dispatch grid: ceil(rows * features / 4 / 64)
// workgroups as (x, y) with x <= 65535 (index = (y * num_workgroups.x + x) * 64 + local).

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

@compute @workgroup_size(64)
fn gather_batch(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let step = current_step();
    let i = gid.y * groups.x * 64u + gid.x;
    if (i >= step.rows * shape.words_per_sample) {
        return;
    }
    let row = i / shape.words_per_sample;
    let word = i % shape.words_per_sample;
    let sample = order[step.batch_start + row];
    let packed = pixels[sample * shape.words_per_sample + word];
    let bytes = vec4<u32>(packed & 0xffu, (packed >> 8u) & 0xffu, (packed >> 16u) & 0xffu, packed >> 24u);
    batch_x[i] = vec4<f32>(bytes) / 255.0;
    if (word == 0u) {
        batch_y[row] = labels[sample];
    }
}
