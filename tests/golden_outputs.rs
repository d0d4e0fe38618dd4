//! The shipped models give the same probabilities on every build target: a
//! cross-built suite (aarch64 under qemu: NEON GEMM, our kernels compiled for
//! another ISA) is checked against numbers recorded on x86-64.
//!
//! `SMARTBIN_BLESS=1 cargo test --test golden_outputs` rewrites the fixture
//! after a deliberate change to a model or the preprocessing.

use smartbin::model::quant::QuantType;
use std::path::Path;

const FIXTURE: &str = "tests/fixtures/golden_probs.json";
const MODELS: [&str; 2] = ["resnet18-ours-trashnet.safetensors", "efficientnet_lite0-ours-trashnet.safetensors"];
/// f32 sums in another order on another ISA: about 1e-6 apart; a wrong kernel
/// is off by far more.
const TOLERANCE: f32 = 2e-4;
/// Quantized models run different integer kernels per ISA, and x86's VNNI path
/// quantizes activations in 256-blocks where NEON uses 32-blocks: the same weights,
/// activations rounded a little apart. That moves probabilities by up to ~0.02; a
/// broken kernel moves them by tenths, and the top class must not move at all.
const QUANTIZED_TOLERANCE: f32 = 0.04;

/// Every shipped model as shipped and quantized, by fixture key.
fn variants() -> Vec<(String, Option<QuantType>)> {
    let mut all = Vec::new();
    for name in MODELS {
        all.push((name.to_string(), None));
        for q in [QuantType::Q8_0, QuantType::Q4K] {
            all.push((format!("{name}+{q}"), Some(q)));
        }
    }
    all
}

/// Two photos with structure at several scales, so every layer's output matters.
fn photos() -> Vec<image::RgbImage> {
    let stripes = image::RgbImage::from_fn(320, 240, |x, y| {
        image::Rgb([((x * 7) % 256) as u8, ((y * 3 + x) % 256) as u8, (((x / 20 + y / 20) % 2) * 200) as u8])
    });
    let blob = image::RgbImage::from_fn(256, 256, |x, y| {
        let (dx, dy) = (x as f32 - 128.0, y as f32 - 110.0);
        let inside = dx * dx / 4900.0 + dy * dy / 2500.0 < 1.0;
        if inside { image::Rgb([40, 120 + (x % 50) as u8, 60]) } else { image::Rgb([230, 228, 220]) }
    });
    vec![stripes, blob]
}

fn probabilities() -> serde_json::Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let mut all = serde_json::Map::new();
    for (key, quant) in variants() {
        let shipped = root.join("models").join(key.split('+').next().unwrap());
        let path = match quant {
            None => shipped,
            Some(q) => {
                let out = dir.path().join(format!("{q}.safetensors"));
                smartbin::model::checkpoint::quantize(&shipped, &out, q, &[]).unwrap();
                out
            }
        };
        let mut model = smartbin::model::load_classifier(&path, "cpu").unwrap();
        let probs = model.classify(&photos()).unwrap();
        all.insert(key, serde_json::json!(probs));
    }
    serde_json::Value::Object(all)
}

#[test]
fn shipped_models_match_the_recorded_probabilities() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    let got = probabilities();
    if std::env::var_os("SMARTBIN_BLESS").is_some() {
        std::fs::write(&path, serde_json::to_string_pretty(&got).unwrap() + "\n").unwrap();
        eprintln!("wrote {}", path.display());
        return;
    }
    let want: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut failures = Vec::new();
    for (name, quant) in variants() {
        let tolerance = if quant.is_some() { QUANTIZED_TOLERANCE } else { TOLERANCE };
        let rows = |v: &serde_json::Value| -> Vec<Vec<f32>> { serde_json::from_value(v[&name].clone()).unwrap() };
        let (got, want) = (rows(&got), rows(&want));
        assert_eq!(got.len(), want.len(), "{name}: photos");
        for (photo, (g, w)) in got.iter().zip(&want).enumerate() {
            let worst = g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            eprintln!("{name} photo {photo}: largest difference {worst:.2e} (tolerance {tolerance:.0e})");
            if worst > tolerance || argmax(g) != argmax(w) {
                failures.push(format!("{name} photo {photo}: {g:?} vs recorded {w:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn argmax(p: &[f32]) -> usize {
    (0..p.len()).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap()
}
