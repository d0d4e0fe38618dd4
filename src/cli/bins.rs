//! `smartbin bins`: how full each bin is; `smartbin bins reset BIN|--all` after
//! emptying one.
//!
//! The counts live in `bin-levels.json` next to the event log (see
//! [`crate::decision::fill`]). A reset while `smartbin run` is going is picked
//! up by the run: an item held for a full bin goes on within a second.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;

use crate::config::Config;
use crate::decision::fill::{levels_path, LevelStore, Levels};
use crate::sorter::rfc3339_utc;

#[derive(Debug, clap::Args)]
pub struct BinsArgs {
    /// Config file [default: firmware-config/smartbin.toml, or built-in defaults
    /// when that file does not exist]
    #[arg(long, value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,
    /// Event log whose folder holds bin-levels.json, overriding [log] events
    #[arg(long, value_name = "PATH", global = true)]
    pub events: Option<PathBuf>,
    /// Print the levels as JSON
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub action: Option<BinsAction>,
}

#[derive(Debug, clap::Subcommand)]
pub enum BinsAction {
    /// Mark bins as emptied: their item counts start again from 0.
    Reset(ResetArgs),
}

#[derive(Debug, clap::Args)]
pub struct ResetArgs {
    /// Bins to reset, by their [[actuation.bins]] names
    #[arg(value_name = "BIN", required_unless_present = "all", conflicts_with = "all")]
    pub bins: Vec<String>,
    /// Reset every bin
    #[arg(long)]
    pub all: bool,
}

/// One bin in the listing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BinRow {
    pub bin: String,
    pub items: u64,
    pub capacity: Option<u32>,
    pub full: bool,
    pub emptied: Option<String>,
    /// Named in the level file but not in the config (a renamed or removed bin).
    pub configured: bool,
}

pub fn main(args: BinsArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(args.config.as_deref())?;
    let events = args.events.clone().unwrap_or_else(|| config.log.events.clone());
    let store = LevelStore::new(levels_path(&events));
    match &args.action {
        Some(BinsAction::Reset(reset)) => reset_bins(&config, &store, reset)?,
        None => show(&config, &store, args.json)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    let default = Path::new(super::run::DEFAULT_CONFIG);
    Ok(match path {
        Some(path) => Config::load(path)?,
        None if default.exists() => Config::load(default)?,
        None => Config::default(),
    })
}

/// The configured bins in config order, then any others the level file names.
pub fn rows(config: &Config, levels: &Levels) -> Vec<BinRow> {
    let row = |bin: &str, configured: bool| {
        let level = levels.bins.get(bin).cloned().unwrap_or_default();
        let capacity = config.fill.capacity.get(bin).copied();
        BinRow {
            bin: bin.to_string(),
            items: level.items,
            capacity,
            full: capacity.is_some_and(|c| level.items >= u64::from(c)),
            emptied: level.emptied,
            configured,
        }
    };
    let mut out: Vec<BinRow> = config.actuation.bins.iter().map(|b| row(&b.name, true)).collect();
    for bin in levels.bins.keys() {
        if !out.iter().any(|r| &r.bin == bin) {
            out.push(row(bin, false));
        }
    }
    out
}

fn show(config: &Config, store: &LevelStore, json: bool) -> anyhow::Result<()> {
    let levels = store.load()?;
    let rows = rows(config, &levels);
    if json {
        let out = serde_json::json!({ "file": store.path(), "bins": rows });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("bin levels ({}):", store.path().display());
    print!("{}", table(&rows));
    for s in &config.fill.sensors {
        println!(
            "sensor on {}: GPIO {}/{}, full below {} cm (read by `smartbin run`)",
            s.bin, s.trigger_pin, s.echo_pin, s.full_cm
        );
    }
    if config.fill.capacity.is_empty() && config.fill.sensors.is_empty() {
        println!("no [fill] capacity or sensors configured: `smartbin run` does not count items");
    }
    Ok(())
}

pub fn table(rows: &[BinRow]) -> String {
    let mut out = format!("{:<14} {:>6} {:>9}  {:<5} {}\n", "bin", "items", "capacity", "", "emptied");
    for r in rows {
        let capacity = r.capacity.map_or("-".to_string(), |c| c.to_string());
        let state = if r.full { "FULL" } else { "" };
        let mut emptied = r.emptied.clone().unwrap_or_else(|| "-".into());
        if !r.configured {
            emptied.push_str("  (not in the config)");
        }
        out.push_str(&format!("{:<14} {:>6} {:>9}  {:<5} {}\n", r.bin, r.items, capacity, state, emptied));
    }
    out
}

fn reset_bins(config: &Config, store: &LevelStore, reset: &ResetArgs) -> anyhow::Result<()> {
    // With --all a damaged file is replaced, so do not insist on reading it.
    let before = if reset.all { store.load().unwrap_or_default() } else { store.load()? };
    let known: Vec<String> = rows(config, &before).into_iter().map(|r| r.bin).collect();
    for bin in &reset.bins {
        if !known.contains(bin) {
            anyhow::bail!("no bin named `{bin}`; bins: {}", known.join(", "));
        }
    }
    let bins = if reset.all { known } else { reset.bins.clone() };
    let now = rfc3339_utc(std::time::SystemTime::now());
    store
        .reset(&bins, reset.all, &now)
        .with_context(|| format!("resetting bin levels in {}", store.path().display()))?;
    for bin in &bins {
        println!("bin {bin} emptied (was {} items)", before.items(bin));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_follow_the_config_and_mark_full_bins() {
        let mut config = Config::default();
        config.fill.capacity.insert("glass".into(), 2);
        let mut levels = Levels::default();
        levels.bins.insert("glass".into(), crate::decision::fill::BinLevel { items: 2, emptied: None });
        levels.bins.insert("compost".into(), Default::default());
        let rows = rows(&config, &levels);
        let names: Vec<&str> = rows.iter().map(|r| r.bin.as_str()).collect();
        assert_eq!(names, ["paper", "glass", "containers", "landfill", "compost"]);
        assert!(rows[1].full && rows[1].capacity == Some(2));
        assert!(!rows[0].full && rows[0].capacity.is_none());
        assert!(!rows[4].configured);
        let text = table(&rows);
        assert!(text.lines().nth(2).unwrap().contains("FULL"), "{text}");
        assert!(text.contains("(not in the config)"), "{text}");
    }

    #[test]
    fn reset_refuses_unknown_bins_and_resets_named_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = LevelStore::new(dir.path().join("bin-levels.json"));
        store.add_item("glass").unwrap();
        store.add_item("paper").unwrap();
        let config = Config::default();
        let args = |bins: &[&str], all| ResetArgs { bins: bins.iter().map(|s| s.to_string()).collect(), all };
        let err = reset_bins(&config, &store, &args(&["glas"], false)).unwrap_err();
        assert!(err.to_string().contains("no bin named `glas`"), "{err}");
        reset_bins(&config, &store, &args(&["glass"], false)).unwrap();
        let levels = store.load().unwrap();
        assert_eq!((levels.items("glass"), levels.items("paper")), (0, 1));
        assert!(levels.bins["glass"].emptied.is_some());
        reset_bins(&config, &store, &args(&[], true)).unwrap();
        assert_eq!(store.load().unwrap().items("paper"), 0);
    }
}
