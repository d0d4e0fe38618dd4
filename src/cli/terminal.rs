//! Raw-mode terminal helpers for the key-driven commands (`live`, `calibrate`).

use std::io::Write;

/// Raw mode for as long as this lives.
pub struct RawMode;

impl RawMode {
    pub fn enter() -> std::io::Result<RawMode> {
        crossterm::terminal::enable_raw_mode()?;
        Ok(RawMode)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Err(e) = crossterm::terminal::disable_raw_mode() {
            eprintln!("could not restore the terminal ({e}); run `reset`");
        }
    }
}

/// Raw mode does not turn `\n` into a new line at column 0.
pub fn print_raw(text: &str) {
    let mut out = std::io::stdout().lock();
    // a status line that fails to print is not worth stopping for
    let _ = out.write_all(text.replace('\n', "\r\n").as_bytes());
    let _ = out.flush();
}
