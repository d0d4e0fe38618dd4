//! Log output: plain lines with timestamps on a terminal, syslog-priority lines
//! without timestamps when stderr goes to journald (it stamps every line itself
//! and reads the `<N>` prefix as the level, so `journalctl -p warning` works).

use std::io::Write;

/// Sets up `log` for the binary. `RUST_LOG` picks the levels (default `info`).
pub fn init() {
    let mut builder = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if stderr_is_journal() {
        builder.format(|out, record| {
            writeln!(out, "<{}>{}: {}", syslog_priority(record.level()), record.target(), record.args())
        });
    }
    builder.init();
}

/// The syslog priority journald files a line under.
fn syslog_priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// systemd sets `JOURNAL_STREAM=<device>:<inode>` of the stream it connects;
/// it is inherited by children whose stderr may go elsewhere, so it counts only
/// when stderr is that very file.
fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = parse_journal_stream(&value.to_string_lossy()) else { return false };
    stderr_dev_ino() == Some((dev, ino))
}

fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.split_once(':')?;
    Some((dev.trim().parse().ok()?, ino.trim().parse().ok()?))
}

fn stderr_dev_ino() -> Option<(u64, u64)> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let meta = std::fs::File::from(fd).metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_value_parses() {
        assert_eq!(parse_journal_stream("8:123456"), Some((8, 123456)));
        assert_eq!(parse_journal_stream("8"), None);
        assert_eq!(parse_journal_stream("x:1"), None);
    }

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(syslog_priority(log::Level::Error), 3);
        assert_eq!(syslog_priority(log::Level::Warn), 4);
        assert_eq!(syslog_priority(log::Level::Info), 6);
        assert_eq!(syslog_priority(log::Level::Trace), 7);
    }
}
