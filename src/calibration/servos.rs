//! `smartbin calibrate servos`: find each servo's safe pulse range, the bins'
//! poses and home by jogging the servos by hand.
//!
//! A session is a list of [`Command`]s, typed as lines (a script, or stdin) or
//! mapped from keys by the interactive terminal front end. The jog never sends a
//! pulse outside the servo's current bounds: its configured `min_us..max_us` at
//! first, widened to the absolute [`PULSE_LIMITS_US`] only by `unlock` (to look
//! for the real end stops), and narrowed again by each limit stored with `min`
//! or `max`.
//!
//! Poses and home are stored as angles, as the config holds them. Storing a new
//! limit changes the pulse-to-angle line, so the servo's existing poses are
//! re-expressed to keep their pulses (clamped into the new range): a pose found
//! before the limits stays where it physically was.

use std::fmt::Write as _;
use std::sync::Arc;

use embedded_hal::pwm::SetDutyCycle;

use crate::actuation::servo::pulse_us;
use crate::actuation::{Actuator, ActuationError, Servo, ServoActuator, SimLog, SimPwm};
use crate::clock::Clock;
use crate::config::{ActuationConfig, Pose, ServoConfig, PULSE_LIMITS_US};

/// Jog step when none is given, in µs.
pub const DEFAULT_STEP_US: u16 = 10;
/// Largest single jog: more is surely a typo, and a sudden jump.
pub const MAX_STEP_US: u16 = 500;

/// One calibration action.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Select a servo by name or 1-based number.
    Select(String),
    /// Move the selected servo up or down by `by` µs (the session's step if None).
    Jog { up: bool, by: Option<u16> },
    /// Move the selected servo to this pulse.
    Pulse(u16),
    /// Set the jog step in µs.
    Step(u16),
    /// Widen the jog to the absolute pulse limits, to find the end stops.
    Unlock,
    /// Store the current pulse as the selected servo's `min_us` / `max_us`.
    StoreMin,
    StoreMax,
    /// Store the current position as the selected servo's home.
    StoreHome,
    /// Store the current position as this servo's pose in a bin; `index` (1-based
    /// among the bin's poses) when the bin uses this servo more than once.
    StorePose { bin: String, index: Option<usize> },
    /// Home, run the whole move to a bin, and come back, with the stored values.
    Test(String),
    /// Stop the selected servo's pulses.
    Detach,
    Show,
    Help,
}

impl Command {
    /// Parses one line (`#` starts a comment); `Ok(None)` for a blank line.
    pub fn parse(line: &str) -> Result<Option<Command>, String> {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        let Some(word) = words.next() else { return Ok(None) };
        let args: Vec<&str> = words.collect();
        let arg = |n: usize| args.get(n).copied();
        let number = |what: &str, text: Option<&str>| -> Result<u16, String> {
            let text = text.ok_or_else(|| format!("`{word}` needs {what}"))?;
            text.parse().map_err(|_| format!("`{word}`: `{text}` is not {what}"))
        };
        let want_args = |n: usize| -> Result<(), String> {
            if args.len() > n {
                Err(format!("`{word}` takes {n} argument(s), got {}", args.len()))
            } else {
                Ok(())
            }
        };
        let command = match word {
            "servo" => {
                want_args(1)?;
                Command::Select(arg(0).ok_or("`servo` needs a servo name or number")?.to_string())
            }
            "+" | "-" => {
                want_args(1)?;
                let by = match arg(0) {
                    Some(_) => Some(number("a number of µs", arg(0))?),
                    None => None,
                };
                Command::Jog { up: word == "+", by }
            }
            "pulse" => {
                want_args(1)?;
                Command::Pulse(number("a pulse in µs", arg(0))?)
            }
            "step" => {
                want_args(1)?;
                Command::Step(number("a number of µs", arg(0))?)
            }
            "unlock" => Command::Unlock,
            "min" => Command::StoreMin,
            "max" => Command::StoreMax,
            "home" => Command::StoreHome,
            "pose" => {
                want_args(2)?;
                let bin = arg(0).ok_or("`pose` needs a bin name")?.to_string();
                let index = match arg(1) {
                    None => None,
                    Some(_) => Some(usize::from(number("a pose number", arg(1))?)),
                };
                Command::StorePose { bin, index }
            }
            "test" => {
                want_args(1)?;
                Command::Test(arg(0).ok_or("`test` needs a bin name")?.to_string())
            }
            "detach" => Command::Detach,
            "show" => Command::Show,
            "help" | "?" => Command::Help,
            other => return Err(format!("unknown command `{other}`; `help` lists them")),
        };
        if matches!(
            command,
            Command::Unlock | Command::StoreMin | Command::StoreMax | Command::StoreHome | Command::Detach | Command::Show | Command::Help
        ) {
            want_args(0)?;
        }
        Ok(Some(command))
    }
}

/// What `help` prints.
pub const HELP: &str = "\
servo NAME|N     select a servo
+ [US], - [US]   jog the selected servo up/down (by the step when no US)
pulse US         go to a pulse
step US          set the jog step
unlock           allow pulses out to 500..2500 µs, to find the end stops (go slowly)
min, max         store the current pulse as the servo's limit
home             store the current position as home
pose BIN [N]     store the current position as this servo's pose in BIN (N: which pose)
test BIN         home, move to BIN and back with the stored values
detach           stop the selected servo's pulses
show             the servos, their limits, home and the bins' poses
save, quit       (front end) write the config; leave (servos stopped)";

/// A jogging servo: angles in it *are* pulses, so its own clamping keeps every
/// pulse inside the bounds.
struct Jog<P: SetDutyCycle> {
    servo: Servo<P>,
    bounds: (u16, u16),
    pulse: Option<u16>,
}

/// The state of a servo calibration: the actuation config being edited and the
/// servos, which it owns.
pub struct ServoCalibration<P: SetDutyCycle> {
    actuation: ActuationConfig,
    jogs: Vec<Jog<P>>,
    selected: usize,
    step_us: u16,
    clock: Arc<dyn Clock>,
    changed: bool,
}

fn jog_config(servo: &ServoConfig, bounds: (u16, u16)) -> ServoConfig {
    ServoConfig {
        min_us: bounds.0,
        max_us: bounds.1,
        min_angle: f32::from(bounds.0),
        max_angle: f32::from(bounds.1),
        home: f32::from(bounds.0),
        slew_deg_per_s: None,
        detach: false,
        ..servo.clone()
    }
}

/// The angle of `config` whose pulse is `pulse` (clamped into the servo's range).
pub fn angle_for_pulse(config: &ServoConfig, pulse: f64) -> f32 {
    let fraction = (pulse - f64::from(config.min_us)) / (f64::from(config.max_us) - f64::from(config.min_us));
    let angle = f64::from(config.min_angle) + fraction * (f64::from(config.max_angle) - f64::from(config.min_angle));
    // Hundredths of a degree (a fraction of a µs) keep the saved file readable.
    (((angle * 100.0).round() / 100.0) as f32).clamp(config.min_angle, config.max_angle)
}

impl<P: SetDutyCycle> ServoCalibration<P> {
    /// `pwms[i]` drives `actuation.servos[i]`. Nothing moves until a command says so.
    pub fn new(actuation: ActuationConfig, pwms: Vec<P>, clock: Arc<dyn Clock>) -> Result<Self, ActuationError> {
        if pwms.len() != actuation.servos.len() || pwms.is_empty() {
            return Err(ActuationError::Config(format!(
                "{} servos configured, {} PWM channels given",
                actuation.servos.len(),
                pwms.len()
            )));
        }
        let jogs = actuation
            .servos
            .iter()
            .zip(pwms)
            .map(|(config, pwm)| {
                let bounds = (config.min_us, config.max_us);
                Ok(Jog { servo: Servo::new(jog_config(config, bounds), pwm)?, bounds, pulse: None })
            })
            .collect::<Result<Vec<_>, ActuationError>>()?;
        Ok(ServoCalibration { actuation, jogs, selected: 0, step_us: DEFAULT_STEP_US, clock, changed: false })
    }

    /// The config as calibrated so far.
    pub fn actuation(&self) -> &ActuationConfig {
        &self.actuation
    }

    /// Whether anything was stored since the start (or [`Self::mark_saved`]).
    pub fn changed(&self) -> bool {
        self.changed
    }

    pub fn mark_saved(&mut self) {
        self.changed = false;
    }

    /// The selected servo's name, its last pulse (None before the first move)
    /// and the angle that pulse means with the stored limits.
    pub fn position(&self) -> (&str, Option<u16>, Option<f32>) {
        let jog = &self.jogs[self.selected];
        let config = &self.actuation.servos[self.selected];
        (config.name.as_str(), jog.pulse, jog.pulse.map(|p| angle_for_pulse(config, f64::from(p))))
    }

    pub fn bounds(&self) -> (u16, u16) {
        self.jogs[self.selected].bounds
    }

    pub fn step_us(&self) -> u16 {
        self.step_us
    }

    /// Runs one command; returns what to tell the user.
    pub fn apply(&mut self, command: &Command) -> Result<String, String> {
        match command {
            Command::Select(which) => self.select(which),
            Command::Jog { up, by } => {
                if by.is_some_and(|us| !(1..=MAX_STEP_US).contains(&us)) {
                    return Err(format!("a jog of {} µs: allowed 1..={MAX_STEP_US}", by.unwrap_or(0)));
                }
                let by = i32::from(by.unwrap_or(self.step_us));
                let step = if *up { by } else { -by };
                let from = self.jogs[self.selected].pulse.map_or_else(|| self.start_pulse(), i32::from);
                self.go_to(from + step)
            }
            Command::Pulse(us) => self.go_to(i32::from(*us)),
            Command::Step(us) => {
                if !(1..=MAX_STEP_US).contains(us) {
                    return Err(format!("step {us} µs: allowed 1..={MAX_STEP_US}"));
                }
                self.step_us = *us;
                Ok(format!("step {us} µs"))
            }
            Command::Unlock => self.unlock(),
            Command::StoreMin => self.store_limit(false),
            Command::StoreMax => self.store_limit(true),
            Command::StoreHome => self.store_home(),
            Command::StorePose { bin, index } => self.store_pose(bin, *index),
            Command::Test(bin) => self.test(bin),
            Command::Detach => {
                self.jogs[self.selected].servo.detach().map_err(|e| e.to_string())?;
                Ok(format!("{}: pulses stopped", self.position().0))
            }
            Command::Show => Ok(self.show()),
            Command::Help => Ok(HELP.to_string()),
        }
    }

    /// Stops every servo's pulses (on exit: no servo is left holding or jittering).
    pub fn stop_all(&mut self) -> Result<(), ActuationError> {
        let mut first_error = None;
        for jog in &mut self.jogs {
            if let Err(e) = jog.servo.detach() {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn select(&mut self, which: &str) -> Result<String, String> {
        let names: Vec<&str> = self.actuation.servos.iter().map(|s| s.name.as_str()).collect();
        let index = match which.parse::<usize>() {
            Ok(n) if (1..=names.len()).contains(&n) => n - 1,
            _ => names
                .iter()
                .position(|n| *n == which)
                .ok_or_else(|| format!("no servo `{which}`; servos: {}", names.join(", ")))?,
        };
        self.selected = index;
        Ok(self.status())
    }

    /// Where a first jog starts from: the configured home's pulse.
    fn start_pulse(&self) -> i32 {
        let config = &self.actuation.servos[self.selected];
        pulse_us(config, config.home.clamp(config.min_angle, config.max_angle)).round() as i32
    }

    fn go_to(&mut self, pulse: i32) -> Result<String, String> {
        let jog = &mut self.jogs[self.selected];
        let (low, high) = jog.bounds;
        let target = pulse.clamp(i32::from(low), i32::from(high)) as u16;
        jog.servo.set_angle(f32::from(target), 0).map_err(|e| e.to_string())?;
        jog.pulse = Some(target);
        let mut reply = self.status();
        if i32::from(target) != pulse {
            let _ = write!(reply, "  (held at the bound; {pulse} µs is outside {low}..={high})");
        }
        Ok(reply)
    }

    /// One line: servo, pulse, angle, bounds, step.
    pub fn status(&self) -> String {
        let (name, pulse, angle) = self.position();
        let (low, high) = self.bounds();
        let at = match (pulse, angle) {
            (Some(p), Some(a)) => format!("{p} µs = {a:.1}°"),
            _ => "not moved yet".to_string(),
        };
        format!("{name}: {at}  [jog {low}..={high} µs, step {} µs]", self.step_us)
    }

    /// Whether `config` (and a jog over `bounds`) can drive the selected
    /// servo's channel, tried on a simulated channel of the same resolution so
    /// a refusal never costs the real one.
    fn check_servo(&self, config: &ServoConfig, bounds: (u16, u16)) -> Result<(), String> {
        let max_duty = self.jogs[self.selected].servo.max_duty();
        let sim = || SimPwm::new(&config.name, max_duty, SimLog::default(), self.clock.clone());
        Servo::new(config.clone(), sim()).map_err(|e| e.to_string())?;
        Servo::new(jog_config(config, bounds), sim()).map_err(|e| e.to_string())?;
        Ok(())
    }

    fn set_bounds(&mut self, bounds: (u16, u16)) -> Result<(), String> {
        let index = self.selected;
        self.check_servo(&self.actuation.servos[index].clone(), bounds)?;
        let old = self.jogs.remove(index);
        let servo = Servo::new(jog_config(&self.actuation.servos[index], bounds), old.servo.into_pwm())
            .expect("checked on a channel of the same resolution");
        self.jogs.insert(index, Jog { servo, bounds, pulse: old.pulse });
        Ok(())
    }

    fn unlock(&mut self) -> Result<String, String> {
        self.set_bounds(PULSE_LIMITS_US)?;
        Ok(format!(
            "{}: jog unlocked to {}..={} µs. Go in small steps and stop where the servo hums or the \
             mechanism stops moving; store that as `min`/`max`, a little inside.",
            self.position().0,
            PULSE_LIMITS_US.0,
            PULSE_LIMITS_US.1
        ))
    }

    fn current_pulse(&self) -> Result<u16, String> {
        self.jogs[self.selected]
            .pulse
            .ok_or_else(|| format!("{}: move it first (`+`, `-` or `pulse`)", self.position().0))
    }

    fn store_limit(&mut self, upper: bool) -> Result<String, String> {
        let pulse = self.current_pulse()?;
        let index = self.selected;
        let old = self.actuation.servos[index].clone();
        let mut new = old.clone();
        if upper {
            if pulse <= old.min_us {
                return Err(format!("max {pulse} µs must be above min_us {} µs", old.min_us));
            }
            new.max_us = pulse;
        } else {
            if pulse >= old.max_us {
                return Err(format!("min {pulse} µs must be below max_us {} µs", old.max_us));
            }
            new.min_us = pulse;
        }
        let (low, high) = self.bounds();
        let bounds = if upper { (low.min(pulse), pulse) } else { (pulse, high.max(pulse)) };
        // Nothing changes unless the new range can drive the servo.
        self.check_servo(&new, bounds)?;
        let moved = self.keep_pulses(&old, &new);
        self.actuation.servos[index] = new.clone();
        self.set_bounds(bounds)?;
        self.changed = true;
        let which = if upper { "max_us" } else { "min_us" };
        Ok(format!("{}: {which} = {pulse} µs (range now {}..={} µs){moved}", new.name, new.min_us, new.max_us))
    }

    /// Re-expresses the angles of `old`'s home and poses under `new`'s limits so
    /// their pulses stay the same (clamped into the new range). Says what moved.
    fn keep_pulses(&mut self, old: &ServoConfig, new: &ServoConfig) -> String {
        let convert = |angle: f32| angle_for_pulse(new, pulse_us(old, angle.clamp(old.min_angle, old.max_angle)));
        let servo = &mut self.actuation.servos[self.selected];
        servo.home = convert(servo.home);
        let mut clamped = Vec::new();
        for bin in &mut self.actuation.bins {
            for pose in bin.poses.iter_mut().filter(|p| p.servo == old.name) {
                let pulse = pulse_us(old, pose.angle.clamp(old.min_angle, old.max_angle));
                pose.angle = convert(pose.angle);
                if (pulse_us(new, pose.angle) - pulse).abs() > 0.5 {
                    clamped.push(bin.name.clone());
                }
            }
        }
        if clamped.is_empty() {
            String::new()
        } else {
            format!("; poses of {} were outside the new range and now sit at its edge", clamped.join(", "))
        }
    }

    /// The current pulse, if it lies inside the stored limits (a pose or home
    /// outside them would be clamped when used, so it is refused).
    fn pulse_inside_limits(&self) -> Result<u16, String> {
        let pulse = self.current_pulse()?;
        let c = &self.actuation.servos[self.selected];
        if !(c.min_us..=c.max_us).contains(&pulse) {
            return Err(format!(
                "{pulse} µs is outside {}'s stored limits {}..={} µs: store `min`/`max` first, or come back inside",
                c.name, c.min_us, c.max_us
            ));
        }
        Ok(pulse)
    }

    fn store_home(&mut self) -> Result<String, String> {
        let pulse = self.pulse_inside_limits()?;
        let config = &mut self.actuation.servos[self.selected];
        config.home = angle_for_pulse(config, f64::from(pulse));
        self.changed = true;
        Ok(format!("{}: home = {:.1}° ({pulse} µs)", config.name, config.home))
    }

    fn store_pose(&mut self, bin_name: &str, index: Option<usize>) -> Result<String, String> {
        let pulse = self.pulse_inside_limits()?;
        let config = self.actuation.servos[self.selected].clone();
        let known: Vec<String> = self.actuation.bins.iter().map(|b| b.name.clone()).collect();
        let bin = self
            .actuation
            .bins
            .iter_mut()
            .find(|b| b.name == bin_name)
            .ok_or_else(|| format!("no bin `{bin_name}`; bins: {}", known.join(", ")))?;
        let angle = angle_for_pulse(&config, f64::from(pulse));
        let mine: Vec<usize> = (0..bin.poses.len()).filter(|&i| bin.poses[i].servo == config.name).collect();
        let slot = match (index, mine.as_slice()) {
            (Some(n), _) => {
                let i = n.checked_sub(1).filter(|&i| i < bin.poses.len()).ok_or_else(|| {
                    format!("bin {bin_name} has {} poses; pose numbers are 1..={}", bin.poses.len(), bin.poses.len())
                })?;
                if bin.poses[i].servo != config.name {
                    return Err(format!("pose {n} of bin {bin_name} is servo {}'s; select it first", bin.poses[i].servo));
                }
                i
            }
            (None, []) => {
                bin.poses.push(Pose { servo: config.name.clone(), angle });
                bin.poses.len() - 1
            }
            (None, [i]) => *i,
            (None, _) => {
                let numbers: Vec<String> = mine.iter().map(|i| (i + 1).to_string()).collect();
                return Err(format!(
                    "bin {bin_name} uses {} {} times (poses {}): say which, e.g. `pose {bin_name} {}`",
                    config.name,
                    mine.len(),
                    numbers.join(", "),
                    numbers[0]
                ));
            }
        };
        bin.poses[slot].angle = angle;
        self.changed = true;
        Ok(format!("bin {bin_name}: pose {} = {} at {angle:.1}° ({pulse} µs)", slot + 1, config.name))
    }

    /// Builds the real actuator from the calibrated values, homes, routes to
    /// `bin` and back, then hands the channels back to the jog.
    fn test(&mut self, bin: &str) -> Result<String, String> {
        let config = self.actuation.clone();
        if !config.bins.iter().any(|b| b.name == bin) {
            let known: Vec<&str> = config.bins.iter().map(|b| b.name.as_str()).collect();
            return Err(format!("no bin `{bin}`; bins: {}", known.join(", ")));
        }
        // A refused config would swallow the real channels: try it on simulated
        // ones of the same resolution first.
        let log = crate::actuation::SimLog::default();
        let dry: Vec<_> = (config.servos.iter().zip(&self.jogs))
            .map(|(s, j)| crate::actuation::SimPwm::new(&s.name, j.servo.max_duty(), log.clone(), self.clock.clone()))
            .collect();
        ServoActuator::new(&config, dry, self.clock.clone()).map_err(|e| format!("cannot test: {e}"))?;
        let pwms: Vec<P> = std::mem::take(&mut self.jogs).into_iter().map(|j| j.servo.into_pwm()).collect();
        let mut actuator = ServoActuator::new(&config, pwms, self.clock.clone())
            .expect("the same config passed on simulated channels");
        let result = actuator.home().and_then(|mut moves| {
            moves.extend(actuator.route(bin)?);
            Ok(moves)
        });
        self.restore_jogs(actuator.into_pwms(), &config)?;
        let moves = result.map_err(|e| e.to_string())?;
        let mut reply = format!("test {bin}:");
        for m in moves {
            let _ = write!(reply, "\n  {} -> {:.1}° ({:.0} µs)", m.servo, m.angle, m.pulse_us);
        }
        Ok(reply)
    }

    /// After a test the servos stand at home: the jog goes on from there.
    fn restore_jogs(&mut self, pwms: Vec<P>, config: &ActuationConfig) -> Result<(), String> {
        for (servo, pwm) in config.servos.iter().zip(pwms) {
            let bounds = (servo.min_us, servo.max_us);
            let home = pulse_us(servo, servo.home.clamp(servo.min_angle, servo.max_angle)).round() as u16;
            let jog_servo = Servo::new(jog_config(servo, bounds), pwm).map_err(|e| e.to_string())?;
            self.jogs.push(Jog { servo: jog_servo, bounds, pulse: Some(home.clamp(bounds.0, bounds.1)) });
        }
        Ok(())
    }

    /// The servos with their limits and home, and each bin's poses.
    pub fn show(&self) -> String {
        let mut out = String::from("servos:");
        for (i, (servo, jog)) in self.actuation.servos.iter().zip(&self.jogs).enumerate() {
            let mark = if i == self.selected { '*' } else { ' ' };
            let now = jog.pulse.map_or("-".to_string(), |p| format!("{p} µs"));
            let _ = write!(
                out,
                "\n {mark}{} {:<8} channel {:>2}  {}..={} µs = {}..={}°  home {:.1}°  now {now}",
                i + 1,
                servo.name,
                servo.channel,
                servo.min_us,
                servo.max_us,
                servo.min_angle,
                servo.max_angle,
                servo.home
            );
        }
        out.push_str("\nbins:");
        for bin in &self.actuation.bins {
            let poses: Vec<String> = bin.poses.iter().map(|p| format!("{} {:.1}°", p.servo, p.angle)).collect();
            let _ = write!(out, "\n  {:<10} {}", bin.name, poses.join(", then "));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actuation::sim::{SimLog, SimPwm};
    use crate::clock::SimClock;
    use crate::config::ActuationConfig;

    /// The default bin with the chute narrowed to 1000..=2000 µs over 0..=180°.
    fn session() -> (ServoCalibration<SimPwm>, SimLog) {
        let mut actuation = ActuationConfig::default();
        actuation.servos[0].min_us = 1000;
        actuation.servos[0].max_us = 2000;
        let clock: Arc<dyn Clock> = Arc::new(SimClock::new());
        let log = SimLog::default();
        let pwms = crate::actuation::sim_channels(&actuation, &log, &clock);
        (ServoCalibration::new(actuation, pwms, clock).unwrap(), log)
    }

    fn run(cal: &mut ServoCalibration<SimPwm>, script: &str) -> Vec<String> {
        script
            .lines()
            .filter_map(|l| Command::parse(l).unwrap())
            .map(|c| cal.apply(&c).unwrap_or_else(|e| panic!("{c:?}: {e}")))
            .collect()
    }

    fn pulses(log: &SimLog, servo: &str) -> Vec<f64> {
        log.records().iter().filter(|r| r.servo == servo && r.duty > 0).map(|r| r.pulse_us()).collect()
    }

    #[test]
    fn parses_every_command_and_rejects_junk_with_a_reason() {
        assert_eq!(Command::parse("  # comment").unwrap(), None);
        assert_eq!(Command::parse("+ 25").unwrap(), Some(Command::Jog { up: true, by: Some(25) }));
        assert_eq!(Command::parse("-").unwrap(), Some(Command::Jog { up: false, by: None }));
        assert_eq!(Command::parse("pulse 1500 # centre").unwrap(), Some(Command::Pulse(1500)));
        assert_eq!(
            Command::parse("pose glass 2").unwrap(),
            Some(Command::StorePose { bin: "glass".into(), index: Some(2) })
        );
        assert!(Command::parse("pulse fast").unwrap_err().contains("`fast` is not a pulse"));
        assert!(Command::parse("spin").unwrap_err().contains("unknown command `spin`"));
        assert!(Command::parse("min 1200").unwrap_err().contains("takes 0"));
    }

    #[test]
    fn the_jog_stays_inside_the_configured_limits_until_unlocked() {
        let (mut cal, log) = session();
        // chute: 1000..=2000 µs; asking far beyond holds at the bound
        let reply = run(&mut cal, "servo chute\npulse 2400\n+ 100\npulse 600");
        assert!(reply[1].contains("held at the bound"), "{reply:?}");
        for p in pulses(&log, "chute") {
            assert!((1000.0..=2000.0).contains(&p), "{p} µs sent");
        }
        run(&mut cal, "unlock\npulse 2400");
        let last = *pulses(&log, "chute").last().unwrap();
        assert!((last - 2400.0).abs() < 5.0, "{last}");
    }

    #[test]
    fn stored_limits_bound_the_jog_and_keep_poses_where_they_were() {
        let (mut cal, log) = session();
        let glass_before = cal.actuation().bins.iter().find(|b| b.name == "glass").unwrap().poses[0].clone();
        let chute_before = cal.actuation().servos[0].clone();
        let glass_pulse = pulse_us(&chute_before, glass_before.angle);
        run(&mut cal, "servo chute\nunlock\npulse 800\nmin\npulse 2200\nmax");
        let chute = cal.actuation().servos[0].clone();
        assert_eq!((chute.min_us, chute.max_us), (800, 2200));
        // the glass pose still sends the same pulse
        let glass = cal.actuation().bins.iter().find(|b| b.name == "glass").unwrap().poses[0].clone();
        assert!((pulse_us(&chute, glass.angle) - glass_pulse).abs() < 0.5);
        // now nothing beyond the stored limits goes out
        let before = log.records().len();
        run(&mut cal, "pulse 2500\npulse 500");
        for r in &log.records()[before..] {
            assert!((800.0..=2200.0).contains(&r.pulse_us()), "{} µs", r.pulse_us());
        }
        assert!(cal.changed());
    }

    #[test]
    fn a_range_the_channel_cannot_resolve_is_refused_and_the_channel_kept() {
        let (mut cal, log) = session();
        // 4096 counts per 20 ms: no duty step between 1001 and 1004 µs
        run(&mut cal, "servo chute\nunlock\npulse 1001\nmin\npulse 1004");
        let err = cal.apply(&Command::StoreMax).unwrap_err();
        assert!(err.contains("no step"), "{err}");
        assert_eq!(cal.actuation().servos[0].max_us, 2000, "nothing stored");
        // the chute is still the chute, and still driven
        run(&mut cal, "pulse 1500");
        assert_eq!(cal.position().0, "chute");
        assert_eq!(cal.position().1, Some(1500));
        assert!((log.records().last().unwrap().pulse_us() - 1500.0).abs() < 5.0);
        assert_eq!(log.records().last().unwrap().servo, "chute");
    }

    #[test]
    fn poses_outside_the_stored_limits_are_refused() {
        let (mut cal, _) = session();
        run(&mut cal, "servo chute\nunlock\npulse 2300");
        let err = cal.apply(&Command::StorePose { bin: "glass".into(), index: None }).unwrap_err();
        assert!(err.contains("outside chute's stored limits 1000..=2000"), "{err}");
        assert!(cal.apply(&Command::StoreHome).is_err());
        assert!(Command::parse("+ 1000").is_ok() && cal.apply(&Command::Jog { up: true, by: Some(1000) }).is_err());
    }

    #[test]
    fn min_above_max_is_refused() {
        let (mut cal, _) = session();
        run(&mut cal, "servo chute\nunlock\npulse 2100");
        let err = cal.apply(&Command::StoreMin).unwrap_err();
        assert!(err.contains("must be below max_us 2000"), "{err}");
        assert!(!cal.changed());
    }

    #[test]
    fn home_and_poses_are_stored_as_angles_and_a_test_uses_them() {
        let (mut cal, log) = session();
        run(&mut cal, "servo chute\npulse 1600\nhome\npulse 1375\npose glass");
        let chute = cal.actuation().servos[0].clone();
        assert!((chute.home - 108.0).abs() < 0.1, "{}", chute.home);
        let glass = cal.actuation().bins.iter().find(|b| b.name == "glass").unwrap();
        assert!((glass.poses[0].angle - 67.5).abs() < 0.1);
        let before = log.records().len();
        let reply = run(&mut cal, "test glass");
        assert!(reply[0].contains("chute -> 67.5°"), "{reply:?}");
        // home first (flap then chute to its new home), then the route
        let chute_pulses: Vec<f64> = log.records()[before..]
            .iter()
            .filter(|r| r.servo == "chute" && r.duty > 0)
            .map(|r| r.pulse_us())
            .collect();
        assert!((chute_pulses[0] - 1600.0).abs() < 5.0 && (chute_pulses[1] - 1375.0).abs() < 5.0, "{chute_pulses:?}");
        // the jog goes on from home
        assert_eq!(cal.position().1, Some(1600));
    }

    #[test]
    fn a_pose_needs_a_move_first_and_a_known_bin() {
        let (mut cal, _) = session();
        assert!(cal.apply(&Command::StoreHome).unwrap_err().contains("move it first"));
        run(&mut cal, "pulse 1500");
        let err = cal.apply(&Command::StorePose { bin: "compost".into(), index: None }).unwrap_err();
        assert!(err.contains("no bin `compost`") && err.contains("glass"), "{err}");
    }

    #[test]
    fn stop_all_stops_every_pulse() {
        let (mut cal, log) = session();
        run(&mut cal, "servo 1\npulse 1500\nservo 2\npulse 1200");
        cal.stop_all().unwrap();
        assert_eq!(log.last_duty("chute"), Some(0));
        assert_eq!(log.last_duty("flap"), Some(0));
    }
}
