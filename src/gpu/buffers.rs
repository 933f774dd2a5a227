//! Creating buffers within the device's limits, and reading results back.

use bytemuck::Pod;
use wgpu::util::DeviceExt;
use wgpu::{Buffer, BufferUsages};

use super::Gpu;
use crate::error::{Error, Result};

/// Bytes a storage binding must at least have (wgpu rejects empty bindings).
const MIN_BINDING_BYTES: u64 = 16;

impl Gpu {
    fn check_storage_size(&self, what: &str, bytes: u64) -> Result<()> {
        let limits = [
            (
                self.limits.max_storage_buffer_binding_size,
                "storage buffer binding (max_storage_buffer_binding_size)",
            ),
            (self.limits.max_buffer_size, "buffer (max_buffer_size)"),
        ];
        for (limit, limit_name) in limits {
            if bytes > limit {
                return Err(Error::BufferTooLarge {
                    what: what.to_string(),
                    bytes,
                    limit,
                    limit_name,
                });
            }
        }
        Ok(())
    }

    /// A zeroed storage buffer of `bytes` bytes (rounded up to a bindable size).
    pub fn storage_buffer(&self, what: &str, bytes: u64) -> Result<Buffer> {
        self.check_storage_size(what, bytes)?;
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(what),
            // Whole groups of four vec4: a vec4 view of the buffer reaches its last element,
            // and the optimizer (16 parameters per invocation) stays inside it.
            size: bytes.next_multiple_of(64).max(MIN_BINDING_BYTES),
            usage: BufferUsages::STORAGE | BufferUsages::COPY_SRC | BufferUsages::COPY_DST,
            mapped_at_creation: false,
        }))
    }

    /// A storage buffer holding `data` (padded with zeros to a bindable size).
    ///
    /// Large data goes up in slices, each flushed before the next, so the staging memory
    /// wgpu needs never exceeds one slice: uploading MNIST must not double the host's peak.
    pub fn storage_with<T: Pod>(&self, what: &str, data: &[T]) -> Result<Buffer> {
        const SLICE_BYTES: usize = 8 << 20;
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let buffer = self.storage_buffer(what, bytes.len() as u64)?;
        for (i, slice) in bytes.chunks(SLICE_BYTES).enumerate() {
            self.queue
                .write_buffer(&buffer, (i * SLICE_BYTES) as u64, slice);
            if bytes.len() > SLICE_BYTES {
                self.queue.submit([]);
                self.device
                    .poll(wgpu::PollType::wait_indefinitely())
                    .map_err(|e| Error::Readback(e.to_string()))?;
            }
        }
        Ok(buffer)
    }

    /// A kernel's parameter block (one of the structs in `uniforms`, or a layer kind's own), as a
    /// read-only storage buffer (why not a uniform buffer: see `kernel::Slot`).
    pub fn params_with<T: Pod>(&self, what: &str, value: &T) -> Buffer {
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(what),
                contents: bytemuck::bytes_of(value),
                usage: BufferUsages::STORAGE,
            })
    }

    /// Copies `count` values from the start of `buffer` back to the host, waiting for the GPU.
    /// For tests, checkpoints and exports: never inside a training epoch.
    pub fn read_back<T: Pod>(&self, buffer: &Buffer, count: usize) -> Result<Vec<T>> {
        wait_for(self.read_back_async(buffer, count))
    }

    /// `read_back` as a future: what a browser, which cannot block, awaits.
    pub async fn read_back_async<T: Pod>(&self, buffer: &Buffer, count: usize) -> Result<Vec<T>> {
        let bytes = (count * std::mem::size_of::<T>()) as u64;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("read back"),
            size: bytes.next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT).max(4),
            usage: BufferUsages::MAP_READ | BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, staging.size());
        self.queue.submit([encoder.finish()]);
        let mut values = self.map_and_read_async(&staging).await?;
        values.truncate(count);
        Ok(values)
    }

    /// Reads the first `bytes` of each buffer back with one copy submission and one wait.
    pub fn read_back_parts(&self, parts: &[(&Buffer, u64)]) -> Result<Vec<Vec<u8>>> {
        wait_for(self.read_back_parts_async(parts))
    }

    /// `read_back_parts` as a future.
    pub async fn read_back_parts_async(&self, parts: &[(&Buffer, u64)]) -> Result<Vec<Vec<u8>>> {
        let aligned = |bytes: u64| bytes.next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT);
        let total: u64 = parts.iter().map(|&(_, bytes)| aligned(bytes)).sum();
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("read back parts"),
            size: total.max(4),
            usage: BufferUsages::MAP_READ | BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self.device.create_command_encoder(&Default::default());
        let mut offset = 0;
        for &(buffer, bytes) in parts {
            if bytes > 0 {
                encoder.copy_buffer_to_buffer(buffer, 0, &staging, offset, aligned(bytes));
            }
            offset += aligned(bytes);
        }
        self.queue.submit([encoder.finish()]);
        let all: Vec<u8> = self.map_and_read_async(&staging).await?;
        let mut offset = 0;
        Ok(parts
            .iter()
            .map(|&(_, bytes)| {
                let part = all[offset as usize..(offset + bytes) as usize].to_vec();
                offset += aligned(bytes);
                part
            })
            .collect())
    }

    /// Maps a MAP_READ buffer whose copy has been submitted, waits, and returns its contents.
    pub fn map_and_read<T: Pod>(&self, staging: &Buffer) -> Result<Vec<T>> {
        wait_for(self.map_and_read_async(staging))
    }

    /// `map_and_read` as a future. Natively the device is polled until the copy is done, so
    /// the mapping is ready when awaited; in a browser the poll returns at once and the
    /// browser resolves the mapping when the GPU is done.
    pub async fn map_and_read_async<T: Pod>(&self, staging: &Buffer) -> Result<Vec<T>> {
        let failed = |e: &dyn std::fmt::Display| Error::Readback(e.to_string());
        let (sender, receiver) = futures_channel::oneshot::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |result| {
            let _ = sender.send(result);
        });
        (self.device)
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| failed(&e))?;
        receiver
            .await
            .map_err(|e| failed(&e))?
            .map_err(|e| failed(&e))?;
        let values = {
            let view = staging.get_mapped_range(..).map_err(|e| failed(&e))?;
            bytemuck::pod_collect_to_vec(&view)
        };
        staging.unmap();
        Ok(values)
    }
}

/// Waits for a readback natively. A browser's page may not block (its GPU work is done between
/// the page's turns), so there the blocking forms are an error and the page awaits the
/// `_async` forms instead.
pub(crate) fn wait_for<T>(readback: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    #[cfg(not(target_arch = "wasm32"))]
    return pollster::block_on(readback);
    #[cfg(target_arch = "wasm32")]
    {
        drop(readback);
        Err(Error::Readback(
            "a web page cannot block on the GPU: await the asynchronous form".into(),
        ))
    }
}

/// Workgroups for `invocations` invocations in groups of `workgroup`, folded into (x, y) when
/// more than `max_per_dimension` are needed (the kernels flatten the index back).
pub fn grid_1d(invocations: usize, workgroup: u32, max_per_dimension: u32) -> [u32; 3] {
    let groups = (invocations as u64).div_ceil(workgroup as u64).max(1);
    if groups <= max_per_dimension as u64 {
        [groups as u32, 1, 1]
    } else {
        [
            max_per_dimension,
            groups.div_ceil(max_per_dimension as u64) as u32,
            1,
        ]
    }
}
