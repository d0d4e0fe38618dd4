//! The lid / hand interlock: no servo moves while the lid is open (or a hand is
//! in the chute).
//!
//! [`Interlock`] wraps any [`Actuator`] and, before each move sequence (a route
//! or a homing), waits until the switch has read closed for `debounce_ms`. An
//! open reading counts at once: a lid flicked open must stop the next move, not
//! be debounced away. A pin that cannot be read counts as open. While it waits
//! it says so in the log, and it gives up when the run's stop flag is raised.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use embedded_hal::digital::InputPin;

use super::{ActuationError, Actuator, ServoMove};
use crate::clock::Clock;
use crate::config::Level;

/// How often the switch is read while waiting.
pub const POLL: Duration = Duration::from_millis(20);
/// How often a long wait is reported again.
const REPORT_EVERY: Duration = Duration::from_secs(30);

/// An [`Actuator`] that only moves while the interlock switch is closed.
pub struct Interlock<A: Actuator, P: InputPin> {
    inner: A,
    pin: P,
    pin_number: u8,
    /// The level the pin reads while the lid is open.
    open_level: Level,
    debounce: Duration,
    clock: Arc<dyn Clock>,
    stop: Arc<AtomicBool>,
    /// Since when the switch has read closed without a break.
    closed_since: Option<Instant>,
}

/// Why a wait for the lid ended without it closing.
enum Interrupted {
    Stopped,
    PinError(String),
}

impl<A: Actuator, P: InputPin> Interlock<A, P> {
    pub fn new(inner: A, pin: P, pin_number: u8, open_level: Level, debounce: Duration, clock: Arc<dyn Clock>) -> Self {
        Interlock {
            inner,
            pin,
            pin_number,
            open_level,
            debounce,
            clock,
            stop: Arc::new(AtomicBool::new(false)),
            closed_since: None,
        }
    }

    /// The run's stop flag: a wait for the lid ends when it is raised.
    pub fn with_stop_flag(mut self, stop: Arc<AtomicBool>) -> Self {
        self.stop = stop;
        self
    }

    pub fn inner(&self) -> &A {
        &self.inner
    }

    /// Reads the switch once: `true` = closed long enough to move.
    fn closed(&mut self) -> Result<bool, String> {
        let high = self.pin.is_high().map_err(|e| format!("{e:?}"))?;
        let now = self.clock.now();
        if high == (self.open_level == Level::High) {
            self.closed_since = None;
            return Ok(false);
        }
        let since = *self.closed_since.get_or_insert(now);
        Ok(now.duration_since(since) >= self.debounce)
    }

    /// Polls until the switch is closed, logging while it is open.
    fn wait_closed(&mut self) -> Result<(), Interrupted> {
        let started = self.clock.now();
        let mut reported: Option<Instant> = None;
        loop {
            match self.closed() {
                Ok(true) => {
                    if reported.is_some() {
                        log::info!("interlock GPIO {} closed: moving", self.pin_number);
                    }
                    return Ok(());
                }
                Ok(false) => {}
                Err(e) => return Err(Interrupted::PinError(e)),
            }
            if self.stop.load(Ordering::SeqCst) {
                return Err(Interrupted::Stopped);
            }
            let now = self.clock.now();
            // A switch still debouncing is not worth a line; one left open is.
            if self.closed_since.is_none() && reported.is_none_or(|r| now.duration_since(r) >= REPORT_EVERY) {
                log::warn!(
                    "interlock GPIO {} open (lid or hand): servos wait until it closes ({:.0} s so far)",
                    self.pin_number,
                    now.duration_since(started).as_secs_f64()
                );
                reported = Some(now);
            }
            self.clock.sleep(POLL);
        }
    }

    fn error(&self, what: &str) -> ActuationError {
        ActuationError::Interlock(format!("GPIO {}: {what}", self.pin_number))
    }
}

impl<A: Actuator, P: InputPin> Actuator for Interlock<A, P> {
    fn route(&mut self, bin: &str) -> Result<Vec<ServoMove>, ActuationError> {
        match self.wait_closed() {
            Ok(()) => self.inner.route(bin),
            Err(Interrupted::Stopped) => Err(self.error("stop requested while the lid was open; nothing moved")),
            Err(Interrupted::PinError(e)) => Err(self.error(&format!("cannot read the switch ({e}); nothing moved"))),
        }
    }

    /// Every route already ends at home, so at a stop with the lid open the
    /// servos are left where they are rather than moved near a hand.
    fn home(&mut self) -> Result<Vec<ServoMove>, ActuationError> {
        match self.wait_closed() {
            Ok(()) => self.inner.home(),
            Err(Interrupted::Stopped) => {
                log::warn!("interlock GPIO {} open at stop: servos not homed", self.pin_number);
                Ok(Vec::new())
            }
            Err(Interrupted::PinError(e)) => Err(self.error(&format!("cannot read the switch ({e}); not homing"))),
        }
    }
}

/// Lets wrappers such as [`Interlock`] take the boxed actuator `smartbin run` builds.
impl<A: Actuator + ?Sized> Actuator for Box<A> {
    fn route(&mut self, bin: &str) -> Result<Vec<ServoMove>, ActuationError> {
        (**self).route(bin)
    }
    fn home(&mut self) -> Result<Vec<ServoMove>, ActuationError> {
        (**self).home()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SimClock;
    use embedded_hal_mock::eh1::digital::{Mock, State, Transaction};
    use embedded_hal_mock::eh1::MockError;

    /// Counts the moves it is asked for.
    #[derive(Default)]
    struct Counter {
        routes: Vec<String>,
        homes: usize,
    }

    impl Actuator for Counter {
        fn route(&mut self, bin: &str) -> Result<Vec<ServoMove>, ActuationError> {
            self.routes.push(bin.into());
            Ok(Vec::new())
        }
        fn home(&mut self) -> Result<Vec<ServoMove>, ActuationError> {
            self.homes += 1;
            Ok(Vec::new())
        }
    }

    fn reads(parts: &[(State, usize)]) -> Mock {
        let t: Vec<Transaction> = parts.iter().flat_map(|&(s, n)| vec![Transaction::get(s); n]).collect();
        Mock::new(&t)
    }

    fn interlock(pin: &Mock, clock: Arc<SimClock>) -> Interlock<Counter, Mock> {
        // open reads high; closed must hold 40 ms (3 polls of 20 ms)
        Interlock::new(Counter::default(), pin.clone(), 17, Level::High, Duration::from_millis(40), clock)
    }

    #[test]
    fn moves_wait_until_the_lid_has_been_closed_for_the_debounce_time() {
        use State::{High, Low};
        // open for 100 ms, a 20 ms bounce closed, open again, then closed
        let mut pin = reads(&[(High, 5), (Low, 1), (High, 2), (Low, 3)]);
        let clock = Arc::new(SimClock::new());
        let mut lock = interlock(&pin, clock.clone());
        lock.route("glass").unwrap();
        assert_eq!(lock.inner().routes, ["glass"]);
        assert_eq!(clock.elapsed(), Duration::from_millis(10 * 20), "10 polls before the move");
        pin.done();
    }

    #[test]
    fn a_closed_lid_lets_moves_through_and_opening_it_stops_the_next() {
        use State::{High, Low};
        let mut pin = reads(&[(Low, 3), (Low, 1), (High, 2), (Low, 3)]);
        let clock = Arc::new(SimClock::new());
        let mut lock = interlock(&pin, clock.clone());
        lock.home().unwrap();
        lock.route("paper").unwrap(); // still closed: one read
        assert_eq!(clock.elapsed(), Duration::from_millis(40));
        lock.route("glass").unwrap(); // opened: waits for a fresh 40 ms closed
        assert_eq!(lock.inner().routes, ["paper", "glass"]);
        assert_eq!(lock.inner().homes, 1);
        pin.done();
    }

    #[test]
    fn the_stop_flag_ends_the_wait_without_moving() {
        let mut pin = reads(&[(State::High, 2)]);
        let stop = Arc::new(AtomicBool::new(true));
        let mut lock = interlock(&pin, Arc::new(SimClock::new())).with_stop_flag(stop);
        let err = lock.route("glass").unwrap_err();
        assert!(err.to_string().contains("GPIO 17") && err.to_string().contains("nothing moved"), "{err}");
        assert!(lock.home().unwrap().is_empty(), "no homing near an open lid at stop");
        assert!(lock.inner().routes.is_empty() && lock.inner().homes == 0);
        pin.done();
    }

    #[test]
    fn an_unreadable_switch_counts_as_open() {
        let mut pin = Mock::new(&[Transaction::get(State::Low).with_error(MockError::Io(std::io::ErrorKind::Other))]);
        let mut lock = interlock(&pin, Arc::new(SimClock::new()));
        let err = lock.route("glass").unwrap_err();
        assert!(err.to_string().contains("cannot read the switch"), "{err}");
        assert!(lock.inner().routes.is_empty());
        pin.done();
    }
}
