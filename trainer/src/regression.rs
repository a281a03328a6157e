//! Masked regression (MR) and Pixel-RR: closed-form ridge regression of every output
//! pixel on the k x k neighbourhood of the same pixel and channel in the neutral face.
//!
//! For pixel p, channel c: `w = (AᵀA + λD)⁻¹ Aᵀt`, A's rows are the training pairs'
//! neighbourhoods plus a 1 for the bias, D = diag(1, ..., 1, 0) (the bias is not
//! regularised). All 3·S·S systems are built with batched matrix products from
//! shifted copies of the neutral crops and solved by ONE batched `linalg_solve`.
//!
//! Pairs are every (neutral, expression) combination of a subject. Since a neutral
//! crop n of subject s meets each of the m_s targets of s once,
//! `AᵀA = Σ_n m_s(n) F_nᵀF_n` and `Aᵀt = Σ_n F_nᵀ (Σ_t t)`: exactly the pair sums,
//! without materialising the pairs.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

use crate::data::Subject;

/// One expression's layer: weights [3,k²,S,S] and bias [3,S,S] (f32).
#[derive(Debug)]
pub struct Layer {
    pub k: usize,
    pub w: Tensor,
    pub b: Tensor,
}

/// The k² shifted copies of x [N,3,S,S] -> [N,3,k²,S,S], edges replicated; copy
/// j = dy·k + dx holds x[y + dy - k/2, x + dx - k/2]. The ONNX graph does the same.
pub fn shifted(x: &Tensor, k: usize) -> Tensor {
    let r = (k / 2) as i64;
    let s = x.size()[2];
    if k == 1 {
        return x.unsqueeze(2);
    }
    let p = x.replication_pad2d([r, r, r, r]);
    let copies: Vec<Tensor> = (0..k as i64)
        .flat_map(|dy| (0..k as i64).map(move |dx| (dy, dx)))
        .map(|(dy, dx)| p.narrow(2, dy, s).narrow(3, dx, s))
        .collect();
    Tensor::stack(&copies, 2)
}

impl Layer {
    /// The layer's output for faces [N,3,S,S], clipped to [0,1] like the exported graph.
    pub fn apply(&self, x: &Tensor) -> Tensor {
        let x = x.to_kind(self.w.kind());
        let y = (shifted(&x, self.k) * self.w.unsqueeze(0)).sum_dim_intlist(2, false, None)
            + self.b.unsqueeze(0);
        y.clamp(0.0, 1.0)
    }
}

/// Design rows of the training neutrals, batched per pixel: [3·S·S, k²+1, Nn] in f64,
/// plus the subject of each neutral.
pub struct Features {
    pub k: usize,
    pub size: i64,
    f: Tensor,
    owner: Vec<usize>,
}

impl Features {
    pub fn new(subjects: &[Subject], k: usize) -> Self {
        let neutrals: Vec<&Tensor> = subjects.iter().map(|s| &s.neutral).collect();
        let owner = subjects
            .iter()
            .enumerate()
            .flat_map(|(i, s)| std::iter::repeat_n(i, s.neutral.size()[0] as usize))
            .collect();
        let x = Tensor::cat(&neutrals, 0).to_kind(Kind::Double);
        let (n, s) = (x.size()[0], x.size()[2]);
        let feats = shifted(&x, k);
        let ones = Tensor::ones([n, 3, 1, s, s], (Kind::Double, x.device()));
        // [Nn,3,K,S,S] -> [3,S,S,K,Nn] -> [3SS,K,Nn]: one small system per (c, pixel).
        let f = Tensor::cat(&[feats, ones], 2)
            .permute([1, 3, 4, 2, 0])
            .reshape([3 * s * s, (k * k + 1) as i64, n])
            .contiguous();
        Features {
            k,
            size: s,
            f,
            owner,
        }
    }

    /// `AᵀA` [3SS,K,K] and `Aᵀt` [3SS,K,1] over every (neutral, `expression`) pair of
    /// the subjects, and the number of pairs.
    pub fn normal_equations(
        &self,
        subjects: &[Subject],
        expression: &str,
    ) -> (Tensor, Tensor, usize) {
        let s = self.size;
        let zero = Tensor::zeros([3, s, s], (Kind::Double, self.f.device()));
        let (mut counts, mut sums) = (Vec::new(), Vec::new());
        for &i in &self.owner {
            match subjects[i].targets.get(expression) {
                Some(t) => {
                    counts.push(t.size()[0] as f64);
                    sums.push(t.to_kind(Kind::Double).sum_dim_intlist(0, false, None));
                }
                None => {
                    counts.push(0.0);
                    sums.push(zero.shallow_clone());
                }
            }
        }
        let pairs = counts.iter().sum::<f64>() as usize;
        let m = Tensor::from_slice(&counts).to_device(self.f.device());
        // Σ_n m_n F_nᵀF_n as one batched product over pixels.
        let ata = (&self.f * m.view([1, 1, -1])).bmm(&self.f.transpose(1, 2));
        // Target sums per neutral: [Nn,3,S,S] -> [3SS,Nn,1].
        let tsum = Tensor::stack(&sums, 0)
            .permute([1, 2, 3, 0])
            .reshape([3 * s * s, -1, 1]);
        let atb = self.f.bmm(&tsum);
        (ata, atb, pairs)
    }
}

/// Solves all pixels' ridge systems at once and reshapes the result into a layer.
pub fn solve(ata: &Tensor, atb: &Tensor, lambda: f64, k: usize, size: i64) -> Layer {
    let kk = (k * k) as i64;
    let mut reg = vec![lambda; kk as usize];
    reg.push(0.0); // the bias is not regularised
    let d = Tensor::from_slice(&reg).to_device(ata.device()).diag(0);
    let sol = Tensor::linalg_solve(&(ata + d.unsqueeze(0)), atb, true).squeeze_dim(2); // [3SS,K]
    let sol = sol.view([3, size, size, kk + 1]).permute([0, 3, 1, 2]); // [3,K,S,S]
    Layer {
        k,
        w: sol.narrow(1, 0, kk).to_kind(Kind::Float).contiguous(),
        b: sol.select(1, kk).to_kind(Kind::Float).contiguous(),
    }
}

/// Sum of squared errors and number of values over every (neutral, `expression`)
/// pair of the subjects, for a predictor of the neutral crops.
pub fn pair_sse(
    subjects: &[Subject],
    expression: &str,
    predict: impl Fn(&Tensor) -> Tensor,
) -> (f64, f64) {
    let (mut sse, mut count) = (0.0, 0.0);
    for subj in subjects {
        let Some(t) = subj.targets.get(expression) else {
            continue;
        };
        let pred = predict(&subj.neutral).to_kind(Kind::Double);
        let t = t.to_kind(Kind::Double);
        let diff = pred.unsqueeze(1) - t.unsqueeze(0); // [Nn,Nt,3,S,S]
        sse += diff.square().sum(Kind::Double).double_value(&[]);
        count += diff.numel() as f64;
    }
    (sse, count)
}

/// Mean squared error of a layer on every pair of the subjects.
pub fn layer_mse(layer: &Layer, subjects: &[Subject], expression: &str) -> f64 {
    let (sse, n) = pair_sse(subjects, expression, |x| layer.apply(x));
    sse / n
}

/// Mean squared error of returning the neutral face unchanged (the identity baseline).
pub fn identity_mse(subjects: &[Subject], expression: &str) -> f64 {
    let (sse, n) = pair_sse(subjects, expression, |x| x.shallow_clone());
    sse / n
}

/// One fitted layer for one expression (convenience for tests and small data).
pub fn fit_layer(train: &[Subject], expression: &str, k: usize, lambda: f64) -> Result<Layer> {
    let feats = Features::new(train, k);
    let (ata, atb, pairs) = feats.normal_equations(train, expression);
    if pairs == 0 {
        bail!("no training pairs for expression {expression}");
    }
    Ok(solve(&ata, &atb, lambda, k, feats.size))
}

/// Validation MSE for every (k, expression, λ) of the grid.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Sweep {
    pub ks: Vec<usize>,
    pub lambdas: Vec<f64>,
    pub expressions: Vec<String>,
    /// mse[k][expression][lambda]
    pub mse: Vec<Vec<Vec<f64>>>,
}

/// Fits every grid point on `train` and measures it on `val`.
pub fn sweep(
    train: &[Subject],
    val: &[Subject],
    expressions: &[String],
    ks: &[usize],
    lambdas: &[f64],
) -> Sweep {
    let mut mse = Vec::new();
    for &k in ks {
        let feats = Features::new(train, k);
        let per_expr = expressions
            .iter()
            .map(|e| {
                let (ata, atb, _) = feats.normal_equations(train, e);
                lambdas
                    .iter()
                    .map(|&l| layer_mse(&solve(&ata, &atb, l, k, feats.size), val, e))
                    .collect()
            })
            .collect();
        mse.push(per_expr);
    }
    Sweep {
        ks: ks.to_vec(),
        lambdas: lambdas.to_vec(),
        expressions: expressions.to_vec(),
        mse,
    }
}

impl Sweep {
    /// Best λ index per expression for k index `ki`, and the mean of those minima.
    pub fn best_for_k(&self, ki: usize) -> (Vec<usize>, f64) {
        let best: Vec<usize> = self.mse[ki]
            .iter()
            .map(|row| {
                (0..row.len())
                    .min_by(|&a, &b| row[a].total_cmp(&row[b]))
                    .unwrap_or(0)
            })
            .collect();
        let mean = best
            .iter()
            .zip(&self.mse[ki])
            .map(|(&i, row)| row[i])
            .sum::<f64>()
            / best.len().max(1) as f64;
        (best, mean)
    }

    /// One k for the model: the smallest whose mean best error is within `tolerance`
    /// (relative) of the overall best, since a smaller field generalises better and
    /// runs faster. Returns (k index, λ index per expression).
    pub fn choose(&self, tolerance: f64) -> (usize, Vec<usize>) {
        let means: Vec<f64> = (0..self.ks.len()).map(|ki| self.best_for_k(ki).1).collect();
        let best = means.iter().cloned().fold(f64::INFINITY, f64::min);
        let mut order: Vec<usize> = (0..self.ks.len()).collect();
        order.sort_by_key(|&i| self.ks[i]);
        let ki = order
            .into_iter()
            .find(|&i| means[i] <= best * (1.0 + tolerance))
            .unwrap_or(0);
        (ki, self.best_for_k(ki).0)
    }

    /// The table: one row per (k, λ), one column per expression, plus the mean.
    pub fn table(&self) -> String {
        let mut out = format!("{:>3} {:>8}", "k", "lambda");
        for e in &self.expressions {
            out += &format!(" {e:>10}");
        }
        out += &format!(" {:>10}\n", "mean");
        for (ki, k) in self.ks.iter().enumerate() {
            for (li, l) in self.lambdas.iter().enumerate() {
                out += &format!("{k:>3} {l:>8.0e}");
                let vals: Vec<f64> = self.mse[ki].iter().map(|row| row[li]).collect();
                for v in &vals {
                    out += &format!(" {v:>10.6}");
                }
                out += &format!(
                    " {:>10.6}\n",
                    vals.iter().sum::<f64>() / vals.len().max(1) as f64
                );
            }
        }
        out
    }
}

/// Expressions (in the product's order) that have training pairs.
pub fn expressions_present(train: &[Subject]) -> Vec<String> {
    reggan::EXPRESSIONS
        .iter()
        .filter(|e| train.iter().any(|s| s.targets.contains_key(**e)))
        .map(|e| e.to_string())
        .collect()
}

/// The mean of a per-expression map (for summaries).
pub fn mean(m: &BTreeMap<String, f64>) -> f64 {
    m.values().sum::<f64>() / m.len().max(1) as f64
}
