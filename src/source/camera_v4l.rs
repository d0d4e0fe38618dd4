//! V4L2 cameras (feature `camera`, Linux): capture through nokhwa, device listing
//! through v4l, nokhwa's own V4L2 layer.
//!
//! nokhwa is asked for the exact configured format. Its "highest frame rate" and
//! "highest resolution" requests pick formats some cameras then refuse (nokhwa
//! issue #99, a Pi HD camera), and a silently different picture than the one the
//! model was checked with is worse than a clear start-up error.
//!
//! Frames come as raw V4L2 buffers (`frame_raw`) and are converted by
//! [`super::convert`]. A read error means the device went away (unplugged, USB
//! reset): it is reported as [`SourceError::Lost`] and the camera is closed, so
//! [`super::reconnect::ReconnectingSource`] can open it afresh.
//!
//! Not covered: a camera that stops sending without an error blocks the read,
//! since nokhwa's stream has no timeout.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use nokhwa::utils::{ApiBackend, CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType};
use nokhwa::Camera;
use v4l::capability::Flags;
use v4l::frameinterval::FrameIntervalEnum;
use v4l::framesize::FrameSizeEnum;
use v4l::video::Capture;
use v4l::{Device, FourCC};

use super::camera::{
    access_hint, check_offered, format_device, pick_device, resolve_path, CameraConfig, CameraSelector, DeviceInfo,
    FormatInfo, Rate, SizeInfo, Span,
};
use super::convert::{self, FrameLayout, PixelFormat};
use super::{Frame, FrameSource, SourceError};
use crate::clock::Clock;

/// A V4L2 camera streaming in one fixed format.
pub struct CameraSource {
    /// `None` once the device is lost; the source then only reports the loss.
    camera: Option<Camera>,
    layout: FrameLayout,
    /// `camera:/dev/video0`, the origin of every frame.
    origin: String,
    /// `/dev/video0 `HD Pro Webcam C920``, for logs.
    label: String,
    drain_frames: u32,
    clock: Arc<dyn Clock>,
}

impl CameraSource {
    /// Picks the device, checks it offers the format and starts the stream.
    pub fn open(selector: &CameraSelector, config: &CameraConfig, clock: Arc<dyn Clock>) -> Result<Self, SourceError> {
        let spec = selector.spec();
        let fail = |reason: String| SourceError::Open { spec: spec.clone(), reason };
        let devices = describe_devices(Some(config));
        let device = pick_device(&devices, &resolve_path(selector)).map_err(fail)?;
        check_offered(device, config).map_err(fail)?;
        let camera = start_stream(device, config).map_err(fail)?;
        let layout = FrameLayout {
            stride: row_stride(&device.path, config),
            ..FrameLayout::new(config.format, config.width, config.height)
        };
        let source = CameraSource {
            camera: Some(camera),
            layout,
            origin: format!("camera:{}", device.path.display()),
            label: format!("{} `{}`", device.path.display(), device.name),
            drain_frames: config.drain_frames,
            clock,
        };
        log::info!("camera {} streaming {}", source.label, config.describe());
        Ok(source)
    }

    fn lost(&mut self, reason: String) -> SourceError {
        close(self.camera.take());
        SourceError::Lost { device: self.label.clone(), reason }
    }
}

impl FrameSource for CameraSource {
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        let converted = match self.camera.as_mut() {
            None => return Err(self.lost("the stream was closed after an earlier error".into())),
            Some(camera) => camera.frame_raw().map(|data| convert::to_rgb(&data, &self.layout, &self.origin)),
        };
        match converted {
            Err(e) => Err(self.lost(format!("{e}; is it still plugged in?"))),
            Ok(image) => Ok(Some(Frame { image: image?, origin: self.origin.clone(), captured_at: self.clock.wall() })),
        }
    }

    /// Reads and drops `drain_frames` buffers: the driver fills its queue while
    /// nobody reads, so the first frames after a trigger show the tray before
    /// the item arrived.
    fn drain(&mut self) -> Result<usize, SourceError> {
        for dropped in 0..self.drain_frames as usize {
            let read = match self.camera.as_mut() {
                None => return Err(self.lost("the stream was closed after an earlier error".into())),
                Some(camera) => camera.frame_raw().map(|_| ()),
            };
            if let Err(e) = read {
                log::debug!("draining stopped after {dropped} frames");
                return Err(self.lost(format!("{e}; is it still plugged in?")));
            }
        }
        Ok(self.drain_frames as usize)
    }

    fn describe(&self) -> String {
        let l = &self.layout;
        format!("{} ({} {}x{})", self.label, l.format.fourcc(), l.width, l.height)
    }
}

/// Drops a camera whose device may be gone. v4l's stream panics in `drop` on any
/// error but "no such device"; a broken USB link can give others, and that must
/// not end the run.
fn close(camera: Option<Camera>) {
    if let Some(camera) = camera {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(camera))).is_err() {
            log::warn!("closing the lost camera failed; its buffers are released when smartbin exits");
        }
    }
}

fn frame_format(format: PixelFormat) -> FrameFormat {
    match format {
        PixelFormat::Mjpeg => FrameFormat::MJPEG,
        PixelFormat::Yuyv => FrameFormat::YUYV,
        PixelFormat::Rgb => FrameFormat::RAWRGB,
    }
}

fn start_stream(device: &DeviceInfo, config: &CameraConfig) -> Result<Camera, String> {
    let format = frame_format(config.format);
    let exact = CameraFormat::new_from(config.width, config.height, format, config.fps);
    let formats = [format];
    let request = RequestedFormat::with_formats(RequestedFormatType::Exact(exact), &formats);
    let explain = |e: nokhwa::NokhwaError| explain_open_error(device, config, &e.to_string());
    let mut camera =
        Camera::with_backend(CameraIndex::Index(device.index), request, ApiBackend::Video4Linux).map_err(explain)?;
    camera.open_stream().map_err(explain)?;
    Ok(camera)
}

/// nokhwa's errors are strings; add what to check and what the camera offers.
fn explain_open_error(device: &DeviceInfo, config: &CameraConfig, error: &str) -> String {
    let hint = if error.contains("Permission denied") {
        "is the user in the `video` group? (`sudo usermod -aG video $USER`, then log in again)"
    } else if error.contains("busy") {
        "is another program using the camera? (`fuser /dev/video*` shows which)"
    } else if error.contains("No such") {
        "is the camera plugged in?"
    } else if error.contains("not whole number") {
        "nokhwa only sets whole frame rates; pick one of those listed below"
    } else {
        "the camera did not accept the request; pick one of the formats listed below"
    };
    format!(
        "opening {} for {} failed: {error}\n{hint}\n{}",
        device.path.display(),
        config.describe(),
        format_device(device)
    )
}

/// Bytes per row of raw frames as the driver set them up (rows can be padded,
/// e.g. to 32 bytes on a Pi); 0 (no padding) when that cannot be read.
fn row_stride(path: &Path, config: &CameraConfig) -> usize {
    let format = Device::with_path(path).and_then(|d| d.format());
    match format {
        Ok(f) if (f.width, f.height) == (config.width, config.height) => f.stride as usize,
        Ok(f) => {
            log::warn!(
                "{} reports {}x{} after being set to {}x{}",
                path.display(),
                f.width,
                f.height,
                config.width,
                config.height
            );
            0
        }
        Err(e) => {
            log::debug!("reading the row stride of {}: {e}", path.display());
            0
        }
    }
}

// ---- listing --------------------------------------------------------------------

/// Every `/dev/videoN`, by N, with what it offers.
pub fn list_devices() -> Vec<DeviceInfo> {
    describe_devices(None)
}

/// `request`: for sizes given as ranges, list the frame rates at the requested
/// size (rates depend on size) instead of at the largest.
fn describe_devices(request: Option<&CameraConfig>) -> Vec<DeviceInfo> {
    let mut nodes: Vec<(u32, PathBuf)> = std::fs::read_dir("/dev")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let path = entry.path();
            super::camera::video_index(&path).map(|index| (index, path))
        })
        .collect();
    nodes.sort();
    nodes.into_iter().map(|(index, path)| describe_device(index, path, request)).collect()
}

fn describe_device(index: u32, path: PathBuf, request: Option<&CameraConfig>) -> DeviceInfo {
    let mut info = DeviceInfo {
        name: sysfs_name(index),
        path,
        index,
        driver: String::new(),
        bus: String::new(),
        capture: false,
        formats: Vec::new(),
        error: None,
    };
    let caps = Device::with_path(&info.path).and_then(|device| Ok((device.query_caps()?, device)));
    match caps {
        Err(e) => info.error = Some(format!("{e}: {}", access_hint(&e))),
        Ok((caps, device)) => {
            info.name = caps.card;
            info.driver = caps.driver;
            info.bus = caps.bus;
            info.capture = caps.capabilities.contains(Flags::VIDEO_CAPTURE);
            if info.capture {
                info.formats = describe_formats(&device, request);
            }
        }
    }
    info
}

/// The name udev would show, for devices that cannot be opened.
fn sysfs_name(index: u32) -> String {
    std::fs::read_to_string(format!("/sys/class/video4linux/video{index}/name"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn describe_formats(device: &Device, request: Option<&CameraConfig>) -> Vec<FormatInfo> {
    let formats = device.enum_formats().unwrap_or_default();
    formats
        .into_iter()
        .map(|desc| FormatInfo {
            fourcc: desc.fourcc.str().map(str::to_string).unwrap_or_else(|_| format!("{:?}", desc.fourcc.repr)),
            description: desc.description,
            sizes: describe_sizes(device, desc.fourcc, request),
        })
        .collect()
}

fn describe_sizes(device: &Device, fourcc: FourCC, request: Option<&CameraConfig>) -> Vec<SizeInfo> {
    let sizes = device.enum_framesizes(fourcc).unwrap_or_default();
    sizes
        .into_iter()
        .map(|size| match size.size {
            FrameSizeEnum::Discrete(d) => SizeInfo {
                width: Span::exactly(d.width),
                height: Span::exactly(d.height),
                rates: describe_rates(device, fourcc, d.width, d.height),
            },
            FrameSizeEnum::Stepwise(s) => {
                let width = Span { min: s.min_width, max: s.max_width, step: s.step_width };
                let height = Span { min: s.min_height, max: s.max_height, step: s.step_height };
                let (w, h) = match request {
                    Some(c) if width.contains(c.width) && height.contains(c.height) => (c.width, c.height),
                    _ => (width.max, height.max),
                };
                SizeInfo { width, height, rates: describe_rates(device, fourcc, w, h) }
            }
        })
        .collect()
}

fn describe_rates(device: &Device, fourcc: FourCC, width: u32, height: u32) -> Vec<Rate> {
    // intervals are seconds per frame
    let fps = |f: v4l::Fraction| (f.numerator > 0).then(|| f64::from(f.denominator) / f64::from(f.numerator));
    let intervals = device.enum_frameintervals(fourcc, width, height).unwrap_or_default();
    intervals
        .into_iter()
        .filter_map(|interval| match interval.interval {
            FrameIntervalEnum::Discrete(f) => fps(f).map(Rate::Fixed),
            FrameIntervalEnum::Stepwise(s) => Some(Rate::Range { min: fps(s.max)?, max: fps(s.min)? }),
        })
        .collect()
}
