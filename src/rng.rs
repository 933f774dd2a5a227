//! The seeded random source for weight initialisation and shuffling, and the counter-based hash
//! that draws dropout's masks from (seed, step, element), shared with dropout.wgsl.
//!
//! SplitMix64 (Steele, Lea & Flood 2014): tiny, fast, statistically sound for this use, and,
//! being ours, its stream for a given seed never changes with a dependency upgrade, so a seed
//! reproduces a run across versions.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng { state: seed }
    }

    /// The whole state: `Rng::new(rng.state())` continues the same stream (for checkpoints).
    pub fn state(&self) -> u64 {
        self.state
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), with 24 bits of precision (every f32 step in that range is reachable).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Uniform in [low, high).
    pub fn uniform(&mut self, low: f32, high: f32) -> f32 {
        low + (high - low) * self.next_f32()
    }

    /// Uniform in 0..bound (Lemire's multiply-shift; the bias is below 2^-32 for any bound used here).
    pub fn below(&mut self, bound: usize) -> usize {
        ((self.next_u64() as u128 * bound as u128) >> 64) as usize
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// lowbias32 (Chris Wellons' integer hash): dropout.wgsl's `mix`.
pub fn mix(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

/// The key of dropout layer `layer`'s masks in a run with `seed` (dropout.wgsl `Shape.layer_key`).
pub fn dropout_layer_key(seed: u64, layer: usize) -> u32 {
    mix(layer as u32 ^ mix(seed as u32 ^ mix((seed >> 32) as u32)))
}

/// Whether dropout keeps element `element` of the batch at training step `step`: a hash of
/// (layer key, step, element) at least `threshold` (= rate · 2³², `dropout_threshold`).
pub fn dropout_keeps(layer_key: u32, step: u32, element: u32, threshold: u32) -> bool {
    mix(element ^ mix(step ^ layer_key)) >= threshold
}

/// The hash threshold below which dropout at `rate` drops a value.
pub fn dropout_threshold(rate: f32) -> u32 {
    (rate as f64 * 4_294_967_296.0).round().min(u32::MAX as f64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_shuffle_is_a_permutation() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        assert_eq!(
            (0..5).map(|_| a.next_u64()).collect::<Vec<_>>(),
            (0..5).map(|_| b.next_u64()).collect::<Vec<_>>()
        );
        let mut order: Vec<u32> = (0..1000).collect();
        a.shuffle(&mut order);
        assert_ne!(order, (0..1000).collect::<Vec<_>>());
        order.sort();
        assert_eq!(order, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn uniform_stays_in_range_and_covers_it() {
        let mut rng = Rng::new(1);
        let xs: Vec<f32> = (0..10_000).map(|_| rng.uniform(-2.0, 3.0)).collect();
        assert!(xs.iter().all(|&x| (-2.0..3.0).contains(&x)));
        let mean = xs.iter().sum::<f32>() / xs.len() as f32;
        assert!((mean - 0.5).abs() < 0.1, "mean {mean}");
    }
}
