//! Command-line behaviour that needs no data set.

mod common;

#[test]
fn model_info_prints_the_parameter_count_as_json() {
    let out = common::smartbin()
        .args(["model-info", "--arch", "resnet18", "--att", "ours", "--classes", "6", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let params = info["params"].as_u64().unwrap() as f64 / 1e6;
    assert!((params - 11.24).abs() < 0.01, "{params} M");
}

#[test]
fn a_missing_model_file_is_a_clear_error() {
    let out = common::smartbin()
        .args(["predict", "--model", "/nonexistent/model.safetensors", "x.jpg"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/model.safetensors"), "{err}");
}

#[test]
fn a_bad_config_line_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bin.toml");
    std::fs::write(&config, "[decision]\nframes_per_item = 1\nthreshold = 1.5\n").unwrap();
    let out = common::smartbin().arg("run").arg("--config").arg(&config).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3") && err.contains("threshold"), "{err}");
}

#[test]
fn a_missing_camera_names_the_device_and_what_to_check() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bin.toml");
    std::fs::write(&config, "").unwrap();
    let out = common::smartbin()
        .args(["run", "--source", "camera:/dev/smartbin-no-such-camera", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    if cfg!(all(feature = "camera", target_os = "linux")) {
        assert!(err.contains("/dev/smartbin-no-such-camera") && err.contains("plugged in"), "{err}");
        assert!(err.contains("smartbin cameras"), "{err}");
    } else {
        assert!(err.contains("`camera` feature"), "{err}");
    }
}
