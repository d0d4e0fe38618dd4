//! Errors from real PWM hardware, worded for the person at the bin: which device,
//! what went wrong, and what to check.

use std::fmt;
use std::io;

/// A PWM device that could not be opened, set up or written.
#[derive(thiserror::Error)]
pub struct DeviceError {
    /// What was being opened or written: a path, or a board and channel.
    pub device: String,
    pub cause: String,
    /// What to check, when the cause suggests something.
    pub hint: Option<String>,
}

impl DeviceError {
    pub fn new(device: impl Into<String>, cause: impl fmt::Display) -> Self {
        DeviceError { device: device.into(), cause: cause.to_string(), hint: None }
    }

    pub fn with_hint(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }

    /// An I/O error on a sysfs PWM path, with the likely cause.
    pub fn io(device: impl Into<String>, err: &io::Error) -> Self {
        DeviceError::new(device, err).with_hint(io_hint(err))
    }
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.device, self.cause)?;
        if let Some(hint) = &self.hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

// Servo errors print the channel's error with `{:?}`: keep that readable too.
impl fmt::Debug for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl embedded_hal::pwm::Error for DeviceError {
    fn kind(&self) -> embedded_hal::pwm::ErrorKind {
        embedded_hal::pwm::ErrorKind::Other
    }
}

/// Enabling PWM on a Raspberry Pi, for hints.
pub const PI_OVERLAY_HINT: &str = "on a Raspberry Pi add `dtoverlay=pwm-2chan` to \
     /boot/firmware/config.txt and reboot (it puts the two PWM channels on GPIO 18 and 19)";

/// Access to GPIO and PWM without root, for hints.
pub const PERMISSION_HINT: &str = "run as a user in the `gpio` group (`sudo usermod -aG gpio $USER`, \
     then log in again) and check that a udev rule gives that group /sys/class/pwm; \
     Raspberry Pi OS ships one";

/// The likely cause of an I/O error on a sysfs PWM path.
pub fn io_hint(err: &io::Error) -> Option<String> {
    match err.kind() {
        io::ErrorKind::NotFound => Some(format!(
            "the PWM chip or channel is not enabled: {PI_OVERLAY_HINT}; on a Jetson set the pin \
             to PWM with `sudo /opt/nvidia/jetson-io/jetson-io.py`; `ls /sys/class/pwm` lists the chips"
        )),
        io::ErrorKind::PermissionDenied => Some(PERMISSION_HINT.to_string()),
        _ if err.raw_os_error() == Some(libc::EBUSY) => {
            Some("the channel is held by another driver or program (audio, a fan, another smartbin?)".into())
        }
        io::ErrorKind::InvalidInput => {
            Some("the chip refused the value: check that the chip supports a 20 ms period".into())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_device_the_cause_and_what_to_check() {
        let missing = io::Error::from(io::ErrorKind::NotFound);
        let err = DeviceError::io("/sys/class/pwm/pwmchip0", &missing);
        let text = err.to_string();
        assert!(text.starts_with("/sys/class/pwm/pwmchip0: "), "{text}");
        assert!(text.contains("dtoverlay=pwm-2chan") && text.contains("/boot/firmware/config.txt"), "{text}");
        assert_eq!(format!("{err:?}"), text);

        let denied = io::Error::from(io::ErrorKind::PermissionDenied);
        let text = DeviceError::io("/sys/class/pwm/pwmchip0/export", &denied).to_string();
        assert!(text.contains("`gpio` group") && text.contains("udev"), "{text}");

        let busy = io::Error::from_raw_os_error(libc::EBUSY);
        assert!(DeviceError::io("x", &busy).to_string().contains("another driver"));

        let plain = DeviceError::new("/dev/i2c-1", "timed out");
        assert_eq!(plain.to_string(), "/dev/i2c-1: timed out");
    }
}
