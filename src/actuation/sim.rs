//! The `sim` backend: PWM channels that record what real hardware would receive,
//! and a virtual clock so a simulated run (or a test) does not wait for servos.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use embedded_hal::pwm::{ErrorType, SetDutyCycle};

use super::{ActuationError, ServoActuator, PERIOD_US};
use crate::clock::Clock;
use crate::config::ActuationConfig;

/// Counts per 20 ms period of the simulated channels: 12 bits, like the PCA9685
/// boards most bins use, so the sim shows the same pulse rounding as hardware.
pub const SIM_MAX_DUTY: u16 = 4096;

/// One duty-cycle change sent to a simulated channel.
#[derive(Debug, Clone, PartialEq)]
pub struct DutyRecord {
    pub servo: String,
    pub duty: u16,
    pub max_duty: u16,
    pub at: Instant,
}

impl DutyRecord {
    pub fn pulse_us(&self) -> f64 {
        f64::from(self.duty) * PERIOD_US / f64::from(self.max_duty)
    }
}

/// Every duty change of every simulated channel, in order. Cheap to clone; clones
/// share the same log.
#[derive(Debug, Clone, Default)]
pub struct SimLog(Arc<Mutex<Vec<DutyRecord>>>);

impl SimLog {
    pub fn records(&self) -> Vec<DutyRecord> {
        self.0.lock().expect("sim log poisoned").clone()
    }

    /// The last duty sent to `servo`, if any.
    pub fn last_duty(&self, servo: &str) -> Option<u16> {
        let records = self.0.lock().expect("sim log poisoned");
        records.iter().rev().find(|r| r.servo == servo).map(|r| r.duty)
    }

    fn push(&self, record: DutyRecord) {
        self.0.lock().expect("sim log poisoned").push(record);
    }
}

/// A PWM channel that only records. Never fails.
pub struct SimPwm {
    servo: String,
    max_duty: u16,
    log: SimLog,
    clock: Arc<dyn Clock>,
}

impl SimPwm {
    pub fn new(servo: &str, max_duty: u16, log: SimLog, clock: Arc<dyn Clock>) -> Self {
        SimPwm { servo: servo.to_string(), max_duty, log, clock }
    }
}

impl ErrorType for SimPwm {
    type Error = core::convert::Infallible;
}

impl SetDutyCycle for SimPwm {
    fn max_duty_cycle(&self) -> u16 {
        self.max_duty
    }

    fn set_duty_cycle(&mut self, duty: u16) -> Result<(), Self::Error> {
        self.log.push(DutyRecord {
            servo: self.servo.clone(),
            duty,
            max_duty: self.max_duty,
            at: self.clock.now(),
        });
        Ok(())
    }
}

/// Builds a [`ServoActuator`] on simulated channels and returns the shared log of
/// everything it sends.
pub fn sim_actuator(
    config: &ActuationConfig,
    clock: Arc<dyn Clock>,
) -> Result<(ServoActuator<SimPwm>, SimLog), ActuationError> {
    let log = SimLog::default();
    let pwms = sim_channels(config, &log, &clock);
    Ok((ServoActuator::new(config, pwms, clock)?, log))
}

/// Simulated channels for the configured servos, in config order, recording into `log`.
pub fn sim_channels(config: &ActuationConfig, log: &SimLog, clock: &Arc<dyn Clock>) -> Vec<SimPwm> {
    config.servos.iter().map(|s| SimPwm::new(&s.name, SIM_MAX_DUTY, log.clone(), clock.clone())).collect()
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SimClock;
    use std::time::Duration;
    use crate::actuation::Actuator;
    use crate::config::Config;

    #[test]
    fn sim_records_every_duty_with_its_time_and_stays_in_limits() {
        let config = Config::default().actuation;
        let clock = Arc::new(SimClock::new());
        let (mut act, log) = sim_actuator(&config, clock.clone()).unwrap();
        act.home().unwrap();
        for bin in ["paper", "glass", "containers", "landfill"] {
            act.route(bin).unwrap();
        }
        let records = log.records();
        assert_eq!(records.len(), 2 + 4 * 4);
        for r in &records {
            let servo = config.servos.iter().find(|s| s.name == r.servo).unwrap();
            let pulse = r.pulse_us();
            assert!(
                (f64::from(servo.min_us)..=f64::from(servo.max_us)).contains(&pulse),
                "{r:?} -> {pulse} µs"
            );
        }
        // times come from the clock and never go backwards
        assert!(records.windows(2).all(|w| w[0].at <= w[1].at));
        assert_eq!(records.last().unwrap().at, clock.now() - Duration::from_millis(400));
        // 4096 counts: 90° = 1500 µs = 307.2 counts -> 307
        assert_eq!(log.last_duty("chute"), Some(307));
    }
}
