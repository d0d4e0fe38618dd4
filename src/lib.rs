//! smartbin: the brain of an automatic recycling bin.
//!
//! The modules follow the path an item takes through the bin:
//! [`source`] (frames) → [`preprocess`] → [`model`] → [`decision`] → [`actuation`],
//! with [`config`], [`training`], [`sorter`] (the run loop), [`service`] (systemd)
//! and [`cli`] beside them.

pub mod actuation;
pub mod calibration;
pub mod cli;
pub mod clock;
pub mod config;
pub mod decision;
pub mod model;
pub mod preprocess;
pub mod service;
pub mod sorter;
pub mod source;
pub mod training;
pub mod util;
