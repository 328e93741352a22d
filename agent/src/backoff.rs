//! Reconnect delays: exponential, capped, with jitter. Pure: the random factor is an argument.

use std::time::Duration;

/// Exponential backoff state.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `min`, doubles per failure, never exceeds `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// After a successful session: start again from `min`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The next delay. `unit` in `[0, 1)` picks a point in the upper half of the current
    /// window ("equal jitter"), so agents that failed together do not retry together, while
    /// each still waits at least half the nominal delay.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let nominal = self
            .min
            .saturating_mul(1u32.checked_shl(self.attempt).unwrap_or(u32::MAX))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1).min(31);
        let unit = unit.clamp(0.0, 1.0);
        nominal.div_f64(2.0) + nominal.div_f64(2.0).mul_f64(unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let upper: Vec<_> = (0..9).map(|_| b.next_delay(1.0)).collect();
        assert_eq!(upper[0], Duration::from_millis(500));
        assert_eq!(upper[1], Duration::from_secs(1));
        assert_eq!(upper[2], Duration::from_secs(2));
        assert_eq!(upper[6], Duration::from_secs(30));
        assert_eq!(upper[8], Duration::from_secs(30));
        assert_eq!(b.next_delay(0.0), Duration::from_secs(15));
        b.reset();
        assert_eq!(b.next_delay(0.0), Duration::from_millis(250));
    }

    #[test]
    fn survives_many_failures() {
        let mut b = Backoff::new(Duration::from_millis(1), Duration::from_secs(60));
        for _ in 0..1000 {
            assert!(b.next_delay(0.5) <= Duration::from_secs(60));
        }
    }
}
