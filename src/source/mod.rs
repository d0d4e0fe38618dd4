//! Where frames come from: a [`FrameSource`] yields single frames, a [`Trigger`]
//! groups them into items (one item = the K frames the classifier sees for one
//! piece of rubbish on the tray).
//!
//! Today the only source is `images:DIR`, which replays image files as if they came
//! from a camera. `camera:` sources arrive with the edge work; they will return
//! [`SourceError::Lost`] when the device disappears so the run loop can reconnect.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use crate::clock::Clock;

pub mod images;

pub use images::{ImageDirSource, ReplayOptions};

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
}

impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceSpec::Images(dir) => write!(f, "images:{}", dir.display()),
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

/// Parses `images:DIR`. Other kinds are rejected with a message saying what exists.
pub fn parse_source_spec(spec: &str) -> Result<SourceSpec, SpecError> {
    let fail = |reason: String| SpecError { spec: spec.to_string(), reason };
    let Some((kind, arg)) = spec.split_once(':') else {
        return Err(fail("expected KIND:ARG; allowed: images:DIR".into()));
    };
    match kind {
        "images" if arg.trim().is_empty() => {
            Err(fail("images: needs a folder, e.g. images:samples".into()))
        }
        "images" => Ok(SourceSpec::Images(PathBuf::from(arg))),
        "camera" => Err(fail(
            "camera sources are not supported yet (camera: arrives with the edge work); \
             allowed: images:DIR"
                .into(),
        )),
        other => Err(fail(format!("unknown source kind `{other}`; allowed: images:DIR"))),
    }
}

/// Opens the source a spec names.
pub fn open_source(
    spec: &SourceSpec,
    options: ReplayOptions,
    clock: Arc<dyn Clock>,
) -> Result<Box<dyn FrameSource>, SourceError> {
    match spec {
        SourceSpec::Images(dir) => Ok(Box::new(ImageDirSource::open(dir, options, clock)?)),
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
    fn camera_spec_says_it_is_not_here_yet() {
        let err = parse_source_spec("camera:/dev/video0").unwrap_err();
        assert!(err.reason.contains("edge work"), "{err}");
        assert!(err.reason.contains("images:DIR"), "{err}");
    }

    #[test]
    fn unknown_kind_missing_colon_and_empty_folder_are_rejected() {
        let err = parse_source_spec("rtsp://cam").unwrap_err();
        assert!(err.reason.contains("unknown source kind `rtsp`"), "{err}");
        let err = parse_source_spec("samples").unwrap_err();
        assert!(err.reason.contains("KIND:ARG"), "{err}");
        let err = parse_source_spec("images:").unwrap_err();
        assert!(err.reason.contains("needs a folder"), "{err}");
    }
}
