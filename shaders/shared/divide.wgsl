// Integer division without the `/` operator's cost on CPU adapters: x86 has no vector integer
// division, so lavapipe divides lane by lane; a float division is one vector instruction.

// n / d (d > 0). Exact: below 2^24 n is a whole f32, the quotient through f32 is off by at most
// one (Vulkan allows 2.5 ulp) and the remainder's sign corrects it; above, the plain operator.
fn quotient(n: u32, d: u32) -> u32 {
    if (n >= 16777216u) {
        return n / d;
    }
    var q = u32(f32(n) / f32(d));
    q = select(q, q - 1u, q * d > n);
    return select(q, q + 1u, (q + 1u) * d <= n);
}
