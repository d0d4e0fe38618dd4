//! The bin's inputs for `smartbin run`, built from the config: the trigger that
//! says when an item is on the tray, the fill monitor, and the lid interlock.
//!
//! GPIO pins are Raspberry Pi pins through rppal. Anywhere else opening one
//! fails at start-up with the pin, the config key that asked for it, and what to
//! check.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rppal::gpio::{Gpio, InputPin, OutputPin};

use crate::actuation::interlock::Interlock;
use crate::actuation::Actuator;
use crate::clock::Clock;
use crate::config::{Config, InterlockConfig, Pull};
use crate::decision::fill::{levels_path, FillMonitor, HcSr04, LevelStore};
use crate::source::trigger::{ContinuousTrigger, GpioTrigger, MotionTrigger, TriggerMode};
use crate::source::{FrameSource, ReplayTrigger, SourceSpec, Trigger};

/// The trigger `[trigger] mode` asks for (`auto`: replay for images, motion for cameras).
pub fn build_trigger(
    config: &Config,
    spec: &SourceSpec,
    source: Box<dyn FrameSource>,
    clock: Arc<dyn Clock>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Box<dyn Trigger>> {
    let t = &config.trigger;
    let k = config.decision.frames_per_item;
    Ok(match t.mode.resolve(spec) {
        TriggerMode::Replay | TriggerMode::Auto => {
            if k > 1 {
                log::info!("frames_per_item = {k} does not apply to a replay: it classifies one frame per file");
            }
            Box::new(ReplayTrigger::new(source))
        }
        TriggerMode::Motion => {
            let trigger = MotionTrigger::new(source, t, k, clock).context("[trigger] background")?;
            Box::new(trigger.with_stop_flag(stop))
        }
        TriggerMode::Continuous => Box::new(ContinuousTrigger::new(source, k).with_stop_flag(stop)),
        TriggerMode::Gpio(pin) => {
            let input = open_input(pin, t.pull, &format!("[trigger] mode = \"gpio:{pin}\""))?;
            Box::new(GpioTrigger::new(input, pin, source, t, k, clock).with_stop_flag(stop))
        }
    })
}

/// The fill monitor, when `[fill]` gives a capacity or a sensor.
pub fn build_fill(config: &Config, clock: Arc<dyn Clock>) -> anyhow::Result<Option<FillMonitor>> {
    let fill = &config.fill;
    if fill.capacity.is_empty() && fill.sensors.is_empty() {
        if let Some(overflow) = &fill.overflow_bin {
            log::warn!("[fill] overflow_bin = {overflow:?} but no capacity or sensors: no bin is ever full");
        }
        return Ok(None);
    }
    let store = LevelStore::new(levels_path(&config.log.events));
    log::info!("bin levels: {} (`smartbin bins` shows them)", store.path().display());
    let mut monitor = FillMonitor::new(fill, store, clock.clone())?;
    for s in &fill.sensors {
        let role = format!("[[fill.sensors]] bin {}", s.bin);
        let trigger = open_output(s.trigger_pin, &format!("{role} trigger_pin"))?;
        // The sensor drives its echo line both ways: no pull resistor.
        let echo = open_input(s.echo_pin, Pull::Off, &format!("{role} echo_pin"))?;
        let name = format!("HC-SR04 of bin {} (GPIO {}/{})", s.bin, s.trigger_pin, s.echo_pin);
        monitor.add_sensor(&s.bin, s.full_cm, Box::new(HcSr04::new(trigger, echo, clock.clone(), name)));
    }
    Ok(Some(monitor))
}

/// `actuator` behind the lid interlock, when `[interlock] pin` is set.
pub fn with_interlock(
    actuator: Box<dyn Actuator>,
    config: &InterlockConfig,
    clock: Arc<dyn Clock>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Box<dyn Actuator>> {
    let Some(pin) = config.pin else {
        return Ok(actuator);
    };
    let input = open_input(pin, config.pull, "[interlock] pin")?;
    log::info!("interlock: GPIO {pin}, open when {:?}; servos move only while it is closed", config.active);
    let debounce = Duration::from_millis(config.debounce_ms);
    Ok(Box::new(Interlock::new(actuator, input, pin, config.active, debounce, clock).with_stop_flag(stop)))
}

/// A GPIO input, with the Pi's pull resistor as asked.
pub fn open_input(pin: u8, pull: Pull, role: &str) -> anyhow::Result<InputPin> {
    let gpio = Gpio::new().map_err(|e| gpio_error(pin, role, e))?;
    let p = gpio.get(pin).map_err(|e| gpio_error(pin, role, e))?;
    Ok(match pull {
        Pull::Up => p.into_input_pullup(),
        Pull::Down => p.into_input_pulldown(),
        Pull::Off => p.into_input(),
    })
}

/// A GPIO output, starting low.
pub fn open_output(pin: u8, role: &str) -> anyhow::Result<OutputPin> {
    let gpio = Gpio::new().map_err(|e| gpio_error(pin, role, e))?;
    Ok(gpio.get(pin).map_err(|e| gpio_error(pin, role, e))?.into_output_low())
}

/// Says which pin failed, which key asked for it, and what to check.
fn gpio_error(pin: u8, role: &str, err: rppal::gpio::Error) -> anyhow::Error {
    use rppal::gpio::Error as E;
    let what = match &err {
        E::UnknownModel => "this is not a Raspberry Pi (rppal: unknown model), so it has no GPIO pins for the \
                            trigger, interlock or fill sensors; on another machine use [trigger] mode = \"motion\" \
                            or \"continuous\" and leave out [interlock] pin and [[fill.sensors]]"
            .to_string(),
        E::PermissionDenied(path) => format!(
            "permission denied on {path}: add the user to the `gpio` group \
             (`sudo usermod -aG gpio $USER`, then log in again)"
        ),
        E::PinUsed(_) => "the pin is already in use (by another smartbin setting or another program)".to_string(),
        E::PinNotAvailable(_) => "this Pi has no such GPIO; pins are BCM numbers 0..=27, not header positions".into(),
        E::Io(e) => format!("{e}; check that /dev/gpiomem or /dev/gpiochip0 exists and is readable"),
        E::ThreadPanic => err.to_string(),
    };
    anyhow::anyhow!("GPIO {pin} ({role}): {what}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::source::trigger::testing::ScriptedSource;
    use std::path::PathBuf;

    fn is_raspberry_pi() -> bool {
        std::fs::read_to_string("/proc/device-tree/model").is_ok_and(|m| m.contains("Raspberry Pi"))
    }

    #[test]
    fn errors_name_the_pin_the_key_and_what_to_do() {
        let err = gpio_error(17, "[interlock] pin", rppal::gpio::Error::UnknownModel).to_string();
        assert!(err.starts_with("GPIO 17 ([interlock] pin): this is not a Raspberry Pi"), "{err}");
        let err = gpio_error(4, "x", rppal::gpio::Error::PermissionDenied("/dev/gpiomem".into())).to_string();
        assert!(err.contains("/dev/gpiomem") && err.contains("`gpio` group"), "{err}");
    }

    #[test]
    fn gpio_off_a_pi_fails_with_the_pin_named() {
        if is_raspberry_pi() {
            eprintln!("skipping: this is a Raspberry Pi");
            return;
        }
        let mut config = Config::default();
        config.trigger.mode = TriggerMode::Gpio(17);
        let spec = SourceSpec::Images(PathBuf::from("x"));
        let source = Box::new(ScriptedSource::solid(&[1]));
        let err = build_trigger(&config, &spec, source, Arc::new(SystemClock), Arc::default()).err().unwrap();
        let text = format!("{err:#}");
        assert!(text.contains("GPIO 17 ([trigger] mode = \"gpio:17\")"), "{text}");
    }

    #[test]
    fn auto_is_replay_for_images_and_other_modes_are_built() {
        let spec = SourceSpec::Images(PathBuf::from("x"));
        let mut config = Config::default();
        let build = |config: &Config| {
            let source = Box::new(ScriptedSource::solid(&[1]));
            build_trigger(config, &spec, source, Arc::new(SystemClock), Arc::default()).unwrap().describe()
        };
        assert!(build(&config).starts_with("one item per frame"), "{}", build(&config));
        config.trigger.mode = TriggerMode::Motion;
        assert!(build(&config).starts_with("motion"));
        config.trigger.mode = TriggerMode::Continuous;
        assert!(build(&config).starts_with("continuous"));
    }

    #[test]
    fn no_fill_config_means_no_monitor_and_no_pin_means_no_interlock() {
        let config = Config::default();
        assert!(build_fill(&config, Arc::new(SystemClock)).unwrap().is_none());
        let (sim, _) = crate::actuation::sim_actuator(&config.actuation, Arc::new(SystemClock)).unwrap();
        with_interlock(Box::new(sim), &config.interlock, Arc::new(SystemClock), Arc::default()).unwrap();
    }
}
