//! The page order of `vmm bench fault`'s random case, computed the same way
//! by the guest task (`faultbench`) and by the VMM's userfaultfd peer, so
//! both take their faults in exactly the same order.

/// xorshift64* (Vigna): small, fast and good enough to scatter pages; a
/// zero state would stay zero, so the seed is mixed away from it.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform enough in [0, n) for n far below 2^32 (the multiply-shift
    /// range reduction; its bias is below n / 2^64).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

/// Fills `order` with a permutation of 0..order.len() drawn from `seed`
/// (Fisher-Yates).
pub fn random_order(seed: u64, order: &mut [u32]) {
    for (i, o) in order.iter_mut().enumerate() {
        *o = i as u32;
    }
    let mut rng = Rng::new(seed);
    for i in (1..order.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::random_order;

    #[test]
    fn a_permutation_that_depends_on_the_seed() {
        let mut a = [0u32; 1000];
        random_order(1, &mut a);
        let mut sorted = a;
        sorted.sort_unstable();
        assert!(sorted.iter().enumerate().all(|(i, &v)| v == i as u32));
        let mut b = [0u32; 1000];
        random_order(1, &mut b);
        assert_eq!(a, b);
        random_order(2, &mut b);
        assert_ne!(a, b);
        // Scattered: few neighbours in a row (a sorted order has 999).
        let runs = a.windows(2).filter(|w| w[1] == w[0] + 1).count();
        assert!(runs < 20, "{runs} sequential steps");
        let mut none: [u32; 0] = [];
        random_order(3, &mut none);
        let mut one = [7u32];
        random_order(3, &mut one);
        assert_eq!(one, [0]);
    }
}
