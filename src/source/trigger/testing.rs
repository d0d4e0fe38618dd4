//! Test helpers: scripted frame sources and synthetic tray pictures.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};

use crate::clock::{Clock, SimClock};
use crate::source::{Frame, FrameSource, SourceError};

/// Replays a list of pictures as frames `f0`, `f1`, …; one of them can be made a
/// bad frame, and each frame can advance a simulated clock (a camera's frame rate).
pub struct ScriptedSource {
    pub frames: Vec<RgbImage>,
    pub next: usize,
    pub bad_at: Option<usize>,
    pub clock: Option<(Arc<SimClock>, Duration)>,
    /// Times `drain` was called.
    pub drains: Arc<std::sync::atomic::AtomicUsize>,
}

impl ScriptedSource {
    pub fn new(frames: Vec<RgbImage>) -> Self {
        ScriptedSource { frames, next: 0, bad_at: None, clock: None, drains: Arc::default() }
    }

    /// 4×4 frames of one grey value each.
    pub fn solid(values: &[u8]) -> Self {
        Self::new(values.iter().map(|&v| RgbImage::from_pixel(4, 4, Rgb([v, v, v]))).collect())
    }

    pub fn with_clock(mut self, clock: Arc<SimClock>, period: Duration) -> Self {
        self.clock = Some((clock, period));
        self
    }
}

impl FrameSource for ScriptedSource {
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        let Some(image) = self.frames.get(self.next).cloned() else {
            return Ok(None);
        };
        let origin = format!("f{}", self.next);
        self.next += 1;
        if let Some((clock, period)) = &self.clock {
            clock.sleep(*period);
        }
        if self.bad_at == Some(self.next - 1) {
            return Err(SourceError::BadFrame { origin, reason: "scripted".into() });
        }
        Ok(Some(Frame { image, origin, captured_at: SystemTime::UNIX_EPOCH }))
    }

    fn drain(&mut self) -> Result<usize, SourceError> {
        self.drains.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(0)
    }

    fn describe(&self) -> String {
        format!("scripted ({} frames)", self.frames.len())
    }
}

/// Pictures of a tray seen by a camera: a textured background, sensor noise,
/// flickering light, and things placed on it.
pub struct Tray {
    pub width: u32,
    pub height: u32,
    pub rng: rand::rngs::StdRng,
}

/// A thing on the tray: a filled rectangle of one colour.
#[derive(Debug, Clone, Copy)]
pub struct Thing {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
    pub rgb: [u8; 3],
}

impl Tray {
    pub fn new(seed: u64) -> Self {
        Tray { width: 320, height: 240, rng: rand::rngs::StdRng::seed_from_u64(seed) }
    }

    /// The tray under light of `gain` (1.0 = normal), with per-pixel noise of
    /// up to ±`noise` levels and `things` on it.
    pub fn frame(&mut self, gain: f32, noise: i32, things: &[Thing]) -> RgbImage {
        let mut img = RgbImage::from_fn(self.width, self.height, |x, y| {
            // a light gradient with a faint wood-like grain
            let v = 110.0 + 40.0 * x as f32 / self.width as f32 + 8.0 * ((y / 6) % 2) as f32;
            Rgb([v as u8, (v * 0.95) as u8, (v * 0.85) as u8])
        });
        for t in things {
            for y in t.y..(t.y + t.h).min(self.height) {
                for x in t.x..(t.x + t.w).min(self.width) {
                    img.put_pixel(x, y, Rgb(t.rgb));
                }
            }
        }
        for p in img.pixels_mut() {
            let n = if noise > 0 { self.rng.random_range(-noise..=noise) } else { 0 };
            for c in p.0.iter_mut() {
                *c = (f32::from(*c) * gain + n as f32).clamp(0.0, 255.0) as u8;
            }
        }
        img
    }

    /// An empty tray under flickering light (±`flicker` gain) with noise.
    pub fn empty(&mut self, flicker: f32) -> RgbImage {
        let gain = 1.0 + self.rng.random_range(-flicker..=flicker);
        self.frame(gain, 6, &[])
    }
}

/// A bottle-sized dark item in the middle of the tray.
pub const BOTTLE: Thing = Thing { x: 120, y: 80, w: 60, h: 90, rgb: [40, 90, 60] };
/// A small bright item at another place.
pub const CAN: Thing = Thing { x: 40, y: 150, w: 35, h: 35, rgb: [220, 220, 230] };
