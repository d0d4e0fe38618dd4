//! `camera:` sources: which V4L2 device, in which format, and what devices offer.
//!
//! The device work itself (nokhwa for capture, v4l for listing) lives in
//! `camera_v4l.rs` behind the `camera` cargo feature. This file holds what can be
//! decided without a device: parsing `camera:ARG`, the `[source.camera]` settings,
//! choosing a device from a listing, checking a request against what a device
//! offers, and the text of those listings and errors.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::convert::PixelFormat;
use super::{FrameSource, SourceError};
use crate::clock::Clock;

/// Buffers V4L2 queues for a stream (v4l's `MmapStream::new`, which nokhwa uses):
/// after a quiet spell every one of them holds an old frame.
pub const STREAM_BUFFERS: u32 = 4;

/// Said when this build has no camera support.
pub const NO_CAMERA_SUPPORT: &str = "this smartbin was built without camera support; rebuild with the \
     `camera` feature (`cargo build --release --features camera`, which needs libclang-dev)";

/// Which camera a `camera:ARG` spec means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CameraSelector {
    /// `camera:` — the first device that is a camera.
    First,
    /// `camera:0` — `/dev/video0`.
    Index(u32),
    /// `camera:/dev/video0`, or a stable link such as `/dev/v4l/by-id/...`.
    Path(PathBuf),
    /// `camera:C920` — the first camera whose name contains this (any case).
    Name(String),
}

impl CameraSelector {
    pub fn parse(arg: &str) -> CameraSelector {
        let arg = arg.trim();
        if arg.is_empty() {
            CameraSelector::First
        } else if let Ok(index) = arg.parse() {
            CameraSelector::Index(index)
        } else if arg.starts_with('/') {
            CameraSelector::Path(PathBuf::from(arg))
        } else {
            CameraSelector::Name(arg.to_string())
        }
    }
}

impl CameraSelector {
    /// The spec for messages: `camera:0`, `camera: (the first camera)`.
    pub fn spec(&self) -> String {
        match self {
            CameraSelector::First => "camera: (the first camera)".into(),
            other => format!("camera:{other}"),
        }
    }
}

impl fmt::Display for CameraSelector {
    /// The ARG of `camera:ARG`, so a spec prints back as it parses.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CameraSelector::First => Ok(()),
            CameraSelector::Index(i) => write!(f, "{i}"),
            CameraSelector::Path(p) => write!(f, "{}", p.display()),
            CameraSelector::Name(n) => f.write_str(n),
        }
    }
}

/// `[source.camera]`: the format to ask the camera for. The request is exact: a
/// camera that does not offer it is an error listing what it does offer, rather
/// than a silently different picture than the model was tested with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CameraConfig {
    pub width: u32,
    pub height: u32,
    /// Frames per second (whole numbers only: nokhwa cannot set 29.97).
    pub fps: u32,
    /// `mjpeg`, `yuyv` or `rgb`.
    pub format: PixelFormat,
    /// Frames thrown away before the frames of an item, so they are taken after
    /// the trigger and not queued before it.
    pub drain_frames: u32,
}

impl Default for CameraConfig {
    fn default() -> Self {
        CameraConfig { width: 640, height: 480, fps: 30, format: PixelFormat::Mjpeg, drain_frames: STREAM_BUFFERS }
    }
}

pub const SIZE_LIMITS: (u32, u32) = (16, 8192);
pub const FPS_LIMITS: (u32, u32) = (1, 240);
pub const MAX_DRAIN_FRAMES: u32 = 32;

impl CameraConfig {
    /// (key under `[source.camera]`, message) for every value out of range.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let (lo, hi) = SIZE_LIMITS;
        for (key, value) in [("width", self.width), ("height", self.height)] {
            if !(lo..=hi).contains(&value) {
                out.push((key, format!("{value} is out of range; allowed: {lo}..={hi} pixels")));
            }
        }
        let (lo, hi) = FPS_LIMITS;
        if !(lo..=hi).contains(&self.fps) {
            out.push(("fps", format!("{} is out of range; allowed: {lo}..={hi}", self.fps)));
        }
        if self.drain_frames > MAX_DRAIN_FRAMES {
            out.push((
                "drain_frames",
                format!("{} is out of range; allowed: 0..={MAX_DRAIN_FRAMES}", self.drain_frames),
            ));
        }
        out
    }

    /// E.g. `MJPG 640x480 @ 30 fps`.
    pub fn describe(&self) -> String {
        format!("{} {}x{} @ {} fps", self.format.fourcc(), self.width, self.height, self.fps)
    }
}

// ---- what a device offers -----------------------------------------------------

/// One V4L2 device node as `smartbin cameras` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceInfo {
    pub path: PathBuf,
    /// N of `/dev/videoN`.
    pub index: u32,
    /// The driver's card name, e.g. `HD Pro Webcam C920`.
    pub name: String,
    pub driver: String,
    pub bus: String,
    /// The node can capture video (single-planar, which is what nokhwa reads).
    pub capture: bool,
    pub formats: Vec<FormatInfo>,
    /// Why the node could not be queried (permission denied, busy).
    pub error: Option<String>,
}

impl DeviceInfo {
    /// Codec, ISP and metadata nodes are video devices too, but offer no capture
    /// formats; they must never be picked as a camera.
    pub fn is_camera(&self) -> bool {
        self.error.is_none() && self.capture && !self.formats.is_empty()
    }

    fn label(&self) -> String {
        if self.name.is_empty() {
            self.path.display().to_string()
        } else {
            format!("{} `{}`", self.path.display(), self.name)
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FormatInfo {
    pub fourcc: String,
    pub description: String,
    pub sizes: Vec<SizeInfo>,
}

/// A frame size (or range of sizes) and its frame rates.
#[derive(Debug, Clone, PartialEq)]
pub struct SizeInfo {
    pub width: Span,
    pub height: Span,
    /// Empty when the driver does not list rates (any rate is then tried).
    pub rates: Vec<Rate>,
}

/// `min..=max` in steps of `step`; a single value has `min == max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub min: u32,
    pub max: u32,
    pub step: u32,
}

impl Span {
    pub fn exactly(value: u32) -> Span {
        Span { min: value, max: value, step: 1 }
    }

    pub fn contains(&self, value: u32) -> bool {
        (self.min..=self.max).contains(&value) && (value - self.min) % self.step.max(1) == 0
    }
}

/// Frames per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    Fixed(f64),
    Range { min: f64, max: f64 },
}

impl Rate {
    fn allows(&self, fps: u32) -> bool {
        let fps = f64::from(fps);
        match *self {
            Rate::Fixed(r) => (r - fps).abs() < 0.01,
            Rate::Range { min, max } => (min - 0.01..=max + 0.01).contains(&fps),
        }
    }
}

impl SizeInfo {
    fn allows(&self, config: &CameraConfig) -> bool {
        self.width.contains(config.width) && self.height.contains(config.height)
    }
}

/// Checks a request against a device's listing, so a camera that cannot do it is
/// refused with what it can do instead of nokhwa's bare "Failed to Fufill".
pub fn check_offered(device: &DeviceInfo, config: &CameraConfig) -> Result<(), String> {
    let fourcc = config.format.fourcc();
    let refuse = |what: String| {
        format!(
            "{} does not offer {what}; it offers:\n{}set [source.camera] format, width, height and fps to one of these",
            device.label(),
            format_formats(device)
        )
    };
    let Some(format) = device.formats.iter().find(|f| f.fourcc == fourcc) else {
        return Err(refuse(format!("{fourcc} ({}) at all", config.format)));
    };
    let sizes: Vec<&SizeInfo> = format.sizes.iter().filter(|s| s.allows(config)).collect();
    if sizes.is_empty() {
        return Err(refuse(format!("{fourcc} at {}x{}", config.width, config.height)));
    }
    let rate_ok = sizes.iter().any(|s| s.rates.is_empty() || s.rates.iter().any(|r| r.allows(config.fps)));
    if !rate_ok {
        return Err(refuse(config.describe()));
    }
    Ok(())
}

// ---- choosing a device ----------------------------------------------------------

/// `camera:/dev/v4l/by-id/...` links to `/dev/videoN`: selecting by N lets the
/// index-based open and the listing agree. Paths that do not resolve stay paths
/// (and are then reported as missing).
pub fn resolve_path(selector: &CameraSelector) -> CameraSelector {
    if let CameraSelector::Path(path) = selector {
        if let Some(index) = std::fs::canonicalize(path).ok().as_deref().and_then(video_index) {
            return CameraSelector::Index(index);
        }
    }
    selector.clone()
}

/// N of a `/dev/videoN` path.
pub fn video_index(path: &Path) -> Option<u32> {
    path.file_name()?.to_str()?.strip_prefix("video")?.parse().ok()
}

const LIST_HINT: &str = "`smartbin cameras` lists the cameras";

/// The device a selector means, among `devices` (sorted by index).
pub fn pick_device<'a>(devices: &'a [DeviceInfo], selector: &CameraSelector) -> Result<&'a DeviceInfo, String> {
    if devices.is_empty() {
        let wanted = match selector {
            CameraSelector::Index(i) => format!("/dev/video{i}"),
            CameraSelector::Path(p) => p.display().to_string(),
            CameraSelector::Name(n) => format!("a camera named like `{n}`"),
            CameraSelector::First => "a camera".into(),
        };
        return Err(format!(
            "looking for {wanted}, but there are no video devices (/dev/video*) at all: is the camera \
             plugged in (and, on a Pi, enabled)? `smartbin cameras` lists what there is"
        ));
    }
    let found = match selector {
        CameraSelector::Index(i) => devices.iter().find(|d| d.index == *i),
        CameraSelector::Path(p) => devices.iter().find(|d| d.path == *p),
        CameraSelector::First | CameraSelector::Name(_) => return pick_camera(devices, selector),
    };
    let Some(device) = found else {
        let there: Vec<String> = devices.iter().map(|d| d.path.display().to_string()).collect();
        let wanted = match selector {
            CameraSelector::Index(i) => format!("/dev/video{i}"),
            other => other.to_string(),
        };
        return Err(format!(
            "{wanted} does not exist (there are {}): is the camera plugged in? {LIST_HINT}",
            there.join(", ")
        ));
    };
    usable(device)
}

/// The first camera, or the first whose name contains the wanted name.
fn pick_camera<'a>(devices: &'a [DeviceInfo], selector: &CameraSelector) -> Result<&'a DeviceInfo, String> {
    let cameras: Vec<&DeviceInfo> = devices.iter().filter(|d| d.is_camera()).collect();
    let listed = || cameras.iter().map(|d| d.label()).collect::<Vec<_>>().join(", ");
    let matching: Vec<&DeviceInfo> = match selector {
        CameraSelector::Name(name) => {
            let name = name.to_lowercase();
            cameras.iter().copied().filter(|d| d.name.to_lowercase().contains(&name)).collect()
        }
        _ => cameras.clone(),
    };
    match (matching.first(), selector) {
        (Some(device), _) => {
            if matching.len() > 1 {
                log::info!(
                    "{} cameras match `camera:{selector}`; using {} (name one by path to choose)",
                    matching.len(),
                    device.label()
                );
            }
            Ok(device)
        }
        (None, _) if cameras.is_empty() => Err(no_cameras(devices)),
        (None, CameraSelector::Name(name)) => Err(format!("no camera's name contains `{name}`; cameras: {}", listed())),
        (None, _) => Err(no_cameras(devices)),
    }
}

fn no_cameras(devices: &[DeviceInfo]) -> String {
    if let Some(denied) = devices.iter().find(|d| d.error.is_some()) {
        return format!("no usable camera: {}", usable(denied).err().unwrap_or_default());
    }
    let there: Vec<String> = devices.iter().map(|d| d.label()).collect();
    format!(
        "none of the video devices is a camera (they offer no capture formats: {}): is the camera \
         plugged in? {LIST_HINT}",
        there.join(", ")
    )
}

/// A named device must be a camera that could be queried.
fn usable(device: &DeviceInfo) -> Result<&DeviceInfo, String> {
    if let Some(error) = &device.error {
        return Err(format!("cannot open {}: {error}", device.path.display()));
    }
    if !device.is_camera() {
        return Err(format!(
            "{} is not a camera (it offers no capture formats; a codec or metadata node?); {LIST_HINT}",
            device.label()
        ));
    }
    Ok(device)
}

/// What to check when a device cannot be opened, by the OS error.
pub fn access_hint(error: &std::io::Error) -> &'static str {
    match (error.kind(), error.raw_os_error()) {
        (std::io::ErrorKind::PermissionDenied, _) => {
            "is the user in the `video` group? (`sudo usermod -aG video $USER`, then log in again)"
        }
        (std::io::ErrorKind::NotFound, _) | (_, Some(libc::ENODEV)) => "is the camera plugged in?",
        (_, Some(libc::ENOTTY)) => "it is not a V4L2 device",
        (_, Some(libc::EBUSY)) => "is another program using the camera? (`fuser /dev/video*` shows which)",
        _ => "is the camera plugged in, and the user in the `video` group?",
    }
}

// ---- listings -------------------------------------------------------------------

/// `smartbin cameras`' text for one device.
pub fn format_device(device: &DeviceInfo) -> String {
    let mut out = device.path.display().to_string();
    if !device.name.is_empty() {
        out.push_str(&format!("  {}", device.name));
    }
    let origin: Vec<&str> =
        [device.driver.as_str(), device.bus.as_str()].into_iter().filter(|s| !s.is_empty()).collect();
    if !origin.is_empty() {
        out.push_str(&format!(" ({})", origin.join(", ")));
    }
    if let Some(error) = &device.error {
        out.push_str(&format!("\n  cannot open: {error}\n"));
    } else if device.is_camera() {
        out.push_str(&format!("  -> camera:{}\n", device.index));
        out.push_str(&format_formats(device));
    } else {
        out.push_str("\n  not a camera (no capture formats)\n");
    }
    out
}

/// The formats, sizes and rates, two-space indented, one line per size.
fn format_formats(device: &DeviceInfo) -> String {
    let mut out = String::new();
    for format in &device.formats {
        let usable = match PixelFormat::from_fourcc(&format.fourcc) {
            Some(f) => format!("format = \"{f}\""),
            None => "not usable by smartbin".into(),
        };
        out.push_str(&format!("  {} ({}) [{usable}]\n", format.fourcc, format.description));
        for size in &format.sizes {
            out.push_str(&format!("    {}: {}\n", format_size(size), format_rates(&size.rates)));
        }
    }
    out
}

fn format_size(size: &SizeInfo) -> String {
    let (w, h) = (size.width, size.height);
    if w.min == w.max && h.min == h.max {
        format!("{}x{}", w.min, h.min)
    } else {
        format!("{}x{} to {}x{} (steps of {}x{})", w.min, h.min, w.max, h.max, w.step, h.step)
    }
}

fn format_rates(rates: &[Rate]) -> String {
    if rates.is_empty() {
        return "frame rates not listed".into();
    }
    let text: Vec<String> = rates
        .iter()
        .map(|r| match *r {
            Rate::Fixed(fps) => format_fps(fps),
            Rate::Range { min, max } => format!("{}-{}", format_fps(min), format_fps(max)),
        })
        .collect();
    format!("{} fps", text.join(", "))
}

/// 30, 7.5, 29.97: whole rates without decimals.
fn format_fps(fps: f64) -> String {
    let text = format!("{fps:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

// ---- opening ------------------------------------------------------------------

/// Opens a camera for capture; fails with what to check when it cannot.
pub fn open_camera(
    selector: &CameraSelector,
    config: &CameraConfig,
    clock: Arc<dyn Clock>,
) -> Result<Box<dyn FrameSource>, SourceError> {
    #[cfg(all(feature = "camera", target_os = "linux"))]
    {
        Ok(Box::new(super::camera_v4l::CameraSource::open(selector, config, clock)?))
    }
    #[cfg(not(all(feature = "camera", target_os = "linux")))]
    {
        let _ = (config, clock);
        Err(SourceError::Open { spec: selector.spec(), reason: NO_CAMERA_SUPPORT.into() })
    }
}

/// Every `/dev/video*` node with its capabilities and formats, by index.
pub fn list_devices() -> Result<Vec<DeviceInfo>, String> {
    #[cfg(all(feature = "camera", target_os = "linux"))]
    {
        Ok(super::camera_v4l::list_devices())
    }
    #[cfg(not(all(feature = "camera", target_os = "linux")))]
    {
        Err(NO_CAMERA_SUPPORT.into())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn webcam(index: u32, name: &str) -> DeviceInfo {
        let discrete = |w, h, rates: &[f64]| SizeInfo {
            width: Span::exactly(w),
            height: Span::exactly(h),
            rates: rates.iter().map(|&r| Rate::Fixed(r)).collect(),
        };
        DeviceInfo {
            path: PathBuf::from(format!("/dev/video{index}")),
            index,
            name: name.into(),
            driver: "uvcvideo".into(),
            bus: "usb-0000:01:00.0-1.2".into(),
            capture: true,
            formats: vec![
                FormatInfo {
                    fourcc: "MJPG".into(),
                    description: "Motion-JPEG".into(),
                    sizes: vec![discrete(640, 480, &[30.0, 15.0]), discrete(1280, 720, &[30.0, 7.5])],
                },
                FormatInfo {
                    fourcc: "YUYV".into(),
                    description: "YUYV 4:2:2".into(),
                    sizes: vec![discrete(640, 480, &[30.0])],
                },
            ],
            error: None,
        }
    }

    fn codec(index: u32) -> DeviceInfo {
        DeviceInfo {
            path: PathBuf::from(format!("/dev/video{index}")),
            index,
            name: "bcm2835-codec-decode".into(),
            driver: "bcm2835-codec".into(),
            bus: "platform:bcm2835-codec".into(),
            capture: false,
            formats: vec![],
            error: None,
        }
    }

    fn metadata_node(index: u32, name: &str) -> DeviceInfo {
        DeviceInfo { capture: false, formats: vec![], ..webcam(index, name) }
    }

    #[test]
    fn selectors_parse_and_print_back() {
        let cases = [
            ("0", CameraSelector::Index(0)),
            ("12", CameraSelector::Index(12)),
            ("/dev/video2", CameraSelector::Path("/dev/video2".into())),
            ("HD Pro Webcam", CameraSelector::Name("HD Pro Webcam".into())),
            ("", CameraSelector::First),
        ];
        for (arg, want) in cases {
            let got = CameraSelector::parse(arg);
            assert_eq!(got, want, "{arg}");
            assert_eq!(got.to_string(), arg);
        }
        assert_eq!(CameraSelector::First.spec(), "camera: (the first camera)");
        assert_eq!(CameraSelector::Index(2).spec(), "camera:2");
        assert_eq!(video_index(Path::new("/dev/video13")), Some(13));
        assert_eq!(video_index(Path::new("/dev/media0")), None);
    }

    #[test]
    fn codec_and_metadata_nodes_are_never_picked() {
        let devices = [codec(10), metadata_node(0, "Pi Cam"), webcam(1, "HD Pro Webcam C920"), codec(11)];
        // the first camera, and by name, skip video0 (metadata) and video10
        assert_eq!(pick_device(&devices, &CameraSelector::First).unwrap().index, 1);
        assert_eq!(pick_device(&devices, &CameraSelector::Name("c920".into())).unwrap().index, 1);
        let err = pick_device(&devices, &CameraSelector::Name("codec".into())).unwrap_err();
        assert!(err.contains("no camera's name contains `codec`") && err.contains("/dev/video1"), "{err}");
        // naming a codec node outright is refused, saying why
        let err = pick_device(&devices, &CameraSelector::Index(10)).unwrap_err();
        assert!(err.contains("/dev/video10") && err.contains("not a camera"), "{err}");
        let err = pick_device(&devices, &CameraSelector::Path("/dev/video11".into())).unwrap_err();
        assert!(err.contains("not a camera"), "{err}");
        assert_eq!(pick_device(&devices, &CameraSelector::Path("/dev/video1".into())).unwrap().index, 1);
    }

    #[test]
    fn missing_devices_say_what_to_check() {
        let err = pick_device(&[], &CameraSelector::First).unwrap_err();
        assert!(err.contains("plugged in") && err.contains("smartbin cameras"), "{err}");
        let err = pick_device(&[], &CameraSelector::Index(0)).unwrap_err();
        assert!(err.starts_with("looking for /dev/video0, but there are no video devices"), "{err}");
        let devices = [webcam(0, "cam")];
        let err = pick_device(&devices, &CameraSelector::Index(3)).unwrap_err();
        assert!(err.contains("/dev/video3 does not exist") && err.contains("/dev/video0"), "{err}");
        let err = pick_device(&[codec(10)], &CameraSelector::First).unwrap_err();
        assert!(err.contains("none of the video devices is a camera"), "{err}");
        let denied = DeviceInfo {
            error: Some("Permission denied (os error 13): is the user in the `video` group?".into()),
            ..webcam(0, "")
        };
        let err = pick_device(&[denied.clone()], &CameraSelector::Index(0)).unwrap_err();
        assert!(err.contains("cannot open /dev/video0") && err.contains("`video` group"), "{err}");
        let err = pick_device(&[denied], &CameraSelector::First).unwrap_err();
        assert!(err.contains("`video` group"), "{err}");
    }

    #[test]
    fn requests_are_checked_against_the_offer() {
        let cam = webcam(0, "HD Pro Webcam C920");
        let mut config = CameraConfig::default();
        check_offered(&cam, &config).unwrap();
        config.fps = 15;
        check_offered(&cam, &config).unwrap();

        config.fps = 60;
        let err = check_offered(&cam, &config).unwrap_err();
        assert!(err.starts_with("/dev/video0 `HD Pro Webcam C920` does not offer MJPG 640x480 @ 60 fps"), "{err}");
        assert!(err.contains("    1280x720: 30, 7.5 fps"), "{err}");
        assert!(err.contains("[source.camera]"), "{err}");

        let config = CameraConfig { width: 1920, height: 1080, ..CameraConfig::default() };
        assert!(check_offered(&cam, &config).unwrap_err().contains("MJPG at 1920x1080"));
        let config = CameraConfig { format: PixelFormat::Rgb, ..CameraConfig::default() };
        assert!(check_offered(&cam, &config).unwrap_err().contains("RGB3 (rgb) at all"));
    }

    #[test]
    fn stepwise_sizes_and_rate_ranges_are_matched() {
        let mut cam = webcam(0, "unicam");
        cam.formats = vec![FormatInfo {
            fourcc: "YUYV".into(),
            description: "YUYV 4:2:2".into(),
            sizes: vec![SizeInfo {
                width: Span { min: 32, max: 2592, step: 2 },
                height: Span { min: 32, max: 1944, step: 2 },
                rates: vec![Rate::Range { min: 1.0, max: 30.0 }],
            }],
        }];
        let ok = CameraConfig { format: PixelFormat::Yuyv, ..CameraConfig::default() };
        check_offered(&cam, &ok).unwrap();
        let odd = CameraConfig { width: 641, ..ok.clone() };
        assert!(check_offered(&cam, &odd).is_err());
        let fast = CameraConfig { fps: 60, ..ok };
        let err = check_offered(&cam, &fast).unwrap_err();
        assert!(err.contains("32x32 to 2592x1944 (steps of 2x2): 1-30 fps"), "{err}");
        // a driver that lists no rates: the rate is left to the driver
        cam.formats[0].sizes[0].rates.clear();
        check_offered(&cam, &CameraConfig { format: PixelFormat::Yuyv, ..CameraConfig::default() }).unwrap();
    }

    #[test]
    fn listing_marks_cameras_and_the_rest() {
        let text = format_device(&webcam(0, "HD Pro Webcam C920"));
        assert_eq!(
            text,
            "/dev/video0  HD Pro Webcam C920 (uvcvideo, usb-0000:01:00.0-1.2)  -> camera:0\n\
             \x20 MJPG (Motion-JPEG) [format = \"mjpeg\"]\n\
             \x20   640x480: 30, 15 fps\n\
             \x20   1280x720: 30, 7.5 fps\n\
             \x20 YUYV (YUYV 4:2:2) [format = \"yuyv\"]\n\
             \x20   640x480: 30 fps\n"
        );
        let text = format_device(&codec(10));
        assert!(text.ends_with("not a camera (no capture formats)\n"), "{text}");
        let mut odd = webcam(2, "cam");
        odd.formats[1].fourcc = "NV12".into();
        odd.formats[1].sizes[0].rates = vec![Rate::Fixed(29.97)];
        let text = format_device(&odd);
        assert!(text.contains("NV12 (YUYV 4:2:2) [not usable by smartbin]"), "{text}");
        assert!(text.contains("640x480: 29.97 fps"), "{text}");
    }

    #[test]
    fn camera_config_ranges() {
        assert!(CameraConfig::default().problems().is_empty());
        let bad = CameraConfig { width: 8, height: 10_000, fps: 0, drain_frames: 33, ..CameraConfig::default() };
        let keys: Vec<&str> = bad.problems().iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, ["width", "height", "fps", "drain_frames"]);
        assert_eq!(CameraConfig::default().describe(), "MJPG 640x480 @ 30 fps");
    }

    #[test]
    fn access_hints_by_error() {
        let denied = std::io::Error::from_raw_os_error(libc::EACCES);
        assert!(access_hint(&denied).contains("`video` group"));
        let busy = std::io::Error::from_raw_os_error(libc::EBUSY);
        assert!(access_hint(&busy).contains("another program"));
        let gone = std::io::Error::from_raw_os_error(libc::ENOENT);
        assert!(access_hint(&gone).contains("plugged in"));
        let not_v4l2 = std::io::Error::from_raw_os_error(libc::ENOTTY);
        assert!(access_hint(&not_v4l2).contains("not a V4L2 device"));
    }

    #[cfg(not(all(feature = "camera", target_os = "linux")))]
    #[test]
    fn without_the_feature_cameras_say_to_rebuild() {
        let clock = Arc::new(crate::clock::SimClock::new());
        let err = open_camera(&CameraSelector::Index(0), &CameraConfig::default(), clock).err().unwrap();
        assert!(err.to_string().contains("`camera` feature"), "{err}");
        assert!(list_devices().unwrap_err().contains("`camera` feature"));
    }
}
