//! The `pca9685` backend: 16-channel, 12-bit PWM boards on I2C (Adafruit's and
//! its many copies), through the `pwm-pca9685` driver on rppal's I2C bus.
//!
//! One board drives every servo; a servo's `channel` is the board channel
//! 0..=15, and `[actuation.pca9685]` gives the bus, address and oscillator.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use embedded_hal::i2c::I2c;
use embedded_hal::pwm::{ErrorType, SetDutyCycle};
use pwm_pca9685::{Channel, Pca9685};

use super::device::DeviceError;
use super::{ActuationError, ServoActuator, PERIOD_US};
use crate::clock::Clock;
use crate::config::ActuationConfig;

/// Counter steps per PWM period of the chip.
pub const COUNTS: u16 = 4096;

/// Servo frame rate.
const SERVO_HZ: f64 = 50.0;

/// The datasheet's wait for the oscillator after leaving sleep.
const OSCILLATOR_START: Duration = Duration::from_micros(500);

/// PRE_SCALE register value for 50 Hz (datasheet 7.3.5:
/// round(osc / (4096 · rate)) − 1; 121 for the nominal 25 MHz).
pub fn prescale(oscillator_hz: u32) -> u8 {
    let value = (f64::from(oscillator_hz) / (f64::from(COUNTS) * SERVO_HZ)).round() - 1.0;
    // The chip takes 3..=255; a 20..30 MHz oscillator gives ~97..145.
    value.clamp(3.0, 255.0) as u8
}

/// Chip counts in 20 ms. The prescaler only approximates 50 Hz (19.99 ms at
/// 25 MHz), so the servo's duty arithmetic, which assumes a 20 ms period, uses
/// this rather than 4096 to land every pulse on the right width, its limits
/// included.
pub fn counts_per_20ms(oscillator_hz: u32, prescale: u8) -> u16 {
    let count_us = (f64::from(prescale) + 1.0) * 1e6 / f64::from(oscillator_hz);
    (PERIOD_US / count_us).round() as u16
}

/// A PCA9685 set up for servos, shared by its channels.
pub struct Pca9685Board<I: I2c> {
    driver: Arc<Mutex<Pca9685<I>>>,
    device: String,
    max_duty: u16,
}

impl<I: I2c> Pca9685Board<I> {
    /// Sets the prescale for 50 Hz and starts the oscillator. `device` names the
    /// board in errors (e.g. "PCA9685 at 0x40 on /dev/i2c-1").
    pub fn init(i2c: I, address: u8, oscillator_hz: u32, device: String, clock: &dyn Clock) -> Result<Self, DeviceError> {
        let mut driver = Pca9685::new(i2c, address)
            .map_err(|e| DeviceError::new(device.clone(), format!("bad address: {e:?}")))?;
        let prescale = prescale(oscillator_hz);
        // PRE_SCALE is only written while the chip sleeps, and a board left
        // running by an earlier run is awake: put it to sleep first.
        let setup = driver
            .disable()
            .and_then(|()| driver.set_prescale(prescale))
            .and_then(|()| driver.enable());
        setup.map_err(|e| {
            DeviceError::new(device.clone(), format!("no answer: {e:?}")).with_hint(Some(format!(
                "check the wiring (SDA, SCL, GND), the board's 3.3 V logic supply and its address \
                 jumpers; `i2cdetect -y <bus>` lists the addresses that answer (0x{address:02x} expected)"
            )))
        })?;
        clock.sleep(OSCILLATOR_START);
        let max_duty = counts_per_20ms(oscillator_hz, prescale);
        log::info!("{device}: prescale {prescale} for 50 Hz, {max_duty} counts per 20 ms");
        Ok(Pca9685Board { driver: Arc::new(Mutex::new(driver)), device, max_duty })
    }

    /// Board channel `channel` (0..=15), switched fully off until the first move.
    pub fn channel(&self, channel: u8) -> Result<Pca9685Channel<I>, DeviceError> {
        let Ok(id) = Channel::try_from(channel) else {
            return Err(DeviceError::new(self.device.clone(), format!("has no channel {channel}"))
                .with_hint(Some("a PCA9685's channels are 0..=15".into())));
        };
        let mut pwm = Pca9685Channel {
            driver: self.driver.clone(),
            channel: id,
            device: format!("{} channel {channel}", self.device),
            max_duty: self.max_duty,
        };
        // Outputs keep their last setting across runs; start without pulses.
        pwm.set_duty_cycle(0)?;
        Ok(pwm)
    }
}

/// One board channel as an `embedded-hal` PWM channel.
pub struct Pca9685Channel<I: I2c> {
    driver: Arc<Mutex<Pca9685<I>>>,
    channel: Channel,
    device: String,
    max_duty: u16,
}

impl<I: I2c> ErrorType for Pca9685Channel<I> {
    type Error = DeviceError;
}

impl<I: I2c> SetDutyCycle for Pca9685Channel<I> {
    /// Counts in 20 ms: slightly more than 4096 at 25 MHz (see [`counts_per_20ms`]).
    fn max_duty_cycle(&self) -> u16 {
        self.max_duty
    }

    fn set_duty_cycle(&mut self, duty: u16) -> Result<(), DeviceError> {
        let mut driver = self
            .driver
            .lock()
            .map_err(|_| DeviceError::new(self.device.clone(), "driver lock poisoned by a panic"))?;
        let result = match duty {
            // Full off: the output stays low, the servo gets no pulses.
            0 => driver.set_channel_full_off(self.channel),
            d if d >= COUNTS => driver.set_channel_full_on(self.channel, 0),
            d => driver.set_channel_on_off(self.channel, 0, d),
        };
        result.map_err(|e| DeviceError::new(self.device.clone(), format!("I2C write failed: {e:?}")))
    }
}

impl<I: I2c> Drop for Pca9685Channel<I> {
    /// The board keeps its outputs after the program ends: a servo left pulsing
    /// would hold (and heat) forever.
    fn drop(&mut self) {
        if let Err(e) = self.set_duty_cycle(0) {
            log::warn!("stopping PWM: {e}");
        }
    }
}

/// Builds a [`ServoActuator`] on a PCA9685 at `[actuation.pca9685]` bus and address.
pub fn pca9685_actuator(
    config: &ActuationConfig,
    clock: Arc<dyn Clock>,
) -> Result<ServoActuator<Pca9685Channel<rppal::i2c::I2c>>, ActuationError> {
    let pwms = pca9685_channels(config, clock.as_ref())?;
    ServoActuator::new(config, pwms, clock)
}

/// The PCA9685 channels of the configured servos, in config order.
pub fn pca9685_channels(
    config: &ActuationConfig,
    clock: &dyn Clock,
) -> Result<Vec<Pca9685Channel<rppal::i2c::I2c>>, ActuationError> {
    let settings = &config.pca9685;
    let bus = format!("/dev/i2c-{}", settings.bus);
    let i2c = rppal::i2c::I2c::with_bus(settings.bus).map_err(|e| i2c_error(&bus, e))?;
    let device = format!("PCA9685 at 0x{:02x} on {bus}", settings.address);
    let board = Pca9685Board::init(i2c, settings.address, settings.oscillator_hz, device, clock)?;
    Ok(config.servos.iter().map(|s| board.channel(s.channel)).collect::<Result<Vec<_>, _>>()?)
}

/// Why an I2C bus would not open, and what to check.
pub fn i2c_error(bus: &str, err: rppal::i2c::Error) -> DeviceError {
    let hint = match &err {
        rppal::i2c::Error::Io(e) if e.kind() == std::io::ErrorKind::NotFound => Some(
            "I2C is off: on a Raspberry Pi run `sudo raspi-config nonint do_i2c 0` (or add \
             `dtparam=i2c_arm=on` to /boot/firmware/config.txt) and reboot; `ls /dev/i2c-*` lists \
             the buses; set [actuation.pca9685] bus"
                .to_string(),
        ),
        rppal::i2c::Error::Io(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Some(
            "run as a user in the `i2c` group (`sudo usermod -aG i2c $USER`, then log in again)".to_string(),
        ),
        rppal::i2c::Error::UnknownModel => Some(super::rpi::NOT_A_PI_HINT.to_string()),
        _ => None,
    };
    DeviceError::new(bus, err).with_hint(hint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actuation::Actuator;
    use crate::clock::SimClock;
    use crate::config::Config;
    use embedded_hal::i2c::ErrorKind;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction};

    const ADDR: u8 = 0x40;

    /// The writes that set a board up for servos at 25 MHz.
    fn init_writes() -> Vec<Transaction> {
        vec![
            Transaction::write(ADDR, vec![0x00, 0x11]), // MODE1: sleep (+ all-call)
            Transaction::write(ADDR, vec![0xFE, 121]),  // PRE_SCALE for 50 Hz
            Transaction::write(ADDR, vec![0x00, 0x01]), // MODE1: awake
        ]
    }

    fn board(i2c: &Mock, clock: &SimClock) -> Pca9685Board<Mock> {
        Pca9685Board::init(i2c.clone(), ADDR, 25_000_000, "PCA9685 test".into(), clock).unwrap()
    }

    #[test]
    fn prescale_and_counts_for_50_hz() {
        assert_eq!(prescale(25_000_000), 121);
        // 122 · 4096 / 25 MHz = 19.988 ms: 20 ms is 4098.4 counts
        assert_eq!(counts_per_20ms(25_000_000, 121), 4098);
        // a slow oscillator (some boards run at 23-27 MHz) gets its own prescale
        assert_eq!(prescale(27_000_000), 131);
        assert_eq!(counts_per_20ms(27_000_000, 131), 4091);
    }

    #[test]
    fn init_sets_the_prescale_while_asleep_and_channels_start_off() {
        let mut expected = init_writes();
        expected.extend([
            Transaction::write(ADDR, vec![0x00, 0x21]),       // MODE1: auto-increment
            Transaction::write(ADDR, vec![0x0C, 0x00, 0x10]), // channel 1 full off
            // 1500 µs: 1500 · 4098 / 20000 = 307.35 -> 307 = 0x133
            Transaction::write(ADDR, vec![0x0A, 0x00, 0x00, 0x33, 0x01]),
            Transaction::write(ADDR, vec![0x0C, 0x00, 0x10]), // detach: full off
            Transaction::write(ADDR, vec![0x0C, 0x00, 0x10]), // dropped: full off
        ]);
        let mut i2c = Mock::new(&expected);
        let clock = SimClock::new();
        let board = board(&i2c, &clock);
        assert_eq!(clock.elapsed(), OSCILLATOR_START, "oscillator start-up wait");
        let mut ch = board.channel(1).unwrap();
        assert_eq!(ch.max_duty_cycle(), 4098);
        ch.set_duty_cycle(307).unwrap();
        ch.set_duty_cycle(0).unwrap();
        drop(ch);
        i2c.done();
    }

    #[test]
    fn servos_on_the_board_move_with_their_limits() {
        // Default bin: chute on channel 0, flap on channel 1; homing moves the
        // flap (0° = 1000 µs = 205 counts) then the chute (90° = 1500 µs = 307).
        let mut expected = init_writes();
        expected.extend([
            Transaction::write(ADDR, vec![0x00, 0x21]),
            Transaction::write(ADDR, vec![0x08, 0x00, 0x10]),
            Transaction::write(ADDR, vec![0x0C, 0x00, 0x10]),
            Transaction::write(ADDR, vec![0x0A, 0x00, 0x00, 205, 0x00]),
            Transaction::write(ADDR, vec![0x06, 0x00, 0x00, 0x33, 0x01]),
            // dropped at the end of the run: no more pulses
            Transaction::write(ADDR, vec![0x08, 0x00, 0x10]),
            Transaction::write(ADDR, vec![0x0C, 0x00, 0x10]),
        ]);
        let mut i2c = Mock::new(&expected);
        let clock = Arc::new(SimClock::new());
        let board = board(&i2c, &clock);
        let config = Config::default().actuation;
        let pwms = vec![board.channel(0).unwrap(), board.channel(1).unwrap()];
        let mut act = ServoActuator::new(&config, pwms, clock).unwrap();
        let moves = act.home().unwrap();
        for m in &moves {
            let servo = config.servos.iter().find(|s| s.name == m.servo).unwrap();
            let real_us = f64::from(m.duty) * 122.0 / 25.0; // one count = 4.88 µs
            assert!((f64::from(servo.min_us)..=f64::from(servo.max_us)).contains(&real_us), "{m:?}");
        }
        drop(act);
        i2c.done();
    }

    #[test]
    fn a_board_that_does_not_answer_says_what_to_check() {
        let mut i2c = Mock::new(&[Transaction::write(ADDR, vec![0x00, 0x11]).with_error(ErrorKind::Other)]);
        let err = Pca9685Board::init(i2c.clone(), ADDR, 25_000_000, "PCA9685 at 0x40 on /dev/i2c-1".into(), &SimClock::new())
            .err()
            .unwrap()
            .to_string();
        assert!(err.starts_with("PCA9685 at 0x40 on /dev/i2c-1: no answer"), "{err}");
        assert!(err.contains("i2cdetect") && err.contains("0x40 expected"), "{err}");
        i2c.done();
    }

    #[test]
    fn channel_16_does_not_exist() {
        let mut i2c = Mock::new(&init_writes());
        let board = board(&i2c, &SimClock::new());
        let err = board.channel(16).err().unwrap().to_string();
        assert!(err.contains("has no channel 16") && err.contains("0..=15"), "{err}");
        i2c.done();
    }

    #[test]
    fn a_missing_bus_names_the_device_and_how_to_enable_i2c() {
        let missing = rppal::i2c::Error::Io(std::io::Error::from(std::io::ErrorKind::NotFound));
        let err = i2c_error("/dev/i2c-1", missing).to_string();
        assert!(err.starts_with("/dev/i2c-1: "), "{err}");
        assert!(err.contains("raspi-config") && err.contains("dtparam=i2c_arm=on"), "{err}");
        let denied = rppal::i2c::Error::Io(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert!(i2c_error("/dev/i2c-1", denied).to_string().contains("`i2c` group"));
    }

    #[test]
    fn opening_a_bus_that_is_not_there_fails_with_the_path() {
        // Bus 250 exists on no machine this runs on.
        let mut config = Config::default().actuation;
        config.pca9685.bus = 250;
        let err = pca9685_actuator(&config, Arc::new(SimClock::new())).err().unwrap().to_string();
        assert!(err.starts_with("/dev/i2c-250: "), "{err}");
    }
}
