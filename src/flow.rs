//! Geometry-first synthesis (model contract v2): moving a face's own pixels by the
//! model's expression flow, at the frame's resolution.
//!
//! A flow model outputs, besides `face_out`, a backward displacement field over its SxS
//! crop: the edited crop at pixel x samples the input crop at x + flow(x) (pixel
//! centres; `cv::remap` with map = x + flow, bilinear, edge replicated). Running that
//! warp on the 128 px crop and pasting the crop back would blur a large face and throw
//! away its detail, so the runtime carries the *displacement* into frame space instead
//! and warps the frame itself:
//!
//! - scale: `intensity * mask(x) * flow(x)`, so intensity 0.5 is half the movement (half
//!   a smile, not a half-transparent one) and the feathered mask fades the movement out
//!   before the crop's edge;
//! - map: a crop displacement `d` is the frame displacement `L d`, where `L` is the
//!   linear part of `alignment.to_frame` (the similarity's rotation and scale), because
//!   the edited frame at `p = T(c)` must sample the input frame at `T(c + d) = p + L d`;
//! - resample: the compositor samples that field (with the residual) at each frame
//!   pixel's crop position, remaps the frame through `p + d_frame(p)` into a scratch
//!   image ([`FrameRemap`]: `cv::remap`, bicubic or Lanczos, edges replicated), and copies back
//!   only pixels whose change is not zero, so everything outside the mask stays
//!   bit-identical and no pixel is read after it was written.
//!
//! [`FlowWarper::warp_crop`] applies the full flow to the model's input crop, which is
//! what a v2 model's `face_out` was computed on; the compositor takes the appearance
//! residual against that.

use opencv::core::{Mat, Scalar, Vec2f, CV_32FC2};
use opencv::imgproc;
use opencv::prelude::*;

use crate::align::Affine;
use crate::error::{Error, Result};
use crate::frame::FrameMut;

/// The 2x2 linear part `L` of an affine matrix: how it maps displacement vectors.
pub fn linear_part(m: &Affine) -> [[f32; 2]; 2] {
    [
        [m[0][0] as f32, m[0][1] as f32],
        [m[1][0] as f32, m[1][1] as f32],
    ]
}

/// The frame displacement of a crop pixel: `L * (gain * (dx, dy))`, where `gain` is
/// `intensity * mask` at that pixel.
pub fn frame_displacement(l: &[[f32; 2]; 2], gain: f32, dx: f32, dy: f32) -> [f32; 2] {
    let (x, y) = (gain * dx, gain * dy);
    [l[0][0] * x + l[0][1] * y, l[1][0] * x + l[1][1] * y]
}

/// Reusable buffers for the crop warp of faces of one crop size (kept between frames,
/// so a steady stream allocates nothing).
pub struct FlowWarper {
    size: usize,
    /// SxS CV_32FC2 sample positions of the crop warp.
    crop_map: Mat,
}

impl FlowWarper {
    pub fn new(size: usize) -> Result<Self> {
        let s = size as i32;
        Ok(FlowWarper {
            size,
            crop_map: Mat::new_rows_cols_with_default(s, s, CV_32FC2, Scalar::all(0.0))?,
        })
    }

    /// The model's input crop warped by the full flow (what a v2 model's `face_out`
    /// was computed on): `out(x) = crop(x + flow(x))`. `crop` and `out` are planar RGB
    /// (3*S*S values), `flow` the dx plane then the dy plane (2*S*S, crop pixels).
    pub fn warp_crop(&mut self, crop: &[f32], flow: &[f32], out: &mut [f32]) -> Result<()> {
        let n = self.size * self.size;
        if crop.len() != 3 * n || out.len() != 3 * n || flow.len() != 2 * n {
            return Err(Error::Frame(format!(
                "crop warp of a {s}x{s} crop needs {} crop, {} flow and {} output values; got {}, {} and {}",
                3 * n,
                2 * n,
                3 * n,
                crop.len(),
                flow.len(),
                out.len(),
                s = self.size,
            )));
        }
        fill_crop_map(&mut self.crop_map, flow, self.size)?;
        let s = self.size as i32;
        for (plane, warped) in crop.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
            // Headers over the caller's planes: OpenCV reads and writes them in place
            // (the output header already has the size and type remap produces).
            let plane = Mat::new_rows_cols_with_data(s, s, plane)?;
            let mut warped = Mat::new_rows_cols_with_data_mut(s, s, warped)?;
            let target = warped.data();
            imgproc::remap(
                &plane,
                &mut warped,
                &self.crop_map,
                &opencv::core::no_array(),
                imgproc::INTER_LINEAR,
                opencv::core::BORDER_REPLICATE,
                Scalar::default(),
            )?;
            if warped.data() != target {
                return Err(Error::Frame(
                    "OpenCV wrote the crop warp elsewhere than the output buffer".into(),
                ));
            }
        }
        Ok(())
    }
}

/// The frame sampled at arbitrary positions over one face's rectangle: `cv::remap` of
/// the frame (any layout and stride, read in place) through a map the caller fills,
/// bicubic, frame edges replicated. The buffers are kept between frames.
#[derive(Default)]
pub struct FrameRemap {
    /// ROI CV_32FC2: absolute frame positions to sample.
    map: Mat,
    /// ROI, the frame's pixel type: the frame sampled through `map`.
    moved: Mat,
}

impl FrameRemap {
    /// The `w`x`h` map of sample positions (row-major), for the caller to fill.
    pub fn positions(&mut self, w: usize, h: usize) -> Result<&mut [Vec2f]> {
        let size = opencv::core::Size::new(w as i32, h as i32);
        if self.map.size()? != size {
            self.map = Mat::new_size_with_default(size, CV_32FC2, Scalar::all(0.0))?;
        }
        Ok(self.map.data_typed_mut::<Vec2f>()?)
    }

    /// Samples the frame at the map's positions; returns the sampled pixels, packed in
    /// the frame's layout. The frame itself is not written.
    ///
    /// The flow moves most pixels by a fraction of a pixel, and bilinear interpolation
    /// at half-pixel offsets averages neighbours (the face's detail would soften
    /// wherever it moves). Bicubic keeps most of the fine band; `sharp` (Lanczos, 8x8)
    /// keeps more of it at about twice the cost: RegFlow's face boxes keep 0.91–0.96 of
    /// their Laplacian variance instead of 0.85–0.89.
    pub fn sample(&mut self, frame: &FrameMut, sharp: bool) -> Result<&[u8]> {
        imgproc::remap(
            &frame.as_mat()?,
            &mut self.moved,
            &self.map,
            &opencv::core::no_array(),
            if sharp {
                imgproc::INTER_LANCZOS4
            } else {
                imgproc::INTER_CUBIC
            },
            opencv::core::BORDER_REPLICATE,
            Scalar::default(),
        )?;
        Ok(self.moved.data_bytes()?)
    }
}

/// Crop sample positions `x + flow(x)` (the backward convention of the contract).
fn fill_crop_map(map: &mut Mat, flow: &[f32], size: usize) -> Result<()> {
    let n = size * size;
    let (dx, dy) = flow.split_at(n);
    let rows = map.data_typed_mut::<Vec2f>()?.chunks_exact_mut(size);
    for (y, (row, (dx, dy))) in rows
        .zip(dx.chunks_exact(size).zip(dy.chunks_exact(size)))
        .enumerate()
    {
        for (x, m) in row.iter_mut().enumerate() {
            *m = Vec2f::from([x as f32 + dx[x], y as f32 + dy[x]]);
        }
    }
    Ok(())
}
