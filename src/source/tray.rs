//! The calibrated view of the tray: frames cropped to `[source] roi`, and the
//! first frame of a run checked against `[source] reference` (see
//! [`crate::calibration::camera`]).

use image::RgbImage;

use super::{Frame, FrameSource, SourceError};
use crate::calibration::camera::{drift, DriftReport, Roi};

/// Grey levels a pixel must change by to count in the drift check.
const DRIFT_PIXEL_THRESHOLD: f32 = 25.0;

pub struct TraySource {
    inner: Box<dyn FrameSource>,
    roi: Option<Roi>,
    /// The reference picture until the first frame has been checked against it.
    reference: Option<RgbImage>,
    drift: Option<DriftReport>,
    /// Frame size whose misfit with the ROI was reported (once per size).
    misfit: Option<(u32, u32)>,
}

impl TraySource {
    pub fn new(inner: Box<dyn FrameSource>, roi: Option<Roi>, reference: Option<RgbImage>) -> Self {
        TraySource { inner, roi, reference, drift: None, misfit: None }
    }

    /// The start-up comparison with the reference, once a frame has come.
    pub fn drift(&self) -> Option<&DriftReport> {
        self.drift.as_ref()
    }

    fn check(&mut self, frame: &Frame) {
        let Some(reference) = self.reference.take() else { return };
        let report = drift(&reference, &frame.image, DRIFT_PIXEL_THRESHOLD);
        if report.warnings.is_empty() {
            log::info!(
                "camera view matches its calibration (shift {:?} px, brightness {:.0}%, sharpness {:.0}%)",
                report.shift,
                report.brightness * 100.0,
                report.focus * 100.0
            );
        }
        for warning in &report.warnings {
            log::warn!("camera check: {warning}");
        }
        self.drift = Some(report);
    }

    /// The tray part of the frame. A frame the ROI does not fit (the camera
    /// came back in another mode) is used whole, with a warning: a sliver of
    /// the picture would be classified as nonsense.
    fn crop(&mut self, mut frame: Frame) -> Frame {
        let Some(roi) = self.roi else { return frame };
        let size = frame.image.dimensions();
        if roi.fits(size.0, size.1) {
            frame.image = roi.crop(&frame.image);
        } else if self.misfit != Some(size) {
            self.misfit = Some(size);
            log::warn!(
                "[source] roi {},{} {}x{} does not fit the camera's {}x{} frames: using whole frames; run \
                 `smartbin calibrate camera` again",
                roi.x,
                roi.y,
                roi.width,
                roi.height,
                size.0,
                size.1
            );
        }
        frame
    }
}

impl FrameSource for TraySource {
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        let Some(frame) = self.inner.next_frame()? else { return Ok(None) };
        self.check(&frame);
        Ok(Some(self.crop(frame)))
    }

    fn describe(&self) -> String {
        match &self.roi {
            Some(r) => format!("{} (tray {}x{} at {},{})", self.inner.describe(), r.width, r.height, r.x, r.y),
            None => self.inner.describe(),
        }
    }

    fn drain(&mut self) -> Result<usize, SourceError> {
        self.inner.drain()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    struct Frames(Vec<RgbImage>);

    impl FrameSource for Frames {
        fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
            Ok((!self.0.is_empty()).then(|| Frame {
                image: self.0.remove(0),
                origin: "test".into(),
                captured_at: SystemTime::UNIX_EPOCH,
            }))
        }
        fn describe(&self) -> String {
            "frames".into()
        }
    }

    #[test]
    fn frames_are_cropped_and_the_first_is_checked_against_the_reference() {
        let reference = RgbImage::from_fn(200, 100, |x, y| image::Rgb([(x * 7 % 251) as u8, (y * 11 % 241) as u8, 90]));
        let dim = RgbImage::from_fn(200, 100, |x, y| {
            let p = reference.get_pixel(x, y).0;
            image::Rgb([p[0] / 3, p[1] / 3, p[2] / 3])
        });
        let roi = Roi { x: 20, y: 10, width: 120, height: 60 };
        let mut source = TraySource::new(Box::new(Frames(vec![dim, reference.clone()])), Some(roi), Some(reference));
        let first = source.next_frame().unwrap().unwrap();
        assert_eq!(first.image.dimensions(), (120, 60));
        assert!(source.drift().unwrap().warnings.iter().any(|w| w.contains("light changed")));
        let second = source.next_frame().unwrap().unwrap();
        assert_eq!(second.image.dimensions(), (120, 60));
        assert!(source.describe().contains("tray 120x60 at 20,10"));
        assert!(source.next_frame().unwrap().is_none());
    }

    #[test]
    fn an_roi_that_does_not_fit_the_frame_leaves_it_whole() {
        let frame = RgbImage::new(100, 80);
        let roi = Roi { x: 60, y: 10, width: 120, height: 60 };
        let mut source = TraySource::new(Box::new(Frames(vec![frame.clone(), frame])), Some(roi), None);
        assert_eq!(source.next_frame().unwrap().unwrap().image.dimensions(), (100, 80));
        assert_eq!(source.next_frame().unwrap().unwrap().image.dimensions(), (100, 80));
        assert!(!Roi { x: u32::MAX - 10, y: 0, width: 100, height: 10 }.fits(640, 480), "no overflow");
    }
}
