//! The time-stamp counter's rate: what a bound in cycles needs. Stated by
//! the hypervisor where it can (CPUID's timing leaf), else learned from
//! the timer (the kernel has no other clock to calibrate it with).

/// TSC cycles per timer tick, a running mean; 0 until two ticks were seen.
/// Fed by one timer: with more than one CPU, each keeps its own (or only
/// one CPU's ticks feed it), as the deltas are between one timer's ticks.
#[derive(Clone, Copy, Debug, Default)]
pub struct TscRate {
    last: u64,
    per_tick: u64,
    /// Cycles per second as the hypervisor stated them; 0 if it did not.
    /// Preferred: where ring 0 is emulated, timer interrupts reach it late
    /// and in bursts, and the measured mean drifts with them.
    stated: u64,
}

impl TscRate {
    /// The rate the hypervisor states, if any; measured from ticks if not.
    pub fn new(stated_khz: Option<u64>) -> TscRate {
        TscRate {
            stated: stated_khz.map_or(0, |k| k.saturating_mul(1000)),
            ..TscRate::default()
        }
    }

    /// At every timer tick, with the TSC read there.
    pub fn tick(&mut self, now: u64) {
        if self.last != 0 && now > self.last {
            let d = now - self.last;
            // A tick taken late (a long kernel path, or, on software KVM,
            // interrupts reaching emulated ring 0 only at batch ends) moves
            // the mean an eighth of the way.
            self.per_tick = if self.per_tick == 0 {
                d
            } else {
                (self.per_tick.saturating_mul(7).saturating_add(d)) / 8
            };
        }
        self.last = now;
    }

    /// Cycles per second with the timer at `hz`; 0 while not known.
    fn per_second(&self, hz: u64) -> u64 {
        if self.stated != 0 {
            self.stated
        } else {
            self.per_tick.saturating_mul(hz)
        }
    }

    /// TSC cycles per timer tick with the timer at `hz`; 0 while not known.
    pub fn per_tick(&self, hz: u64) -> u64 {
        self.per_second(hz) / hz.max(1)
    }

    /// Cycles in `us` microseconds with the timer at `hz`; 0 while the rate
    /// is not known.
    /// (64-bit: called on every tick, and a 128-bit division is a library
    /// call of dozens of emulated instructions; saturates past ~8,000 s.)
    pub fn cycles(&self, us: u64, hz: u64) -> u64 {
        self.per_second(hz).saturating_mul(us) / 1_000_000
    }

    /// Microseconds in `cycles` with the timer at `hz`; 0 while the rate is
    /// not known.
    pub fn micros(&self, cycles: u64, hz: u64) -> u64 {
        let per_sec = self.per_second(hz);
        if per_sec == 0 {
            return 0;
        }
        (u128::from(cycles) * 1_000_000 / u128::from(per_sec)) as u64
    }
}

/// The TSC now.
pub fn now() -> u64 {
    // SAFETY: rdtsc only reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}
