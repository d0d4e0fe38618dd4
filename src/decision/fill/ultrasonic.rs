//! HC-SR04 ultrasonic distance sensor, looking down into a bin from its lid.
//!
//! A 10 µs pulse on the trigger pin sends a ping; the echo pin then stays high
//! for as long as the sound took to come back (58 µs per cm there and back).
//! The echo is timed by polling the pin against the [`Clock`], which on a Pi is
//! good to about a centimetre: plenty to tell a full bin from an empty one. The
//! sensor runs on 5 V, so its echo output needs a divider down to the Pi's 3.3 V.

use std::sync::Arc;
use std::time::{Duration, Instant};

use embedded_hal::digital::{InputPin, OutputPin};

use crate::clock::Clock;

/// Microseconds of echo per centimetre of distance (sound there and back).
const US_PER_CM: f64 = 58.0;
/// Longest echo waited for: about 5 m, beyond the sensor's range.
const ECHO_TIMEOUT: Duration = Duration::from_millis(30);
const TRIGGER_PULSE: Duration = Duration::from_micros(10);
/// Readings per measurement; the median is kept, so one stray echo does not count.
const READINGS: usize = 3;
/// The datasheet's minimum time between pings, so an old echo is not heard.
const BETWEEN_READINGS: Duration = Duration::from_millis(60);

/// Anything that measures how far the rubbish in a bin is from the lid.
pub trait DistanceSensor {
    fn distance_cm(&mut self) -> Result<f32, SensorError>;
    fn describe(&self) -> String;
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SensorError {
    #[error("{sensor}: no echo started within {} ms; check its 5 V supply and wiring", ECHO_TIMEOUT.as_millis())]
    NoEcho { sensor: String },
    #[error("{sensor}: echo did not end within {} ms (nothing in range?)", ECHO_TIMEOUT.as_millis())]
    EchoTooLong { sensor: String },
    #[error("{sensor}: {detail}")]
    Pin { sensor: String, detail: String },
}

/// An HC-SR04 on two GPIO pins.
pub struct HcSr04<T: OutputPin, E: InputPin> {
    trigger: T,
    echo: E,
    clock: Arc<dyn Clock>,
    name: String,
}

impl<T: OutputPin, E: InputPin> HcSr04<T, E> {
    /// `name` is used in errors and logs, e.g. `HC-SR04 (GPIO 23/24)`.
    pub fn new(trigger: T, echo: E, clock: Arc<dyn Clock>, name: impl Into<String>) -> Self {
        HcSr04 { trigger, echo, clock, name: name.into() }
    }

    fn pin_error(&self, what: &str, e: impl std::fmt::Debug) -> SensorError {
        SensorError::Pin { sensor: self.name.clone(), detail: format!("{what}: {e:?}") }
    }

    /// One ping and its echo.
    fn measure_once(&mut self) -> Result<f32, SensorError> {
        self.trigger.set_high().map_err(|e| self.pin_error("setting the trigger pin", e))?;
        self.clock.sleep(TRIGGER_PULSE);
        self.trigger.set_low().map_err(|e| self.pin_error("clearing the trigger pin", e))?;
        let rise = self.wait_for_echo(true)?;
        let fall = self.wait_for_echo(false)?;
        Ok(((fall - rise).as_secs_f64() * 1e6 / US_PER_CM) as f32)
    }

    /// Busy-polls the echo pin until it reads `high`; returns when it did.
    /// (Sleeping between reads would cost more than a centimetre per read.)
    fn wait_for_echo(&mut self, high: bool) -> Result<Instant, SensorError> {
        let start = self.clock.now();
        loop {
            let now = self.clock.now();
            let level = self.echo.is_high().map_err(|e| self.pin_error("reading the echo pin", e))?;
            if level == high {
                return Ok(now);
            }
            if now.duration_since(start) > ECHO_TIMEOUT {
                let sensor = self.name.clone();
                return Err(if high { SensorError::NoEcho { sensor } } else { SensorError::EchoTooLong { sensor } });
            }
        }
    }
}

impl<T: OutputPin, E: InputPin> DistanceSensor for HcSr04<T, E> {
    /// The median of a few readings; an error only if none succeeded.
    fn distance_cm(&mut self) -> Result<f32, SensorError> {
        let mut readings = Vec::with_capacity(READINGS);
        let mut last_error = None;
        for i in 0..READINGS {
            if i > 0 {
                self.clock.sleep(BETWEEN_READINGS);
            }
            match self.measure_once() {
                Ok(cm) => readings.push(cm),
                Err(e) => last_error = Some(e),
            }
        }
        if readings.is_empty() {
            return Err(last_error.expect("a reading failed"));
        }
        readings.sort_by(f32::total_cmp);
        Ok(readings[readings.len() / 2])
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::clock::SimClock;
    use embedded_hal_mock::eh1::digital::{Mock, State, Transaction};
    use std::time::SystemTime;

    /// A clock that moves on by `step` every time it is read, like real time
    /// passing while a loop polls a pin.
    pub struct StepClock {
        inner: SimClock,
        step: Duration,
    }

    impl StepClock {
        pub fn new(step: Duration) -> Self {
            StepClock { inner: SimClock::new(), step }
        }
    }

    impl Clock for StepClock {
        fn now(&self) -> Instant {
            self.inner.advance(self.step);
            self.inner.now()
        }
        fn wall(&self) -> SystemTime {
            self.inner.wall()
        }
        fn sleep(&self, d: Duration) {
            self.inner.sleep(d)
        }
    }

    fn pings(n: usize) -> Mock {
        let one = [Transaction::set(State::High), Transaction::set(State::Low)];
        Mock::new(&one.iter().cycle().take(2 * n).cloned().collect::<Vec<_>>())
    }

    /// Echo reads for readings whose echoes last `highs[i]` reads; `None` = no echo.
    fn echoes(highs: &[Option<usize>]) -> Mock {
        let mut t = Vec::new();
        for h in highs {
            match h {
                Some(n) => {
                    t.extend(vec![Transaction::get(State::Low); 2]);
                    t.extend(vec![Transaction::get(State::High); *n]);
                    t.push(Transaction::get(State::Low));
                }
                // 30 ms of low reads at 58 µs each, and one more
                None => t.extend(vec![Transaction::get(State::Low); 518]),
            }
        }
        Mock::new(&t)
    }

    fn sensor(trigger: &Mock, echo: &Mock) -> HcSr04<Mock, Mock> {
        // 58 µs per clock read: each read of a high echo is about 1 cm
        let clock = Arc::new(StepClock::new(Duration::from_micros(58)));
        HcSr04::new(trigger.clone(), echo.clone(), clock, "HC-SR04 (GPIO 23/24)")
    }

    #[test]
    fn distance_is_the_median_echo_time() {
        let (mut trigger, mut echo) = (pings(3), echoes(&[Some(30), Some(9), Some(20)]));
        let cm = sensor(&trigger, &echo).distance_cm().unwrap();
        // an echo of n high reads spans n + 1 clock steps
        assert!((cm - 21.0).abs() < 0.01, "{cm}");
        trigger.done();
        echo.done();
    }

    #[test]
    fn one_missing_echo_is_outvoted_and_none_at_all_is_an_error() {
        let (mut trigger, mut echo) = (pings(3), echoes(&[Some(10), None, Some(12)]));
        let cm = sensor(&trigger, &echo).distance_cm().unwrap();
        assert!((11.0..=13.0).contains(&cm), "{cm}");
        trigger.done();
        echo.done();

        let (mut trigger, mut echo) = (pings(3), echoes(&[None, None, None]));
        let err = sensor(&trigger, &echo).distance_cm().unwrap_err();
        assert!(matches!(err, SensorError::NoEcho { .. }), "{err}");
        assert!(err.to_string().contains("GPIO 23/24"), "{err}");
        trigger.done();
        echo.done();
    }
}
