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
// gather_images writes batch_x and batch_y as gather_batch does, for images of shape.height x
// shape.width x shape.channels (channels-last), standardised and, in training, augmented
// (src/input.rs, its CPU reference):
//   x[r, (y W + x) C + c] = v(p) with p the pixel byte at (sy, sx, c) of the sample (0 where
//   (sy, sx) is outside the image), v(p) = p / 255, or (p / 255 - mean[c]) / deviation[c] with
//   shape.standardise; without shape.augment (sy, sx) = (y, x), with it
//     d_j = mix(j ^ mix(sample ^ mix(step.number ^ shape.key)))        j = 0..4
//     sy = y + d_0 mod (2P + 1) - P,  sx = x' + d_1 mod (2P + 1) - P    (P = shape.crop)
//     x' = W - 1 - x if shape.flip and d_2 is odd, else x
//   and x = 0 where (y, x) lies in the S x S square (S = shape.cutout) whose top-left corner is
//   (d_3 mod H - S / 2, d_4 mod W - S / 2).
// One invocation per vec4 of the batch (4 consecutive values of a row: features is a multiple of
// 4); each value's byte is read on its own, as a shifted window does not keep words aligned.
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
// (gather_images: 0-6.)
//
// Workgroup: 64 invocations, each WORDS_PER_INVOCATION (4) packed words. Dispatch grid:
// ceil(rows * features / 4 / 4 / 64) workgroups as (x, y) with x <= 65535
// (invocation = (y * num_workgroups.x + x) * 64 + local); gather_batch_transposed likewise over
// ceil(rows / 4) * features / 4 tiles; gather_images over ceil(rows * features / 4 / 64).

import package::shared::step::current_step;
import package::shared::hash::mix;

struct Shape {
    words_per_sample: u32,
    // vec4 per row of batch_x_t: the batch size rounded up to 4, over 4.
    transposed_quads: u32,
    // gather_images: the image's shape, and what it does to the pixels.
    height: u32,
    width: u32,
    channels: u32,
    standardise: u32,
    augment: u32,
    crop: u32,
    flip: u32,
    cutout: u32,
    key: u32,
    _pad0: u32,
    mean: vec4<f32>,
    deviation: vec4<f32>,
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

// The augmentation's draws for `sample` at training step `number`.
struct Draws {
    crop_row: u32,
    crop_column: u32,
    flip: u32,
    cutout_row: u32,
    cutout_column: u32,
}

fn draws_for(number: u32, sample: u32) -> Draws {
    let k = mix(sample ^ mix(number ^ shape.key));
    return Draws(mix(0u ^ k), mix(1u ^ k), mix(2u ^ k), mix(3u ^ k), mix(4u ^ k));
}

// Value f of `sample`'s image as the batch holds it (see the header).
fn image_value(sample: u32, f: u32, draws: Draws) -> f32 {
    let c = f % shape.channels;
    let position = f / shape.channels;
    let y = i32(position / shape.width);
    let x = i32(position % shape.width);
    var sy = y;
    var sx = x;
    var cleared = false;
    if (shape.augment != 0u) {
        let span = 2u * shape.crop + 1u;
        let p = i32(shape.crop);
        var column = x;
        if (shape.flip != 0u && (draws.flip & 1u) == 1u) {
            column = i32(shape.width) - 1 - x;
        }
        sy = y + i32(draws.crop_row % span) - p;
        sx = column + i32(draws.crop_column % span) - p;
        if (shape.cutout != 0u) {
            let s = i32(shape.cutout);
            let top = i32(draws.cutout_row % shape.height) - s / 2;
            let left = i32(draws.cutout_column % shape.width) - s / 2;
            cleared = y >= top && y < top + s && x >= left && x < left + s;
        }
    }
    var byte = 0u;
    if (sy >= 0 && sy < i32(shape.height) && sx >= 0 && sx < i32(shape.width)) {
        let index = sample * shape.words_per_sample * 4u + (u32(sy) * shape.width + u32(sx)) * shape.channels + c;
        byte = (pixels[index / 4u] >> (8u * (index % 4u))) & 0xffu;
    }
    var value = f32(byte) / 255.0;
    if (shape.standardise != 0u) {
        value = (value - shape.mean[c]) / shape.deviation[c];
    }
    return select(value, 0.0, cleared);
}

@compute @workgroup_size(64)
fn gather_images(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let step = current_step();
    let words = shape.words_per_sample;
    let index = gid.y * groups.x * 64u + gid.x;
    if (index >= step.rows * words) {
        return;
    }
    let row = index / words;
    let word = index % words;
    let sample = order[step.batch_start + row];
    let draws = draws_for(step.number, sample);
    let f = 4u * word;
    batch_x[index] = vec4<f32>(
        image_value(sample, f, draws),
        image_value(sample, f + 1u, draws),
        image_value(sample, f + 2u, draws),
        image_value(sample, f + 3u, draws),
    );
    if (word == 0u) {
        batch_y[row] = labels[sample];
    }
}
