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
// gather_batch_transposed also writes the batch transposed, for the weight gradient of the first
// layer, which the register matmul kernels compute fastest as a forward-form product on Xᵀ:
//   x_t[f, r] = x[r, f]       row-major [features, 4 shape.transposed_quads]; the columns
//                             from step.rows to the next multiple of 4 zero, those past it
//                             not written (a product over K = step.rows never reads them)
// Each of its invocations takes a 4 x 4 tile (4 rows' word w), unpacked once and stored both ways.
//
// Bindings (group 0):
//   0 schedule storage, read             Schedule (shared/step.wgsl, bound by current_step); this step's position in the epoch order
//   1 shape    storage, read             Shape below
//   2 pixels   storage, read             u32 [samples * features / 4]
//   3 labels   storage, read             u32 [samples]
//   4 order    storage, read             u32 [samples], this epoch's sample order
//   5 batch_x  storage, read_write       vec4<f32> [rows, features / 4] row-major
//   6 batch_y  storage, read_write       u32 [rows]
//   7 batch_x_t storage, read_write      vec4<f32> [features, transposed_quads] (gather_batch_transposed)
//
// Workgroup: 64 invocations, each WORDS_PER_INVOCATION (4) packed words. Dispatch grid:
// ceil(rows * features / 4 / 4 / 64) workgroups as (x, y) with x <= 65535
// (invocation = (y * num_workgroups.x + x) * 64 + local); gather_batch_transposed likewise over
// ceil(rows / 4) * features / 4 tiles.

import package::shared::step::current_step;

struct Shape {
    words_per_sample: u32,
    // vec4 per row of batch_x_t: the batch size rounded up to 4, over 4.
    transposed_quads: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(1) var<storage, read> shape: Shape;
@group(0) @binding(2) var<storage, read> pixels: array<u32>;
@group(0) @binding(3) var<storage, read> labels: array<u32>;
@group(0) @binding(4) var<storage, read> order: array<u32>;
@group(0) @binding(5) var<storage, read_write> batch_x: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> batch_y: array<u32>;
@group(0) @binding(7) var<storage, read_write> batch_x_t: array<vec4<f32>>;

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

// Where a tile of gather_batch_transposed reads and writes, read from the schedule and shape once.
struct Tile {
    batch_start: u32,
    rows: u32,
    words: u32,
    word: u32,
}

// Row r's four pixels of the tile's word (stored into batch_x, and its label into batch_y);
// zero past the batch.
fn tile_row(tile: Tile, r: u32) -> vec4<f32> {
    if (r >= tile.rows) {
        return vec4<f32>(0.0);
    }
    let sample = order[tile.batch_start + r];
    let x = unpacked(pixels[sample * tile.words + tile.word]);
    batch_x[r * tile.words + tile.word] = x;
    if (tile.word == 0u) {
        batch_y[r] = labels[sample];
    }
    return x;
}

@compute @workgroup_size(64)
fn gather_batch_transposed(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let step = current_step();
    let words = shape.words_per_sample;
    let quads = shape.transposed_quads;
    let index = gid.y * groups.x * 64u + gid.x;
    let quad = index / words;
    if (quad * 4u >= step.rows) {
        return;
    }
    let tile = Tile(step.batch_start, step.rows, words, index % words);
    // Rows 4 quad .. 4 quad + 3, one call each (constant indices: see matmul_vec4.wgsl on
    // dynamic indexing).
    let r0 = tile_row(tile, 4u * quad);
    let r1 = tile_row(tile, 4u * quad + 1u);
    let r2 = tile_row(tile, 4u * quad + 2u);
    let r3 = tile_row(tile, 4u * quad + 3u);
    let column = 4u * tile.word * quads + quad;
    batch_x_t[column] = vec4<f32>(r0.x, r1.x, r2.x, r3.x);
    batch_x_t[column + quads] = vec4<f32>(r0.y, r1.y, r2.y, r3.y);
    batch_x_t[column + 2u * quads] = vec4<f32>(r0.z, r1.z, r2.z, r3.z);
    batch_x_t[column + 3u * quads] = vec4<f32>(r0.w, r1.w, r2.w, r3.w);
}
