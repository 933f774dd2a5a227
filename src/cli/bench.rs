//! `shadertrain bench`: times the recipe on one adapter and reports against the adapter's peak.

use std::time::Instant;

use serde::Serialize;
use shadertrain::Result;
use shadertrain::bench::{
    MatmulShape, fma_peak_gflops, measure_matmul, peak_host_memory_bytes, step_flops, step_matmuls,
};
use shadertrain::data::Dataset;
use shadertrain::gpu::{AdapterRequest, Gpu, Kernels};
use shadertrain::model::ModelSpec;
use shadertrain::train::{TrainConfig, Trainer};

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub adapter: String,
    pub batch_size: usize,
    pub open_adapter_s: f64,
    pub build_pipelines_s: f64,
    /// From process start (data loading, adapter, pipelines and upload included).
    pub first_step_done_s: f64,
    pub ms_per_step: f64,
    pub samples_per_s: f64,
    /// One whole epoch: training and test evaluation.
    pub epoch_s: f64,
    pub step_gflops: f64,
    pub fma_peak_gflops: f64,
    pub step_fraction_of_peak: f64,
    pub matmuls: Vec<MatmulShape>,
    /// Milliseconds of each kernel in a step, its dispatches timed one by one.
    pub step_ms_by_kernel: Vec<KernelTime>,
    pub submits_per_epoch: usize,
    pub dispatches_per_epoch: usize,
    pub readbacks_per_epoch: usize,
    pub peak_host_memory_mb: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct KernelTime {
    pub kernel: &'static str,
    pub ms: f64,
}

/// Windows of `steps` steps (and peak measurements) whose best is reported.
const TIMING_WINDOWS: usize = 3;

pub fn run(
    request: &AdapterRequest,
    spec: &ModelSpec,
    config: &TrainConfig,
    train: Dataset,
    test: Dataset,
    steps: usize,
    process_start: Instant,
) -> Result<BenchReport> {
    let started = Instant::now();
    let gpu = Gpu::open(request)?;
    let open_adapter_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let kernels = Kernels::new(&gpu);
    // Pipeline creation may be lazy on some drivers: wait so the figure includes compilation.
    gpu.device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| shadertrain::Error::Readback(e.to_string()))?;
    let build_pipelines_s = started.elapsed().as_secs_f64();

    let mut trainer = Trainer::new(&gpu, &kernels, spec.clone(), config.clone(), &train, &test)?;
    let train_samples = train.samples();
    // As `train` does: the data lives on the GPU now.
    drop((train, test));
    trainer.run_benchmark_steps(1)?;
    let first_step_done_s = process_start.elapsed().as_secs_f64();

    trainer.run_benchmark_steps(32)?;
    // The step rate and the peak it is compared with are each the best of a few windows, taken
    // in turn: on a shared machine (and on a CPU adapter above all) other work slows single
    // windows by tens of per cent, and it must not slow one figure and not the other.
    let mut step_s = f64::INFINITY;
    let mut fma_peak = 0.0f64;
    for _ in 0..TIMING_WINDOWS {
        let started = Instant::now();
        trainer.run_benchmark_steps(steps.max(1))?;
        step_s = step_s.min(started.elapsed().as_secs_f64() / steps.max(1) as f64);
        fma_peak = fma_peak.max(fma_peak_gflops(&gpu)?);
    }
    let epoch = trainer.run_epoch()?;

    let rows = config.batch_size.min(train_samples);
    let step_gflops = step_flops(spec, rows) / step_s / 1e9;
    let matmuls = step_matmuls(&kernels, spec, rows)
        .into_iter()
        .map(|product| measure_matmul(&gpu, &kernels, &product))
        .collect::<Result<Vec<_>>>()?;
    let step_ms_by_kernel = trainer
        .profile_step()?
        .into_iter()
        .map(|(kernel, seconds)| KernelTime {
            kernel,
            ms: seconds * 1e3,
        })
        .collect();
    Ok(BenchReport {
        adapter: gpu.adapter_name(),
        batch_size: rows,
        open_adapter_s,
        build_pipelines_s,
        first_step_done_s,
        ms_per_step: step_s * 1e3,
        samples_per_s: rows as f64 / step_s,
        epoch_s: epoch.seconds,
        step_gflops,
        fma_peak_gflops: fma_peak,
        step_fraction_of_peak: step_gflops / fma_peak,
        matmuls,
        step_ms_by_kernel,
        submits_per_epoch: epoch.work.submits,
        dispatches_per_epoch: epoch.work.dispatches,
        readbacks_per_epoch: epoch.work.readbacks,
        peak_host_memory_mb: peak_host_memory_bytes().map(|b| b as f64 / (1 << 20) as f64),
    })
}

pub fn print(r: &BenchReport) {
    let pct = |g: f64| 100.0 * g / r.fma_peak_gflops;
    outln!("adapter: {}", r.adapter);
    outln!("open adapter           {:>9.3} s", r.open_adapter_s);
    outln!("build pipelines        {:>9.3} s", r.build_pipelines_s);
    outln!(
        "first step done        {:>9.3} s after process start",
        r.first_step_done_s
    );
    outln!(
        "steady state           {:>9.3} ms/step, {:.0} samples/s (batch {}; best of {TIMING_WINDOWS})",
        r.ms_per_step,
        r.samples_per_s,
        r.batch_size
    );
    outln!("epoch (train + test)   {:>9.2} s", r.epoch_s);
    outln!(
        "vec4 FMA peak          {:>9.2} GFLOP/s (best of {TIMING_WINDOWS})",
        r.fma_peak_gflops
    );
    outln!(
        "whole step             {:>9.2} GFLOP/s  {:>5.1} % of peak",
        r.step_gflops,
        pct(r.step_gflops)
    );
    for m in &r.matmuls {
        // The form the step uses: the product on its variant, or the direct or image kernel.
        let form = match m.form {
            "direct" | "image" => m.form.to_string(),
            _ => format!("{:?}", m.variant).to_lowercase(),
        };
        let direct = (m.direct_gflops).map_or(String::new(), |g| format!(", direct {g:.2}"));
        let image = (m.image_gflops).map_or(String::new(), |g| format!(", image {g:.2}"));
        let direct = direct + &image;
        outln!(
            "  {:<22} {:>9.2} GFLOP/s  {:>5.1} % of peak   {:<9} (tiled {:.2}, registers {:.2}{direct}; M {} N {} K {})",
            m.name,
            m.gflops,
            pct(m.gflops),
            form,
            m.tiled_gflops,
            m.registers_gflops,
            m.m,
            m.n,
            m.k
        );
    }
    let profiled: f64 = r.step_ms_by_kernel.iter().map(|k| k.ms).sum();
    outln!("step by kernel         {profiled:>9.3} ms in all, each dispatch timed alone");
    for k in &r.step_ms_by_kernel {
        outln!(
            "  {:<30} {:>7.3} ms  {:>5.1} %",
            k.kernel,
            k.ms,
            100.0 * k.ms / profiled
        );
    }
    outln!(
        "per epoch              {} submits, {} dispatches, {} readbacks",
        r.submits_per_epoch,
        r.dispatches_per_epoch,
        r.readbacks_per_epoch
    );
    match r.peak_host_memory_mb {
        Some(mb) => outln!("peak host memory       {mb:>9.1} MB"),
        None => outln!("peak host memory       not available on this system"),
    }
}
