//! The `sysfs` backend: Linux's generic PWM interface under `/sys/class/pwm`, so
//! any board whose kernel exposes its PWM chips there can drive servos (a Jetson,
//! or a Raspberry Pi with the PWM overlay).
//!
//! Channel M of chip N lives in `pwmchipN/pwmM` once M is written to
//! `pwmchipN/export`; its `period` and `duty_cycle` are in nanoseconds and
//! `enable` starts the output. A servo's `channel` is M; `[actuation.sysfs] chip`
//! is N.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use embedded_hal::pwm::{ErrorType, SetDutyCycle};

use super::device::{io_hint, DeviceError};
use super::{ActuationError, ServoActuator, PERIOD};
use crate::clock::Clock;
use crate::config::ActuationConfig;

/// Where the kernel puts the PWM chips.
pub const SYSFS_PWM_ROOT: &str = "/sys/class/pwm";

/// Duty counts per 20 ms period: one per µs, far finer than a servo can tell.
pub const SYSFS_MAX_DUTY: u16 = 20_000;

/// How long an exported channel may take to become writable: udev gives its
/// files to the `gpio` group shortly (~100 ms) after the kernel creates them.
const EXPORT_WAIT: Duration = Duration::from_secs(1);
const EXPORT_POLL: Duration = Duration::from_millis(10);

/// Attribute writes that start a channel, in order. The duty cycle goes to 0
/// first because the kernel refuses a period shorter than the duty cycle a
/// previous user may have left; `enable` goes last because it is refused while
/// no period is set. Duty 0 means no pulses until the first move.
pub const SETUP_WRITES: [(&str, &str); 3] = [("duty_cycle", "0"), ("period", "20000000"), ("enable", "1")];

/// One exported PWM channel. Dropping it stops the pulses.
#[derive(Debug)]
pub struct SysfsPwm {
    dir: PathBuf,
}

impl SysfsPwm {
    /// Exports channel `channel` of `root/pwmchip{chip}` if needed, waits for udev
    /// to make it writable, and starts it at 20 ms with no pulses. `root` is
    /// [`SYSFS_PWM_ROOT`] except in tests.
    pub fn open(root: &Path, chip: u32, channel: u8, clock: &dyn Clock) -> Result<Self, DeviceError> {
        let chip_dir = root.join(format!("pwmchip{chip}"));
        check_chip(root, &chip_dir)?;
        check_channel_count(&chip_dir, channel)?;
        let dir = chip_dir.join(format!("pwm{channel}"));
        if !dir.exists() {
            write_attr(&chip_dir.join("export"), &channel.to_string())?;
        }
        wait_writable(&dir, clock)?;
        set_normal_polarity(&dir)?;
        for (name, value) in SETUP_WRITES {
            write_attr(&dir.join(name), value)?;
        }
        log::info!("PWM channel {} started at 20 ms", dir.display());
        Ok(SysfsPwm { dir })
    }

    /// The channel's folder, `…/pwmchipN/pwmM`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl ErrorType for SysfsPwm {
    type Error = DeviceError;
}

impl SetDutyCycle for SysfsPwm {
    fn max_duty_cycle(&self) -> u16 {
        SYSFS_MAX_DUTY
    }

    fn set_duty_cycle(&mut self, duty: u16) -> Result<(), DeviceError> {
        write_attr(&self.dir.join("duty_cycle"), &duty_ns(duty).to_string())
    }
}

impl Drop for SysfsPwm {
    /// A servo left pulsing after the program ends would hold (and heat) forever.
    fn drop(&mut self) {
        for (name, value) in [("duty_cycle", "0"), ("enable", "0")] {
            if let Err(e) = write_attr(&self.dir.join(name), value) {
                log::warn!("stopping PWM: {e}");
            }
        }
    }
}

/// Pulse width in ns for `duty` counts of [`SYSFS_MAX_DUTY`] per period.
pub fn duty_ns(duty: u16) -> u64 {
    let period_ns = PERIOD.as_nanos() as u64;
    u64::from(duty.min(SYSFS_MAX_DUTY)) * period_ns / u64::from(SYSFS_MAX_DUTY)
}

/// Builds a [`ServoActuator`] on channels of `[actuation.sysfs] chip` under `root`.
pub fn sysfs_actuator(
    config: &ActuationConfig,
    root: &Path,
    clock: Arc<dyn Clock>,
) -> Result<ServoActuator<SysfsPwm>, ActuationError> {
    let pwms = sysfs_channels(config, root, clock.as_ref())?;
    ServoActuator::new(config, pwms, clock)
}

/// The sysfs PWM channels of the configured servos, in config order.
pub fn sysfs_channels(config: &ActuationConfig, root: &Path, clock: &dyn Clock) -> Result<Vec<SysfsPwm>, ActuationError> {
    let chip = config.sysfs.chip;
    Ok(config.servos.iter().map(|s| SysfsPwm::open(root, chip, s.channel, clock)).collect::<Result<Vec<_>, _>>()?)
}

/// Writes one attribute. Never creates a file: a missing attribute is an error,
/// as it is in sysfs. (Truncating is a no-op there; in a test folder it keeps
/// the file holding just the last value.)
fn write_attr(path: &Path, value: &str) -> Result<(), DeviceError> {
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|e| DeviceError::io(path.display().to_string(), &e))
}

fn check_chip(root: &Path, chip_dir: &Path) -> Result<(), DeviceError> {
    if chip_dir.is_dir() {
        return Ok(());
    }
    let chips = list_chips(root);
    let found = if chips.is_empty() {
        format!("{} has no PWM chips", root.display())
    } else {
        format!("chips here: {}", chips.join(", "))
    };
    let missing = io::Error::from(io::ErrorKind::NotFound);
    let hint = io_hint(&missing).map(|h| format!("{found}; set [actuation.sysfs] chip; {h}"));
    Err(DeviceError::new(chip_dir.display().to_string(), "no such PWM chip").with_hint(hint))
}

fn list_chips(root: &Path) -> Vec<String> {
    let mut chips: Vec<String> = fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("pwmchip"))
        .collect();
    chips.sort();
    chips
}

/// `npwm` says how many channels the chip has; a channel past it cannot be exported.
fn check_channel_count(chip_dir: &Path, channel: u8) -> Result<(), DeviceError> {
    let Ok(text) = fs::read_to_string(chip_dir.join("npwm")) else {
        return Ok(());
    };
    match text.trim().parse::<u32>() {
        Ok(n) if u32::from(channel) >= n => Err(DeviceError::new(
            chip_dir.display().to_string(),
            format!("has {n} PWM channels (0..={}), not channel {channel}", n.saturating_sub(1)),
        )
        .with_hint(Some("set the servo's `channel` to one of them".into()))),
        _ => Ok(()),
    }
}

/// Waits until the channel's `enable` opens for writing: the kernel creates the
/// folder on export, then udev fixes its permissions.
fn wait_writable(dir: &Path, clock: &dyn Clock) -> Result<(), DeviceError> {
    let enable = dir.join("enable");
    let deadline = clock.now() + EXPORT_WAIT;
    loop {
        let err = match OpenOptions::new().write(true).open(&enable) {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        let transient = matches!(err.kind(), io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied);
        if !transient || clock.now() >= deadline {
            let cause = match err.kind() {
                io::ErrorKind::NotFound => format!("did not appear within {} ms of the export", EXPORT_WAIT.as_millis()),
                _ => err.to_string(),
            };
            return Err(DeviceError::new(enable.display().to_string(), cause).with_hint(io_hint(&err)));
        }
        clock.sleep(EXPORT_POLL);
    }
}

/// Servos read a high pulse; an inverted channel (left so by someone else)
/// would send them the complement.
fn set_normal_polarity(dir: &Path) -> Result<(), DeviceError> {
    let path = dir.join("polarity");
    match fs::read_to_string(&path) {
        Ok(p) if p.trim() != "normal" => write_attr(&path, "normal"),
        // Some chips have no polarity file, or only normal.
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actuation::Actuator;
    use crate::clock::{SimClock, SystemClock};
    use crate::config::Config;

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap()
    }

    /// `root/pwmchip{chip}` as the kernel lays it out, with `npwm` channels.
    fn make_chip(root: &Path, chip: u32, npwm: u32) -> PathBuf {
        let dir = root.join(format!("pwmchip{chip}"));
        fs::create_dir_all(&dir).unwrap();
        for name in ["export", "unexport"] {
            fs::write(dir.join(name), "").unwrap();
        }
        fs::write(dir.join("npwm"), format!("{npwm}\n")).unwrap();
        dir
    }

    /// An exported channel, built aside and renamed into place so a poller
    /// never sees it half made (the kernel creates it whole too).
    fn make_channel(chip_dir: &Path, channel: u8) -> PathBuf {
        let staging = chip_dir.join(format!(".staging{channel}"));
        fs::create_dir_all(&staging).unwrap();
        for (name, value) in [("period", "0\n"), ("duty_cycle", "0\n"), ("enable", "0\n"), ("polarity", "normal\n")] {
            fs::write(staging.join(name), value).unwrap();
        }
        let dir = chip_dir.join(format!("pwm{channel}"));
        fs::rename(staging, &dir).unwrap();
        dir
    }

    #[test]
    fn an_exported_channel_is_started_at_20_ms_with_no_pulses() {
        let root = tempfile::tempdir().unwrap();
        let chip = make_chip(root.path(), 0, 2);
        let dir = make_channel(&chip, 1);
        fs::write(dir.join("duty_cycle"), "700000\n").unwrap();
        let mut pwm = SysfsPwm::open(root.path(), 0, 1, &SimClock::new()).unwrap();
        assert_eq!(read(&chip.join("export")), "", "already exported: no export write");
        assert_eq!(read(&dir.join("period")), "20000000");
        assert_eq!(read(&dir.join("duty_cycle")), "0");
        assert_eq!(read(&dir.join("enable")), "1");
        assert_eq!(pwm.max_duty_cycle(), 20_000);
        pwm.set_duty_cycle(1_500).unwrap();
        assert_eq!(read(&dir.join("duty_cycle")), "1500000");
        pwm.set_duty_cycle(2_500).unwrap();
        assert_eq!(read(&dir.join("duty_cycle")), "2500000");
        drop(pwm);
        assert_eq!(read(&dir.join("duty_cycle")), "0", "dropping stops the pulses");
        assert_eq!(read(&dir.join("enable")), "0");
    }

    #[test]
    fn duty_goes_to_zero_before_the_period_and_enable_comes_last() {
        let names: Vec<&str> = SETUP_WRITES.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["duty_cycle", "period", "enable"]);
        assert_eq!(duty_ns(1), 1_000);
        assert_eq!(duty_ns(u16::MAX), 20_000_000, "never more than the period");
    }

    #[test]
    fn a_channel_not_yet_exported_is_exported_then_waited_for() {
        let root = tempfile::tempdir().unwrap();
        let chip = make_chip(root.path(), 2, 4);
        // Stands in for the kernel: creates pwm3 once "3" is written to export,
        // after a delay like udev's.
        let kernel = {
            let chip = chip.clone();
            std::thread::spawn(move || {
                for _ in 0..500 {
                    if read(&chip.join("export")) == "3" {
                        std::thread::sleep(Duration::from_millis(30));
                        return Some(make_channel(&chip, 3));
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                None
            })
        };
        let pwm = SysfsPwm::open(root.path(), 2, 3, &SystemClock).unwrap();
        let dir = kernel.join().unwrap().expect("export was never written");
        assert_eq!(pwm.dir(), dir);
        assert_eq!(read(&dir.join("period")), "20000000");
        assert_eq!(read(&dir.join("enable")), "1");
    }

    #[test]
    fn a_channel_that_never_appears_names_its_path() {
        let root = tempfile::tempdir().unwrap();
        make_chip(root.path(), 0, 2);
        let clock = SimClock::new();
        let err = SysfsPwm::open(root.path(), 0, 0, &clock).unwrap_err().to_string();
        assert!(err.contains("pwmchip0/pwm0/enable") && err.contains("did not appear"), "{err}");
        assert_eq!(clock.elapsed(), EXPORT_WAIT, "gave udev its time");
    }

    #[test]
    fn a_missing_chip_names_its_path_the_chips_there_and_the_overlay() {
        let root = tempfile::tempdir().unwrap();
        make_chip(root.path(), 2, 4);
        let err = SysfsPwm::open(root.path(), 0, 0, &SimClock::new()).unwrap_err().to_string();
        let chip0 = root.path().join("pwmchip0").display().to_string();
        assert!(err.starts_with(&format!("{chip0}: no such PWM chip")), "{err}");
        assert!(err.contains("chips here: pwmchip2"), "{err}");
        assert!(err.contains("dtoverlay=pwm-2chan"), "{err}");

        let empty = tempfile::tempdir().unwrap();
        let err = SysfsPwm::open(empty.path(), 0, 0, &SimClock::new()).unwrap_err().to_string();
        assert!(err.contains("has no PWM chips"), "{err}");
    }

    #[test]
    fn a_channel_beyond_the_chip_is_refused_before_export() {
        let root = tempfile::tempdir().unwrap();
        let chip = make_chip(root.path(), 0, 2);
        let err = SysfsPwm::open(root.path(), 0, 2, &SimClock::new()).unwrap_err().to_string();
        assert!(err.contains("has 2 PWM channels (0..=1), not channel 2"), "{err}");
        assert_eq!(read(&chip.join("export")), "");
    }

    #[test]
    fn an_inverted_channel_is_set_back_to_normal() {
        let root = tempfile::tempdir().unwrap();
        let dir = make_channel(&make_chip(root.path(), 0, 1), 0);
        fs::write(dir.join("polarity"), "inversed\n").unwrap();
        let _pwm = SysfsPwm::open(root.path(), 0, 0, &SimClock::new()).unwrap();
        assert_eq!(read(&dir.join("polarity")), "normal");
    }

    #[test]
    fn the_actuator_drives_each_servo_on_its_channel() {
        let root = tempfile::tempdir().unwrap();
        let chip = make_chip(root.path(), 0, 2);
        let (chute, flap) = (make_channel(&chip, 0), make_channel(&chip, 1));
        let config = Config::default().actuation;
        let clock = Arc::new(SimClock::new());
        let mut act = sysfs_actuator(&config, root.path(), clock).unwrap();
        act.home().unwrap();
        // chute home 90° = 1500 µs, flap home 0° = 1000 µs
        assert_eq!(read(&chute.join("duty_cycle")), "1500000");
        assert_eq!(read(&flap.join("duty_cycle")), "1000000");
        act.route("paper").unwrap();
        assert_eq!(read(&chute.join("duty_cycle")), "1500000", "back home after the route");
    }
}
