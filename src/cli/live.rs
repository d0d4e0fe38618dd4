//! `smartbin live`: the camera's view classified frame by frame, the top three
//! classes on one terminal line; `s` saves the current frame as a PNG (named
//! after its predicted class, handy for collecting training photos), `q`, Esc or
//! Ctrl-C quits.
//!
//! The terminal is in raw mode so single key presses arrive without Enter; a
//! guard puts it back however the command ends. Keys are read on their own
//! thread, so `q` also ends a wait for an unplugged camera.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossterm::event::{Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::terminal::{print_raw, RawMode};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::model::Classifier;
use crate::source::convert::PixelFormat;
use crate::source::{open_camera, CameraConfig, CameraSelector, FrameSource, ReconnectingSource, SourceError};

#[derive(Debug, clap::Args)]
pub struct LiveArgs {
    /// Camera: camera:N, camera:/dev/videoN, camera:NAME (the `camera:` may be
    /// left out) [default: the first camera]
    #[arg(long, value_name = "SPEC")]
    pub camera: Option<String>,
    #[arg(long, value_name = "PATH", default_value = crate::model::DEFAULT_MODEL_PATH)]
    pub model: PathBuf,
    /// `cpu`, `cuda` or `cuda:N`
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Config whose [source.camera] gives the format [default:
    /// firmware-config/smartbin.toml when it exists, else built-in defaults]
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Frame width, overriding [source.camera] width
    #[arg(long)]
    pub width: Option<u32>,
    /// Frame height, overriding [source.camera] height
    #[arg(long)]
    pub height: Option<u32>,
    /// Frames per second, overriding [source.camera] fps
    #[arg(long)]
    pub fps: Option<u32>,
    /// Pixel format, overriding [source.camera] format
    #[arg(long, value_enum)]
    pub format: Option<PixelFormat>,
    /// Folder for frames saved with `s`
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub save_dir: PathBuf,
}

pub fn main(args: LiveArgs) -> anyhow::Result<ExitCode> {
    let selector = parse_camera_arg(args.camera.as_deref().unwrap_or(""));
    let camera = camera_config(&args)?;
    std::fs::create_dir_all(&args.save_dir).with_context(|| format!("creating {}", args.save_dir.display()))?;

    // the camera first: it is the likelier thing to be missing
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let stop = Arc::new(AtomicBool::new(false));
    let opener = clock.clone();
    let factory = move || open_camera(&selector, &camera, opener.clone());
    let mut source = ReconnectingSource::open(factory, clock.clone(), stop.clone())?;
    let mut classifier = crate::model::load_classifier(&args.model, &args.device)
        .with_context(|| format!("loading model {}", args.model.display()))?;
    crate::sorter::install_stop_signals(&stop).context("installing SIGINT/SIGTERM handlers")?;

    let _raw = RawMode::enter().context("`smartbin live` needs a terminal (raw mode for key presses)")?;
    let keys = KeyReader::spawn(stop.clone());
    print_raw(&format!("{}\n's' saves the frame, 'q' quits\n", source.describe()));
    let result = show_predictions(&mut source, classifier.as_mut(), &keys, &args.save_dir, clock.as_ref());
    stop.store(true, Ordering::SeqCst);
    keys.join();
    print_raw("\n");
    result?;
    Ok(ExitCode::SUCCESS)
}

/// The loop: frame, classify, one status line; saves when asked.
fn show_predictions(
    source: &mut dyn FrameSource,
    classifier: &mut (dyn Classifier + Send),
    keys: &KeyReader,
    save_dir: &Path,
    clock: &dyn Clock,
) -> anyhow::Result<()> {
    let mut meter = RateMeter::default();
    let mut saved = 0u32;
    while !keys.stop.load(Ordering::SeqCst) {
        let frame = match source.next_frame() {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(SourceError::BadFrame { reason, .. }) => {
                print_raw(&format!("\rskipping a bad frame: {reason}\n"));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let probs = classifier.classify(std::slice::from_ref(&frame.image))?;
        let top3 = super::predict::top_k(classifier.class_names(), &probs[0], 3);
        let fps = meter.tick(clock.now());
        print_raw(&format!("\r{}\x1b[K", prediction_line(&top3, fps, terminal_width())));
        if keys.save.swap(false, Ordering::SeqCst) {
            let class = top3.first().map_or("unknown", |(c, _)| c.as_str());
            let path = next_save_path(save_dir, class, &mut saved);
            frame
                .image
                .save_with_format(&path, image::ImageFormat::Png)
                .with_context(|| format!("saving {}", path.display()))?;
            print_raw(&format!("\rsaved {}\x1b[K\n", path.display()));
        }
    }
    Ok(())
}

/// `camera:0`, `0`, `/dev/video0`, `C920`: the `camera:` prefix is optional here.
pub fn parse_camera_arg(arg: &str) -> CameraSelector {
    CameraSelector::parse(arg.strip_prefix("camera:").unwrap_or(arg))
}

/// `[source.camera]` from the config file, with the command-line values on top.
fn camera_config(args: &LiveArgs) -> anyhow::Result<CameraConfig> {
    let default_path = Path::new(super::run::DEFAULT_CONFIG);
    let mut camera = match &args.config {
        Some(path) => Config::load(path)?.source.camera,
        None if default_path.exists() => Config::load(default_path)?.source.camera,
        None => CameraConfig::default(),
    };
    camera.width = args.width.unwrap_or(camera.width);
    camera.height = args.height.unwrap_or(camera.height);
    camera.fps = args.fps.unwrap_or(camera.fps);
    camera.format = args.format.unwrap_or(camera.format);
    if let Some((key, message)) = camera.problems().into_iter().next() {
        anyhow::bail!("--{key}: {message}");
    }
    Ok(camera)
}

// ---- the status line ------------------------------------------------------------

/// `glass 87.2%   paper 8.1%   plastic 2.3%   | 14.8 fps`, cut to `width` columns.
pub fn prediction_line(top: &[(String, f32)], fps: Option<f64>, width: usize) -> String {
    let classes: Vec<String> = top.iter().map(|(class, p)| format!("{class} {:.1}%", p * 100.0)).collect();
    let mut line = classes.join("   ");
    if let Some(fps) = fps {
        line.push_str(&format!("   | {fps:.1} fps"));
    }
    // a line longer than the terminal wraps, and `\r` then no longer
    // overwrites it
    line.chars().take(width.saturating_sub(1)).collect()
}

fn terminal_width() -> usize {
    crossterm::terminal::size().map_or(80, |(w, _)| usize::from(w))
}

/// Frames per second, smoothed so the number can be read while it changes.
#[derive(Debug, Default)]
pub struct RateMeter {
    last: Option<Instant>,
    fps: Option<f64>,
}

impl RateMeter {
    /// Records a frame at `now`; the rate so far (none for the first frame).
    pub fn tick(&mut self, now: Instant) -> Option<f64> {
        if let Some(last) = self.last.replace(now) {
            let seconds = (now - last).as_secs_f64();
            if seconds > 0.0 {
                let instant = 1.0 / seconds;
                self.fps = Some(self.fps.map_or(instant, |fps| 0.8 * fps + 0.2 * instant));
            }
        }
        self.fps
    }
}

// ---- saving -----------------------------------------------------------------------

/// `smartbin-live-0007-glass.png`.
pub fn frame_file_name(number: u32, class: &str) -> String {
    let class: String = class.chars().map(|c| if c.is_alphanumeric() || c == '-' { c } else { '_' }).collect();
    format!("smartbin-live-{number:04}-{class}.png")
}

/// The next numbered name not already in `dir`; files of earlier sessions are
/// never overwritten.
pub fn next_save_path(dir: &Path, class: &str, counter: &mut u32) -> PathBuf {
    loop {
        *counter += 1;
        let taken = std::fs::read_dir(dir).into_iter().flatten().flatten().any(|entry| {
            entry.file_name().to_str().is_some_and(|name| name.starts_with(&format!("smartbin-live-{:04}-", *counter)))
        });
        if !taken {
            return dir.join(frame_file_name(*counter, class));
        }
    }
}

// ---- keys and the terminal --------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAction {
    Save,
    Quit,
}

/// What a key press asks for. In raw mode Ctrl-C is a key, not a signal.
pub fn key_action(key: &KeyEvent) -> Option<KeyAction> {
    if key.kind == KeyEventKind::Release {
        return None;
    }
    match key.code {
        KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => Some(KeyAction::Quit),
        KeyCode::Char('s' | 'S') => Some(KeyAction::Save),
        KeyCode::Char('q' | 'Q') | KeyCode::Esc => Some(KeyAction::Quit),
        _ => None,
    }
}

/// Reads keys on a thread until `stop`; quitting raises `stop`.
struct KeyReader {
    stop: Arc<AtomicBool>,
    save: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl KeyReader {
    fn spawn(stop: Arc<AtomicBool>) -> KeyReader {
        let save = Arc::new(AtomicBool::new(false));
        let (stop_flag, save_flag) = (stop.clone(), save.clone());
        let thread = std::thread::spawn(move || {
            while !stop_flag.load(Ordering::SeqCst) {
                // poll with a timeout so the thread sees `stop` raised elsewhere
                let key = match crossterm::event::poll(Duration::from_millis(100)) {
                    Ok(true) => crossterm::event::read(),
                    Ok(false) => continue,
                    Err(e) => Err(e),
                };
                match key {
                    Ok(Event::Key(key)) => match key_action(&key) {
                        Some(KeyAction::Save) => save_flag.store(true, Ordering::SeqCst),
                        Some(KeyAction::Quit) => stop_flag.store(true, Ordering::SeqCst),
                        None => {}
                    },
                    Ok(_) => {}
                    Err(e) => {
                        log::error!("reading keys: {e}; quitting");
                        stop_flag.store(true, Ordering::SeqCst);
                    }
                }
            }
        });
        KeyReader { stop, save, thread }
    }

    fn join(self) {
        if self.thread.join().is_err() {
            log::error!("the key reader panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn top(items: &[(&str, f32)]) -> Vec<(String, f32)> {
        items.iter().map(|(c, p)| (c.to_string(), *p)).collect()
    }

    #[test]
    fn prediction_line_shows_top3_and_rate_within_the_width() {
        let t = top(&[("glass", 0.872), ("paper", 0.081), ("plastic", 0.0234)]);
        assert_eq!(prediction_line(&t, Some(14.84), 80), "glass 87.2%   paper 8.1%   plastic 2.3%   | 14.8 fps");
        assert_eq!(prediction_line(&t, None, 80), "glass 87.2%   paper 8.1%   plastic 2.3%");
        // one column is left free so the cursor never wraps
        assert_eq!(prediction_line(&t, None, 12), "glass 87.2%");
        assert_eq!(prediction_line(&[], None, 0), "");
    }

    #[test]
    fn rate_meter_smooths_frame_intervals() {
        let start = Instant::now();
        let mut meter = RateMeter::default();
        assert_eq!(meter.tick(start), None);
        assert_eq!(meter.tick(start + Duration::from_millis(100)), Some(10.0));
        let fps = meter.tick(start + Duration::from_millis(150)).unwrap();
        assert!((fps - 12.0).abs() < 1e-9, "{fps}"); // 0.8 * 10 + 0.2 * 20
                                                     // two frames at the same instant do not divide by zero
        assert_eq!(meter.tick(start + Duration::from_millis(150)), Some(fps));
    }

    #[test]
    fn saved_frames_are_numbered_named_by_class_and_never_overwritten() {
        assert_eq!(frame_file_name(7, "glass"), "smartbin-live-0007-glass.png");
        assert_eq!(frame_file_name(12345, "a/b c"), "smartbin-live-12345-a_b_c.png");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("smartbin-live-0001-paper.png"), b"earlier session").unwrap();
        let mut counter = 0;
        assert_eq!(next_save_path(dir.path(), "glass", &mut counter), dir.path().join("smartbin-live-0002-glass.png"));
        assert_eq!(next_save_path(dir.path(), "metal", &mut counter), dir.path().join("smartbin-live-0003-metal.png"));
    }

    #[test]
    fn keys_map_to_save_and_quit() {
        let key = |code, modifiers| KeyEvent::new(code, modifiers);
        assert_eq!(key_action(&key(KeyCode::Char('s'), KeyModifiers::NONE)), Some(KeyAction::Save));
        assert_eq!(key_action(&key(KeyCode::Char('S'), KeyModifiers::SHIFT)), Some(KeyAction::Save));
        assert_eq!(key_action(&key(KeyCode::Char('q'), KeyModifiers::NONE)), Some(KeyAction::Quit));
        assert_eq!(key_action(&key(KeyCode::Esc, KeyModifiers::NONE)), Some(KeyAction::Quit));
        assert_eq!(key_action(&key(KeyCode::Char('c'), KeyModifiers::CONTROL)), Some(KeyAction::Quit));
        assert_eq!(key_action(&key(KeyCode::Char('c'), KeyModifiers::NONE)), None);
        assert_eq!(key_action(&key(KeyCode::Enter, KeyModifiers::NONE)), None);
        let mut release = key(KeyCode::Char('q'), KeyModifiers::NONE);
        release.kind = KeyEventKind::Release;
        assert_eq!(key_action(&release), None);
    }

    #[test]
    fn camera_arg_takes_the_prefix_or_not() {
        assert_eq!(parse_camera_arg("camera:1"), CameraSelector::Index(1));
        assert_eq!(parse_camera_arg("1"), CameraSelector::Index(1));
        assert_eq!(parse_camera_arg("/dev/video3"), CameraSelector::Path("/dev/video3".into()));
        assert_eq!(parse_camera_arg(""), CameraSelector::First);
    }
}
