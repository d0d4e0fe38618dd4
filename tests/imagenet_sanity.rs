//! EfficientNet-Lite0 with the offline ImageNet weights recognises TrashNet's glass
//! photos as bottles: proof that graph, padding and weight import are right.

mod common;

use candle_core::Device;
use smartbin::model::{Arch, AttentionKind, GateMix, ModelSpec, Network};
use std::path::Path;

/// ImageNet classes that are bottles: beer, pill, pop, water, wine bottle.
const BOTTLES: [u32; 5] = [440, 720, 737, 898, 907];

#[test]
fn most_glass_photos_get_a_bottle_class_in_the_top5() {
    let Some(data) = common::trashnet() else { return };
    let weights = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/pretrained/efficientnet-lite0-57934424.pth");
    if !weights.exists() {
        eprintln!("skipping: {} not found", weights.display());
        return;
    }
    let spec = ModelSpec {
        arch: Arch::EfficientnetLite0,
        att: AttentionKind::None,
        att_mix: GateMix::Sum,
        classes: (0..1000).map(|i| i.to_string()).collect(),
        image_size: 224,
    };
    let net = Network::new(spec, &Device::Cpu, 0).unwrap();
    let report = smartbin::training::pretrained::load_pretrained(&net, &weights).unwrap();
    assert!(report.missing.is_empty() && report.new_head.is_empty(), "{report:?}");

    let text = std::fs::read_to_string(data.join("splits/test.txt")).unwrap();
    let glass: Vec<_> = text.lines().filter(|l| l.ends_with(" 1")).map(|l| l.split(' ').next().unwrap().to_string()).collect();
    let mut hits = 0;
    for chunk in glass.chunks(16) {
        let inputs: Vec<Vec<f32>> = chunk
            .iter()
            .map(|f| {
                let img = smartbin::preprocess::decode_file(&data.join("dataset-resized/glass").join(f)).unwrap();
                smartbin::preprocess::eval_transform(&img, 224)
            })
            .collect();
        let x = smartbin::preprocess::to_tensor(&inputs, 224, &Device::Cpu).unwrap();
        let logits = net.forward_t(&x, false).unwrap();
        for row in logits.to_vec2::<f32>().unwrap() {
            let mut order: Vec<u32> = (0..row.len() as u32).collect();
            order.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
            hits += order[..5].iter().any(|c| BOTTLES.contains(c)) as usize;
        }
    }
    let fraction = hits as f64 / glass.len() as f64;
    eprintln!("glass photos with a bottle class in the ImageNet top-5: {hits}/{} ({:.1}%)", glass.len(), 100.0 * fraction);
    assert!(fraction > 0.5, "only {:.1}% of glass photos look like bottles", 100.0 * fraction);
}
