// Softmax output losses, fused with their gradient and the accuracy count.
//
// For each row r < step.rows of the batch, with logits z = logits[r, :], p = softmax(z),
// label y = labels[r] and one-hot target t (C = shape.classes):
//   softmax_cross_entropy, with label smoothing e = shape.label_smoothing (PyTorch's
//   F.cross_entropy(..., label_smoothing=e): the target is q = (1 - e) t + e / C):
//                           loss_r = logsumexp(z) - (1 - e) z[y] - e mean_j z_j
//                           dL/dz  = (p - q) / rows
//   (e = 0 is plain cross-entropy, bit for bit.)
//   softmax_mean_squared_error (Keras' mse on the softmax output):
//                           loss_r = (1/C) sum_j (p_j - t_j)^2
//                           g_j    = 2 (p_j - t_j) / (C rows)        (dL/dp)
//                           dL/dz_k = p_k (g_k - sum_j g_j p_j)
// Both: prediction_r = first argmax of z; correct_r = (prediction_r == y).
// loss_r and correct_r are stored at sample slot step.batch_start + r, so that a reduction at the
// end of an epoch counts every sample exactly once; the batch mean loss is sum_r loss_r / rows.
//
// Bindings (group 0):
//   0 schedule        storage, read             Schedule (shared/step.wgsl, bound by current_step); this step's slot base and row count
//   1 shape           storage, read             Shape below (label_smoothing: cross-entropy only)
//   2 logits          storage, read             f32 [rows, C] row-major
//   3 labels          storage, read             u32 [rows]
//   4 logits_grad     storage, read_write       f32 [rows, C] row-major; written if shape.write_gradient != 0
//   5 sample_loss     storage, read_write       f32 [samples]
//   6 sample_correct  storage, read_write       u32 [samples]
//   7 sample_prediction storage, read_write     u32 [samples]
//
// Workgroup: 64 invocations, one per row. Dispatch grid: (ceil(rows / 64), 1, 1).

import package::shared::step::current_step;

struct Shape {
    classes: u32,
    write_gradient: u32,
    label_smoothing: f32,
    _pad0: u32,
}

@group(0) @binding(1) var<storage, read> shape: Shape;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read> labels: array<u32>;
@group(0) @binding(4) var<storage, read_write> logits_grad: array<f32>;
@group(0) @binding(5) var<storage, read_write> sample_loss: array<f32>;
@group(0) @binding(6) var<storage, read_write> sample_correct: array<u32>;
@group(0) @binding(7) var<storage, read_write> sample_prediction: array<u32>;

struct Softmax {
    max_logit: f32,
    log_sum_exp: f32,
    argmax: u32,
}

fn softmax_stats(row: u32) -> Softmax {
    let base = row * shape.classes;
    var max_logit = logits[base];
    var argmax = 0u;
    for (var j = 1u; j < shape.classes; j++) {
        let z = logits[base + j];
        if (z > max_logit) {
            max_logit = z;
            argmax = j;
        }
    }
    var sum = 0.0;
    for (var j = 0u; j < shape.classes; j++) {
        sum += exp(logits[base + j] - max_logit);
    }
    return Softmax(max_logit, max_logit + log(sum), argmax);
}

fn record(row: u32, loss: f32, stats: Softmax) {
    let slot = current_step().batch_start + row;
    sample_loss[slot] = loss;
    sample_correct[slot] = select(0u, 1u, stats.argmax == labels[row]);
    sample_prediction[slot] = stats.argmax;
}

@compute @workgroup_size(64)
fn softmax_cross_entropy(@builtin(global_invocation_id) gid: vec3<u32>) {
    let step = current_step();
    let row = gid.x;
    if (row >= step.rows) {
        return;
    }
    let base = row * shape.classes;
    let label = labels[row];
    let stats = softmax_stats(row);
    let smoothing = shape.label_smoothing;
    let uniform = smoothing / f32(shape.classes);
    var logit_sum = 0.0;
    for (var j = 0u; j < shape.classes; j++) {
        logit_sum += logits[base + j];
    }
    let loss = stats.log_sum_exp - (1.0 - smoothing) * logits[base + label] - uniform * logit_sum;
    record(row, loss, stats);
    if (shape.write_gradient != 0u) {
        let inv_rows = 1.0 / f32(step.rows);
        for (var j = 0u; j < shape.classes; j++) {
            let p = exp(logits[base + j] - stats.log_sum_exp);
            let q = select(0.0, 1.0 - smoothing, j == label) + uniform;
            logits_grad[base + j] = (p - q) * inv_rows;
        }
    }
}

@compute @workgroup_size(64)
fn softmax_mean_squared_error(@builtin(global_invocation_id) gid: vec3<u32>) {
    let step = current_step();
    let row = gid.x;
    if (row >= step.rows) {
        return;
    }
    let base = row * shape.classes;
    let label = labels[row];
    let stats = softmax_stats(row);
    let classes = f32(shape.classes);
    var squared_error = 0.0;
    // sum_j g_j p_j, with g_j = 2 (p_j - t_j) / (C rows)
    var g_dot_p = 0.0;
    let g_scale = 2.0 / (classes * f32(step.rows));
    for (var j = 0u; j < shape.classes; j++) {
        let p = exp(logits[base + j] - stats.log_sum_exp);
        let diff = p - select(0.0, 1.0, j == label);
        squared_error += diff * diff;
        g_dot_p += g_scale * diff * p;
    }
    record(row, squared_error / classes, stats);
    if (shape.write_gradient != 0u) {
        for (var j = 0u; j < shape.classes; j++) {
            let p = exp(logits[base + j] - stats.log_sum_exp);
            let g = g_scale * (p - select(0.0, 1.0, j == label));
            logits_grad[base + j] = p * (g - g_dot_p);
        }
    }
}
