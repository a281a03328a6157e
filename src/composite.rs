//! Residual compositing: `frame += inverse_warp(mask * intensity * (out - crop))`.
//!
//! Only the change the model made is carried back, so colour is not shifted by the
//! model's own rendering, pixels outside the feathered face mask stay bit-identical, and
//! `intensity` scales the expression continuously (0 = untouched, 2 = exaggerated).

use opencv::core::{Mat, Scalar, Size, CV_32FC3};
use opencv::imgproc;
use opencv::prelude::*;

use crate::align::{affine_mat, apply, Alignment};
use crate::detect::Point;
use crate::error::Result;
use crate::frame::FrameMut;

/// A feathered elliptical face mask over an SxS crop: 1 inside the inner ellipse, a
/// raised-cosine ramp to exactly 0 at the outer one, 0 beyond (and on the crop border,
/// so no seam can appear where the crop ends).
pub fn face_mask(size: usize) -> Vec<f32> {
    let s = size as f32;
    let (cx, cy) = (0.5 * s, 0.53 * s);
    let (rx, ry) = (0.41 * s, 0.45 * s);
    let feather = 0.22;
    let mut mask = vec![0.0; size * size];
    for y in 0..size {
        for x in 0..size {
            let dx = (x as f32 + 0.5 - cx) / rx;
            let dy = (y as f32 + 0.5 - cy) / ry;
            let r = (dx * dx + dy * dy).sqrt();
            let on_border = x == 0 || y == 0 || x + 1 == size || y + 1 == size;
            mask[y * size + x] = if on_border || r >= 1.0 {
                0.0
            } else if r <= 1.0 - feather {
                1.0
            } else {
                let t = (r - (1.0 - feather)) / feather;
                0.5 * (1.0 + (std::f32::consts::PI * t).cos())
            };
        }
    }
    mask
}

/// Reusable buffers for compositing faces of one size.
pub struct Compositor {
    size: usize,
    mask: Vec<f32>,
    residual: Mat,
    warped: Mat,
}

impl Compositor {
    pub fn new(size: usize) -> Result<Self> {
        Ok(Compositor {
            size,
            mask: face_mask(size),
            residual: Mat::new_rows_cols_with_default(
                size as i32,
                size as i32,
                CV_32FC3,
                Scalar::all(0.0),
            )?,
            warped: Mat::default(),
        })
    }

    pub fn mask(&self) -> &[f32] {
        &self.mask
    }

    /// Adds the model's change to one face back into the frame. `crop` and `out` are
    /// planar RGB in [0, 1] (3*S*S values each).
    pub fn apply(
        &mut self,
        frame: &mut FrameMut,
        crop: &[f32],
        out: &[f32],
        alignment: &Alignment,
        intensity: f32,
    ) -> Result<()> {
        if intensity == 0.0 {
            return Ok(());
        }
        let n = self.size * self.size;
        {
            let res = self.residual.data_typed_mut::<opencv::core::Vec3f>()?;
            let gain = 255.0 * intensity;
            for (i, r) in res.iter_mut().enumerate() {
                let m = self.mask[i] * gain;
                for c in 0..3 {
                    r[c] = if m == 0.0 {
                        0.0
                    } else {
                        m * (out[c * n + i] - crop[c * n + i])
                    };
                }
            }
        }
        let Some((x0, y0, w, h)) = frame_roi(frame, alignment) else {
            return Ok(());
        };
        let mut m = alignment.to_frame;
        m[0][2] -= x0 as f64;
        m[1][2] -= y0 as f64;
        imgproc::warp_affine(
            &self.residual,
            &mut self.warped,
            &affine_mat(&m)?,
            Size::new(w as i32, h as i32),
            imgproc::INTER_LINEAR,
            opencv::core::BORDER_CONSTANT,
            Scalar::all(0.0),
        )?;
        add_residual(frame, &self.warped, x0, y0, w, h)
    }
}

/// The frame rectangle covered by the crop (clipped), or None if it is off-frame.
fn frame_roi(frame: &FrameMut, alignment: &Alignment) -> Option<(usize, usize, usize, usize)> {
    let s = alignment.size as f32;
    let corners = [(0.0, 0.0), (s, 0.0), (0.0, s), (s, s)]
        .map(|(x, y)| apply(&alignment.to_frame, Point { x, y }));
    let fx = |f: fn(f32, f32) -> f32, init: f32, get: fn(&Point) -> f32| {
        corners.iter().map(get).fold(init, f)
    };
    let x0 = fx(f32::min, f32::MAX, |p| p.x).floor().max(0.0) as usize;
    let y0 = fx(f32::min, f32::MAX, |p| p.y).floor().max(0.0) as usize;
    let x1 = (fx(f32::max, f32::MIN, |p| p.x).ceil() as isize + 1).clamp(0, frame.width() as isize)
        as usize;
    let y1 = (fx(f32::max, f32::MIN, |p| p.y).ceil() as isize + 1).clamp(0, frame.height() as isize)
        as usize;
    (x1 > x0 && y1 > y0).then(|| (x0, y0, x1 - x0, y1 - y0))
}

fn add_residual(
    frame: &mut FrameMut,
    warped: &Mat,
    x0: usize,
    y0: usize,
    w: usize,
    h: usize,
) -> Result<()> {
    let bpp = frame.layout().bytes_per_pixel();
    let offsets = frame.layout().rgb_offsets();
    let stride = frame.stride();
    let res = warped.data_typed::<opencv::core::Vec3f>()?;
    let data = frame.data_mut();
    for y in 0..h {
        let row = (y0 + y) * stride + x0 * bpp;
        for x in 0..w {
            let r = res[y * w + x];
            if r[0] == 0.0 && r[1] == 0.0 && r[2] == 0.0 {
                continue;
            }
            let px = row + x * bpp;
            for c in 0..3 {
                let v = &mut data[px + offsets[c]];
                *v = (*v as f32 + r[c]).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    Ok(())
}
