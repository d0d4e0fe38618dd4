//! Where frames come from: a [`FrameSource`] yields single frames, a [`Trigger`]
//! groups them into items (one item = the K frames the classifier sees for one
//! piece of rubbish on the tray).
//!
//! `images:DIR` replays image files as if they came from a camera; `camera:ARG`
//! reads a V4L2 camera (see [`camera`]), which returns [`SourceError::Lost`] when
//! the device disappears so [`ReconnectingSource`] can reopen it.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use crate::clock::Clock;

pub mod camera;
#[cfg(all(feature = "camera", target_os = "linux"))]
mod camera_v4l;
pub mod convert;
pub mod images;
pub mod reconnect;
pub mod tray;
pub mod trigger;

pub use camera::{list_devices, open_camera, CameraConfig, CameraSelector};
pub use images::{is_image_name, ImageDirSource, ReplayOptions};
pub use reconnect::{Backoff, ReconnectingSource};

/// One captured picture.
#[derive(Debug, Clone)]
pub struct Frame {
    pub image: image::RgbImage,
    /// File path for replayed images, camera name for live frames.
    pub origin: String,
    pub captured_at: SystemTime,
}

/// Why a source could not give a frame. The run loop treats the cases differently,
/// so they are separate variants rather than one string.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// This one frame is unusable (corrupt JPEG, unreadable file). The loop reports
    /// it and asks for the next frame.
    #[error("bad frame {origin}: {reason}")]
    BadFrame { origin: String, reason: String },
    /// The device went away (camera unplugged). The loop may reconnect.
    #[error("source {device} lost: {reason}")]
    Lost { device: String, reason: String },
    /// The source could not be opened at all (missing folder, no images in it).
    #[error("cannot open source {spec}: {reason}")]
    Open { spec: String, reason: String },
}

/// Anything that produces frames one by one.
pub trait FrameSource {
    /// The next frame; `Ok(None)` when the source has no more frames.
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError>;
    /// A short human description for logs, e.g. `images:/data/samples (12 files)`.
    fn describe(&self) -> String;

    /// Throws away frames captured before now (a camera queues several), so the
    /// next frame is taken after this call; returns how many were dropped.
    /// Sources without a queue, like an image replay, drop nothing.
    fn drain(&mut self) -> Result<usize, SourceError> {
        Ok(0)
    }

    /// The next frame taken after this call: [`drain`](Self::drain), then
    /// [`next_frame`](Self::next_frame). For the first frame after a trigger.
    fn fresh_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        self.drain()?;
        self.next_frame()
    }
}

/// Decides when an item is present and collects its frames.
pub trait Trigger {
    /// The frames of the next item (never empty); `Ok(None)` when no more items
    /// will come.
    fn next_item(&mut self) -> Result<Option<Vec<Frame>>, SourceError>;
    fn describe(&self) -> String;
}

/// Trigger for replayed images: every file is one item of one frame. Recorded
/// files carry no "item arrived" signal, so grouping them would be guesswork.
pub struct ReplayTrigger {
    source: Box<dyn FrameSource>,
}

impl ReplayTrigger {
    pub fn new(source: Box<dyn FrameSource>) -> Self {
        ReplayTrigger { source }
    }
}

impl Trigger for ReplayTrigger {
    fn next_item(&mut self) -> Result<Option<Vec<Frame>>, SourceError> {
        Ok(self.source.next_frame()?.map(|frame| vec![frame]))
    }

    fn describe(&self) -> String {
        format!("one item per frame from {}", self.source.describe())
    }
}

/// A parsed `KIND:ARG` source specification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// `images:DIR`: replay the image files in DIR.
    Images(PathBuf),
    /// `camera:0`, `camera:/dev/video0`, `camera:NAME` or `camera:` (the first).
    Camera(CameraSelector),
}

impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceSpec::Images(dir) => write!(f, "images:{}", dir.display()),
            SourceSpec::Camera(selector) => write!(f, "camera:{selector}"),
        }
    }
}

/// A source specification that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid source `{spec}`: {reason}")]
pub struct SpecError {
    pub spec: String,
    pub reason: String,
}

const ALLOWED_SPECS: &str = "images:DIR, camera:N, camera:/dev/videoN, camera:NAME";

/// Parses `images:DIR` and `camera:ARG`. Other kinds are rejected with a message
/// saying what exists. A camera spec parses even in a build without camera
/// support; opening it then says to rebuild.
pub fn parse_source_spec(spec: &str) -> Result<SourceSpec, SpecError> {
    let fail = |reason: String| SpecError { spec: spec.to_string(), reason };
    let Some((kind, arg)) = spec.split_once(':') else {
        return Err(fail(format!("expected KIND:ARG; allowed: {ALLOWED_SPECS}")));
    };
    match kind {
        "images" if arg.trim().is_empty() => {
            Err(fail("images: needs a folder, e.g. images:samples".into()))
        }
        "images" => Ok(SourceSpec::Images(PathBuf::from(arg))),
        "camera" => Ok(SourceSpec::Camera(CameraSelector::parse(arg))),
        other => Err(fail(format!("unknown source kind `{other}`; allowed: {ALLOWED_SPECS}"))),
    }
}

/// Opens the source a spec names; a camera gets the default `[source.camera]`
/// settings (use [`open_configured`] for the configured ones).
pub fn open_source(
    spec: &SourceSpec,
    options: ReplayOptions,
    clock: Arc<dyn Clock>,
) -> Result<Box<dyn FrameSource>, SourceError> {
    match spec {
        SourceSpec::Images(dir) => Ok(Box::new(ImageDirSource::open(dir, options, clock)?)),
        SourceSpec::Camera(selector) => open_camera(selector, &CameraConfig::default(), clock),
    }
}

/// Opens the source for `smartbin run` with its `[source]` settings. A camera is
/// reopened when lost (unplugged) until `stop` is raised, so a loose cable
/// pauses the bin instead of ending the run.
pub fn open_configured(
    spec: &SourceSpec,
    config: &crate::config::SourceConfig,
    clock: Arc<dyn Clock>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Result<Box<dyn FrameSource>, SourceError> {
    let source = open_uncropped(spec, config, clock, stop)?;
    if config.roi.is_none() && config.reference.is_none() {
        return Ok(source);
    }
    let roi = config.roi.map(crate::calibration::camera::Roi::from_array);
    let reference = config.reference.as_deref().and_then(|path| match crate::preprocess::decode_file(path) {
        Ok(image) => Some(image),
        Err(e) => {
            log::warn!("[source] reference {}: {e}; the camera check is skipped", path.display());
            None
        }
    });
    Ok(Box::new(tray::TraySource::new(source, roi, reference)))
}

/// The configured source without the tray crop (calibration looks at the whole view).
pub fn open_uncropped(
    spec: &SourceSpec,
    config: &crate::config::SourceConfig,
    clock: Arc<dyn Clock>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Result<Box<dyn FrameSource>, SourceError> {
    match spec {
        SourceSpec::Images(_) => {
            let options = ReplayOptions { looped: config.looped, rate_hz: config.rate_hz };
            open_source(spec, options, clock)
        }
        SourceSpec::Camera(selector) => {
            let (selector, camera) = (selector.clone(), config.camera.clone());
            let opener = clock.clone();
            let factory = move || open_camera(&selector, &camera, opener.clone());
            Ok(Box::new(ReconnectingSource::open(factory, clock, stop)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_spec_parses_to_its_folder() {
        assert_eq!(
            parse_source_spec("images:/data/my samples").unwrap(),
            SourceSpec::Images(PathBuf::from("/data/my samples"))
        );
        // the display form parses back to the same spec
        let spec = parse_source_spec("images:samples").unwrap();
        assert_eq!(parse_source_spec(&spec.to_string()).unwrap(), spec);
    }

    #[test]
    fn camera_specs_parse_to_their_selector_and_print_back() {
        let cases = [
            ("camera:0", CameraSelector::Index(0)),
            ("camera:/dev/video2", CameraSelector::Path("/dev/video2".into())),
            ("camera:HD Pro Webcam", CameraSelector::Name("HD Pro Webcam".into())),
            ("camera:", CameraSelector::First),
        ];
        for (text, selector) in cases {
            let spec = parse_source_spec(text).unwrap();
            assert_eq!(spec, SourceSpec::Camera(selector));
            assert_eq!(spec.to_string(), text);
        }
    }

    #[test]
    fn replayed_images_have_nothing_to_drain() {
        let dir = tempfile::tempdir().unwrap();
        image::RgbImage::new(4, 4).save(dir.path().join("a.png")).unwrap();
        let clock = Arc::new(crate::clock::SimClock::new());
        let mut source = ImageDirSource::open(dir.path(), ReplayOptions::default(), clock).unwrap();
        assert_eq!(source.drain().unwrap(), 0);
        assert!(source.fresh_frame().unwrap().is_some());
        assert!(source.fresh_frame().unwrap().is_none());
    }

    #[test]
    fn unknown_kind_missing_colon_and_empty_folder_are_rejected() {
        let err = parse_source_spec("rtsp://cam").unwrap_err();
        assert!(err.reason.contains("unknown source kind `rtsp`"), "{err}");
        assert!(err.reason.contains("camera:/dev/videoN"), "{err}");
        let err = parse_source_spec("samples").unwrap_err();
        assert!(err.reason.contains("KIND:ARG"), "{err}");
        let err = parse_source_spec("images:").unwrap_err();
        assert!(err.reason.contains("needs a folder"), "{err}");
    }
}
