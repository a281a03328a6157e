//! `import-lsrf`: the LSRF/OMP authors' published sparse weights (scipy CSR saved with
//! `save_npz`, shape (S², S²+1): row p = output pixel p, columns 0..S² = input pixels
//! in row-major order, column S² = the bias) as a model of the contract.
//!
//! The general sparse form, the same weights for each channel:
//! `y[c,p] = Σ_j w[p,j] · x[c, idx[p,j]] + b[p]`, exported as Reshape (flatten the
//! image) → Gather(idx) → Mul(W) → ReduceSum → Add(B) → Reshape.
//!
//! Modes:
//! - `faithful`: the authors' inference as reconstructed from the weights: the input
//!   is min-max normalised per image (over all channels and pixels:
//!   `x' = (x - min x) / (max x - min x)`), mapped, and the output is min-max
//!   normalised back to [0,1] the same way. Per-frame min/max makes video flicker.
//! - `video` (shipped default): W, b applied directly to the [0,1] input, then clipped.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::{GraphProto, ModelProto};
use reggan::{Manifest, Template};
use serde_json::json;
use tch::{Kind, Tensor};

use crate::npz::{read_npz, Values};
use crate::onnx_export::{
    attr_int, attr_ints, initializer, int64s, model_of, node, scalar_f32, value_info, write_model,
};

/// Guard against a constant image in the min-max normalisation.
pub const MINMAX_EPS: f32 = 1e-6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Faithful,
    Video,
}

impl std::str::FromStr for Mode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "faithful" => Ok(Mode::Faithful),
            "video" => Ok(Mode::Video),
            _ => bail!("--mode is faithful or video, not '{s}'"),
        }
    }
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Faithful => "faithful",
            Mode::Video => "video",
        }
    }
}

/// A scipy CSR matrix as read from the npz.
#[derive(Debug, Clone)]
pub struct Csr {
    pub rows: usize,
    pub cols: usize,
    pub indptr: Vec<i64>,
    pub indices: Vec<i64>,
    pub data: Vec<f64>,
}

/// Reads and checks a `scipy.sparse.save_npz` CSR file.
pub fn read_csr(path: &Path) -> Result<Csr> {
    let arrays = read_npz(path)?;
    let get = |name: &str| {
        arrays.get(name).with_context(|| {
            format!(
                "{} has no {name}.npy: not a scipy.sparse.save_npz file (members: {:?})",
                path.display(),
                arrays.keys().collect::<Vec<_>>()
            )
        })
    };
    if let Values::Bytes(f) = &get("format")?.values {
        ensure!(
            f.first().map(|v| v.as_slice()) == Some(b"csr".as_slice()),
            "{}: sparse format {:?}, expected csr",
            path.display(),
            f.first().map(|v| String::from_utf8_lossy(v).to_string())
        );
    } else {
        bail!("{}: format.npy is not a string", path.display());
    }
    let shape = get("shape")?.ints("shape")?.to_vec();
    ensure!(
        shape.len() == 2,
        "{}: shape has {} values",
        path.display(),
        shape.len()
    );
    let (rows, cols) = (shape[0] as usize, shape[1] as usize);
    let indptr = get("indptr")?.ints("indptr")?.to_vec();
    let indices = get("indices")?.ints("indices")?.to_vec();
    let data = get("data")?.floats("data")?.to_vec();
    ensure!(
        indptr.len() == rows + 1,
        "{}: indptr has {} entries for {rows} rows",
        path.display(),
        indptr.len()
    );
    ensure!(
        indices.len() == data.len(),
        "{}: {} indices but {} values",
        path.display(),
        indices.len(),
        data.len()
    );
    ensure!(
        indptr[0] == 0
            && indptr.windows(2).all(|w| w[0] <= w[1])
            && *indptr.last().unwrap_or(&0) as usize == data.len(),
        "{}: indptr is not a valid CSR row pointer",
        path.display()
    );
    if let Some(bad) = indices.iter().find(|&&i| i < 0 || i as usize >= cols) {
        bail!("{}: column index {bad} outside 0..{cols}", path.display());
    }
    if let Some(bad) = data.iter().find(|v| !v.is_finite()) {
        bail!("{}: non-finite weight {bad}", path.display());
    }
    Ok(Csr {
        rows,
        cols,
        indptr,
        indices,
        data,
    })
}

/// The CSR rows as a fixed-width sparse layer: idx/w [P,J], b [P].
#[derive(Debug, Clone)]
pub struct SparseLayer {
    pub size: usize,
    pub j: usize,
    pub idx: Vec<i64>,
    pub w: Vec<f64>,
    pub b: Vec<f64>,
}

impl Csr {
    /// Checks the (S², S²+1) layout and converts. Rows with fewer weights are padded
    /// with zero weights (pointing at the row's own pixel).
    pub fn to_layer(&self) -> Result<SparseLayer> {
        let size = (self.rows as f64).sqrt().round() as usize;
        ensure!(
            size * size == self.rows && self.cols == self.rows + 1 && size >= 8,
            "matrix is {} x {}; an LSRF layer is (S², S²+1) for an S x S image plus bias column",
            self.rows,
            self.cols
        );
        let p_count = self.rows;
        let mut j = 0;
        for p in 0..p_count {
            let (a, e) = (self.indptr[p] as usize, self.indptr[p + 1] as usize);
            let biases = self.indices[a..e]
                .iter()
                .filter(|&&c| c as usize == p_count)
                .count();
            ensure!(biases <= 1, "row {p} has {biases} bias entries");
            j = j.max(e - a - biases);
        }
        ensure!(j > 0, "the matrix has no weights, only biases");
        let (mut idx, mut w, mut b) = (
            vec![0i64; p_count * j],
            vec![0.0; p_count * j],
            vec![0.0; p_count],
        );
        for p in 0..p_count {
            let (a, e) = (self.indptr[p] as usize, self.indptr[p + 1] as usize);
            let mut n = 0;
            for k in a..e {
                let c = self.indices[k];
                if c as usize == p_count {
                    b[p] = self.data[k];
                } else {
                    idx[p * j + n] = c;
                    w[p * j + n] = self.data[k];
                    n += 1;
                }
            }
            for m in n..j {
                idx[p * j + m] = p as i64;
            }
        }
        Ok(SparseLayer { size, j, idx, w, b })
    }
}

fn minmax(v: &mut [f32]) {
    let (mn, mx) = v
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    let r = (mx - mn).max(MINMAX_EPS);
    v.iter_mut().for_each(|x| *x = (*x - mn) / r);
}

impl SparseLayer {
    /// The model's output for one face [3,S,S] (flattened, channel-major) in plain Rust.
    pub fn apply(&self, face: &[f32], mode: Mode) -> Vec<f32> {
        let pp = self.size * self.size;
        let mut x = face.to_vec();
        if mode == Mode::Faithful {
            minmax(&mut x);
        }
        let mut y = vec![0f32; 3 * pp];
        for c in 0..3 {
            for p in 0..pp {
                let mut acc = self.b[p] as f32;
                for k in 0..self.j {
                    acc += self.w[p * self.j + k] as f32
                        * x[c * pp + self.idx[p * self.j + k] as usize];
                }
                y[c * pp + p] = acc;
            }
        }
        if mode == Mode::Faithful {
            minmax(&mut y);
        }
        y.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
        y
    }

    /// The bias as an S x S grey image (it shows the learned "average" target face).
    pub fn bias_image(&self) -> Tensor {
        let s = self.size as i64;
        Tensor::from_slice(&self.b)
            .view([1, s, s])
            .to_kind(Kind::Float)
    }

    /// The ONNX graph of the contract (one expression).
    pub fn build(&self, mode: Mode) -> Result<ModelProto> {
        let s = self.size as i64;
        let (pp, j) = ((s * s), self.j as i64);
        let mut g = GraphProto::new();
        g.name = format!("reggan_lsrf_{}", mode.name());
        g.input = vec![
            value_info("face", DataType::FLOAT, &[3, s, s]),
            value_info("expression", DataType::INT64, &[]),
        ];
        g.output = vec![value_info("face_out", DataType::FLOAT, &[3, s, s])];
        let w = Tensor::from_slice(&self.w)
            .view([1, pp, j])
            .to_kind(Kind::Float);
        let b = Tensor::from_slice(&self.b)
            .view([1, pp])
            .to_kind(Kind::Float);
        let mut idx = int64s("IDX", &self.idx);
        idx.dims = vec![pp, j];
        g.initializer = vec![
            initializer("W", &w, false)?,
            initializer("B", &b, false)?,
            idx,
            int64s("flat_shape", &[0, 3, pp]),
            int64s("img_shape", &[0, 3, s, s]),
            int64s("axis1", &[1]),
            int64s("axis3", &[3]),
            scalar_f32("zero", 0.0),
            scalar_f32("one", 1.0),
            scalar_f32("eps", MINMAX_EPS),
        ];
        let minmax_nodes = |g: &mut GraphProto, input: &str, out: &str| {
            let (mn, mx, r, rs, d) = (
                format!("{input}_min"),
                format!("{input}_max"),
                format!("{input}_range"),
                format!("{input}_range_eps"),
                format!("{input}_shifted"),
            );
            g.node.push(node(
                "ReduceMin",
                &[input],
                &mn,
                vec![attr_ints("axes", &[1, 2, 3]), attr_int("keepdims", 1)],
            ));
            g.node.push(node(
                "ReduceMax",
                &[input],
                &mx,
                vec![attr_ints("axes", &[1, 2, 3]), attr_int("keepdims", 1)],
            ));
            g.node.push(node("Sub", &[&mx, &mn], &r, vec![]));
            g.node.push(node("Max", &[&r, "eps"], &rs, vec![]));
            g.node.push(node("Sub", &[input, &mn], &d, vec![]));
            g.node.push(node("Div", &[&d, &rs], out, vec![]));
        };
        let x = match mode {
            Mode::Faithful => {
                minmax_nodes(&mut g, "face", "face_n");
                "face_n"
            }
            Mode::Video => "face",
        };
        g.node
            .push(node("Reshape", &[x, "flat_shape"], "flat", vec![]));
        g.node.push(node(
            "Gather",
            &["flat", "IDX"],
            "picked",
            vec![attr_int("axis", 2)],
        )); // [N,3,P,J]
        g.node.push(node(
            "Gather",
            &["W", "expression"],
            "W_g",
            vec![attr_int("axis", 0)],
        )); // [N,P,J]
        g.node
            .push(node("Unsqueeze", &["W_g", "axis1"], "W_u", vec![]));
        g.node.push(node("Mul", &["picked", "W_u"], "prod", vec![]));
        g.node.push(node(
            "ReduceSum",
            &["prod", "axis3"],
            "sum",
            vec![attr_int("keepdims", 0)],
        )); // [N,3,P]
        g.node.push(node(
            "Gather",
            &["B", "expression"],
            "B_g",
            vec![attr_int("axis", 0)],
        ));
        g.node
            .push(node("Unsqueeze", &["B_g", "axis1"], "B_u", vec![]));
        g.node.push(node("Add", &["sum", "B_u"], "biased", vec![]));
        g.node
            .push(node("Reshape", &["biased", "img_shape"], "mapped", vec![]));
        let y = match mode {
            Mode::Faithful => {
                minmax_nodes(&mut g, "mapped", "mapped_n");
                "mapped_n"
            }
            Mode::Video => "mapped",
        };
        g.node
            .push(node("Clip", &[y, "zero", "one"], "face_out", vec![]));
        Ok(model_of(g))
    }
}

/// The manifest of an imported LSRF/OMP model.
pub fn manifest(
    layer: &SparseLayer,
    mode: Mode,
    expression: &str,
    source: &Path,
    quality: serde_json::Value,
) -> Manifest {
    let file = source
        .file_name()
        .map(|f| f.to_string_lossy().to_string())
        .unwrap_or_default();
    let method = if file.starts_with("omp") {
        "omp"
    } else {
        "lsrf"
    };
    Manifest {
        format_version: reggan::model::FORMAT_VERSION,
        family: "regression".into(),
        method: method.into(),
        crop_size: layer.size,
        template: Template::lsrf(layer.size),
        expressions: vec![expression.to_string()],
        normalization: match mode {
            Mode::Faithful => "rgb01, then per-image min-max inside the graph (input and output)",
            Mode::Video => "rgb01",
        }
        .into(),
        params: json!({
            "mode": mode.name(),
            "weights_per_pixel": layer.j,
            "same_weights_for_each_channel": true,
            "weights_dtype": "float32",
            "source_file": file,
        }),
        training: json!({
            "origin": "the LSRF/OMP authors' published weights, imported by reggan-train import-lsrf",
            "licence": "as published by the authors; check their licence before use",
        }),
        trainer_version: format!("reggan-trainer {}", env!("CARGO_PKG_VERSION")),
        quality,
        outputs: Vec::new(),
    }
}

/// Imports `file` into `out` (model.onnx + model.json) and checks ONNX Runtime against
/// [`SparseLayer::apply`] on `check_faces` [N,3,S,S]; returns (layer, max diff, bytes).
pub fn import(
    file: &Path,
    expression: &str,
    mode: Mode,
    out: &Path,
    check_faces: &Tensor,
    quality: serde_json::Value,
) -> Result<(SparseLayer, f32, u64)> {
    if !reggan::EXPRESSIONS.contains(&expression) {
        bail!(
            "unknown expression '{expression}'; one of {:?}",
            reggan::EXPRESSIONS
        );
    }
    let layer = read_csr(file)?
        .to_layer()
        .with_context(|| format!("{} is not an LSRF layer", file.display()))?;
    let bytes = write_model(&layer.build(mode)?, out)?;
    manifest(&layer, mode, expression, file, quality).write(out)?;
    let diff = check(out, &layer, mode, check_faces)?;
    Ok((layer, diff, bytes))
}

/// Largest |ORT - plain Rust| over the faces.
pub fn check(dir: &Path, layer: &SparseLayer, mode: Mode, faces: &Tensor) -> Result<f32> {
    let mut model = reggan::ExpressionModel::load(dir, reggan::Device::Cpu, 1)?;
    let ort = crate::measure::run_model(&mut model, faces, 0)?;
    let mut diff = 0f32;
    for i in 0..faces.size()[0] {
        let x = Vec::<f32>::try_from(&faces.get(i).to_kind(Kind::Float).flatten(0, -1))?;
        let y = Vec::<f32>::try_from(&ort.get(i).flatten(0, -1))?;
        let r = layer.apply(&x, mode);
        diff = y
            .iter()
            .zip(&r)
            .map(|(a, b)| (a - b).abs())
            .fold(diff, f32::max);
    }
    Ok(diff)
}

/// Options of `reggan-train import-lsrf`.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub file: std::path::PathBuf,
    pub expression: String,
    pub mode: Mode,
    pub out: std::path::PathBuf,
    /// A prepare cache: its validation neutral crops verify the file, and its
    /// validation pairs give the measured MSE.
    pub cache: Option<std::path::PathBuf>,
    /// Further caches measured on all their subjects (e.g. London = out of distribution).
    pub ood: Vec<std::path::PathBuf>,
    pub preview: Option<std::path::PathBuf>,
}

fn pair_quality(
    dir: &Path,
    subjects: &[crate::data::Subject],
    expression: &str,
) -> Result<serde_json::Value> {
    let (mse, id, pairs) = crate::measure::model_pair_mse(dir, subjects, expression)?;
    println!(
        "  {expression}: MSE {mse:.6}, identity {id:.6} (ratio {:.3}) over {pairs} pairs",
        mse / id
    );
    Ok(json!({ "mse": mse, "identity_mse": id, "pairs": pairs, "subjects": subjects.len() }))
}

/// `import-lsrf`: import, verify, measure, preview.
pub fn run_import(o: &ImportOptions) -> Result<()> {
    let csr = read_csr(&o.file)?;
    let s = (csr.rows as f64).sqrt().round() as i64;
    let val = match &o.cache {
        Some(c) => Some(crate::measure::cache_subjects(c, false)?),
        None => None,
    };
    let faces = match &val {
        Some(v) if !v.is_empty() => {
            let n: Vec<Tensor> = v.iter().map(|s| s.neutral.shallow_clone()).collect();
            crate::measure::resize(&Tensor::cat(&n, 0), s)
        }
        _ => {
            println!("no --cache: verifying on random faces");
            Tensor::rand([4, 3, s, s], (Kind::Float, tch::Device::Cpu))
        }
    };
    let (layer, diff, bytes) = import(&o.file, &o.expression, o.mode, &o.out, &faces, json!(null))?;
    println!(
        "wrote {} ({:.2} MB, {s}x{s}, {} weight(s) + bias per pixel, {} mode); ONNX Runtime vs plain-Rust formula on {} faces: max abs diff {diff:.3e}",
        o.out.join("model.onnx").display(),
        bytes as f64 / 1e6,
        layer.j,
        o.mode.name(),
        faces.size()[0]
    );
    if diff > 1e-4 || diff.is_nan() {
        bail!("imported model differs from the formula by {diff}");
    }
    let mut quality = json!({
        "metric": "mean squared error per pixel value (RGB in [0,1]) over every (neutral, expression) pair",
        "onnx_vs_formula_max_abs_diff": diff,
    });
    if let Some(v) = &val {
        println!(
            "validation subjects of {}:",
            o.cache.as_ref().expect("cache").display()
        );
        quality["validation"] = pair_quality(&o.out, v, &o.expression)?;
    }
    for c in &o.ood {
        let subjects = crate::measure::cache_subjects(c, true)?;
        println!("all subjects of {}:", c.display());
        let name = c
            .file_name()
            .map(|f| f.to_string_lossy().to_string())
            .unwrap_or_default();
        quality[name] = pair_quality(&o.out, &subjects, &o.expression)?;
    }
    let ms = crate::export::cpu_ms_per_face(&o.out, layer.size)?;
    quality["cpu_ms_per_face"] = json!(ms);
    println!("CPU (1 thread) {ms:.2} ms per face");
    manifest(&layer, o.mode, &o.expression, &o.file, quality).write(&o.out)?;
    if let Some(png) = &o.preview {
        preview(
            &layer,
            &o.out,
            &faces.narrow(0, 0, faces.size()[0].min(5)),
            png,
        )?;
        println!("wrote {}", png.display());
    }
    Ok(())
}

/// Rows: input, the model's output (ONNX Runtime), the other mode's output (plain
/// Rust), the bias image.
pub fn preview(layer: &SparseLayer, dir: &Path, faces: &Tensor, png: &Path) -> Result<()> {
    let mut model = reggan::ExpressionModel::load(dir, reggan::Device::Cpu, 1)?;
    let mode: Mode = model.manifest().params["mode"]
        .as_str()
        .unwrap_or("video")
        .parse()?;
    let other = if mode == Mode::Video {
        Mode::Faithful
    } else {
        Mode::Video
    };
    let out = crate::measure::run_model(&mut model, faces, 0)?;
    let s = layer.size as i64;
    let bias = layer.bias_image().clamp(0.0, 1.0).repeat([3, 1, 1]);
    let mut rows = Vec::new();
    for i in 0..faces.size()[0] {
        let x = faces.get(i).to_kind(Kind::Float);
        let o = Tensor::from_slice(&layer.apply(&Vec::<f32>::try_from(&x.flatten(0, -1))?, other))
            .view([3, s, s]);
        rows.push(Tensor::cat(&[x, out.get(i), o, bias.shallow_clone()], 2));
    }
    crate::data::save_png(&Tensor::cat(&rows, 1), png)
}
