//! Time, behind a trait so the run loop and servo moves can be tested without sleeping.

use std::time::{Duration, Instant, SystemTime};

pub trait Clock {
    /// Monotonic time, for measuring durations.
    fn now(&self) -> Instant;
    /// Wall-clock time, for event timestamps.
    fn wall(&self) -> SystemTime;
    fn sleep(&self, d: Duration);
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d)
    }
}
