// Invocation numbering of 1-D kernels whose grid the host folds into (x, y) when it needs more
// than the device's workgroups per dimension (src/gpu/buffers.rs `grid_1d`).

// The invocation's index in the whole grid, for workgroups of `workgroup` invocations.
fn flat_invocation(gid: vec3<u32>, groups: vec3<u32>, workgroup: u32) -> u32 {
    return gid.y * groups.x * workgroup + gid.x;
}
