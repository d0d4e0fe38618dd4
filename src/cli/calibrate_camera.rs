//! `smartbin calibrate camera`: the empty tray, its light, the tray's region and
//! the reference picture (see [`crate::calibration::camera`]).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use image::RgbImage;

use super::calibrate::{CameraArgs, Target};
use crate::calibration::camera::{background, check_light, drift, find_roi, LightReport, Roi};
use crate::calibration::{edit_config, table};
use crate::clock::{Clock, SystemClock};
use crate::source::{open_uncropped, parse_source_spec, FrameSource, SourceSpec};

/// Grey levels a thumbnail pixel must change by to count as the item.
const ROI_PIXEL_THRESHOLD: f32 = 25.0;
/// The found tray is grown by this share of the frame on each side: the item
/// was not pushed into every corner.
const ROI_MARGIN: f64 = 0.05;

pub fn main(args: CameraArgs) -> anyhow::Result<ExitCode> {
    let target = Target::load(&args.config)?;
    let mut source_config = target.config.source.clone();
    if let Some(spec) = &args.source {
        source_config.spec = spec.clone();
    }
    let spec = parse_source_spec(&source_config.spec)?;
    // A camera gives a new picture every few tens of ms; spacing the frames
    // lets the check see flicker and a hand that moves.
    let gap = match spec {
        SourceSpec::Camera(_) => Duration::from_millis(150),
        SourceSpec::Images(_) => Duration::ZERO,
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let stop = Arc::new(AtomicBool::new(false));
    let mut source = open_uncropped(&spec, &source_config, clock.clone(), stop).with_context(|| format!("opening {spec}"))?;
    let mut grab = Grabber { source: source.as_mut(), clock: clock.as_ref(), gap };
    if args.check {
        return check(&target, &mut grab);
    }
    calibrate(target, &mut grab, &args)
}

struct Grabber<'a> {
    source: &'a mut dyn FrameSource,
    clock: &'a dyn Clock,
    gap: Duration,
}

impl Grabber<'_> {
    /// `n` frames taken after this call, all the size of the first.
    fn frames(&mut self, n: usize) -> anyhow::Result<Vec<RgbImage>> {
        let mut out: Vec<RgbImage> = Vec::with_capacity(n);
        while out.len() < n {
            let frame = self.source.fresh_frame()?.with_context(|| {
                format!("{} ran out after {} of {n} frames", self.source.describe(), out.len())
            })?;
            if let Some(first) = out.first() {
                anyhow::ensure!(
                    first.dimensions() == frame.image.dimensions(),
                    "frame {} is {:?}, the first was {:?}: one camera mode, please",
                    frame.origin,
                    frame.image.dimensions(),
                    first.dimensions()
                );
            }
            out.push(frame.image);
            self.clock.sleep(self.gap);
        }
        Ok(out)
    }
}

/// In a terminal, waits for Enter after telling the user what to do.
fn prompt(text: &str) -> anyhow::Result<()> {
    println!("{text}");
    if std::io::stdin().is_terminal() {
        println!("(press Enter when ready)");
        std::io::stdin().read_line(&mut String::new())?;
    }
    Ok(())
}

fn print_light(report: &LightReport) {
    println!(
        "light: mean {:.0}/255, {:.1}% saturated, {:.1}% black, flicker {:.1}%, focus {:.0}",
        report.mean_luma,
        report.saturated * 100.0,
        report.dark * 100.0,
        report.flicker * 100.0,
        report.focus
    );
    for w in &report.warnings {
        println!("  warning: {w}");
    }
}

fn calibrate(target: Target, grab: &mut Grabber<'_>, args: &CameraArgs) -> anyhow::Result<ExitCode> {
    // The median needs three to outvote a hand passing through one frame.
    anyhow::ensure!(args.frames >= 3, "--frames must be at least 3");
    prompt("Leave the tray empty, with the bin's lid and light as in use.")?;
    let empty = grab.frames(args.frames)?;
    let reference = background(&empty);
    let (w, h) = reference.dimensions();
    println!("empty tray: {} frames of {w}x{h}", empty.len());
    print_light(&check_light(&empty));

    let roi = match (args.roi, args.find_roi) {
        (Some(r), _) => Some(Roi::from_array(r)),
        (None, Some(n)) => {
            prompt(&format!(
                "Put an item on the tray and slide it slowly over all of the tray, into its corners ({n} frames)."
            ))?;
            let with_items = grab.frames(n)?;
            let found = find_roi(&reference, &with_items, ROI_PIXEL_THRESHOLD, ROI_MARGIN)
                .context("the item was not seen: nothing differed from the empty tray (a bigger or darker item?)")?;
            println!("tray found: {}x{} at {},{}", found.width, found.height, found.x, found.y);
            Some(found)
        }
        (None, None) => target.config.source.roi.map(Roi::from_array),
    };
    if let Some(r) = roi {
        anyhow::ensure!(
            r.fits(w, h),
            "the tray {},{} {}x{} reaches outside the {w}x{h} frame",
            r.x,
            r.y,
            r.width,
            r.height
        );
    }
    save(target, &reference, roi, args)
}

fn png(image: &RgbImage) -> anyhow::Result<Vec<u8>> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    image.write_to(&mut bytes, image::ImageFormat::Png)?;
    Ok(bytes.into_inner())
}

fn save(target: Target, reference: &RgbImage, roi: Option<Roi>, args: &CameraArgs) -> anyhow::Result<ExitCode> {
    let dir = match &args.out_dir {
        Some(d) => d.clone(),
        None => target.path.parent().unwrap_or(Path::new(".")).join("calibration"),
    };
    let dir = std::path::absolute(&dir).with_context(|| format!("resolving {}", dir.display()))?;
    // New names each time: until the config is saved, the old config still
    // points at the old pictures, so an interrupted calibration changes nothing.
    let stamp = crate::util::file_stamp();
    let reference_path = dir.join(format!("reference-{stamp}.png"));
    let background_path = dir.join(format!("background-{stamp}.png"));
    let crop = roi.map_or_else(|| reference.clone(), |r| r.crop(reference));
    let origin = target.path.display().to_string();
    let path_value = |p: &PathBuf| toml_edit::value(p.display().to_string());
    // Checked before anything is written: a config that would not load is refused.
    let (text, _) = edit_config(&target.text, &origin, |doc| {
        let source = table(doc, "source")?;
        match roi {
            Some(r) => {
                let array: toml_edit::Array = r.to_array().iter().map(|&v| i64::from(v)).collect();
                source.insert("roi", toml_edit::value(array));
            }
            None => {
                source.remove("roi");
            }
        }
        source.insert("reference", path_value(&reference_path));
        table(doc, "trigger")?.insert("background", path_value(&background_path));
        Ok(())
    })?;
    crate::util::write_atomic(&reference_path, &png(reference)?)?;
    crate::util::write_atomic(&background_path, &png(&crop)?)?;
    let old_text = target.text.clone();
    let mut target = target;
    target.write(&text)?;
    println!("wrote {} and {}", reference_path.display(), background_path.display());
    remove_unreferenced(&dir, &[&old_text, &text]);
    println!(
        "saved {} (previous version: {}); `systemctl reload smartbin` applies it",
        target.path.display(),
        crate::calibration::backup_path(&target.path).display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Deletes calibration pictures in `dir` that neither the new config nor the
/// one kept as `.bak` names (older calibrations).
fn remove_unreferenced(dir: &Path, configs: &[&str]) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = (name.starts_with("reference-") || name.starts_with("background-")) && name.ends_with(".png");
        if ours && !configs.iter().any(|c| c.contains(&name)) {
            if let Err(e) = std::fs::remove_file(entry.path()) {
                log::warn!("could not remove the old {}: {e}", entry.path().display());
            }
        }
    }
}

fn check(target: &Target, grab: &mut Grabber<'_>) -> anyhow::Result<ExitCode> {
    let path = target.config.source.reference.as_deref().context(
        "no [source] reference in the config: run `smartbin calibrate camera` first",
    )?;
    let reference = crate::preprocess::decode_file(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let now = background(&grab.frames(3)?);
    let report = drift(&reference, &now, ROI_PIXEL_THRESHOLD);
    println!(
        "against {}: shift ({}, {}) px, brightness {:.0}%, sharpness {:.0}%, {:.1}% of the view changed",
        path.display(),
        report.shift.0,
        report.shift.1,
        report.brightness * 100.0,
        report.focus * 100.0,
        report.changed * 100.0
    );
    for w in &report.warnings {
        println!("  warning: {w}");
    }
    Ok(if report.warnings.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
