//! Restoration pretraining of RegGAN's refinement network.
//!
//! The paper pretrains the refinement network on FFHQ before fine-tuning it on the
//! expression layer's outputs. FFHQ cannot be obtained here, so the network first
//! learns to restore face crops we do have (every crop of the training subjects, all
//! expressions, mirrored and recoloured) from a *regression-like* degradation: what the
//! expression layer does to a face is, roughly, a local low-pass (each output pixel is a
//! ridge-regressed mix of a k×k neighbourhood) pulled towards the training population's
//! mean (the bias term and the shrinkage of λ). So the degraded crop is
//!
//! ```text
//! d(x) = a · blur_σ(x) + (1 − a) · blur_σ(mean face) + noise,  σ ∈ [0.6, 2], a ∈ [0.7, 1]
//! ```
//!
//! and the network, which starts as the identity, learns to undo it: to put back edges,
//! eyes and teeth detail. Validation subjects are never used.

use tch::{Kind, Tensor};

use super::train::Rng;
use crate::augment;
use crate::data::Subject;

/// Ranges of the degradation's parameters (sampled uniformly per crop).
pub const SIGMA: (f64, f64) = (0.6, 2.0);
pub const KEEP: (f64, f64) = (0.7, 1.0);
pub const NOISE_STD: f64 = 0.01;
/// Recoloured copies of every subject added to the restoration crops.
pub const COLOUR_COPIES: usize = 2;

/// Normalised 1-D Gaussian taps, radius ⌈3σ⌉.
pub fn gaussian_taps(sigma: f64) -> Vec<f32> {
    let r = (3.0 * sigma).ceil().max(1.0) as i64;
    let taps: Vec<f64> = (-r..=r)
        .map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f64 = taps.iter().sum();
    taps.iter().map(|t| (t / sum) as f32).collect()
}

/// Separable Gaussian blur of [N,C,H,W] with reflected borders (so a flat image stays
/// flat and the face's edge is not darkened).
pub fn gaussian_blur(x: &Tensor, sigma: f64) -> Tensor {
    let taps = gaussian_taps(sigma);
    let r = (taps.len() / 2) as i64;
    let c = x.size()[1];
    let k = Tensor::from_slice(&taps).to_device(x.device());
    let kh = k.view([1, 1, 1, -1]).repeat([c, 1, 1, 1]);
    let kv = k.view([1, 1, -1, 1]).repeat([c, 1, 1, 1]);
    let h = x
        .reflection_pad2d([r, r, 0, 0])
        .conv2d(&kh, None::<Tensor>, [1, 1], [0, 0], [1, 1], c);
    h.reflection_pad2d([0, 0, r, r])
        .conv2d(&kv, None::<Tensor>, [1, 1], [0, 0], [1, 1], c)
}

/// Clean crops to restore and the population mean face they are degraded towards.
pub struct Restoration {
    /// [M,3,S,S]
    pub crops: Tensor,
    /// [1,3,S,S]
    pub mean_face: Tensor,
}

impl Restoration {
    /// Every crop (neutral and all expressions) of `subjects` plus `COLOUR_COPIES`
    /// recoloured copies of each subject, plus `extra` crops [M,3,S,S] (unpaired faces).
    pub fn new(subjects: &[Subject], extra: Option<&Tensor>, seed: u64) -> Self {
        let copies = subjects
            .iter()
            .map(|s| Subject {
                name: s.name.clone(),
                neutral: s.neutral.shallow_clone(),
                targets: s
                    .targets
                    .iter()
                    .map(|(e, t)| (e.clone(), t.shallow_clone()))
                    .collect(),
            })
            .collect();
        let recoloured = augment::augment(copies, COLOUR_COPIES, seed);
        let mut all: Vec<Tensor> = Vec::new();
        for s in &recoloured {
            all.push(s.neutral.shallow_clone());
            all.extend(s.targets.values().map(|t| t.shallow_clone()));
        }
        all.extend(extra.map(|e| e.shallow_clone()));
        let crops = Tensor::cat(&all, 0).to_kind(Kind::Float);
        let mean_face = crops.mean_dim(0, true, Kind::Float);
        Restoration { crops, mean_face }
    }

    pub fn len(&self) -> i64 {
        self.crops.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `b` random crops, each mirrored with probability ½.
    pub fn sample(&self, b: i64, rng: &mut Rng) -> Tensor {
        let xs: Vec<Tensor> = (0..b)
            .map(|_| {
                let x = self.crops.get(rng.below(self.len() as usize) as i64);
                if rng.next_u64() & 1 == 1 {
                    x.flip([2])
                } else {
                    x
                }
            })
            .collect();
        Tensor::stack(&xs, 0)
    }

    /// The regression-like degradation of each crop of `x` [N,3,S,S] (parameters drawn
    /// per crop from `rng`; the noise from tch's generator, seeded per step).
    pub fn degrade(&self, x: &Tensor, rng: &mut Rng) -> Tensor {
        let dev = x.device();
        let mean = self.mean_face.to_device(dev);
        let out: Vec<Tensor> = x
            .unbind(0)
            .iter()
            .map(|xi| {
                let sigma = rng.uniform(SIGMA.0, SIGMA.1);
                let keep = rng.uniform(KEEP.0, KEEP.1);
                let both = gaussian_blur(
                    &Tensor::cat(&[xi.unsqueeze(0), mean.shallow_clone()], 0),
                    sigma,
                );
                both.get(0) * keep + both.get(1) * (1.0 - keep)
            })
            .collect();
        let d = Tensor::stack(&out, 0);
        let noise = Tensor::randn(d.size(), (Kind::Float, dev)) * NOISE_STD;
        (d + noise).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::metrics::laplacian_variance;
    use std::collections::BTreeMap;
    use tch::Device;

    fn checker(s: i64) -> Tensor {
        let i = Tensor::arange(s, (Kind::Float, Device::Cpu));
        let row = (i.divide_scalar_mode(4.0, "floor").remainder(2.0)).view([1, s]);
        let col = row.view([s, 1]);
        let c = (&row - &col).abs();
        c.unsqueeze(0).repeat([3, 1, 1]).unsqueeze(0)
    }

    #[test]
    fn taps_are_a_normalised_gaussian() {
        let t = gaussian_taps(1.5);
        assert_eq!(t.len(), 11);
        let sum: f32 = t.iter().sum();
        assert!((sum - 1.0).abs() < 1e-6);
        // Symmetric, peaked in the middle, ratio of neighbours exp(-1/(2σ²)).
        assert!((t[0] - t[10]).abs() < 1e-9);
        let expected = (-1.0f64 / (2.0 * 1.5 * 1.5)).exp() as f32;
        assert!((t[4] / t[5] - expected).abs() < 1e-5);
    }

    #[test]
    fn blur_keeps_flat_images_and_softens_edges() {
        let flat = Tensor::full([1, 3, 32, 32], 0.3, (Kind::Float, Device::Cpu));
        let b = gaussian_blur(&flat, 1.7);
        assert_eq!(b.size(), vec![1, 3, 32, 32]);
        assert!((b - 0.3).abs().max().double_value(&[]) < 1e-6);
        let c = checker(64);
        let lv = |x: &Tensor| laplacian_variance(x).double_value(&[0]);
        let (s0, s1, s2) = (
            lv(&c),
            lv(&gaussian_blur(&c, 0.8)),
            lv(&gaussian_blur(&c, 2.0)),
        );
        assert!(s1 < 0.5 * s0 && s2 < 0.2 * s1, "{s0} {s1} {s2}");
        // Mass is kept (reflection borders): the mean hardly moves.
        let dm = (gaussian_blur(&c, 2.0).mean(Kind::Float) - c.mean(Kind::Float)).abs();
        assert!(dm.double_value(&[]) < 0.01);
    }

    fn subjects() -> Vec<Subject> {
        (0..3)
            .map(|i| {
                let base = checker(32) * (0.5 + 0.1 * i as f64);
                Subject {
                    name: format!("s{i}"),
                    neutral: base.shallow_clone(),
                    targets: BTreeMap::from([("happy".to_string(), base.flip([3]))]),
                }
            })
            .collect()
    }

    #[test]
    fn crops_cover_every_image_and_recoloured_copies() {
        let r = Restoration::new(&subjects(), None, 7);
        // 3 subjects × (1 + COLOUR_COPIES) × (neutral + happy).
        assert_eq!(r.len(), 3 * (1 + COLOUR_COPIES as i64) * 2);
        assert_eq!(r.mean_face.size(), vec![1, 3, 32, 32]);
        let s = r.sample(5, &mut Rng::new(3));
        assert_eq!(s.size(), vec![5, 3, 32, 32]);
    }

    #[test]
    fn degradation_blurs_pulls_to_the_mean_and_is_deterministic() {
        let r = Restoration::new(&subjects(), None, 7);
        let x = r.sample(4, &mut Rng::new(1));
        tch::manual_seed(5);
        let d1 = r.degrade(&x, &mut Rng::new(9));
        tch::manual_seed(5);
        let d2 = r.degrade(&x, &mut Rng::new(9));
        assert_eq!(d1.size(), x.size());
        assert!((&d1 - &d2).abs().max().double_value(&[]) == 0.0);
        assert!(d1.min().double_value(&[]) >= 0.0 && d1.max().double_value(&[]) <= 1.0);
        let ratio = (laplacian_variance(&d1) / laplacian_variance(&x)).max();
        assert!(
            ratio.double_value(&[]) < 0.6,
            "degraded crops must be blurrier"
        );
    }
}
