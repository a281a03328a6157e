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
//!   image ([`FrameRemap`]: coarse band bilinear, fine band nearest, edges
//!   replicated), and copies back only pixels whose change is not zero, so everything
//!   outside the mask stays bit-identical and no pixel is read after it was written.
//!
//! [`FlowWarper::warp_crop`] applies the full flow to the model's input crop, which is
//! what a v2 model's `face_out` was computed on; the compositor takes the appearance
//! residual against that.

use opencv::core::{no_array, Mat, Rect, Scalar, Size, Vec2f, BORDER_REPLICATE, CV_16S, CV_32FC2};
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

/// Gaussian sigma (frame pixels) that splits the frame into the coarse band, sampled
/// bilinearly, and the fine band, sampled at the nearest pixel ([`FrameRemap`]).
pub const MOVE_SPLIT_SIGMA: f64 = 1.2;

/// The frame sampled at arbitrary positions over one face's rectangle, through a map
/// the caller fills (absolute frame positions), frame edges replicated; any layout and
/// stride, read in place. The buffers are kept between frames.
///
/// The flow moves most pixels by a fraction of a pixel, and any interpolation at a
/// half-pixel offset averages neighbours: bilinear would soften the face wherever it
/// moves, bicubic keeps 0.85–0.89 of its Laplacian variance (Lanczos 0.91–0.97, at
/// twice the cost; neither is vectorised in OpenCV 4.6). So the frame is split at
/// [`MOVE_SPLIT_SIGMA`]: the coarse band (smooth, where interpolation loses nothing)
/// is sampled bilinearly, the fine band (skin texture, lashes, stubble) at the nearest
/// pixel, which keeps all of it, within half a pixel of where it belongs. Their sum is
/// the frame itself wherever the map is the identity. RegFlow's face boxes keep
/// 1.00–1.01 of their Laplacian variance, at about 0.8 of bicubic's cost.
#[derive(Default)]
pub struct FrameRemap {
    /// ROI CV_32FC2: absolute frame positions to sample.
    map: Mat,
    /// The same positions relative to `source`'s corner.
    local_map: Mat,
    /// The coarse band of the frame's rectangle that the map reads (frame type), and
    /// the fine band, the rest (signed 16-bit).
    coarse: Mat,
    fine: Mat,
    /// Both sampled through the map, and their sum in the frame's pixel type.
    moved_coarse: Mat,
    moved_fine: Mat,
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
    pub fn sample(&mut self, frame: &FrameMut) -> Result<&[u8]> {
        let source = self.source_rect(frame)?;
        let whole = frame.as_mat()?;
        let region = Mat::roi(&whole, source)?;
        imgproc::gaussian_blur(
            &region,
            &mut self.coarse,
            Size::new(0, 0),
            MOVE_SPLIT_SIGMA,
            MOVE_SPLIT_SIGMA,
            BORDER_REPLICATE,
        )?;
        opencv::core::subtract(&region, &self.coarse, &mut self.fine, &no_array(), CV_16S)?;
        if self.local_map.size()? != self.map.size()? {
            self.local_map =
                Mat::new_size_with_default(self.map.size()?, CV_32FC2, Scalar::all(0.0))?;
        }
        let (dx, dy) = (source.x as f32, source.y as f32);
        for (l, p) in self
            .local_map
            .data_typed_mut::<Vec2f>()?
            .iter_mut()
            .zip(self.map.data_typed::<Vec2f>()?)
        {
            *l = Vec2f::from([p[0] - dx, p[1] - dy]);
        }
        let sampled = |src: &Mat, dst: &mut Mat, interpolation| {
            imgproc::remap(
                src,
                dst,
                &self.local_map,
                &no_array(),
                interpolation,
                BORDER_REPLICATE,
                Scalar::default(),
            )
        };
        sampled(&self.coarse, &mut self.moved_coarse, imgproc::INTER_LINEAR)?;
        sampled(&self.fine, &mut self.moved_fine, imgproc::INTER_NEAREST)?;
        opencv::core::add(
            &self.moved_coarse,
            &self.moved_fine,
            &mut self.moved,
            &no_array(),
            self.moved_coarse.depth(),
        )?;
        Ok(self.moved.data_bytes()?)
    }

    /// The frame's rectangle that the map's positions read, with room for the coarse
    /// band's blur around them.
    fn source_rect(&self, frame: &FrameMut) -> Result<Rect> {
        let (mut x0, mut y0, mut x1, mut y1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
        for p in self.map.data_typed::<Vec2f>()? {
            x0 = x0.min(p[0]);
            y0 = y0.min(p[1]);
            x1 = x1.max(p[0]);
            y1 = y1.max(p[1]);
        }
        let reach = (3.0 * MOVE_SPLIT_SIGMA).ceil() as f32 + 1.0;
        let (w, h) = (frame.width() as f32, frame.height() as f32);
        let (x0, y0) = (
            (x0 - reach).floor().clamp(0.0, w - 1.0),
            (y0 - reach).floor().clamp(0.0, h - 1.0),
        );
        let (x1, y1) = (
            (x1 + reach).ceil().clamp(x0 + 1.0, w),
            (y1 + reach).ceil().clamp(y0 + 1.0, h),
        );
        Ok(Rect::new(
            x0 as i32,
            y0 as i32,
            (x1 - x0) as i32,
            (y1 - y0) as i32,
        ))
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
