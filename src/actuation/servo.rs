//! One hobby servo on a 50 Hz PWM channel.
//!
//! A servo's position is set by the pulse width sent every 20 ms. The config gives,
//! per servo, the pulse at each end of its angle range (`min_us` at `min_angle`,
//! `max_us` at `max_angle`); angles in between are linear. Whatever angle is asked
//! for, the pulse sent stays inside `[min_us, max_us]`: driving a servo past its end
//! stops stalls the motor and can break the chute.

use embedded_hal::pwm::{Error as _, SetDutyCycle};
use serde::{Deserialize, Serialize};

use super::ActuationError;
use crate::config::ServoConfig;

/// PWM period of a standard servo: 50 Hz.
pub const PERIOD_US: f64 = 20_000.0;

/// One commanded position, as sent to the hardware. Written into the event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServoMove {
    pub servo: String,
    /// The angle actually commanded (after clamping to the servo's range).
    pub angle: f32,
    /// The pulse the duty cycle really produces (duty counts are coarse).
    pub pulse_us: f32,
    pub duty: u16,
    /// Milliseconds since the start of the move sequence (route or home).
    pub at_ms: u64,
}

/// Drives one servo through any `embedded-hal` PWM channel.
pub struct Servo<P: SetDutyCycle> {
    config: ServoConfig,
    pwm: P,
    max_duty: u16,
    /// Smallest and largest duty whose pulse lies inside `[min_us, max_us]`.
    duty_limits: (u16, u16),
    angle: Option<f32>,
}

impl<P: SetDutyCycle> Servo<P> {
    /// Does not move the servo: call [`Servo::home`] for a known position.
    pub fn new(config: ServoConfig, pwm: P) -> Result<Self, ActuationError> {
        let bad = |why: String| ActuationError::Config(format!("servo {}: {why}", config.name));
        if config.min_us >= config.max_us {
            return Err(bad(format!(
                "min_us {} must be below max_us {}",
                config.min_us, config.max_us
            )));
        }
        if !(config.min_angle < config.max_angle) {
            return Err(bad(format!(
                "min_angle {} must be below max_angle {}",
                config.min_angle, config.max_angle
            )));
        }
        // Read once: the hardware's resolution does not change, and some drivers
        // answer this over a bus.
        let max_duty = pwm.max_duty_cycle();
        let duty_limits = duty_limits(config.min_us, config.max_us, max_duty);
        if max_duty == 0 || duty_limits.0 > duty_limits.1 {
            return Err(bad(format!(
                "the PWM resolution ({max_duty} steps per 20 ms) has no step between {} and {} µs",
                config.min_us, config.max_us
            )));
        }
        Ok(Servo { config, pwm, max_duty, duty_limits, angle: None })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn config(&self) -> &ServoConfig {
        &self.config
    }

    /// Last angle commanded successfully; `None` before the first move.
    pub fn angle(&self) -> Option<f32> {
        self.angle
    }

    /// The clamped angle and the duty that would be sent for `angle`.
    pub fn duty_for(&self, angle: f32) -> (f32, u16) {
        let angle = angle.clamp(self.config.min_angle, self.config.max_angle);
        let pulse = pulse_us(&self.config, angle);
        let duty = (pulse * f64::from(self.max_duty) / PERIOD_US).round();
        // Rounding can land one step outside the pulse limits; never send that.
        let duty = (duty as u16).clamp(self.duty_limits.0, self.duty_limits.1);
        (angle, duty)
    }

    /// Pulse width produced by `duty` on this channel.
    pub fn pulse_for_duty(&self, duty: u16) -> f32 {
        (f64::from(duty) * PERIOD_US / f64::from(self.max_duty)) as f32
    }

    /// Moves to `angle` (clamped to the servo's range). `at_ms` is stored in the
    /// returned move.
    pub fn set_angle(&mut self, angle: f32, at_ms: u64) -> Result<ServoMove, ActuationError> {
        if !angle.is_finite() {
            return Err(ActuationError::Servo {
                servo: self.config.name.clone(),
                detail: format!("refusing non-finite angle {angle}"),
                moves: Vec::new(),
            });
        }
        let (clamped, duty) = self.duty_for(angle);
        if clamped != angle {
            log::warn!(
                "servo {}: {angle}° is outside {}..={}°, clamped to {clamped}°",
                self.config.name,
                self.config.min_angle,
                self.config.max_angle
            );
        }
        self.pwm.set_duty_cycle(duty).map_err(|e| ActuationError::Servo {
            servo: self.config.name.clone(),
            detail: format!("PWM error ({:?}): {e:?}", e.kind()),
            moves: Vec::new(),
        })?;
        self.angle = Some(clamped);
        Ok(ServoMove {
            servo: self.config.name.clone(),
            angle: clamped,
            pulse_us: self.pulse_for_duty(duty),
            duty,
            at_ms,
        })
    }

    /// Moves to the configured home angle.
    pub fn home(&mut self, at_ms: u64) -> Result<ServoMove, ActuationError> {
        self.set_angle(self.config.home, at_ms)
    }
}

/// Pulse width in µs for an angle already inside the servo's range.
pub fn pulse_us(config: &ServoConfig, angle: f32) -> f64 {
    let span = f64::from(config.max_angle) - f64::from(config.min_angle);
    let fraction = (f64::from(angle) - f64::from(config.min_angle)) / span;
    f64::from(config.min_us) + fraction * (f64::from(config.max_us) - f64::from(config.min_us))
}

/// Duty counts whose pulse lies inside `[min_us, max_us]` for a channel whose
/// full period is `max_duty` counts.
fn duty_limits(min_us: u16, max_us: u16, max_duty: u16) -> (u16, u16) {
    let per_us = f64::from(max_duty) / PERIOD_US;
    let low = (f64::from(min_us) * per_us).ceil();
    let high = (f64::from(max_us) * per_us).floor();
    (low as u16, high as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::pwm::{Mock, Transaction};
    use embedded_hal_mock::eh1::MockError;

    fn chute() -> ServoConfig {
        ServoConfig {
            name: "chute".into(),
            channel: 0,
            min_us: 500,
            max_us: 2500,
            min_angle: 0.0,
            max_angle: 180.0,
            home: 90.0,
        }
    }

    #[test]
    fn one_count_per_microsecond_sends_the_exact_pulse() {
        // max duty 20000 over 20 ms: duty == pulse in µs
        let expected = [
            Transaction::max_duty_cycle(20_000),
            Transaction::set_duty_cycle(500),
            Transaction::set_duty_cycle(1_500),
            Transaction::set_duty_cycle(2_500),
            Transaction::set_duty_cycle(750),
        ];
        let mut pwm = Mock::new(&expected);
        let mut servo = Servo::new(chute(), pwm.clone()).unwrap();
        assert_eq!(servo.set_angle(0.0, 0).unwrap().pulse_us, 500.0);
        let m = servo.home(5).unwrap();
        assert_eq!((m.angle, m.pulse_us, m.duty, m.at_ms), (90.0, 1500.0, 1500, 5));
        servo.set_angle(180.0, 0).unwrap();
        servo.set_angle(22.5, 0).unwrap();
        assert_eq!(servo.angle(), Some(22.5));
        pwm.done();
    }

    #[test]
    fn angles_beyond_the_range_clamp_to_the_end_pulses() {
        let expected = [
            Transaction::max_duty_cycle(20_000),
            Transaction::set_duty_cycle(2_500),
            Transaction::set_duty_cycle(500),
        ];
        let mut pwm = Mock::new(&expected);
        let mut servo = Servo::new(chute(), pwm.clone()).unwrap();
        let m = servo.set_angle(270.0, 0).unwrap();
        assert_eq!((m.angle, m.duty), (180.0, 2_500));
        let m = servo.set_angle(-45.0, 0).unwrap();
        assert_eq!((m.angle, m.duty), (0.0, 500));
        pwm.done();
    }

    #[test]
    fn coarse_twelve_bit_pwm_never_rounds_outside_the_limits() {
        // 4096 counts per 20 ms (PCA9685): 500 µs = 102.4 counts. Rounding would
        // send 102 = 498 µs, below min_us; the driver must send 103 instead.
        // 2500 µs = 512 counts exactly; 1500 µs = 307.2 -> 307.
        let expected = [
            Transaction::max_duty_cycle(4_096),
            Transaction::set_duty_cycle(103),
            Transaction::set_duty_cycle(307),
            Transaction::set_duty_cycle(512),
        ];
        let mut pwm = Mock::new(&expected);
        let mut servo = Servo::new(chute(), pwm.clone()).unwrap();
        let low = servo.set_angle(-10.0, 0).unwrap();
        assert!(low.pulse_us >= 500.0, "{low:?}");
        servo.set_angle(90.0, 0).unwrap();
        let high = servo.set_angle(1e9, 0).unwrap();
        assert!(high.pulse_us <= 2500.0, "{high:?}");
        pwm.done();
    }

    #[test]
    fn narrow_servo_maps_its_own_range() {
        // flap: 1000..2000 µs over 0..90°
        let flap = ServoConfig {
            name: "flap".into(),
            channel: 1,
            min_us: 1000,
            max_us: 2000,
            min_angle: 0.0,
            max_angle: 90.0,
            home: 0.0,
        };
        let expected = [
            Transaction::max_duty_cycle(20_000),
            Transaction::set_duty_cycle(1_667), // 60° -> 1666.7 µs
            Transaction::set_duty_cycle(1_000),
        ];
        let mut pwm = Mock::new(&expected);
        let mut servo = Servo::new(flap, pwm.clone()).unwrap();
        servo.set_angle(60.0, 0).unwrap();
        servo.home(0).unwrap();
        pwm.done();
    }

    #[test]
    fn pwm_errors_name_the_servo_and_non_finite_angles_send_nothing() {
        let expected = [
            Transaction::max_duty_cycle(20_000),
            Transaction::set_duty_cycle(1_500)
                .with_error(MockError::Io(std::io::ErrorKind::NotConnected)),
        ];
        let mut pwm = Mock::new(&expected);
        let mut servo = Servo::new(chute(), pwm.clone()).unwrap();
        let err = servo.set_angle(f32::NAN, 0).unwrap_err();
        assert!(err.to_string().contains("servo chute"), "{err}");
        let err = servo.set_angle(90.0, 0).unwrap_err();
        assert!(err.to_string().contains("servo chute"), "{err}");
        assert_eq!(servo.angle(), None, "a failed move must not be remembered");
        pwm.done();
    }

    #[test]
    fn bad_servo_configs_are_refused() {
        let mut cfg = chute();
        cfg.min_us = 2500;
        let mut pwm = Mock::new(&[]);
        assert!(Servo::new(cfg, pwm.clone()).is_err());
        pwm.done();
        // 10 counts per period cannot express anything between 500 and 600 µs
        let mut cfg = chute();
        cfg.max_us = 600;
        let mut pwm = Mock::new(&[Transaction::max_duty_cycle(10)]);
        let err = Servo::new(cfg, pwm.clone()).err().unwrap();
        assert!(err.to_string().contains("resolution"), "{err}");
        pwm.done();
        // a channel reporting no resolution at all
        let mut pwm = Mock::new(&[Transaction::max_duty_cycle(0)]);
        assert!(Servo::new(chute(), pwm.clone()).is_err());
        pwm.done();
    }
}
