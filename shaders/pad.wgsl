// Copies of a matrix between row strides, for products whose kernels need every row to start on
// a vec4: a dense layer's 10 outputs padded to 12 columns of zeros, and the product's padded
// result copied back (src/layers/dense.rs, `PaddedOutputs`).
//
//   copy_columns:  Out[out_offset + r out_stride + c] = c < copied ? In[in_offset + r in_stride + c] : 0
//                  for r < rows, c < written
//
// `written` >= `copied` pads each row with zeros (W [inputs + 1, 10] into [inputs + 1, 12]);
// `written` = `copied` drops the padding (C [rows, 12] back into [rows, 10]).
//
// Bindings (group 0):
//   0 shape   storage, read        ColumnCopy below
//   1 input   storage, read        f32 array holding In
//   2 output  storage, read_write  f32 array holding Out
//
// Workgroup: 64 invocations, each four consecutive columns of one row (invocation = r
// ceil(written / 4) + c / 4). Dispatch grid: ceil(rows ceil(written / 4) / 64) workgroups,
// folded into (x, y) with x <= 65535 (invocation = (y * num_workgroups.x + x) * 64 + local).

import package::shared::grid::flat_invocation;

struct ColumnCopy {
    rows: u32,
    copied: u32,
    written: u32,
    in_offset: u32,
    in_stride: u32,
    out_offset: u32,
    out_stride: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> shape: ColumnCopy;
@group(0) @binding(1) var<storage, read> input: array<f32>;
@group(0) @binding(2) var<storage, read_write> output: array<f32>;

@compute @workgroup_size(64)
fn copy_columns(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let quads = (shape.written + 3u) / 4u;
    let invocation = flat_invocation(gid, groups, 64u);
    let row = invocation / quads;
    if (row >= shape.rows) {
        return;
    }
    let first = (invocation % quads) * 4u;
    let copied = shape.copied;
    let origin = shape.in_offset + row * shape.in_stride;
    let destination = shape.out_offset + row * shape.out_stride;
    for (var c = first; c < min(first + 4u, shape.written); c++) {
        var value = 0.0;
        if (c < copied) {
            value = input[origin + c];
        }
        output[destination + c] = value;
    }
}
