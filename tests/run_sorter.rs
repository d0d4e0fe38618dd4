//! The whole run loop through the library API: real image files, the real config
//! defaults, simulated servos and a fake classifier that reads an image's colour.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use embedded_hal::pwm::{ErrorType, SetDutyCycle};
use smartbin::actuation::servo::pulse_us;
use smartbin::actuation::{sim_actuator, Actuator, ServoActuator, SimLog};
use smartbin::clock::SimClock;
use smartbin::clock::Clock;
use smartbin::config::Config;
use smartbin::decision::DecisionPolicy;
use smartbin::model::Classifier;
use smartbin::sorter::{install_stop_signals, Event, EventLog, Sorter, Summary};
use smartbin::source::{open_source, parse_source_spec, ReplayOptions, ReplayTrigger};

const CLASSES: [&str; 6] = ["cardboard", "glass", "metal", "paper", "plastic", "trash"];

/// Classifies by mean colour: red -> paper, green -> glass, blue -> plastic, all
/// 0.9 sure; grey -> glass at 0.3 (too unsure). Optionally raises a stop flag on
/// its n-th call, like a signal arriving mid-item.
struct ColourClassifier {
    names: Vec<String>,
    calls: usize,
    stop_on_call: Option<(usize, Arc<AtomicBool>)>,
}

impl ColourClassifier {
    fn new() -> Self {
        ColourClassifier { names: CLASSES.iter().map(|s| s.to_string()).collect(), calls: 0, stop_on_call: None }
    }

    fn probs(&self, img: &image::RgbImage) -> Vec<f32> {
        let n = f64::from(img.width() * img.height());
        let mean = |c: usize| img.pixels().map(|p| f64::from(p.0[c])).sum::<f64>() / n;
        let (r, g, b) = (mean(0), mean(1), mean(2));
        let (class, p) = if r > g + 60.0 && r > b + 60.0 {
            ("paper", 0.9)
        } else if g > r + 60.0 && g > b + 60.0 {
            ("glass", 0.9)
        } else if b > r + 60.0 && b > g + 60.0 {
            ("plastic", 0.9)
        } else {
            ("glass", 0.3)
        };
        let rest = (1.0 - p) / 5.0;
        self.names.iter().map(|n| if n == class { p } else { rest }).collect()
    }
}

impl Classifier for ColourClassifier {
    fn class_names(&self) -> &[String] {
        &self.names
    }
    fn classify(&mut self, images: &[image::RgbImage]) -> anyhow::Result<Vec<Vec<f32>>> {
        self.calls += 1;
        if let Some((n, flag)) = &self.stop_on_call {
            if *n == self.calls {
                flag.store(true, Ordering::SeqCst);
            }
        }
        Ok(images.iter().map(|img| self.probs(img)).collect())
    }
}

/// A folder of test images and a config pointing at it.
struct Bench {
    _dir: tempfile::TempDir,
    config: Config,
}

fn solid(dir: &Path, name: &str, rgb: [u8; 3], format: image::ImageFormat) {
    image::RgbImage::from_pixel(16, 16, image::Rgb(rgb))
        .save_with_format(dir.join(name), format)
        .unwrap();
}

/// 01 red, 02 green, 03 blue, 04 grey (unsure), 05 corrupt, 06 red, plus a text file.
fn bench() -> Bench {
    use image::ImageFormat::{Jpeg, Png};
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    solid(&images, "01_red.jpg", [220, 30, 30], Jpeg);
    solid(&images, "02_green.jpg", [30, 220, 30], Jpeg);
    solid(&images, "03_blue.JPG", [30, 30, 220], Jpeg);
    solid(&images, "04_grey.png", [128, 128, 128], Png);
    std::fs::write(images.join("05_corrupt.jpg"), b"\xff\xd8\xff\xe0 this is not a jpeg").unwrap();
    solid(&images, "06_red.jpeg", [200, 40, 40], Jpeg);
    std::fs::write(images.join("readme.txt"), "ignored").unwrap();
    let mut config = Config::default();
    config.source.spec = format!("images:{}", images.display());
    config.log.events = dir.path().join("log/events.jsonl");
    config.validate().unwrap();
    Bench { _dir: dir, config }
}

/// Runs the loop as `smartbin run` wires it, with the sim backend on a sim clock.
fn run_sorter(
    config: &Config,
    classifier: &mut dyn Classifier,
    stop: Arc<AtomicBool>,
    max_items: Option<u64>,
) -> (anyhow::Result<Summary>, SimLog) {
    let clock: Arc<dyn Clock> = Arc::new(SimClock::new());
    let (mut actuator, record) = sim_actuator(&config.actuation, clock.clone()).unwrap();
    let summary = run_with(config, classifier, &mut actuator, clock, stop, max_items);
    (summary, record)
}

fn run_with(
    config: &Config,
    classifier: &mut dyn Classifier,
    actuator: &mut dyn Actuator,
    clock: Arc<dyn Clock>,
    stop: Arc<AtomicBool>,
    max_items: Option<u64>,
) -> anyhow::Result<Summary> {
    let spec = parse_source_spec(&config.source.spec).unwrap();
    let options = ReplayOptions { looped: config.source.looped, rate_hz: config.source.rate_hz };
    let mut trigger = ReplayTrigger::new(open_source(&spec, options, clock.clone()).unwrap());
    let events = EventLog::open(&config.log.events).unwrap();
    let policy = DecisionPolicy::from_config(&config.decision);
    Sorter::new(&mut trigger, classifier, actuator, policy, events, clock)
        .with_stop_flag(stop)
        .with_max_items(max_items)
        .run()
}

fn read_events(path: &Path) -> Vec<Event> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l}: {e}")))
        .collect()
}

fn file_name(origin: &str) -> String {
    Path::new(origin).file_name().unwrap().to_string_lossy().into_owned()
}

/// Every pulse the sim received lies inside its servo's configured limits.
fn assert_pulses_within_limits(config: &Config, record: &SimLog) {
    let records = record.records();
    assert!(!records.is_empty());
    for r in &records {
        let servo = config.actuation.servos.iter().find(|s| s.name == r.servo).unwrap();
        let pulse = r.pulse_us();
        assert!(
            pulse >= f64::from(servo.min_us) && pulse <= f64::from(servo.max_us),
            "{} got {pulse} µs, limits {}..={}",
            r.servo,
            servo.min_us,
            servo.max_us
        );
    }
}

/// The last pulse each servo received is its home pulse (to within one PWM step).
fn assert_servos_home(config: &Config, record: &SimLog) {
    let records = record.records();
    for servo in &config.actuation.servos {
        let last = records.iter().rev().find(|r| r.servo == servo.name).expect("servo never moved");
        let step = smartbin::actuation::PERIOD_US / f64::from(last.max_duty);
        let home = pulse_us(servo, servo.home);
        assert!(
            (last.pulse_us() - home).abs() <= step / 2.0 + 1e-9,
            "{} ended at {} µs, home is {home} µs",
            servo.name,
            last.pulse_us()
        );
    }
}

#[test]
fn sorts_every_good_image_once_and_skips_the_corrupt_one() {
    let bench = bench();
    let mut classifier = ColourClassifier::new();
    let (summary, record) =
        run_sorter(&bench.config, &mut classifier, Arc::new(AtomicBool::new(false)), None);
    let summary = summary.expect("the loop ends cleanly at the end of the folder");

    let expected_bins: BTreeMap<String, u64> =
        [("paper", 2), ("glass", 1), ("containers", 1), ("landfill", 1)]
            .iter()
            .map(|(b, n)| (b.to_string(), *n))
            .collect();
    assert_eq!(summary.per_bin, expected_bins);
    assert_eq!((summary.items, summary.bad_frames, summary.errors), (5, 1, 0));
    assert!(!summary.stopped);

    let events = read_events(&bench.config.log.events);
    let names: Vec<String> = events.iter().map(|e| file_name(&e.source)).collect();
    assert_eq!(
        names,
        ["01_red.jpg", "02_green.jpg", "03_blue.JPG", "04_grey.png", "05_corrupt.jpg", "06_red.jpeg"],
        "one event per image file, in name order, none for readme.txt"
    );
    assert_eq!(events.iter().map(|e| e.id).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6]);

    // bins follow the default mapping
    let routed: Vec<(Option<&str>, Option<&str>)> =
        events.iter().map(|e| (e.class.as_deref(), e.bin.as_deref())).collect();
    assert_eq!(
        routed,
        [
            (Some("paper"), Some("paper")),
            (Some("glass"), Some("glass")),
            (Some("plastic"), Some("containers")),
            (Some("glass"), Some("landfill")),
            (None, None),
            (Some("paper"), Some("paper")),
        ]
    );
    assert_eq!(events[2].reason.as_deref(), Some("mapped: plastic -> containers"));
    // low confidence goes to the fallback, saying why
    assert_eq!(
        events[3].reason.as_deref(),
        Some("confidence 0.30 < threshold 0.50 (glass); fallback -> landfill")
    );
    assert_eq!(events[3].top3.len(), 3);

    // the corrupt file is reported and skipped: no class, no moves
    let bad = &events[4];
    assert!(bad.error.as_deref().unwrap().starts_with("bad frame"), "{bad:?}");
    assert!(bad.moves.is_empty());
    assert!(events.iter().filter(|e| e.error.is_some()).count() == 1);

    // each routed item: chute and flap out, flap and chute home
    for e in events.iter().filter(|e| e.bin.is_some()) {
        let servos: Vec<&str> = e.moves.iter().map(|m| m.servo.as_str()).collect();
        assert_eq!(servos, ["chute", "flap", "flap", "chute"], "{e:?}");
        assert!(e.time.ends_with('Z') && e.time.starts_with("2023-11-14T22:"), "{}", e.time);
        assert_eq!(e.model_ms, Some(0.0), "the sim clock only moves when slept on");
        // 4 moves * settle 400 ms + dwell 800 ms, on the sim clock
        assert_eq!(e.total_ms, Some(2400.0));
    }
    // the chute angle in the log is the configured bin angle
    assert_eq!(events[1].moves[0].angle, 67.5);

    assert_pulses_within_limits(&bench.config, &record);
    assert_servos_home(&bench.config, &record);
    // home at start + 5 routes * 4 moves + home at end
    assert_eq!(record.records().len(), 2 + 5 * 4 + 2);
}

#[test]
fn ids_continue_when_the_bin_restarts_on_the_same_log() {
    let bench = bench();
    let stop = Arc::new(AtomicBool::new(false));
    let (first, _) = run_sorter(&bench.config, &mut ColourClassifier::new(), stop.clone(), Some(2));
    assert_eq!(first.unwrap().items, 2);
    let (second, _) = run_sorter(&bench.config, &mut ColourClassifier::new(), stop, Some(1));
    assert_eq!(second.unwrap().items, 1);
    let events = read_events(&bench.config.log.events);
    assert_eq!(events.iter().map(|e| e.id).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(file_name(&events[2].source), "01_red.jpg", "a new run replays from the start");
}

#[test]
fn the_stop_flag_finishes_the_current_item_then_homes() {
    let bench = bench();
    let stop = Arc::new(AtomicBool::new(false));
    let mut classifier = ColourClassifier::new();
    classifier.stop_on_call = Some((2, stop.clone()));
    let (summary, record) = run_sorter(&bench.config, &mut classifier, stop, None);
    let summary = summary.unwrap();
    assert!(summary.stopped);
    assert_eq!(summary.items, 2, "the item being classified when the stop came is still sorted");

    let events = read_events(&bench.config.log.events);
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].bin.as_deref(), Some("glass"));
    assert_eq!(events[1].moves.len(), 4, "its move sequence was completed");
    assert_pulses_within_limits(&bench.config, &record);
    assert_servos_home(&bench.config, &record);
}

#[test]
fn sigterm_raises_the_stop_flag_and_the_loop_exits_at_once() {
    let bench = bench();
    let stop = Arc::new(AtomicBool::new(false));
    install_stop_signals(&stop).unwrap();
    signal_hook::low_level::raise(signal_hook::consts::SIGTERM).unwrap();
    assert!(stop.load(Ordering::SeqCst), "handler sets the flag instead of killing us");

    let (summary, record) = run_sorter(&bench.config, &mut ColourClassifier::new(), stop, None);
    let summary = summary.unwrap();
    assert!(summary.stopped);
    assert_eq!(summary.items, 0);
    assert!(read_events(&bench.config.log.events).is_empty());
    assert_servos_home(&bench.config, &record);
}

/// A PWM channel that fails its `fail_at`-th duty change, recording the others.
struct FlakyPwm {
    sent: Arc<std::sync::Mutex<Vec<u16>>>,
    calls: usize,
    fail_at: Option<usize>,
}

impl ErrorType for FlakyPwm {
    type Error = embedded_hal::pwm::ErrorKind;
}

impl SetDutyCycle for FlakyPwm {
    fn max_duty_cycle(&self) -> u16 {
        20_000
    }
    fn set_duty_cycle(&mut self, duty: u16) -> Result<(), Self::Error> {
        self.calls += 1;
        if Some(self.calls) == self.fail_at {
            return Err(embedded_hal::pwm::ErrorKind::Other);
        }
        self.sent.lock().unwrap().push(duty);
        Ok(())
    }
}

#[test]
fn a_failing_servo_is_named_in_the_event_and_the_next_item_is_sorted() {
    let bench = bench();
    let flap_sent = Arc::new(std::sync::Mutex::new(Vec::new()));
    let chute = FlakyPwm { sent: Arc::default(), calls: 0, fail_at: None };
    // flap call 1 = home at start, call 2 = tipping for the first item: fails
    let flap = FlakyPwm { sent: flap_sent.clone(), calls: 0, fail_at: Some(2) };
    let clock: Arc<dyn Clock> = Arc::new(SimClock::new());
    let mut actuator = ServoActuator::new(&bench.config.actuation, vec![chute, flap], clock.clone()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let summary = run_with(&bench.config, &mut ColourClassifier::new(), &mut actuator, clock, stop, Some(2))
        .unwrap();
    assert_eq!((summary.items, summary.errors), (2, 1));

    let events = read_events(&bench.config.log.events);
    assert_eq!(events.len(), 2, "the failed item still has its event");
    let failed = &events[0];
    assert_eq!(failed.bin.as_deref(), Some("paper"));
    assert!(failed.error.as_deref().unwrap().starts_with("servo flap:"), "{failed:?}");
    let servos: Vec<&str> = failed.moves.iter().map(|m| m.servo.as_str()).collect();
    assert_eq!(servos, ["chute", "flap", "chute"], "chute out, then recovery homing");
    assert!(events[1].error.is_none());
    assert_eq!(events[1].moves.len(), 4);
    // the flap never got a pulse outside 1000..=2000 µs and ended home (1000 µs)
    let sent = flap_sent.lock().unwrap();
    assert!(sent.iter().all(|d| (1000..=2000).contains(d)), "{sent:?}");
    assert_eq!(sent.last(), Some(&1000));
}
