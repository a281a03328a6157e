//! Alignment: a similarity transform (rotation, uniform scale, translation) from a
//! face's eyes, nose and mouth to the model's canonical template, the SxS crop it
//! produces, and the inverse that takes model output back into the frame.
//!
//! The trainer crops its training faces with this same code, so a model sees faces at
//! inference exactly as it saw them in training.

use opencv::core::{Mat, Point2f, Scalar, Size, Vector, CV_64F};
use opencv::prelude::*;
use opencv::{calib3d, imgproc};

use crate::detect::{Face, Point};
use crate::error::{Error, Result};
use crate::frame::{FrameMut, RgbImage};

/// Canonical positions (crop pixels) of image-left eye, image-right eye, nose tip and
/// mouth centre for a `size`x`size` crop.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Template {
    pub size: usize,
    pub points: [[f32; 2]; 4],
}

impl Template {
    /// Where the LSRF authors' 128x128 crops have the features (eyes near (40,45) and
    /// (92,43), nose near (68,77), mouth below; forehead to chin in view), scaled to
    /// `size`, so that their published weights apply to our crops.
    pub fn lsrf(size: usize) -> Self {
        let s = size as f32 / 128.0;
        let base = [[40.0, 45.0], [92.0, 43.0], [67.0, 77.0], [66.0, 101.0]];
        Template {
            size,
            points: base.map(|[x, y]| [x * s, y * s]),
        }
    }
}

/// A 2x3 affine matrix `[a b tx; c d ty]` in row-major order.
pub type Affine = [[f64; 3]; 2];

/// Maps a point through an affine matrix.
pub fn apply(m: &Affine, p: Point) -> Point {
    let (x, y) = (p.x as f64, p.y as f64);
    Point {
        x: (m[0][0] * x + m[0][1] * y + m[0][2]) as f32,
        y: (m[1][0] * x + m[1][1] * y + m[1][2]) as f32,
    }
}

/// The inverse of an invertible affine matrix.
pub fn invert(m: &Affine) -> Result<Affine> {
    let det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
    if det.abs() < 1e-12 {
        return Err(Error::Frame("degenerate alignment transform".into()));
    }
    let (a, b, c, d) = (m[1][1] / det, -m[0][1] / det, -m[1][0] / det, m[0][0] / det);
    Ok([
        [a, b, -(a * m[0][2] + b * m[1][2])],
        [c, d, -(c * m[0][2] + d * m[1][2])],
    ])
}

/// Frame -> crop and crop -> frame transforms of one face.
#[derive(Debug, Clone, PartialEq)]
pub struct Alignment {
    pub to_crop: Affine,
    pub to_frame: Affine,
    pub size: usize,
}

impl Alignment {
    /// Least-squares similarity transform from the face's four points to the template
    /// (OpenCV `estimateAffinePartial2D`; a huge RANSAC threshold keeps every point an
    /// inlier, and the Levenberg-Marquardt refinement then fits all four).
    pub fn estimate(points: &[Point; 4], template: &Template) -> Result<Self> {
        let from: Vector<Point2f> = points.iter().map(|p| Point2f::new(p.x, p.y)).collect();
        let to: Vector<Point2f> = template
            .points
            .iter()
            .map(|p| Point2f::new(p[0], p[1]))
            .collect();
        let mut inliers = Mat::default();
        let m = calib3d::estimate_affine_partial_2d(
            &from,
            &to,
            &mut inliers,
            calib3d::RANSAC,
            1e6,
            2000,
            0.99,
            30,
        )?;
        if m.empty() || m.typ() != CV_64F {
            return Err(Error::Frame(
                "face keypoints are degenerate: no similarity transform fits them".into(),
            ));
        }
        let mut to_crop = [[0.0; 3]; 2];
        for (r, row) in to_crop.iter_mut().enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                *v = *m.at_2d::<f64>(r as i32, c as i32)?;
            }
        }
        Ok(Alignment {
            to_frame: invert(&to_crop)?,
            to_crop,
            size: template.size,
        })
    }

    pub fn for_face(face: &Face, template: &Template) -> Result<Self> {
        Self::estimate(&face.alignment_points(), template)
    }

    /// The face's SxS crop, in the frame's own pixel layout (edges replicated).
    pub fn warp_crop(&self, frame: &FrameMut) -> Result<Mat> {
        let mut crop = Mat::default();
        let m = affine_mat(&self.to_crop)?;
        let s = self.size as i32;
        imgproc::warp_affine(
            &frame.as_mat()?,
            &mut crop,
            &m,
            Size::new(s, s),
            imgproc::INTER_LINEAR,
            opencv::core::BORDER_REPLICATE,
            Scalar::default(),
        )?;
        Ok(crop)
    }

    /// The crop as a packed RGB image (what `prepare` caches for training).
    pub fn crop_rgb(&self, frame: &FrameMut) -> Result<RgbImage> {
        let crop = self.warp_crop(frame)?;
        let bpp = frame.layout().bytes_per_pixel();
        let [ro, go, bo] = frame.layout().rgb_offsets();
        let src = crop.data_bytes()?;
        let mut img = RgbImage::new(self.size, self.size);
        for (i, px) in img.data.chunks_exact_mut(3).enumerate() {
            let p = &src[i * bpp..];
            px.copy_from_slice(&[p[ro], p[go], p[bo]]);
        }
        Ok(img)
    }
}

pub(crate) fn affine_mat(m: &Affine) -> Result<Mat> {
    Ok(Mat::from_slice_2d(&[m[0].to_vec(), m[1].to_vec()])?)
}

/// Writes a crop in the frame's layout into planar RGB floats in [0, 1] (`out` holds
/// 3*S*S values: the model's input layout).
pub fn crop_to_planar(
    crop: &Mat,
    layout: crate::frame::PixelLayout,
    out: &mut [f32],
) -> Result<()> {
    let bpp = layout.bytes_per_pixel();
    let offsets = layout.rgb_offsets();
    let src = crop.data_bytes()?;
    let n = src.len() / bpp;
    if out.len() != 3 * n {
        return Err(Error::Frame(format!(
            "crop has {n} pixels, output buffer {}",
            out.len()
        )));
    }
    for (c, &o) in offsets.iter().enumerate() {
        let plane = &mut out[c * n..(c + 1) * n];
        for (i, v) in plane.iter_mut().enumerate() {
            *v = src[i * bpp + o] as f32 / 255.0;
        }
    }
    Ok(())
}
