//! Training on a tiny synthetic TrashNet: checkpoints, resume, evaluation.

mod common;

use candle_core::Device;
use smartbin::model::{Arch, AttentionKind, GateMix};
use smartbin::training::{TrainConfig, Trainer};

fn config(data: &std::path::Path, save: &std::path::Path, epochs: usize) -> TrainConfig {
    TrainConfig {
        arch: Arch::Resnet18,
        att: AttentionKind::Ours,
        att_mix: GateMix::Sum,
        epochs,
        batch_size: 4,
        lr: 0.01,
        momentum: 0.9,
        weight_decay: 1e-4,
        lr_step: 2,
        seed: 7,
        image_size: 32,
        min_crop_scale: 0.08,
        data: data.into(),
        save_dir: save.into(),
        limit: None,
        pretrained: None,
        freeze: Default::default(),
        feature_views: 8,
        feature_cache: None,
    }
}

#[test]
fn resumed_run_repeats_the_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("trashnet");
    common::fake_trashnet(&data, 6);

    let straight = dir.path().join("straight");
    let mut t = Trainer::new(config(&data, &straight, 3), &Device::Cpu, None).unwrap();
    let full = t.run().unwrap().history.clone();

    let split = dir.path().join("split");
    Trainer::new(config(&data, &split, 1), &Device::Cpu, None).unwrap().run().unwrap();
    let ckpt = split.join("checkpoint.safetensors");
    let mut resumed = Trainer::new(config(&data, &split, 3), &Device::Cpu, Some(&ckpt)).unwrap();
    let rest = resumed.run().unwrap().history.clone();

    assert_eq!(full.len(), 3);
    assert_eq!(rest.len(), 3, "history carries over the first epoch");
    for (a, b) in full.iter().zip(&rest) {
        assert!((a.train_loss - b.train_loss).abs() < 1e-4, "epoch {}: {} vs {}", a.epoch, a.train_loss, b.train_loss);
        assert!((a.val_loss - b.val_loss).abs() < 1e-4, "epoch {}: val {} vs {}", a.epoch, a.val_loss, b.val_loss);
    }
    for f in ["checkpoint.safetensors", "model_best.safetensors", "metrics.csv"] {
        assert!(split.join(f).exists(), "{f} missing");
    }
    let csv = std::fs::read_to_string(split.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "header + one line per epoch:\n{csv}");
    // No temp files left behind by the atomic writes.
    assert!(std::fs::read_dir(&split).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".tmp")));
}

#[test]
fn train_then_eval_and_predict_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("trashnet");
    common::fake_trashnet(&data, 6);
    let save = dir.path().join("save");
    let out = common::smartbin()
        .args(["train", "--epochs", "2", "--image-size", "32", "--batch-size", "4", "--lr", "0.01", "--no-pretrain"])
        .arg("--data").arg(&data).arg("--save-dir").arg(&save)
        .output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let model = save.join("model_best.safetensors");

    let out = common::smartbin().args(["eval", "--split", "test", "--json"])
        .arg("--model").arg(&model).arg("--data").arg(&data).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["n"], 12);
    let confusion: Vec<Vec<u64>> = serde_json::from_value(report["confusion"].clone()).unwrap();
    assert_eq!(confusion.len(), 6);
    let (total, correct): (u64, u64) = (confusion.iter().flatten().sum(), (0..6).map(|i| confusion[i][i]).sum());
    assert_eq!(total, 12);
    assert!((report["top1"].as_f64().unwrap() - 100.0 * correct as f64 / 12.0).abs() < 1e-9);
    assert!(report["per_class"]["glass"].is_number());

    // predict: one good image, one corrupt: the good one is still classified, exit non-zero.
    let bad = dir.path().join("bad.jpg");
    std::fs::write(&bad, b"\xff\xd8\xff not really a jpeg").unwrap();
    let good = data.join("dataset-resized/glass/glass1.jpg");
    let out = common::smartbin().args(["predict", "--json"]).arg("--model").arg(&model)
        .arg(&good).arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0]["class"].is_string() && lines[0]["top3"].as_array().unwrap().len() == 3);
    assert!(lines[1]["error"].is_string());
}

/// Whether training changed parameter `name` (a fresh network with the run's seed
/// holds the starting weights).
fn moved_from_start(t: &Trainer, name: &str) -> bool {
    let fresh = smartbin::model::Network::new(t.network.spec.clone(), &Device::Cpu, 7).unwrap().store.params();
    let values = |p: &smartbin::model::params::Param| p.var.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    values(&fresh[name]) != values(&t.network.store.params()[name])
}

#[test]
fn frozen_backbone_trains_only_the_head_on_cached_features() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("trashnet");
    common::fake_trashnet(&data, 6);
    let mut c = config(&data, &dir.path().join("frozen"), 2);
    c.arch = Arch::EfficientnetLite0;
    c.freeze = smartbin::training::freeze::Freeze::Backbone;
    c.feature_views = 2;
    let mut t = Trainer::new(c, &Device::Cpu, None).unwrap();
    let history = t.run().unwrap().history.clone();
    assert_eq!(history.len(), 2);
    let unchanged = |name: &str| !moved_from_start(&t, name);
    assert!(unchanged("_conv_stem.weight") && unchanged("_blocks.3._bn1.running_mean"), "trunk must not move");
    assert!(!unchanged("_fc.weight") && !unchanged("att.spatial.weight"), "head and attention must learn");

    // A second run with another head reuses the cached trunk features file.
    let cache = dir.path().join("frozen/features.safetensors");
    let written = std::fs::metadata(&cache).unwrap().modified().unwrap();
    let mut c2 = config(&data, &dir.path().join("other-head"), 1);
    c2.arch = Arch::EfficientnetLite0;
    c2.att = AttentionKind::None;
    c2.freeze = smartbin::training::freeze::Freeze::Backbone;
    c2.feature_views = 2;
    c2.feature_cache = Some(cache.clone());
    Trainer::new(c2, &Device::Cpu, None).unwrap().run().unwrap();
    assert_eq!(std::fs::metadata(&cache).unwrap().modified().unwrap(), written, "cache reused, not rewritten");
}

#[test]
fn partly_frozen_trunk_trains_the_rest_on_cached_stage_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("trashnet");
    common::fake_trashnet(&data, 6);
    let mut c = config(&data, &dir.path().join("partial"), 1);
    c.arch = Arch::EfficientnetLite0;
    c.freeze = smartbin::training::freeze::Freeze::Until("stage6".into());
    c.feature_views = 2;
    let mut t = Trainer::new(c, &Device::Cpu, None).unwrap();
    t.run().unwrap();
    assert!(dir.path().join("partial/features.safetensors").exists());
    let moved = |name: &str| moved_from_start(&t, name);
    assert!(!moved("_blocks.14._project_conv.weight") && !moved("_blocks.14._bn2.running_mean"), "stage 6 is frozen");
    assert!(moved("_blocks.15._project_conv.weight") && moved("_blocks.15._bn2.running_mean") && moved("_fc.weight"));
}
