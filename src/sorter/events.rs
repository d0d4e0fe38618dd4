//! The event log: one JSON line per item, appended and synced to disk before the
//! next item, so a crash or power cut loses nothing already decided.
//!
//! Ids are consecutive integers that continue across restarts: opening an existing
//! log reads the last id in it.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::actuation::ServoMove;

/// One line of the event log. Items that were routed have `class` .. `bin` set; a
/// frame that could not be read has only `source` and `error`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Event {
    pub id: u64,
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    /// Origin of the item's first frame (file path or camera name).
    pub source: String,
    /// Number of frames classified for the item (left out for unreadable frames).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub frames: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top3: Vec<(String, f32)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A bin that was full when the item came: the item went to `bin` (the
    /// overflow) instead, or waited until it was emptied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_ms: Option<f64>,
    /// From frames in hand to servos back home. With simulated servos on virtual
    /// time (`run` without `--realtime`) their settle and dwell waits are not in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moves: Vec<ServoMove>,
    /// The item's first frame, kept under `[log] frames`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// An append-only JSON-lines file.
pub struct EventLog {
    path: PathBuf,
    file: File,
    next_id: u64,
}

/// How much of the end of an existing log is read to find the last id. Lines are a
/// few hundred bytes, so this holds many; only a log ending in garbage longer than
/// this is read in full.
const TAIL_BYTES: u64 = 64 * 1024;

impl EventLog {
    /// Opens (creating it and its folder if needed) a log for appending.
    pub fn open(path: &Path) -> anyhow::Result<EventLog> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating folder for event log {}", dir.display()))?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening event log {}", path.display()))?;
        let next_id = last_id(&mut file)
            .with_context(|| format!("reading event log {}", path.display()))?
            .map_or(1, |id| id + 1);
        end_with_newline(&mut file)
            .with_context(|| format!("repairing event log {}", path.display()))?;
        Ok(EventLog { path: path.to_path_buf(), file, next_id })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The id the next appended event will get.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Gives `event` the next id, appends it as one line and syncs the file.
    pub fn append(&mut self, event: &mut Event) -> anyhow::Result<u64> {
        event.id = self.next_id;
        let mut line = serde_json::to_string(event).context("serialising event")?;
        line.push('\n');
        // One write call per line: a crash leaves at most one partial last line,
        // which `open` repairs.
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .and_then(|_| self.file.sync_data())
            .with_context(|| format!("writing event log {}", self.path.display()))?;
        self.next_id += 1;
        Ok(event.id)
    }
}

/// The event with `id` in the log at `path`, if there is one. Reads the whole
/// log: for the occasional lookup (`smartbin correct`, the wrong-bin button).
pub fn find_event(path: &Path, id: u64) -> anyhow::Result<Option<Event>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the event log {}", path.display()))?;
    Ok(text.lines().rev().filter_map(|line| serde_json::from_str::<Event>(line).ok()).find(|e| e.id == id))
}

/// Largest `id` in the log, looking at the end first.
fn last_id(file: &mut File) -> std::io::Result<Option<u64>> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(None);
    }
    let start = len.saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    file.take(TAIL_BYTES).read_to_end(&mut tail)?;
    let text = String::from_utf8_lossy(&tail);
    // The first line of the tail may be cut in half: it simply fails to parse.
    if let Some(id) = text.lines().rev().find_map(line_id) {
        return Ok(Some(id));
    }
    file.seek(SeekFrom::Start(0))?;
    let mut max = None;
    for line in BufReader::new(&mut *file).split(b'\n') {
        let line = line?;
        if let Some(id) = line_id(&String::from_utf8_lossy(&line)) {
            max = max.max(Some(id));
        }
    }
    Ok(max)
}

fn line_id(line: &str) -> Option<u64> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: u64,
    }
    serde_json::from_str::<IdOnly>(line).ok().map(|e| e.id)
}

/// A crash mid-write can leave a last line without its newline; start the next
/// event on a fresh line so it stays parseable.
fn end_with_newline(file: &mut File) -> std::io::Result<()> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    file.seek(SeekFrom::Start(len - 1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    if last[0] != b'\n' {
        file.write_all(b"\n")?;
    }
    Ok(())
}

/// RFC 3339 UTC timestamp with milliseconds, e.g. `2023-11-14T22:13:20.000Z`.
/// Times before 1970 (a board with no RTC and no network) print as the epoch.
pub fn rfc3339_utc(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = |s: u64, ms: u64| rfc3339_utc(UNIX_EPOCH + Duration::from_millis(s * 1000 + ms));
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(1_700_000_000, 5), "2023-11-14T22:13:20.005Z");
        assert_eq!(at(951_782_400, 0), "2000-02-29T00:00:00.000Z"); // leap day
        assert_eq!(at(4_102_444_799, 999), "2099-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_utc(UNIX_EPOCH - Duration::from_secs(5)), "1970-01-01T00:00:00.000Z");
    }

    fn read_lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn ids_continue_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/events.jsonl");
        let mut log = EventLog::open(&path).unwrap();
        assert_eq!(log.append(&mut Event::default()).unwrap(), 1);
        assert_eq!(log.append(&mut Event::default()).unwrap(), 2);
        drop(log);
        let mut log = EventLog::open(&path).unwrap();
        assert_eq!(log.next_id(), 3);
        log.append(&mut Event { source: "x.jpg".into(), ..Event::default() }).unwrap();
        let ids: Vec<u64> = read_lines(&path).iter().map(|v| v["id"].as_u64().unwrap()).collect();
        assert_eq!(ids, [1, 2, 3]);
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_fenced_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "{\"id\":41,\"time\":\"t\",\"source\":\"a\"}\n{\"id\":42,\"ti").unwrap();
        let mut log = EventLog::open(&path).unwrap();
        assert_eq!(log.append(&mut Event::default()).unwrap(), 42);
        let text = std::fs::read_to_string(&path).unwrap();
        let last = text.lines().last().unwrap();
        assert_eq!(serde_json::from_str::<Event>(last).unwrap().id, 42);
    }

    #[test]
    fn the_id_is_found_even_beyond_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let garbage = "x".repeat(TAIL_BYTES as usize + 10);
        std::fs::write(&path, format!("{{\"id\":7}}\n{garbage}\n")).unwrap();
        assert_eq!(EventLog::open(&path).unwrap().next_id(), 8);
    }

    #[test]
    fn optional_fields_are_left_out() {
        let e = Event { id: 3, time: "t".into(), source: "bad.jpg".into(), error: Some("corrupt".into()), ..Event::default() };
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        keys.sort();
        assert_eq!(keys, ["error", "id", "source", "time"]);
    }
}
