//! Where the model looks: RecycleNet's spatial gate, or Grad-CAM on the last stage
//! for models without one.

use super::Network;
use candle_core::{Tensor, Var, D};

/// How the heat map was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    SpatialGate,
    GradCam,
}

/// A heat map over the last feature map (H×W values in 0..=1, row-major).
#[derive(Debug, Clone)]
pub struct HeatMap {
    pub method: Method,
    pub height: usize,
    pub width: usize,
    pub values: Vec<f32>,
}

/// Heat map of one preprocessed image `x` (1, 3, S, S) for class `class`.
pub fn heat_map(network: &Network, x: &Tensor, class: usize) -> anyhow::Result<HeatMap> {
    let stages = 0..network.stage_names().len();
    let features = network.stages_t(x, false, stages)?.detach();
    let (method, map) = match network.attention_map(&features)? {
        Some(g) => (Method::SpatialGate, g.squeeze(0)?.squeeze(0)?),
        None => (Method::GradCam, grad_cam(network, &features, class)?),
    };
    let (height, width) = map.dims2()?;
    Ok(HeatMap { method, height, width, values: normalise(map.flatten_all()?.to_vec1()?) })
}

/// Grad-CAM: channels weighted by the mean gradient of the class logit, summed, ReLU.
fn grad_cam(network: &Network, features: &Tensor, class: usize) -> anyhow::Result<Tensor> {
    let var = Var::from_tensor(features)?;
    let logit = network.head_t(var.as_tensor())?.get(0)?.get(class)?;
    let grads = logit.backward()?;
    let grad = grads.get(&var).ok_or_else(|| anyhow::anyhow!("no gradient reached the feature map"))?;
    let weights = grad.mean_keepdim(D::Minus1)?.mean_keepdim(D::Minus2)?; // (1, C, 1, 1)
    Ok(features.broadcast_mul(&weights)?.sum(1)?.squeeze(0)?.relu()?)
}

/// Stretches values to 0..=1 (all zeros when flat).
fn normalise(values: Vec<f32>) -> Vec<f32> {
    let (lo, hi) = values.iter().fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    let span = hi - lo;
    values.into_iter().map(|v| if span > 1e-12 { (v - lo) / span } else { 0.0 }).collect()
}

/// Blends `map` over `photo` in a blue→red palette (`alpha` = map opacity).
pub fn overlay(photo: &image::RgbImage, map: &HeatMap, alpha: f32) -> image::RgbImage {
    let small = image::ImageBuffer::from_fn(map.width as u32, map.height as u32, |x, y| {
        image::Luma([map.values[y as usize * map.width + x as usize]])
    });
    let (w, h) = photo.dimensions();
    let big: image::ImageBuffer<image::Luma<f32>, Vec<f32>> =
        image::imageops::resize(&small, w, h, image::imageops::FilterType::Triangle);
    image::RgbImage::from_fn(w, h, |x, y| {
        let heat = palette(big.get_pixel(x, y).0[0]);
        let p = photo.get_pixel(x, y).0;
        image::Rgb(std::array::from_fn(|i| (p[i] as f32 * (1.0 - alpha) + heat[i] * alpha).round() as u8))
    })
}

/// A simple "jet"-like palette: 0 blue, 0.5 green, 1 red.
fn palette(v: f32) -> [f32; 3] {
    let v = v.clamp(0.0, 1.0);
    let ramp = |c: f32| (1.5 - (4.0 * v - c).abs()).clamp(0.0, 1.0) * 255.0;
    [ramp(3.0), ramp(2.0), ramp(1.0)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Arch, AttentionKind, GateMix, ModelSpec};
    use candle_core::Device;

    fn net(att: AttentionKind) -> Network {
        let spec = ModelSpec { arch: Arch::Resnet18, att, att_mix: GateMix::Sum, classes: vec!["a".into(), "b".into()], image_size: 64 };
        Network::new(spec, &Device::Cpu, 2).unwrap()
    }

    #[test]
    fn ours_uses_its_spatial_gate_others_grad_cam() {
        let x = Tensor::randn(0f32, 1.0, (1, 3, 64, 64), &Device::Cpu).unwrap();
        let m = heat_map(&net(AttentionKind::Ours), &x, 1).unwrap();
        assert_eq!((m.method, m.height, m.width), (Method::SpatialGate, 2, 2));
        let g = heat_map(&net(AttentionKind::None), &x, 0).unwrap();
        assert_eq!(g.method, Method::GradCam);
        for v in m.values.iter().chain(&g.values) {
            assert!((0.0..=1.0).contains(v));
        }
    }

    #[test]
    fn overlay_keeps_the_photo_size_and_colours_hot_spots_red() {
        let photo = image::RgbImage::from_pixel(40, 30, image::Rgb([128, 128, 128]));
        let map = HeatMap { method: Method::GradCam, height: 1, width: 2, values: vec![0.0, 1.0] };
        let out = overlay(&photo, &map, 0.6);
        assert_eq!(out.dimensions(), (40, 30));
        let (left, right) = (out.get_pixel(0, 15).0, out.get_pixel(39, 15).0);
        assert!(left[2] > left[0] && right[0] > right[2], "{left:?} {right:?}");
    }
}
