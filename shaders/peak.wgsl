// The adapter's arithmetic peak: a register-only loop of 8 independent vec4 FMA chains, each
// advanced four steps per iteration, so the measured rate is limited by arithmetic alone (no
// memory traffic inside the loop, and the loop's own bookkeeping amortised over 32 vec4 FMAs).
// Why four steps: on lavapipe a loop iteration costs about as much as 10 vec4 FMAs (the
// condition is evaluated for every SIMD lane), so fewer FMAs a body measure the loop, not the
// arithmetic (figures in docs/lavapipe.md).
//
//   FLOPs = invocations × iterations × 8 chains × 4 steps × 4 lanes × 2 (multiply + add)
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

// Four dependent steps of one chain.
fn four_steps(c: vec4<f32>, a: vec4<f32>, b: vec4<f32>) -> vec4<f32> {
    return fma(fma(fma(fma(c, a, b), a, b), a, b), a, b);
}

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
    let iterations = shape.iterations;
    for (var i = 0u; i < iterations; i++) {
        c0 = four_steps(c0, a, b);
        c1 = four_steps(c1, a, b);
        c2 = four_steps(c2, a, b);
        c3 = four_steps(c3, a, b);
        c4 = four_steps(c4, a, b);
        c5 = four_steps(c5, a, b);
        c6 = four_steps(c6, a, b);
        c7 = four_steps(c7, a, b);
    }
    sink[gid.x] = c0 + c1 + c2 + c3 + c4 + c5 + c6 + c7;
}
