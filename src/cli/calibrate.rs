//! `smartbin calibrate servos`: the front ends of [`crate::calibration`] — keys
//! in a terminal (over SSH, no display needed), or commands from a script or
//! stdin for tools and tests.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use crossterm::event::{Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use embedded_hal::pwm::SetDutyCycle;

use super::terminal::{print_raw, RawMode};
use crate::actuation::{self, SimLog, SYSFS_PWM_ROOT};
use crate::calibration::servos::{Command, ServoCalibration, HELP};
use crate::calibration::{save_with_backup, with_actuation};
use crate::clock::{Clock, SimClock, SystemClock};
use crate::config::{ActuatorBackend, Config};

#[derive(Debug, clap::Args)]
pub struct CalibrateArgs {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// Jog each servo to find its safe pulse range, the bins' poses and home.
    ///
    /// Keys: ←/→ or -/+ jog, ↑/↓ step size, Tab next servo, u unlock the range,
    /// m/M store min/max, h home, p pose, t test a bin, d detach, : type a
    /// command, s save, q quit. With --script (or stdin not a terminal) each
    /// line is a command (`help` lists them), plus `save` and `quit`.
    Servos(ServosArgs),
    /// Take the empty tray: motion-trigger background, light and focus check,
    /// the tray's region (found from an item moved over it, or given), and a
    /// reference picture that later runs are checked against.
    Camera(CameraArgs),
    /// Adapt the classifier to this bin: guided capture of its items, few-shot
    /// training of the head on the CPU, kept only if better on held-out
    /// captures; fits the confidence temperature and suggests a threshold.
    Model(super::calibrate_model::ModelArgs),
}

#[derive(Debug, clap::Args)]
pub struct CameraArgs {
    /// Config to calibrate; `save` sets its [source] roi and reference and
    /// [trigger] background (the old file is kept as FILE.bak)
    #[arg(long, value_name = "PATH", default_value = super::run::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Frame source, overriding [source] spec (images:DIR calibrates from recorded frames)
    #[arg(long, value_name = "SPEC")]
    pub source: Option<String>,
    /// Frames of the empty tray to take
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub frames: usize,
    /// Find the tray: take N frames while an item is moved over all of it
    #[arg(long, value_name = "N", conflicts_with = "roi")]
    pub find_roi: Option<usize>,
    /// Set the tray by hand: X,Y,WIDTH,HEIGHT in pixels of the camera's frames
    #[arg(long, value_name = "X,Y,W,H", value_parser = parse_roi)]
    pub roi: Option<[u32; 4]>,
    /// Where the pictures are written [default: calibration/ beside the config]
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// Only compare the view now with the saved reference (exit 1 on a warning);
    /// writes nothing
    #[arg(long)]
    pub check: bool,
}

fn parse_roi(text: &str) -> Result<[u32; 4], String> {
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    let numbers: Vec<u32> = parts.iter().filter_map(|p| p.parse().ok()).collect();
    match numbers[..] {
        [x, y, w, h] if parts.len() == 4 && w > 0 && h > 0 => Ok([x, y, w, h]),
        _ => Err(format!("`{text}`: expected X,Y,WIDTH,HEIGHT in pixels, e.g. 80,40,480,400")),
    }
}

#[derive(Debug, clap::Args)]
pub struct ServosArgs {
    /// Config to calibrate; `save` rewrites its servos and bins (the old file
    /// is kept as FILE.bak)
    #[arg(long, value_name = "PATH", default_value = super::run::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Read commands from FILE ('-': stdin) instead of keys
    #[arg(long, value_name = "FILE")]
    pub script: Option<PathBuf>,
    /// Drive this backend instead of the config's (`sim` rehearses without servos)
    #[arg(long, value_enum, value_name = "BACKEND")]
    pub backend: Option<ActuatorBackend>,
}

pub fn main(args: CalibrateArgs) -> anyhow::Result<ExitCode> {
    match args.what {
        What::Servos(a) => servos(a),
        What::Camera(a) => super::calibrate_camera::main(a),
        What::Model(a) => super::calibrate_model::main(a),
    }
}

/// The config file as loaded, kept as text so a save changes only the servos.
pub(super) struct Target {
    pub path: PathBuf,
    pub text: String,
    pub config: Config,
    /// Whether this session already kept the file as it was as `.bak`: later
    /// saves must not overwrite that with an intermediate state.
    pub backed_up: bool,
}

impl Target {
    /// Writes the new config text; the first write of a session keeps the file
    /// as loaded as `.bak`.
    pub fn write(&mut self, text: &str) -> anyhow::Result<()> {
        if self.backed_up {
            crate::util::write_atomic(&self.path, text.as_bytes())
                .with_context(|| format!("writing {}", self.path.display()))?;
        } else {
            save_with_backup(&self.path, text.as_bytes())?;
            self.backed_up = true;
        }
        self.text = text.to_string();
        Ok(())
    }

    pub fn load(path: &Path) -> anyhow::Result<Target> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                log::info!("{} does not exist yet: starting from the built-in defaults", path.display());
                String::new()
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let config = Config::parse(&text, &path.display().to_string())?;
        Ok(Target { path: path.to_path_buf(), text, config, backed_up: false })
    }

    fn save<P: SetDutyCycle>(&mut self, cal: &mut ServoCalibration<P>) -> anyhow::Result<String> {
        let origin = self.path.display().to_string();
        let text = with_actuation(&self.text, cal.actuation(), &origin)?;
        self.write(&text)?;
        cal.mark_saved();
        Ok(format!(
            "saved {} (previous version: {}); a running service picks it up on `systemctl reload smartbin`",
            self.path.display(),
            crate::calibration::backup_path(&self.path).display()
        ))
    }
}

fn servos(args: ServosArgs) -> anyhow::Result<ExitCode> {
    let target = Target::load(&args.config)?;
    let mut actuation = target.config.actuation.clone();
    if let Some(backend) = args.backend {
        actuation.backend = backend;
    }
    let real: Arc<dyn Clock> = Arc::new(SystemClock);
    match actuation.backend {
        ActuatorBackend::Sim => {
            let clock: Arc<dyn Clock> = Arc::new(SimClock::new());
            let pwms = actuation::sim_channels(&actuation, &SimLog::default(), &clock);
            session(target, ServoCalibration::new(actuation, pwms, clock)?, &args)
        }
        ActuatorBackend::Rppal => {
            let pwms = actuation::rppal_channels(&actuation).context("opening Raspberry Pi hardware PWM")?;
            session(target, ServoCalibration::new(actuation, pwms, real)?, &args)
        }
        ActuatorBackend::RppalSoft => {
            let pwms = actuation::rppal_soft_channels(&actuation).context("opening Raspberry Pi software PWM")?;
            session(target, ServoCalibration::new(actuation, pwms, real)?, &args)
        }
        ActuatorBackend::Pca9685 => {
            let pwms = actuation::pca9685_channels(&actuation, real.as_ref()).context("opening the PCA9685 board")?;
            session(target, ServoCalibration::new(actuation, pwms, real)?, &args)
        }
        ActuatorBackend::Sysfs => {
            let pwms = actuation::sysfs_channels(&actuation, Path::new(SYSFS_PWM_ROOT), real.as_ref())
                .context("opening Linux sysfs PWM")?;
            session(target, ServoCalibration::new(actuation, pwms, real)?, &args)
        }
    }
}

fn session<P: SetDutyCycle>(target: Target, mut cal: ServoCalibration<P>, args: &ServosArgs) -> anyhow::Result<ExitCode> {
    let interactive = args.script.is_none() && crossterm::tty::IsTty::is_tty(&std::io::stdin());
    let result = if interactive { keys(target, &mut cal) } else { script(target, &mut cal, args.script.as_deref()) };
    // Whatever happened, no servo is left being driven.
    if let Err(e) = cal.stop_all() {
        log::error!("stopping the servos: {e}");
    }
    result
}

/// Line commands: a bad line stops the script (nothing unsaved is written).
fn script<P: SetDutyCycle>(mut target: Target, cal: &mut ServoCalibration<P>, file: Option<&Path>) -> anyhow::Result<ExitCode> {
    let (reader, name): (Box<dyn BufRead + Send>, String) = match file {
        None => (Box::new(std::io::BufReader::new(std::io::stdin())), "stdin".into()),
        Some(p) if p == Path::new("-") => (Box::new(std::io::BufReader::new(std::io::stdin())), "stdin".into()),
        Some(p) => {
            let f = std::fs::File::open(p).with_context(|| format!("opening the script {}", p.display()))?;
            (Box::new(std::io::BufReader::new(f)), p.display().to_string())
        }
    };
    let interrupted = stop_signals()?;
    // Lines arrive on a thread, so a signal is noticed while stdin is idle too.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in reader.lines() {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut n = 0;
    loop {
        if interrupted.load(Ordering::Relaxed) {
            anyhow::bail!("interrupted after {name} line {n}: servos stopped, nothing more saved");
        }
        let line = match rx.recv_timeout(std::time::Duration::from_millis(100)) {
            Ok(line) => line,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        n += 1;
        let line = line.with_context(|| format!("reading {name}"))?;
        let at = || format!("{name} line {n}");
        match line.split('#').next().unwrap_or("").trim() {
            "save" => println!("{}", target.save(cal).with_context(at)?),
            "quit" | "exit" => break,
            _ => match Command::parse(&line).map_err(|e| anyhow::anyhow!("{}: {e}", at()))? {
                None => {}
                Some(command) => println!("{}", cal.apply(&command).map_err(|e| anyhow::anyhow!("{}: {e}", at()))?),
            },
        }
    }
    if cal.changed() {
        eprintln!("unsaved changes dropped (end the script with `save` to keep them)");
    }
    Ok(ExitCode::SUCCESS)
}

/// SIGINT, SIGTERM and SIGHUP (an SSH session that drops) end the session
/// through its normal exit, which stops the servos.
fn stop_signals() -> anyhow::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP] {
        signal_hook::flag::register(signal, flag.clone())?;
    }
    Ok(flag)
}

/// Jog steps the ↑/↓ keys cycle through, in µs.
const STEPS: [u16; 6] = [1, 5, 10, 25, 50, 100];

fn keys<P: SetDutyCycle>(mut target: Target, cal: &mut ServoCalibration<P>) -> anyhow::Result<ExitCode> {
    let _raw = RawMode::enter().context("the key-driven calibration needs a terminal; use --script otherwise")?;
    // Log lines end in a bare \n, which raw mode does not return to column 0;
    // the replies already say what moved.
    log::set_max_level(log::LevelFilter::Warn);
    print_raw(&format!("{}\n\n{}\n", cal.show(), key_help()));
    let hung_up = stop_signals()?;
    loop {
        if hung_up.load(Ordering::Relaxed) {
            return Ok(ExitCode::from(1));
        }
        if !crossterm::event::poll(std::time::Duration::from_millis(200))? {
            continue;
        }
        let Event::Key(key) = crossterm::event::read()? else { continue };
        if key.kind != KeyEventKind::Press {
            continue;
        }
        let reply = match key_command(key, cal) {
            KeyAction::Run(command) => cal.apply(&command),
            KeyAction::AskBin(make) => ask_bin(cal).map(make).and_then(|c| cal.apply(&c)),
            KeyAction::Line => read_line(":").and_then(|l| match Command::parse(&l)? {
                Some(c) => cal.apply(&c),
                None => Ok(String::new()),
            }),
            KeyAction::Save => target.save(cal).map_err(|e| format!("{e:#}")),
            KeyAction::Quit => {
                if !cal.changed() || confirm_drop()? {
                    print_raw("servos stopped\n");
                    return Ok(ExitCode::SUCCESS);
                }
                Ok("not quitting".into())
            }
            KeyAction::Help => Ok(format!("{}\n{}", key_help(), HELP)),
            KeyAction::None => continue,
        };
        match reply {
            Ok(text) => print_raw(&format!("{text}\n")),
            Err(e) => print_raw(&format!("! {e}\n")),
        }
    }
}

enum KeyAction {
    Run(Command),
    AskBin(fn(String) -> Command),
    Line,
    Save,
    Quit,
    Help,
    None,
}

fn key_command<P: SetDutyCycle>(key: KeyEvent, cal: &ServoCalibration<P>) -> KeyAction {
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    match key.code {
        KeyCode::Char('c') if ctrl => KeyAction::Quit,
        KeyCode::Right | KeyCode::Char('+') | KeyCode::Char('=') => KeyAction::Run(Command::Jog { up: true, by: None }),
        KeyCode::Left | KeyCode::Char('-') => KeyAction::Run(Command::Jog { up: false, by: None }),
        KeyCode::Up | KeyCode::Down => {
            let now = STEPS.iter().position(|&s| s >= cal.step_us()).unwrap_or(STEPS.len() - 1);
            let next = if key.code == KeyCode::Up { (now + 1).min(STEPS.len() - 1) } else { now.saturating_sub(1) };
            KeyAction::Run(Command::Step(STEPS[next]))
        }
        KeyCode::Tab | KeyCode::Char('n') => {
            let count = cal.actuation().servos.len();
            let index = cal.actuation().servos.iter().position(|s| s.name == cal.position().0).unwrap_or(0);
            KeyAction::Run(Command::Select(((index + 1) % count + 1).to_string()))
        }
        KeyCode::Char('u') => KeyAction::Run(Command::Unlock),
        KeyCode::Char('m') => KeyAction::Run(Command::StoreMin),
        KeyCode::Char('M') => KeyAction::Run(Command::StoreMax),
        KeyCode::Char('h') => KeyAction::Run(Command::StoreHome),
        KeyCode::Char('d') => KeyAction::Run(Command::Detach),
        KeyCode::Char('v') => KeyAction::Run(Command::Show),
        KeyCode::Char('p') => KeyAction::AskBin(|bin| Command::StorePose { bin, index: None }),
        KeyCode::Char('t') => KeyAction::AskBin(Command::Test),
        KeyCode::Char(':') => KeyAction::Line,
        KeyCode::Char('s') => KeyAction::Save,
        KeyCode::Char('q') | KeyCode::Esc => KeyAction::Quit,
        KeyCode::Char('?') => KeyAction::Help,
        _ => KeyAction::None,
    }
}

fn key_help() -> &'static str {
    "keys: ←/→ jog, ↑/↓ step, Tab next servo, u unlock, m/M min/max, h home, p pose, t test, \
     d detach, v show, : command, s save, q quit, ? help"
}

/// Which bin: a digit from the numbered list.
fn ask_bin<P: SetDutyCycle>(cal: &ServoCalibration<P>) -> Result<String, String> {
    let bins: Vec<&str> = cal.actuation().bins.iter().map(|b| b.name.as_str()).collect();
    let list: Vec<String> = bins.iter().enumerate().map(|(i, b)| format!("{} {b}", i + 1)).collect();
    print_raw(&format!("bin? {} (other key: cancel)\n", list.join(", ")));
    let key = next_key().map_err(|e| e.to_string())?;
    match key {
        KeyCode::Char(c) => c
            .to_digit(10)
            .and_then(|d| bins.get((d as usize).checked_sub(1)?))
            .map(|b| b.to_string())
            .ok_or_else(|| "cancelled".to_string()),
        _ => Err("cancelled".into()),
    }
}

fn next_key() -> std::io::Result<KeyCode> {
    loop {
        if let Event::Key(key) = crossterm::event::read()? {
            if key.kind == KeyEventKind::Press {
                return Ok(key.code);
            }
        }
    }
}

/// A typed line in raw mode: Enter ends it, Backspace edits, Esc cancels.
fn read_line(prompt: &str) -> Result<String, String> {
    let mut line = String::new();
    print_raw(prompt);
    loop {
        match next_key().map_err(|e| e.to_string())? {
            KeyCode::Enter => {
                print_raw("\n");
                return Ok(line);
            }
            KeyCode::Esc => {
                print_raw("\n");
                return Err("cancelled".into());
            }
            KeyCode::Backspace => {
                if line.pop().is_some() {
                    print_raw("\u{8} \u{8}");
                }
            }
            KeyCode::Char(c) => {
                line.push(c);
                print_raw(&c.to_string());
            }
            _ => {}
        }
    }
}

fn confirm_drop() -> anyhow::Result<bool> {
    print_raw("unsaved changes: q again to quit without saving, any other key to go on\n");
    Ok(next_key()? == KeyCode::Char('q'))
}
