use clap::Parser;

fn main() -> std::process::ExitCode {
    smartbin::service::logging::init();
    keep_freed_memory();
    let cli = smartbin::cli::Cli::parse();
    match smartbin::cli::dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            log::error!("{err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Every tensor op allocates its output. glibc hands blocks over 128 KiB straight back
/// to the kernel, and trims the per-thread arenas that the worker threads allocate
/// from, so each op pays fresh page faults (6% of a ResNet training step, 40–60% of
/// EfficientNet inference). One arena that never maps blocks of their own (a batch
/// of 16 at 224×224 has 77 MB activations, past the 32 MiB that the mmap threshold
/// can be raised to) lets freed buffers be reused instead: 15% of an EfficientNet
/// training step was the kernel zeroing fresh pages.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
