//! The run loop: item -> classify -> decide -> move -> log, until the source ends,
//! `max_items` is reached or the stop flag is raised (SIGINT/SIGTERM).
//!
//! What happens when something goes wrong, per item:
//! - a frame cannot be read: warning, an event with only `source` and `error`, no
//!   servo moves (there is no item to route), next item;
//! - the classifier fails or returns garbage: the item is routed to the fallback
//!   bin anyway (it is on the tray and must go somewhere), the event has `error`;
//! - a servo fails: the event records the moves that did happen and the error, the
//!   servos are sent home, and the loop continues; if homing fails too the loop
//!   stops with an error, since the machine's position is unknown;
//! - the source is lost or the event log cannot be written: the loop homes the
//!   servos and returns the error.
//!
//! On stop the current item is finished (its moves completed, its event written),
//! then the servos go home.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;

use crate::actuation::{ActuationError, Actuator};
use crate::clock::Clock;
use crate::decision::fill::{FillMonitor, Placement};
use crate::decision::{Decision, DecisionPolicy};
use crate::model::Classifier;
use crate::service::{status_line, ServiceHooks};
use crate::source::{Frame, SourceError, Trigger};

pub mod events;
pub mod frames;

pub use events::{rfc3339_utc, Event, EventLog};

/// What a run did, printed at the end.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Items routed to a bin (including those routed to the fallback after an error).
    pub items: u64,
    /// Items per bin they were sent to.
    pub per_bin: BTreeMap<String, u64>,
    /// Frames that could not be read and were skipped.
    pub bad_frames: u64,
    /// Items whose classification or actuation failed.
    pub errors: u64,
    /// The stop flag ended the run.
    pub stopped: bool,
}

impl Summary {
    /// Adds another run's counts to these (a reload splits one service run
    /// into several sorter runs).
    pub fn add(&mut self, other: &Summary) {
        self.items += other.items;
        for (bin, n) in &other.per_bin {
            *self.per_bin.entry(bin.clone()).or_default() += n;
        }
        self.bad_frames += other.bad_frames;
        self.errors += other.errors;
        self.stopped |= other.stopped;
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} items sorted", self.items)?;
        if !self.per_bin.is_empty() {
            let bins: Vec<String> = self.per_bin.iter().map(|(b, n)| format!("{b}: {n}")).collect();
            write!(f, " ({})", bins.join(", "))?;
        }
        write!(f, ", {} bad frames skipped, {} errors", self.bad_frames, self.errors)?;
        if self.stopped {
            write!(f, "; stopped by signal")?;
        }
        Ok(())
    }
}

/// Sets `stop` on SIGINT or SIGTERM. A second signal while `stop` is already set
/// exits at once, for a loop stuck in a slow step.
pub fn install_stop_signals(stop: &Arc<AtomicBool>) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    for signal in [SIGINT, SIGTERM] {
        // Order matters: the exit check runs before the flag is set, so the first
        // signal only sets the flag.
        signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(stop))?;
        signal_hook::flag::register(signal, Arc::clone(stop))?;
    }
    Ok(())
}

/// Everything the loop drives. Build with [`Sorter::new`], then [`Sorter::run`].
pub struct Sorter<'a> {
    trigger: &'a mut dyn Trigger,
    classifier: &'a mut dyn Classifier,
    actuator: &'a mut dyn Actuator,
    policy: DecisionPolicy,
    events: EventLog,
    clock: Arc<dyn Clock>,
    stop: Arc<AtomicBool>,
    max_items: Option<u64>,
    service: Option<ServiceHooks>,
    fill: Option<&'a mut FillMonitor>,
    frames: Option<frames::FrameStore>,
}

/// The result of classifying and deciding one item.
struct Outcome {
    decision: Option<Decision>,
    bin: String,
    reason: String,
    model_ms: Option<f64>,
    error: Option<String>,
}

impl<'a> Sorter<'a> {
    pub fn new(
        trigger: &'a mut dyn Trigger,
        classifier: &'a mut dyn Classifier,
        actuator: &'a mut dyn Actuator,
        policy: DecisionPolicy,
        events: EventLog,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Sorter {
            trigger,
            classifier,
            actuator,
            policy,
            events,
            clock,
            stop: Arc::new(AtomicBool::new(false)),
            max_items: None,
            fill: None,
            service: None,
            frames: None,
        }
    }

    /// The flag that ends the loop after the current item.
    pub fn with_stop_flag(mut self, stop: Arc<AtomicBool>) -> Self {
        self.stop = stop;
        self
    }

    /// Beat `hooks.heartbeat` every iteration and report each item to systemd.
    pub fn with_service(mut self, hooks: ServiceHooks) -> Self {
        self.service = Some(hooks);
        self
    }

    /// Check bin fill levels before each item and count items into bins.
    pub fn with_fill(mut self, fill: Option<&'a mut FillMonitor>) -> Self {
        self.fill = fill;
        self
    }

    /// Keep each item's first frame (for `smartbin correct`).
    pub fn with_frames(mut self, frames: Option<frames::FrameStore>) -> Self {
        self.frames = frames;
        self
    }

    /// Stop after this many events (items and bad frames together).
    pub fn with_max_items(mut self, max_items: Option<u64>) -> Self {
        self.max_items = max_items;
        self
    }

    /// Homes the servos, sorts until done, homes them again.
    pub fn run(mut self) -> anyhow::Result<Summary> {
        log::info!("sorting: {}", self.trigger.describe());
        self.actuator.home().context("homing servos before the first item")?;
        if let Some(service) = &self.service {
            // Model loaded, source open, servos home: systemd may start what
            // depends on us, and its start timeout ends here.
            service.notifier.ready();
            service.notifier.status(&format!("ready: {}", self.trigger.describe()));
        }
        let mut summary = Summary::default();
        let result = self.sort_items(&mut summary);
        // Home even after an error: a chute left turned is in the way of hands.
        let homed = self.actuator.home();
        if let (Err(e), Err(_)) = (&homed, &result) {
            log::error!("homing servos at the end of the run: {e}");
        }
        result?;
        homed.context("homing servos at the end of the run")?;
        Ok(summary)
    }

    fn sort_items(&mut self, summary: &mut Summary) -> anyhow::Result<()> {
        let mut handled = 0u64;
        loop {
            if let Some(service) = &self.service {
                service.heartbeat.beat();
            }
            if self.stop.load(Ordering::SeqCst) {
                log::info!("stop requested; finishing");
                summary.stopped = true;
                return Ok(());
            }
            if self.max_items.is_some_and(|max| handled >= max) {
                log::info!("reached --max-items {handled}");
                return Ok(());
            }
            match self.trigger.next_item() {
                Ok(None) => {
                    // Triggers end early on the stop flag too.
                    summary.stopped = self.stop.load(Ordering::SeqCst);
                    return Ok(());
                }
                Ok(Some(frames)) => self.sort_one(frames, summary)?,
                Err(SourceError::BadFrame { origin, reason }) => {
                    log::warn!("skipping unreadable frame {origin}: {reason}");
                    summary.bad_frames += 1;
                    let mut event = Event {
                        time: rfc3339_utc(self.clock.wall()),
                        source: origin,
                        error: Some(format!("bad frame: {reason}")),
                        ..Event::default()
                    };
                    self.events.append(&mut event)?;
                }
                Err(other) => return Err(other).context("frame source failed"),
            }
            handled += 1;
        }
    }

    /// Classifies, decides, routes and logs one item.
    fn sort_one(&mut self, frames: Vec<Frame>, summary: &mut Summary) -> anyhow::Result<()> {
        let started = self.clock.now();
        let source = frames.first().map(|f| f.origin.clone()).unwrap_or_default();
        let frame_count = frames.len();
        let kept = self.keep_frame(&frames);
        let outcome = self.classify_and_decide(frames);
        match &outcome.decision {
            Some(d) => log::info!(
                "{source}: {} ({:.2}) -> {} [{}]",
                d.class,
                d.confidence,
                outcome.bin,
                outcome.reason
            ),
            None => log::warn!("{source}: {} -> {}", outcome.reason, outcome.bin),
        }

        let mut event = Event {
            time: rfc3339_utc(self.clock.wall()),
            source,
            frames: frame_count,
            bin: Some(outcome.bin.clone()),
            reason: Some(outcome.reason),
            model_ms: outcome.model_ms,
            error: outcome.error,
            frame: kept,
            ..Event::default()
        };
        if let Some(d) = outcome.decision {
            event.class = Some(d.class);
            event.confidence = Some(d.confidence);
            event.top3 = d.top3;
        }
        let had_error = event.error.is_some();

        let Some(bin) = self.place(&outcome.bin, &mut event) else {
            summary.errors += 1;
            self.events.append(&mut event)?;
            return Ok(());
        };
        let routed = self.actuator.route(&bin);
        let homing = match routed {
            Ok(moves) => {
                event.moves = moves;
                if let Some(fill) = self.fill.as_deref_mut() {
                    fill.record(&bin);
                }
                *summary.per_bin.entry(bin).or_default() += 1;
                Ok(())
            }
            Err(e) => {
                log::error!("routing to {bin}: {e}");
                event.moves = e.completed_moves().to_vec();
                append_error(&mut event.error, &e);
                self.recover_home(&mut event)
            }
        };
        event.total_ms = Some(ms_since(self.clock.as_ref(), started));
        summary.items += 1;
        if had_error || event.error.is_some() {
            summary.errors += 1;
        }
        // Write before acting on a failed homing: the event must not be lost.
        self.events.append(&mut event)?;
        self.report_status(&event, summary);
        homing
    }

    /// Saves the item's first frame under the id its event will get. A failure
    /// is logged, not fatal: a full card must not stop the sorting.
    fn keep_frame(&self, frames: &[Frame]) -> Option<String> {
        let (store, frame) = (self.frames.as_ref()?, frames.first()?);
        match store.save(self.events.next_id(), &frame.image) {
            Ok(path) => Some(path.display().to_string()),
            Err(e) => {
                log::warn!("could not keep the item's frame: {e:#}");
                None
            }
        }
    }

    fn report_status(&self, event: &Event, summary: &Summary) {
        let Some(service) = &self.service else { return };
        let last = match (&event.class, &event.bin) {
            (Some(class), Some(bin)) => format!("#{} {class} -> {bin}", event.id),
            (None, Some(bin)) => format!("#{} unclassified -> {bin}", event.id),
            _ => format!("#{}", event.id),
        };
        service.notifier.status(&status_line(&last, summary.items, summary.errors));
    }

    /// The bin the item goes to after the fill check, which may wait while its
    /// bin is full; `None` when the run was stopped during that wait (the item
    /// stays on the tray and the event says so).
    fn place(&mut self, bin: &str, event: &mut Event) -> Option<String> {
        let Some(fill) = self.fill.as_deref_mut() else {
            return Some(bin.to_string());
        };
        match fill.place(bin, &self.stop) {
            Placement::Route { bin, full, note } => {
                if let Some(note) = note {
                    event.reason = Some(match event.reason.take() {
                        Some(reason) => format!("{reason}; {note}"),
                        None => note,
                    });
                }
                event.full = full;
                event.bin = Some(bin.clone());
                Some(bin)
            }
            Placement::Stopped { full } => {
                let text = format!("bin {full} full; stopped while the item waited on the tray");
                event.error = Some(match event.error.take() {
                    Some(previous) => format!("{previous}; {text}"),
                    None => text,
                });
                event.full = Some(full);
                event.bin = None;
                None
            }
        }
    }

    /// After a failed route: send the servos home, noting those moves too.
    fn recover_home(&mut self, event: &mut Event) -> anyhow::Result<()> {
        match self.actuator.home() {
            Ok(moves) => {
                event.moves.extend(moves);
                Ok(())
            }
            Err(e) => {
                event.moves.extend(e.completed_moves().iter().cloned());
                append_error(&mut event.error, &e);
                Err(anyhow::anyhow!("homing after a failed move: {e}"))
            }
        }
    }

    fn classify_and_decide(&mut self, frames: Vec<Frame>) -> Outcome {
        let images: Vec<image::RgbImage> = frames.into_iter().map(|f| f.image).collect();
        let t0 = self.clock.now();
        let probs = self.classifier.classify(&images);
        let model_ms = Some(ms_since(self.clock.as_ref(), t0));
        let fallback = |what: String| Outcome {
            decision: None,
            bin: self.policy.fallback_bin.clone(),
            reason: format!("{what}; fallback -> {}", self.policy.fallback_bin),
            model_ms,
            error: Some(what),
        };
        let probs = match probs {
            Ok(p) => p,
            Err(e) => return fallback(format!("classifier failed: {e:#}")),
        };
        match self.policy.decide(self.classifier.class_names(), &probs) {
            Ok(d) => Outcome {
                bin: d.bin.clone(),
                reason: d.reason.clone(),
                decision: Some(d),
                model_ms,
                error: None,
            },
            Err(e) => fallback(format!("classifier output unusable: {e}")),
        }
    }
}

fn append_error(slot: &mut Option<String>, e: &ActuationError) {
    let text = e.to_string();
    *slot = Some(match slot.take() {
        Some(previous) => format!("{previous}; {text}"),
        None => text,
    });
}

/// Milliseconds, rounded to 0.01 ms: finer is noise and bloats the log.
fn ms_since(clock: &dyn Clock, start: Instant) -> f64 {
    ((clock.now() - start).as_secs_f64() * 100_000.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actuation::ServoMove;
    use crate::clock::SimClock;
    use crate::source::ReplayTrigger;
    use std::path::Path;

    /// A source of solid-grey frames, plus one unreadable frame where asked.
    struct Frames {
        left: Vec<Result<u8, &'static str>>,
    }

    impl crate::source::FrameSource for Frames {
        fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
            if self.left.is_empty() {
                return Ok(None);
            }
            match self.left.remove(0) {
                Ok(v) => Ok(Some(Frame {
                    image: image::RgbImage::from_pixel(2, 2, image::Rgb([v, v, v])),
                    origin: format!("grey{v}"),
                    captured_at: std::time::SystemTime::UNIX_EPOCH,
                })),
                Err(name) => Err(SourceError::BadFrame { origin: name.into(), reason: "corrupt".into() }),
            }
        }
        fn describe(&self) -> String {
            "test frames".into()
        }
    }

    /// Says "glass" for bright frames, "paper" for dark ones; fails on value 13.
    struct Fake {
        names: Vec<String>,
    }

    impl Classifier for Fake {
        fn class_names(&self) -> &[String] {
            &self.names
        }
        fn classify(&mut self, images: &[image::RgbImage]) -> anyhow::Result<Vec<Vec<f32>>> {
            images
                .iter()
                .map(|img| match img.get_pixel(0, 0).0[0] {
                    13 => anyhow::bail!("model exploded"),
                    v if v > 127 => Ok(vec![0.1, 0.9]),
                    _ => Ok(vec![0.8, 0.2]),
                })
                .collect()
        }
    }

    /// Records routes; fails to route to "glass" when asked to.
    #[derive(Default)]
    struct Recorder {
        routes: Vec<String>,
        homes: usize,
        fail_glass: bool,
    }

    impl Actuator for Recorder {
        fn route(&mut self, bin: &str) -> Result<Vec<ServoMove>, ActuationError> {
            self.routes.push(bin.to_string());
            let m = ServoMove { servo: "chute".into(), angle: 10.0, pulse_us: 611.0, duty: 611, at_ms: 0 };
            if self.fail_glass && bin == "glass" {
                return Err(ActuationError::Servo { servo: "flap".into(), detail: "bus timeout".into(), moves: vec![m] });
            }
            Ok(vec![m])
        }
        fn home(&mut self) -> Result<Vec<ServoMove>, ActuationError> {
            self.homes += 1;
            Ok(Vec::new())
        }
    }

    fn policy() -> DecisionPolicy {
        DecisionPolicy {
            threshold: 0.5,
            fallback_bin: "landfill".into(),
            classes: [("paper", "paper"), ("glass", "glass")]
                .iter()
                .map(|(c, b)| (c.to_string(), b.to_string()))
                .collect(),
        }
    }

    fn run(
        frames: Vec<Result<u8, &'static str>>,
        actuator: &mut Recorder,
        log: &Path,
        max_items: Option<u64>,
    ) -> anyhow::Result<Summary> {
        let mut trigger = ReplayTrigger::new(Box::new(Frames { left: frames }));
        let mut fake = Fake { names: vec!["paper".into(), "glass".into()] };
        let events = EventLog::open(log)?;
        Sorter::new(&mut trigger, &mut fake, actuator, policy(), events, Arc::new(SimClock::new()))
            .with_max_items(max_items)
            .run()
    }

    fn events(path: &Path) -> Vec<Event> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn every_item_is_routed_and_logged_and_bad_frames_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("events.jsonl");
        let mut act = Recorder::default();
        let summary = run(vec![Ok(200), Err("broken.jpg"), Ok(10), Ok(13)], &mut act, &log, None).unwrap();
        assert_eq!(act.routes, ["glass", "paper", "landfill"]);
        assert_eq!(act.homes, 2, "home before and after the run");
        assert_eq!(summary.items, 3);
        assert_eq!(summary.bad_frames, 1);
        assert_eq!(summary.errors, 1, "the classifier failure");
        assert_eq!(summary.per_bin["landfill"], 1);

        let ev = events(&log);
        assert_eq!(ev.iter().map(|e| e.id).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!(ev[0].class.as_deref(), Some("glass"));
        assert_eq!(ev[0].reason.as_deref(), Some("mapped: glass -> glass"));
        assert_eq!(ev[0].moves.len(), 1);
        assert_eq!(ev[1].source, "broken.jpg");
        assert!(ev[1].bin.is_none() && ev[1].error.as_deref() == Some("bad frame: corrupt"));
        assert_eq!(ev[3].bin.as_deref(), Some("landfill"));
        assert!(ev[3].error.as_deref().unwrap().contains("model exploded"), "{:?}", ev[3]);
        assert_eq!(ev[0].time, "2023-11-14T22:13:20.000Z");
    }

    #[test]
    fn a_servo_error_is_logged_with_its_moves_and_the_loop_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("events.jsonl");
        let mut act = Recorder { fail_glass: true, ..Recorder::default() };
        let summary = run(vec![Ok(200), Ok(10)], &mut act, &log, None).unwrap();
        assert_eq!(act.routes, ["glass", "paper"]);
        assert_eq!(act.homes, 3, "start, recovery after the failure, end");
        assert_eq!(summary.errors, 1);
        assert_eq!(summary.per_bin.get("glass"), None, "not counted as delivered");
        let ev = events(&log);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].error.as_deref(), Some("servo flap: bus timeout"));
        assert_eq!(ev[0].moves.len(), 1, "the chute move that happened is kept");
    }

    #[test]
    fn max_items_counts_events() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("events.jsonl");
        let mut act = Recorder::default();
        let summary = run(vec![Ok(200), Err("x"), Ok(10)], &mut act, &log, Some(2)).unwrap();
        assert_eq!((summary.items, summary.bad_frames), (1, 1));
        assert_eq!(events(&log).len(), 2);
    }

    #[test]
    fn summary_prints_bins_and_counts() {
        let mut s = Summary { items: 3, bad_frames: 1, errors: 0, stopped: true, ..Summary::default() };
        s.per_bin.insert("glass".into(), 2);
        s.per_bin.insert("paper".into(), 1);
        assert_eq!(
            s.to_string(),
            "3 items sorted (glass: 2, paper: 1), 1 bad frames skipped, 0 errors; stopped by signal"
        );
    }
}
