//! Moving rubbish into a bin: servos, bin poses, and the PWM backends.
//!
//! A bin is reached by a list of (servo, angle) poses applied in order, each given
//! `settle_ms` to get there (after its ramp, when the servo has a slew rate); then
//! the item gets `dwell_ms` to fall; then the servos used go back home in reverse
//! order (for the default bin: the flap levels first, then the chute turns back).
//! A servo with `detach = true` stops getting pulses once its move has settled.
//!
//! Backends, all `embedded_hal::pwm::SetDutyCycle` channels: [`sim`] (records),
//! [`rpi`] (Raspberry Pi hardware and software PWM through rppal), [`pca9685`]
//! (16-channel I2C boards) and [`sysfs`] (any Linux PWM chip, e.g. a Jetson).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use embedded_hal::pwm::SetDutyCycle;

use crate::clock::Clock;
use crate::config::{ActuationConfig, BinConfig};

pub mod device;
pub mod interlock;
pub mod pca9685;
pub mod rpi;
pub mod servo;
pub mod sim;
pub mod sysfs;

pub use device::DeviceError;
pub use pca9685::{pca9685_actuator, pca9685_channels};
pub use rpi::{rppal_actuator, rppal_channels, rppal_soft_actuator, rppal_soft_channels};
pub use servo::{Servo, ServoMove, PERIOD, PERIOD_US};
pub use sim::{sim_actuator, sim_channels, SimLog, SimPwm, SIM_MAX_DUTY};
pub use sysfs::{sysfs_actuator, sysfs_channels, SYSFS_PWM_ROOT};

#[derive(Debug, thiserror::Error)]
pub enum ActuationError {
    /// The hardware refused a move. `moves` are the moves of the same sequence
    /// that did succeed, so the event log can still say where the servos are.
    #[error("servo {servo}: {detail}")]
    Servo {
        servo: String,
        detail: String,
        moves: Vec<ServoMove>,
    },
    #[error("unknown bin `{bin}`; configured bins: {known}")]
    UnknownBin { bin: String, known: String },
    /// The actuation config does not describe a usable machine.
    #[error("actuation config: {0}")]
    Config(String),
    /// A PWM device could not be opened or set up; says which and what to check.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The lid interlock kept the servos from moving (stopped while open, or
    /// its switch could not be read).
    #[error("interlock {0}")]
    Interlock(String),
}

impl ActuationError {
    /// Moves that completed before the error (empty for non-servo errors).
    pub fn completed_moves(&self) -> &[ServoMove] {
        match self {
            ActuationError::Servo { moves, .. } => moves,
            _ => &[],
        }
    }
}

/// What the run loop needs from the machine that moves items.
pub trait Actuator {
    /// Sends the item on the tray to `bin` and returns the servos to home.
    /// Returns every move made, in order.
    fn route(&mut self, bin: &str) -> Result<Vec<ServoMove>, ActuationError>;
    /// Puts every servo at its home angle.
    fn home(&mut self) -> Result<Vec<ServoMove>, ActuationError>;
}

/// The [`Actuator`] for servos on any `embedded-hal` PWM channels.
pub struct ServoActuator<P: SetDutyCycle> {
    servos: Vec<Servo<P>>,
    bins: BTreeMap<String, BinConfig>,
    settle: Duration,
    clock: Arc<dyn Clock>,
}

impl<P: SetDutyCycle> ServoActuator<P> {
    /// `pwms[i]` drives `config.servos[i]`. Servos are not moved until
    /// [`Actuator::home`] or [`Actuator::route`].
    pub fn new(
        config: &ActuationConfig,
        pwms: Vec<P>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ActuationError> {
        if pwms.len() != config.servos.len() {
            return Err(ActuationError::Config(format!(
                "{} servos configured but {} PWM channels given",
                config.servos.len(),
                pwms.len()
            )));
        }
        let servos = config
            .servos
            .iter()
            .zip(pwms)
            .map(|(cfg, pwm)| Servo::new(cfg.clone(), pwm))
            .collect::<Result<Vec<_>, _>>()?;
        let mut bins = BTreeMap::new();
        for bin in &config.bins {
            for pose in &bin.poses {
                if !servos.iter().any(|s| s.name() == pose.servo) {
                    return Err(ActuationError::Config(format!(
                        "bin {} uses servo {}, which is not configured",
                        bin.name, pose.servo
                    )));
                }
            }
            bins.insert(bin.name.clone(), bin.clone());
        }
        Ok(ServoActuator {
            servos,
            bins,
            settle: Duration::from_millis(config.settle_ms),
            clock,
        })
    }

    pub fn servos(&self) -> &[Servo<P>] {
        &self.servos
    }

    /// Gives the PWM channels back, in config order.
    pub fn into_pwms(self) -> Vec<P> {
        self.servos.into_iter().map(Servo::into_pwm).collect()
    }

    fn servo_index(&self, name: &str) -> usize {
        // `new` checked that every pose names a configured servo.
        self.servos
            .iter()
            .position(|s| s.name() == name)
            .expect("pose servo checked at construction")
    }

    /// Moves one servo (ramped if it has a slew rate), logs the move, waits for
    /// it to settle, then stops its pulses if it detaches.
    fn step(
        &mut self,
        index: usize,
        angle: f32,
        started: Instant,
        moves: &mut Vec<ServoMove>,
    ) -> Result<(), ActuationError> {
        let at_ms = (self.clock.now() - started).as_millis() as u64;
        let servo = &mut self.servos[index];
        let m = servo.move_to(angle, at_ms, self.clock.as_ref())?;
        log::info!("servo {} -> {:.1}° ({:.0} µs)", m.servo, m.angle, m.pulse_us);
        moves.push(m);
        self.clock.sleep(self.settle);
        let servo = &mut self.servos[index];
        if servo.config().detach {
            servo.detach()?;
        }
        Ok(())
    }

    fn run_route(&mut self, bin: &BinConfig, moves: &mut Vec<ServoMove>) -> Result<(), ActuationError> {
        let started = self.clock.now();
        let used: Vec<usize> = bin.poses.iter().map(|p| self.servo_index(&p.servo)).collect();
        for (pose, &index) in bin.poses.iter().zip(&used) {
            self.step(index, pose.angle, started, moves)?;
        }
        self.clock.sleep(Duration::from_millis(bin.dwell_ms));
        let mut homed = Vec::new();
        for &index in used.iter().rev() {
            if !homed.contains(&index) {
                let home = self.servos[index].config().home;
                self.step(index, home, started, moves)?;
                homed.push(index);
            }
        }
        Ok(())
    }

    fn run_home(&mut self, moves: &mut Vec<ServoMove>) -> Result<(), ActuationError> {
        let started = self.clock.now();
        // Reverse config order: with the default config the flap closes before
        // the chute turns.
        for index in (0..self.servos.len()).rev() {
            let home = self.servos[index].config().home;
            self.step(index, home, started, moves)?;
        }
        Ok(())
    }
}

/// Puts the moves made so far into a servo error, so none is lost.
fn with_moves(result: Result<(), ActuationError>, moves: Vec<ServoMove>) -> Result<Vec<ServoMove>, ActuationError> {
    match result {
        Ok(()) => Ok(moves),
        Err(ActuationError::Servo { servo, detail, .. }) => {
            Err(ActuationError::Servo { servo, detail, moves })
        }
        Err(other) => Err(other),
    }
}

impl<P: SetDutyCycle> Actuator for ServoActuator<P> {
    fn route(&mut self, bin: &str) -> Result<Vec<ServoMove>, ActuationError> {
        let Some(bin) = self.bins.get(bin).cloned() else {
            let known = self.bins.keys().cloned().collect::<Vec<_>>().join(", ");
            return Err(ActuationError::UnknownBin { bin: bin.to_string(), known });
        };
        log::info!("routing to bin {}", bin.name);
        let mut moves = Vec::new();
        let result = self.run_route(&bin, &mut moves);
        with_moves(result, moves)
    }

    fn home(&mut self) -> Result<Vec<ServoMove>, ActuationError> {
        let mut moves = Vec::new();
        let result = self.run_home(&mut moves);
        with_moves(result, moves)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SimClock;
    use crate::config::Config;
    use embedded_hal_mock::eh1::pwm::{Mock, Transaction};
    use embedded_hal_mock::eh1::MockError;

    /// Default config: chute 500..2500 µs over 0..180°, home 90°; flap
    /// 1000..2000 µs over 0..90°, home 0°. One count per µs.
    fn mocks(chute: &[Transaction], flap: &[Transaction]) -> (Mock, Mock) {
        let mut c = vec![Transaction::max_duty_cycle(20_000)];
        c.extend_from_slice(chute);
        let mut f = vec![Transaction::max_duty_cycle(20_000)];
        f.extend_from_slice(flap);
        (Mock::new(&c), Mock::new(&f))
    }

    fn actuator(chute: &Mock, flap: &Mock, clock: Arc<SimClock>) -> ServoActuator<Mock> {
        let config = Config::default().actuation;
        ServoActuator::new(&config, vec![chute.clone(), flap.clone()], clock).unwrap()
    }

    #[test]
    fn route_sends_poses_then_dwells_then_homes_in_reverse() {
        // glass: chute 67.5° (1250 µs), flap 60° (1667 µs), then flap 0°, chute 90°
        let (mut chute, mut flap) = mocks(
            &[Transaction::set_duty_cycle(1_250), Transaction::set_duty_cycle(1_500)],
            &[Transaction::set_duty_cycle(1_667), Transaction::set_duty_cycle(1_000)],
        );
        let clock = Arc::new(SimClock::new());
        let mut act = actuator(&chute, &flap, clock.clone());
        let moves = act.route("glass").unwrap();
        let order: Vec<(&str, f32)> = moves.iter().map(|m| (m.servo.as_str(), m.angle)).collect();
        assert_eq!(order, [("chute", 67.5), ("flap", 60.0), ("flap", 0.0), ("chute", 90.0)]);
        // settle 400 ms per move, dwell 800 ms: timings come from the clock
        let at: Vec<u64> = moves.iter().map(|m| m.at_ms).collect();
        assert_eq!(at, [0, 400, 1_600, 2_000]);
        assert_eq!(clock.elapsed(), Duration::from_millis(2_400));
        chute.done();
        flap.done();
    }

    #[test]
    fn home_moves_every_servo_last_listed_first() {
        let (mut chute, mut flap) = mocks(
            &[Transaction::set_duty_cycle(1_500)],
            &[Transaction::set_duty_cycle(1_000)],
        );
        let mut act = actuator(&chute, &flap, Arc::new(SimClock::new()));
        let moves = act.home().unwrap();
        let names: Vec<&str> = moves.iter().map(|m| m.servo.as_str()).collect();
        assert_eq!(names, ["flap", "chute"]);
        chute.done();
        flap.done();
    }

    #[test]
    fn a_servo_error_names_the_servo_and_keeps_earlier_moves() {
        let (mut chute, mut flap) = mocks(
            &[Transaction::set_duty_cycle(750)],
            &[Transaction::set_duty_cycle(1_667)
                .with_error(MockError::Io(std::io::ErrorKind::TimedOut))],
        );
        let mut act = actuator(&chute, &flap, Arc::new(SimClock::new()));
        let err = act.route("paper").unwrap_err();
        assert!(err.to_string().starts_with("servo flap:"), "{err}");
        let done: Vec<&str> = err.completed_moves().iter().map(|m| m.servo.as_str()).collect();
        assert_eq!(done, ["chute"]);
        chute.done();
        flap.done();
    }

    #[test]
    fn unknown_bin_sends_nothing_and_lists_the_bins() {
        let (mut chute, mut flap) = mocks(&[], &[]);
        let mut act = actuator(&chute, &flap, Arc::new(SimClock::new()));
        let err = act.route("compost").unwrap_err();
        assert!(err.to_string().contains("containers, glass, landfill, paper"), "{err}");
        chute.done();
        flap.done();
    }

    #[test]
    fn a_slewed_servo_ramps_then_settles_and_moves_are_timed_from_their_start() {
        // chute at 90°/s: 90° <-> 67.5° is 13 steps of 20 ms; the flap still jumps
        let mut config = Config::default().actuation;
        config.servos[0].slew_deg_per_s = Some(90.0);
        let clock = Arc::new(SimClock::new());
        let (mut act, log) = sim_actuator(&config, clock.clone()).unwrap();
        act.home().unwrap();
        assert_eq!(clock.elapsed(), Duration::from_millis(800), "homing at start-up jumps");
        let moves = act.route("glass").unwrap();
        let at: Vec<u64> = moves.iter().map(|m| m.at_ms).collect();
        assert_eq!(at, [0, 660, 1_860, 2_260]);
        assert_eq!(clock.elapsed(), Duration::from_millis(800 + 2_920));
        let chute: Vec<_> = log.records().into_iter().filter(|r| r.servo == "chute").collect();
        assert_eq!(chute.len(), 1 + 13 + 13);
        // one step per period, never more than 1.8° (20 µs) apart
        for pair in chute[1..14].windows(2) {
            assert_eq!(pair[1].at - pair[0].at, PERIOD);
            assert!((pair[0].pulse_us() - pair[1].pulse_us()).abs() <= 20.0 + 5.0, "{pair:?}");
        }
        assert_eq!(moves[0].angle, 67.5);
        assert_eq!(act.servos()[0].angle(), Some(90.0));
    }

    #[test]
    fn a_detaching_servo_stops_pulses_once_each_move_has_settled() {
        let mut config = Config::default().actuation;
        config.servos[1].detach = true;
        config.servos[1].slew_deg_per_s = Some(600.0);
        let clock = Arc::new(SimClock::new());
        let (mut act, log) = sim_actuator(&config, clock.clone()).unwrap();
        act.home().unwrap();
        act.route("paper").unwrap();
        let flap: Vec<_> = log.records().into_iter().filter(|r| r.servo == "flap").collect();
        let zeros: Vec<usize> = (0..flap.len()).filter(|&i| flap[i].duty == 0).collect();
        // home, tip (5 steps of 12°), level again (5 steps): each followed by a stop
        assert_eq!(zeros, [1, 7, 13], "{flap:?}");
        // settle after the jump home; after a ramp, its last period, then settle
        let gaps: Vec<Duration> = zeros.iter().map(|&i| flap[i].at - flap[i - 1].at).collect();
        assert_eq!(gaps, [400, 420, 420].map(Duration::from_millis));
        assert!(!act.servos()[1].is_attached());
        assert!(act.servos()[0].is_attached(), "the chute holds its position");
        for r in log.records().iter().filter(|r| r.duty != 0) {
            let servo = config.servos.iter().find(|s| s.name == r.servo).unwrap();
            let pulse = r.pulse_us();
            assert!((f64::from(servo.min_us)..=f64::from(servo.max_us)).contains(&pulse), "{r:?}");
        }
    }

    #[test]
    fn channel_count_must_match_the_servos() {
        let config = Config::default().actuation;
        let mut only = Mock::new(&[]);
        let err = ServoActuator::new(&config, vec![only.clone()], Arc::new(SimClock::new()));
        assert!(err.is_err());
        only.done();
    }
}
