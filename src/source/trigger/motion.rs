//! `motion`: an item is on the tray when the picture differs from the empty tray
//! and has stopped changing.
//!
//! Each frame is shrunk to a small greyscale [`Thumb`] (64 pixels wide) so the
//! comparisons cost little on a Pi, and averaging blocks of pixels removes most
//! sensor noise. Two measures are taken per frame, both as the share of thumb
//! pixels that changed by more than `pixel_threshold` grey levels:
//!
//! - against the background (the empty tray): above `presence_fraction` the frame
//!   shows something on the tray;
//! - against the previous frame: at most `still_fraction` means the picture is
//!   still (no hand moving, the item no longer rolling).
//!
//! Both first subtract the median difference, so a change of light over the whole
//! tray (flicker, a cloud, auto-exposure) does not count as a change.
//!
//! An item is taken when the tray has shown something for `present_frames`
//! frames and the picture has been still for `still_frames`; then the next
//! `frames_per_item` still frames are the item. After that the trigger waits for
//! the tray to be empty again (`present_frames` empty frames) before it looks for
//! another item: one item, one sort. A hand passing over the tray never settles,
//! so it is never an item.
//!
//! The background is a calibration image (`background = FILE`) or is learned
//! from the first `learn_frames` still frames, so start the bin with the tray
//! empty. While the tray is empty the background follows slow light drift
//! (`background_rate` per frame).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::{GrayImage, RgbImage};

use crate::clock::Clock;
use crate::config::TriggerConfig;
use crate::source::{Frame, FrameSource, SourceError, Trigger};

/// Width of the thumbnails compared, in pixels.
pub const THUMB_WIDTH: u32 = 64;

/// Aspect ratios of a background file and the frames may differ this much (a
/// little rounding); more means the background came from another camera mode.
const ASPECT_TOLERANCE: f64 = 0.02;

/// A small greyscale copy of a picture: the mean luma of each block of pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Thumb {
    width: usize,
    height: usize,
    pixels: Vec<f32>,
}

impl Thumb {
    /// The thumb size for a picture: [`THUMB_WIDTH`] wide (or the picture's width
    /// if narrower), same aspect ratio.
    pub fn size_for(width: u32, height: u32) -> (usize, usize) {
        let w = THUMB_WIDTH.min(width).max(1);
        let h = (f64::from(height) * f64::from(w) / f64::from(width.max(1))).round() as u32;
        (w as usize, h.clamp(1, height.max(1)) as usize)
    }

    pub fn from_rgb(image: &RgbImage, size: (usize, usize)) -> Thumb {
        Thumb::from_fn(image.width(), image.height(), size, |x, y| {
            let [r, g, b] = image.get_pixel(x, y).0;
            0.299 * f32::from(r) + 0.587 * f32::from(g) + 0.114 * f32::from(b)
        })
    }

    pub fn from_gray(image: &GrayImage, size: (usize, usize)) -> Thumb {
        Thumb::from_fn(image.width(), image.height(), size, |x, y| f32::from(image.get_pixel(x, y).0[0]))
    }

    /// Box-averages `luma` over a `width`×`height` picture into `size` cells.
    fn from_fn(width: u32, height: u32, size: (usize, usize), luma: impl Fn(u32, u32) -> f32) -> Thumb {
        let (tw, th) = size;
        let (w, h) = (width as usize, height as usize);
        let column: Vec<usize> = (0..w).map(|x| x * tw / w).collect();
        let mut sum = vec![0.0f32; tw * th];
        let mut count = vec![0u32; tw * th];
        for y in 0..h {
            let row = y * th / h * tw;
            for (x, &cx) in column.iter().enumerate() {
                sum[row + cx] += luma(x as u32, y as u32);
                count[row + cx] += 1;
            }
        }
        let pixels = (0..tw * th)
            .map(|i| match count[i] {
                // A cell no pixel falls in (a picture smaller than the thumb):
                // take the nearest pixel.
                0 => luma(((i % tw) * w / tw) as u32, ((i / tw) * h / th) as u32),
                n => sum[i] / n as f32,
            })
            .collect();
        Thumb { width: tw, height: th, pixels }
    }

    pub fn size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    /// Mean luma of each cell, row by row.
    pub fn pixels(&self) -> &[f32] {
        &self.pixels
    }

    /// Moves every pixel `rate` of the way towards `other`.
    fn blend_towards(&mut self, other: &Thumb, rate: f32) {
        for (p, q) in self.pixels.iter_mut().zip(&other.pixels) {
            *p += rate * (q - *p);
        }
    }
}

/// Share of pixels (0..=1) whose difference between `a` and `b`, after removing
/// the median difference (a uniform change of light), exceeds `pixel_threshold`.
pub fn changed_fraction(a: &Thumb, b: &Thumb, pixel_threshold: f32) -> f32 {
    debug_assert_eq!(a.size(), b.size());
    let diffs: Vec<f32> = a.pixels.iter().zip(&b.pixels).map(|(p, q)| p - q).collect();
    if diffs.is_empty() {
        return 0.0;
    }
    let offset = median(diffs.clone());
    let changed = diffs.iter().filter(|d| (*d - offset).abs() > pixel_threshold).count();
    changed as f32 / diffs.len() as f32
}

fn median(mut values: Vec<f32>) -> f32 {
    let mid = values.len() / 2;
    let (_, m, _) = values.select_nth_unstable_by(mid, |a, b| a.total_cmp(b));
    *m
}

/// Where the trigger is between items.
enum Phase {
    /// Averaging still frames of the empty tray into the background.
    Learning { sum: Thumb, frames: u32 },
    /// Watching for an item.
    Armed,
    /// An item has settled; these are its frames so far.
    Collecting(Vec<Frame>),
    /// The item was handed over; waiting for the tray to be empty.
    Sorted,
}

/// See the module documentation.
pub struct MotionTrigger {
    source: Box<dyn FrameSource>,
    config: TriggerConfig,
    frames_per_item: usize,
    clock: Arc<dyn Clock>,
    stop: Arc<AtomicBool>,
    /// The calibration picture, until the first frame gives the thumb size.
    background_file: Option<(PathBuf, GrayImage)>,
    background: Option<Thumb>,
    previous: Option<Thumb>,
    phase: Phase,
    present_run: u32,
    absent_run: u32,
    still_run: u32,
    /// Start of the current wait that may time out: something on the tray that
    /// does not settle, or an item that does not leave after its sort.
    waiting_since: Option<Instant>,
    reported_at: Option<Instant>,
}

impl MotionTrigger {
    /// Reads the background file now, if one is configured, so a missing file
    /// stops start-up instead of the first frame.
    pub fn new(
        source: Box<dyn FrameSource>,
        config: &TriggerConfig,
        frames_per_item: u32,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, SourceError> {
        let background_file = match &config.background {
            Some(path) => Some((path.clone(), load_background(path)?)),
            None => None,
        };
        Ok(MotionTrigger {
            source,
            config: config.clone(),
            frames_per_item: frames_per_item.max(1) as usize,
            clock,
            stop: Arc::new(AtomicBool::new(false)),
            background_file,
            background: None,
            previous: None,
            phase: Phase::Armed,
            present_run: 0,
            absent_run: 0,
            still_run: 0,
            waiting_since: None,
            reported_at: None,
        })
    }

    /// The run's stop flag: checked on every frame.
    pub fn with_stop_flag(mut self, stop: Arc<AtomicBool>) -> Self {
        self.stop = stop;
        self
    }

    /// The empty-tray picture in use (`None` until the first frame).
    pub fn background(&self) -> Option<&Thumb> {
        self.background.as_ref()
    }

    /// Takes in one frame; returns the item's frames when it completes one.
    fn step(&mut self, frame: Frame) -> Option<Vec<Frame>> {
        let thumb = self.thumb_of(&frame.image);
        let still = self
            .previous
            .as_ref()
            .map(|p| changed_fraction(&thumb, p, self.config.pixel_threshold) <= self.config.still_fraction);
        self.previous = Some(thumb.clone());
        self.still_run = if still == Some(true) { self.still_run + 1 } else { 0 };
        let Some(background) = &self.background else {
            self.learn(thumb, still != Some(false));
            return None;
        };
        let present = changed_fraction(&thumb, background, self.config.pixel_threshold) > self.config.presence_fraction;
        if present {
            self.present_run += 1;
            self.absent_run = 0;
        } else {
            self.absent_run += 1;
            self.present_run = 0;
        }
        match std::mem::replace(&mut self.phase, Phase::Armed) {
            Phase::Learning { .. } => unreachable!("a background exists, so learning is over"),
            Phase::Armed => self.watch(frame, &thumb),
            Phase::Collecting(frames) => self.collect(frames, frame, present, still == Some(true)),
            Phase::Sorted => {
                self.wait_for_empty();
                None
            }
        }
    }

    /// The first frame fixes the thumb size; a calibration picture is scaled to it.
    fn thumb_of(&mut self, image: &RgbImage) -> Thumb {
        let size = match &self.previous {
            Some(p) => p.size(),
            None => Thumb::size_for(image.width(), image.height()),
        };
        if let Some((path, file)) = self.background_file.take() {
            self.background = background_for(&path, &file, image, size);
            if self.background.is_none() {
                self.start_learning(size);
            }
        } else if self.background.is_none() && self.previous.is_none() {
            self.start_learning(size);
        }
        Thumb::from_rgb(image, size)
    }

    fn start_learning(&mut self, size: (usize, usize)) {
        log::info!(
            "learning the empty tray from the first {} still frames: keep the tray empty",
            self.config.learn_frames
        );
        let sum = Thumb { width: size.0, height: size.1, pixels: vec![0.0; size.0 * size.1] };
        self.phase = Phase::Learning { sum, frames: 0 };
    }

    /// Adds a frame to the background being learned; motion starts it over.
    fn learn(&mut self, thumb: Thumb, still: bool) {
        let Phase::Learning { sum, frames } = &mut self.phase else {
            return;
        };
        if !still && *frames > 0 {
            log::info!("motion while learning the empty tray: starting over");
            *sum = Thumb { pixels: vec![0.0; thumb.pixels.len()], ..thumb.clone() };
            *frames = 0;
        }
        for (s, p) in sum.pixels.iter_mut().zip(&thumb.pixels) {
            *s += p;
        }
        *frames += 1;
        if *frames >= self.config.learn_frames {
            let n = *frames as f32;
            let mut background = sum.clone();
            background.pixels.iter_mut().for_each(|p| *p /= n);
            self.background = Some(background);
            self.phase = Phase::Armed;
            log::info!("empty tray learned; watching for items");
        }
    }

    /// Armed: follow the light while empty, take an item once it has settled.
    fn watch(&mut self, frame: Frame, thumb: &Thumb) -> Option<Vec<Frame>> {
        if self.present_run == 0 {
            if let Some(background) = &mut self.background {
                background.blend_towards(thumb, self.config.background_rate);
            }
            self.end_wait();
            return None;
        }
        if self.present_run >= self.config.present_frames && self.still_run >= self.config.still_frames {
            log::info!("item settled on the tray ({})", frame.origin);
            self.end_wait();
            return self.collect(Vec::new(), frame, true, true);
        }
        self.report_if_waiting_long("something on the tray has not settled");
        None
    }

    /// Adds a frame to the item; motion or an emptied tray drops the item.
    fn collect(&mut self, mut frames: Vec<Frame>, frame: Frame, present: bool, still: bool) -> Option<Vec<Frame>> {
        if !present || !still {
            log::info!("the tray changed while taking the item's frames: waiting for it to settle again");
            self.phase = Phase::Armed;
            return None;
        }
        frames.push(frame);
        if frames.len() < self.frames_per_item {
            self.phase = Phase::Collecting(frames);
            return None;
        }
        self.phase = Phase::Sorted;
        self.waiting_since = Some(self.clock.now());
        Some(frames)
    }

    /// Sorted: re-arm once the tray has been empty for `present_frames` frames.
    fn wait_for_empty(&mut self) {
        if self.absent_run >= self.config.present_frames {
            log::info!("tray empty again; watching for the next item");
            self.end_wait();
            self.phase = Phase::Armed;
            return;
        }
        self.phase = Phase::Sorted;
        self.report_if_waiting_long("the item is still on the tray after it was sorted; check the flap or remove it");
    }

    /// Logs a warning once per `timeout_s` while a wait goes on.
    fn report_if_waiting_long(&mut self, what: &str) {
        let now = self.clock.now();
        let since = *self.waiting_since.get_or_insert(now);
        let timeout = Duration::from_secs_f64(self.config.timeout_s);
        let last = self.reported_at.unwrap_or(since);
        if now.duration_since(last) >= timeout {
            log::warn!("{what} ({:.0} s)", now.duration_since(since).as_secs_f64());
            self.reported_at = Some(now);
        }
    }

    fn end_wait(&mut self) {
        self.waiting_since = None;
        self.reported_at = None;
    }
}

impl Trigger for MotionTrigger {
    fn next_item(&mut self) -> Result<Option<Vec<Frame>>, SourceError> {
        if matches!(self.phase, Phase::Sorted) {
            // Frames a camera queued while the item was being sorted are stale.
            self.source.drain()?;
        }
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return Ok(None);
            }
            let Some(frame) = self.source.next_frame()? else {
                return Ok(None);
            };
            if let Some(item) = self.step(frame) {
                return Ok(Some(item));
            }
        }
    }

    fn describe(&self) -> String {
        let background = match &self.config.background {
            Some(path) => format!("background {}", path.display()),
            None => "background learned at start-up".into(),
        };
        format!("motion ({background}, {} frame(s) per item) on {}", self.frames_per_item, self.source.describe())
    }
}

fn load_background(path: &Path) -> Result<GrayImage, SourceError> {
    let image = image::open(path).map_err(|e| SourceError::Open {
        spec: format!("trigger background {}", path.display()),
        reason: format!("{e}; set [trigger] background to the empty-tray picture, or leave it out to learn one"),
    })?;
    Ok(image.to_luma8())
}

/// The calibration picture at thumb size, or `None` (with a warning) when its
/// shape does not match the camera's.
fn background_for(path: &Path, file: &GrayImage, frame: &RgbImage, size: (usize, usize)) -> Option<Thumb> {
    let aspect = |w: u32, h: u32| f64::from(w) / f64::from(h.max(1));
    let (file_aspect, frame_aspect) = (aspect(file.width(), file.height()), aspect(frame.width(), frame.height()));
    if (file_aspect / frame_aspect - 1.0).abs() > ASPECT_TOLERANCE {
        log::warn!(
            "background {} is {}×{} but frames are {}×{}: ignoring it and learning the empty tray instead",
            path.display(),
            file.width(),
            file.height(),
            frame.width(),
            frame.height()
        );
        return None;
    }
    log::info!("empty tray from {}; watching for items", path.display());
    Some(Thumb::from_gray(file, size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SimClock;
    use crate::source::trigger::testing::{ScriptedSource, Thing, Tray, BOTTLE, CAN};

    /// N = M = 3, which the frame numbers below are worked out for.
    fn config() -> TriggerConfig {
        TriggerConfig { present_frames: 3, still_frames: 3, ..TriggerConfig::default() }
    }

    fn trigger(frames: Vec<RgbImage>, config: &TriggerConfig, k: u32) -> MotionTrigger {
        let source = ScriptedSource::new(frames);
        MotionTrigger::new(Box::new(source), config, k, Arc::new(SimClock::new())).unwrap()
    }

    /// Every item the trigger yields, as the origins of its frames.
    fn items(trigger: &mut MotionTrigger) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        while let Some(item) = trigger.next_item().unwrap() {
            out.push(item.into_iter().map(|f| f.origin).collect());
        }
        out
    }

    fn empties(tray: &mut Tray, n: usize) -> Vec<RgbImage> {
        (0..n).map(|_| tray.empty(0.08)).collect()
    }

    /// A hand (skin-coloured block) at step `i` of a sweep across the tray.
    fn hand(i: u32) -> Thing {
        Thing { x: 10 + 45 * i, y: 60, w: 70, h: 50, rgb: [200, 150, 120] }
    }

    /// A hand bringing `item` in: the hand sweeps in over two frames holding it.
    fn place(tray: &mut Tray, item: Thing) -> Vec<RgbImage> {
        (0..2)
            .map(|i| {
                let held = Thing { x: item.x + 30 - 15 * i, ..item };
                tray.frame(1.0, 6, &[held, hand(i + 2)])
            })
            .collect()
    }

    fn with(tray: &mut Tray, things: &[Thing], n: usize) -> Vec<RgbImage> {
        (0..n).map(|_| tray.frame(1.0 + 0.03 * (n as f32).sin(), 6, things)).collect()
    }

    #[test]
    fn thumb_averages_blocks_and_keeps_the_aspect() {
        assert_eq!(Thumb::size_for(640, 480), (64, 48));
        assert_eq!(Thumb::size_for(32, 10), (32, 10), "small pictures are not enlarged");
        let mut img = RgbImage::from_pixel(128, 96, image::Rgb([100, 100, 100]));
        // half of the first 2×2 block is bright
        img.put_pixel(0, 0, image::Rgb([200, 200, 200]));
        img.put_pixel(1, 0, image::Rgb([200, 200, 200]));
        let t = Thumb::from_rgb(&img, (64, 48));
        assert!((t.pixels[0] - 150.0).abs() < 0.5, "{}", t.pixels[0]);
        assert!((t.pixels[1] - 100.0).abs() < 0.5);
    }

    #[test]
    fn a_uniform_change_of_light_is_not_a_change() {
        let mut tray = Tray::new(1);
        let size = Thumb::size_for(tray.width, tray.height);
        let dim = Thumb::from_rgb(&tray.frame(0.85, 6, &[]), size);
        let bright = Thumb::from_rgb(&tray.frame(1.15, 6, &[]), size);
        assert_eq!(changed_fraction(&dim, &bright, 25.0), 0.0);
        let item = Thumb::from_rgb(&tray.frame(1.0, 6, &[CAN]), size);
        let f = changed_fraction(&dim, &item, 25.0);
        assert!(f > 0.01, "{f}");
    }

    #[test]
    fn an_empty_tray_with_noise_and_flicker_is_never_an_item() {
        let mut tray = Tray::new(2);
        let frames = (0..200).map(|_| tray.empty(0.15)).collect();
        let mut t = trigger(frames, &config(), 1);
        assert!(items(&mut t).is_empty());
    }

    #[test]
    fn an_item_placed_is_one_item_once_it_settles() {
        let mut tray = Tray::new(3);
        let mut frames = empties(&mut tray, 15);
        frames.extend(place(&mut tray, BOTTLE));
        frames.extend(with(&mut tray, &[BOTTLE], 20));
        let mut t = trigger(frames, &config(), 2);
        // 15 empty + 2 placing: frames 17.. show the bottle alone; it is present
        // from 15 on and still from 18 on, so 3 still frames end at frame 20
        assert_eq!(items(&mut t), [["f20", "f21"]]);
    }

    #[test]
    fn after_the_tray_empties_a_second_item_is_a_second_item() {
        let mut tray = Tray::new(4);
        let mut frames = empties(&mut tray, 12);
        frames.extend(place(&mut tray, BOTTLE));
        frames.extend(with(&mut tray, &[BOTTLE], 10));
        frames.extend(empties(&mut tray, 6));
        frames.extend(place(&mut tray, CAN));
        frames.extend(with(&mut tray, &[CAN], 10));
        let mut t = trigger(frames, &config(), 1);
        let got = items(&mut t);
        assert_eq!(got.len(), 2, "{got:?}");
        // the can is alone from frame 12 + 2 + 10 + 6 + 2 = 32, still from 33
        assert_eq!(got[1], ["f35"]);
    }

    #[test]
    fn an_item_left_on_the_tray_is_not_sorted_twice() {
        let mut tray = Tray::new(5);
        let mut frames = empties(&mut tray, 10);
        frames.extend(with(&mut tray, &[BOTTLE], 60));
        let mut t = trigger(frames, &config(), 1);
        assert_eq!(items(&mut t).len(), 1);
    }

    #[test]
    fn a_hand_moving_through_without_settling_is_no_item() {
        let mut tray = Tray::new(6);
        let mut frames = empties(&mut tray, 12);
        for i in 0..6 {
            frames.push(tray.frame(1.0, 6, &[hand(i)]));
        }
        frames.extend(empties(&mut tray, 10));
        let mut t = trigger(frames, &config(), 1);
        assert!(items(&mut t).is_empty());
    }

    #[test]
    fn the_background_follows_slow_light_drift() {
        let mut tray = Tray::new(7);
        // the light fades by a third over 300 frames, and parts of the tray more
        // than others would allow (a uniform change is ignored anyway)
        let frames: Vec<RgbImage> = (0..300)
            .map(|i| {
                let mut img = tray.frame(1.0 - i as f32 / 900.0, 6, &[]);
                let shade = (i / 3) as u8;
                for (x, _, p) in img.enumerate_pixels_mut() {
                    if x < 160 {
                        p.0.iter_mut().for_each(|c| *c = c.saturating_sub(shade));
                    }
                }
                img
            })
            .collect();
        let mut t = trigger(frames, &config(), 1);
        assert!(items(&mut t).is_empty());
    }

    #[test]
    fn a_background_file_is_used_instead_of_learning() {
        let dir = tempfile::tempdir().unwrap();
        let mut tray = Tray::new(8);
        let path = dir.path().join("tray.png");
        // the calibration picture is at twice the camera's resolution
        let big = Tray { width: 640, height: 480, ..Tray::new(8) }.frame(1.0, 0, &[]);
        big.save(&path).unwrap();
        let mut c = config();
        c.background = Some(path);
        // an item from the first frame on: with a learned background it would
        // become part of the tray
        let frames = with(&mut tray, &[BOTTLE], 8);
        let mut t = trigger(frames, &c, 1);
        assert_eq!(items(&mut t), [["f3"]]);
    }

    #[test]
    fn a_background_of_another_shape_is_ignored_with_learning_instead() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tray.png");
        RgbImage::new(100, 100).save(&path).unwrap();
        let mut c = config();
        c.background = Some(path);
        let mut tray = Tray::new(9);
        let mut t = trigger(empties(&mut tray, 30), &c, 1);
        assert!(items(&mut t).is_empty());
        assert!(t.background().is_some(), "learned");
    }

    #[test]
    fn a_missing_background_file_fails_at_start() {
        let mut c = config();
        c.background = Some(PathBuf::from("/nonexistent/tray.png"));
        let source = ScriptedSource::new(Vec::new());
        let err = MotionTrigger::new(Box::new(source), &c, 1, Arc::new(SimClock::new())).err().unwrap();
        assert!(err.to_string().contains("/nonexistent/tray.png"), "{err}");
    }

    #[test]
    fn motion_while_taking_frames_waits_for_a_new_settle() {
        let mut tray = Tray::new(10);
        let mut frames = empties(&mut tray, 10);
        frames.extend(with(&mut tray, &[BOTTLE], 4)); // 10..13: still from 11, taken at 13
        frames.push(tray.frame(1.0, 6, &[BOTTLE, hand(1)])); // 14: a hand moves in
        frames.extend(with(&mut tray, &[BOTTLE], 6)); // 15..: still again from 16
        let mut t = trigger(frames, &config(), 2);
        assert_eq!(items(&mut t), [["f18", "f19"]]);
    }

    #[test]
    fn a_stuck_item_is_reported_while_the_trigger_waits() {
        let mut tray = Tray::new(11);
        let mut frames = empties(&mut tray, 10);
        frames.extend(with(&mut tray, &[BOTTLE], 10));
        let clock = Arc::new(SimClock::new());
        let source = ScriptedSource::new(frames).with_clock(clock.clone(), Duration::from_secs(5));
        let mut c = config();
        c.timeout_s = 12.0;
        let mut t = MotionTrigger::new(Box::new(source), &c, 1, clock).unwrap();
        assert!(t.next_item().unwrap().is_some());
        // the bottle stays: no second item, and a warning after 12 s
        assert!(t.next_item().unwrap().is_none());
        assert!(matches!(t.phase, Phase::Sorted));
        assert!(t.reported_at.is_some());
    }

    #[test]
    fn the_stop_flag_ends_the_wait_for_an_item() {
        let mut tray = Tray::new(12);
        let stop = Arc::new(AtomicBool::new(true));
        let mut t = trigger(empties(&mut tray, 5), &config(), 1).with_stop_flag(stop);
        assert!(t.next_item().unwrap().is_none());
        assert!(t.previous.is_none(), "no frame read");
    }
}
