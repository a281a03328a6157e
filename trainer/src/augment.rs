//! Colour augmentation (`fit --colour-augment N`): every training subject is recoloured
//! N times; each copy applies ONE colour transform to all the subject's crops (neutral
//! inputs and expression targets alike), so pairs keep their geometry and their
//! expression change, only the colour distribution moves.
//!
//! The transform is Reinhard-style colour transfer in YCbCr: the subject's per-channel
//! mean/std (central face region of its first neutral crop) are mapped to a reference
//! palette, the statistics of another training subject's face, then pushed further by
//! a random luminance gain (darker and lighter skin, other exposure), a random chroma
//! tint and a random contrast. Since each step is affine per YCbCr channel, the whole
//! transform is one affine map of RGB, clamped to [0,1]. Deterministic for a seed.

use tch::{Kind, Tensor};

use crate::data::Subject;

/// Default seed of the augmentation.
pub const SEED: u64 = 0x5eed_c010;

/// splitmix64: a small deterministic generator (no external crate).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [a, b).
    pub fn uniform(&mut self, a: f64, b: f64) -> f64 {
        a + (b - a) * (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// RGB -> YCbCr (full range, BT.601), as a 3x3 matrix; Cb/Cr centred on 0.
const RGB2YCC: [[f64; 3]; 3] = [
    [0.299, 0.587, 0.114],
    [-0.168_736, -0.331_264, 0.5],
    [0.5, -0.418_688, -0.081_312],
];

fn matrix(m: &[[f64; 3]; 3]) -> Tensor {
    Tensor::from_slice(&m.concat()).view([3, 3])
}

/// Per-channel YCbCr mean and std of the central half of a crop [3,S,S].
pub fn ycc_stats(crop: &Tensor) -> (Vec<f64>, Vec<f64>) {
    let s = crop.size()[2];
    let c = crop
        .narrow(1, s / 4, s / 2)
        .narrow(2, s / 4, s / 2)
        .to_kind(Kind::Double)
        .reshape([3, -1]);
    let ycc = matrix(&RGB2YCC).matmul(&c);
    let mean = Vec::<f64>::try_from(ycc.mean_dim(1, false, Kind::Double)).expect("3 means");
    let std = Vec::<f64>::try_from(ycc.std_dim(1, false, false)).expect("3 stds");
    (mean, std)
}

/// An affine RGB map `y = A x + b` (A [3,3], b [3]).
pub struct ColourMap {
    pub a: Tensor,
    pub b: Tensor,
}

impl ColourMap {
    /// Transfer from the source stats to the target stats in YCbCr, as RGB.
    pub fn transfer(src: &(Vec<f64>, Vec<f64>), dst: &(Vec<f64>, Vec<f64>)) -> Self {
        let scale: Vec<f64> = (0..3)
            .map(|k| (dst.1[k] / src.1[k].max(1e-4)).clamp(0.5, 2.0))
            .collect();
        let m = matrix(&RGB2YCC);
        let inv = m.inverse();
        let d = Tensor::from_slice(&scale).diag(0);
        // ycc' = D (ycc - mu_s) + mu_d ; rgb' = M⁻¹ ycc'
        let a = inv.matmul(&d).matmul(&m);
        let shift = Tensor::from_slice(&dst.0) - d.matmul(&Tensor::from_slice(&src.0));
        let b = inv.matmul(&shift);
        ColourMap { a, b }
    }

    /// Applies to crops [N,3,S,S], clamped to [0,1], in the crops' kind.
    pub fn apply(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let y = x
            .to_kind(Kind::Double)
            .permute([0, 2, 3, 1])
            .matmul(&self.a.tr())
            + &self.b;
        y.permute([0, 3, 1, 2])
            .clamp(0.0, 1.0)
            .to_kind(kind)
            .contiguous()
    }
}

/// A random target palette: a reference subject's stats, then a luminance gain
/// (0.55..1.15), chroma tint (Cb -0.04..0.04, Cr -0.03..0.05) and contrast (0.8..1.2).
pub fn random_palette(rng: &mut Rng, reference: &(Vec<f64>, Vec<f64>)) -> (Vec<f64>, Vec<f64>) {
    let (mut mean, mut std) = reference.clone();
    let gain = rng.uniform(0.55, 1.15);
    mean[0] *= gain;
    mean[1] += rng.uniform(-0.04, 0.04);
    mean[2] += rng.uniform(-0.03, 0.05);
    let contrast = rng.uniform(0.8, 1.2);
    std[0] *= contrast * gain.sqrt();
    (mean, std)
}

/// The subjects followed by `n` recoloured copies of each (names `<subject>~cI`).
pub fn augment(subjects: Vec<Subject>, n: usize, seed: u64) -> Vec<Subject> {
    if n == 0 || subjects.is_empty() {
        return subjects;
    }
    let stats: Vec<_> = subjects
        .iter()
        .map(|s| ycc_stats(&s.neutral.get(0)))
        .collect();
    let mut rng = Rng::new(seed);
    let mut extra = Vec::new();
    for (i, s) in subjects.iter().enumerate() {
        for copy in 1..=n {
            let r = (rng.next_u64() % subjects.len() as u64) as usize;
            let palette = random_palette(&mut rng, &stats[r]);
            let map = ColourMap::transfer(&stats[i], &palette);
            extra.push(Subject {
                name: format!("{}~c{copy}", s.name),
                neutral: map.apply(&s.neutral),
                targets: s
                    .targets
                    .iter()
                    .map(|(e, t)| (e.clone(), map.apply(t)))
                    .collect(),
            });
        }
    }
    println!(
        "colour augmentation: {} subjects + {} recoloured copies (seed {seed:#x})",
        subjects.len(),
        extra.len()
    );
    let mut all = subjects;
    all.extend(extra);
    all
}

/// A preview of the augmentation: the first neutral crop of the subject, recoloured.
pub fn preview_strip(subjects: &[Subject], n: usize, seed: u64) -> Tensor {
    let aug = augment(
        subjects
            .iter()
            .map(|s| Subject {
                name: s.name.clone(),
                neutral: s.neutral.narrow(0, 0, 1),
                targets: Default::default(),
            })
            .collect(),
        n,
        seed,
    );
    let k = subjects.len();
    let rows: Vec<Tensor> = (0..k.min(4))
        .map(|i| {
            let mut row = vec![aug[i].neutral.get(0)];
            row.extend((0..n).map(|c| aug[k + i * n + c].neutral.get(0)));
            Tensor::cat(&row, 2)
        })
        .collect();
    Tensor::cat(&rows, 1)
}
