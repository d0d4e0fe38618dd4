//! Candle's graph against PyTorch's. The shipped weights, loaded into the PyTorch
//! twins of our networks (bench/compare.py), gave the logits in
//! tests/fixtures/torch_parity.json (written by tools/make_torch_parity.py), also
//! under the other gate mixes of RecycleNet's module and without attention. Candle
//! must reproduce them to 1e-4.

use candle_core::{Device, Tensor};
use smartbin::model::{checkpoint, ModelSpec, Network};
use std::collections::BTreeMap;
use std::path::Path;

const TOLERANCE: f32 = 1e-4;

/// x[n, c, h, w] = 1.5·sin(0.05·(h·S + w) + 1.3·c + 0.7·n), as the fixture script computes it.
fn input(batch: usize, size: usize) -> Tensor {
    let mut values = Vec::with_capacity(batch * 3 * size * size);
    for n in 0..batch {
        for c in 0..3 {
            for h in 0..size {
                for w in 0..size {
                    values.push((1.5 * (0.05 * (h * size + w) as f64 + 1.3 * c as f64 + 0.7 * n as f64).sin()) as f32);
                }
            }
        }
    }
    Tensor::from_vec(values, (batch, 3, size, size), &Device::Cpu).unwrap()
}

/// The model file's weights in a network of its architecture with `att` and `mix`
/// (weights the variant lacks, e.g. the attention for `none`, are left out).
fn network(path: &Path, att: &serde_json::Value, mix: &serde_json::Value) -> Network {
    let ckpt = checkpoint::read(path, &Device::Cpu).unwrap();
    let mut spec = serde_json::to_value(&ckpt.spec).unwrap();
    spec["att"] = att.clone();
    spec["att_mix"] = mix.clone();
    let spec: ModelSpec = serde_json::from_value(spec).unwrap();
    let network = Network::new(spec, &Device::Cpu, 0).unwrap();
    let params = network.store.params();
    let weights: BTreeMap<String, Tensor> = ckpt.weights.into_iter().filter(|(k, _)| params.contains_key(k)).collect();
    network.store.load(&weights).unwrap();
    network
}

#[test]
fn shipped_weights_give_pytorchs_logits_under_every_attention_variant() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("tests/fixtures/torch_parity.json")).unwrap();
    let fixture: serde_json::Value = serde_json::from_str(&text).unwrap();
    let batch = fixture["batch"].as_u64().unwrap() as usize;
    let mut failures = Vec::new();
    for case in fixture["cases"].as_array().unwrap() {
        let text = |key: &str| case[key].as_str().unwrap().to_string();
        let name = format!("{} {}/{}", text("model"), text("att"), text("att_mix"));
        let net = network(&root.join(text("model")), &case["att"], &case["att_mix"]);
        let size = case["image_size"].as_u64().unwrap() as usize;
        let ours: Vec<Vec<f32>> = net.forward_t(&input(batch, size), false).unwrap().to_vec2().unwrap();
        let theirs: Vec<Vec<f32>> = serde_json::from_value(case["logits"].clone()).unwrap();
        let worst = ours.iter().flatten().zip(theirs.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        println!("{name}: largest logit difference {worst:.2e}");
        if worst > TOLERANCE || ours.len() != theirs.len() {
            failures.push(format!("{name}: {ours:?} vs PyTorch {theirs:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
