//! A tiny seeded random number generator (SplitMix64), so that a seed fixes weight
//! initialisation, the validation split and batch order bit for bit on every platform.
//!
//! candle's CPU backend cannot be seeded (`Device::set_seed` fails on the CPU), so the
//! trainer draws every random number it needs from here instead.

/// SplitMix64 (Steele, Lea and Flood 2014): 64 bits of state, passes BigCrush, and is
/// small enough to keep in the crate rather than pull in `rand`.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64 {
    state: u64,
}

/// The increment of SplitMix64, the golden ratio in 64-bit fixed point.
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// Independent uses of one seed, so that changing one (say, the batch order) leaves the
/// others (the initial weights) as they were.
#[derive(Debug, Clone, Copy)]
#[repr(u64)]
pub(crate) enum Stream {
    Split = 1,
    Init = 2,
    Batches = 3,
    Dropout = 4,
}

impl SplitMix64 {
    /// A generator started at `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The generator for one use of `seed`.
    pub(crate) fn stream(seed: u64, stream: Stream) -> Self {
        let mut mixer = Self::new(seed ^ (stream as u64).wrapping_mul(GOLDEN_GAMMA));
        Self::new(mixer.next_u64())
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 24 random bits, exactly representable as `f32`.
    pub(crate) fn next_unit_f32(&mut self) -> f32 {
        #[allow(clippy::cast_precision_loss)] // 24 bits fit an f32 mantissa exactly.
        let bits = (self.next_u64() >> 40) as f32;
        bits / (1u32 << 24) as f32
    }

    /// Uniform in `[lo, hi)`.
    pub(crate) fn uniform_f32(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.next_unit_f32()
    }

    /// Uniform in `0..n` (`n > 0`), without modulo bias (Lemire's multiply-shift with rejection).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            #[allow(clippy::cast_possible_truncation)] // the low 64 bits, on purpose
            let low = m as u64;
            if low >= threshold {
                #[allow(clippy::cast_possible_truncation)] // the high 64 bits are below n
                return (m >> 64) as u64;
            }
        }
    }

    /// Fisher-Yates shuffle in place.
    pub(crate) fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            #[allow(clippy::cast_possible_truncation)] // below(i + 1) <= i, a valid usize
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// The order of `items` in one epoch: a shuffle determined by the seed and the epoch alone,
/// so that a run resumed at any epoch sees the batches the uninterrupted run would have.
pub(crate) fn epoch_order<T: Clone>(items: &[T], seed: u64, epoch: u32) -> Vec<T> {
    let mut order = items.to_vec();
    SplitMix64::new(seed ^ u64::from(epoch).wrapping_mul(0xD1B5_4A32_D192_ED03)).shuffle(&mut order);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_splitmix64_sequence() {
        // First outputs of the reference C implementation for seed 1234567.
        let mut rng = SplitMix64::new(1_234_567);
        assert_eq!(rng.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(rng.next_u64(), 3_203_168_211_198_807_973);
    }

    #[test]
    fn streams_differ_and_repeat() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = SplitMix64::stream(42, Stream::Init);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map({
                let mut r = SplitMix64::stream(42, Stream::Init);
                move |_| r.next_u64()
            })
            .collect();
        let mut other = SplitMix64::stream(42, Stream::Batches);
        assert_eq!(a, b);
        assert_ne!(a[0], other.next_u64());
    }

    #[test]
    fn uniform_and_below_stay_in_range_and_shuffle_permutes() {
        let mut rng = SplitMix64::new(7);
        for _ in 0..10_000 {
            let u = rng.uniform_f32(-0.5, 0.5);
            assert!((-0.5..0.5).contains(&u));
            assert!(rng.below(3) < 3);
        }
        let mut v: Vec<u32> = (0..100).collect();
        rng.shuffle(&mut v);
        assert_ne!(v, (0..100).collect::<Vec<_>>());
        v.sort_unstable();
        assert_eq!(v, (0..100).collect::<Vec<_>>());
    }
}
