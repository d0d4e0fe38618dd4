//! `smartbin calibrate`: fitting a fresh install to its bin — servo limits and
//! poses ([`servos`]), the camera's view of the empty tray ([`camera`]), and the
//! classifier adapted to this bin's items and light ([`adapt`]).
//!
//! Calibration never leaves the bin unusable: what it stores is written with
//! [`save_with_backup`] (the previous file kept as `FILE.bak`, the new one
//! written atomically), and nothing is written before the user saves.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::config::{ActuationConfig, Config};

pub mod adapt;
pub mod button;
pub mod camera;
pub mod servos;

/// `FILE.bak` beside `path`.
pub fn backup_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".bak");
    path.with_file_name(name)
}

/// Writes `bytes` to `path` atomically after copying the current file (if any)
/// to `FILE.bak`, also atomically. Either step failing leaves `path` as it was.
pub fn save_with_backup(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if path.exists() {
        let old = std::fs::read(path).with_context(|| format!("reading {} to back it up", path.display()))?;
        let backup = backup_path(path);
        crate::util::write_atomic(&backup, &old).with_context(|| format!("writing {}", backup.display()))?;
    }
    crate::util::write_atomic(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// `text` (a config file) changed by `edit`, everything it does not touch
/// (other keys, comments) kept as written. The result is parsed and validated
/// before it is returned with the config it describes.
pub fn edit_config(
    text: &str,
    origin: &str,
    edit: impl FnOnce(&mut toml_edit::DocumentMut) -> anyhow::Result<()>,
) -> anyhow::Result<(String, Config)> {
    let mut doc: toml_edit::DocumentMut = text.parse().with_context(|| format!("{origin} is not valid TOML"))?;
    edit(&mut doc)?;
    let out = doc.to_string();
    let parsed = Config::parse(&out, origin).context("the calibrated config does not validate")?;
    Ok((out, parsed))
}

/// The table at `key` of `doc`, created when missing.
pub fn table<'a>(doc: &'a mut toml_edit::DocumentMut, key: &str) -> anyhow::Result<&'a mut toml_edit::Table> {
    if !doc.contains_key(key) {
        doc.insert(key, toml_edit::table());
    }
    doc[key].as_table_mut().with_context(|| format!("[{key}] is not a table"))
}

/// `text` with its servos and bins replaced by `actuation`'s.
pub fn with_actuation(text: &str, actuation: &ActuationConfig, origin: &str) -> anyhow::Result<String> {
    #[derive(serde::Serialize)]
    struct Only<'a> {
        servos: &'a [crate::config::ServoConfig],
        bins: &'a [crate::config::BinConfig],
    }
    let fresh = toml::to_string(&Only { servos: &actuation.servos, bins: &actuation.bins })?;
    let fresh: toml_edit::DocumentMut = fresh.parse()?;
    let (out, parsed) = edit_config(text, origin, |doc| {
        let table = table(doc, "actuation")?;
        for key in ["servos", "bins"] {
            table.insert(key, fresh[key].clone());
        }
        Ok(())
    })?;
    anyhow::ensure!(
        parsed.actuation.servos == actuation.servos && parsed.actuation.bins == actuation.bins,
        "the calibrated servos did not survive writing {origin}"
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saving_keeps_the_old_file_as_bak() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("smartbin.toml");
        std::fs::write(&path, "one").unwrap();
        save_with_backup(&path, b"two").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two");
        assert_eq!(std::fs::read_to_string(dir.path().join("smartbin.toml.bak")).unwrap(), "one");
        // a first save has nothing to back up
        let fresh = dir.path().join("new.toml");
        save_with_backup(&fresh, b"x").unwrap();
        assert!(!backup_path(&fresh).exists());
    }

    #[test]
    fn new_servo_values_replace_the_old_and_the_rest_of_the_file_stays() {
        let text = "# my bin\n[model]\n# the good one\npath = \"m.safetensors\"\n\n[actuation]\nbackend = \"sim\"\nsettle_ms = 300\n";
        let mut actuation = Config::parse(text, "t").unwrap().actuation;
        actuation.servos[0].min_us = 900;
        actuation.bins[0].poses[0].angle = 12.5;
        let out = with_actuation(text, &actuation, "t").unwrap();
        assert!(out.starts_with("# my bin\n[model]\n# the good one\n"), "{out}");
        assert!(out.contains("settle_ms = 300"));
        let back = Config::parse(&out, "t").unwrap();
        assert_eq!(back.actuation.servos[0].min_us, 900);
        assert_eq!(back.actuation.bins[0].poses[0].angle, 12.5);
        assert_eq!(back.model.path, PathBuf::from("m.safetensors"));
    }

    #[test]
    fn a_calibration_that_breaks_the_config_is_not_written() {
        let mut actuation = ActuationConfig::default();
        actuation.servos[0].home = 500.0; // outside 0..=180
        let err = with_actuation("", &actuation, "t").unwrap_err();
        assert!(format!("{err:#}").contains("does not validate"), "{err:#}");
    }
}
