// The adapter's arithmetic peak: a register-only loop of 8 independent vec4 FMA chains, so the
// measured rate is limited by arithmetic alone (no memory traffic inside the loop).
//
//   FLOPs = invocations × iterations × 8 chains × 4 lanes × 2 (multiply + add)
//
// Bindings (group 0):
//   0 shape  storage, read        Shape below
//   1 sink   storage, read_write  vec4<f32> [invocations]; written so the loop is not optimised away
//
// Workgroup: 64 invocations. Dispatch grid: (groups, 1, 1).

struct Shape {
    iterations: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> shape: Shape;
@group(0) @binding(1) var<storage, read_write> sink: array<vec4<f32>>;

@compute @workgroup_size(64)
fn fma_peak(@builtin(global_invocation_id) gid: vec3<u32>) {
    let seed = f32(gid.x) * 1e-7;
    let a = vec4<f32>(0.9999, 0.9998, 0.9997, 0.9996);
    let b = vec4<f32>(1e-4 + seed);
    var c0 = vec4<f32>(seed);
    var c1 = c0 + 1.0;
    var c2 = c0 + 2.0;
    var c3 = c0 + 3.0;
    var c4 = c0 + 4.0;
    var c5 = c0 + 5.0;
    var c6 = c0 + 6.0;
    var c7 = c0 + 7.0;
    for (var i = 0u; i < shape.iterations; i++) {
        c0 = fma(c0, a, b);
        c1 = fma(c1, a, b);
        c2 = fma(c2, a, b);
        c3 = fma(c3, a, b);
        c4 = fma(c4, a, b);
        c5 = fma(c5, a, b);
        c6 = fma(c6, a, b);
        c7 = fma(c7, a, b);
    }
    sink[gid.x] = c0 + c1 + c2 + c3 + c4 + c5 + c6 + c7;
}
