//! SGD with momentum and weight decay, exactly as `torch.optim.SGD` defines them
//! (dampening 0, no Nesterov): `g += wd·p; buf = m·buf + g (buf = g at first); p -= lr·buf`.
//! candle-nn's SGD has neither momentum nor weight decay.

use candle_core::{backprop::GradStore, Result, Tensor, Var};
use std::collections::BTreeMap;

#[derive(Debug)]
pub struct Sgd {
    params: Vec<(String, Var)>,
    momentum: f64,
    weight_decay: f64,
    /// Momentum buffers by parameter name; saved in checkpoints.
    buffers: BTreeMap<String, Tensor>,
}

impl Sgd {
    pub fn new(params: Vec<(String, Var)>, momentum: f64, weight_decay: f64) -> Self {
        Self { params, momentum, weight_decay, buffers: BTreeMap::new() }
    }

    /// One update with learning rate `lr`. Parameters without a gradient are left alone
    /// (PyTorch skips them too).
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        for (name, var) in &self.params {
            let Some(grad) = grads.get(var) else { continue };
            let mut g = grad.clone();
            if self.weight_decay != 0.0 {
                g = (g + (var.as_tensor() * self.weight_decay)?)?;
            }
            if self.momentum != 0.0 {
                g = match self.buffers.get(name) {
                    Some(buf) => ((buf * self.momentum)? + g)?,
                    None => g,
                };
                self.buffers.insert(name.clone(), g.detach());
            }
            var.set(&(var.as_tensor() - (g * lr)?)?)?;
        }
        Ok(())
    }

    pub fn state(&self) -> &BTreeMap<String, Tensor> {
        &self.buffers
    }

    /// Restores momentum buffers saved by [`Sgd::state`]; unknown names are ignored
    /// (e.g. a parameter frozen since).
    pub fn load_state(&mut self, buffers: &BTreeMap<String, Tensor>) {
        let names: std::collections::HashSet<&str> = self.params.iter().map(|(n, _)| n.as_str()).collect();
        self.buffers = buffers.iter().filter(|(n, _)| names.contains(n.as_str())).map(|(n, t)| (n.clone(), t.clone())).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Hand-computed against torch.optim.SGD(lr=0.1, momentum=0.9, weight_decay=0.01)
    /// minimising sum(p²)/2 (gradient = p) from p = 1.
    #[test]
    fn matches_pytorch_update_rule() {
        let p = Var::new(&[1.0f32], &Device::Cpu).unwrap();
        let mut sgd = Sgd::new(vec![("p".into(), p.clone())], 0.9, 0.01);
        let mut expected = 1.0f64;
        let mut buf: Option<f64> = None;
        for _ in 0..3 {
            let loss = (p.as_tensor().sqr().unwrap() * 0.5).unwrap().sum_all().unwrap();
            sgd.step(&loss.backward().unwrap(), 0.1).unwrap();
            let g = expected + 0.01 * expected;
            let b = buf.map_or(g, |b| 0.9 * b + g);
            buf = Some(b);
            expected -= 0.1 * b;
        }
        let got = p.as_tensor().to_vec1::<f32>().unwrap()[0] as f64;
        assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
        assert!(sgd.state().contains_key("p"));
    }
}
