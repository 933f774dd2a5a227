//! Measurements behind `shadertrain bench`: the adapter's arithmetic peak, each matmul shape of a
//! training step alone, and the model FLOPs that turn step times into GFLOP/s.

use web_time::Instant;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::gpu::ops::ImageProductKind;
use crate::gpu::uniforms::{ConvShape, MatmulDims, PeakShape};
use crate::gpu::{Gpu, Kernels, MatmulOperand, MatmulVariant, TextureMirror};
use crate::layers::kind::Product;
use crate::model::{LayerSpec, ModelSpec};

/// One matmul of a training step, timed alone.
#[derive(Debug, Clone, Serialize)]
pub struct MatmulShape {
    /// e.g. "layer 0 forward".
    pub name: String,
    pub m: u32,
    pub n: u32,
    pub k: u32,
    /// The variant the training step runs it on, and its rate.
    pub variant: MatmulVariant,
    /// The form the step computes it in: "product" (on `variant`), "direct" (a convolution's
    /// input gradient straight from its output's gradient, without the patch matrix's gradient
    /// and col2im), or "image" (a convolution's forward product or weight gradient read from its
    /// input image, without the patch matrix).
    pub form: &'static str,
    pub gflops: f64,
    /// Each variant's rate.
    pub tiled_gflops: f64,
    pub registers_gflops: f64,
    /// The direct form's rate (its model FLOPs over its time), where the adapter runs it.
    pub direct_gflops: Option<f64>,
    /// The image form's rate, where the adapter runs it.
    pub image_gflops: Option<f64>,
}

/// Times a product with every variant (each in the form a training step computes it with);
/// reports the one the step uses.
pub fn measure_matmul(gpu: &Gpu, kernels: &Kernels, product: &StepMatmul) -> Result<MatmulShape> {
    let dims = &product.dims;
    let tiled_gflops = matmul_gflops(gpu, kernels, MatmulVariant::Tiled, dims)?;
    let registers_gflops = matmul_gflops(
        gpu,
        kernels,
        MatmulVariant::Registers,
        &product.register_dims,
    )?;
    let variant = kernels.matmul.for_dims(dims).variant;
    let name = product.name.clone();
    let direct_gflops = match &product.direct {
        Some((dims, shape)) => direct_input_grad_gflops(gpu, kernels, dims, shape, product.flops)?,
        None => None,
    };
    let image_gflops = match &product.image {
        Some(shape) => image_product_gflops(gpu, kernels, dims, shape)?,
        None => None,
    };
    let (form, gflops) = match (direct_gflops, image_gflops, variant) {
        (Some(gflops), _, _) => ("direct", gflops),
        (None, Some(gflops), _) => ("image", gflops),
        (None, None, MatmulVariant::Tiled) => ("product", tiled_gflops),
        (None, None, MatmulVariant::Registers) => ("product", registers_gflops),
    };
    Ok(MatmulShape {
        name,
        m: dims.m,
        n: dims.n,
        k: dims.k,
        variant,
        form,
        gflops,
        tiled_gflops,
        registers_gflops,
        direct_gflops,
        image_gflops,
    })
}

/// GFLOP/s (`dims`' FLOPs, padding included, as the product's, over its time alone) of a
/// convolution's forward product or weight gradient read from its input image, on buffers of
/// constant contents; None where the adapter does not run it.
fn image_product_gflops(
    gpu: &Gpu,
    kernels: &Kernels,
    dims: &MatmulDims,
    shape: &ConvShape,
) -> Result<Option<f64>> {
    // A convolution's forward product has the epilogue of its activation (identity included).
    let kind = match dims.epilogue_activation() {
        Some(activation) => ImageProductKind::Forward(activation),
        None => ImageProductKind::WeightGrad,
    };
    let pixels = shape.samples * shape.in_height * shape.in_width;
    let rhs_len = dims.rhs_index(dims.k as usize - 1, dims.n as usize - 1) + 1;
    let out_len = dims.out_index(dims.m as usize - 1, dims.n as usize - 1) + 1;
    let buffers = [
        gpu.storage_with("bench x", &vec![0.5f32; (pixels * shape.channels) as usize])?,
        gpu.storage_with("bench rhs", &vec![0.25f32; rhs_len])?,
        gpu.storage_buffer("bench out", (out_len * 4) as u64)?,
    ];
    let alone =
        crate::gpu::ops::conv_image_product_alone(gpu, kernels, kind, dims, shape, &buffers)?;
    let Some(dispatches) = alone else {
        return Ok(None);
    };
    let seconds = time_repeated(gpu, 0.2, |encoder, repeats| {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        for _ in 0..repeats {
            for (kernel, group, [x, y, z]) in &dispatches {
                pass.set_pipeline(&kernel.pipeline);
                pass.set_bind_group(0, group, &[]);
                pass.dispatch_workgroups(*x, *y, *z);
            }
        }
    })?;
    Ok(Some(flops(dims) / seconds / 1e9))
}

/// GFLOP/s (`flops` over its time alone) of a convolution's direct input gradient, on buffers of
/// constant contents; None where the adapter does not run it.
fn direct_input_grad_gflops(
    gpu: &Gpu,
    kernels: &Kernels,
    dims: &MatmulDims,
    shape: &ConvShape,
    flops: f64,
) -> Result<Option<f64>> {
    let filters = dims.b_col_stride as usize;
    let positions = (shape.samples * shape.out_height * shape.out_width) as usize;
    let weights = dims.b_offset as usize + dims.k as usize * dims.n as usize;
    let values = (dims.m * dims.n) as usize;
    let buffers = [
        gpu.storage_with("bench dz", &vec![0.5f32; positions * filters])?,
        gpu.storage_with("bench params", &vec![0.25f32; weights])?,
        gpu.storage_buffer("bench input grads", (values * 4) as u64)?,
        gpu.storage_with("bench below", &vec![1.0f32; values])?,
    ];
    let alone = crate::gpu::ops::conv_input_grad_alone(gpu, kernels, dims, shape, &buffers)?;
    let Some((kernel, bind_group, grid)) = alone else {
        return Ok(None);
    };
    let seconds = time_dispatches(gpu, &kernel.pipeline, &bind_group, grid, 0.2)?;
    Ok(Some(flops / seconds / 1e9))
}

/// One matmul of a training step.
pub struct StepMatmul {
    /// e.g. "layer 0 weight grad".
    pub name: String,
    pub dims: MatmulDims,
    /// Its model FLOPs (`LayerKind::products`).
    pub flops: f64,
    /// A convolution's input gradient in the direct form (`Product::direct`).
    pub direct: Option<(MatmulDims, ConvShape)>,
    /// A convolution's product in the image form (`Product::image`).
    pub image: Option<ConvShape>,
    /// The same product in the form the register kernels compute it with in a step where the
    /// vec4 kernels take it: the first layer's weight gradient on the transposed batch, with the
    /// bias gradient as one more row (`train::builder::TransposedInput`), or a dense layer's
    /// product on its padded matrix (`Product::padded`); else `dims`.
    pub register_dims: MatmulDims,
}

/// The products of a training step over a batch of `rows`: each dense layer's forward, weight
/// gradient and input gradient, each convolution's forward, weight gradient and patch-matrix
/// gradient (no input gradient for a layer with no parameters below it: nothing consumes it),
/// named after the layer's `layers.{i}` index; with the model FLOPs of each (a convolution's
/// without the bias column and padding its product carries).
fn products(spec: &ModelSpec, rows: usize) -> Vec<(String, Product)> {
    let plan = spec.plan().expect("a validated model");
    let layout = &plan.layout;
    let mut products = Vec::new();
    for (l, node) in plan.nodes.iter().enumerate() {
        let (Some(m), Some(i), Some(kind)) = (
            layout.of_layer(l),
            layout.layer_matrix[l],
            plan.layer(l).and_then(LayerSpec::kind),
        ) else {
            continue;
        };
        let input = plan.tensors[node.inputs[0]].shape;
        // No input gradient for a layer with no parameters below it: nothing consumes it.
        let input_grad = plan.needs_grad[node.inputs[0]];
        for product in kind.products(rows, input, &m) {
            if product.part != "input grad" || input_grad {
                let name = format!("{} {i} {}", product.kind, product.part);
                products.push((name, product));
            }
        }
    }
    products
}

/// The products of a training step (see `products`), each with the form the register kernels
/// compute it in.
pub fn step_matmuls(kernels: &Kernels, spec: &ModelSpec, rows: usize) -> Vec<StepMatmul> {
    // The dense layer that reads the batch (after any Flatten) takes its weight gradient on the
    // transposed batch where the register kernels do.
    let batch_dense = spec.plan().expect("a validated model").batch_dense();
    let stride = rows.next_multiple_of(4);
    let transposed = batch_dense.and_then(|m| {
        let dims = kernels
            .matmul
            .transposed_first_weight_grad(rows, &m, stride)?;
        Some((MatmulDims::layer_weight_grad(rows, &m), dims))
    });
    products(spec, rows)
        .into_iter()
        .map(|(name, product)| StepMatmul {
            register_dims: transposed
                .filter(|(plain, _)| *plain == product.dims)
                .map(|(_, transposed)| transposed)
                .or(product.padded.filter(|padded| {
                    kernels.matmul.reads_mirrors() && kernels.matmul.takes_vec4(padded)
                }))
                .unwrap_or(product.dims),
            name,
            dims: product.dims,
            flops: product.flops,
            direct: product.direct,
            image: product.image,
        })
        .collect()
}

fn flops(dims: &MatmulDims) -> f64 {
    2.0 * dims.m as f64 * dims.n as f64 * dims.k as f64
}

/// Model FLOPs of one training step: the multiply-adds of its matmuls (the element-wise kernels
/// and the optimizer are a rounding error beside them, and are not counted).
pub fn step_flops(spec: &ModelSpec, rows: usize) -> f64 {
    products(spec, rows).iter().map(|(_, p)| p.flops).sum()
}

fn wait(gpu: &Gpu) -> Result<()> {
    gpu.device
        .poll(wgpu::PollType::wait_indefinitely())
        .map(|_| ())
        .map_err(|e| Error::Readback(e.to_string()))
}

/// Seconds per dispatch of `pipeline` (no dynamic offsets), recorded `repeats` times in one
/// submission, repeating with more until one submission takes at least `min_seconds`; the best of
/// three such.
pub fn time_dispatches(
    gpu: &Gpu,
    pipeline: &wgpu::ComputePipeline,
    bind_group: &wgpu::BindGroup,
    grid: [u32; 3],
    min_seconds: f64,
) -> Result<f64> {
    time_repeated(gpu, min_seconds, |encoder, repeats| {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, bind_group, &[]);
        for _ in 0..repeats {
            pass.dispatch_workgroups(grid[0], grid[1], grid[2]);
        }
    })
}

/// Seconds per refresh of the first `bytes` of `mirror`, timed as `time_dispatches` times a
/// dispatch.
pub fn time_mirror_refresh(
    gpu: &Gpu,
    (mirror, bytes): (&TextureMirror, u64),
    min_seconds: f64,
) -> Result<f64> {
    time_repeated(gpu, min_seconds, |encoder, repeats| {
        for _ in 0..repeats {
            mirror.record_refresh_of(encoder, bytes);
        }
    })
}

/// Seconds per repeat of what `record` records `repeats` times, as `time_dispatches` says.
fn time_repeated(
    gpu: &Gpu,
    min_seconds: f64,
    record: impl Fn(&mut wgpu::CommandEncoder, usize),
) -> Result<f64> {
    let run = |repeats: usize| -> Result<f64> {
        let started = Instant::now();
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        record(&mut encoder, repeats);
        gpu.queue.submit([encoder.finish()]);
        wait(gpu)?;
        Ok(started.elapsed().as_secs_f64())
    };
    run(1)?; // warm-up: first use of the pipeline
    let mut repeats = 1;
    let mut elapsed = run(repeats)?;
    while elapsed < min_seconds && repeats < 1 << 20 {
        repeats *= 2;
        elapsed = run(repeats)?;
    }
    let best = (0..2).try_fold(elapsed, |best, _| run(repeats).map(|t| best.min(t)))?;
    Ok(best / repeats as f64)
}

/// GFLOP/s of one matmul shape alone with `variant`, on buffers of constant contents.
pub fn matmul_gflops(
    gpu: &Gpu,
    kernels: &Kernels,
    variant: MatmulVariant,
    dims: &MatmulDims,
) -> Result<f64> {
    let chosen = kernels.matmul.with_variant(dims, variant);
    let lhs_len = dims.lhs_index(dims.m as usize - 1, dims.k as usize - 1) + 1;
    let rhs_len = dims.rhs_index(dims.k as usize - 1, dims.n as usize - 1) + 1;
    let out_len = dims.out_index(dims.m as usize - 1, dims.n as usize - 1) + 1;
    let lhs = gpu.storage_with("bench lhs", &vec![0.5f32; lhs_len])?;
    let rhs = gpu.storage_with("bench rhs", &vec![0.25f32; rhs_len])?;
    let out = gpu.storage_buffer("bench out", (out_len * 4) as u64)?;
    let uniform = gpu.params_with("bench dims", dims);
    let mirror = |buffer: &wgpu::Buffer| {
        (chosen.reads_mirrors)
            .then(|| TextureMirror::new(gpu, "bench operand mirror", buffer))
            .flatten()
    };
    let (lhs_mirror, rhs_mirror) = (mirror(&lhs), mirror(&rhs));
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    let (lhs, rhs) = (
        MatmulOperand::new(&lhs, lhs_mirror.as_ref()),
        MatmulOperand::new(&rhs, rhs_mirror.as_ref()),
    );
    let seconds = match (kernels.matmul).split_for_variant(dims, variant, [&lhs, &rhs]) {
        // As a step computes it: the parts, then their sum.
        Some(split) => {
            let groups = split.bind_alone(gpu, [lhs, rhs], &out, &mut encoder)?;
            gpu.queue.submit([encoder.finish()]);
            time_repeated(gpu, 0.2, |encoder, repeats| {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                for _ in 0..repeats {
                    for (dispatch, group) in &groups {
                        pass.set_pipeline(&dispatch.kernel.pipeline);
                        pass.set_bind_group(0, group, &[]);
                        let [x, y, z] = dispatch.grid;
                        pass.dispatch_workgroups(x, y, z);
                    }
                }
            })?
        }
        None => {
            // The operands are constant: their mirrors are filled once, outside the timing.
            let bind_group = chosen.bind(gpu, &uniform, lhs, rhs, &out, None, &mut encoder);
            gpu.queue.submit([encoder.finish()]);
            time_dispatches(gpu, &chosen.kernel.pipeline, &bind_group, chosen.grid, 0.2)?
        }
    };
    Ok(flops(dims) / seconds / 1e9)
}

/// The adapter's vec4 FMA rate (GFLOP/s) from `shaders/peak.wgsl`.
pub fn fma_peak_gflops(gpu: &Gpu) -> Result<f64> {
    // Four FMA steps an iteration (see peak.wgsl): 1024 steps per chain.
    const ITERATIONS: u32 = 256;
    const GROUPS: u32 = 1024;
    let module = gpu
        .device
        .create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("peak.wgsl"),
            source: wgpu::ShaderSource::Wgsl(crate::shader_source!("peak.wgsl").into()),
        });
    let pipeline = gpu
        .device
        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("fma_peak"),
            layout: None,
            module: &module,
            entry_point: Some("fma_peak"),
            compilation_options: Default::default(),
            cache: None,
        });
    let layout = pipeline.get_bind_group_layout(0);
    let uniform = gpu.params_with(
        "peak shape",
        &PeakShape {
            iterations: ITERATIONS,
            _pad: [0; 3],
        },
    );
    let sink = gpu.storage_buffer("peak sink", GROUPS as u64 * 64 * 16)?;
    let bind_group = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("fma_peak"),
        layout: &layout,
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: uniform.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: sink.as_entire_binding(),
            },
        ],
    });
    let seconds = time_dispatches(gpu, &pipeline, &bind_group, [GROUPS, 1, 1], 0.3)?;
    let flops = GROUPS as f64 * 64.0 * ITERATIONS as f64 * 8.0 * 4.0 * 4.0 * 2.0;
    Ok(flops / seconds / 1e9)
}

/// The process's peak resident memory (Linux: VmHWM), in bytes.
pub fn peak_host_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
