//! `prepare`: finds faces in the raw data sets with the core detector, aligns them with
//! the core aligner (so training sees faces exactly as inference does), caches the
//! crops as PNG and writes `index.json` with a deterministic split by subject.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use reggan::{Alignment, DetectorKind, FaceDetector, RgbImage, Template};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Crop size of the shipped models (the LSRF template's native size).
pub const CROP_SIZE: usize = 128;
/// Faces narrower than this (pixels) are not trusted as the subject's face.
const MIN_FACE_PX: f32 = 40.0;
/// Every `VAL_EVERY`-th subject (sorted, per data set) is a validation subject.
const VAL_EVERY: usize = 5;
/// Unpaired crops less sharp than this (Laplacian variance, see [`crop_sharpness`]) are
/// left out. TFEID's studio crops measure 230 at their 5th percentile and 341 at the
/// median; a UTKFace picture resized to 128 px measures 87 at the median, because many
/// were upscaled from small photos.
pub const MIN_UNPAIRED_SHARPNESS: f64 = 120.0;

/// Where the shared data sets live: `$REGGAN_DATA`, else `<repo>/../shared/data`.
pub fn data_root() -> PathBuf {
    std::env::var_os("REGGAN_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"))
}

/// One raw image to crop.
#[derive(Debug, Clone)]
pub struct Source {
    pub dataset: String,
    pub subject: String,
    pub expression: String,
    pub file: PathBuf,
}

/// One cached crop.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub dataset: String,
    /// Unique across data sets: `<dataset>/<id>`.
    pub subject: String,
    pub expression: String,
    /// Relative to the cache directory.
    pub path: String,
    pub source: String,
}

/// `CACHE/index.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Index {
    pub crop_size: usize,
    pub template: Template,
    pub entries: Vec<Entry>,
    pub train_subjects: Vec<String>,
    pub val_subjects: Vec<String>,
    /// Source images in which no face was found.
    pub skipped: Vec<String>,
}

impl Index {
    pub fn read(cache: &Path) -> Result<Self> {
        let path = cache.join("index.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {} (run `reggan-train prepare` first)",
                path.display()
            )
        })?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid index", path.display()))
    }

    pub fn write(&self, cache: &Path) -> Result<()> {
        let path = cache.join("index.json");
        std::fs::write(&path, serde_json::to_string_pretty(self)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

/// TFEID rows from `index.csv` (all frontal). With `agreeing_only`, expression images
/// whose observers' majority rating differs from the intended label are left out.
pub fn tfeid_sources(dir: &Path, agreeing_only: bool) -> Result<Vec<Source>> {
    let csv = dir.join("index.csv");
    let text =
        std::fs::read_to_string(&csv).with_context(|| format!("cannot read {}", csv.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .with_context(|| format!("{} has no column {name}", csv.display()))
    };
    let (file, performer, view, expr, rated) = (
        col("file")?,
        col("performer")?,
        col("view")?,
        col("expression")?,
        col("rated_expression")?,
    );
    let mut out = Vec::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < header.len() || f[view] != "1" {
            continue;
        }
        if agreeing_only && f[expr] != "neutral" && f[rated] != f[expr] {
            continue;
        }
        out.push(Source {
            dataset: "tfeid".into(),
            subject: format!("tfeid/{}", f[performer]),
            expression: f[expr].into(),
            file: dir.join(f[file]),
        });
    }
    Ok(out)
}

/// London face set: `neutral/NNN_03.jpg` and `smiling/NNN_08.jpg` (smiling = happy).
pub fn london_sources(dir: &Path) -> Result<Vec<Source>> {
    let mut out = Vec::new();
    for (folder, expression) in [("neutral", "neutral"), ("smiling", "happy")] {
        for file in images_in(&dir.join(folder))? {
            let stem = file
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            let id = stem.split('_').next().unwrap_or(&stem).to_string();
            out.push(Source {
                dataset: "london".into(),
                subject: format!("london/{id}"),
                expression: expression.into(),
                file,
            });
        }
    }
    Ok(out)
}

/// Generic paired data: `DIR/neutral/<subject>*` and `DIR/<expression>/<subject>*`; the
/// subject is the file stem up to its first `_` or `-`.
pub fn pairs_sources(dir: &Path) -> Result<Vec<Source>> {
    let dataset = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "pairs".into());
    let mut out = Vec::new();
    for expression in ["neutral"].iter().chain(reggan::EXPRESSIONS.iter()) {
        let folder = dir.join(expression);
        if !folder.is_dir() {
            continue;
        }
        for file in images_in(&folder)? {
            let stem = file
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            let id = stem.split(['_', '-']).next().unwrap_or(&stem).to_string();
            out.push(Source {
                dataset: dataset.clone(),
                subject: format!("{dataset}/{id}"),
                expression: expression.to_string(),
                file,
            });
        }
    }
    if out.is_empty() {
        bail!(
            "{} has no neutral/ or <expression>/ folders with images",
            dir.display()
        );
    }
    Ok(out)
}

/// The expression label of unpaired faces (restoration pretraining only).
pub const UNLABELLED: &str = "unlabelled";

/// Unpaired faces (e.g. UTKFace): every image is its own subject, with no expression.
/// `prepare` keeps only the sharp ones (see [`MIN_UNPAIRED_SHARPNESS`]).
pub fn unpaired_sources(dir: &Path) -> Result<Vec<Source>> {
    let dataset = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "unpaired".into());
    let out: Vec<Source> = images_in(dir)?
        .into_iter()
        .map(|file| {
            let stem = file
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .replace('.', "_");
            Source {
                dataset: dataset.clone(),
                subject: format!("{dataset}/{stem}"),
                expression: UNLABELLED.into(),
                file,
            }
        })
        .collect();
    if out.is_empty() {
        bail!("{} has no .jpg/.png images", dir.display());
    }
    Ok(out)
}

/// Variance of the 4-neighbour Laplacian of a crop's luma (0..255 scale): low for the
/// many UTKFace images that were upscaled from small pictures.
///
/// Deliberately not `reggan::frame::laplacian_variance` (the evaluation's measure): this
/// one takes unrounded float luma and only interior pixels (no replicated border), in
/// plain Rust, and [`MIN_UNPAIRED_SHARPNESS`] and the packed caches' selection were
/// calibrated on exactly these values; switching would move crops across the threshold.
pub fn crop_sharpness(crop: &RgbImage) -> f64 {
    let (w, h) = (crop.width, crop.height);
    let luma: Vec<f64> = crop
        .data
        .chunks_exact(3)
        .map(|p| 0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64)
        .collect();
    let mut lap = Vec::with_capacity(w * h);
    for y in 1..h.saturating_sub(1) {
        for x in 1..w.saturating_sub(1) {
            let i = y * w + x;
            lap.push(luma[i - 1] + luma[i + 1] + luma[i - w] + luma[i + w] - 4.0 * luma[i]);
        }
    }
    let n = lap.len().max(1) as f64;
    let mean = lap.iter().sum::<f64>() / n;
    lap.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n
}

fn images_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension()
                    .and_then(|e| e.to_str())
                    .map(|e| e.to_ascii_lowercase())
                    .as_deref(),
                Some("jpg" | "jpeg" | "png")
            )
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Deterministic split by subject: per data set, subjects sorted, every fifth one
/// (the 5th, 10th, ...) is for validation.
pub fn split_subjects(sources: &[Source]) -> (Vec<String>, Vec<String>) {
    let mut by_dataset: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for s in sources {
        by_dataset.entry(&s.dataset).or_default().insert(&s.subject);
    }
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for subjects in by_dataset.values() {
        for (i, s) in subjects.iter().enumerate() {
            if i % VAL_EVERY == VAL_EVERY - 1 {
                &mut val
            } else {
                &mut train
            }
            .push(s.to_string());
        }
    }
    (train, val)
}

/// Detects the largest face, aligns it to the template and returns the crop.
pub fn crop_face(
    detector: &mut FaceDetector,
    template: &Template,
    file: &Path,
) -> Result<Option<RgbImage>> {
    let mut img = RgbImage::load(file)?;
    let frame = img.as_frame();
    let faces = detector.detect(&frame, MIN_FACE_PX)?;
    let Some(face) = faces
        .iter()
        .max_by(|a, b| a.bbox.area().total_cmp(&b.bbox.area()))
    else {
        return Ok(None);
    };
    Ok(Some(Alignment::for_face(face, template)?.crop_rgb(&frame)?))
}

/// Crops every source into `cache/crops/<dataset>/<subject>/`, writes the index and
/// prints counts per expression.
pub fn prepare(sources: &[Source], cache: &Path) -> Result<Index> {
    let template = Template::lsrf(CROP_SIZE);
    let mut detector = FaceDetector::new(DetectorKind::Auto)?;
    let bar = ProgressBar::new(sources.len() as u64);
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} {msg} [{elapsed}<{eta}]",
    )?);
    let (mut entries, mut skipped) = (Vec::new(), Vec::new());
    let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for src in sources {
        bar.set_message(src.expression.clone());
        let count = counts.entry(src.expression.clone()).or_default();
        match crop_face(&mut detector, &template, &src.file)
            .with_context(|| format!("while cropping {}", src.file.display()))?
        {
            Some(crop)
                if src.expression == UNLABELLED
                    && crop_sharpness(&crop) < MIN_UNPAIRED_SHARPNESS =>
            {
                skipped.push(format!("{} (blurred)", src.file.display()));
                count.1 += 1;
            }
            Some(crop) => {
                let stem = src.file.file_stem().unwrap_or_default().to_string_lossy();
                let rel = format!("crops/{}/{}.png", src.subject, stem);
                let path = cache.join(&rel);
                std::fs::create_dir_all(path.parent().expect("crop path has a parent"))?;
                crop.save(&path)?;
                entries.push(Entry {
                    dataset: src.dataset.clone(),
                    subject: src.subject.clone(),
                    expression: src.expression.clone(),
                    path: rel,
                    source: src.file.display().to_string(),
                });
                count.0 += 1;
            }
            None => {
                skipped.push(src.file.display().to_string());
                count.1 += 1;
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!("{:<10} {:>6} {:>8}", "expression", "faces", "skipped");
    for (e, (ok, bad)) in &counts {
        println!("{e:<10} {ok:>6} {bad:>8}");
    }
    let (train_subjects, val_subjects) = split_subjects(sources);
    println!(
        "{} crops, {} skipped; {} train / {} validation subjects",
        entries.len(),
        skipped.len(),
        train_subjects.len(),
        val_subjects.len()
    );
    let index = Index {
        crop_size: CROP_SIZE,
        template,
        entries,
        train_subjects,
        val_subjects,
        skipped,
    };
    index.write(cache)?;
    Ok(index)
}

/// A crop as a float tensor [3,S,S] in [0,1] (the model's input layout). Decoded in pure
/// Rust (PNG or JPEG), so that the training loop links no OpenCV.
pub fn load_crop(path: &Path) -> Result<Tensor> {
    let img = image::open(path)
        .with_context(|| format!("cannot read the crop {}", path.display()))?
        .into_rgb8();
    let (w, h) = (img.width() as i64, img.height() as i64);
    Ok(Tensor::from_slice(img.as_raw())
        .view([h, w, 3])
        .permute([2, 0, 1])
        .to_kind(Kind::Float)
        / 255.0)
}

/// A float tensor [3,H,W] in [0,1] as an 8-bit RGB image (the inverse of `load_crop`).
pub fn to_rgb_image(img: &Tensor) -> Result<RgbImage> {
    let (h, w) = (img.size()[1] as usize, img.size()[2] as usize);
    let bytes = (img.permute([1, 2, 0]) * 255.0)
        .round()
        .clamp(0.0, 255.0)
        .to_kind(Kind::Uint8)
        .contiguous();
    Ok(RgbImage {
        width: w,
        height: h,
        data: Vec::<u8>::try_from(&bytes.flatten(0, -1))?,
    })
}

/// Writes a float tensor [3,H,W] in [0,1] as an image (PNG, or JPEG at quality 95, by
/// the extension).
pub fn save_png(img: &Tensor, path: &Path) -> Result<()> {
    let rgb = to_rgb_image(img)?;
    save_rgb(rgb.width, rgb.height, rgb.data, path, 95)
}

/// Writes 8-bit RGB pixels (PNG, or JPEG at `quality` for .jpg/.jpeg), in pure Rust.
pub fn save_rgb(
    width: usize,
    height: usize,
    data: Vec<u8>,
    path: &Path,
    quality: u8,
) -> Result<()> {
    let img = image::RgbImage::from_raw(width as u32, height as u32, data)
        .context("pixel buffer does not match the image size")?;
    let jpeg = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("jpg" | "jpeg")
    );
    let result = if jpeg {
        let file = std::fs::File::create(path)?;
        image::codecs::jpeg::JpegEncoder::new_with_quality(std::io::BufWriter::new(file), quality)
            .encode_image(&img)
    } else {
        img.save(path)
    };
    result.with_context(|| format!("cannot write {}", path.display()))
}

/// The crops of one subject: its neutral faces and, per expression, its targets.
#[derive(Debug)]
pub struct Subject {
    pub name: String,
    /// [Nn,3,S,S]
    pub neutral: Tensor,
    /// expression -> [Nt,3,S,S]
    pub targets: BTreeMap<String, Tensor>,
}

/// Loads the subjects of `names` that have at least one neutral crop.
pub fn load_subjects(
    cache: &Path,
    index: &Index,
    names: &[String],
    datasets: &[String],
) -> Result<Vec<Subject>> {
    let mut out = Vec::new();
    for name in names {
        let mine: Vec<&Entry> = index
            .entries
            .iter()
            .filter(|e| &e.subject == name && datasets.contains(&e.dataset))
            .collect();
        let mut groups: BTreeMap<String, Vec<Tensor>> = BTreeMap::new();
        for e in mine {
            groups
                .entry(e.expression.clone())
                .or_default()
                .push(load_crop(&cache.join(&e.path))?);
        }
        let Some(neutral) = groups.remove("neutral") else {
            continue;
        };
        out.push(Subject {
            name: name.clone(),
            neutral: Tensor::stack(&neutral, 0),
            targets: groups
                .into_iter()
                .map(|(e, v)| (e, Tensor::stack(&v, 0)))
                .collect(),
        });
    }
    Ok(out)
}

/// A portable copy of a cache in `out`: the same index with every crop as a JPEG of
/// `quality` (at 85, about a sixth of the PNG's size), to carry to another machine.
/// With `sharpest`, only that many of the sharpest unpaired crops are kept (paired ones
/// always are).
pub fn pack_cache(cache: &Path, out: &Path, quality: u8, sharpest: Option<usize>) -> Result<usize> {
    let mut index = Index::read(cache)?;
    let mut crops = Vec::with_capacity(index.entries.len());
    for e in &index.entries {
        let rgb = to_rgb_image(&load_crop(&cache.join(&e.path))?)?;
        let sharpness = if e.expression == UNLABELLED {
            crop_sharpness(&rgb)
        } else {
            f64::INFINITY
        };
        crops.push((e.clone(), rgb, sharpness));
    }
    if let Some(n) = sharpest {
        crops.sort_by(|a, b| b.2.total_cmp(&a.2));
        let paired = crops.iter().filter(|c| c.2.is_infinite()).count();
        crops.truncate(paired + n);
    }
    index.entries.clear();
    // One flat folder: thousands of one-face subject folders would cost more to carry
    // than the crops themselves.
    std::fs::create_dir_all(out.join("crops"))?;
    for (i, (mut e, rgb, _)) in crops.into_iter().enumerate() {
        let jpg = format!("crops/{i:05}.jpg");
        save_rgb(rgb.width, rgb.height, rgb.data, &out.join(&jpg), quality)?;
        e.path = jpg;
        index.entries.push(e);
    }
    std::fs::create_dir_all(out)?;
    index.write(out)?;
    Ok(index.entries.len())
}
