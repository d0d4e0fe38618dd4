//! Quantized models keep their accuracy on the TrashNet test split: q8_0 within
//! 0.5 points of the shipped model, q4k (calibrated on training photos) within 2.

mod common;

use std::path::Path;

fn top1(model: &Path, data: &Path) -> f64 {
    let out = common::smartbin()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["eval", "--split", "test", "--json", "--model"]).arg(model)
        .arg("--data").arg(data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["n"], 431);
    report["top1"].as_f64().unwrap()
}

/// Every 27th photo of the training split (65), linked into one folder: what
/// `quantize --calibration` is pointed at. Test photos never calibrate.
fn calibration_dir(data: &Path, dir: &Path) {
    let train = std::fs::read_to_string(data.join("splits/train.txt")).unwrap();
    for line in train.lines().skip(26).step_by(27) {
        let file = line.split_whitespace().next().unwrap();
        let class = file.trim_end_matches(".jpg").trim_end_matches(|c: char| c.is_ascii_digit());
        std::os::unix::fs::symlink(data.join("dataset-resized").join(class).join(file), dir.join(file)).unwrap();
    }
}

fn check(shipped: &str) {
    let Some(data) = common::trashnet() else { return };
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("calibration");
    std::fs::create_dir(&photos).unwrap();
    calibration_dir(&data, &photos);
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(shipped);
    let baseline = top1(&shipped, &data);
    for (dtype, bound) in [("q8_0", 0.5), ("q4k", 2.0)] {
        let out_path = dir.path().join(format!("{dtype}.safetensors"));
        let out = common::smartbin()
            .args(["quantize", "--dtype", dtype, "--calibration"]).arg(&photos)
            .arg("--model").arg(&shipped).arg("--out").arg(&out_path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let got = top1(&out_path, &data);
        eprintln!("{}: f32 {baseline:.2}%, {dtype} {got:.2}%", shipped.display());
        assert!(got >= baseline - bound, "{dtype}: {got:.2}% against {baseline:.2}% unquantized (bound {bound} points)");
    }
}

#[test]
fn quantized_default_model_keeps_its_accuracy() {
    check("resnet18-ours-trashnet.safetensors");
}

#[test]
fn quantized_efficientnet_keeps_its_accuracy() {
    check("efficientnet_lite0-ours-trashnet.safetensors");
}
