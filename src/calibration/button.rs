//! `[calibration] wrong_button`: a push button on the bin meaning "the last
//! item went to the wrong bin". A press files the last item's kept frame under
//! `<dataset>/to-label/` and logs it in `corrections.jsonl`; `smartbin correct
//! ID CLASS` later gives it its class (and `smartbin correct --pending` lists
//! what waits for one).
//!
//! The button is read on its own thread, so a press is seen whatever the sort
//! loop is doing. The item it means is the newest kept frame: saved before the
//! item is classified, so a press while the servos still move finds it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use embedded_hal::digital::InputPin;

use crate::config::Level;

/// Folder of the dataset holding frames marked wrong that await a class.
pub const TO_LABEL: &str = "to-label";
/// How often the button is read.
const POLL: Duration = Duration::from_millis(10);

/// Turns raw readings into one press per push: the button must read pressed
/// for `hold`, and be released before it counts again.
#[derive(Debug)]
pub struct Debounce {
    hold: Duration,
    pressed_since: Option<Instant>,
    fired: bool,
}

impl Debounce {
    pub fn new(hold: Duration) -> Self {
        Debounce { hold, pressed_since: None, fired: false }
    }

    /// Feeds one reading; true exactly once per debounced press.
    pub fn update(&mut self, pressed: bool, now: Instant) -> bool {
        if !pressed {
            self.pressed_since = None;
            self.fired = false;
            return false;
        }
        let since = *self.pressed_since.get_or_insert(now);
        if !self.fired && now.duration_since(since) >= self.hold {
            self.fired = true;
            return true;
        }
        false
    }
}

/// The frame a press marked, and where it went.
#[derive(Debug, Clone, PartialEq)]
pub struct Marked {
    pub event: u64,
    pub class: Option<String>,
    pub copy: PathBuf,
}

/// Files the newest item's frame under `<dataset>/to-label/`. The newest kept
/// frame is the item being routed or the last one routed: its event is only
/// logged once the servos are home, and a press usually comes before that.
pub fn mark_last_wrong(events: &Path, frames: &Path, dataset: &Path) -> anyhow::Result<Marked> {
    let id = newest_frame(frames)?.with_context(|| format!("no kept frame in {} yet", frames.display()))?;
    let frame = crate::sorter::frames::FrameStore::path(frames, id);
    let bytes = std::fs::read(&frame).with_context(|| format!("reading {}", frame.display()))?;
    let copy = dataset.join(TO_LABEL).join(format!("event-{id}.jpg"));
    crate::util::write_atomic(&copy, &bytes).with_context(|| format!("writing {}", copy.display()))?;
    // Not logged yet while the item is still being routed.
    let class = crate::sorter::events::find_event(events, id).ok().flatten().and_then(|e| e.class);
    let line = serde_json::json!({
        "event": id,
        "time": crate::sorter::events::rfc3339_utc(std::time::SystemTime::now()),
        "was": class,
        "now": null,
        "frame": copy.display().to_string(),
    });
    append_line(&dataset.join("corrections.jsonl"), &line.to_string())?;
    Ok(Marked { event: id, class, copy })
}

/// The highest event id with a kept frame in `frames`.
fn newest_frame(frames: &Path) -> anyhow::Result<Option<u64>> {
    let entries = std::fs::read_dir(frames).with_context(|| format!("listing {}", frames.display()))?;
    Ok(entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".jpg")?.parse().ok())
        .max())
}

/// Appends one line and syncs it.
pub fn append_line(path: &Path, line: &str) -> anyhow::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.write_all(format!("{line}\n").as_bytes())?;
    file.sync_data()?;
    Ok(())
}

/// Reads the button until `stop` is raised; each press marks the last item.
pub fn watch<P: InputPin + Send + 'static>(
    mut pin: P,
    pressed_level: Level,
    hold: Duration,
    events: PathBuf,
    frames: PathBuf,
    dataset: PathBuf,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut debounce = Debounce::new(hold);
        let mut failing = false;
        while !stop.load(Ordering::Relaxed) {
            let reading = match pressed_level {
                Level::High => pin.is_high(),
                Level::Low => pin.is_low(),
            };
            match reading {
                Ok(pressed) => {
                    failing = false;
                    if debounce.update(pressed, Instant::now()) {
                        match mark_last_wrong(&events, &frames, &dataset) {
                            Ok(m) => log::warn!(
                                "wrong-bin button: event {} ({}) filed as {} for `smartbin correct {} CLASS`",
                                m.event,
                                m.class.as_deref().unwrap_or("unclassified"),
                                m.copy.display(),
                                m.event
                            ),
                            Err(e) => log::error!("wrong-bin button pressed, but: {e:#}"),
                        }
                    }
                }
                Err(e) if !failing => {
                    failing = true;
                    log::error!("wrong-bin button: cannot read the pin: {e:?}");
                }
                Err(_) => {}
            }
            std::thread::sleep(POLL);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_press_per_push_after_the_hold_time() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut d = Debounce::new(Duration::from_millis(30));
        // a 10 ms bounce does not count
        assert!(!d.update(true, ms(0)));
        assert!(!d.update(false, ms(10)));
        // held: fires once, not again while held
        assert!(!d.update(true, ms(20)));
        assert!(d.update(true, ms(55)));
        assert!(!d.update(true, ms(200)));
        // released and pushed again: fires again
        assert!(!d.update(false, ms(210)));
        assert!(!d.update(true, ms(220)));
        assert!(d.update(true, ms(260)));
    }

    #[test]
    fn a_press_files_the_newest_items_frame_even_before_it_is_logged() {
        let dir = tempfile::tempdir().unwrap();
        let frames = dir.path().join("frames");
        std::fs::create_dir_all(&frames).unwrap();
        std::fs::write(frames.join("7.jpg"), b"item 7").unwrap();
        std::fs::write(frames.join("8.jpg"), b"item 8").unwrap();
        std::fs::write(frames.join("notes.txt"), b"x").unwrap();
        let events = dir.path().join("events.jsonl");
        // item 8 is still being routed: only 7 is logged
        std::fs::write(&events, r#"{"id":7,"time":"t","source":"cam","class":"glass","bin":"glass"}"#.to_string() + "\n").unwrap();
        let dataset = dir.path().join("captures");
        let marked = mark_last_wrong(&events, &frames, &dataset).unwrap();
        assert_eq!((marked.event, marked.class.as_deref()), (8, None));
        assert_eq!(std::fs::read(dataset.join("to-label/event-8.jpg")).unwrap(), b"item 8");
        std::fs::remove_file(frames.join("8.jpg")).unwrap();
        let marked = mark_last_wrong(&events, &frames, &dataset).unwrap();
        assert_eq!((marked.event, marked.class.as_deref()), (7, Some("glass")));
        let log = std::fs::read_to_string(dataset.join("corrections.jsonl")).unwrap();
        assert_eq!(log.lines().count(), 2);
        assert!(log.contains(r#""now":null"#), "{log}");
    }
}
