//! Triggers: when is there an item on the tray, and which frames show it.
//!
//! The classifier only ever sees frames a trigger hands over, so an empty tray is
//! never sorted (as "trash" or anything else). `[trigger] mode` picks one:
//!
//! - `motion`: compares the camera picture with the empty tray ([`MotionTrigger`]);
//! - `gpio:<pin>`: an IR break-beam or PIR input on a GPIO pin ([`GpioTrigger`]);
//! - `continuous`: every `frames_per_item` frames are an item, for bench tests
//!   ([`ContinuousTrigger`]);
//! - `replay`: one item per image file ([`super::ReplayTrigger`]);
//! - `auto`: `replay` for `images:` sources, `motion` for cameras.
//!
//! Every trigger takes the run's stop flag: waiting for an item can take hours,
//! and Ctrl-C must not have to wait for one.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub mod continuous;
pub mod gpio;
pub mod motion;
#[cfg(test)]
pub(crate) mod testing;

pub use continuous::ContinuousTrigger;
pub use gpio::{Debounced, GpioTrigger};
pub use motion::{changed_fraction, MotionTrigger, Thumb};

use super::SourceSpec;

/// Highest BCM GPIO number on the Raspberry Pi's 40-pin header.
pub const MAX_GPIO_PIN: u8 = 27;

/// `[trigger] mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum TriggerMode {
    /// `replay` for `images:` sources, `motion` for cameras.
    Auto,
    Motion,
    /// A break-beam or PIR input on this BCM GPIO pin.
    Gpio(u8),
    Continuous,
    Replay,
}

impl TriggerMode {
    /// The mode `auto` stands for with this source.
    pub fn resolve(self, spec: &SourceSpec) -> TriggerMode {
        match self {
            TriggerMode::Auto if matches!(spec, SourceSpec::Images(_)) => TriggerMode::Replay,
            TriggerMode::Auto => TriggerMode::Motion,
            other => other,
        }
    }
}

impl fmt::Display for TriggerMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TriggerMode::Auto => f.write_str("auto"),
            TriggerMode::Motion => f.write_str("motion"),
            TriggerMode::Gpio(pin) => write!(f, "gpio:{pin}"),
            TriggerMode::Continuous => f.write_str("continuous"),
            TriggerMode::Replay => f.write_str("replay"),
        }
    }
}

const ALLOWED_MODES: &str = "auto, motion, gpio:<pin>, continuous, replay";

impl FromStr for TriggerMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(TriggerMode::Auto),
            "motion" => Ok(TriggerMode::Motion),
            "continuous" => Ok(TriggerMode::Continuous),
            "replay" => Ok(TriggerMode::Replay),
            other => match other.strip_prefix("gpio:") {
                Some(pin) => parse_pin(pin).map(TriggerMode::Gpio),
                None => Err(format!("unknown trigger mode `{other}`; allowed: {ALLOWED_MODES}")),
            },
        }
    }
}

/// A BCM GPIO number on the 40-pin header.
fn parse_pin(text: &str) -> Result<u8, String> {
    match text.trim().parse::<u8>() {
        Ok(pin) if pin <= MAX_GPIO_PIN => Ok(pin),
        _ => Err(format!("`gpio:{text}` needs a BCM GPIO number; allowed: gpio:0 ..= gpio:{MAX_GPIO_PIN}")),
    }
}

impl TryFrom<String> for TriggerMode {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<TriggerMode> for String {
    fn from(mode: TriggerMode) -> String {
        mode.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn modes_parse_and_print_back() {
        for text in ["auto", "motion", "gpio:17", "continuous", "replay"] {
            let mode: TriggerMode = text.parse().unwrap();
            assert_eq!(mode.to_string(), text);
        }
        assert_eq!("gpio:4".parse(), Ok(TriggerMode::Gpio(4)));
    }

    #[test]
    fn bad_modes_say_what_is_allowed() {
        let err = "beam".parse::<TriggerMode>().unwrap_err();
        assert!(err.contains("unknown trigger mode `beam`") && err.contains("gpio:<pin>"), "{err}");
        let err = "gpio:40".parse::<TriggerMode>().unwrap_err();
        assert!(err.contains("gpio:0 ..= gpio:27"), "{err}");
        assert!("gpio:".parse::<TriggerMode>().is_err());
    }

    #[test]
    fn auto_means_replay_for_images_and_motion_for_cameras() {
        let images = SourceSpec::Images(PathBuf::from("x"));
        assert_eq!(TriggerMode::Auto.resolve(&images), TriggerMode::Replay);
        assert_eq!(TriggerMode::Motion.resolve(&images), TriggerMode::Motion);
        let camera = crate::source::parse_source_spec("camera:0").unwrap();
        assert_eq!(TriggerMode::Auto.resolve(&camera), TriggerMode::Motion);
        assert_eq!(TriggerMode::Continuous.resolve(&camera), TriggerMode::Continuous);
    }
}
