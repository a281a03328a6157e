//! Pixel-KR: per output pixel p and channel c, Gaussian-kernel ridge regression on the
//! same pixel and channel of the neutral face (pixel-regression paper, eqs. 7-16):
//! `y = Σ_n c_p,n · exp(-(x - x_p,n)² / 2σ²)`, `c_p = t_p (K_p + λI)⁻¹`.
//!
//! Centres. The training pairs are every (neutral, expression) combination of a
//! subject, so a neutral crop n appears in m_n pairs with the same input value. The
//! kernel ridge objective over all pairs, `Σ_n Σ_{j of n} (f(x_n) - t_j)² + λ‖f‖²`,
//! equals (up to a constant) the weighted objective over the distinct neutrals with
//! the mean targets t̄_n, whose solution is `(K + λ·diag(1/m_n)) c = t̄`. So the
//! centres are M training neutral crops (all of them, or M chosen deterministically,
//! evenly spaced in subject order), shared by every expression; a neutral whose
//! subject has no target for an expression gets c_n = 0 for it. Every pixel's M x M
//! system is solved in ONE batched `linalg_solve` per channel ([S·S, M, M], f64).
//!
//! σ is on the [0,1] pixel scale (the paper's σ = 3 and 10 on 0..255 are 0.012 and
//! 0.039 here); σ and λ are cross-validated per expression on the validation subjects.
//!
//! On disk: `kr.safetensors` (x [3,M,S,S] centres, c [E,3,M,S,S] coefficients,
//! g [E] = -1/(2σ²)) + `meta.json` ([`KrMeta`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::GraphProto;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::data::Subject;
use crate::onnx_export::{
    attr_int, initializer, int64s, model_of, node, scalar_f32, stored, value_info, write_model,
};
use crate::regression::pair_sse;
use crate::weights::Meta;

/// σ grid of the sweep ([0,1] pixel scale).
pub const SIGMAS: [f64; 5] = [0.02, 0.05, 0.1, 0.2, 0.5];
/// λ grid of the sweep (on the objective summed over pairs, like the paper's λ = 0.4).
pub const LAMBDAS: [f64; 4] = [1e-2, 0.1, 0.4, 1.0];
/// Default number of centres (kernel samples per pixel).
pub const DEFAULT_CENTRES: usize = 32;

/// The training data of a Pixel-KR fit: centres and, per expression, mean targets.
pub struct KrData {
    /// [M,3,S,S] f64: the centre neutral crops.
    pub centres: Tensor,
    /// expression -> ([M,3,S,S] mean target per centre, m_n pairs per centre)
    pub targets: BTreeMap<String, (Tensor, Vec<f64>)>,
    /// The subject of each centre.
    pub owners: Vec<String>,
}

/// Indices 0..n, `m` of them evenly spaced (all when m >= n).
pub fn spread(n: usize, m: usize) -> Vec<usize> {
    if m >= n {
        return (0..n).collect();
    }
    (0..m).map(|i| i * n / m).collect()
}

impl KrData {
    pub fn new(train: &[Subject], expressions: &[String], m: usize) -> Self {
        let all: Vec<(usize, i64)> = train
            .iter()
            .enumerate()
            .flat_map(|(s, sub)| (0..sub.neutral.size()[0]).map(move |j| (s, j)))
            .collect();
        let chosen: Vec<(usize, i64)> = spread(all.len(), m).into_iter().map(|i| all[i]).collect();
        let centres = Tensor::stack(
            &chosen
                .iter()
                .map(|&(s, j)| train[s].neutral.get(j))
                .collect::<Vec<_>>(),
            0,
        )
        .to_kind(Kind::Double);
        let zero = centres.get(0).zeros_like();
        let targets = expressions
            .iter()
            .map(|e| {
                let (means, counts): (Vec<Tensor>, Vec<f64>) = chosen
                    .iter()
                    .map(|&(s, _)| match train[s].targets.get(e) {
                        Some(t) => (
                            t.to_kind(Kind::Double).mean_dim(0, false, Kind::Double),
                            t.size()[0] as f64,
                        ),
                        None => (zero.shallow_clone(), 0.0),
                    })
                    .unzip();
                (e.clone(), (Tensor::stack(&means, 0), counts))
            })
            .collect();
        KrData {
            centres,
            targets,
            owners: chosen.iter().map(|&(s, _)| train[s].name.clone()).collect(),
        }
    }

    pub fn m(&self) -> i64 {
        self.centres.size()[0]
    }
}

/// The Gaussian kernel matrices of every pixel, per channel: 3 x [S·S, M, M] (f64),
/// for centres x [M,3,S,S].
pub fn kernels(x: &Tensor, sigma: f64) -> Vec<Tensor> {
    let (m, s) = (x.size()[0], x.size()[2]);
    (0..3)
        .map(|c| {
            let xc = x
                .select(1, c)
                .reshape([m, s * s])
                .transpose(0, 1)
                .to_kind(Kind::Double);
            let diff = xc.unsqueeze(2) - xc.unsqueeze(1); // [SS,M,M]
            (diff.square() * (-0.5 / (sigma * sigma))).exp()
        })
        .collect()
}

/// Solves the weighted kernel ridge systems of every pixel and channel, given the
/// kernels ([`kernels`]), mean targets t [M,3,S,S] and pair counts m_n (0 = no
/// target: c_n = 0). Returns c [3,M,S,S] (f64).
pub fn solve_with(k: &[Tensor], t: &Tensor, counts: &[f64], lambda: f64) -> Tensor {
    let (m, s) = (t.size()[0], t.size()[2]);
    let dev = t.device();
    let present: Vec<f64> = counts
        .iter()
        .map(|&n| if n > 0.0 { 1.0 } else { 0.0 })
        .collect();
    let diag: Vec<f64> = counts
        .iter()
        .map(|&n| if n > 0.0 { lambda / n } else { 1.0 })
        .collect();
    let a = Tensor::from_slice(&present).to_device(dev);
    let all = present.iter().all(|&p| p > 0.0);
    let d = Tensor::from_slice(&diag).to_device(dev).diag(0);
    let out: Vec<Tensor> = (0..3)
        .map(|c| {
            let tc = t
                .select(1, c as i64)
                .reshape([m, s * s])
                .transpose(0, 1)
                .to_kind(Kind::Double);
            let sys = if all {
                &k[c] + &d
            } else {
                &k[c] * (a.unsqueeze(1) * a.unsqueeze(0)) + &d
            };
            let rhs = (tc * &a).unsqueeze(2); // [SS,M,1]
            let sol = Tensor::linalg_solve(&sys, &rhs, true).squeeze_dim(2); // [SS,M]
            sol.transpose(0, 1).reshape([m, s, s])
        })
        .collect();
    Tensor::stack(&out, 0) // [3,M,S,S]
}

/// [`kernels`] + [`solve_with`] for one (σ, λ): centres x [M,3,S,S] -> c [3,M,S,S].
pub fn solve_kr(x: &Tensor, t: &Tensor, counts: &[f64], sigma: f64, lambda: f64) -> Tensor {
    solve_with(&kernels(x, sigma), t, counts, lambda)
}

/// The model's output for faces [N,3,S,S]: centres x [3,M,S,S], coefficients
/// c [3,M,S,S], g = -1/(2σ²); clipped to [0,1]. Same arithmetic as the ONNX graph.
pub fn predict(faces: &Tensor, x: &Tensor, c: &Tensor, g: f64) -> Tensor {
    let kind = c.kind();
    let mut outs = Vec::new();
    for chunk in faces.split(8, 0) {
        let d = chunk.to_kind(kind).unsqueeze(2) - x.to_kind(kind).unsqueeze(0); // [n,3,M,S,S]
        let k = (&d * &d * g).exp();
        outs.push(
            (k * c.unsqueeze(0))
                .sum_dim_intlist(2, false, None)
                .clamp(0.0, 1.0),
        );
    }
    Tensor::cat(&outs, 0)
}

/// Per-face expressions, like the graph: gather c and g by expression.
pub fn forward(faces: &Tensor, x: &Tensor, c: &Tensor, g: &Tensor, expressions: &[i64]) -> Tensor {
    let ys: Vec<Tensor> = expressions
        .iter()
        .enumerate()
        .map(|(i, &e)| {
            predict(
                &faces.narrow(0, i as i64, 1),
                x,
                &c.get(e),
                g.double_value(&[e]),
            )
        })
        .collect();
    Tensor::cat(&ys, 0)
}

/// Validation MSE of one (σ, λ) for one expression.
pub fn val_mse(x: &Tensor, c: &Tensor, sigma: f64, val: &[Subject], expression: &str) -> f64 {
    let g = -0.5 / (sigma * sigma);
    let (xf, cf) = (x.to_kind(Kind::Float), c.to_kind(Kind::Float));
    let (sse, n) = pair_sse(val, expression, |faces| predict(faces, &xf, &cf, g));
    sse / n
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KrMeta {
    /// The common fields (method "pixel-kr", k = 1, lambda per expression, MSE, ...).
    #[serde(flatten)]
    pub meta: Meta,
    pub centres: usize,
    pub centre_subjects: Vec<String>,
    pub sigma: BTreeMap<String, f64>,
    /// (expression, σ, λ, validation MSE) for every grid point.
    pub kr_sweep: Vec<(String, f64, f64, f64)>,
}

pub struct KrWeights {
    pub meta: KrMeta,
    /// [3,M,S,S] f32
    pub x: Tensor,
    /// [E,3,M,S,S] f32
    pub c: Tensor,
    /// [E] f32: -1/(2σ²)
    pub g: Tensor,
}

impl KrWeights {
    pub fn save(&self, dir: &Path) -> Result<()> {
        crate::weights::write_folder(
            dir,
            "kr.safetensors",
            &self.meta,
            &[("x", &self.x), ("c", &self.c), ("g", &self.g)],
        )
    }

    /// Is `dir` a Pixel-KR weights folder?
    pub fn is_kr(dir: &Path) -> bool {
        dir.join("kr.safetensors").is_file()
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let (meta, t): (KrMeta, _) =
            crate::weights::read_folder(dir, "kr.safetensors", &["x", "c", "g"])?;
        let (x, c, g) = (
            t[0].shallow_clone(),
            t[1].shallow_clone(),
            t[2].shallow_clone(),
        );
        let (e, m, s) = (
            meta.meta.expressions.len() as i64,
            meta.centres as i64,
            meta.meta.crop_size as i64,
        );
        if x.size() != [3, m, s, s] || c.size() != [e, 3, m, s, s] || g.size() != [e] {
            bail!(
                "Pixel-KR tensors have shapes {:?} {:?} {:?}; meta.json says E={e}, M={m}, S={s}",
                x.size(),
                c.size(),
                g.size()
            );
        }
        Ok(KrWeights { meta, x, c, g })
    }
}

/// Fits Pixel-KR for every expression: σ x λ sweep on the validation subjects, then
/// the chosen point (training subjects only; validation stays held out).
#[allow(clippy::too_many_arguments)]
pub fn fit(
    train: &[Subject],
    val: &[Subject],
    expressions: &[String],
    centres: usize,
    sigmas: &[f64],
    lambdas: &[f64],
    mut meta: Meta,
) -> Result<KrWeights> {
    let t0 = Instant::now();
    let data = KrData::new(train, expressions, centres);
    let m = data.m();
    // [3,M,S,S]: the layout of the predictor and the graph.
    let xc = data.centres.transpose(0, 1).contiguous();
    println!(
        "Pixel-KR: {m} centres (training neutral crops) x 3 x {s}x{s} pixels; grid {} sigma x {} lambda",
        sigmas.len(),
        lambdas.len(),
        s = meta.crop_size
    );
    let mut sweep = Vec::new();
    let mut best: BTreeMap<String, (f64, f64, f64)> = BTreeMap::new();
    let mut cs = Vec::new();
    let mut gs = Vec::new();
    meta.method = "pixel-kr".into();
    meta.k = 1;
    meta.sweep = None;
    let mut sigma_of = BTreeMap::new();
    for e in expressions {
        if data.targets[e].1.iter().all(|&n| n == 0.0) {
            bail!("no training pairs for {e} among the centres");
        }
    }
    // Sweep: the kernels depend on σ only, so build them once per σ.
    let ts = Instant::now();
    for &sg in sigmas {
        let k = kernels(&data.centres, sg);
        for e in expressions {
            let (t, counts) = &data.targets[e];
            let mut row = String::new();
            for &l in lambdas {
                let c = solve_with(&k, t, counts, l);
                let mse = val_mse(&xc, &c, sg, val, e);
                row += &format!(" {mse:.6}");
                sweep.push((e.clone(), sg, l, mse));
                if best.get(e).is_none_or(|b| mse < b.2) {
                    best.insert(e.clone(), (sg, l, mse));
                }
            }
            println!("  sigma {sg:<5} {e:<10} lambda {lambdas:?}:{row}");
        }
        println!("  ({:.0} s)", ts.elapsed().as_secs_f64());
    }
    for e in expressions {
        let (t, counts) = &data.targets[e];
        let (sg, l, mse) = best[e];
        let t1 = Instant::now();
        let c = solve_kr(&data.centres, t, counts, sg, l);
        let fit_s = t1.elapsed().as_secs_f64();
        let id = crate::regression::identity_mse(val, e);
        println!(
            "{e:<10} sigma {sg} lambda {l}: val MSE {mse:.6} (identity {id:.6}, ratio {:.3}); final fit {fit_s:.2} s",
            mse / id
        );
        meta.lambda.insert(e.clone(), l);
        meta.val_mse.insert(e.clone(), mse);
        meta.identity_mse.insert(e.clone(), id);
        meta.fit_seconds.insert(e.clone(), fit_s);
        sigma_of.insert(e.clone(), sg);
        cs.push(c.to_kind(Kind::Float));
        gs.push(-0.5 / (sg * sg));
    }
    println!("Pixel-KR fit: {:.1} s in all", t0.elapsed().as_secs_f64());
    Ok(KrWeights {
        meta: KrMeta {
            meta,
            centres: m as usize,
            centre_subjects: data.owners.clone(),
            sigma: sigma_of,
            kr_sweep: sweep,
        },
        x: xc.to_kind(Kind::Float),
        c: Tensor::stack(&cs, 0),
        g: Tensor::from_slice(&gs).to_kind(Kind::Float),
    })
}

/// The ONNX graph: Unsqueeze the face, Sub the centres, square, Mul by the gathered
/// -1/(2σ²), Exp, Mul the gathered coefficients, ReduceSum over centres, Clip.
pub fn build(x: &Tensor, c: &Tensor, g: &Tensor, fp16: bool) -> Result<onnx_protobuf::ModelProto> {
    let s = x.size()[2];
    let mut gr = GraphProto::new();
    gr.name = "reggan_pixel_kr".into();
    gr.input = vec![
        value_info("face", DataType::FLOAT, &[3, s, s]),
        value_info("expression", DataType::INT64, &[]),
    ];
    gr.output = vec![value_info("face_out", DataType::FLOAT, &[3, s, s])];
    gr.initializer = vec![
        initializer("X", x, fp16)?,
        initializer("C", c, fp16)?,
        initializer("G", &g.to_kind(Kind::Float), false)?,
        int64s("axis2", &[2]),
        int64s("g_shape", &[-1, 1, 1, 1, 1]),
        scalar_f32("zero", 0.0),
        scalar_f32("one", 1.0),
    ];
    let (xn, cn) = if fp16 { ("X_f", "C_f") } else { ("X", "C_g") };
    if fp16 {
        gr.node.push(node(
            "Cast",
            &["X"],
            "X_f",
            vec![attr_int("to", DataType::FLOAT as i64)],
        ));
        gr.node.push(node(
            "Gather",
            &["C", "expression"],
            "C_h",
            vec![attr_int("axis", 0)],
        ));
        gr.node.push(node(
            "Cast",
            &["C_h"],
            "C_f",
            vec![attr_int("to", DataType::FLOAT as i64)],
        ));
    } else {
        gr.node.push(node(
            "Gather",
            &["C", "expression"],
            "C_g",
            vec![attr_int("axis", 0)],
        ));
    }
    gr.node
        .push(node("Unsqueeze", &["face", "axis2"], "face_u", vec![])); // [N,3,1,S,S]
    gr.node.push(node("Sub", &["face_u", xn], "diff", vec![])); // [N,3,M,S,S]
    gr.node.push(node("Mul", &["diff", "diff"], "sq", vec![]));
    gr.node.push(node(
        "Gather",
        &["G", "expression"],
        "G_g",
        vec![attr_int("axis", 0)],
    ));
    gr.node
        .push(node("Reshape", &["G_g", "g_shape"], "G_r", vec![]));
    gr.node.push(node("Mul", &["sq", "G_r"], "arg", vec![]));
    gr.node.push(node("Exp", &["arg"], "kern", vec![]));
    gr.node.push(node("Mul", &["kern", cn], "prod", vec![]));
    gr.node.push(node(
        "ReduceSum",
        &["prod", "axis2"],
        "sum",
        vec![attr_int("keepdims", 0)],
    ));
    gr.node
        .push(node("Clip", &["sum", "zero", "one"], "face_out", vec![]));
    Ok(model_of(gr))
}

/// Writes model.onnx + model.json and checks ONNX Runtime against tch (stored
/// precision) on validation faces; returns (max diff, bytes).
pub fn export(w: &KrWeights, dir: &Path, fp16: bool) -> Result<(f32, u64)> {
    let bytes = write_model(&build(&w.x, &w.c, &w.g, fp16)?, dir)?;
    let mut manifest = crate::export::manifest(&w.meta.meta, fp16);
    manifest.params = serde_json::json!({
        "centres": w.meta.centres,
        "sigma": w.meta.sigma,
        "lambda": w.meta.meta.lambda,
        "weights_dtype": if fp16 { "float16" } else { "float32" },
        "centre_subjects": w.meta.centre_subjects,
    });
    manifest.write(dir)?;
    println!(
        "wrote {} ({:.2} MB) and model.json",
        dir.join("model.onnx").display(),
        bytes as f64 / 1e6
    );
    let (x, c) = (stored(&w.x, fp16), stored(&w.c, fp16));
    let (faces, exprs) = crate::export::verification_batch(&w.meta.meta, 2)?;
    let diff = max_diff(dir, &x, &c, &w.g, &faces, &exprs)?;
    println!(
        "ONNX Runtime vs tch on {} faces (every expression): max abs diff {diff:.3e}",
        exprs.len()
    );
    if diff > crate::export::MAX_DIFF || diff.is_nan() {
        bail!("exported model differs from tch by {diff}");
    }
    Ok((diff, bytes))
}

/// Largest |ORT - tch| for the given faces and expressions.
pub fn max_diff(
    dir: &Path,
    x: &Tensor,
    c: &Tensor,
    g: &Tensor,
    faces: &Tensor,
    exprs: &[i64],
) -> Result<f32> {
    let mut model = reggan::ExpressionModel::load(dir, reggan::Device::Cpu, 1)?;
    let ort = model.run(crate::export::to_array(faces)?.view(), exprs)?;
    let reference = crate::export::to_array(&forward(faces, x, c, g, exprs))?;
    Ok(ort
        .iter()
        .zip(reference.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max))
}

/// `fit --method pixel-kr`: loads the split like [`crate::fit::run`] (same data sets,
/// same held-out subjects, same colour augmentation) and fits.
pub fn run(
    cache: &Path,
    opts: &crate::fit::FitOptions,
    centres: usize,
    sigmas: &[f64],
) -> Result<KrWeights> {
    use crate::data::{load_subjects, Index};
    let index = Index::read(cache)?;
    let datasets: Vec<String> = match &opts.datasets {
        Some(d) => d.clone(),
        None => index
            .entries
            .iter()
            .map(|e| e.dataset.clone())
            .filter(|d| d != "london")
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect(),
    };
    let train = load_subjects(cache, &index, &index.train_subjects, &datasets)?;
    let val = load_subjects(cache, &index, &index.val_subjects, &datasets)?;
    if train.is_empty() || val.is_empty() {
        bail!(
            "data sets {datasets:?} give {} training and {} validation subjects with neutral crops; need both",
            train.len(),
            val.len()
        );
    }
    let train = crate::augment::augment(train, opts.colour_augment, crate::augment::SEED);
    let expressions = crate::regression::expressions_present(&train);
    println!(
        "training on {datasets:?}: {} train / {} validation subjects, expressions {expressions:?}",
        train.len(),
        val.len()
    );
    let train_pairs = expressions
        .iter()
        .map(|e| {
            let n: i64 = train
                .iter()
                .filter_map(|s| s.targets.get(e).map(|t| s.neutral.size()[0] * t.size()[0]))
                .sum();
            (e.clone(), n as usize)
        })
        .collect();
    let meta = Meta {
        method: "pixel-kr".into(),
        k: 1,
        train_pairs,
        ..Meta::for_fit(&index, &expressions, &train, &val, datasets, cache)
    };
    fit(
        &train,
        &val,
        &expressions,
        centres,
        sigmas,
        &opts.lambdas,
        meta,
    )
}

/// Parses `--sigma`: a number, or "sweep" for [`SIGMAS`].
pub fn parse_sigmas(s: &str) -> Result<Vec<f64>> {
    crate::fit::parse_grid("--sigma", s, &SIGMAS)
}

/// `export` of Pixel-KR weights: model.onnx + model.json (verified), preview, timing.
pub fn export_cmd(weights: &Path, out: &Path, fp16: bool, preview: Option<&Path>) -> Result<()> {
    let w = KrWeights::load(weights)?;
    let (_, size) = export(&w, out, fp16)?;
    if let Some(png) = preview {
        let (faces, _) = crate::export::verification_batch(&w.meta.meta, 1)?;
        let n = (w.meta.meta.val_subjects.len() as i64).min(faces.size()[0]);
        crate::export::preview(out, &faces.narrow(0, 0, n), png)?;
        println!("wrote {}", png.display());
    }
    let ms = crate::export::cpu_ms_per_face(out, w.meta.meta.crop_size)?;
    println!(
        "model.onnx: {size} bytes, opset {}; CPU (1 thread) {ms:.2} ms per face",
        crate::onnx_export::OPSET
    );
    Ok(())
}
