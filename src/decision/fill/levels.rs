//! The bin level file: items counted into each bin since it was last emptied.
//!
//! A small JSON file next to the event log (`bin-levels.json`), rewritten
//! atomically after every item, so a power cut leaves either the old or the new
//! count. Both the run loop and `smartbin bins reset` write it; each update reads
//! the file first, so a reset made while the bin runs is not overwritten.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name of the level file, in the event log's folder.
pub const LEVELS_FILE: &str = "bin-levels.json";

/// Where the level file lives for an event log.
pub fn levels_path(events: &Path) -> PathBuf {
    match events.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(LEVELS_FILE),
        _ => PathBuf::from(LEVELS_FILE),
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Levels {
    pub bins: BTreeMap<String, BinLevel>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BinLevel {
    /// Items routed to the bin since it was emptied.
    pub items: u64,
    /// When it was last reset (RFC 3339), if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emptied: Option<String>,
}

impl Levels {
    pub fn items(&self, bin: &str) -> u64 {
        self.bins.get(bin).map_or(0, |b| b.items)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LevelsError {
    #[error("bin level file {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "bin level file {} is not valid ({reason}); fix it, or run `smartbin bins reset --all` to start counting again",
        path.display()
    )]
    Corrupt { path: PathBuf, reason: String },
}

/// Reads and writes one level file.
#[derive(Debug, Clone)]
pub struct LevelStore {
    path: PathBuf,
}

impl LevelStore {
    pub fn new(path: PathBuf) -> Self {
        LevelStore { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The levels; all zero when the file does not exist yet.
    pub fn load(&self) -> Result<Levels, LevelsError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Levels::default()),
            Err(source) => return Err(LevelsError::Io { path: self.path.clone(), source }),
        };
        serde_json::from_str(&text).map_err(|e| LevelsError::Corrupt { path: self.path.clone(), reason: e.to_string() })
    }

    pub fn save(&self, levels: &Levels) -> Result<(), LevelsError> {
        let mut text = serde_json::to_string_pretty(levels).expect("levels serialise");
        text.push('\n');
        crate::util::write_atomic(&self.path, text.as_bytes())
            .map_err(|source| LevelsError::Io { path: self.path.clone(), source })
    }

    /// Counts one item into `bin`; returns its new count.
    pub fn add_item(&self, bin: &str) -> Result<u64, LevelsError> {
        let mut levels = self.load()?;
        let level = levels.bins.entry(bin.to_string()).or_default();
        level.items += 1;
        let items = level.items;
        self.save(&levels)?;
        Ok(items)
    }

    /// Marks `bins` as emptied at `when`. With `all`, every bin in the file is
    /// reset too, and a damaged file is replaced.
    pub fn reset(&self, bins: &[String], all: bool, when: &str) -> Result<(), LevelsError> {
        let mut levels = match self.load() {
            Ok(levels) => levels,
            Err(LevelsError::Corrupt { .. }) if all => Levels::default(),
            Err(e) => return Err(e),
        };
        let mut names: Vec<String> = bins.to_vec();
        if all {
            names.extend(levels.bins.keys().cloned());
        }
        for bin in names {
            levels.bins.insert(bin, BinLevel { items: 0, emptied: Some(when.to_string()) });
        }
        self.save(&levels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_sits_next_to_the_event_log() {
        assert_eq!(
            levels_path(Path::new("/var/lib/smartbin/events.jsonl")),
            Path::new("/var/lib/smartbin/bin-levels.json")
        );
        assert_eq!(levels_path(Path::new("events.jsonl")), Path::new("bin-levels.json"));
    }

    #[test]
    fn counts_persist_and_reset() {
        let dir = tempfile::tempdir().unwrap();
        let store = LevelStore::new(dir.path().join("bin-levels.json"));
        assert_eq!(store.load().unwrap(), Levels::default(), "no file = empty bins");
        assert_eq!(store.add_item("glass").unwrap(), 1);
        assert_eq!(store.add_item("glass").unwrap(), 2);
        store.add_item("paper").unwrap();
        // another process (the CLI) reads the same file
        let other = LevelStore::new(store.path().to_path_buf());
        assert_eq!(other.load().unwrap().items("glass"), 2);
        other.reset(&["glass".into()], false, "2024-01-01T00:00:00.000Z").unwrap();
        let levels = store.load().unwrap();
        assert_eq!((levels.items("glass"), levels.items("paper")), (0, 1));
        assert_eq!(levels.bins["glass"].emptied.as_deref(), Some("2024-01-01T00:00:00.000Z"));
        assert_eq!(store.add_item("glass").unwrap(), 1, "counting starts again");
        other.reset(&[], true, "later").unwrap();
        assert_eq!(store.load().unwrap().items("paper"), 0);
    }

    #[test]
    fn a_damaged_file_is_an_error_that_reset_all_repairs() {
        let dir = tempfile::tempdir().unwrap();
        let store = LevelStore::new(dir.path().join("bin-levels.json"));
        std::fs::write(store.path(), "{ not json").unwrap();
        let err = store.add_item("glass").unwrap_err();
        assert!(err.to_string().contains("reset --all"), "{err}");
        assert!(store.reset(&["glass".into()], false, "t").is_err());
        store.reset(&["glass".into()], true, "t").unwrap();
        assert_eq!(store.load().unwrap().items("glass"), 0);
    }
}
