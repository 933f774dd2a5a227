// A 32-bit integer hash (Wellons' "lowbias32"), the counter-based generator of dropout's masks
// (dropout.wgsl) and of the augmentation's draws (gather.wgsl). Host twin: src/rng.rs `mix`.

fn mix(value: u32) -> u32 {
    var x = value;
    x ^= x >> 16u;
    x *= 0x7feb352du;
    x ^= x >> 15u;
    x *= 0x846ca68bu;
    return x ^ (x >> 16u);
}
