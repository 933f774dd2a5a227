//! Running a trainer's kernels for measurement and checks rather than training: benchmark
//! steps, a per-kernel profile of a step, and the first batch's gradients.

use super::{GpuWork, StepParams, Trainer, program_for};
use crate::error::{Error, Result};
use crate::gpu::program::{Command, Recorder};

/// The profile's name for the copies of buffers into their texture mirrors.
pub const MIRROR_REFRESH: &str = "texture mirror refresh";

impl Trainer<'_> {
    /// Trains `count` full-batch steps (cycling through the current epoch order, the first
    /// batches again and again) and waits for them: for benchmarks, not for training runs.
    pub fn run_benchmark_steps(&mut self, count: usize) -> Result<GpuWork> {
        let batch = self.config.batch_size.min(self.train.samples);
        let full_batches = (self.train.samples / batch).max(1);
        let steps: Vec<StepParams> = (0..count)
            .map(|i| {
                let t = self.steps_done + i as u64 + 1;
                self.training_step(t, (i % full_batches) * batch, batch)
            })
            .collect();
        let mut work = GpuWork::default();
        for epoch_long in steps.chunks(self.train_steps()) {
            self.write_schedule(0, 0, epoch_long);
            for chunk in epoch_long.chunks(self.config.steps_per_submit) {
                let mut encoder = self.gpu.device.create_command_encoder(&Default::default());
                self.record_steps(&mut Recorder::new(&mut encoder), chunk, &mut work);
                self.gpu.queue.submit([encoder.finish()]);
                work.submits += 1;
            }
            self.steps_done += epoch_long.len() as u64;
        }
        self.gpu
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Readback(e.to_string()))?;
        work.readbacks += 1;
        Ok(work)
    }

    /// Where a training step's time goes: the seconds of each of its dispatches (and texture
    /// mirror refreshes) run alone (repeated until the timing is stable), summed per kernel,
    /// largest first. Repeating the dispatches scrambles the training state, so this consumes
    /// the trainer.
    pub fn profile_step(self) -> Result<Vec<(&'static str, f64)>> {
        let mut per_kernel: Vec<(&'static str, f64)> = Vec::new();
        let step = [&self.train_full, &self.update, &self.advance];
        for command in step.iter().flat_map(|program| &program.commands) {
            let (name, seconds) = match command {
                Command::Dispatch(dispatch) => (
                    dispatch.kernel.name,
                    crate::bench::time_dispatches(
                        self.gpu,
                        &dispatch.kernel.pipeline,
                        &dispatch.bind_group,
                        dispatch.grid,
                        0.02,
                    )?,
                ),
                Command::Refresh(mirror, bytes) => (
                    MIRROR_REFRESH,
                    crate::bench::time_mirror_refresh(self.gpu, (mirror, *bytes), 0.02)?,
                ),
            };
            match per_kernel.iter_mut().find(|(n, _)| *n == name) {
                Some((_, total)) => *total += seconds,
                None => per_kernel.push((name, seconds)),
            }
        }
        per_kernel.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(per_kernel)
    }

    /// Gradients of the mean loss over the first `batch_size` samples in file order, at the
    /// current parameters, computed by the training kernels without updating the parameters
    /// (BatchNorm's running statistics do take the batch's, as a training step's forward pass
    /// does).
    pub fn first_batch_gradients(&self) -> Result<Vec<f32>> {
        let rows = self.config.batch_size.min(self.train.samples);
        let identity: Vec<u32> = (0..self.train.samples as u32).collect();
        self.gpu
            .queue
            .write_buffer(&self.train.order, 0, bytemuck::cast_slice(&identity));
        self.write_schedule(0, 0, &[StepParams::rows_at(0, rows)]);
        let mut encoder = self.gpu.device.create_command_encoder(&Default::default());
        program_for(
            rows,
            self.config.batch_size,
            &self.train_full,
            &self.train_tail,
        )
        .record(&mut Recorder::new(&mut encoder));
        self.gpu.queue.submit([encoder.finish()]);
        // The state has no gradient: zeros, as the reference lays them out.
        let mut grads = self.gpu.read_back(&self.grads, self.layout.trained)?;
        grads.resize(self.layout.total, 0.0);
        Ok(grads)
    }
}
