//! How far the host runs ahead of the GPU when a run can be stopped. Work once submitted cannot
//! be taken back, so a stop takes effect when the queued work is done: chunks of steps are sized
//! by the time they take (measured as they finish), not by a count, and only a few are queued at
//! once. On a fast adapter a chunk still holds `steps_per_submit` steps; on a slow one (a convnet
//! on a CPU adapter) a single step.

use std::collections::VecDeque;
use std::time::Duration;

use web_time::Instant;

use crate::error::{Error, Result};
use crate::gpu::Gpu;

/// The GPU time a chunk is sized to take.
const CHUNK_TIME: Duration = Duration::from_millis(200);

/// The GPU time queued at most, so that a stop waits for well under a second of work whatever
/// the model and adapter (unless one step alone takes longer).
const QUEUED_TIME: Duration = Duration::from_millis(600);

/// Chunks queued and not yet waited for, at most (fewer when a chunk takes longer than
/// `CHUNK_TIME`, and one until the first is measured).
pub(super) const CHUNKS_IN_FLIGHT: usize = 3;

/// The GPU time of one unit of work (a training step, an evaluation batch), as last measured.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Pace {
    seconds_per_item: Option<f64>,
}

impl Pace {
    /// Items in the next chunk: as many as take `CHUNK_TIME`, from 1 to `max`; one until the
    /// first chunk has been measured.
    pub(super) fn chunk(&self, max: usize) -> usize {
        match self.seconds_per_item {
            None => 1,
            Some(seconds) => {
                let fit = CHUNK_TIME.as_secs_f64() / seconds.max(1e-9);
                (fit as usize).clamp(1, max.max(1))
            }
        }
    }

    /// Chunks that may be queued at once: as many as `QUEUED_TIME` holds, from 1 to
    /// `CHUNKS_IN_FLIGHT`; one until the first chunk has been measured.
    pub(super) fn chunks_in_flight(&self) -> usize {
        match self.seconds_per_item {
            None => 1,
            Some(seconds) => {
                let chunk = seconds.max(CHUNK_TIME.as_secs_f64());
                // (Rounded up by a hair: 0.6 / 0.2 is 2.9999999999999996 in floating point.)
                let fit = QUEUED_TIME.as_secs_f64() / chunk + 1e-9;
                (fit as usize).clamp(1, CHUNKS_IN_FLIGHT)
            }
        }
    }
}

/// A chunk submitted and not yet waited for.
struct Submitted {
    index: wgpu::SubmissionIndex,
    items: usize,
    at: Instant,
}

/// The chunks in flight, oldest first, and when the last one waited for was done.
#[derive(Default)]
pub(super) struct InFlight {
    queue: VecDeque<Submitted>,
    last_done: Option<Instant>,
}

impl InFlight {
    pub(super) fn push(&mut self, index: wgpu::SubmissionIndex, items: usize) {
        self.queue.push_back(Submitted {
            index,
            items,
            at: Instant::now(),
        });
    }

    /// Whether `limit` chunks are queued.
    pub(super) fn holds(&self, limit: usize) -> bool {
        self.queue.len() >= limit
    }

    /// Waits for the oldest chunk and measures its pace: from when the GPU could start it (its
    /// submission, or the end of the chunk before) to now.
    pub(super) fn wait_oldest(&mut self, gpu: &Gpu, pace: &mut Pace) -> Result<()> {
        let Some(oldest) = self.queue.pop_front() else {
            return Ok(());
        };
        gpu.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(oldest.index),
                timeout: None,
            })
            .map_err(|e| Error::Readback(e.to_string()))?;
        let now = Instant::now();
        let began = self.last_done.map_or(oldest.at, |done| done.max(oldest.at));
        let seconds = now.duration_since(began).as_secs_f64();
        pace.seconds_per_item = Some(seconds / oldest.items.max(1) as f64);
        self.last_done = Some(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_fit_the_time_and_start_at_one_step() {
        assert_eq!(Pace::default().chunk(32), 1);
        let fast = Pace {
            seconds_per_item: Some(0.001),
        };
        assert_eq!(fast.chunk(32), 32);
        let slow = Pace {
            seconds_per_item: Some(0.05),
        };
        assert_eq!(slow.chunk(32), 4);
        let slower_than_a_chunk = Pace {
            seconds_per_item: Some(3.0),
        };
        assert_eq!(slower_than_a_chunk.chunk(32), 1);
        // Queued work stays under QUEUED_TIME: three chunks of 0.2 s, one of 3 s.
        assert_eq!(Pace::default().chunks_in_flight(), 1);
        assert_eq!(fast.chunks_in_flight(), 3);
        assert_eq!(slow.chunks_in_flight(), 3);
        let a_third_of_a_second = Pace {
            seconds_per_item: Some(0.3),
        };
        assert_eq!(a_third_of_a_second.chunks_in_flight(), 2);
        assert_eq!(slower_than_a_chunk.chunks_in_flight(), 1);
    }
}
