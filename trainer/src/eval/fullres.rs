//! Quality at the frame's own resolution: the whole product path (detect, align, model,
//! flow warp, composite; `reggan::FrameProcessor` as the element runs it) on original
//! photos. Sharpness = Laplacian variance of the grey face box, output over input; the
//! median over photos is reported (what a user sees: a face that went soft or not).

use std::path::{Path, PathBuf};

use anyhow::Result;
use opencv::core::Rect;
use reggan::frame::laplacian_variance;
use reggan::{Device, FrameProcessor, ProcessorConfig, RgbImage};
use serde::Serialize;

/// One model × expression at full resolution.
#[derive(Debug, Clone, Serialize)]
pub struct FullResRow {
    pub method: String,
    pub expression: String,
    /// Photos in which a face was found and changed.
    pub n: usize,
    pub median_sharpness: f64,
    /// Median CIELAB chroma change over the upper face ([`super::colour`]).
    pub median_chroma: f64,
}

/// Output/input sharpness of the largest face's box for each photo (photos without a
/// face are skipped).
pub fn sharpness_ratios(model: &Path, photos: &[PathBuf], expression: &str) -> Result<Vec<f64>> {
    let config = ProcessorConfig {
        expression: expression.into(),
        ..Default::default()
    };
    sharpness_ratios_with(model, photos, config)
}

/// [`sharpness_ratios`] with the processor's other settings (compositing) given; one
/// face, one thread, CPU.
pub fn sharpness_ratios_with(
    model: &Path,
    photos: &[PathBuf],
    config: ProcessorConfig,
) -> Result<Vec<f64>> {
    Ok(photo_scores(model, photos, config)?
        .into_iter()
        .map(|p| p.sharpness)
        .collect())
}

/// What one photo's face box shows after the whole product path.
#[derive(Debug, Clone, Copy)]
pub struct PhotoScore {
    /// Laplacian variance, output / input.
    pub sharpness: f64,
    /// CIELAB chroma change over the upper face (brows, eyes, nose).
    pub chroma: f64,
}

/// [`PhotoScore`] of the largest face of each photo (photos without a face are skipped);
/// one face, one thread, CPU.
pub fn photo_scores(
    model: &Path,
    photos: &[PathBuf],
    config: ProcessorConfig,
) -> Result<Vec<PhotoScore>> {
    let config = ProcessorConfig {
        device: Device::Cpu,
        threads: 1,
        max_faces: 1,
        ..config
    };
    let mut processor = FrameProcessor::new(model, config)?;
    let mut ratios = Vec::new();
    for photo in photos {
        let input = RgbImage::load(photo)?;
        let mut output = input.clone();
        let report = processor.process(&mut output.as_frame())?;
        let Some(face) = report.faces.first() else {
            continue;
        };
        let b = &face.bbox;
        let x0 = b.x.max(0.0) as i32;
        let y0 = b.y.max(0.0) as i32;
        let x1 = ((b.x + b.w) as i32).min(input.width as i32);
        let y1 = ((b.y + b.h) as i32).min(input.height as i32);
        if x1 - x0 < 8 || y1 - y0 < 8 {
            continue;
        }
        let rect = Rect::new(x0, y0, x1 - x0, y1 - y0);
        let before = laplacian_variance(&input, rect)?;
        let after = laplacian_variance(&output, rect)?;
        ratios.push(PhotoScore {
            sharpness: after / before.max(1e-9),
            chroma: super::colour::chroma_change(&input, &output, super::colour::upper_face(rect))?,
        });
    }
    Ok(ratios)
}

pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}
