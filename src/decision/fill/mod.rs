//! How full the bins are, and where an item goes when its bin is full.
//!
//! A bin is full when the items counted into it since it was last emptied reach
//! its `[fill.capacity]`, or when its ultrasonic sensor sees the rubbish closer
//! than `full_cm`. An item for a full bin goes to `overflow_bin`; without one (or
//! when that is full too) it is held: the loop waits on the tray, saying so in
//! the log, until the bin is emptied (`smartbin bins reset BIN`, or the sensor
//! reading far again) or the run is stopped.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::config::FillConfig;

pub mod levels;
pub mod ultrasonic;

pub use levels::{levels_path, BinLevel, LevelStore, Levels, LevelsError, LEVELS_FILE};
pub use ultrasonic::{DistanceSensor, HcSr04, SensorError};

/// How often a held item checks whether its bin has been emptied.
pub const HOLD_POLL: Duration = Duration::from_secs(1);
/// How often a hold is reported again in the log.
const HOLD_REPORT: Duration = Duration::from_secs(60);

/// Where an item goes after the fill check.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    /// Route it to `bin`. `full` names the bin that was full, if the item went
    /// elsewhere or waited because of it; `note` says what happened, for the event.
    Route { bin: String, full: Option<String>, note: Option<String> },
    /// The run was stopped while the item waited for `full` to be emptied; it
    /// is still on the tray.
    Stopped { full: String },
}

struct BinSensor {
    bin: String,
    full_cm: f32,
    sensor: Box<dyn DistanceSensor>,
}

/// Watches the bins' fill levels for the run loop.
pub struct FillMonitor {
    capacity: BTreeMap<String, u32>,
    overflow: Option<String>,
    sensors: Vec<BinSensor>,
    store: LevelStore,
    clock: Arc<dyn Clock>,
}

impl FillMonitor {
    /// Reads the level file once, so a damaged one stops start-up.
    pub fn new(config: &FillConfig, store: LevelStore, clock: Arc<dyn Clock>) -> Result<Self, LevelsError> {
        store.load()?;
        Ok(FillMonitor {
            capacity: config.capacity.clone(),
            overflow: config.overflow_bin.clone(),
            sensors: Vec::new(),
            store,
            clock,
        })
    }

    /// Adds the sensor watching `bin`.
    pub fn add_sensor(&mut self, bin: &str, full_cm: f32, sensor: Box<dyn DistanceSensor>) {
        self.sensors.push(BinSensor { bin: bin.to_string(), full_cm, sensor });
    }

    pub fn store(&self) -> &LevelStore {
        &self.store
    }

    /// Why `bin` is full, or `None` if it is not. A failing sensor or level
    /// file is logged and does not make a bin full: it must not stop the bin.
    pub fn full_reason(&mut self, bin: &str) -> Option<String> {
        if let Some(&capacity) = self.capacity.get(bin) {
            match self.store.load() {
                Ok(levels) if levels.items(bin) >= u64::from(capacity) => {
                    return Some(format!("{} of {capacity} items", levels.items(bin)));
                }
                Ok(_) => {}
                Err(e) => log::error!("{e}"),
            }
        }
        for s in self.sensors.iter_mut().filter(|s| s.bin == bin) {
            match s.sensor.distance_cm() {
                Ok(cm) if cm < s.full_cm => {
                    return Some(format!("rubbish {cm:.1} cm below the sensor, full below {} cm", s.full_cm));
                }
                Ok(cm) => log::debug!("bin {bin}: {cm:.1} cm free"),
                Err(e) => log::warn!("bin {bin}: fill sensor failed, taking the bin as not full: {e}"),
            }
        }
        None
    }

    /// Decides where an item for `bin` goes, waiting while it must be held.
    pub fn place(&mut self, bin: &str, stop: &AtomicBool) -> Placement {
        let Some(reason) = self.full_reason(bin) else {
            return Placement::Route { bin: bin.to_string(), full: None, note: None };
        };
        log::warn!("bin {bin} is full ({reason})");
        if let Some(placement) = self.overflow_for(bin, &reason) {
            return placement;
        }
        self.hold(bin, &reason, stop)
    }

    /// The overflow bin, if there is one and it is not full itself.
    fn overflow_for(&mut self, bin: &str, reason: &str) -> Option<Placement> {
        let overflow = self.overflow.clone().filter(|o| o != bin)?;
        if let Some(why) = self.full_reason(&overflow) {
            log::warn!("overflow bin {overflow} is full too ({why})");
            return None;
        }
        Some(Placement::Route {
            note: Some(format!("bin {bin} full ({reason}) -> overflow {overflow}")),
            bin: overflow,
            full: Some(bin.to_string()),
        })
    }

    /// Waits until `bin` (or the overflow bin) can take the item, or the run stops.
    fn hold(&mut self, bin: &str, reason: &str, stop: &AtomicBool) -> Placement {
        log::warn!("holding the item on the tray: empty bin {bin}, then run `smartbin bins reset {bin}`");
        let started = self.clock.now();
        let mut reported = started;
        loop {
            if stop.load(Ordering::SeqCst) {
                log::warn!("stop requested while holding an item for full bin {bin}; it stays on the tray");
                return Placement::Stopped { full: bin.to_string() };
            }
            self.clock.sleep(HOLD_POLL);
            let held = secs_since(self.clock.now(), started);
            if self.full_reason(bin).is_none() {
                log::info!("bin {bin} emptied after {held:.0} s; going on");
                return Placement::Route {
                    bin: bin.to_string(),
                    full: Some(bin.to_string()),
                    note: Some(format!("bin {bin} full ({reason}); held {held:.0} s until it was emptied")),
                };
            }
            if let Some(placement) = self.overflow_for(bin, reason) {
                return placement;
            }
            if self.clock.now().duration_since(reported) >= HOLD_REPORT {
                log::warn!(
                    "still holding an item for full bin {bin} ({held:.0} s): `smartbin bins reset {bin}` once emptied"
                );
                reported = self.clock.now();
            }
        }
    }

    /// Counts an item delivered to `bin`, warning when that fills it.
    pub fn record(&mut self, bin: &str) {
        match self.store.add_item(bin) {
            Ok(items) => {
                if let Some(&capacity) = self.capacity.get(bin) {
                    if items == u64::from(capacity) {
                        log::warn!(
                            "bin {bin} is now full ({items} items): empty it and run `smartbin bins reset {bin}`"
                        );
                    }
                }
            }
            Err(e) => log::error!("counting an item into bin {bin}: {e}"),
        }
    }
}

fn secs_since(now: Instant, start: Instant) -> f64 {
    now.duration_since(start).as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SimClock;

    /// A sensor reading from a shared script; the last value repeats.
    struct Scripted(Arc<std::sync::Mutex<Vec<Result<f32, SensorError>>>>);

    impl DistanceSensor for Scripted {
        fn distance_cm(&mut self) -> Result<f32, SensorError> {
            let mut values = self.0.lock().unwrap();
            if values.len() > 1 {
                values.remove(0)
            } else {
                values[0].clone()
            }
        }
        fn describe(&self) -> String {
            "scripted".into()
        }
    }

    fn monitor(
        dir: &std::path::Path,
        capacity: &[(&str, u32)],
        overflow: Option<&str>,
    ) -> (FillMonitor, Arc<SimClock>) {
        let config = FillConfig {
            overflow_bin: overflow.map(String::from),
            capacity: capacity.iter().map(|(b, n)| (b.to_string(), *n)).collect(),
            sensors: Vec::new(),
        };
        let clock = Arc::new(SimClock::new());
        let store = LevelStore::new(dir.join(LEVELS_FILE));
        (FillMonitor::new(&config, store, clock.clone()).unwrap(), clock)
    }

    fn route(p: &Placement) -> (&str, Option<&str>) {
        match p {
            Placement::Route { bin, full, .. } => (bin, full.as_deref()),
            Placement::Stopped { .. } => panic!("stopped: {p:?}"),
        }
    }

    #[test]
    fn a_bin_at_capacity_sends_items_to_the_overflow() {
        let dir = tempfile::tempdir().unwrap();
        let (mut m, _) = monitor(dir.path(), &[("glass", 2)], Some("landfill"));
        let stop = AtomicBool::new(false);
        for _ in 0..2 {
            assert_eq!(route(&m.place("glass", &stop)), ("glass", None));
            m.record("glass");
        }
        let p = m.place("glass", &stop);
        assert_eq!(route(&p), ("landfill", Some("glass")));
        let Placement::Route { note: Some(note), .. } = &p else { panic!() };
        assert_eq!(note, "bin glass full (2 of 2 items) -> overflow landfill");
        // bins without a capacity are never full by count
        assert_eq!(route(&m.place("paper", &stop)), ("paper", None));
    }

    /// A clock on which someone empties and resets `bin` once `at` has passed.
    struct Person {
        clock: SimClock,
        store: LevelStore,
        at: Duration,
        done: AtomicBool,
    }

    impl Clock for Person {
        fn now(&self) -> Instant {
            self.clock.now()
        }
        fn wall(&self) -> std::time::SystemTime {
            self.clock.wall()
        }
        fn sleep(&self, d: Duration) {
            self.clock.sleep(d);
            if self.clock.elapsed() >= self.at && !self.done.swap(true, Ordering::SeqCst) {
                self.store.reset(&["glass".into()], false, "now").unwrap();
            }
        }
    }

    #[test]
    fn without_overflow_the_item_waits_until_the_bin_is_reset() {
        let dir = tempfile::tempdir().unwrap();
        let store = LevelStore::new(dir.path().join(LEVELS_FILE));
        let person = Arc::new(Person {
            clock: SimClock::new(),
            store: store.clone(),
            at: Duration::from_secs(5),
            done: AtomicBool::new(false),
        });
        let config = FillConfig { capacity: [("glass".to_string(), 1)].into(), ..FillConfig::default() };
        let mut m = FillMonitor::new(&config, store, person.clone()).unwrap();
        m.record("glass");
        let p = m.place("glass", &AtomicBool::new(false));
        assert_eq!(route(&p), ("glass", Some("glass")));
        assert_eq!(person.clock.elapsed(), Duration::from_secs(5));
        let Placement::Route { note: Some(note), .. } = &p else { panic!() };
        assert!(note.contains("held 5 s until it was emptied"), "{note}");
    }

    #[test]
    fn a_held_item_gives_way_to_the_stop_flag() {
        let dir = tempfile::tempdir().unwrap();
        let (mut m, _) = monitor(dir.path(), &[("glass", 1)], None);
        m.record("glass");
        let stop = AtomicBool::new(true);
        assert_eq!(m.place("glass", &stop), Placement::Stopped { full: "glass".into() });
    }

    #[test]
    fn a_full_overflow_bin_holds_too() {
        let dir = tempfile::tempdir().unwrap();
        let (mut m, _) = monitor(dir.path(), &[("glass", 1), ("landfill", 1)], Some("landfill"));
        m.record("glass");
        m.record("landfill");
        assert!(matches!(m.place("glass", &AtomicBool::new(true)), Placement::Stopped { .. }));
    }

    #[test]
    fn the_sensor_says_full_below_full_cm_and_a_failing_one_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let (mut m, _) = monitor(dir.path(), &[], Some("landfill"));
        let script =
            Arc::new(std::sync::Mutex::new(vec![Ok(40.0), Ok(8.0), Err(SensorError::NoEcho { sensor: "s".into() })]));
        m.add_sensor("paper", 10.0, Box::new(Scripted(script)));
        let stop = AtomicBool::new(false);
        assert_eq!(route(&m.place("paper", &stop)), ("paper", None));
        let p = m.place("paper", &stop);
        assert_eq!(route(&p), ("landfill", Some("paper")));
        let Placement::Route { note: Some(note), .. } = &p else { panic!() };
        assert!(note.contains("8.0 cm below the sensor, full below 10 cm"), "{note}");
        assert_eq!(route(&m.place("paper", &stop)), ("paper", None));
    }
}
