//! The whole program on real TrashNet photos with the shipped default model:
//! `eval` reaches the bar and `run` sorts a folder of test photos.
//! Skipped (with a message) when ../shared/trashnet is absent.

mod common;

use smartbin::config::Config;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const MODEL: &str = smartbin::model::DEFAULT_MODEL_PATH;

fn crate_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The first `n` photos of the test split, as (path, class name).
fn test_photos(root: &Path, n: usize) -> Vec<(PathBuf, String)> {
    let text = std::fs::read_to_string(root.join("splits/test.txt")).unwrap();
    text.lines()
        .take(n)
        .map(|line| {
            let (file, index) = line.split_once(' ').unwrap();
            let class = common::CLASSES[index.trim().parse::<usize>().unwrap() - 1];
            (root.join("dataset-resized").join(class).join(file), class.to_string())
        })
        .collect()
}

#[test]
fn default_model_beats_the_from_scratch_baseline_on_the_test_split() {
    let Some(data) = common::trashnet() else { return };
    let out = common::smartbin()
        .current_dir(crate_root())
        .args(["eval", "--split", "test", "--json", "--model", MODEL])
        .arg("--data").arg(&data)
        .output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["n"], 431);
    let top1 = report["top1"].as_f64().unwrap();
    // RecycleNet's ResNet-18 trained from scratch: 70.3%.
    assert!(top1 >= 70.3, "test top-1 {top1:.2}% is below 70.3%");
}

#[test]
fn imagenet_transfer_model_keeps_its_accuracy() {
    let Some(data) = common::trashnet() else { return };
    let out = common::smartbin()
        .current_dir(crate_root())
        .args(["eval", "--split", "test", "--json", "--model", "models/efficientnet_lite0-ours-trashnet.safetensors"])
        .arg("--data").arg(&data)
        .output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let top1 = report["top1"].as_f64().unwrap();
    // The model card says 90.02%.
    assert!(top1 >= 89.5, "EfficientNet-Lite0 test top-1 {top1:.2}%");
}

#[test]
fn run_sorts_real_photos_with_simulated_servos() {
    let Some(data) = common::trashnet() else { return };
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("tray");
    std::fs::create_dir(&photos).unwrap();
    let mut truth = HashMap::new();
    for (i, (src, class)) in test_photos(&data, 24).into_iter().enumerate() {
        let name = format!("{i:03}.jpg");
        std::fs::copy(&src, photos.join(&name)).unwrap();
        truth.insert(name, class);
    }
    // Half a JPEG: must be reported and skipped.
    let some_photo = std::fs::read(photos.join("000.jpg")).unwrap();
    std::fs::write(photos.join("999-corrupt.jpg"), &some_photo[..some_photo.len() / 3]).unwrap();
    let events = dir.path().join("events.jsonl");

    let out = common::smartbin()
        .current_dir(crate_root())
        .args(["run", "--actuator", "sim", "--model", MODEL])
        .arg("--source").arg(format!("images:{}", photos.display()))
        .arg("--events").arg(&events)
        .output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");

    let config = Config::load(&crate_root().join("firmware-config/smartbin.toml")).unwrap();
    let limits: HashMap<String, (f64, f64)> =
        config.actuation.servos.iter().map(|s| (s.name.clone(), (s.min_us as f64, s.max_us as f64))).collect();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 25, "one event per file");
    let mut correct_bins = 0;
    for event in &lines {
        let source = event["source"].as_str().unwrap();
        if source.ends_with("999-corrupt.jpg") {
            assert!(event["error"].is_string() && event["bin"].is_null(), "{event}");
            continue;
        }
        let class = event["class"].as_str().unwrap();
        let bin = event["bin"].as_str().unwrap();
        let confidence = event["confidence"].as_f64().unwrap();
        let mapped = &config.decision.classes[class];
        if confidence >= config.decision.threshold as f64 {
            assert_eq!(bin, mapped, "{event}");
        } else {
            assert_eq!(bin, config.decision.fallback_bin, "{event}");
        }
        for m in event["moves"].as_array().unwrap() {
            let (lo, hi) = limits[m["servo"].as_str().unwrap()];
            let pulse = m["pulse_us"].as_f64().unwrap();
            assert!(pulse >= lo && pulse <= hi, "pulse {pulse} outside {lo}..{hi}: {event}");
        }
        let name = Path::new(source).file_name().unwrap().to_str().unwrap();
        if config.decision.classes[&truth[name]] == bin {
            correct_bins += 1;
        }
    }
    // A model above 70% top-1 puts well over half of 24 photos in the right bin.
    assert!(correct_bins >= 14, "only {correct_bins}/24 in the right bin");
    assert!(
        stderr.lines().any(|l| l.contains("999-corrupt.jpg") && l.contains("truncated")),
        "the corrupt file is reported with its reason: {stderr}"
    );
}

#[test]
fn explain_writes_an_attention_overlay_of_the_seen_region() {
    let Some(data) = common::trashnet() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out_png = dir.path().join("heat.png");
    let photo = data.join("dataset-resized/glass/glass12.jpg");
    let out = common::smartbin()
        .current_dir(crate_root())
        .args(["explain", "--model", MODEL])
        .arg(&photo)
        .arg("--out").arg(&out_png)
        .output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("spatial gate"));
    let heat = image::open(&out_png).unwrap().to_rgb8();
    // 512x384 photo: the model sees a centre square of 384·96/110 = 335 pixels.
    assert_eq!(heat.dimensions(), (335, 335));
    let original = image::open(&photo).unwrap().to_rgb8();
    let crop = image::imageops::crop_imm(&original, (512 - 335) / 2, (384 - 335) / 2, 335, 335).to_image();
    let changed = heat.pixels().zip(crop.pixels()).filter(|(a, b)| a != b).count();
    assert!(changed > 335 * 335 / 2, "the overlay must colour the photo");
}
