//! Service glue: systemd readiness, status and watchdog, and the reload signal.
//!
//! Under systemd (`Type=notify`, see `firmware-config/smartbin.service`) the
//! service manager passes `NOTIFY_SOCKET` and, with `WatchdogSec=`,
//! `WATCHDOG_USEC`. Outside systemd every call here is a no-op, so the same
//! binary runs by hand, in tests and as a service.
//!
//! The watchdog is fed from a thread, but only while the main loop keeps
//! beating its [`Heartbeat`]: a loop stuck in a camera read, a servo write or
//! the classifier stops the beats, the pings stop, and systemd restarts us.

pub mod logging;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use crate::clock::Clock;
use crate::source::{Frame, FrameSource, SourceError};

/// Talks to the service manager. Failures are logged once and otherwise
/// ignored: a sorter must not stop because journald is restarting.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    warned: Arc<AtomicBool>,
}

impl Notifier {
    pub fn new() -> Self {
        Notifier::default()
    }

    /// Model loaded, source opened, servos homed.
    pub fn ready(&self) {
        self.send(&[NotifyState::Ready]);
    }

    /// Shown by `systemctl status` as "Status:".
    pub fn status(&self, text: &str) {
        self.send(&[NotifyState::Status(text)]);
    }

    pub fn reloading(&self) {
        // systemd ≥ 253 wants the monotonic time with RELOADING=1 to match it with
        // the following READY=1; older ones ignore it.
        match sd_notify::NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }

    fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    fn send(&self, states: &[NotifyState]) {
        if let Err(e) = sd_notify::notify(states) {
            if !self.warned.swap(true, Ordering::Relaxed) {
                log::warn!("cannot notify systemd ({e}); further failures are not logged");
            }
        }
    }
}

/// What the run loop reports to the service manager.
#[derive(Debug, Clone, Default)]
pub struct ServiceHooks {
    pub notifier: Notifier,
    pub heartbeat: Heartbeat,
}

/// Proof of life from the main loop: the time of its last beat.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat { start: Instant::now(), last_ms: Arc::new(AtomicU64::new(0)) }
    }
}

impl Heartbeat {
    pub fn new() -> Self {
        Heartbeat::default()
    }

    pub fn beat(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// Time since the last beat.
    pub fn age(&self) -> Duration {
        let now = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// A clock whose sleeps count as proof of life: every waiting loop (the
/// trigger polling a pin, the camera's reconnect back-off, servo settling)
/// sleeps through the clock, so an idle bin still feeds the watchdog while a
/// hung one does not.
pub struct BeatingClock {
    inner: Arc<dyn Clock>,
    heartbeat: Heartbeat,
}

impl BeatingClock {
    pub fn new(inner: Arc<dyn Clock>, heartbeat: Heartbeat) -> Self {
        BeatingClock { inner, heartbeat }
    }
}

impl Clock for BeatingClock {
    fn now(&self) -> Instant {
        self.inner.now()
    }
    fn wall(&self) -> std::time::SystemTime {
        self.inner.wall()
    }
    fn sleep(&self, d: Duration) {
        self.heartbeat.beat();
        self.inner.sleep(d);
        self.heartbeat.beat();
    }
}

/// A frame source whose every frame counts as proof of life: a motion trigger
/// reads frames for hours without an item, and that is a healthy loop.
pub struct BeatingSource {
    inner: Box<dyn FrameSource>,
    heartbeat: Heartbeat,
}

impl BeatingSource {
    pub fn new(inner: Box<dyn FrameSource>, heartbeat: Heartbeat) -> Self {
        BeatingSource { inner, heartbeat }
    }
}

impl FrameSource for BeatingSource {
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        let frame = self.inner.next_frame();
        self.heartbeat.beat();
        frame
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn drain(&mut self) -> Result<usize, SourceError> {
        let dropped = self.inner.drain();
        self.heartbeat.beat();
        dropped
    }
}

/// Pings systemd's watchdog every half period while `heartbeat` is younger
/// than the period. Returns `None` (and starts nothing) when systemd asked for
/// no watchdog.
pub fn spawn_watchdog(notifier: Notifier, heartbeat: Heartbeat) -> Option<thread::JoinHandle<()>> {
    let period = sd_notify::watchdog_enabled()?;
    log::info!("systemd watchdog: {} s", period.as_secs_f32());
    let handle = thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || loop {
            if should_ping(heartbeat.age(), period) {
                notifier.watchdog();
            } else {
                log::error!(
                    "main loop silent for {:.0} s: not feeding the watchdog, systemd will restart the service",
                    heartbeat.age().as_secs_f32()
                );
            }
            thread::sleep(period / 2);
        })
        .ok()?;
    Some(handle)
}

/// The loop counts as alive if it beat within one watchdog period.
fn should_ping(age: Duration, period: Duration) -> bool {
    age < period
}

/// Sets `flag` on SIGHUP: the run loop finishes its item and reloads the config.
pub fn install_reload_signal(flag: &Arc<AtomicBool>) -> std::io::Result<()> {
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(flag))?;
    Ok(())
}

/// One line for `systemctl status`: what happened last and the counts so far.
pub fn status_line(last: &str, items: u64, errors: u64) -> String {
    format!("{items} items sorted, {errors} errors; last: {last}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_age_resets_on_beat() {
        let hb = Heartbeat::new();
        thread::sleep(Duration::from_millis(30));
        assert!(hb.age() >= Duration::from_millis(30));
        hb.beat();
        assert!(hb.age() < Duration::from_millis(30));
    }

    #[test]
    fn a_silent_loop_is_not_pinged() {
        let period = Duration::from_secs(60);
        assert!(should_ping(Duration::from_secs(5), period));
        assert!(!should_ping(Duration::from_secs(61), period));
    }

    #[test]
    fn status_line_reads_well() {
        assert_eq!(
            status_line("glass -> glass (0.93)", 12, 1),
            "12 items sorted, 1 errors; last: glass -> glass (0.93)"
        );
    }
}
