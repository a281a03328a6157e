//! `export`: model.onnx + model.json from fitted weights, then a check that ONNX
//! Runtime (through the core library's loader) computes what tch computes.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use ndarray::Array4;
use reggan::{Device, ExpressionModel, Manifest};
use serde_json::json;
use tch::{Kind, Tensor};

use crate::data::{load_subjects, Index};
use crate::onnx_export;
use crate::regression::{mean, shifted};
use crate::weights::{Meta, Weights};

/// Largest ORT-vs-tch difference `export` accepts.
pub const MAX_DIFF: f32 = 1e-3;

pub const TFEID_NAME: &str = "TFEID (Taiwanese Facial Expression Image Database)";
pub const TFEID_LICENCE: &str =
    "research use only; models trained on it are for non-commercial research";

/// The model.json for fitted layers.
pub fn manifest(meta: &Meta, fp16: bool) -> Manifest {
    let data = if meta.datasets.iter().all(|d| d == "tfeid") {
        TFEID_NAME.to_string()
    } else {
        meta.datasets.join(", ")
    };
    Manifest {
        format_version: reggan::model::FORMAT_VERSION,
        family: "regression".into(),
        method: meta.method.clone(),
        crop_size: meta.crop_size,
        template: meta.template.clone(),
        expressions: meta.expressions.clone(),
        normalization: "rgb01".into(),
        params: json!({ "k": meta.k, "lambda": meta.lambda, "weights_dtype": if fp16 { "float16" } else { "float32" } }),
        training: json!({
            "data": data,
            "licence": TFEID_LICENCE,
            "datasets": meta.datasets,
            "train_subjects": meta.train_subjects,
            "val_subjects": meta.val_subjects,
            "train_pairs": meta.train_pairs,
            "split": "by subject: per data set, subjects sorted, every 5th is validation",
        }),
        trainer_version: format!("reggan-trainer {}", env!("CARGO_PKG_VERSION")),
        quality: json!({
            "metric": "mean squared error per pixel value (RGB in [0,1]) over every (neutral, expression) pair of the validation subjects",
            "val_mse": meta.val_mse,
            "identity_mse": meta.identity_mse,
            "val_mse_mean": mean(&meta.val_mse),
            "identity_mse_mean": mean(&meta.identity_mse),
        }),
        outputs: Vec::new(),
    }
}

/// The layers' output in tch for faces [N,3,S,S] with per-face expression indices.
pub fn tch_forward(
    w: &Tensor,
    b: &Tensor,
    k: usize,
    faces: &Tensor,
    expressions: &[i64],
) -> Tensor {
    let idx = Tensor::from_slice(expressions);
    let (wg, bg) = (w.index_select(0, &idx), b.index_select(0, &idx));
    ((shifted(faces, k) * wg).sum_dim_intlist(2, false, None) + bg).clamp(0.0, 1.0)
}

pub fn to_array(t: &Tensor) -> Result<Array4<f32>> {
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let data = Vec::<f32>::try_from(&t.to_kind(Kind::Float).contiguous().flatten(0, -1))?;
    Ok(Array4::from_shape_vec(
        (shape[0], shape[1], shape[2], shape[3]),
        data,
    )?)
}

/// Runs the exported model through `reggan::ExpressionModel` on CPU and returns the
/// largest absolute difference from tch.
pub fn max_diff(
    dir: &Path,
    w: &Tensor,
    b: &Tensor,
    k: usize,
    faces: &Tensor,
    expressions: &[i64],
) -> Result<f32> {
    let mut model = ExpressionModel::load(dir, Device::Cpu, 1)?;
    let ort = model.run(to_array(faces)?.view(), expressions)?;
    let reference = to_array(&tch_forward(w, b, k, faces, expressions))?;
    Ok(ort
        .iter()
        .zip(reference.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max))
}

/// Faces to verify with: validation neutral crops (one per subject in turn), each
/// expression in turn, or
/// random faces when the cache is gone.
pub fn verification_batch(meta: &Meta, per_expression: usize) -> Result<(Tensor, Vec<i64>)> {
    let cache = Path::new(&meta.cache);
    let e = meta.expressions.len();
    let neutrals = match Index::read(cache) {
        Ok(index) => {
            let subjects = load_subjects(cache, &index, &meta.val_subjects, &meta.datasets)?;
            // Interleaved by subject, so the first faces are one per subject.
            let most = subjects
                .iter()
                .map(|s| s.neutral.size()[0])
                .max()
                .unwrap_or(0);
            let all: Vec<Tensor> = (0..most)
                .flat_map(|j| {
                    subjects
                        .iter()
                        .filter(move |s| j < s.neutral.size()[0])
                        .map(move |s| s.neutral.get(j).unsqueeze(0))
                })
                .collect();
            if all.is_empty() {
                None
            } else {
                Some(Tensor::cat(&all, 0))
            }
        }
        Err(err) => {
            eprintln!("no cached validation crops ({err:#}); verifying on random faces");
            None
        }
    };
    let n = (e * per_expression) as i64;
    let s = meta.crop_size as i64;
    let faces = match neutrals {
        Some(x) => x.index_select(
            0,
            &(Tensor::arange(n, (Kind::Int64, tch::Device::Cpu)).remainder(x.size()[0])),
        ),
        None => Tensor::rand([n, 3, s, s], (Kind::Float, tch::Device::Cpu)),
    };
    let exprs = (0..n).map(|i| i % e as i64).collect();
    Ok((faces, exprs))
}

/// CPU milliseconds for one face through ONNX Runtime (median of 20 runs, 1 thread).
pub fn cpu_ms_per_face(dir: &Path, size: usize) -> Result<f64> {
    let mut model = ExpressionModel::load(dir, Device::Cpu, 1)?;
    let face = Array4::<f32>::from_elem((1, 3, size, size), 0.5);
    let mut times: Vec<f64> = (0..21)
        .map(|_| {
            let t = Instant::now();
            model
                .run(face.view(), &[0])
                .map(|_| t.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<reggan::Result<_>>()?;
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// A strip of PNGs for the model card: each validation neutral face of `faces` given,
/// then its ONNX Runtime output for every expression.
pub fn preview(dir: &Path, faces: &Tensor, out: &Path) -> Result<()> {
    let mut model = ExpressionModel::load(dir, Device::Cpu, 1)?;
    let e = model.manifest().expressions.len() as i64;
    let mut rows = Vec::new();
    for i in 0..faces.size()[0] {
        let x = faces.get(i).unsqueeze(0).repeat([e, 1, 1, 1]);
        let y = model.run(to_array(&x)?.view(), &(0..e).collect::<Vec<_>>())?;
        let y = Tensor::from_slice(y.as_slice().expect("ORT output is contiguous")).view_as(&x);
        let row = Tensor::cat(&[faces.get(i).unsqueeze(0), y], 0); // [1+E,3,S,S]
        rows.push(Tensor::cat(&row.unbind(0), 2)); // [3,S,(1+E)S]
    }
    crate::data::save_png(&Tensor::cat(&rows, 1), out) // [3,rows*S,(1+E)S]
}

/// Writes and verifies the model; returns (max diff, file size).
pub fn export(weights: &Weights, dir: &Path, fp16: bool) -> Result<(f32, u64)> {
    let meta = &weights.meta;
    let size = onnx_export::write(&weights.w, &weights.b, meta.k, fp16, dir)?;
    manifest(meta, fp16).write(dir)?;
    println!(
        "wrote {} ({:.2} MB) and model.json",
        dir.join("model.onnx").display(),
        size as f64 / 1e6
    );
    // Compare against the weights as stored, so fp16 rounding is not counted as error.
    let (w, b) = (
        onnx_export::stored(&weights.w, fp16),
        onnx_export::stored(&weights.b, fp16),
    );
    let (faces, exprs) = verification_batch(meta, 4)?;
    let diff = max_diff(dir, &w, &b, meta.k, &faces, &exprs)?;
    println!(
        "ONNX Runtime vs tch on {} faces (every expression): max abs diff {diff:.3e}",
        exprs.len()
    );
    if diff > MAX_DIFF || diff.is_nan() {
        bail!("exported model differs from tch by {diff} (> {MAX_DIFF})");
    }
    Ok((diff, size))
}
