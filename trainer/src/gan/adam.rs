//! Adam whose state (step count, first and second moments) can be saved with a
//! checkpoint and restored, so that `--resume` continues exactly where the run stopped.
//! LibTorch's optimiser behind `tch::nn::Optimizer` keeps its moments out of reach, and
//! a resume that restarts them takes another path than the uninterrupted run.
//!
//! The update is PyTorch's Adam (no weight decay, no AMSGrad):
//! `m = b1 m + (1-b1) g`, `v = b2 v + (1-b2) g²`,
//! `p -= lr / (1-b1^t) * m / (sqrt(v) / sqrt(1-b2^t) + eps)`.

use std::path::Path;

use anyhow::{bail, Context, Result};
use tch::nn::VarStore;
use tch::{Kind, Tensor};

pub struct Adam {
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    step: i64,
    /// (name, parameter, first moment, second moment), sorted by name.
    params: Vec<(String, Tensor, Tensor, Tensor)>,
}

impl Adam {
    /// Adam over the trainable variables of `vs`.
    pub fn new(vs: &VarStore, lr: f64, beta1: f64, beta2: f64) -> Self {
        let mut vars: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let params = vars
            .into_iter()
            .map(|(name, p)| {
                let m = p.zeros_like().detach();
                let v = p.zeros_like().detach();
                (name, p, m, v)
            })
            .collect();
        Adam {
            lr,
            beta1,
            beta2,
            eps: 1e-8,
            step: 0,
            params,
        }
    }

    pub fn zero_grad(&mut self) {
        for (_, p, _, _) in self.params.iter_mut() {
            p.zero_grad();
        }
    }

    pub fn step(&mut self) {
        self.step += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let bias1 = 1.0 - b1.powi(self.step as i32);
        let bias2 = (1.0 - b2.powi(self.step as i32)).sqrt();
        let step_size = self.lr / bias1;
        tch::no_grad(|| {
            for (_, p, m, v) in self.params.iter_mut() {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                m.copy_(&(&*m * b1 + &g * (1.0 - b1)));
                v.copy_(&(&*v * b2 + (&g * &g) * (1.0 - b2)));
                let denom = v.sqrt() / bias2 + self.eps;
                let update = &*m / denom * step_size;
                p.copy_(&(&*p - update));
            }
        });
    }

    /// Writes the step count and the moments (safetensors).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut named: Vec<(String, Tensor)> =
            vec![("step".into(), Tensor::from_slice(&[self.step]))];
        for (name, _, m, v) in &self.params {
            named.push((format!("m.{name}"), m.to_device(tch::Device::Cpu)));
            named.push((format!("v.{name}"), v.to_device(tch::Device::Cpu)));
        }
        Tensor::write_safetensors(&named, path)
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// Restores what [`save`](Self::save) wrote for the same variables.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let saved: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(path)
            .with_context(|| format!("cannot load {}", path.display()))?
            .into_iter()
            .collect();
        let get = |key: &str| {
            saved
                .get(key)
                .with_context(|| format!("{} has no {key}", path.display()))
        };
        let step = get("step")?;
        if step.kind() != Kind::Int64 || step.numel() != 1 {
            bail!("{}: step is not one int64", path.display());
        }
        self.step = step.int64_value(&[0]);
        tch::no_grad(|| -> Result<()> {
            for (name, p, m, v) in self.params.iter_mut() {
                for (moment, key) in [(m, format!("m.{name}")), (v, format!("v.{name}"))] {
                    let t = get(&key)?;
                    if t.size() != p.size() {
                        bail!(
                            "{}: {key} has shape {:?}, the variable {:?}",
                            path.display(),
                            t.size(),
                            p.size()
                        );
                    }
                    moment.copy_(&t.to_device(p.device()));
                }
            }
            Ok(())
        })
    }
}
