//! `smartbin calibrate servos` driven by a script, as a tool or a test would.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};

const CONFIG: &str = "# the installer's notes stay\n[decision]\nthreshold = 0.6\n\n[actuation]\nbackend = \"sim\"\n";

fn calibrate(config: &Path, script: &str) -> Output {
    let mut child = common::smartbin()
        .args(["calibrate", "servos", "--config"])
        .arg(config)
        .args(["--script", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn a_scripted_calibration_saves_limits_home_and_poses_and_keeps_a_backup() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("smartbin.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let script = "servo flap\nunlock\npulse 900\nmin\npulse 2100\nmax\n\
                  pulse 950\nhome\npulse 1800\npose glass\ntest glass\nsave\nquit\n";
    let out = calibrate(&config, script);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("test glass:") && stdout.contains("saved"), "{stdout}");

    let saved = smartbin::config::Config::load(&config).unwrap();
    let flap = &saved.actuation.servos[1];
    assert_eq!((flap.min_us, flap.max_us), (900, 2100));
    let pulse = |angle: f32| flap.min_us as f32 + angle / flap.max_angle * (flap.max_us - flap.min_us) as f32;
    assert!((pulse(flap.home) - 950.0).abs() < 0.5, "home {}", flap.home);
    let glass = saved.actuation.bins.iter().find(|b| b.name == "glass").unwrap();
    let flap_pose = glass.poses.iter().find(|p| p.servo == "flap").unwrap();
    assert!((pulse(flap_pose.angle) - 1800.0).abs() < 0.5);
    // the rest of the file is as the installer wrote it
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.starts_with("# the installer's notes stay\n[decision]\nthreshold = 0.6\n"), "{text}");
    assert_eq!(std::fs::read_to_string(dir.path().join("smartbin.toml.bak")).unwrap(), CONFIG);
}

#[test]
fn a_bad_line_stops_the_script_names_the_line_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("smartbin.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let out = calibrate(&config, "servo flap\npulse 1500\nmin\npulse lots\nsave\n");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 4") && err.contains("`lots`"), "{err}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), CONFIG);
    assert!(!dir.path().join("smartbin.toml.bak").exists());
}

#[test]
fn without_save_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("smartbin.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let out = calibrate(&config, "servo chute\npulse 1400\nhome\n");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unsaved changes dropped"));
    assert_eq!(std::fs::read_to_string(&config).unwrap(), CONFIG);
}

/// A 320×240 view: a textured tray (x 60..260, y 30..210) on a plain floor;
/// `item` puts a white 40×40 card with its corner there; `shift` moves the
/// whole view (a knocked camera).
fn view(item: Option<(u32, u32)>, shift: (i32, i32)) -> image::RgbImage {
    image::RgbImage::from_fn(320, 240, |x, y| {
        let (x, y) = ((x as i32 - shift.0).clamp(0, 319) as u32, (y as i32 - shift.1).clamp(0, 239) as u32);
        if let Some((ix, iy)) = item {
            if (ix..ix + 40).contains(&x) && (iy..iy + 40).contains(&y) {
                return image::Rgb([235, 235, 225]);
            }
        }
        if (60..260).contains(&x) && (30..210).contains(&y) {
            let mut v = (x / 5).wrapping_mul(0x9E37_79B9) ^ (y / 5).wrapping_mul(0x85EB_CA6B);
            v ^= v >> 15;
            let g = 60 + (v.wrapping_mul(0xC2B2_AE35) >> 25) as u8;
            image::Rgb([g, g - 10, g - 25])
        } else {
            image::Rgb([150, 150, 150])
        }
    })
}

fn write_frames(dir: &Path, frames: &[image::RgbImage]) {
    std::fs::create_dir_all(dir).unwrap();
    for (i, f) in frames.iter().enumerate() {
        f.save(dir.join(format!("{i:03}.png"))).unwrap();
    }
}

fn camera(config: &Path, frames: &Path, extra: &[&str]) -> Output {
    common::smartbin()
        .args(["calibrate", "camera", "--config"])
        .arg(config)
        .arg("--source")
        .arg(format!("images:{}", frames.display()))
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn camera_calibration_finds_the_tray_saves_the_pictures_and_checks_drift() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("smartbin.toml");
    std::fs::write(&config, CONFIG).unwrap();
    // 4 empty frames, then the card pushed into the tray's four corners and middle
    let mut frames = vec![view(None, (0, 0)); 4];
    for spot in [(62, 32), (218, 32), (62, 168), (218, 168), (140, 100)] {
        frames.push(view(Some(spot), (0, 0)));
    }
    let recorded = dir.path().join("recorded");
    write_frames(&recorded, &frames);
    let out = camera(&config, &recorded, &["--frames", "4", "--find-roi", "5"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("tray found"), "{stdout}");

    let saved = smartbin::config::Config::load(&config).unwrap();
    let [x, y, w, h] = saved.source.roi.unwrap();
    // the card covered x 62..258, y 32..208; the margin adds 16/12 px, clipped
    assert!(x <= 62 && x >= 40 && y <= 32 && y >= 15, "{:?}", saved.source.roi);
    assert!(x + w >= 258 && x + w <= 280 && y + h >= 208 && y + h <= 225, "{:?}", saved.source.roi);
    let background = image::open(saved.trigger.background.as_ref().unwrap()).unwrap();
    assert_eq!((background.width(), background.height()), (w, h));
    let reference = image::open(saved.source.reference.as_ref().unwrap()).unwrap().to_rgb8();
    assert_eq!(reference, view(None, (0, 0)));
    assert!(std::fs::read_to_string(&config).unwrap().starts_with("# the installer's notes stay\n"));

    // calibrating again replaces the pictures; those of the config before stay
    // (it is the .bak), older ones go
    let first = saved.source.reference.clone().unwrap();
    for _ in 0..2 {
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(camera(&config, &recorded, &["--frames", "4", "--find-roi", "5"]).status.success());
    }
    let pictures = std::fs::read_dir(first.parent().unwrap()).unwrap().count();
    assert_eq!(pictures, 4, "two calibrations' reference and background");
    assert!(!first.exists());

    // later: the same view passes, a knocked camera is reported
    let same = dir.path().join("same");
    write_frames(&same, &vec![view(None, (0, 0)); 3]);
    let ok = camera(&config, &same, &["--check"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stdout));
    let knocked = dir.path().join("knocked");
    write_frames(&knocked, &vec![view(None, (14, 9)); 3]);
    let bad = camera(&config, &knocked, &["--check"]);
    let report = String::from_utf8_lossy(&bad.stdout);
    assert_eq!(bad.status.code(), Some(1), "{report}");
    assert!(report.contains("moved by about (14, 9) px"), "{report}");
}

#[test]
fn an_empty_tray_in_every_frame_finds_no_tray_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("smartbin.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let recorded = dir.path().join("recorded");
    write_frames(&recorded, &vec![view(None, (0, 0)); 6]);
    let out = camera(&config, &recorded, &["--frames", "3", "--find-roi", "3"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("the item was not seen"));
    assert_eq!(std::fs::read_to_string(&config).unwrap(), CONFIG);
    assert!(!dir.path().join("calibration").exists());
}
