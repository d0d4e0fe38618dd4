//! The run loop with the bin's inputs: the motion trigger on recorded tray
//! frames (an `images:` folder replayed as a camera), full bins, the lid
//! interlock, and `smartbin bins`.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use image::{Rgb, RgbImage};
use smartbin::actuation::interlock::Interlock;
use smartbin::actuation::{sim_actuator, Actuator, SimLog};
use smartbin::clock::{Clock, SimClock};
use smartbin::config::{Config, Level};
use smartbin::decision::fill::{levels_path, FillMonitor, LevelStore};
use smartbin::decision::DecisionPolicy;
use smartbin::model::Classifier;
use smartbin::sorter::{Event, EventLog, Sorter, Summary};
use smartbin::source::trigger::{MotionTrigger, TriggerMode};
use smartbin::source::{open_source, parse_source_spec, ReplayOptions};

const CLASSES: [&str; 6] = ["cardboard", "glass", "metal", "paper", "plastic", "trash"];

/// Says "glass" for a mostly green item, "plastic" for a blue one, and would say
/// "trash" for anything else (an empty tray). Counts its calls.
struct ColourClassifier {
    names: Vec<String>,
    calls: Arc<Mutex<usize>>,
}

impl ColourClassifier {
    fn new() -> Self {
        ColourClassifier { names: CLASSES.iter().map(|s| s.to_string()).collect(), calls: Arc::default() }
    }

    fn probs(&self, img: &RgbImage) -> Vec<f32> {
        let count = |f: &dyn Fn(&Rgb<u8>) -> bool| img.pixels().filter(|p| f(p)).count();
        let green = count(&|p| p.0[1] > p.0[0] + 60 && p.0[1] > p.0[2] + 60);
        let blue = count(&|p| p.0[2] > p.0[0] + 60 && p.0[2] > p.0[1] + 60);
        let class = match (green > 200, blue > 200) {
            (true, _) => "glass",
            (_, true) => "plastic",
            _ => "trash",
        };
        self.names.iter().map(|n| if n == class { 0.9 } else { 0.02 }).collect()
    }
}

impl Classifier for ColourClassifier {
    fn class_names(&self) -> &[String] {
        &self.names
    }
    fn classify(&mut self, images: &[RgbImage]) -> anyhow::Result<Vec<Vec<f32>>> {
        *self.calls.lock().unwrap() += 1;
        Ok(images.iter().map(|img| self.probs(img)).collect())
    }
}

/// What is on the tray in one frame.
#[derive(Clone, Copy)]
enum Scene {
    Empty,
    /// An item of this colour, lying still.
    Item([u8; 3]),
    /// A hand passing over the tray, at step i.
    Hand(u32),
}

// The trigger compares brightness, so the items are darker than the tray.
const GREEN: [u8; 3] = [20, 120, 30];
const BLUE: [u8; 3] = [30, 40, 200];

/// A 160×120 tray: a gradient with grain, flickering light, noise.
fn tray_frame(scene: Scene, i: u32) -> RgbImage {
    let gain = 1.0 + 0.06 * ((i * 7919 % 13) as f32 / 6.0 - 1.0);
    RgbImage::from_fn(160, 120, |x, y| {
        let thing = match scene {
            Scene::Item(rgb) if (60..100).contains(&x) && (40..85).contains(&y) => Some(rgb),
            Scene::Hand(step) if (step * 30..step * 30 + 45).contains(&x) && (30..70).contains(&y) => {
                Some([200, 150, 120])
            }
            _ => None,
        };
        let base = thing.unwrap_or_else(|| {
            let v = 110 + (40 * x / 160) as u8 + 8 * ((y / 6) % 2) as u8;
            [v, v - 5, v - 15]
        });
        let noise = ((x * 31 + y * 17 + i * 101) % 9) as f32 - 4.0;
        Rgb(base.map(|c| (f32::from(c) * gain + noise).clamp(0.0, 255.0) as u8))
    })
}

/// Writes the scenes as `frame_NNN.png` into a new folder; returns its source spec.
fn record(dir: &Path, scenes: &[(Scene, usize)]) -> String {
    let frames = dir.join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    let mut i = 0;
    for &(scene, n) in scenes {
        for _ in 0..n {
            tray_frame(scene, i).save(frames.join(format!("frame_{i:03}.png"))).unwrap();
            i += 1;
        }
    }
    format!("images:{}", frames.display())
}

fn config(dir: &Path, spec: String) -> Config {
    let mut config = Config::default();
    config.source.spec = spec;
    config.trigger.mode = TriggerMode::Motion;
    // the frame numbers below are worked out for N = M = 3
    config.trigger.present_frames = 3;
    config.trigger.still_frames = 3;
    config.decision.frames_per_item = 2;
    config.log.events = dir.join("events.jsonl");
    config.validate().unwrap();
    config
}

/// Runs the loop as `smartbin run` wires it, with the motion trigger.
fn run(
    config: &Config,
    classifier: &mut ColourClassifier,
    actuator: &mut dyn Actuator,
    fill: Option<&mut FillMonitor>,
    clock: Arc<dyn Clock>,
    stop: Arc<AtomicBool>,
) -> Summary {
    let spec = parse_source_spec(&config.source.spec).unwrap();
    let source = open_source(&spec, ReplayOptions::default(), clock.clone()).unwrap();
    let k = config.decision.frames_per_item;
    let mut trigger =
        MotionTrigger::new(source, &config.trigger, k, clock.clone()).unwrap().with_stop_flag(stop.clone());
    let events = EventLog::open(&config.log.events).unwrap();
    let policy = DecisionPolicy::from_config(&config.decision);
    Sorter::new(&mut trigger, classifier, actuator, policy, events, clock)
        .with_stop_flag(stop)
        .with_fill(fill)
        .run()
        .unwrap()
}

fn sim(config: &Config, clock: Arc<dyn Clock>) -> (impl Actuator, SimLog) {
    sim_actuator(&config.actuation, clock).unwrap()
}

fn events(path: &Path) -> Vec<Event> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.lines().map(|l| serde_json::from_str(l).unwrap()).collect(),
        Err(_) => Vec::new(),
    }
}

fn frame_names(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| Path::new(&e.source).file_name().unwrap().to_string_lossy().into_owned()).collect()
}

#[test]
fn an_empty_tray_is_never_classified_or_sorted() {
    let dir = tempfile::tempdir().unwrap();
    let spec = record(dir.path(), &[(Scene::Empty, 40)]);
    let config = config(dir.path(), spec);
    let clock: Arc<dyn Clock> = Arc::new(SimClock::new());
    let (mut actuator, _) = sim(&config, clock.clone());
    let mut classifier = ColourClassifier::new();
    let summary = run(&config, &mut classifier, &mut actuator, None, clock, Arc::default());
    assert_eq!(summary.items, 0);
    assert_eq!(*classifier.calls.lock().unwrap(), 0, "nothing on the tray, nothing classified");
    assert!(events(&config.log.events).is_empty());
}

#[test]
fn each_item_placed_is_sorted_once_and_a_passing_hand_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let spec = record(
        dir.path(),
        &[
            (Scene::Empty, 12),
            (Scene::Item(GREEN), 10), // frames 12..21: taken at 15 and 16
            (Scene::Empty, 5),
            (Scene::Hand(0), 1),
            (Scene::Hand(1), 1),
            (Scene::Hand(2), 1),
            (Scene::Hand(3), 1),
            (Scene::Empty, 5),
            (Scene::Item(BLUE), 8), // frames 36..43: taken at 39 and 40
        ],
    );
    let config = config(dir.path(), spec);
    let clock: Arc<dyn Clock> = Arc::new(SimClock::new());
    let (mut actuator, _) = sim(&config, clock.clone());
    let mut classifier = ColourClassifier::new();
    let summary = run(&config, &mut classifier, &mut actuator, None, clock, Arc::default());
    assert_eq!(summary.items, 2);
    assert_eq!(*classifier.calls.lock().unwrap(), 2);
    let ev = events(&config.log.events);
    assert_eq!(frame_names(&ev), ["frame_015.png", "frame_039.png"]);
    let bins: Vec<&str> = ev.iter().map(|e| e.bin.as_deref().unwrap()).collect();
    assert_eq!(bins, ["glass", "containers"]);
    assert!(ev.iter().all(|e| e.frames == 2));
}

/// Two green items, one after the other.
fn two_glass_items(dir: &Path) -> Config {
    let spec = record(dir, &[(Scene::Empty, 12), (Scene::Item(GREEN), 8), (Scene::Empty, 5), (Scene::Item(GREEN), 8)]);
    let mut config = config(dir, spec);
    config.fill.capacity.insert("glass".into(), 1);
    config
}

#[test]
fn a_full_bin_sends_the_next_item_to_the_overflow_bin() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = two_glass_items(dir.path());
    config.fill.overflow_bin = Some("landfill".into());
    let clock: Arc<dyn Clock> = Arc::new(SimClock::new());
    let (mut actuator, _) = sim(&config, clock.clone());
    let store = LevelStore::new(levels_path(&config.log.events));
    let mut fill = FillMonitor::new(&config.fill, store.clone(), clock.clone()).unwrap();
    let mut classifier = ColourClassifier::new();
    let summary = run(&config, &mut classifier, &mut actuator, Some(&mut fill), clock, Arc::default());
    assert_eq!(summary.items, 2);
    let ev = events(&config.log.events);
    assert_eq!(ev[0].bin.as_deref(), Some("glass"));
    assert_eq!(ev[0].full, None);
    assert_eq!(ev[1].class.as_deref(), Some("glass"));
    assert_eq!(ev[1].bin.as_deref(), Some("landfill"));
    assert_eq!(ev[1].full.as_deref(), Some("glass"));
    assert!(ev[1].reason.as_deref().unwrap().contains("-> overflow landfill"), "{:?}", ev[1].reason);
    let levels = store.load().unwrap();
    assert_eq!((levels.items("glass"), levels.items("landfill")), (1, 1));
}

/// A clock on which the stop flag is raised once `at` of virtual time has passed
/// (a Ctrl-C while the loop waits).
struct StopAt {
    clock: SimClock,
    at: Duration,
    stop: Arc<AtomicBool>,
}

impl Clock for StopAt {
    fn now(&self) -> Instant {
        self.clock.now()
    }
    fn wall(&self) -> SystemTime {
        self.clock.wall()
    }
    fn sleep(&self, d: Duration) {
        self.clock.sleep(d);
        if self.clock.elapsed() >= self.at {
            self.stop.store(true, Ordering::SeqCst);
        }
    }
}

#[test]
fn without_overflow_a_full_bin_holds_the_item_until_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let config = two_glass_items(dir.path());
    let stop = Arc::new(AtomicBool::new(false));
    // the sim servos spend about 7 s on the first item; the hold polls each second
    let clock: Arc<dyn Clock> =
        Arc::new(StopAt { clock: SimClock::new(), at: Duration::from_secs(60), stop: stop.clone() });
    let (mut actuator, log) = sim(&config, clock.clone());
    let store = LevelStore::new(levels_path(&config.log.events));
    let mut fill = FillMonitor::new(&config.fill, store, clock.clone()).unwrap();
    let mut classifier = ColourClassifier::new();
    let summary = run(&config, &mut classifier, &mut actuator, Some(&mut fill), clock.clone(), stop);
    assert!(summary.stopped);
    assert_eq!((summary.items, summary.errors), (1, 1));
    let ev = events(&config.log.events);
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[1].full.as_deref(), Some("glass"));
    assert_eq!(ev[1].bin, None, "not routed: it is still on the tray");
    assert!(ev[1].moves.is_empty());
    assert!(ev[1].error.as_deref().unwrap().contains("stopped while the item waited"), "{:?}", ev[1].error);
    // the hold lasted until the stop, and no servo moved during it
    let last_move = log.records().last().unwrap().at;
    assert!(clock.now().duration_since(last_move) < Duration::from_secs(5), "servos homed at the end only");
}

#[test]
fn the_interlock_keeps_the_servos_still_while_the_lid_is_open() {
    use embedded_hal_mock::eh1::digital::{Mock, State, Transaction};
    let dir = tempfile::tempdir().unwrap();
    let spec = record(dir.path(), &[(Scene::Empty, 12), (Scene::Item(GREEN), 6)]);
    let config = config(dir.path(), spec);
    let sim_clock = Arc::new(SimClock::new());
    let clock: Arc<dyn Clock> = sim_clock.clone();
    // closed for the first homing; open for a second (50 polls of 20 ms) when
    // the item comes; closed again for the route and the final homing
    let mut reads = vec![Transaction::get(State::Low)];
    reads.extend(vec![Transaction::get(State::High); 50]);
    reads.extend(vec![Transaction::get(State::Low); 2]);
    let mut pin = Mock::new(&reads);
    let (sim_actuator, log) = sim(&config, clock.clone());
    let mut actuator = Interlock::new(sim_actuator, pin.clone(), 17, Level::High, Duration::ZERO, clock.clone());
    let mut classifier = ColourClassifier::new();
    let summary = run(&config, &mut classifier, &mut actuator, None, clock, Arc::default());
    assert_eq!(summary.items, 1);
    pin.done();
    // between the homing's last pulse (and its 400 ms settle) and the route's
    // first, the servos waited a second for the lid
    let records = log.records();
    let longest_gap = records.windows(2).map(|w| w[1].at.duration_since(w[0].at)).max().unwrap();
    assert!(longest_gap >= Duration::from_millis(1_400), "{longest_gap:?}");
    assert!(sim_clock.elapsed() > Duration::from_secs(1));
}

#[test]
fn bins_cli_shows_and_resets_levels() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let store = LevelStore::new(levels_path(&events));
    for _ in 0..3 {
        store.add_item("glass").unwrap();
    }
    let bins = |args: &[&str]| {
        let out = common::smartbin()
            .arg("bins")
            .args(args)
            .arg("--events")
            .arg(&events)
            .current_dir(dir.path())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = bins(&[]);
    assert!(ok, "{err}");
    let glass = out.lines().find(|l| l.starts_with("glass")).unwrap();
    assert_eq!(glass.split_whitespace().nth(1), Some("3"), "{out}");
    let (ok, _, err) = bins(&["reset", "compost"]);
    assert!(!ok && err.contains("no bin named `compost`"), "{err}");
    let (ok, out, err) = bins(&["reset", "glass"]);
    assert!(ok, "{err}");
    assert!(out.contains("bin glass emptied (was 3 items)"), "{out}");
    assert_eq!(store.load().unwrap().items("glass"), 0);
    let (ok, _, _) = bins(&["reset"]);
    assert!(!ok, "a bin name or --all is required");
}
