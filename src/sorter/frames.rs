//! `[log] frames`: each item's first frame kept as `<event id>.jpg`, so a wrong
//! decision can be corrected later and the frame learnt from
//! (`smartbin correct`). Only the newest `keep_frames` are kept: an SD card
//! must not fill up over months.

use std::path::{Path, PathBuf};

use anyhow::Context;
use image::RgbImage;

/// Pruning lists the folder; doing it every few items is plenty.
const PRUNE_EVERY: u64 = 25;

pub struct FrameStore {
    dir: PathBuf,
    keep: usize,
}

impl FrameStore {
    pub fn new(dir: &Path, keep: usize) -> FrameStore {
        FrameStore { dir: dir.to_path_buf(), keep: keep.max(1) }
    }

    /// Where the frame of event `id` is (or would be) kept.
    pub fn path(dir: &Path, id: u64) -> PathBuf {
        dir.join(format!("{id}.jpg"))
    }

    /// Writes the frame of event `id` atomically; every few items drops the oldest.
    pub fn save(&self, id: u64, image: &RgbImage) -> anyhow::Result<PathBuf> {
        let path = Self::path(&self.dir, id);
        crate::util::write_jpeg(&path, image)?;
        if id % PRUNE_EVERY == 0 {
            // The frame is written: a failed clean-up must not unlink it from its event.
            if let Err(e) = self.prune() {
                log::warn!("removing old frames from {}: {e:#}", self.dir.display());
            }
        }
        Ok(path)
    }

    /// Removes all but the newest `keep` frames (by event id).
    pub fn prune(&self) -> anyhow::Result<usize> {
        let mut ids: Vec<u64> = std::fs::read_dir(&self.dir)
            .with_context(|| format!("listing {}", self.dir.display()))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".jpg")?.parse().ok()
            })
            .collect();
        if ids.len() <= self.keep {
            return Ok(0);
        }
        ids.sort_unstable();
        let old = ids.len() - self.keep;
        for id in &ids[..old] {
            let path = Self::path(&self.dir, *id);
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        Ok(old)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_kept_by_id_and_the_oldest_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store = FrameStore::new(dir.path(), 3);
        let img = RgbImage::from_pixel(8, 6, image::Rgb([200, 10, 10]));
        for id in 1..=5 {
            store.save(id, &img).unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        assert_eq!(store.prune().unwrap(), 2);
        let mut left: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, ["3.jpg", "4.jpg", "5.jpg", "notes.txt"]);
        let back = image::open(FrameStore::path(dir.path(), 5)).unwrap().to_rgb8();
        assert_eq!(back.dimensions(), (8, 6));
    }
}
