//! The TrashNet data pipeline: split files -> samples -> an in-memory cache of
//! decoded images -> batches of transformed images, prepared on worker threads.
//!
//! Reproducibility rule: a batch's content depends only on (seed, epoch, sample
//! index), never on thread timing, so a resumed run repeats an uninterrupted one.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use image::imageops::{self, FilterType};
use image::RgbImage;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;

use crate::preprocess::{eval_transform, shorter_side_to, train_transform_scaled, DEFAULT_MIN_CROP_SCALE};

/// TrashNet's classes in the order of its 1-based split-file indices.
pub const TRASHNET_CLASSES: [&str; 6] = ["glass", "paper", "cardboard", "plastic", "metal", "trash"];

/// Where people can download TrashNet (`data/dataset-resized.zip` there).
pub const TRASHNET_URL: &str = "https://github.com/garythung/trashnet";

/// Folder under the TrashNet root that holds `<class>/<file>.jpg`.
const IMAGES_DIR: &str = "dataset-resized";
/// Folder under the TrashNet root that holds `train.txt`, `val.txt`, `test.txt`.
const SPLITS_DIR: &str = "splits";
/// File extensions [`load_folder`] treats as images.
const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];
/// Finished batches allowed to wait for the consumer; one more is in preparation.
const BATCHES_AHEAD: usize = 2;

/// One of TrashNet's fixed splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    /// The split's name, which is also its file stem under `splits/`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Split {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Split::ALL.into_iter().find(|split| split.name() == s).ok_or_else(|| DataError::UnknownSplit(s.to_string()))
    }
}

/// One labelled image file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub path: PathBuf,
    /// 0-based class index.
    pub label: usize,
}

/// Why a data set could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(
        "TrashNet not found at {}: expected a folder with dataset-resized/<class>/*.jpg and \
         splits/{{train,val,test}}.txt at ../shared/trashnet or wherever --data points; \
         download data/dataset-resized.zip from {TRASHNET_URL} and add the split files",
        root.display()
    )]
    RootMissing { root: PathBuf },
    #[error("split file {} not found (a TrashNet folder has splits/train.txt, val.txt and test.txt)", path.display())]
    SplitMissing { path: PathBuf },
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line_no}: expected `<file name> <class index>`, got {line:?}", path.display())]
    BadLine { path: PathBuf, line_no: usize, line: String },
    #[error(
        "{}:{line_no}: class index {index} is outside 1..={classes} in {line:?}",
        path.display()
    )]
    ClassOutOfRange { path: PathBuf, line_no: usize, line: String, index: usize, classes: usize },
    #[error("unknown split {0:?}: expected train, val or test")]
    UnknownSplit(String),
    #[error("image folder {} not found", dir.display())]
    FolderMissing { dir: PathBuf },
    #[error("no images (.jpg, .jpeg, .png) in {} under the class folders {classes:?}", dir.display())]
    NoImages { dir: PathBuf, classes: Vec<String> },
}

/// Lists one TrashNet split from `root/splits/<split>.txt` (lines
/// `<file name> <1-based class index>`); images live at
/// `root/dataset-resized/<class name>/<file name>`. Files are not opened here:
/// [`ImageCache::build`] reports unreadable ones.
pub fn load_split(root: &Path, split: Split) -> Result<Vec<Sample>, DataError> {
    if !root.join(IMAGES_DIR).is_dir() {
        return Err(DataError::RootMissing { root: root.to_path_buf() });
    }
    let path = root.join(SPLITS_DIR).join(format!("{split}.txt"));
    if !path.is_file() {
        return Err(DataError::SplitMissing { path });
    }
    let text = std::fs::read_to_string(&path).map_err(|source| DataError::Io { path: path.clone(), source })?;
    parse_split(&text, &path, &root.join(IMAGES_DIR))
}

/// Parses split-file text; `split_path` is only used in error messages.
fn parse_split(text: &str, split_path: &Path, images_dir: &Path) -> Result<Vec<Sample>, DataError> {
    let mut samples = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let (name, index) = parse_line(line, split_path, i + 1)?;
        let class = TRASHNET_CLASSES[index - 1];
        samples.push(Sample { path: images_dir.join(class).join(name), label: index - 1 });
    }
    Ok(samples)
}

/// One non-empty, trimmed line -> (file name, 1-based class index). The index is the
/// last whitespace-separated field, so file names with spaces still parse.
fn parse_line<'a>(line: &'a str, split_path: &Path, line_no: usize) -> Result<(&'a str, usize), DataError> {
    let bad = || DataError::BadLine { path: split_path.to_path_buf(), line_no, line: line.to_string() };
    let (name, index) = line.rsplit_once(char::is_whitespace).ok_or_else(bad)?;
    let name = name.trim();
    let index: usize = index.parse().map_err(|_| bad())?;
    if name.is_empty() {
        return Err(bad());
    }
    if !(1..=TRASHNET_CLASSES.len()).contains(&index) {
        return Err(DataError::ClassOutOfRange {
            path: split_path.to_path_buf(),
            line_no,
            line: line.to_string(),
            index,
            classes: TRASHNET_CLASSES.len(),
        });
    }
    Ok((name, index))
}

/// Lists a plain `dir/<class>/*.{jpg,jpeg,png}` layout; `label` is the class's
/// position in `classes`. A missing class folder or an unknown extra folder is
/// logged, not an error, because user-captured data often lacks some classes.
/// Paths are sorted so the listing (and so the training order) is reproducible.
pub fn load_folder(dir: &Path, classes: &[String]) -> Result<Vec<Sample>, DataError> {
    if !dir.is_dir() {
        return Err(DataError::FolderMissing { dir: dir.to_path_buf() });
    }
    warn_about_unknown_folders(dir, classes)?;
    let mut samples = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let class_dir = dir.join(class);
        if !class_dir.is_dir() {
            log::warn!("no folder {} for class {class:?}: it gets no images", class_dir.display());
            continue;
        }
        let mut paths = image_files(&class_dir)?;
        paths.sort();
        samples.extend(paths.into_iter().map(|path| Sample { path, label }));
    }
    if samples.is_empty() {
        return Err(DataError::NoImages { dir: dir.to_path_buf(), classes: classes.to_vec() });
    }
    Ok(samples)
}

fn read_dir(dir: &Path) -> Result<Vec<std::fs::DirEntry>, DataError> {
    let io = |source| DataError::Io { path: dir.to_path_buf(), source };
    std::fs::read_dir(dir).map_err(io)?.collect::<Result<Vec<_>, _>>().map_err(io)
}

/// Files in `dir` with an image extension (case-insensitive), unsorted.
fn image_files(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let is_image = |path: &Path| {
        path.extension()
            .and_then(|ext| ext.to_str())
            .is_some_and(|ext| IMAGE_EXTENSIONS.iter().any(|known| ext.eq_ignore_ascii_case(known)))
    };
    Ok(read_dir(dir)?.into_iter().map(|entry| entry.path()).filter(|path| path.is_file() && is_image(path)).collect())
}

/// A folder that matches no class is probably a typo, so say so instead of
/// silently ignoring its images.
fn warn_about_unknown_folders(dir: &Path, classes: &[String]) -> Result<(), DataError> {
    for entry in read_dir(dir)? {
        let name = entry.file_name().to_string_lossy().into_owned();
        // `to-label`: frames marked wrong by the bin's button, not yet given a class.
        if entry.path().is_dir() && !classes.contains(&name) && name != crate::calibration::button::TO_LABEL {
            log::warn!("ignoring folder {}: {name:?} is not one of {classes:?}", entry.path().display());
        }
    }
    Ok(())
}

/// Every sample decoded once and kept in memory, downscaled so that its shorter
/// side is at most `cache_side` pixels (transforms then only crop and resize small
/// images each epoch instead of decoding JPEGs).
pub struct ImageCache {
    // Shared with the batch producer thread, which outlives a borrow of the cache.
    images: Arc<Vec<RgbImage>>,
    labels: Arc<Vec<u32>>,
    samples: Vec<Sample>,
    cache_side: u32,
}

impl ImageCache {
    /// Decodes `samples` in parallel. Images that cannot be read or decoded are
    /// left out, logged with `log::warn!`, and returned as `(path, error)`; the
    /// cache's indices count the kept samples only.
    pub fn build(samples: &[Sample], cache_side: u32) -> (ImageCache, Vec<(PathBuf, String)>) {
        assert!(cache_side > 0, "ImageCache::build: cache_side must be positive");
        let start = Instant::now();
        let bar = progress_bar(samples.len());
        let decoded: Vec<Result<RgbImage, String>> = samples
            .par_iter()
            .map(|sample| {
                let result = decode_scaled(&sample.path, cache_side);
                bar.inc(1);
                result
            })
            .collect();
        bar.finish_and_clear();

        let (mut images, mut labels, mut kept, mut skipped) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (sample, result) in samples.iter().zip(decoded) {
            match result {
                Ok(image) => {
                    images.push(image);
                    labels.push(sample.label as u32);
                    kept.push(sample.clone());
                }
                Err(error) => {
                    log::warn!("skipping {}: {error}", sample.path.display());
                    skipped.push((sample.path.clone(), error));
                }
            }
        }
        let cache = ImageCache { images: Arc::new(images), labels: Arc::new(labels), samples: kept, cache_side };
        log::info!(
            "cached {} images ({:.0} MiB, shorter side <= {cache_side}) in {:.1?}, skipped {}",
            cache.len(),
            cache.bytes() as f64 / (1024.0 * 1024.0),
            start.elapsed(),
            skipped.len()
        );
        (cache, skipped)
    }

    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// The kept samples; `samples()[i]` is cache index `i` (as in [`Batch::indices`]).
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    pub fn image(&self, index: usize) -> &RgbImage {
        &self.images[index]
    }

    pub fn label(&self, index: usize) -> usize {
        self.samples[index].label
    }

    pub fn cache_side(&self) -> u32 {
        self.cache_side
    }

    /// Memory held by the decoded pixels.
    pub fn bytes(&self) -> usize {
        self.images.iter().map(|img| img.as_raw().len()).sum()
    }
}

/// A progress bar on stderr; indicatif draws nothing when stderr is not a terminal.
fn progress_bar(len: usize) -> indicatif::ProgressBar {
    let style = indicatif::ProgressStyle::with_template("decoding images {bar:40} {pos}/{len} [{elapsed}<{eta}]")
        .expect("progress template is valid");
    indicatif::ProgressBar::new(len as u64).with_style(style)
}

/// Reads, decodes and downscales one image; the error is a message for the user.
fn decode_scaled(path: &Path, cache_side: u32) -> Result<RgbImage, String> {
    Ok(downscale(crate::preprocess::decode_file(path)?, cache_side))
}

/// Shrinks `image` so its shorter side is `side` (never enlarges it). Uses the
/// same size rule as `eval_transform`, so with `side == eval_resize_side(size)`
/// evaluation only crops the cached image and matches the uncached result exactly.
fn downscale(image: RgbImage, side: u32) -> RgbImage {
    let (w, h) = image.dimensions();
    if w.min(h) <= side {
        return image;
    }
    let (nw, nh) = shorter_side_to(w, h, side);
    imageops::resize(&image, nw, nh, FilterType::Triangle)
}

/// A batch of transformed images, ready to become tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `N * 3 * size * size` values: N images, each CHW.
    pub images: Vec<f32>,
    /// 0-based class of each image.
    pub labels: Vec<u32>,
    /// Cache index of each image (see [`ImageCache::samples`]).
    pub indices: Vec<usize>,
    pub size: u32,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The images as an `(N, 3, size, size)` f32 tensor.
    pub fn images_tensor(&self, device: &candle_core::Device) -> candle_core::Result<candle_core::Tensor> {
        let s = self.size as usize;
        candle_core::Tensor::from_slice(&self.images, (self.len(), 3, s, s), device)
    }

    /// The labels as an `(N,)` u32 tensor.
    pub fn labels_tensor(&self, device: &candle_core::Device) -> candle_core::Result<candle_core::Tensor> {
        candle_core::Tensor::from_slice(&self.labels, self.len(), device)
    }
}

/// Everything the producer thread needs to build the batches of one epoch.
#[derive(Debug, Clone, Copy)]
struct Plan {
    size: u32,
    /// `Some(min area fraction)` for random crops, `None` for the eval transform.
    augment: Option<f64>,
    seed: u64,
    epoch: u64,
}

/// The batches of one epoch, in order. A background thread prepares them
/// (transforming each batch's images in parallel with rayon) up to
/// [`BATCHES_AHEAD`] batches ahead of the consumer. Dropping the iterator early
/// stops that thread.
pub struct EpochBatches {
    receiver: Option<Receiver<Batch>>,
    producer: Option<JoinHandle<()>>,
    remaining: usize,
}

/// The batches of one epoch over `cache`: shuffled (if `shuffle`) and augmented
/// with [`crate::preprocess::train_transform`] (if `augment`, else [`eval_transform`]). Order and
/// augmentation depend only on `(seed, epoch, sample index)`. The last batch may
/// be smaller than `batch_size`.
pub fn epoch_batches(
    cache: &ImageCache,
    batch_size: usize,
    size: u32,
    augment: bool,
    shuffle: bool,
    seed: u64,
    epoch: usize,
) -> EpochBatches {
    epoch_batches_from(cache, batch_size, size, augment, shuffle, seed, epoch, 0)
}

/// [`epoch_batches`] without its first `first_batch` batches, which are not
/// computed at all: resuming in the middle of an epoch yields exactly the
/// batches an uninterrupted run would have seen next.
#[allow(clippy::too_many_arguments)] // mirrors epoch_batches plus one
pub fn epoch_batches_from(
    cache: &ImageCache,
    batch_size: usize,
    size: u32,
    augment: bool,
    shuffle: bool,
    seed: u64,
    epoch: usize,
    first_batch: usize,
) -> EpochBatches {
    let augment = augment.then_some(DEFAULT_MIN_CROP_SCALE);
    batches_for(cache, batch_size, shuffle, first_batch, Plan { size, augment, seed, epoch: epoch as u64 })
}

/// A training epoch: shuffled, with random crops covering at least `min_crop_scale`
/// of the image area (torchvision's default is 0.08).
pub fn training_batches(
    cache: &ImageCache,
    batch_size: usize,
    size: u32,
    min_crop_scale: f64,
    seed: u64,
    epoch: usize,
) -> EpochBatches {
    let plan = Plan { size, augment: Some(min_crop_scale), seed, epoch: epoch as u64 };
    batches_for(cache, batch_size, true, 0, plan)
}

fn batches_for(cache: &ImageCache, batch_size: usize, shuffle: bool, first_batch: usize, plan: Plan) -> EpochBatches {
    assert!(batch_size > 0, "epoch_batches: batch_size must be positive");
    assert!(plan.size > 0, "epoch_batches: size must be positive");
    let seed = plan.seed;
    let order = epoch_order(cache.len(), shuffle, seed, plan.epoch);
    let chunks: Vec<Vec<usize>> = order.chunks(batch_size).skip(first_batch).map(<[usize]>::to_vec).collect();
    let remaining = chunks.len();
    let (sender, receiver) = sync_channel(BATCHES_AHEAD);
    let images = Arc::clone(&cache.images);
    let labels = Arc::clone(&cache.labels);
    let producer = std::thread::Builder::new()
        .name("batch-producer".into())
        .spawn(move || produce(&images, &labels, chunks, plan, sender))
        .expect("cannot start the batch producer thread");
    EpochBatches { receiver: Some(receiver), producer: Some(producer), remaining }
}

/// Sample indices in the order an epoch visits them.
fn epoch_order(len: usize, shuffle: bool, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        order.shuffle(&mut StdRng::seed_from_u64(derive_seed(&[seed, epoch, STREAM_ORDER])));
    }
    order
}

/// Producer thread body: builds batches in order until done or the consumer is gone.
fn produce(images: &[RgbImage], labels: &[u32], chunks: Vec<Vec<usize>>, plan: Plan, sender: SyncSender<Batch>) {
    for indices in chunks {
        let batch = make_batch(images, labels, indices, plan);
        if sender.send(batch).is_err() {
            return; // the consumer dropped the iterator
        }
    }
}

/// Transforms the images of one batch in parallel into one flat buffer.
fn make_batch(images: &[RgbImage], labels: &[u32], indices: Vec<usize>, plan: Plan) -> Batch {
    let per_image = 3 * (plan.size as usize) * (plan.size as usize);
    let mut data = vec![0.0f32; indices.len() * per_image];
    data.par_chunks_mut(per_image).zip(indices.par_iter()).for_each(|(out, &index)| {
        out.copy_from_slice(&transform_one(&images[index], index, plan));
    });
    Batch { images: data, labels: indices.iter().map(|&i| labels[i]).collect(), indices, size: plan.size }
}

/// One image's transform; with augmentation its RNG is seeded from
/// (seed, epoch, index) alone, so the result does not depend on which thread runs it.
fn transform_one(image: &RgbImage, index: usize, plan: Plan) -> Vec<f32> {
    if let Some(min_scale) = plan.augment {
        let mut rng = StdRng::seed_from_u64(derive_seed(&[plan.seed, plan.epoch, STREAM_AUGMENT, index as u64]));
        train_transform_scaled(image, plan.size, min_scale, &mut rng)
    } else {
        eval_transform(image, plan.size)
    }
}

/// Separate the shuffling and augmentation random streams.
const STREAM_ORDER: u64 = 0x006f_7264_6572; // "order"
const STREAM_AUGMENT: u64 = 0x6175_676d; // "augm"

/// Mixes words into one 64-bit seed with SplitMix64's finaliser. Hand-written
/// (not `std::hash`) because std's hasher output may change between Rust releases.
fn derive_seed(words: &[u64]) -> u64 {
    words.iter().fold(0x9e37_79b9_7f4a_7c15, |h, &w| splitmix64(h ^ splitmix64(w)))
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl EpochBatches {
    /// Waits for the producer thread; re-raises its panic so that a failing
    /// transform is not mistaken for the end of the epoch.
    fn join_producer(&mut self) {
        if let Some(handle) = self.producer.take() {
            if let Err(panic) = handle.join() {
                std::panic::resume_unwind(panic);
            }
        }
    }
}

impl Iterator for EpochBatches {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let received = self.receiver.as_ref()?.recv();
        match received {
            Ok(batch) => {
                self.remaining = self.remaining.saturating_sub(1);
                Some(batch)
            }
            Err(_) => {
                // The sender is gone: the epoch is complete or the producer panicked.
                self.receiver = None;
                self.remaining = 0;
                self.join_producer();
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for EpochBatches {}

impl Drop for EpochBatches {
    fn drop(&mut self) {
        // Closing the channel makes a blocked `send` fail, so the producer ends.
        self.receiver = None;
        if let Some(handle) = self.producer.take() {
            if handle.join().is_err() && !std::thread::panicking() {
                log::error!("the batch producer thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// A small image whose pixels depend on `seed`, so images differ from each other.
    fn pattern(width: u32, height: u32, seed: u8) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            Rgb([(x as u8).wrapping_mul(7).wrapping_add(seed), (y as u8).wrapping_mul(5), seed.wrapping_mul(31)])
        })
    }

    /// Writes `count` JPEGs per class under `dir/<class>/` and returns their samples.
    fn write_dataset(dir: &Path, classes: &[&str], count: usize) -> Vec<Sample> {
        let mut samples = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            std::fs::create_dir_all(dir.join(class)).unwrap();
            for i in 0..count {
                let path = dir.join(class).join(format!("{class}{i}.jpg"));
                pattern(40 + i as u32, 30, (label * 10 + i) as u8).save(&path).unwrap();
                samples.push(Sample { path, label });
            }
        }
        samples
    }

    fn test_cache(n_per_class: usize) -> (tempfile::TempDir, ImageCache) {
        let dir = tempfile::tempdir().unwrap();
        let samples = write_dataset(dir.path(), &["a", "b", "c"], n_per_class);
        let (cache, skipped) = ImageCache::build(&samples, 24);
        assert!(skipped.is_empty(), "{skipped:?}");
        (dir, cache)
    }

    fn collect(
        cache: &ImageCache,
        batch_size: usize,
        augment: bool,
        shuffle: bool,
        seed: u64,
        epoch: usize,
    ) -> Vec<Batch> {
        epoch_batches(cache, batch_size, 16, augment, shuffle, seed, epoch).collect()
    }

    #[test]
    fn split_names_round_trip() {
        for split in Split::ALL {
            assert_eq!(split.to_string().parse::<Split>().unwrap(), split);
        }
        assert_eq!("val".parse::<Split>().unwrap(), Split::Val);
        let err = "validation".parse::<Split>().unwrap_err();
        assert!(err.to_string().contains("train, val or test"), "{err}");
    }

    #[test]
    fn parses_split_lines() {
        let text = "paper70.jpg 2\n\n  glass1.jpg\t1  \nmy photo.jpg 6\n";
        let samples = parse_split(text, Path::new("s.txt"), Path::new("/d")).unwrap();
        assert_eq!(
            samples,
            vec![
                Sample { path: PathBuf::from("/d/paper/paper70.jpg"), label: 1 },
                Sample { path: PathBuf::from("/d/glass/glass1.jpg"), label: 0 },
                Sample { path: PathBuf::from("/d/trash/my photo.jpg"), label: 5 },
            ]
        );
    }

    #[test]
    fn split_errors_name_the_line() {
        let parse = |text: &str| parse_split(text, Path::new("splits/train.txt"), Path::new("/d")).unwrap_err();

        let err = parse("a.jpg 1\nb.jpg\n");
        assert!(matches!(&err, DataError::BadLine { line_no: 2, line, .. } if line == "b.jpg"), "{err:?}");
        assert_eq!(err.to_string(), "splits/train.txt:2: expected `<file name> <class index>`, got \"b.jpg\"");

        let err = parse("a.jpg 1\n\nb.jpg two\n");
        assert!(matches!(err, DataError::BadLine { line_no: 3, .. }), "{err:?}");

        let err = parse(" 3\n");
        assert!(matches!(err, DataError::BadLine { line_no: 1, .. }), "{err:?}");

        for (text, index) in [("a.jpg 0", 0), ("a.jpg 7", 7)] {
            let err = parse(text);
            assert!(matches!(err, DataError::ClassOutOfRange { line_no: 1, index: i, .. } if i == index), "{err:?}");
            assert!(err.to_string().contains(&format!("class index {index} is outside 1..=6")), "{err}");
        }
    }

    #[test]
    fn missing_root_and_split_file_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_split(&dir.path().join("nowhere"), Split::Train).unwrap_err();
        assert!(matches!(err, DataError::RootMissing { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("../shared/trashnet") && message.contains("--data"), "{message}");
        assert!(message.contains(TRASHNET_URL), "{message}");

        std::fs::create_dir(dir.path().join(IMAGES_DIR)).unwrap();
        let err = load_split(dir.path(), Split::Val).unwrap_err();
        assert!(matches!(&err, DataError::SplitMissing { path } if path.ends_with("splits/val.txt")), "{err:?}");
    }

    #[test]
    fn load_split_reads_a_split_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(IMAGES_DIR)).unwrap();
        std::fs::create_dir_all(dir.path().join(SPLITS_DIR)).unwrap();
        std::fs::write(dir.path().join("splits/test.txt"), "metal3.jpg 5\ncardboard9.jpg 3\n").unwrap();
        let samples = load_split(dir.path(), Split::Test).unwrap();
        let images = dir.path().join(IMAGES_DIR);
        assert_eq!(samples[0], Sample { path: images.join("metal/metal3.jpg"), label: 4 });
        assert_eq!(samples[1], Sample { path: images.join("cardboard/cardboard9.jpg"), label: 2 });
    }

    #[test]
    fn load_folder_lists_class_folders() {
        let dir = tempfile::tempdir().unwrap();
        write_dataset(dir.path(), &["b", "a", "stray"], 2);
        std::fs::write(dir.path().join("a/notes.txt"), "not an image").unwrap();
        std::fs::write(dir.path().join("a/upper.JPG"), "never opened here").unwrap();
        let samples = load_folder(dir.path(), &strings(&["a", "b", "missing"])).unwrap();
        let names: Vec<(String, usize)> =
            samples.iter().map(|s| (s.path.strip_prefix(dir.path()).unwrap().display().to_string(), s.label)).collect();
        let expected = [("a/a0.jpg", 0), ("a/a1.jpg", 0), ("a/upper.JPG", 0), ("b/b0.jpg", 1), ("b/b1.jpg", 1)];
        assert_eq!(names, expected.map(|(p, l)| (p.to_string(), l)));

        let err = load_folder(dir.path(), &strings(&["missing"])).unwrap_err();
        assert!(matches!(err, DataError::NoImages { .. }), "{err:?}");
        let err = load_folder(&dir.path().join("gone"), &strings(&["a"])).unwrap_err();
        assert!(matches!(err, DataError::FolderMissing { .. }), "{err:?}");
    }

    #[test]
    fn cache_skips_and_reports_unreadable_images() {
        let dir = tempfile::tempdir().unwrap();
        let mut samples = write_dataset(dir.path(), &["a", "b"], 2);
        let corrupt = dir.path().join("a/corrupt.jpg");
        std::fs::write(&corrupt, b"\xff\xd8\xff\xe0 definitely not a jpeg").unwrap();
        let missing = dir.path().join("b/missing.jpg");
        samples.insert(1, Sample { path: corrupt.clone(), label: 0 });
        samples.push(Sample { path: missing.clone(), label: 1 });

        let (cache, skipped) = ImageCache::build(&samples, 100);
        assert_eq!(cache.len(), 4);
        let skipped_paths: Vec<&PathBuf> = skipped.iter().map(|(p, _)| p).collect();
        assert_eq!(skipped_paths, [&corrupt, &missing]);
        assert!(skipped.iter().all(|(_, msg)| !msg.is_empty()));
        // Indices count kept samples only, and labels stay with their images.
        assert_eq!(cache.samples().iter().map(|s| s.label).collect::<Vec<_>>(), [0, 0, 1, 1]);
        assert!(!cache.samples().iter().any(|s| s.path == corrupt));
    }

    #[test]
    fn cache_downscales_but_never_upscales() {
        let dir = tempfile::tempdir().unwrap();
        let paths = [("wide.png", 64, 48), ("tall.png", 30, 90), ("small.png", 10, 8)];
        let samples: Vec<Sample> = paths
            .iter()
            .map(|&(name, w, h)| {
                let path = dir.path().join(name);
                pattern(w, h, 1).save(&path).unwrap();
                Sample { path, label: 0 }
            })
            .collect();
        let (cache, skipped) = ImageCache::build(&samples, 16);
        assert!(skipped.is_empty());
        assert_eq!(cache.image(0).dimensions(), (21, 16)); // 64 * 16/48 = 21.3, truncated
        assert_eq!(cache.image(1).dimensions(), (16, 48));
        assert_eq!(cache.image(2).dimensions(), (10, 8));
        assert_eq!(cache.bytes(), 3 * (21 * 16 + 16 * 48 + 10 * 8));
    }

    #[test]
    fn caching_at_the_eval_resize_side_does_not_change_eval_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("photo.png");
        let original = pattern(64, 48, 3);
        original.save(&path).unwrap();
        let size = 14;
        let side = crate::preprocess::eval_resize_side(size);
        let (cache, _) = ImageCache::build(&[Sample { path, label: 0 }], side);
        assert_eq!(cache.image(0).height(), side);
        assert_eq!(eval_transform(cache.image(0), size), eval_transform(&original, size));
    }

    #[test]
    fn batches_cover_the_epoch_and_keep_the_last_partial_batch() {
        let (_dir, cache) = test_cache(3); // 9 images
        let batches = epoch_batches(&cache, 4, 16, true, true, 5, 0);
        assert_eq!(batches.len(), 3);
        let batches: Vec<Batch> = batches.collect();
        assert_eq!(batches.iter().map(Batch::len).collect::<Vec<_>>(), [4, 4, 1]);
        let mut seen: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
        seen.sort();
        assert_eq!(seen, (0..9).collect::<Vec<_>>());
        for batch in &batches {
            assert_eq!(batch.images.len(), batch.len() * 3 * 16 * 16);
            assert_eq!(batch.size, 16);
            for (&index, &label) in batch.indices.iter().zip(&batch.labels) {
                assert_eq!(label as usize, cache.label(index));
            }
        }
        let tensor = batches[2].images_tensor(&candle_core::Device::Cpu).unwrap();
        assert_eq!(tensor.dims(), &[1, 3, 16, 16]);
        assert_eq!(batches[2].labels_tensor(&candle_core::Device::Cpu).unwrap().dims(), &[1]);
    }

    #[test]
    fn eval_batches_are_in_order_and_match_eval_transform() {
        let (_dir, cache) = test_cache(2);
        let batches = collect(&cache, 4, false, false, 0, 0);
        let order: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
        assert_eq!(order, (0..6).collect::<Vec<_>>());
        let per_image = 3 * 16 * 16;
        assert_eq!(batches[1].images[per_image..2 * per_image], eval_transform(cache.image(5), 16)[..]);
        // No randomness without augmentation or shuffling: the seed does not matter.
        assert_eq!(batches, collect(&cache, 4, false, false, 99, 3));
    }

    #[test]
    fn batches_depend_only_on_seed_epoch_and_index() {
        let (_dir, cache) = test_cache(4); // 12 images
        let run = |seed, epoch| collect(&cache, 5, true, true, seed, epoch);
        assert_eq!(run(7, 2), run(7, 2));
        let order = |batches: &[Batch]| batches.iter().flat_map(|b| b.indices.clone()).collect::<Vec<_>>();
        assert_ne!(order(&run(7, 2)), order(&run(7, 3)));
        assert_ne!(order(&run(7, 2)), order(&run(8, 2)));

        // The batch size only regroups the same images: each image's augmentation
        // depends on its index, not on where it lands.
        let per_image = 3 * 16 * 16;
        let by_index = |batches: Vec<Batch>| {
            let mut images: Vec<(usize, Vec<f32>)> = batches
                .iter()
                .flat_map(|b| {
                    b.indices
                        .iter()
                        .enumerate()
                        .map(|(k, &i)| (i, b.images[k * per_image..(k + 1) * per_image].to_vec()))
                })
                .collect();
            images.sort_by_key(|(i, _)| *i);
            images
        };
        assert_eq!(by_index(collect(&cache, 5, true, true, 7, 2)), by_index(collect(&cache, 3, true, true, 7, 2)));
        assert_ne!(by_index(collect(&cache, 5, true, true, 7, 2)), by_index(collect(&cache, 5, true, true, 7, 1)));
    }

    #[test]
    fn resuming_mid_epoch_repeats_the_remaining_batches() {
        let (_dir, cache) = test_cache(4);
        let full = collect(&cache, 5, true, true, 1, 4);
        let resumed: Vec<Batch> = epoch_batches_from(&cache, 5, 16, true, true, 1, 4, 1).collect();
        assert_eq!(resumed.len(), 2);
        assert_eq!(resumed[..], full[1..]);
    }

    #[test]
    fn dropping_the_iterator_early_stops_the_producer() {
        let (_dir, cache) = test_cache(4);
        let mut batches = epoch_batches(&cache, 1, 16, true, true, 1, 0);
        assert!(batches.next().is_some());
        drop(batches); // must not hang with the producer blocked on a full channel
        let empty = ImageCache::build(&[], 16).0;
        assert_eq!(epoch_batches(&empty, 4, 16, true, true, 0, 0).count(), 0);
    }

    /// The real TrashNet split, when the shared folder is present.
    #[test]
    fn trashnet_splits_have_the_published_sizes() {
        let Some(root) = trashnet_root() else { return };
        let mut all = Vec::new();
        for (split, expected) in [(Split::Train, 1768), (Split::Val, 328), (Split::Test, 431)] {
            let samples = load_split(&root, split).unwrap();
            assert_eq!(samples.len(), expected, "{split}");
            let missing: Vec<&Sample> = samples.iter().filter(|s| !s.path.is_file()).collect();
            assert!(missing.is_empty(), "{split}: {} missing files, e.g. {:?}", missing.len(), missing.first());
            all.extend(samples);
        }
        let mut paths: Vec<&PathBuf> = all.iter().map(|s| &s.path).collect();
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), 2527, "splits overlap");
        let mut per_class = [0usize; 6];
        all.iter().for_each(|s| per_class[s.label] += 1);
        assert_eq!(per_class, [501, 594, 403, 482, 410, 137]);
    }

    /// Measures the pipeline on the real train split:
    /// `cargo test --lib training::data -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing run over the real dataset"]
    fn trashnet_pipeline_timings() {
        let Some(root) = trashnet_root() else { return };
        let samples = load_split(&root, Split::Train).unwrap();
        let prepare = |cache: &ImageCache, size, augment| {
            let start = Instant::now();
            let n: usize = epoch_batches(cache, 32, size, augment, augment, 1, 0).map(|b| b.len()).sum();
            assert_eq!(n, cache.len());
            start.elapsed()
        };
        println!("{} rayon threads", rayon::current_num_threads());
        for size in [96, 224] {
            // Training cache at twice the input size, evaluation cache at the eval resize side.
            for (augment, cache_side) in [(true, 2 * size), (false, crate::preprocess::eval_resize_side(size))] {
                let start = Instant::now();
                let (cache, skipped) = ImageCache::build(&samples, cache_side);
                let build = start.elapsed();
                assert!(skipped.is_empty(), "{skipped:?}");
                let epoch = prepare(&cache, size, augment);
                println!(
                    "size {size}, augment {augment}: cache (side {cache_side}, {:.0} MiB) built in {build:.2?}, \
                     epoch of {} images prepared in {epoch:.2?}",
                    cache.bytes() as f64 / 1048576.0,
                    cache.len()
                );
            }
        }
    }

    fn trashnet_root() -> Option<PathBuf> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/trashnet");
        if root.is_dir() {
            Some(root)
        } else {
            println!("skipping: ../shared/trashnet not found");
            None
        }
    }
}
