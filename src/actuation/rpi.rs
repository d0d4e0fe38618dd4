//! Raspberry Pi backends through rppal, whose `Pwm` and software PWM do not
//! implement `embedded_hal::pwm::SetDutyCycle`; the wrappers here do.
//!
//! - `rppal`: the hardware PWM. A servo's `channel` is the PWM channel: PWM0 on
//!   GPIO 12 or 18 and PWM1 on GPIO 13 or 19 (Pi 4 and older, by the overlay);
//!   on a Pi 5, PWM0..PWM3 are GPIO 12, 13, 18, 19 (pwmchip2). Steady pulses,
//!   but only two or four servos.
//! - `rppal-soft`: software PWM on any GPIO; a servo's `channel` is its BCM GPIO
//!   number. A thread times the pulses, so they jitter by tens of µs under load
//!   and the servo twitches: detaching after each move is advisable.

use std::sync::Arc;
use std::time::Duration;

use embedded_hal::pwm::{ErrorType, SetDutyCycle};
use rppal::gpio::{Gpio, OutputPin};
use rppal::pwm::{Channel, Polarity, Pwm};

use super::device::{DeviceError, PERMISSION_HINT};
use super::{ActuationError, ServoActuator, PERIOD};
use crate::clock::Clock;
use crate::config::ActuationConfig;

/// Duty counts per 20 ms period: one per µs.
pub const RPI_MAX_DUTY: u16 = 20_000;

/// What to do when rppal does not recognise the board.
pub const NOT_A_PI_HINT: &str = "rppal does not recognise this board as a Raspberry Pi (UnknownModel): \
     on other Linux boards use backend = \"sysfs\" or \"pca9685\"; on a new Pi model, update rppal";

/// Hardware PWM channel of a Raspberry Pi, at 20 ms.
#[derive(Debug)]
pub struct HardwarePwm {
    pwm: Pwm,
    device: String,
}

impl HardwarePwm {
    /// Opens PWM `channel`, started at 20 ms with no pulses. `chip` picks the
    /// pwmchip; `None` lets rppal choose by Pi model.
    pub fn open(channel: u8, chip: Option<u8>) -> Result<Self, DeviceError> {
        let device = match chip {
            Some(chip) => format!("/sys/class/pwm/pwmchip{chip}/pwm{channel}"),
            None => format!(
                "hardware PWM{channel} (/sys/class/pwm/pwmchip0 on a Pi 4 and older, pwmchip2 on a Pi 5)"
            ),
        };
        let fail = |e| pwm_error(&device, channel, e);
        let pwm = match chip {
            Some(chip) => Pwm::with_pwmchip(chip, channel),
            None => Channel::try_from(channel).and_then(Pwm::new),
        }
        .map_err(fail)?;
        // Duty first: the kernel refuses a period shorter than a duty cycle an
        // earlier user may have left.
        pwm.set_pulse_width(Duration::ZERO).map_err(fail)?;
        pwm.set_period(PERIOD).map_err(fail)?;
        pwm.set_polarity(Polarity::Normal).map_err(fail)?;
        pwm.enable().map_err(fail)?;
        log::info!("{device} started at 20 ms");
        Ok(HardwarePwm { pwm, device })
    }
}

impl ErrorType for HardwarePwm {
    type Error = DeviceError;
}

impl SetDutyCycle for HardwarePwm {
    fn max_duty_cycle(&self) -> u16 {
        RPI_MAX_DUTY
    }

    /// Duty 0 keeps the line low: no pulses.
    fn set_duty_cycle(&mut self, duty: u16) -> Result<(), DeviceError> {
        self.pwm
            .set_pulse_width(pulse_width(duty))
            .map_err(|e| DeviceError::new(self.device.clone(), e))
    }
}

/// Software PWM on one GPIO pin.
#[derive(Debug)]
pub struct SoftPwm {
    pin: OutputPin,
    device: String,
}

impl SoftPwm {
    /// Takes BCM GPIO `pin` as an output, held low (no pulses).
    pub fn open(gpio: &Gpio, pin: u8) -> Result<Self, DeviceError> {
        let device = format!("GPIO {pin} (software PWM)");
        let pin = gpio.get(pin).map_err(|e| gpio_error(&device, e))?.into_output_low();
        Ok(SoftPwm { pin, device })
    }
}

impl ErrorType for SoftPwm {
    type Error = DeviceError;
}

impl SetDutyCycle for SoftPwm {
    fn max_duty_cycle(&self) -> u16 {
        RPI_MAX_DUTY
    }

    fn set_duty_cycle(&mut self, duty: u16) -> Result<(), DeviceError> {
        let result = if duty == 0 {
            // Stop the pulse thread rather than have it time empty periods.
            let stopped = self.pin.clear_pwm();
            self.pin.set_low();
            stopped
        } else {
            self.pin.set_pwm(PERIOD, pulse_width(duty))
        };
        result.map_err(|e| gpio_error(&self.device, e))
    }
}

/// Pulse width of `duty` counts of [`RPI_MAX_DUTY`] per 20 ms.
fn pulse_width(duty: u16) -> Duration {
    PERIOD * u32::from(duty.min(RPI_MAX_DUTY)) / u32::from(RPI_MAX_DUTY)
}

/// Builds a [`ServoActuator`] on the Pi's hardware PWM channels.
pub fn rppal_actuator(
    config: &ActuationConfig,
    clock: Arc<dyn Clock>,
) -> Result<ServoActuator<HardwarePwm>, ActuationError> {
    ServoActuator::new(config, rppal_channels(config)?, clock)
}

/// The hardware PWM channels of the configured servos, in config order.
pub fn rppal_channels(config: &ActuationConfig) -> Result<Vec<HardwarePwm>, ActuationError> {
    Ok(config.servos.iter().map(|s| HardwarePwm::open(s.channel, config.rppal.chip)).collect::<Result<Vec<_>, _>>()?)
}

/// Builds a [`ServoActuator`] on software PWM, one GPIO pin per servo.
pub fn rppal_soft_actuator(
    config: &ActuationConfig,
    clock: Arc<dyn Clock>,
) -> Result<ServoActuator<SoftPwm>, ActuationError> {
    ServoActuator::new(config, rppal_soft_channels(config)?, clock)
}

/// Software PWM on the configured servos' GPIO pins, in config order.
pub fn rppal_soft_channels(config: &ActuationConfig) -> Result<Vec<SoftPwm>, ActuationError> {
    let gpio = Gpio::new().map_err(|e| gpio_error("GPIO (/dev/gpiomem)", e))?;
    Ok(config.servos.iter().map(|s| SoftPwm::open(&gpio, s.channel)).collect::<Result<Vec<_>, _>>()?)
}

/// Why a hardware PWM channel would not open, and what to check.
pub fn pwm_error(device: &str, channel: u8, err: rppal::pwm::Error) -> DeviceError {
    match err {
        rppal::pwm::Error::Io(e) => DeviceError::io(device, &e),
        rppal::pwm::Error::UnknownModel => {
            DeviceError::new(device, "not a Raspberry Pi").with_hint(Some(NOT_A_PI_HINT.into()))
        }
        rppal::pwm::Error::InvalidChannel => DeviceError::new(device, format!("no PWM channel {channel}"))
            .with_hint(Some(
                "a Pi 4 and older have channels 0 and 1, a Pi 5 has 0..=3; set [actuation.rppal] chip \
                 for another pwmchip"
                    .into(),
            )),
    }
}

/// Why a GPIO pin would not open or pulse, and what to check.
pub fn gpio_error(device: &str, err: rppal::gpio::Error) -> DeviceError {
    use rppal::gpio::Error as E;
    let hint = match &err {
        E::UnknownModel => Some(NOT_A_PI_HINT.to_string()),
        E::PermissionDenied(_) => Some(PERMISSION_HINT.to_string()),
        E::PinNotAvailable(_) => Some("`channel` is the BCM GPIO number: 2..=27 on the 40-pin header".to_string()),
        E::PinUsed(_) => Some("two servos, or a sensor and a servo, are on the same pin".to_string()),
        E::Io(e) => super::device::io_hint(e),
        E::ThreadPanic => None,
    };
    DeviceError::new(device, err).with_hint(hint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SimClock;
    use crate::config::{ActuatorBackend, Config};

    fn is_raspberry_pi() -> bool {
        std::fs::read_to_string("/proc/device-tree/model").is_ok_and(|m| m.contains("Raspberry Pi"))
    }

    #[test]
    fn duty_counts_are_microseconds() {
        assert_eq!(pulse_width(1_500), Duration::from_micros(1_500));
        assert_eq!(pulse_width(0), Duration::ZERO);
        assert_eq!(pulse_width(u16::MAX), PERIOD, "never longer than the period");
    }

    #[test]
    fn errors_name_the_likely_cause() {
        let err = pwm_error("hardware PWM0", 0, rppal::pwm::Error::UnknownModel).to_string();
        assert!(err.contains("not a Raspberry Pi") && err.contains("UnknownModel") && err.contains("sysfs"), "{err}");

        let missing = rppal::pwm::Error::Io(std::io::Error::from(std::io::ErrorKind::NotFound));
        let err = pwm_error("/sys/class/pwm/pwmchip2/pwm2", 2, missing).to_string();
        assert!(err.starts_with("/sys/class/pwm/pwmchip2/pwm2: "), "{err}");
        assert!(err.contains("dtoverlay=pwm-2chan") && err.contains("/boot/firmware/config.txt"), "{err}");

        let denied = rppal::pwm::Error::Io(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert!(pwm_error("PWM0", 0, denied).to_string().contains("`gpio` group"));

        let err = pwm_error("PWM4", 4, rppal::pwm::Error::InvalidChannel).to_string();
        assert!(err.contains("no PWM channel 4") && err.contains("Pi 5"), "{err}");

        let err = gpio_error("GPIO", rppal::gpio::Error::PermissionDenied("/dev/gpiomem".into())).to_string();
        assert!(err.contains("/dev/gpiomem") && err.contains("`gpio` group"), "{err}");
        let err = gpio_error("GPIO 40", rppal::gpio::Error::PinNotAvailable(40)).to_string();
        assert!(err.contains("BCM"), "{err}");
    }

    #[test]
    fn off_a_pi_both_backends_fail_at_start_up_saying_why() {
        if is_raspberry_pi() {
            eprintln!("skipping: this is a Raspberry Pi, where opening PWM may work");
            return;
        }
        let mut config = Config::default().actuation;
        config.backend = ActuatorBackend::Rppal;
        let clock = Arc::new(SimClock::new());
        let err = rppal_actuator(&config, clock.clone()).err().unwrap().to_string();
        assert!(err.contains("hardware PWM0") && err.contains("Raspberry Pi"), "{err}");
        let err = rppal_soft_actuator(&config, clock).err().unwrap().to_string();
        assert!(err.starts_with("GPIO") && err.contains("Raspberry Pi"), "{err}");
    }
}
