// Reading a texture mirror of a storage buffer (src/gpu/mirror.rs): an rgba32float texture whose
// texel (i % MIRROR_ROW_TEXELS, i / MIRROR_ROW_TEXELS) holds the buffer's vec4 i (floats 4 i ..
// 4 i + 3), so a kernel addresses the mirror with the buffer's own offsets and strides.

// Texels per row of a mirror (MIRROR_ROW_TEXELS in src/gpu/mirror.rs).
const MIRROR_ROW_TEXELS: u32 = 1024u;

// vec4 i of a mirrored buffer.
fn mirrored(texture: texture_2d<f32>, i: u32) -> vec4<f32> {
    return textureLoad(texture, vec2<u32>(i % MIRROR_ROW_TEXELS, i / MIRROR_ROW_TEXELS), 0);
}
