//! `continuous`: every `frames_per_item` frames are one item. For bench tests with
//! something always on the tray; on a real bin it would sort the empty tray.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::source::{Frame, FrameSource, SourceError, Trigger};

pub struct ContinuousTrigger {
    source: Box<dyn FrameSource>,
    frames_per_item: usize,
    /// Frames of the item being collected. Kept across calls so a bad frame
    /// (reported to the loop as an error) does not lose the frames before it.
    pending: Vec<Frame>,
    stop: Arc<AtomicBool>,
}

impl ContinuousTrigger {
    pub fn new(source: Box<dyn FrameSource>, frames_per_item: u32) -> Self {
        ContinuousTrigger {
            source,
            frames_per_item: frames_per_item.max(1) as usize,
            pending: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The run's stop flag: no new item is started once it is set.
    pub fn with_stop_flag(mut self, stop: Arc<AtomicBool>) -> Self {
        self.stop = stop;
        self
    }
}

impl Trigger for ContinuousTrigger {
    fn next_item(&mut self) -> Result<Option<Vec<Frame>>, SourceError> {
        while self.pending.len() < self.frames_per_item {
            if self.stop.load(Ordering::SeqCst) {
                return Ok(None);
            }
            match self.source.next_frame()? {
                Some(frame) => self.pending.push(frame),
                None => {
                    if !self.pending.is_empty() {
                        log::info!("source ended with {} frames of an unfinished item", self.pending.len());
                    }
                    return Ok(None);
                }
            }
        }
        Ok(Some(std::mem::take(&mut self.pending)))
    }

    fn describe(&self) -> String {
        format!("continuous: every {} frame(s) of {} are an item", self.frames_per_item, self.source.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::trigger::testing::ScriptedSource;

    fn origins(item: &[Frame]) -> Vec<&str> {
        item.iter().map(|f| f.origin.as_str()).collect()
    }

    #[test]
    fn groups_frames_and_drops_an_unfinished_item() {
        let source = ScriptedSource::solid(&[1, 2, 3, 4, 5]);
        let mut trigger = ContinuousTrigger::new(Box::new(source), 2);
        assert_eq!(origins(&trigger.next_item().unwrap().unwrap()), ["f0", "f1"]);
        assert_eq!(origins(&trigger.next_item().unwrap().unwrap()), ["f2", "f3"]);
        assert!(trigger.next_item().unwrap().is_none());
    }

    #[test]
    fn a_bad_frame_is_passed_on_and_the_item_continues() {
        let mut source = ScriptedSource::solid(&[1, 2, 3]);
        source.bad_at = Some(1);
        let mut trigger = ContinuousTrigger::new(Box::new(source), 2);
        assert!(matches!(trigger.next_item(), Err(SourceError::BadFrame { .. })));
        assert_eq!(origins(&trigger.next_item().unwrap().unwrap()), ["f0", "f2"]);
    }

    #[test]
    fn stop_flag_ends_it() {
        let stop = Arc::new(AtomicBool::new(true));
        let source = ScriptedSource::solid(&[1, 2]);
        let mut trigger = ContinuousTrigger::new(Box::new(source), 1).with_stop_flag(stop);
        assert!(trigger.next_item().unwrap().is_none());
    }
}
