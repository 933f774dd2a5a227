//! Running metrics while an epoch trains: each chunk of steps also sums the epoch's per-sample
//! metrics so far, copied into one of a ring of staging buffers; the host maps a chunk's copy
//! while later chunks are already queued, so the GPU never waits for the host.

use std::sync::mpsc::Receiver;

use wgpu::Buffer;

use super::builder::ProgramBuilder;
use super::{DeviceSplit, EpochInProgress, EpochProgress, Trainer};
use crate::error::{Error, Result};
use crate::gpu::program::{Program, Recorder};
use crate::gpu::uniforms::MetricsShape;

/// Staging buffers for running-metric reads in flight: one per chunk of steps that may be queued
/// ahead of the chunk the host waits for.
pub(super) const PROGRESS_READS_IN_FLIGHT: usize = super::pacing::CHUNKS_IN_FLIGHT;

/// What reading the running metrics needs: the reduction over the epoch's samples so far, and
/// a ring of staging buffers so that reads of several chunks can be in flight.
pub(super) struct ProgressReads<'k> {
    /// The reduction's count: samples trained so far this epoch, written before each chunk.
    pub(super) shape: Buffer,
    pub(super) totals: Buffer,
    pub(super) sum: Program<'k>,
    pub(super) staging: Vec<Buffer>,
}

/// A running-metric read submitted with a chunk of steps, not yet waited for.
pub(super) struct PendingRead {
    pub(super) staging: usize,
    pub(super) submission: wgpu::SubmissionIndex,
    pub(super) mapped: Receiver<std::result::Result<(), wgpu::BufferAsyncError>>,
    pub(super) steps_done: usize,
    pub(super) samples: usize,
}

impl<'k> ProgressReads<'k> {
    pub(super) fn new(builder: &ProgramBuilder<'_, 'k>, train: &DeviceSplit) -> Result<Self> {
        let gpu = builder.context.gpu;
        let shape = gpu.storage_with(
            "progress metrics shape",
            &[MetricsShape {
                count: 0,
                slot: 0,
                _pad: [0; 2],
            }],
        )?;
        let totals = gpu.storage_buffer("progress totals", 16)?;
        Ok(ProgressReads {
            sum: builder.sum_metrics(train, &shape, &totals),
            shape,
            totals,
            staging: (0..PROGRESS_READS_IN_FLIGHT)
                .map(|_| {
                    gpu.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("progress staging"),
                        size: 8,
                        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    })
                })
                .collect(),
        })
    }
}

impl Trainer<'_> {
    /// Waits for the chunk of `read` (later chunks stay queued), and reports its running metrics.
    pub(super) fn finish_progress_read(
        &self,
        read: PendingRead,
        epoch: &mut EpochInProgress,
        report: &mut dyn FnMut(EpochProgress),
    ) -> Result<()> {
        let failed = |e: String| Error::Readback(e);
        self.gpu
            .device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(read.submission),
                timeout: None,
            })
            .map_err(|e| failed(e.to_string()))?;
        read.mapped
            .recv()
            .map_err(|e| failed(e.to_string()))?
            .map_err(|e| failed(e.to_string()))?;
        let staging = &self.progress.staging[read.staging];
        let totals: Vec<u32> = {
            let view = staging
                .get_mapped_range(..)
                .map_err(|e| failed(e.to_string()))?;
            bytemuck::pod_collect_to_vec(&view)
        };
        staging.unmap();
        epoch.work.progress_reads += 1;
        report(self.progress_of(epoch, read.steps_done, read.samples, &totals));
        Ok(())
    }

    /// The running metrics of the epoch under way over the steps taken so far, as a future:
    /// how a web page, which may not block, follows training between its chunks of steps.
    pub async fn running_metrics_async(&mut self) -> Result<EpochProgress> {
        let Some(epoch) = self.epoch.as_ref() else {
            return Err(Error::Config("no epoch is under way".into()));
        };
        let (steps_done, samples) = (epoch.next, epoch.samples_in(epoch.next));
        let shape = MetricsShape {
            count: samples as u32,
            slot: 0,
            _pad: [0; 2],
        };
        let queue = &self.gpu.queue;
        queue.write_buffer(&self.progress.shape, 0, bytemuck::bytes_of(&shape));
        let staging = &self.progress.staging[0];
        let mut encoder = self.gpu.device.create_command_encoder(&Default::default());
        let dispatches = self.progress.sum.record(&mut Recorder::new(&mut encoder));
        encoder.copy_buffer_to_buffer(&self.progress.totals, 0, staging, 0, 8);
        queue.submit([encoder.finish()]);
        let totals: Vec<u32> = self.gpu.map_and_read_async(staging).await?;
        let epoch = self.epoch.as_mut().expect("the epoch under way");
        epoch.work.dispatches += dispatches;
        epoch.work.submits += 1;
        epoch.work.progress_reads += 1;
        let epoch = self.epoch.as_ref().expect("the epoch under way");
        Ok(self.progress_of(epoch, steps_done, samples, &totals))
    }

    /// The running metrics read back as `totals` (loss sum, correct count) over the first
    /// `samples` samples of `epoch`, `steps_done` steps in.
    fn progress_of(
        &self,
        epoch: &EpochInProgress,
        steps_done: usize,
        samples: usize,
        totals: &[u32],
    ) -> EpochProgress {
        let samples = samples.max(1) as f64;
        EpochProgress {
            epoch: self.epochs_done + 1,
            steps_done,
            steps: epoch.steps.len(),
            running_loss: f32::from_bits(totals[0]) as f64 / samples,
            running_accuracy: totals[1] as f64 / samples,
        }
    }
}
