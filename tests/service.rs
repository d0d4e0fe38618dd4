//! The binary as systemd runs it: sd_notify messages over `NOTIFY_SOCKET`,
//! SIGHUP reload (a bad new config is refused), journald log lines, and the
//! unit file checked by `systemd-analyze verify`.

mod common;

use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Under qemu the model takes tens of seconds to load.
const START_TIMEOUT: Duration = Duration::from_secs(300);
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

fn default_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/resnet18-ours-trashnet.safetensors")
}

fn write_photos(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let img = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([(x * 4) as u8, (y * 5) as u8, (i * 60) as u8]));
        img.save(dir.join(format!("item{i}.png"))).unwrap();
    }
}

/// A looping replay, slow enough that the run lasts until it is stopped.
fn looping_config(dir: &Path) -> String {
    let photos = dir.join("photos");
    write_photos(&photos, 3);
    format!(
        "[model]\npath = \"{}\"\n\n[source]\nspec = \"images:{}\"\nloop = true\nrate_hz = 20\n\n[log]\nevents = \"{}\"\n",
        default_model().display(),
        photos.display(),
        dir.join("events.jsonl").display()
    )
}

/// Every line of every datagram, as it arrives.
fn listen(socket: UnixDatagram) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = socket.recv(&mut buf) {
            for line in String::from_utf8_lossy(&buf[..n]).lines() {
                if tx.send(line.to_string()).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// Waits for a message starting with `prefix`; returns all lines seen on the way.
fn expect(rx: &mpsc::Receiver<String>, prefix: &str, timeout: Duration) -> Vec<String> {
    expect_line(rx, prefix, |line| line.starts_with(prefix), timeout)
}

fn expect_line(
    rx: &mpsc::Receiver<String>,
    what: &str,
    wanted: impl Fn(&str) -> bool,
    timeout: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let found = wanted(&line);
                seen.push(line);
                if found {
                    return seen;
                }
            }
            Err(_) => panic!("no {what} within {timeout:?}; got {seen:?}"),
        }
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill() on our own child's pid has no memory effects.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
}

fn stderr_of(mut child: Child) -> (std::process::ExitStatus, String) {
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (child.wait().unwrap(), err)
}

#[test]
fn notifies_ready_watchdog_reload_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bin.toml");
    std::fs::write(&config, looping_config(dir.path())).unwrap();
    let socket_path = dir.path().join("notify.sock");
    let rx = listen(UnixDatagram::bind(&socket_path).unwrap());

    let child = common::smartbin()
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    expect(&rx, "READY=1", START_TIMEOUT);
    let after_ready = expect(&rx, "STATUS=", STEP_TIMEOUT);
    assert!(after_ready.last().unwrap().contains("ready"), "{after_ready:?}");
    expect(&rx, "WATCHDOG=1", STEP_TIMEOUT);
    // Items are being sorted: the status counts them.
    let sorted = |l: &str| l.starts_with("STATUS=") && l.contains("items sorted, 0 errors; last: #");
    expect_line(&rx, "a status with the items sorted", sorted, STEP_TIMEOUT);

    // A broken config arrives with a reload: refused, the old one keeps running.
    std::fs::write(&config, "[decision]\nthreshold = 1.5\n").unwrap();
    signal(&child, libc::SIGHUP);
    expect(&rx, "RELOADING=1", STEP_TIMEOUT);
    expect(&rx, "READY=1", STEP_TIMEOUT);
    expect(&rx, "STATUS=", STEP_TIMEOUT);
    let events_before = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap().lines().count();
    expect(&rx, "WATCHDOG=1", STEP_TIMEOUT);
    std::thread::sleep(Duration::from_millis(500));

    signal(&child, libc::SIGTERM);
    expect(&rx, "STOPPING=1", STEP_TIMEOUT);
    let (status, err) = stderr_of(child);
    assert!(status.success(), "{status}: {err}");
    assert!(err.contains("new config refused") && err.contains("line 2"), "{err}");
    let events_after = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap().lines().count();
    assert!(events_after > events_before, "sorting went on after the refused reload: {events_before} -> {events_after}");
}

#[test]
fn without_notify_socket_the_run_works_and_warns_of_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write_photos(&dir.path().join("photos"), 2);
    // In an empty folder: built-in defaults, no firmware-config/ to find.
    let out = common::smartbin()
        .current_dir(dir.path())
        .arg("run")
        .arg("--source")
        .arg(format!("images:{}", dir.path().join("photos").display()))
        .arg("--model")
        .arg(default_model())
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("notify") && !err.contains("watchdog"), "{err}");
    let events = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
    assert_eq!(events.lines().count(), 2, "{events}");
}

#[test]
fn log_lines_carry_syslog_priorities_when_stderr_is_the_journal() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("journal.txt");
    let log = std::fs::File::create(&log_path).unwrap();
    let meta = log.metadata().unwrap();
    let status = common::smartbin()
        .args(["run", "--source", "images:/nonexistent-smartbin-photos"])
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .env("RUST_LOG", "info")
        .stderr(log)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success());
    let text = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.iter().any(|l| l.starts_with("<3>") && l.contains("nonexistent-smartbin-photos")), "{text}");
    // journald stamps lines itself: none of ours starts with a date.
    assert!(lines.iter().all(|l| l.starts_with('<') && !l.contains("T0") && !l.starts_with("[20")), "{text}");

    // Anywhere else: env_logger's own format with its timestamp.
    let out = common::smartbin()
        .args(["run", "--source", "images:/nonexistent-smartbin-photos"])
        .env("JOURNAL_STREAM", "1:1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("[20") && err.contains("ERROR"), "{err}");
}

/// `systemd-analyze verify` on the shipped unit, with ExecStart pointed at the
/// built binary (the .deb installs it as /usr/bin/smartbin). Any output fails.
#[test]
fn the_unit_file_verifies_cleanly() {
    let Ok(version) = std::process::Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("skipping: systemd-analyze not installed (apt-get install systemd)");
        return;
    };
    assert!(version.status.success());
    let unit = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("firmware-config/smartbin.service"))
        .unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/smartbin run"), "the .deb puts the binary in /usr/bin");
    let unit = unit.replace("/usr/bin/smartbin", env!("CARGO_BIN_EXE_smartbin"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("smartbin.service");
    std::fs::write(&path, unit).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--recursive-errors=no"])
        .arg(&path)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.trim().is_empty(), "systemd-analyze verify:\n{text}");

    let security = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=30"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&security.stdout);
    assert!(security.status.success(), "exposure above 3.0:\n{text}");
}
