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

/// The shipped model quantized to each block format is read by predict and bench,
/// and gives the same top class as the original on a photo-like image.
#[test]
fn quantized_models_are_written_and_read_by_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let photo = dir.path().join("item.png");
    image::RgbImage::from_fn(160, 120, |x, y| image::Rgb([(x * 3 % 256) as u8, 90 + (y % 60) as u8, 140]))
        .save(&photo)
        .unwrap();
    let predict = |model: &std::path::Path| {
        let out = common::smartbin().arg("predict").arg("--json").arg("--model").arg(model).arg(&photo).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(smartbin::model::DEFAULT_MODEL_PATH);
    let original = predict(&shipped);
    for dtype in ["q8_0", "q4k"] {
        let out_path = dir.path().join(format!("{dtype}.safetensors"));
        let out = common::smartbin()
            .args(["quantize", "--dtype", dtype, "--model"]).arg(&shipped).arg("--out").arg(&out_path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let got = predict(&out_path);
        assert_eq!(got["class"], original["class"], "{dtype}: {got} vs {original}");
        let bench = common::smartbin().args(["bench", "--iters", "2", "--json", "--model"]).arg(&out_path).output().unwrap();
        assert!(bench.status.success(), "{}", String::from_utf8_lossy(&bench.stderr));
    }
    let twice = common::smartbin()
        .args(["quantize", "--dtype", "q4k", "--model"]).arg(dir.path().join("q8_0.safetensors")).arg("--out").arg(dir.path().join("x.safetensors"))
        .output()
        .unwrap();
    assert!(!twice.status.success() && String::from_utf8_lossy(&twice.stderr).contains("already quantized"));
}
