//! `gpio:<pin>`: an IR break-beam across the tray (or a PIR sensor) on a GPIO
//! input says when an item is there; the frames then come from the camera.
//!
//! The pin is any `embedded_hal::digital::InputPin` (an rppal pin on the bin, a
//! mock in tests), polled every [`POLL`] and debounced: a level counts once it
//! has been read for `debounce_ms`, so contact bounce or a fly through the beam
//! is not an item. One item per beam break: after an item the beam must be
//! clear again before the next one is taken.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use embedded_hal::digital::InputPin;

use crate::clock::Clock;
use crate::config::{Level, TriggerConfig};
use crate::source::{Frame, FrameSource, SourceError, Trigger};

/// How often the input is read while waiting.
pub const POLL: Duration = Duration::from_millis(5);

/// A debounced digital input.
pub struct Debounced<P: InputPin> {
    pin: P,
    active: Level,
    debounce: Duration,
    clock: Arc<dyn Clock>,
    /// The accepted state: `Some(true)` = active. `None` until some level has
    /// held for the debounce time.
    state: Option<bool>,
    /// The level last read and since when it has been read without a change.
    candidate: Option<(bool, Instant)>,
}

impl<P: InputPin> Debounced<P> {
    /// `active` is the level the pin reads when its signal is on.
    pub fn new(pin: P, active: Level, debounce: Duration, clock: Arc<dyn Clock>) -> Self {
        Debounced { pin, active, debounce, clock, state: None, candidate: None }
    }

    /// Reads the pin once, without debouncing: `true` = active.
    pub fn read(&mut self) -> Result<bool, String> {
        let high = self.pin.is_high().map_err(|e| format!("{e:?}"))?;
        Ok(high == (self.active == Level::High))
    }

    /// Reads the pin once and returns the debounced state (see `state`).
    pub fn poll(&mut self) -> Result<Option<bool>, String> {
        let active = self.read()?;
        let now = self.clock.now();
        let since = match self.candidate {
            Some((level, since)) if level == active => since,
            _ => now,
        };
        self.candidate = Some((active, since));
        if now.duration_since(since) >= self.debounce {
            self.state = Some(active);
        }
        Ok(self.state)
    }
}

/// See the module documentation.
pub struct GpioTrigger<P: InputPin> {
    input: Debounced<P>,
    pin: u8,
    source: Box<dyn FrameSource>,
    clock: Arc<dyn Clock>,
    frames_per_item: usize,
    /// Time for the hand to leave the picture after the beam breaks.
    delay: Duration,
    timeout: Duration,
    stop: Arc<AtomicBool>,
    /// The beam has been clear since the last item. True at start, so an item
    /// already on the tray is sorted.
    armed: bool,
    /// Frames of a triggered item, kept across a bad frame.
    pending: Option<Vec<Frame>>,
    /// When the beam broke for the last item, for the "still there" warning.
    active_since: Option<Instant>,
    reported_at: Option<Instant>,
}

impl<P: InputPin> GpioTrigger<P> {
    pub fn new(
        pin: P,
        pin_number: u8,
        source: Box<dyn FrameSource>,
        config: &TriggerConfig,
        frames_per_item: u32,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let debounce = Duration::from_millis(config.debounce_ms);
        GpioTrigger {
            input: Debounced::new(pin, config.active, debounce, clock.clone()),
            pin: pin_number,
            source,
            clock,
            frames_per_item: frames_per_item.max(1) as usize,
            delay: Duration::from_millis(config.delay_ms),
            timeout: Duration::from_secs_f64(config.timeout_s),
            stop: Arc::new(AtomicBool::new(false)),
            armed: true,
            pending: None,
            active_since: None,
            reported_at: None,
        }
    }

    /// The run's stop flag: checked at every poll and frame.
    pub fn with_stop_flag(mut self, stop: Arc<AtomicBool>) -> Self {
        self.stop = stop;
        self
    }

    /// Polls until the beam breaks after having been clear. `false` = stopped.
    fn wait_for_beam(&mut self) -> Result<bool, SourceError> {
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return Ok(false);
            }
            let state = self.input.poll().map_err(|reason| SourceError::Lost {
                device: format!("gpio:{}", self.pin),
                reason: format!("reading the trigger input: {reason}"),
            })?;
            match state {
                Some(true) if self.armed => {
                    log::info!("trigger input GPIO {} active: item on the tray", self.pin);
                    self.armed = false;
                    self.active_since = Some(self.clock.now());
                    self.reported_at = None;
                    return Ok(true);
                }
                Some(true) => self.report_if_still_active(),
                Some(false) => {
                    self.armed = true;
                    self.active_since = None;
                }
                None => {}
            }
            self.clock.sleep(POLL);
        }
    }

    /// Logs once per timeout while the beam stays broken after an item.
    fn report_if_still_active(&mut self) {
        let Some(since) = self.active_since else { return };
        let now = self.clock.now();
        if now.duration_since(self.reported_at.unwrap_or(since)) >= self.timeout {
            log::warn!(
                "trigger input GPIO {} still active {:.0} s after the item was sorted: \
                 is something stuck on the tray or in the beam?",
                self.pin,
                now.duration_since(since).as_secs_f64()
            );
            self.reported_at = Some(now);
        }
    }
}

impl<P: InputPin> Trigger for GpioTrigger<P> {
    fn next_item(&mut self) -> Result<Option<Vec<Frame>>, SourceError> {
        if self.pending.is_none() {
            if !self.wait_for_beam()? {
                return Ok(None);
            }
            self.clock.sleep(self.delay);
            self.pending = Some(Vec::new());
        }
        while self.pending.as_ref().is_some_and(|p| p.len() < self.frames_per_item) {
            if self.stop.load(Ordering::SeqCst) {
                return Ok(None);
            }
            let pending = self.pending.get_or_insert_with(Vec::new);
            // A camera queues frames: the first one must be taken after the beam broke.
            let frame = if pending.is_empty() { self.source.fresh_frame()? } else { self.source.next_frame()? };
            match frame {
                Some(frame) => self.pending.get_or_insert_with(Vec::new).push(frame),
                None => return Ok(None),
            }
        }
        Ok(self.pending.take())
    }

    fn describe(&self) -> String {
        format!(
            "GPIO {} (active {:?}, {} frame(s) per item) on {}",
            self.pin,
            self.input.active,
            self.frames_per_item,
            self.source.describe()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SimClock;
    use crate::source::trigger::testing::ScriptedSource;
    use embedded_hal_mock::eh1::digital::{Mock, State, Transaction};
    use embedded_hal_mock::eh1::MockError;

    /// `n` reads of `state`.
    fn reads(state: State, n: usize) -> Vec<Transaction> {
        vec![Transaction::get(state); n]
    }

    fn script(parts: &[(State, usize)]) -> Mock {
        let all: Vec<Transaction> = parts.iter().flat_map(|&(s, n)| reads(s, n)).collect();
        Mock::new(&all)
    }

    #[test]
    fn a_level_counts_once_it_has_held_for_the_debounce_time() {
        use State::{High, Low};
        let mut pin = script(&[(High, 1), (Low, 2), (High, 5), (Low, 5)]);
        let clock = Arc::new(SimClock::new());
        let mut input = Debounced::new(pin.clone(), Level::Low, Duration::from_millis(20), clock.clone());
        let mut states = Vec::new();
        for _ in 0..13 {
            states.push(input.poll().unwrap());
            clock.advance(Duration::from_millis(5));
        }
        let (n, t, f) = (None, Some(true), Some(false));
        // a 10 ms low glitch is ignored; high then low each need 20 ms (5 reads)
        assert_eq!(states, [n, n, n, n, n, n, n, f, f, f, f, f, t]);
        pin.done();
    }

    #[test]
    fn zero_debounce_takes_the_first_read() {
        let mut pin = script(&[(State::High, 1)]);
        let mut input = Debounced::new(pin.clone(), Level::High, Duration::ZERO, Arc::new(SimClock::new()));
        assert_eq!(input.poll().unwrap(), Some(true));
        pin.done();
    }

    fn config() -> TriggerConfig {
        TriggerConfig { debounce_ms: 20, delay_ms: 300, ..TriggerConfig::default() }
    }

    #[test]
    fn one_item_per_beam_break_with_glitches_ignored() {
        use State::{High, Low};
        // active low (a beam receiver pulling down): a 5 ms glitch, then a real
        // break held for 20 ms; then it stays broken, clears, and breaks again
        let mut pin = script(&[(High, 3), (Low, 1), (High, 2), (Low, 5), (Low, 3), (High, 5), (Low, 5)]);
        let clock = Arc::new(SimClock::new());
        let source = ScriptedSource::solid(&[10, 20, 30, 40, 50]);
        let drains = source.drains.clone();
        let mut trigger = GpioTrigger::new(pin.clone(), 17, Box::new(source), &config(), 2, clock.clone());
        let item = trigger.next_item().unwrap().unwrap();
        assert_eq!(item.iter().map(|f| f.origin.as_str()).collect::<Vec<_>>(), ["f0", "f1"]);
        // 10 polls of 5 ms before the break counted, then the 300 ms delay
        assert_eq!(clock.elapsed(), Duration::from_millis(50 + 300));
        let item = trigger.next_item().unwrap().unwrap();
        assert_eq!(item[0].origin, "f2");
        assert_eq!(drains.load(Ordering::SeqCst), 2, "the camera queue is dropped once per item");
        pin.done();
    }

    #[test]
    fn an_item_already_there_at_start_is_sorted() {
        let mut pin = script(&[(State::High, 5)]);
        let config = TriggerConfig { active: Level::High, ..config() };
        let source = ScriptedSource::solid(&[1]);
        let mut trigger = GpioTrigger::new(pin.clone(), 4, Box::new(source), &config, 1, Arc::new(SimClock::new()));
        assert!(trigger.next_item().unwrap().is_some());
        pin.done();
    }

    #[test]
    fn a_pin_error_is_a_lost_source_naming_the_pin() {
        let mut pin = Mock::new(&[Transaction::get(State::High).with_error(MockError::Io(std::io::ErrorKind::Other))]);
        let source = ScriptedSource::solid(&[1]);
        let mut trigger = GpioTrigger::new(pin.clone(), 22, Box::new(source), &config(), 1, Arc::new(SimClock::new()));
        let err = trigger.next_item().unwrap_err();
        assert!(matches!(&err, SourceError::Lost { device, .. } if device == "gpio:22"), "{err}");
        pin.done();
    }

    #[test]
    fn the_stop_flag_ends_the_wait() {
        let mut pin = script(&[]);
        let stop = Arc::new(AtomicBool::new(true));
        let source = ScriptedSource::solid(&[1]);
        let mut trigger = GpioTrigger::new(pin.clone(), 5, Box::new(source), &config(), 1, Arc::new(SimClock::new()))
            .with_stop_flag(stop);
        assert!(trigger.next_item().unwrap().is_none());
        pin.done();
    }

    #[test]
    fn a_bad_frame_is_passed_on_and_the_item_continues() {
        let mut pin = script(&[(State::Low, 5)]);
        let mut source = ScriptedSource::solid(&[1, 2, 3]);
        source.bad_at = Some(0);
        let mut trigger = GpioTrigger::new(pin.clone(), 5, Box::new(source), &config(), 2, Arc::new(SimClock::new()));
        assert!(matches!(trigger.next_item(), Err(SourceError::BadFrame { .. })));
        let item = trigger.next_item().unwrap().unwrap();
        assert_eq!(item.len(), 2);
        pin.done();
    }
}
