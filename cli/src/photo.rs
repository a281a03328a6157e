//! A photo file as `apply` reads and writes it. The processor edits 8-bit RGB; the
//! rest of what the file holds comes back as it was: a grey photo stays grey, a 16-bit
//! one keeps 16 bits (the edit is added at full depth, so every pixel it did not touch
//! keeps its exact value), an alpha channel is kept as it was, and a photo in which
//! nothing changed is copied byte for byte (no second JPEG generation).

use std::path::Path;

use anyhow::{bail, Context, Result};
use opencv::core::{Mat, Vector, CV_16U, CV_32F, CV_8U};
use opencv::imgcodecs;
use opencv::imgproc;
use opencv::prelude::*;
use reggan::RgbImage;

/// Extensions whose files may hold an alpha channel (read a second time, unchanged, to
/// get it: OpenCV's orientation-aware read drops it).
const ALPHA_FORMATS: [&str; 5] = ["png", "webp", "tif", "tiff", "bmp"];

pub struct Photo {
    /// As decoded: grey, BGR or BGRA; 8 or 16 bits (or float); EXIF orientation
    /// applied (unless the file has alpha: such formats carry no orientation).
    decoded: Mat,
    /// The colour channels as 8-bit RGB: what the processor edits.
    pub rgb: RgbImage,
}

impl Photo {
    pub fn load(path: &Path) -> Result<Self> {
        let unreadable =
            || anyhow::anyhow!("cannot read image {}: not a readable image", path.display());
        let name = path.to_str().context("image paths must be UTF-8")?;
        let flags = imgcodecs::IMREAD_ANYCOLOR | imgcodecs::IMREAD_ANYDEPTH;
        let mut decoded = imgcodecs::imread(name, flags).map_err(|_| unreadable())?;
        if decoded.empty() {
            return Err(unreadable());
        }
        if ALPHA_FORMATS.contains(&extension(path).as_str()) {
            let raw =
                imgcodecs::imread(name, imgcodecs::IMREAD_UNCHANGED).map_err(|_| unreadable())?;
            if raw.channels() == 4 && raw.size()? == decoded.size()? {
                decoded = raw;
            }
        }
        if !matches!(decoded.channels(), 1 | 3 | 4) {
            bail!(
                "{}: {} channels (grey, colour or colour with alpha only)",
                path.display(),
                decoded.channels()
            );
        }
        let rgb = to_rgb8(&decoded)?;
        Ok(Photo { decoded, rgb })
    }

    /// The photo with its colour channels replaced by `edited` (the edited `rgb`): the
    /// decoded photo's channels, depth and alpha.
    pub fn restore(&self, edited: &RgbImage) -> Result<Mat> {
        let colour_of = |image: &RgbImage| -> Result<Mat> {
            let rgb = crate::images::to_mat(image)?;
            let code = match self.decoded.channels() {
                1 => imgproc::COLOR_RGB2GRAY,
                _ => imgproc::COLOR_RGB2BGR,
            };
            let mut out = Mat::default();
            imgproc::cvt_color_def(&rgb, &mut out, code)?;
            Ok(out)
        };
        let edited8 = colour_of(edited)?;
        let colour = if self.decoded.depth() == CV_8U {
            edited8
        } else {
            // The original at full depth plus the edit's change, scaled to that depth:
            // where the edit changed nothing the original comes back exactly.
            let before8 = colour_of(&self.rgb)?;
            let scale = full_scale(self.decoded.depth())? / 255.0;
            let (mut change, mut before, mut after) =
                (Mat::default(), Mat::default(), Mat::default());
            opencv::core::subtract(
                &edited8,
                &before8,
                &mut change,
                &opencv::core::no_array(),
                CV_32F,
            )?;
            colour_channels(&self.decoded)?.convert_to(&mut before, CV_32F, 1.0, 0.0)?;
            opencv::core::scale_add(&change, scale, &before, &mut after)?;
            let mut out = Mat::default();
            after.convert_to(&mut out, self.decoded.depth(), 1.0, 0.0)?;
            out
        };
        if self.decoded.channels() != 4 {
            return Ok(colour);
        }
        let mut planes = Vector::<Mat>::new();
        opencv::core::split(&colour, &mut planes)?;
        let mut alpha = Mat::default();
        opencv::core::extract_channel(&self.decoded, &mut alpha, 3)?;
        planes.push(alpha);
        let mut out = Mat::default();
        opencv::core::merge(&planes, &mut out)?;
        Ok(out)
    }

    /// Writes `edited` as [`restore`](Self::restore) makes it; a photo the processor did
    /// not change is copied from `input` when the format stays the same.
    pub fn save(&self, edited: &RgbImage, input: &Path, output: &Path) -> Result<()> {
        if edited.data == self.rgb.data && same_format(input, output) {
            std::fs::copy(input, output).with_context(|| {
                format!("cannot copy {} to {}", input.display(), output.display())
            })?;
            return Ok(());
        }
        write(&self.restore(edited)?, output)
    }

    /// `before | after`, both as the file holds them.
    pub fn save_side_by_side(&self, edited: &RgbImage, output: &Path) -> Result<()> {
        let mut both = Mat::default();
        let halves = Vector::<Mat>::from_iter([self.restore(&self.rgb)?, self.restore(edited)?]);
        opencv::core::hconcat(&halves, &mut both)?;
        write(&both, output)
    }
}

fn write(image: &Mat, output: &Path) -> Result<()> {
    let name = output.to_str().context("image paths must be UTF-8")?;
    if !imgcodecs::imwrite(name, image, &Vector::new())? {
        bail!(
            "OpenCV could not write {} (unknown extension?)",
            output.display()
        );
    }
    Ok(())
}

/// The colour channels as 8-bit RGB.
fn to_rgb8(decoded: &Mat) -> Result<RgbImage> {
    let mut eight = Mat::default();
    let scale = 255.0 / full_scale(decoded.depth())?;
    decoded.convert_to(&mut eight, CV_8U, scale, 0.0)?;
    let code = match decoded.channels() {
        1 => imgproc::COLOR_GRAY2RGB,
        3 => imgproc::COLOR_BGR2RGB,
        _ => imgproc::COLOR_BGRA2RGB,
    };
    let mut rgb = Mat::default();
    imgproc::cvt_color_def(&eight, &mut rgb, code)?;
    crate::images::from_mat(&rgb)
}

/// Grey or BGR: the decoded photo without its alpha.
fn colour_channels(decoded: &Mat) -> Result<Mat> {
    if decoded.channels() != 4 {
        return Ok(decoded.clone());
    }
    let mut bgr = Mat::default();
    imgproc::cvt_color_def(decoded, &mut bgr, imgproc::COLOR_BGRA2BGR)?;
    Ok(bgr)
}

/// The value of full white at this sample depth.
fn full_scale(depth: i32) -> Result<f64> {
    match depth {
        CV_8U => Ok(255.0),
        CV_16U => Ok(65535.0),
        CV_32F | opencv::core::CV_64F => Ok(1.0),
        d => bail!("images of sample type {d} are not supported (8 or 16 bits, or float)"),
    }
}

fn extension(path: &Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}

fn same_format(a: &Path, b: &Path) -> bool {
    let canonical = |e: String| match e.as_str() {
        "jpeg" | "jpe" => "jpg".to_string(),
        "tif" => "tiff".to_string(),
        _ => e,
    };
    canonical(extension(a)) == canonical(extension(b))
}
