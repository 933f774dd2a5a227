//! Whether a model, its batch and its data fit the adapter's buffers: checked before anything is
//! allocated, so that a model too large costs neither host memory nor time for its initial
//! weights, and said in the user's terms: the layer, the batch, the limit, and what would fit.

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::model::{Op, Plan};

/// Refuses what the adapter cannot hold in one buffer: the flat parameters (and their gradients
/// and moments, as large), a layer's output or scratch for `rows` samples (the larger of a
/// training and an evaluation step), a split's pixels.
pub(super) fn check(gpu: &Gpu, plan: &Plan, rows: usize, splits: [(&str, usize); 2]) -> Result<()> {
    let limits = &gpu.limits;
    let (limit, limit_name) = if limits.max_storage_buffer_binding_size <= limits.max_buffer_size {
        (
            limits.max_storage_buffer_binding_size,
            "max_storage_buffer_binding_size",
        )
    } else {
        (limits.max_buffer_size, "max_buffer_size")
    };
    let allows = format!(
        "this adapter allows {} in one buffer ({limit_name})",
        size(limit)
    );
    let (layout, shapes) = (&plan.layout, plan.shapes());
    let layer_name = |n: usize| plan.nodes[n].label.clone();

    let parameter_bytes = layout.trained as u64 * 4;
    if parameter_bytes > limit {
        let largest = (0..plan.nodes.len())
            .filter_map(|l| layout.of_layer(l).map(|m| (l, m.parameters())))
            .max_by_key(|&(_, count)| count);
        let largest = largest.map_or(String::new(), |(l, count)| {
            format!("; the largest is {} with {count} parameters", layer_name(l))
        });
        return Err(Error::Config(format!(
            "the model has {} parameters, {}, and {allows}: make it smaller{largest}",
            layout.parameter_count(),
            size(parameter_bytes)
        )));
    }

    let mut per_sample = vec![("the batch of inputs".to_string(), shapes[0].len())];
    for (n, node) in plan.nodes.iter().enumerate() {
        let output = shapes[node.output].len();
        per_sample.push((format!("{}'s output", layer_name(n)), output));
        let Op::Layer(layer) = &node.op else {
            continue;
        };
        let input = shapes[node.inputs[0]];
        let kind = layer.kind().expect("the plan expands residual blocks");
        let scratch = kind.scratch_per_sample(input, layout.of_layer(n));
        if let Some((what, floats)) = scratch {
            per_sample.push((format!("{}'s {what}", layer_name(n)), floats));
        }
    }
    // The buffer with the most per sample bounds the batch.
    if let Some((what, floats)) = per_sample.into_iter().max_by_key(|&(_, floats)| floats) {
        let sample_bytes = floats as u64 * 4;
        let most = limit / sample_bytes.max(1);
        if most == 0 {
            return Err(Error::Config(format!(
                "{what} takes {} for one sample, and {allows}: make the layer smaller",
                size(sample_bytes)
            )));
        }
        if sample_bytes * rows as u64 > limit {
            return Err(Error::Config(format!(
                "--batch-size: {what} takes {} per sample, {} for a batch of {rows}, and \
                 {allows}: give --batch-size {most} or less",
                size(sample_bytes),
                size(sample_bytes * rows as u64)
            )));
        }
    }

    for (name, samples) in splits {
        let bytes = samples as u64 * shapes[0].len() as u64;
        if bytes > limit {
            return Err(Error::Config(format!(
                "the {name} set's {samples} samples take {} on the device, and {allows}: use \
                 fewer samples, or an adapter with larger buffers",
                size(bytes)
            )));
        }
    }
    Ok(())
}

/// Bytes as a person reads them: "3.0 GiB", "512 MiB", "100 KiB".
fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    if value < 1024.0 {
        return format!("{bytes} bytes");
    }
    let mut unit = "";
    for name in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = name;
    }
    match value < 10.0 {
        true => format!("{value:.1} {unit}"),
        false => format!("{value:.0} {unit}"),
    }
}

#[cfg(test)]
mod tests {
    use super::size;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(size(100), "100 bytes");
        assert_eq!(size(3 << 29), "1.5 GiB");
        assert_eq!(size(400 << 20), "400 MiB");
    }
}
