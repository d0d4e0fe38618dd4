//! `smartbin cameras`: every V4L2 device, whether it is a camera, and the formats,
//! sizes and frame rates each camera offers.

use std::process::ExitCode;

use crate::source::camera::{format_device, DeviceInfo};

#[derive(Debug, clap::Args)]
pub struct CamerasArgs {}

/// Exit code 0 when at least one camera is usable, so scripts can check.
pub fn main(_args: CamerasArgs) -> anyhow::Result<ExitCode> {
    let devices = crate::source::list_devices().map_err(anyhow::Error::msg)?;
    print!("{}", listing(&devices));
    Ok(if devices.iter().any(DeviceInfo::is_camera) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The whole listing, ending with what to do next.
pub fn listing(devices: &[DeviceInfo]) -> String {
    if devices.is_empty() {
        return "no video devices (/dev/video*): is the camera plugged in (and, on a Pi, enabled)?\n".into();
    }
    let mut out: Vec<String> = devices.iter().map(format_device).collect();
    let footer = if let Some(camera) = devices.iter().find(|d| d.is_camera()) {
        format!(
            "use a camera with [source] spec = \"camera:{}\" (or --source camera:{}), and set [source.camera] \
             format, width, height and fps to one of its formats\n",
            camera.index, camera.index
        )
    } else if devices.iter().any(|d| d.error.is_some()) {
        "no usable camera: see the errors above\n".into()
    } else {
        "none of these is a camera: is the camera plugged in?\n".into()
    };
    out.push(footer);
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::camera::tests::webcam;

    #[test]
    fn listing_ends_with_how_to_use_the_first_camera() {
        let mut codec = webcam(10, "bcm2835-codec-decode");
        codec.capture = false;
        codec.formats.clear();
        let text = listing(&[webcam(0, "HD Pro Webcam C920"), codec.clone()]);
        assert!(text.starts_with("/dev/video0  HD Pro Webcam C920"), "{text}");
        assert!(
            text.contains("/dev/video10  bcm2835-codec-decode (uvcvideo, usb-0000:01:00.0-1.2)\n  not a camera"),
            "{text}"
        );
        assert!(text.ends_with("spec = \"camera:0\" (or --source camera:0), and set [source.camera] format, width, height and fps to one of its formats\n"), "{text}");

        assert!(listing(&[codec]).ends_with("none of these is a camera: is the camera plugged in?\n"));
        assert!(listing(&[]).contains("no video devices"));
    }
}
