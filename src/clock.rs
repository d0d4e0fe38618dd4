//! Time, behind a trait so the run loop and servo moves can be tested without sleeping.

use std::sync::Mutex;
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

/// A clock that only moves when slept on or advanced: sleeping returns at once.
/// Wall time starts at 2023-11-14T22:13:20Z so timestamps are reproducible.
#[derive(Debug)]
pub struct SimClock {
    start: Instant,
    wall_start: SystemTime,
    elapsed: Mutex<Duration>,
}

impl SimClock {
    pub fn new() -> Self {
        SimClock {
            start: Instant::now(),
            wall_start: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            elapsed: Mutex::new(Duration::ZERO),
        }
    }

    pub fn advance(&self, d: Duration) {
        *self.elapsed.lock().expect("sim clock poisoned") += d;
    }

    /// Virtual time since creation.
    pub fn elapsed(&self) -> Duration {
        *self.elapsed.lock().expect("sim clock poisoned")
    }
}

impl Default for SimClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SimClock {
    fn now(&self) -> Instant {
        self.start + self.elapsed()
    }
    fn wall(&self) -> SystemTime {
        self.wall_start + self.elapsed()
    }
    fn sleep(&self, d: Duration) {
        self.advance(d)
    }
}
