//! Shared helpers for whole-program tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub const CLASSES: [&str; 6] = ["glass", "paper", "cardboard", "plastic", "metal", "trash"];

/// The real TrashNet, if this checkout has `../shared/trashnet` beside it.
/// `SMARTBIN_TRASHNET` points the tests elsewhere; `SMARTBIN_TRASHNET=off` skips
/// them (CI does under qemu, where they take many minutes and the golden-output
/// test already checks the numerics).
pub fn trashnet() -> Option<PathBuf> {
    if std::env::var_os("SMARTBIN_TRASHNET").is_some_and(|v| v == "off") {
        eprintln!("skipping: SMARTBIN_TRASHNET=off");
        return None;
    }
    let root = std::env::var_os("SMARTBIN_TRASHNET")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/trashnet"));
    if root.join("splits/test.txt").exists() {
        Some(root)
    } else {
        eprintln!("skipping: TrashNet not found at {} (see README: Data)", root.display());
        None
    }
}

/// A TrashNet-shaped folder with `per_class` small synthetic photos per class and
/// split files, each class a different colour so a tiny model can learn it.
pub fn fake_trashnet(root: &Path, per_class: usize) {
    let mut lines = [String::new(), String::new(), String::new()];
    for (ci, class) in CLASSES.iter().enumerate() {
        let dir = root.join("dataset-resized").join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..per_class {
            let name = format!("{class}{}.jpg", i + 1);
            let img = image::RgbImage::from_fn(48, 40, |x, y| {
                let base = [(ci * 40) as u8, (255 - ci * 40) as u8, ((ci * 97) % 256) as u8];
                let noise = ((x * 7 + y * 13 + i as u32 * 31) % 23) as u8;
                image::Rgb([base[0].wrapping_add(noise), base[1].wrapping_sub(noise), base[2]])
            });
            img.save(dir.join(&name)).unwrap();
            lines[i % 3].push_str(&format!("{name} {}\n", ci + 1));
        }
    }
    std::fs::create_dir_all(root.join("splits")).unwrap();
    for (split, text) in ["train", "val", "test"].iter().zip(&lines) {
        std::fs::write(root.join("splits").join(format!("{split}.txt")), text).unwrap();
    }
}

/// A command running the built `smartbin` binary. Cargo's target runner only
/// wraps the test binaries, so a cross-built suite (tests under qemu-aarch64)
/// names its runner in `SMARTBIN_TEST_RUNNER`, e.g.
/// `qemu-aarch64 -L /usr/aarch64-linux-gnu`.
pub fn smartbin() -> std::process::Command {
    let binary = env!("CARGO_BIN_EXE_smartbin");
    let runner = std::env::var("SMARTBIN_TEST_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    match words.next() {
        Some(program) => {
            let mut command = std::process::Command::new(program);
            command.args(words).arg(binary);
            command
        }
        None => std::process::Command::new(binary),
    }
}
