//! One hobby servo on a 50 Hz PWM channel.
//!
//! A servo's position is set by the pulse width sent every 20 ms. The config gives,
//! per servo, the pulse at each end of its angle range (`min_us` at `min_angle`,
//! `max_us` at `max_angle`); angles in between are linear. Whatever angle is asked
//! for, the pulse sent stays inside `[min_us, max_us]`: driving a servo past its end
//! stops stalls the motor and can break the chute.
//!
//! Two options keep real servos alive:
//! - `slew_deg_per_s` ramps a move, one step per PWM period, so a loaded chute does
//!   not slam into its position (and the power supply does not brown out on the
//!   stall current of a full-speed start). Every step is an angle inside the range.
//! - `detach` stops the pulses once a move has settled: an idle servo that keeps
//!   getting pulses hunts around its target, jitters and heats up.

use std::time::Duration;

use embedded_hal::pwm::{Error as _, SetDutyCycle};
use serde::{Deserialize, Serialize};

use super::ActuationError;
use crate::clock::Clock;
use crate::config::ServoConfig;

/// PWM period of a standard servo: 50 Hz.
pub const PERIOD_US: f64 = 20_000.0;

/// One PWM period: a slewed move sends one step per period, since the servo cannot
/// see a change faster than that.
pub const PERIOD: Duration = Duration::from_millis(20);

/// One commanded position, as sent to the hardware. Written into the event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServoMove {
    pub servo: String,
    /// The angle actually commanded (after clamping to the servo's range).
    pub angle: f32,
    /// The pulse the duty cycle really produces (duty counts are coarse).
    pub pulse_us: f32,
    pub duty: u16,
    /// Milliseconds since the start of the move sequence (route or home) at which
    /// the move began; a slewed move reaches `angle` later.
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
    /// Whether pulses are being sent (false before the first move and after
    /// [`Servo::detach`]).
    attached: bool,
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
        if let Some(rate) = config.slew_deg_per_s {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(bad(format!("slew_deg_per_s {rate} must be a number > 0")));
            }
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
        Ok(Servo { config, pwm, max_duty, duty_limits, angle: None, attached: false })
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

    /// Whether the servo is being sent pulses.
    pub fn is_attached(&self) -> bool {
        self.attached
    }

    /// Counts per PWM period of the channel.
    pub fn max_duty(&self) -> u16 {
        self.max_duty
    }

    /// Gives the PWM channel back (calibration rebuilds a servo with new limits).
    pub fn into_pwm(self) -> P {
        self.pwm
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

    /// Moves to `angle` (clamped to the servo's range) at once, whatever
    /// `slew_deg_per_s` says. `at_ms` is stored in the returned move.
    pub fn set_angle(&mut self, angle: f32, at_ms: u64) -> Result<ServoMove, ActuationError> {
        let target = self.checked_target(angle)?;
        let duty = self.send(target)?;
        Ok(self.move_record(target, duty, at_ms))
    }

    /// Moves to `angle` (clamped to the servo's range), ramped at
    /// `slew_deg_per_s` when that is set: one step per PWM period, each held for
    /// one period on `clock`. The first move after start-up jumps, since where
    /// the servo stands is unknown.
    pub fn move_to(&mut self, angle: f32, at_ms: u64, clock: &dyn Clock) -> Result<ServoMove, ActuationError> {
        let target = self.checked_target(angle)?;
        let duty = match self.ramp(target) {
            None => self.send(target)?,
            Some(steps) => {
                let mut duty = 0;
                for step in steps {
                    duty = self.send(step)?;
                    clock.sleep(PERIOD);
                }
                duty
            }
        };
        Ok(self.move_record(target, duty, at_ms))
    }

    /// Moves to the configured home angle.
    pub fn home(&mut self, at_ms: u64) -> Result<ServoMove, ActuationError> {
        self.set_angle(self.config.home, at_ms)
    }

    /// Stops the pulses: the servo goes limp where it stands. The next move
    /// starts them again, ramping from the last commanded angle.
    pub fn detach(&mut self) -> Result<(), ActuationError> {
        // Duty 0 is no pulse at all, not a 0 µs position command: servos ignore a
        // line that stays low, so this is outside the pulse limits on purpose.
        self.pwm.set_duty_cycle(0).map_err(|e| self.pwm_error(e))?;
        self.attached = false;
        log::debug!("servo {}: pulses stopped", self.config.name);
        Ok(())
    }

    /// The angles a slewed move to `target` sends, one per PWM period and the last
    /// exactly `target`; `None` when the move is a jump (no slew rate configured,
    /// or the servo's position is unknown). `target` must be inside the range, and
    /// so is every step, being between two angles that are.
    pub fn ramp(&self, target: f32) -> Option<Vec<f32>> {
        let rate = self.config.slew_deg_per_s?;
        let from = self.angle?;
        let per_period = f64::from(rate) * PERIOD.as_secs_f64();
        let distance = f64::from(target) - f64::from(from);
        // The small allowance stops float noise from adding a step to an exact fit.
        let steps = ((distance.abs() / per_period) - 1e-6).ceil().max(1.0) as usize;
        let mut ramp: Vec<f32> = (1..steps)
            .map(|k| {
                let angle = (f64::from(from) + distance * k as f64 / steps as f64) as f32;
                angle.clamp(self.config.min_angle, self.config.max_angle)
            })
            .collect();
        ramp.push(target);
        Some(ramp)
    }

    /// The clamped target for `angle`, warning when clamping changed it.
    fn checked_target(&self, angle: f32) -> Result<f32, ActuationError> {
        if !angle.is_finite() {
            return Err(ActuationError::Servo {
                servo: self.config.name.clone(),
                detail: format!("refusing non-finite angle {angle}"),
                moves: Vec::new(),
            });
        }
        let clamped = angle.clamp(self.config.min_angle, self.config.max_angle);
        if clamped != angle {
            log::warn!(
                "servo {}: {angle}° is outside {}..={}°, clamped to {clamped}°",
                self.config.name,
                self.config.min_angle,
                self.config.max_angle
            );
        }
        Ok(clamped)
    }

    /// Sends the pulse for `angle` and remembers it; returns the duty sent.
    fn send(&mut self, angle: f32) -> Result<u16, ActuationError> {
        let (angle, duty) = self.duty_for(angle);
        self.pwm.set_duty_cycle(duty).map_err(|e| self.pwm_error(e))?;
        self.angle = Some(angle);
        self.attached = true;
        Ok(duty)
    }

    fn move_record(&self, angle: f32, duty: u16, at_ms: u64) -> ServoMove {
        ServoMove {
            servo: self.config.name.clone(),
            angle,
            pulse_us: self.pulse_for_duty(duty),
            duty,
            at_ms,
        }
    }

    fn pwm_error(&self, e: P::Error) -> ActuationError {
        ActuationError::Servo {
            servo: self.config.name.clone(),
            detail: format!("PWM error ({:?}): {e:?}", e.kind()),
            moves: Vec::new(),
        }
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
    use crate::actuation::sim::{SimLog, SimPwm};
    use crate::clock::SimClock;
    use embedded_hal_mock::eh1::pwm::{Mock, Transaction};
    use embedded_hal_mock::eh1::MockError;
    use std::sync::Arc;

    fn chute() -> ServoConfig {
        ServoConfig {
            name: "chute".into(),
            channel: 0,
            min_us: 500,
            max_us: 2500,
            min_angle: 0.0,
            max_angle: 180.0,
            home: 90.0,
            slew_deg_per_s: None,
            detach: false,
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
            slew_deg_per_s: None,
            detach: false,
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

    /// A servo on a recording channel (one count per µs) and a virtual clock.
    fn recorded(config: ServoConfig) -> (Servo<SimPwm>, SimLog, Arc<SimClock>) {
        let log = SimLog::default();
        let clock = Arc::new(SimClock::new());
        let pwm = SimPwm::new(&config.name, 20_000, log.clone(), clock.clone());
        (Servo::new(config, pwm).unwrap(), log, clock)
    }

    fn slewed(rate: f32) -> ServoConfig {
        ServoConfig { slew_deg_per_s: Some(rate), ..chute() }
    }

    #[test]
    fn a_slewed_move_steps_once_per_period_never_faster_than_the_rate() {
        // 90°/s = 1.8° per 20 ms: 90° -> 67.5° is 12.5 periods, so 13 equal steps
        let (mut servo, log, clock) = recorded(slewed(90.0));
        servo.move_to(90.0, 0, clock.as_ref()).unwrap();
        assert_eq!(clock.elapsed(), Duration::ZERO, "the first move jumps: the position is unknown");
        let start = clock.now();
        let m = servo.move_to(67.5, 7, clock.as_ref()).unwrap();
        assert_eq!((m.angle, m.duty, m.at_ms), (67.5, 1_250, 7));
        let steps = &log.records()[1..];
        assert_eq!(steps.len(), 13);
        assert_eq!(clock.elapsed(), 13 * PERIOD, "each step is held one period");
        for (k, r) in steps.iter().enumerate() {
            assert_eq!(r.at - start, k as u32 * PERIOD, "step {k}");
        }
        // 1.8° is 20 µs; equal steps of 22.5°/13 are 19.2 µs (rounded to counts)
        let mut previous = 1_500;
        for r in steps {
            assert!(previous - r.duty <= 20, "{previous} -> {}", r.duty);
            previous = r.duty;
        }
        assert_eq!(previous, 1_250);
        assert_eq!(servo.angle(), Some(67.5));
    }

    #[test]
    fn an_exact_number_of_periods_adds_no_extra_step() {
        // 90° at 90°/s is exactly 50 periods
        let (mut servo, log, clock) = recorded(slewed(90.0));
        servo.set_angle(90.0, 0).unwrap();
        servo.move_to(0.0, 0, clock.as_ref()).unwrap();
        assert_eq!(log.records().len(), 1 + 50);
        assert_eq!(clock.elapsed(), 50 * PERIOD);
        // a move shorter than one step is one step
        servo.move_to(0.5, 0, clock.as_ref()).unwrap();
        assert_eq!(log.records().len(), 1 + 50 + 1);
    }

    #[test]
    fn without_a_slew_rate_a_move_jumps_and_takes_no_time() {
        let (mut servo, log, clock) = recorded(chute());
        servo.move_to(90.0, 0, clock.as_ref()).unwrap();
        servo.move_to(0.0, 0, clock.as_ref()).unwrap();
        assert_eq!(log.records().len(), 2);
        assert_eq!(clock.elapsed(), Duration::ZERO);
        assert_eq!(servo.ramp(45.0), None);
    }

    #[test]
    fn slewing_past_the_range_stops_at_the_end_pulse() {
        // 12-bit channel, narrowed servo: every step must stay in 1000..=2000 µs
        let narrow = ServoConfig {
            min_us: 1000,
            max_us: 2000,
            max_angle: 90.0,
            home: 0.0,
            slew_deg_per_s: Some(400.0),
            ..chute()
        };
        let log = SimLog::default();
        let clock = Arc::new(SimClock::new());
        let pwm = SimPwm::new("chute", 4_096, log.clone(), clock.clone());
        let mut servo = Servo::new(narrow, pwm).unwrap();
        servo.move_to(-30.0, 0, clock.as_ref()).unwrap();
        let m = servo.move_to(500.0, 0, clock.as_ref()).unwrap();
        assert_eq!(m.angle, 90.0);
        servo.move_to(f32::MIN, 0, clock.as_ref()).unwrap();
        let records = log.records();
        assert!(records.len() > 20, "{}", records.len());
        for r in &records {
            assert!((1000.0..=2000.0).contains(&r.pulse_us()), "{r:?} -> {} µs", r.pulse_us());
        }
        let angles = servo.ramp(90.0).unwrap();
        assert!(angles.iter().all(|a| (0.0..=90.0).contains(a)), "{angles:?}");
        let err = servo.move_to(f32::INFINITY, 0, clock.as_ref()).unwrap_err();
        assert!(err.to_string().contains("non-finite"), "{err}");
    }

    #[test]
    fn detach_stops_pulses_and_the_next_move_ramps_from_the_last_angle() {
        let (mut servo, log, clock) = recorded(ServoConfig { detach: true, ..slewed(180.0) });
        servo.move_to(90.0, 0, clock.as_ref()).unwrap();
        assert!(servo.is_attached());
        servo.detach().unwrap();
        assert!(!servo.is_attached());
        assert_eq!(log.last_duty("chute"), Some(0), "duty 0: no pulses at all");
        assert_eq!(servo.angle(), Some(90.0), "the servo stays where it was sent");
        // 180°/s = 3.6° per period: 90 -> 97.2 is two steps
        servo.move_to(97.2, 0, clock.as_ref()).unwrap();
        let duties: Vec<u16> = log.records().iter().map(|r| r.duty).collect();
        assert_eq!(duties, [1_500, 0, 1_540, 1_580]);
        assert!(servo.is_attached());
    }
}
