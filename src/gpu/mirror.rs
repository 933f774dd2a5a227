//! Texture mirrors: a read-only `rgba32float` copy of a storage buffer, for the kernels that load
//! their operands as textures (`shaders/matmul_vec4.wgsl`, and the `mirrors` variants of the
//! BatchNorm, element-wise and max-pool kernels).
//!
//! Why: on lavapipe a storage-buffer load is done lane by lane, with a branch per lane and
//! component, while a texel fetch goes through the sampler code, which is SIMD; the register
//! matmul kernels are bound by their loads. The copy into the texture is a memcpy there.
//!
//! Layout: vec4 `i` of the buffer (floats 4i..4i+3) is the texel at
//! (i % MIRROR_ROW_TEXELS, i / MIRROR_ROW_TEXELS), so the kernels address a mirror with the same
//! offsets and strides as the buffer.

use wgpu::{Buffer, CommandEncoder, Texture, TextureView};

use super::Gpu;

/// Texels per texture row; `MIRROR_ROW_TEXELS` in shaders/shared/mirror.wgsl.
pub const MIRROR_ROW_TEXELS: u32 = 1024;

const TEXEL_BYTES: u64 = 16;
const ROW_BYTES: u64 = MIRROR_ROW_TEXELS as u64 * TEXEL_BYTES;

/// The height of a mirror that needs `rows` rows: the least height that holds them and is not a
/// power of two. Why: llvmpipe compiles a kernel again for each combination of its textures'
/// static state, which includes whether each dimension is a power of two; every mirror is 1024
/// texels wide, so with heights off the powers of two all mirrors share one compiled variant of
/// each kernel. Measured from a cold shader cache: the forward and weight-gradient kernels were
/// compiled twice each (the 8-, 4- and 1-row mirrors of the smaller layers against the 25- and
/// 58-row ones), about 0.4 s of the first step.
fn shared_variant_height(rows: u64) -> u64 {
    (rows.max(3)..)
        .find(|height| !height.is_power_of_two())
        .expect("every power of two above 2 is followed by a number that is not one")
}

/// A texture holding a copy of a storage buffer's contents, refreshed by `record_refresh_of`.
#[derive(Debug, Clone)]
pub struct TextureMirror {
    buffer: Buffer,
    texture: Texture,
    pub view: TextureView,
}

impl TextureMirror {
    /// A mirror of `buffer` (whose size is a multiple of 16 bytes, as `Gpu::storage_buffer`
    /// makes them), or `None` where the device's textures are too small to hold it.
    pub fn new(gpu: &Gpu, what: &str, buffer: &Buffer) -> Option<Self> {
        let rows = Self::rows_for(gpu, buffer.size())?;
        let texture = gpu.device.create_texture(&wgpu::TextureDescriptor {
            label: Some(what),
            size: wgpu::Extent3d {
                width: MIRROR_ROW_TEXELS,
                height: rows as u32,
                depth_or_array_layers: 1,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: wgpu::TextureFormat::Rgba32Float,
            usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
            view_formats: &[],
        });
        let view = texture.create_view(&Default::default());
        Some(TextureMirror {
            buffer: buffer.clone(),
            texture,
            view,
        })
    }

    /// Whether a buffer of `bytes` has a mirror on this device (`new` makes one).
    pub fn fits(gpu: &Gpu, bytes: u64) -> bool {
        Self::rows_for(gpu, bytes.next_multiple_of(16)).is_some()
    }

    /// The texture rows of a mirror of `bytes`, if the device's textures can hold it.
    fn rows_for(gpu: &Gpu, bytes: u64) -> Option<u64> {
        let needed = bytes.div_ceil(ROW_BYTES);
        let limit = gpu.limits.max_texture_dimension_2d as u64;
        // Where the shared height would not fit, the exact one (compiled separately) may.
        let rows = Some(shared_variant_height(needed))
            .filter(|&rows| rows <= limit)
            .unwrap_or(needed);
        (rows <= limit && MIRROR_ROW_TEXELS <= gpu.limits.max_texture_dimension_2d).then_some(rows)
    }

    /// The buffer this mirrors.
    pub fn buffer(&self) -> &Buffer {
        &self.buffer
    }

    /// Copies the whole buffer into the texture now (a submission of its own), for a kernel's
    /// run on host data.
    pub fn refresh_now(&self, gpu: &Gpu) {
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        self.record_refresh_of(&mut encoder, u64::MAX);
        gpu.queue.submit([encoder.finish()]);
    }

    /// Records the copy of the buffer's first `bytes` (at most the buffer, rounded up to whole
    /// texels) into the texture: its whole rows, then the partial last row. Why not always the
    /// whole buffer: tensors are sized for the largest batch (an evaluation's, up to 8 times a
    /// training step's), and a step's products read only its rows; the rest of the texture keeps
    /// older values that no product reads.
    pub fn record_refresh_of(&self, encoder: &mut CommandEncoder, bytes: u64) {
        let bytes = bytes.min(self.buffer.size()).next_multiple_of(TEXEL_BYTES);
        let full_rows = (bytes / ROW_BYTES) as u32;
        let tail_texels = ((bytes % ROW_BYTES) / TEXEL_BYTES) as u32;
        let mut copy = |first_row: u32, width: u32, height: u32| {
            encoder.copy_buffer_to_texture(
                wgpu::TexelCopyBufferInfo {
                    buffer: &self.buffer,
                    layout: wgpu::TexelCopyBufferLayout {
                        offset: first_row as u64 * ROW_BYTES,
                        bytes_per_row: Some(ROW_BYTES as u32),
                        rows_per_image: None,
                    },
                },
                wgpu::TexelCopyTextureInfo {
                    texture: &self.texture,
                    mip_level: 0,
                    origin: wgpu::Origin3d {
                        x: 0,
                        y: first_row,
                        z: 0,
                    },
                    aspect: wgpu::TextureAspect::All,
                },
                wgpu::Extent3d {
                    width,
                    height,
                    depth_or_array_layers: 1,
                },
            );
        };
        if full_rows > 0 {
            copy(0, MIRROR_ROW_TEXELS, full_rows);
        }
        if tail_texels > 0 {
            copy(full_rows, tail_texels, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::shared_variant_height;

    #[test]
    fn mirror_heights_are_never_powers_of_two() {
        for rows in 1..=4096u64 {
            let height = shared_variant_height(rows);
            assert!(
                height >= rows && height <= rows.max(2) + 1,
                "{rows} rows -> {height}"
            );
            assert!(!height.is_power_of_two(), "{rows} rows -> {height}");
        }
    }
}
