//! Keeping a run going through a camera unplug: [`ReconnectingSource`] reopens a
//! lost source with exponential backoff and carries on.
//!
//! While it waits no frames come, so no item is sorted and the servos stay where
//! the sorter left them: at home, since it homes them after every item. It never
//! gives up on its own (a bin whose camera cable was knocked should recover when
//! it is pushed back in); only the stop flag (SIGINT/SIGTERM) ends the wait, and
//! the source then ends so the run finishes cleanly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{Frame, FrameSource, SourceError};
use crate::clock::Clock;

/// How long to wait before each reopening attempt: `initial`, doubling, at most
/// `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_millis(500), max: Duration::from_secs(30) }
    }
}

impl Backoff {
    /// The wait before attempt `attempt` (0-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// Longest single sleep while waiting, so a stop request is seen within this.
const STOP_POLL: Duration = Duration::from_millis(100);

/// A source that reopens itself through `factory` when it reports
/// [`SourceError::Lost`]. Bad frames and the end of the source pass through.
pub struct ReconnectingSource<F> {
    factory: F,
    current: Option<Box<dyn FrameSource>>,
    description: String,
    clock: Arc<dyn Clock>,
    stop: Arc<AtomicBool>,
    backoff: Backoff,
    reconnects: u64,
}

impl<F> ReconnectingSource<F>
where
    F: FnMut() -> Result<Box<dyn FrameSource>, SourceError>,
{
    /// Opens the source once. A source that cannot be opened at start-up is an
    /// error, not a wait: that is a wrong spec or config far more often than a
    /// cable, and the person starting the bin should hear it at once.
    pub fn open(mut factory: F, clock: Arc<dyn Clock>, stop: Arc<AtomicBool>) -> Result<Self, SourceError> {
        let first = factory()?;
        Ok(ReconnectingSource {
            description: first.describe(),
            current: Some(first),
            factory,
            clock,
            stop,
            backoff: Backoff::default(),
            reconnects: 0,
        })
    }

    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Times the source was lost and opened again.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn drop_lost(&mut self, device: &str, reason: &str) {
        log::warn!("{device} lost ({reason}); no items are sorted until it is back, trying to reopen it");
        self.current = None;
    }

    /// Sleeps `total` in short steps; false when the stop flag was raised.
    fn wait(&self, total: Duration) -> bool {
        let until = self.clock.now() + total;
        loop {
            if self.stopped() {
                return false;
            }
            let now = self.clock.now();
            if now >= until {
                return true;
            }
            self.clock.sleep((until - now).min(STOP_POLL));
        }
    }

    /// Tries to reopen until it works; false when stopped first.
    fn reopen(&mut self) -> bool {
        let started = self.clock.now();
        let mut attempt = 0u32;
        loop {
            // wait first: right after a loss the device node is still going away
            let delay = self.backoff.delay(attempt);
            if !self.wait(delay) {
                log::info!("stop requested while waiting for {} to come back", self.description);
                return false;
            }
            match (self.factory)() {
                Ok(source) => {
                    let waited = self.clock.now() - started;
                    log::info!("{} is back after {:.1} s; sorting again", source.describe(), waited.as_secs_f64());
                    self.description = source.describe();
                    self.current = Some(source);
                    self.reconnects += 1;
                    return true;
                }
                Err(e) => log::warn!(
                    "reopening attempt {} failed: {e}; next try in {:.1} s",
                    attempt + 1,
                    self.backoff.delay(attempt.saturating_add(1)).as_secs_f64()
                ),
            }
            attempt = attempt.saturating_add(1);
        }
    }
}

impl<F> FrameSource for ReconnectingSource<F>
where
    F: FnMut() -> Result<Box<dyn FrameSource>, SourceError>,
{
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        loop {
            let Some(source) = self.current.as_mut() else {
                if !self.reopen() {
                    return Ok(None);
                }
                continue;
            };
            match source.next_frame() {
                Err(SourceError::Lost { device, reason }) => self.drop_lost(&device, &reason),
                other => return other,
            }
        }
    }

    /// A loss while draining is noted and left to the next frame to handle: a
    /// freshly opened stream holds no stale frames.
    fn drain(&mut self) -> Result<usize, SourceError> {
        let Some(source) = self.current.as_mut() else {
            return Ok(0);
        };
        match source.drain() {
            Err(SourceError::Lost { device, reason }) => {
                self.drop_lost(&device, &reason);
                Ok(0)
            }
            other => other,
        }
    }

    fn describe(&self) -> String {
        format!("{} (reopened if lost)", self.description)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SimClock;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// What the fake camera does next, shared between the test, the factory and
    /// the sources it opens.
    #[derive(Default)]
    struct World {
        /// Opens that fail before one succeeds.
        failing_opens: u32,
        opens: u32,
        /// Frames a source gives before it is lost (None: never lost).
        frames_before_loss: Option<u32>,
        /// Frame numbers that are corrupt.
        bad: Vec<u32>,
        served: u32,
        drained: u32,
        /// Raise this flag when the factory is called this many times.
        stop_at_open: Option<(u32, Arc<AtomicBool>)>,
    }

    struct FakeCamera {
        world: Rc<RefCell<World>>,
        given: u32,
        generation: u32,
    }

    impl FrameSource for FakeCamera {
        fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
            let mut w = self.world.borrow_mut();
            if w.frames_before_loss.is_some_and(|n| self.given >= n) {
                return Err(SourceError::Lost { device: "fake0".into(), reason: "unplugged".into() });
            }
            self.given += 1;
            w.served += 1;
            let n = w.served;
            if w.bad.contains(&n) {
                return Err(SourceError::BadFrame { origin: format!("frame {n}"), reason: "corrupt".into() });
            }
            Ok(Some(Frame {
                image: image::RgbImage::new(1, 1),
                origin: format!("gen{} frame{n}", self.generation),
                captured_at: std::time::SystemTime::UNIX_EPOCH,
            }))
        }

        fn drain(&mut self) -> Result<usize, SourceError> {
            let mut w = self.world.borrow_mut();
            if w.frames_before_loss.is_some_and(|n| self.given >= n) {
                return Err(SourceError::Lost { device: "fake0".into(), reason: "unplugged".into() });
            }
            w.drained += 1;
            Ok(2)
        }

        fn describe(&self) -> String {
            format!("fake0 gen{}", self.generation)
        }
    }

    fn factory(world: &Rc<RefCell<World>>) -> impl FnMut() -> Result<Box<dyn FrameSource>, SourceError> {
        let world = world.clone();
        move || {
            let mut w = world.borrow_mut();
            w.opens += 1;
            if let Some((at, flag)) = &w.stop_at_open {
                if w.opens >= *at {
                    flag.store(true, Ordering::SeqCst);
                }
            }
            // the first open always works (start-up), later ones may fail
            if w.opens > 1 && w.failing_opens > 0 {
                w.failing_opens -= 1;
                return Err(SourceError::Open { spec: "camera:0".into(), reason: "no such device".into() });
            }
            Ok(Box::new(FakeCamera { world: world.clone(), given: 0, generation: w.opens }))
        }
    }

    fn setup(world: World) -> (Rc<RefCell<World>>, Arc<SimClock>, Arc<AtomicBool>) {
        (Rc::new(RefCell::new(world)), Arc::new(SimClock::new()), Arc::new(AtomicBool::new(false)))
    }

    fn origin(r: Result<Option<Frame>, SourceError>) -> String {
        r.unwrap().unwrap().origin
    }

    #[test]
    fn backoff_doubles_from_half_a_second_to_thirty() {
        let b = Backoff::default();
        let delays: Vec<f64> = (0..9).map(|a| b.delay(a).as_secs_f64()).collect();
        assert_eq!(delays, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn a_lost_source_is_reopened_with_backoff_and_frames_resume() {
        let (world, clock, stop) = setup(World { failing_opens: 3, frames_before_loss: Some(2), ..World::default() });
        let mut source = ReconnectingSource::open(factory(&world), clock.clone(), stop).unwrap();
        assert_eq!(origin(source.next_frame()), "gen1 frame1");
        assert_eq!(origin(source.next_frame()), "gen1 frame2");
        assert_eq!(clock.elapsed(), Duration::ZERO);
        // lost: waits 0.5 s, fails, 1 s, fails, 2 s, fails, 4 s, opens (5th open)
        assert_eq!(origin(source.next_frame()), "gen5 frame3");
        assert_eq!(clock.elapsed(), Duration::from_millis(7500));
        assert_eq!(world.borrow().opens, 5);
        assert_eq!(source.reconnects(), 1);
        assert_eq!(source.describe(), "fake0 gen5 (reopened if lost)");
        // lost again: the backoff starts over at 0.5 s
        assert_eq!(origin(source.next_frame()), "gen5 frame4");
        assert_eq!(origin(source.next_frame()), "gen6 frame5");
        assert_eq!(clock.elapsed(), Duration::from_millis(8000));
        assert_eq!(source.reconnects(), 2);
    }

    #[test]
    fn it_never_gives_up_and_waits_at_most_thirty_seconds_between_tries() {
        let (world, clock, stop) = setup(World { failing_opens: 100, frames_before_loss: Some(1), ..World::default() });
        let mut source = ReconnectingSource::open(factory(&world), clock.clone(), stop).unwrap();
        origin(source.next_frame());
        assert_eq!(origin(source.next_frame()), "gen102 frame2");
        // 0.5 + 1 + ... + 16 = 31.5 s for the first six tries, then 95 tries at 30 s
        assert_eq!(clock.elapsed(), Duration::from_millis(31_500 + 95 * 30_000));
    }

    #[test]
    fn the_stop_flag_ends_the_wait_and_the_source() {
        let (world, clock, stop) =
            setup(World { failing_opens: u32::MAX, frames_before_loss: Some(0), ..World::default() });
        world.borrow_mut().stop_at_open = Some((4, stop.clone()));
        let mut source = ReconnectingSource::open(factory(&world), clock.clone(), stop.clone()).unwrap();
        assert!(source.next_frame().unwrap().is_none());
        assert_eq!(world.borrow().opens, 4);
        // stopped during the wait after the 3rd failed reopening, not after it
        assert_eq!(clock.elapsed(), Duration::from_millis(3500));

        // already stopped when the loss happens: no reopening at all
        let (world, clock, _) = setup(World { frames_before_loss: Some(0), ..World::default() });
        let stopped = Arc::new(AtomicBool::new(true));
        let mut source = ReconnectingSource::open(factory(&world), clock.clone(), stopped).unwrap();
        assert!(source.next_frame().unwrap().is_none());
        assert_eq!(world.borrow().opens, 1);
        assert_eq!(clock.elapsed(), Duration::ZERO);
    }

    #[test]
    fn bad_frames_and_open_errors_at_start_up_pass_through() {
        let (world, clock, stop) = setup(World { bad: vec![2], ..World::default() });
        let mut source = ReconnectingSource::open(factory(&world), clock.clone(), stop.clone()).unwrap();
        assert_eq!(origin(source.next_frame()), "gen1 frame1");
        assert!(matches!(source.next_frame(), Err(SourceError::BadFrame { .. })));
        assert_eq!(origin(source.next_frame()), "gen1 frame3");
        assert_eq!(world.borrow().opens, 1);

        let failing = || -> Result<Box<dyn FrameSource>, SourceError> {
            Err(SourceError::Open { spec: "camera:9".into(), reason: "does not exist".into() })
        };
        let err = ReconnectingSource::open(failing, clock, stop).err().unwrap();
        assert!(err.to_string().contains("camera:9"), "{err}");
    }

    #[test]
    fn drain_goes_to_the_source_and_a_loss_there_reopens_on_the_next_frame() {
        let (world, clock, stop) = setup(World { frames_before_loss: Some(1), ..World::default() });
        let mut source = ReconnectingSource::open(factory(&world), clock, stop).unwrap();
        assert_eq!(source.drain().unwrap(), 2);
        assert_eq!(world.borrow().drained, 1);
        origin(source.next_frame());
        assert_eq!(source.drain().unwrap(), 0); // lost while draining
        assert_eq!(source.drain().unwrap(), 0); // nothing to drain meanwhile
        assert_eq!(origin(source.next_frame()), "gen2 frame2");
    }
}
