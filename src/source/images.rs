//! `images:DIR`: replays the image files of a folder as if they came from a camera.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Frame, FrameSource, SourceError};
use crate::clock::Clock;

/// How to replay a folder.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ReplayOptions {
    /// Start again from the first file after the last one.
    pub looped: bool,
    /// At most this many frames per second; `None` = as fast as the loop asks.
    pub rate_hz: Option<f64>,
}

/// Replays the `.jpg`/`.jpeg`/`.png` files (any letter case) directly in a folder,
/// sorted by file name. Hidden files (`.name`) are skipped: they are usually editor
/// or macOS metadata files (`._photo.jpg`) that are not images at all.
pub struct ImageDirSource {
    dir: PathBuf,
    files: Vec<PathBuf>,
    next: usize,
    options: ReplayOptions,
    clock: Arc<dyn Clock>,
    last_frame_at: Option<Instant>,
    /// Frames decoded since the current pass began. A looping replay of a folder
    /// where nothing decodes would otherwise report bad frames forever.
    decoded_this_pass: usize,
}

impl ImageDirSource {
    /// Lists the folder once; files added later are not seen until the next open.
    pub fn open(
        dir: &Path,
        options: ReplayOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, SourceError> {
        let fail = |reason: String| SourceError::Open {
            spec: format!("images:{}", dir.display()),
            reason,
        };
        if let Some(rate) = options.rate_hz {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(fail(format!("rate_hz = {rate}; allowed: a number > 0")));
            }
        }
        let files = list_images(dir).map_err(|e| fail(e.to_string()))?;
        if files.is_empty() {
            return Err(fail("no .jpg, .jpeg or .png files in the folder".into()));
        }
        Ok(ImageDirSource {
            dir: dir.to_path_buf(),
            files,
            next: 0,
            options,
            clock,
            last_frame_at: None,
            decoded_this_pass: 0,
        })
    }

    /// The files that will be replayed, in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Sleeps until the next frame is due under `rate_hz`.
    fn wait_for_rate(&mut self) {
        let Some(rate) = self.options.rate_hz else {
            return;
        };
        if let Some(last) = self.last_frame_at {
            let due = last + Duration::from_secs_f64(1.0 / rate);
            let now = self.clock.now();
            if due > now {
                self.clock.sleep(due - now);
            }
        }
        self.last_frame_at = Some(self.clock.now());
    }
}

impl FrameSource for ImageDirSource {
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        if self.next == self.files.len() {
            if !self.options.looped {
                return Ok(None);
            }
            if self.decoded_this_pass == 0 {
                log::warn!(
                    "no file in {} could be decoded; ending the replay instead of looping",
                    self.dir.display()
                );
                return Ok(None);
            }
            self.next = 0;
            self.decoded_this_pass = 0;
        }
        // Advance before decoding so a corrupt file is reported once, not retried.
        let path = self.files[self.next].clone();
        self.next += 1;
        self.wait_for_rate();
        let origin = path.display().to_string();
        let image = crate::preprocess::decode_file(&path).map_err(|reason| SourceError::BadFrame {
            origin: origin.clone(),
            reason,
        })?;
        self.decoded_this_pass += 1;
        Ok(Some(Frame {
            image,
            origin,
            captured_at: self.clock.wall(),
        }))
    }

    fn describe(&self) -> String {
        let mut s = format!("images:{} ({} files", self.dir.display(), self.files.len());
        if self.options.looped {
            s.push_str(", looping");
        }
        if let Some(rate) = self.options.rate_hz {
            s.push_str(&format!(", {rate} Hz"));
        }
        s.push(')');
        s
    }
}

pub fn is_image_name(name: &str) -> bool {
    if name.starts_with('.') {
        return false;
    }
    let Some((_, ext)) = name.rsplit_once('.') else {
        return false;
    };
    ["jpg", "jpeg", "png"]
        .iter()
        .any(|e| ext.eq_ignore_ascii_case(e))
}

fn list_images(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name_ok = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(is_image_name);
        // `is_file` follows symlinks, so linked images are replayed too.
        if name_ok && path.is_file() {
            files.push(path);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SimClock;

    fn write_image(dir: &Path, name: &str, value: u8) {
        let img = image::RgbImage::from_pixel(8, 8, image::Rgb([value, value, value]));
        // Save through an explicit format: the extension may be upper case.
        let format = if name.to_lowercase().ends_with(".png") {
            image::ImageFormat::Png
        } else {
            image::ImageFormat::Jpeg
        };
        img.save_with_format(dir.join(name), format).unwrap();
    }

    fn names(source: &mut ImageDirSource) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            match source.next_frame() {
                Ok(Some(f)) => out.push(file_name(&f.origin)),
                Ok(None) => return out,
                Err(SourceError::BadFrame { origin, .. }) => {
                    out.push(format!("BAD {}", file_name(&origin)))
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn file_name(origin: &str) -> String {
        Path::new(origin).file_name().unwrap().to_string_lossy().into()
    }

    fn open(dir: &Path, options: ReplayOptions) -> ImageDirSource {
        ImageDirSource::open(dir, options, Arc::new(SimClock::new())).unwrap()
    }

    #[test]
    fn replays_images_sorted_by_name_any_case_skipping_others() {
        let dir = tempfile::tempdir().unwrap();
        write_image(dir.path(), "b.JPG", 10);
        write_image(dir.path(), "a.png", 20);
        write_image(dir.path(), "c.jpeg", 30);
        write_image(dir.path(), ".hidden.jpg", 30);
        std::fs::write(dir.path().join("notes.txt"), "not an image").unwrap();
        std::fs::create_dir(dir.path().join("sub.jpg")).unwrap();
        let mut source = open(dir.path(), ReplayOptions::default());
        assert_eq!(names(&mut source), ["a.png", "b.JPG", "c.jpeg"]);
        // exhausted stays exhausted
        assert!(source.next_frame().unwrap().is_none());
    }

    #[test]
    fn a_corrupt_file_is_reported_once_and_the_next_file_follows() {
        let dir = tempfile::tempdir().unwrap();
        write_image(dir.path(), "1.jpg", 10);
        std::fs::write(dir.path().join("2.jpg"), b"definitely not a jpeg").unwrap();
        write_image(dir.path(), "3.jpg", 30);
        let mut source = open(dir.path(), ReplayOptions::default());
        assert_eq!(names(&mut source), ["1.jpg", "BAD 2.jpg", "3.jpg"]);
    }

    #[test]
    fn loop_starts_again_and_stops_when_nothing_decodes() {
        let dir = tempfile::tempdir().unwrap();
        write_image(dir.path(), "a.jpg", 10);
        write_image(dir.path(), "b.jpg", 10);
        let mut source = open(dir.path(), ReplayOptions { looped: true, rate_hz: None });
        let got: Vec<String> = (0..5)
            .map(|_| file_name(&source.next_frame().unwrap().unwrap().origin))
            .collect();
        assert_eq!(got, ["a.jpg", "b.jpg", "a.jpg", "b.jpg", "a.jpg"]);

        let bad = tempfile::tempdir().unwrap();
        std::fs::write(bad.path().join("x.jpg"), b"junk").unwrap();
        let mut source = open(bad.path(), ReplayOptions { looped: true, rate_hz: None });
        assert_eq!(names(&mut source), ["BAD x.jpg"]);
    }

    #[test]
    fn rate_paces_frames_on_the_clock() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a.jpg", "b.jpg", "c.jpg"] {
            write_image(dir.path(), name, 10);
        }
        let clock = Arc::new(SimClock::new());
        let options = ReplayOptions { looped: false, rate_hz: Some(4.0) };
        let mut source = ImageDirSource::open(dir.path(), options, clock.clone()).unwrap();
        let start = clock.now();
        let mut times = Vec::new();
        while let Some(frame) = source.next_frame().unwrap() {
            times.push((clock.now() - start, frame.captured_at));
        }
        let offsets: Vec<u128> = times.iter().map(|(d, _)| d.as_millis()).collect();
        assert_eq!(offsets, [0, 250, 500]);
        // captured_at comes from the same clock
        assert_eq!(times[1].1.duration_since(times[0].1).unwrap().as_millis(), 250);
    }

    #[test]
    fn open_rejects_missing_empty_folders_and_bad_rates() {
        let dir = tempfile::tempdir().unwrap();
        let clock: Arc<dyn Clock> = Arc::new(SimClock::new());
        let err = ImageDirSource::open(dir.path(), ReplayOptions::default(), clock.clone())
            .err()
            .unwrap();
        assert!(err.to_string().contains("no .jpg"), "{err}");
        let err = ImageDirSource::open(
            &dir.path().join("missing"),
            ReplayOptions::default(),
            clock.clone(),
        )
        .err()
        .unwrap();
        assert!(matches!(err, SourceError::Open { .. }), "{err}");
        write_image(dir.path(), "a.jpg", 1);
        let options = ReplayOptions { looped: false, rate_hz: Some(0.0) };
        let err = ImageDirSource::open(dir.path(), options, clock).err().unwrap();
        assert!(err.to_string().contains("rate_hz"), "{err}");
    }
}
