//! Full-resolution quality of the compositing, before (plain residual) and after (detail
//! and colours kept, turned heads faded): sharpness of the face box, chroma change over
//! its upper 55 %, and before/after pictures.
//!
//! ```sh
//! source .deps/env.sh
//! cargo run --release --example compositing_quality -- --out out/compositing \
//!     $REGGAN_TEST_IMAGE ../shared/data/london/neutral/00*_03.jpg
//! ```
//!
//! Options: `--model DIR` (default the shipped model), `--expression NAME` (happy),
//! `--out DIR` (pictures: input | before | after of each face box at full resolution,
//! enlarged pixel by pixel to 360 px high, and with `--maps` the crop-space change and
//! its coarse-change gate), `--scale F` (resize each photo by F first: small and large
//! faces), `--detail off|fine|full` (fine), `--before-detail off|fine|full` ("before"
//! is then the default compositing with that detail, not the plain residual),
//! `--montage FILE` (every face's input | before | after in one picture, 240 px high
//! each), `--eyes` (the montage shows the eyes, not the whole face box).
//!
//! Sharpness = Laplacian variance of the grey face box, output over input (median over
//! photos, as `reggan-train eval` reports it). Chroma change = mean CIELAB
//! `sqrt(da^2 + db^2)` (L* on 0-100) over the upper 55 % of the face box: brows, eyes,
//! nose, where an expression has no reason to change a colour.

use std::path::{Path, PathBuf};

use opencv::core::{Mat, Rect, CV_32FC3};
use opencv::prelude::*;
use reggan::align::crop_to_planar;
use reggan::composite::{face_mask, ResidualShaper};
use reggan::frame::laplacian_variance;
use reggan::{
    Alignment, CompositeOptions, Detail, Device, ExpressionModel, FrameProcessor, ProcessorConfig,
    RgbImage,
};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut model, mut expression, mut out, mut maps) = (
        reggan::default_model_dir(),
        "happy".to_string(),
        None,
        false,
    );
    let (mut scale, mut detail, mut montage) = (1.0, Detail::Fine, None);
    let (mut before_detail, mut eyes) = (None, false);
    let mut photos = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--model" => model = PathBuf::from(args.next().expect("--model DIR")),
            "--expression" => expression = args.next().expect("--expression NAME"),
            "--out" => out = Some(PathBuf::from(args.next().expect("--out DIR"))),
            "--maps" => maps = true,
            "--scale" => scale = args.next().expect("--scale F").parse()?,
            "--detail" => {
                detail = args
                    .next()
                    .expect("--detail off|fine|full")
                    .parse()
                    .map_err(anyhow::Error::msg)?
            }
            "--before-detail" => {
                before_detail = Some(
                    args.next()
                        .expect("--before-detail off|fine|full")
                        .parse()
                        .map_err(anyhow::Error::msg)?,
                )
            }
            "--montage" => montage = Some(PathBuf::from(args.next().expect("--montage FILE"))),
            "--eyes" => eyes = true,
            _ => photos.push(PathBuf::from(a)),
        }
    }
    if let Some(out) = &out {
        std::fs::create_dir_all(out)?;
    }
    let config = |after: bool| {
        // "Before" is the plain residual unless --before-detail names a default's detail.
        let shaped = after || before_detail.is_some();
        ProcessorConfig {
            expression: expression.clone(),
            device: Device::Cpu,
            threads: 1,
            max_faces: 1,
            detail: if after {
                detail
            } else {
                before_detail.unwrap_or(Detail::Off)
            },
            keep_colour: shaped,
            max_yaw: if shaped { 35.0 } else { 90.0 },
            ..Default::default()
        }
    };
    let mut before = FrameProcessor::new(&model, config(false))?;
    let mut after = FrameProcessor::new(&model, config(true))?;
    let mut rows = Vec::new();
    let mut strips = Vec::new();
    println!(
        "photo\tface px\tyaw\tstrength\tsharp before\tsharp after\tchroma before\tchroma after"
    );
    for photo in &photos {
        let input = scaled(&RgbImage::load(photo)?, scale)?;
        let (mut b, mut a) = (input.clone(), input.clone());
        let rb = before.process(&mut b.as_frame())?;
        let ra = after.process(&mut a.as_frame())?;
        let Some(face) = rb.faces.first() else {
            println!("{}\tno face", photo.display());
            continue;
        };
        let edit = ra.edits.first().copied().unwrap_or_default();
        let rect = face_rect(&input, &face.bbox);
        let upper = Rect::new(
            rect.x,
            rect.y,
            rect.width,
            (rect.height as f64 * 0.55) as i32,
        );
        let row = [
            laplacian_variance(&b, rect)? / laplacian_variance(&input, rect)?,
            laplacian_variance(&a, rect)? / laplacian_variance(&input, rect)?,
            chroma_change(&input, &b, upper)?,
            chroma_change(&input, &a, upper)?,
        ];
        println!(
            "{}\t{:.0}\t{:.1}\t{:.2}\t{:.3}\t{:.3}\t{:.3}\t{:.3}",
            photo.display(),
            face.bbox.w,
            edit.pose.yaw,
            edit.strength,
            row[0],
            row[1],
            row[2],
            row[3]
        );
        rows.push(row);
        if montage.is_some() {
            let shown = if eyes {
                eye_rect(face, &input)
            } else {
                grow(rect, 0.15, &input)
            };
            strips.push(strip(&[&input, &b, &a], shown, 240)?);
        }
        if let Some(out) = &out {
            let stem = photo.file_stem().unwrap().to_string_lossy().to_string();
            let grown = grow(rect, 0.25, &input);
            side_by_side(&[&input, &b, &a], grown)?.save(&out.join(format!("{stem}.png")))?;
            if maps {
                write_maps(
                    &model,
                    &expression,
                    &input,
                    face,
                    &out.join(format!("{stem}-maps.png")),
                )?;
            }
        }
    }
    if let Some(path) = &montage {
        stack(&strips).save(path)?;
    }
    let col = |k: usize| rows.iter().map(|r| r[k]).collect::<Vec<_>>();
    println!(
        "{} faces: median sharpness before {:.3} after {:.3}; mean chroma change before {:.3} after {:.3} (median {:.3} / {:.3})",
        rows.len(),
        median(&col(0)),
        median(&col(1)),
        mean(&col(2)),
        mean(&col(3)),
        median(&col(2)),
        median(&col(3)),
    );
    Ok(())
}

fn scaled(img: &RgbImage, f: f64) -> anyhow::Result<RgbImage> {
    if f == 1.0 {
        return Ok(img.clone());
    }
    let mut resized = Mat::default();
    let interpolation = if f < 1.0 {
        opencv::imgproc::INTER_AREA
    } else {
        opencv::imgproc::INTER_CUBIC
    };
    opencv::imgproc::resize(
        &img.to_bgr_mat()?,
        &mut resized,
        opencv::core::Size::default(),
        f,
        f,
        interpolation,
    )?;
    Ok(RgbImage::from_bgr_mat(&resized)?)
}

/// The images' `rect`s side by side, each resized to `height` pixels high.
fn strip(images: &[&RgbImage], rect: Rect, height: i32) -> anyhow::Result<RgbImage> {
    let mut panels = opencv::core::Vector::<Mat>::new();
    let gap = Mat::new_rows_cols_with_default(
        height,
        6,
        opencv::core::CV_8UC3,
        opencv::core::Scalar::all(255.0),
    )?;
    for (k, img) in images.iter().enumerate() {
        let roi = Mat::roi(&img.to_bgr_mat()?, rect)?.try_clone()?;
        let width = (rect.width as f64 * height as f64 / rect.height as f64).round() as i32;
        let mut r = Mat::default();
        let interpolation = if height < rect.height {
            opencv::imgproc::INTER_AREA
        } else {
            opencv::imgproc::INTER_CUBIC
        };
        opencv::imgproc::resize(
            &roi,
            &mut r,
            opencv::core::Size::new(width, height),
            0.0,
            0.0,
            interpolation,
        )?;
        if k > 0 {
            panels.push(gap.clone());
        }
        panels.push(r);
    }
    let mut row = Mat::default();
    opencv::core::hconcat(&panels, &mut row)?;
    Ok(RgbImage::from_bgr_mat(&row)?)
}

/// Strips one above the other (left-aligned, white where one is narrower).
fn stack(strips: &[RgbImage]) -> RgbImage {
    let w = strips.iter().map(|s| s.width).max().unwrap_or(1);
    let h: usize = strips.iter().map(|s| s.height + 6).sum();
    let mut out = RgbImage::new(w, h.max(1));
    out.data.fill(255);
    let mut y0 = 0;
    for s in strips {
        for y in 0..s.height {
            let src = &s.data[y * s.width * 3..(y + 1) * s.width * 3];
            out.data[((y0 + y) * w) * 3..((y0 + y) * w + s.width) * 3].copy_from_slice(src);
        }
        y0 += s.height + 6;
    }
    out
}

fn face_rect(img: &RgbImage, b: &reggan::detect::BoxF) -> Rect {
    let x0 = b.x.max(0.0) as i32;
    let y0 = b.y.max(0.0) as i32;
    let x1 = ((b.x + b.w) as i32).min(img.width as i32);
    let y1 = ((b.y + b.h) as i32).min(img.height as i32);
    Rect::new(x0, y0, x1 - x0, y1 - y0)
}

/// Both eyes: half an eye distance beyond each eye, a third of it above and below.
fn eye_rect(face: &reggan::detect::Face, img: &RgbImage) -> Rect {
    let [l, r, ..] = face.keypoints;
    let d = ((r.x - l.x).powi(2) + (r.y - l.y).powi(2)).sqrt();
    let (cy, w) = (0.5 * (l.y + r.y), img.width as f32);
    let x0 = (l.x.min(r.x) - 0.5 * d).max(0.0) as i32;
    let x1 = (l.x.max(r.x) + 0.5 * d).min(w) as i32;
    let y0 = (cy - d / 3.0).max(0.0) as i32;
    let y1 = (cy + d / 3.0).min(img.height as f32) as i32;
    Rect::new(x0, y0, x1 - x0, y1 - y0)
}

fn grow(r: Rect, by: f64, img: &RgbImage) -> Rect {
    let (dx, dy) = ((r.width as f64 * by) as i32, (r.height as f64 * by) as i32);
    let x0 = (r.x - dx).max(0);
    let y0 = (r.y - dy).max(0);
    let x1 = (r.x + r.width + dx).min(img.width as i32);
    let y1 = (r.y + r.height + dy).min(img.height as i32);
    Rect::new(x0, y0, x1 - x0, y1 - y0)
}

fn as_mat(img: &RgbImage) -> anyhow::Result<Mat> {
    Ok(
        Mat::new_rows_cols_with_data(img.height as i32, (img.width * 3) as i32, &img.data)?
            .reshape(3, img.height as i32)?
            .try_clone()?,
    )
}

fn lab(img: &RgbImage, rect: Rect) -> anyhow::Result<Mat> {
    let roi = Mat::roi(&as_mat(img)?, rect)?.try_clone()?;
    let mut f = Mat::default();
    roi.convert_to(&mut f, CV_32FC3, 1.0 / 255.0, 0.0)?;
    let mut lab = Mat::default();
    opencv::imgproc::cvt_color_def(&f, &mut lab, opencv::imgproc::COLOR_RGB2Lab)?;
    Ok(lab)
}

/// Mean CIELAB chromatic change sqrt(da^2 + db^2) over `rect`.
fn chroma_change(a: &RgbImage, b: &RgbImage, rect: Rect) -> anyhow::Result<f64> {
    let (la, lb) = (lab(a, rect)?, lab(b, rect)?);
    let (pa, pb) = (
        la.data_typed::<opencv::core::Vec3f>()?,
        lb.data_typed::<opencv::core::Vec3f>()?,
    );
    let sum: f64 = pa
        .iter()
        .zip(pb)
        .map(|(p, q)| (((p[1] - q[1]).powi(2) + (p[2] - q[2]).powi(2)) as f64).sqrt())
        .sum();
    Ok(sum / pa.len().max(1) as f64)
}

/// The images' `rect`s next to each other, enlarged (nearest neighbour) to at least
/// 360 pixels high so that small faces can be judged pixel by pixel.
fn side_by_side(images: &[&RgbImage], rect: Rect) -> anyhow::Result<RgbImage> {
    let (w, h) = (rect.width as usize, rect.height as usize);
    let k = 360usize.div_ceil(h).max(1);
    let (zw, zh) = (w * k, h * k);
    let mut out = RgbImage::new(zw * images.len() + 4 * (images.len() - 1), zh);
    out.data.fill(255);
    for (n, img) in images.iter().enumerate() {
        for y in 0..zh {
            for x in 0..zw {
                let p = img.pixel(rect.x as usize + x / k, rect.y as usize + y / k);
                let i = (y * out.width + n * (zw + 4) + x) * 3;
                out.data[i..i + 3].copy_from_slice(&p);
            }
        }
    }
    Ok(out)
}

/// Crop | model output | raw change | shaped change | coarse-change gate, 3x enlarged.
fn write_maps(
    model_dir: &Path,
    expression: &str,
    input: &RgbImage,
    face: &reggan::Face,
    path: &Path,
) -> anyhow::Result<()> {
    let mut model = ExpressionModel::load(model_dir, Device::Cpu, 1)?;
    let s = model.crop_size();
    let n = s * s;
    let a = Alignment::for_face(face, &model.manifest().template)?;
    let mut img = input.clone();
    let frame = img.as_frame();
    let mut crop = vec![0.0; 3 * n];
    crop_to_planar(&a.warp_crop(&frame)?, frame.layout(), &mut crop)?;
    let idx = model.manifest().expression_index(expression)? as i64;
    let batch = ndarray::Array4::from_shape_vec((1, 3, s, s), crop.clone())?;
    let out = model.run(batch.view(), &[idx])?;
    let out = out.as_slice().unwrap().to_vec();
    let mask = face_mask(s);
    let mut shaper = ResidualShaper::new(&model.manifest().template, &mask);
    shaper.set_options(CompositeOptions::PLAIN);
    let raw = shaper.shape(&crop, &out, 1.0)?.to_vec();
    shaper.set_options(CompositeOptions::default());
    let shaped = shaper.shape(&crop, &out, 1.0)?.to_vec();
    let gate = shaper.coarse_change().to_vec();
    let panels: Vec<Box<dyn Fn(usize, usize) -> f32>> = vec![
        Box::new(|i, c| crop[c * n + i]),
        Box::new(|i, c| out[c * n + i]),
        Box::new(|i, c| 0.5 + 4.0 * raw[c * n + i]),
        Box::new(|i, c| 0.5 + 4.0 * shaped[c * n + i]),
        Box::new(|i, _| (gate[i] * 255.0 / 20.0).min(1.0)),
    ];
    let k = 3;
    let mut pic = RgbImage::new(panels.len() * s * k, s * k);
    for (p, f) in panels.iter().enumerate() {
        for y in 0..s * k {
            for x in 0..s * k {
                let i = (y / k) * s + x / k;
                let o = (y * pic.width + p * s * k + x) * 3;
                for c in 0..3 {
                    pic.data[o + c] = (f(i, c).clamp(0.0, 1.0) * 255.0).round() as u8;
                }
            }
        }
    }
    pic.save(path)?;
    Ok(())
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
    v.iter().sum::<f64>() / v.len() as f64
}
