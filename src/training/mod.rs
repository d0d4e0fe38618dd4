//! Training and evaluation: data, optimiser, the epoch loop, metrics.

pub mod augment;
pub mod data;
pub mod eval;
pub mod freeze;
pub mod pretrained;
pub mod sgd;
pub mod trainer;

pub use eval::{evaluate, EvalReport};
pub use trainer::{TrainConfig, Trainer};
