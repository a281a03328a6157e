//! Residual compositing: `frame += inverse_warp(mask * intensity * (out - crop))`.
//!
//! Only the change the model made is carried back, so colour is not shifted by the
//! model's own rendering, pixels outside the feathered face mask stay bit-identical, and
//! `intensity` scales the expression continuously (0 = untouched, 2 = exaggerated).
//!
//! For a flow model (contract v2) the face's own frame pixels are moved by the scaled
//! flow first ([`crate::flow`]), and the residual is taken against the crop warped by
//! the full flow, which is what the model's `face_out` was computed on:
//! `frame(p) = frame(p + d_frame(p)) + residual(p)`, with the residual
//! `mask * intensity * (out - warp_crop(crop, flow))`. Both are sampled at each frame
//! pixel's crop position, only on the frame rows' spans that the mask can reach; the
//! frame is remapped once into a scratch image, and each changed pixel is written and
//! rounded once.

use opencv::core::{Mat, Scalar, Size, Vec2f, CV_32FC3};
use opencv::imgproc;
use opencv::prelude::*;

use crate::align::{affine_mat, apply, Affine, Alignment};
use crate::detect::Point;
use crate::error::{Error, Result};
use crate::flow::{frame_displacement, linear_part, FlowWarper, FrameRemap};
use crate::frame::FrameMut;

/// One crop pixel of a flow model's change: frame displacement dx, dy, the residual's
/// r, g, b, and zeros, so that bilinear reads are whole 4-lane vector operations.
type Texel = [f32; 8];

/// Zero pixels around a flow model's crop-space change, so that bilinear reads anywhere
/// in the mask's support (which reaches 2 pixels beyond the mask) stay inside it.
const CHANGE_PAD: usize = 2;

/// The outer ellipse of [`face_mask`] in crop pixel coordinates (pixel centres at
/// integers): the mask is zero outside it.
#[derive(Debug, Clone, Copy)]
struct MaskEllipse {
    cx: f32,
    cy: f32,
    rx: f32,
    ry: f32,
}

impl MaskEllipse {
    fn of_crop(size: usize) -> Self {
        let s = size as f32;
        MaskEllipse {
            cx: 0.5 * s - 0.5,
            cy: 0.53 * s - 0.5,
            rx: 0.41 * s,
            ry: 0.45 * s,
        }
    }

    /// The ellipse with both radii longer by `margin`, which contains every point within
    /// `margin` of this one.
    fn grown(self, margin: f32) -> Self {
        MaskEllipse {
            rx: self.rx + margin,
            ry: self.ry + margin,
            ..self
        }
    }

    /// The pixels [first, last] of frame row `y` whose crop position (through
    /// `to_crop`) lies inside the ellipse, or None. The crop position is linear along
    /// the row, so this is a quadratic inequality in x.
    fn frame_row_span(&self, to_crop: &Affine, y: f64) -> Option<(f64, f64)> {
        let [[a, b, c], [d, e, f]] = *to_crop;
        let (rx, ry) = (self.rx as f64, self.ry as f64);
        // u = alpha x + beta, v = gamma x + delta: the position in ellipse units.
        let (alpha, beta) = (a / rx, (b * y + c - self.cx as f64) / rx);
        let (gamma, delta) = (d / ry, (e * y + f - self.cy as f64) / ry);
        let qa = alpha * alpha + gamma * gamma;
        let qb = 2.0 * (alpha * beta + gamma * delta);
        let qc = beta * beta + delta * delta - 1.0;
        let disc = qb * qb - 4.0 * qa * qc;
        if disc < 0.0 || qa == 0.0 {
            return None;
        }
        let root = disc.sqrt();
        Some(((-qb - root) / (2.0 * qa), (-qb + root) / (2.0 * qa)))
    }
}

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

/// Reusable buffers for compositing faces of one size (kept between frames).
pub struct Compositor {
    size: usize,
    mask: Vec<f32>,
    /// Crop-space rectangle outside which the mask (and so every change) is zero.
    support: [f32; 4],
    /// SxS CV_32FC3 residual of a face-only model, and its warp over the face's ROI.
    residual: Mat,
    warped: Mat,
    /// A flow model's change over the crop, zero-padded (see [`CropChange`]).
    change: CropChange,
    flow: FlowWarper,
    /// The model's input crop warped by a flow model's flow (planar RGB).
    warped_crop: Vec<f32>,
    /// The frame pixels a flow model can change: per ROI row, a span of columns.
    spans: Vec<std::ops::Range<usize>>,
    /// The change of each span pixel, in span order (None where nothing changes).
    changes: Vec<Option<PixelChange>>,
    remap: FrameRemap,
}

impl Compositor {
    pub fn new(size: usize) -> Result<Self> {
        let mask = face_mask(size);
        let s = size as i32;
        Ok(Compositor {
            size,
            support: mask_support(&mask, size),
            mask,
            residual: Mat::new_rows_cols_with_default(s, s, CV_32FC3, Scalar::all(0.0))?,
            warped: Mat::default(),
            change: CropChange::new(size),
            flow: FlowWarper::new(size)?,
            warped_crop: vec![0.0; 3 * size * size],
            spans: Vec::new(),
            changes: Vec::new(),
            remap: FrameRemap::default(),
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
        self.apply_with_flow(frame, crop, out, None, alignment, intensity)
    }

    /// Like [`apply`](Self::apply), for a model that may also give a flow (2*S*S values:
    /// the dx plane, then the dy plane, in crop pixels). With a flow, the face's frame
    /// pixels move by `intensity * mask * flow` (mapped into the frame) and `out` is
    /// taken as the appearance on the crop warped by the whole flow.
    pub fn apply_with_flow(
        &mut self,
        frame: &mut FrameMut,
        crop: &[f32],
        out: &[f32],
        flow: Option<&[f32]>,
        alignment: &Alignment,
        intensity: f32,
    ) -> Result<()> {
        if intensity == 0.0 {
            return Ok(());
        }
        let n = self.size * self.size;
        if crop.len() != 3 * n || out.len() != 3 * n || flow.is_some_and(|f| f.len() != 2 * n) {
            return Err(Error::Frame(format!(
                "crop, model output and flow of {}, {} and {} values for a {s}x{s} face (need {}, {} and {})",
                crop.len(),
                out.len(),
                flow.map_or(0, <[f32]>::len),
                3 * n,
                3 * n,
                2 * n,
                s = self.size
            )));
        }
        let Some(roi) = frame_roi(frame, alignment, self.support) else {
            return Ok(());
        };
        match flow {
            None => self.add_face_residual(frame, crop, out, alignment, intensity, roi),
            Some(flow) => {
                self.move_and_add_residual(frame, crop, out, flow, alignment, intensity, roi)
            }
        }
    }

    /// A face-only model: `frame += warp(mask * intensity * (out - crop))`.
    fn add_face_residual(
        &mut self,
        frame: &mut FrameMut,
        crop: &[f32],
        out: &[f32],
        alignment: &Alignment,
        intensity: f32,
        roi: Roi,
    ) -> Result<()> {
        fill_residual(&mut self.residual, &self.mask, crop, out, intensity)?;
        warp_to_roi(&self.residual, &mut self.warped, alignment, roi)?;
        add_residual(frame, &self.warped, roi)
    }

    /// A flow model: move the face's pixels, then add the appearance residual.
    #[allow(clippy::too_many_arguments)]
    fn move_and_add_residual(
        &mut self,
        frame: &mut FrameMut,
        crop: &[f32],
        out: &[f32],
        flow: &[f32],
        alignment: &Alignment,
        intensity: f32,
        roi: Roi,
    ) -> Result<()> {
        self.flow.warp_crop(crop, flow, &mut self.warped_crop)?;
        self.change.fill(&ChangeInputs {
            mask: &self.mask,
            flow,
            linear: linear_part(&alignment.to_frame),
            base: &self.warped_crop,
            out,
            intensity,
        });
        self.find_spans(&alignment.to_crop, roi);
        self.sample_changes(&alignment.to_crop, roi)?;
        let moved = self.remap.sample(frame)?;
        write_changes(frame, moved, &self.spans, &self.changes, roi);
        Ok(())
    }

    /// Per ROI row, the columns whose crop position is near enough to the mask's ellipse
    /// for a bilinear read to see a non-zero change (so nothing is spent on the rest).
    fn find_spans(&mut self, to_crop: &Affine, roi: Roi) {
        let reach = MaskEllipse::of_crop(self.size).grown(2.0);
        self.spans.clear();
        for y in roi.y..roi.y + roi.h {
            let span = reach
                .frame_row_span(to_crop, y as f64)
                .map(|(first, last)| {
                    let first = (first.ceil().max(roi.x as f64) as usize).min(roi.x + roi.w);
                    let end = ((last.floor() + 1.0).max(0.0) as usize).min(roi.x + roi.w);
                    first..end.max(first)
                });
            self.spans.push(span.unwrap_or(0..0));
        }
    }

    /// Samples the crop-space change at each span pixel's crop position: the residual
    /// goes to `changes`, the sample position `p + d_frame(p)` to the remap's map (which
    /// holds p itself everywhere else).
    fn sample_changes(&mut self, to_crop: &Affine, roi: Roi) -> Result<()> {
        let [sx0, sy0, sx1, sy1] = self.support;
        let [[a, b, c], [d, e, f]] = to_crop.map(|row| row.map(|v| v as f32));
        let total = self.spans.iter().map(|s| s.len()).sum();
        self.changes.clear();
        self.changes.resize(total, None);
        let mut slots = self.changes.iter_mut();
        let positions = self.remap.positions(roi.w, roi.h)?;
        for ((y, span), row) in self
            .spans
            .iter()
            .enumerate()
            .zip(positions.chunks_exact_mut(roi.w))
        {
            let fy = (roi.y + y) as f32;
            let (first, end) = (span.start.max(roi.x) - roi.x, span.end.max(roi.x) - roi.x);
            for (x, p) in (roi.x..).zip(row.iter_mut()).take(first) {
                *p = Vec2f::from([x as f32, fy]);
            }
            for (x, p) in (roi.x..).zip(row.iter_mut()).skip(end) {
                *p = Vec2f::from([x as f32, fy]);
            }
            let (row_cx, row_cy) = (b * fy + c, e * fy + f);
            let positions = row[first..end].iter_mut();
            for ((x, p), slot) in span.clone().zip(positions).zip(slots.by_ref()) {
                let fx = x as f32;
                *p = Vec2f::from([fx, fy]);
                let (cx, cy) = (a * fx + row_cx, d * fx + row_cy);
                // The support rectangle keeps every read inside the padded change.
                if !(cx >= sx0 && cx <= sx1 && cy >= sy0 && cy <= sy1) {
                    continue;
                }
                let [dx, dy, r, g, b, ..] = self.change.at(cx, cy);
                let moves = dx != 0.0 || dy != 0.0;
                if moves {
                    *p = Vec2f::from([fx + dx, fy + dy]);
                } else if r == 0.0 && g == 0.0 && b == 0.0 {
                    continue;
                }
                *slot = Some(PixelChange {
                    residual: [r, g, b],
                    moves,
                });
            }
        }
        Ok(())
    }
}

/// What happens to one frame pixel under a flow model.
#[derive(Debug, Clone, Copy)]
struct PixelChange {
    /// Added to the colour, in 0..255 units.
    residual: [f32; 3],
    /// Whether the pixel takes its colour from the remapped frame (else its own).
    moves: bool,
}

/// What a flow model's crop-space change is made of.
struct ChangeInputs<'a> {
    mask: &'a [f32],
    flow: &'a [f32],
    /// The linear part of crop -> frame, for displacements.
    linear: [[f32; 2]; 2],
    /// What the residual is taken against: the input crop warped by the full flow.
    base: &'a [f32],
    out: &'a [f32],
    intensity: f32,
}

/// A flow model's change over the SxS crop, per pixel: frame displacement
/// `L * intensity * mask * flow`, then residual `255 * intensity * mask * (out - base)`;
/// exactly zero where the mask is and in a [`CHANGE_PAD`]-pixel border around the crop
/// (what `warpAffine` with BORDER_CONSTANT 0 would read there).
struct CropChange {
    size: usize,
    stride: usize,
    texels: Vec<Texel>,
}

impl CropChange {
    fn new(size: usize) -> Self {
        let stride = size + 2 * CHANGE_PAD;
        CropChange {
            size,
            stride,
            texels: vec![[0.0; 8]; stride * stride],
        }
    }

    fn fill(&mut self, inputs: &ChangeInputs) {
        let (s, n) = (self.size, self.size * self.size);
        for y in 0..s {
            let row = (y + CHANGE_PAD) * self.stride + CHANGE_PAD;
            for x in 0..s {
                let i = y * s + x;
                let g = inputs.intensity * inputs.mask[i];
                self.texels[row + x] = if g == 0.0 {
                    [0.0; 8]
                } else {
                    let [dx, dy] =
                        frame_displacement(&inputs.linear, g, inputs.flow[i], inputs.flow[n + i]);
                    let res =
                        |c: usize| 255.0 * g * (inputs.out[c * n + i] - inputs.base[c * n + i]);
                    [dx, dy, res(0), res(1), res(2), 0.0, 0.0, 0.0]
                };
            }
        }
    }

    /// Bilinear read at crop position (x, y) (pixel centres at integers), which must lie
    /// in the mask's support. All four taps zero gives exactly zero.
    #[inline]
    fn at(&self, x: f32, y: f32) -> Texel {
        let pad = CHANGE_PAD as f32;
        // Non-negative after padding, so truncation is floor.
        let (px, py) = (x + pad, y + pad);
        let (x0, y0) = (px as usize, py as usize);
        let (fx, fy) = (px - x0 as f32, py - y0 as f32);
        let i = y0 * self.stride + x0;
        let top = &self.texels[i..i + 2];
        let bottom = &self.texels[i + self.stride..i + self.stride + 2];
        let (p00, p10, p01, p11) = (&top[0], &top[1], &bottom[0], &bottom[1]);
        let mut out = [0.0; 8];
        for k in 0..8 {
            let top = p00[k] + fx * (p10[k] - p00[k]);
            let bottom = p01[k] + fx * (p11[k] - p01[k]);
            out[k] = top + fy * (bottom - top);
        }
        out
    }
}

/// `residual = 255 * intensity * mask * (out - base)` as interleaved RGB, exactly zero
/// where the mask is.
fn fill_residual(
    residual: &mut Mat,
    mask: &[f32],
    base: &[f32],
    out: &[f32],
    intensity: f32,
) -> Result<()> {
    let n = mask.len();
    let gain = 255.0 * intensity;
    for (i, r) in residual
        .data_typed_mut::<opencv::core::Vec3f>()?
        .iter_mut()
        .enumerate()
    {
        let m = mask[i] * gain;
        for c in 0..3 {
            r[c] = if m == 0.0 {
                0.0
            } else {
                m * (out[c * n + i] - base[c * n + i])
            };
        }
    }
    Ok(())
}

/// A rectangle of the frame: the part of it one face's change can reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Roi {
    pub x: usize,
    pub y: usize,
    pub w: usize,
    pub h: usize,
}

/// The crop-space bounding box of the mask's non-zero pixels, grown by two pixels: a
/// bilinear warp reads one pixel beyond a sample position, plus one for OpenCV's 1/32
/// pixel rounding of sample positions. Nothing outside it can change the frame.
fn mask_support(mask: &[f32], size: usize) -> [f32; 4] {
    let (mut x0, mut y0, mut x1, mut y1) = (size, size, 0, 0);
    for (i, _) in mask.iter().enumerate().filter(|(_, &m)| m != 0.0) {
        let (x, y) = (i % size, i / size);
        (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
    }
    let margin = 2.0;
    [
        x0 as f32 - margin,
        y0 as f32 - margin,
        x1 as f32 + margin,
        y1 as f32 + margin,
    ]
}

/// Warps crop-space data over the face's frame rectangle, zero outside the crop.
fn warp_to_roi(crop_data: &Mat, warped: &mut Mat, alignment: &Alignment, roi: Roi) -> Result<()> {
    let mut m: Affine = alignment.to_frame;
    m[0][2] -= roi.x as f64;
    m[1][2] -= roi.y as f64;
    imgproc::warp_affine(
        crop_data,
        warped,
        &affine_mat(&m)?,
        Size::new(roi.w as i32, roi.h as i32),
        imgproc::INTER_LINEAR,
        opencv::core::BORDER_CONSTANT,
        Scalar::all(0.0),
    )?;
    Ok(())
}

/// The frame rectangle covered by the crop-space rectangle `[x0, y0, x1, y1]`
/// (clipped), or None if it is off-frame.
pub(crate) fn frame_roi(frame: &FrameMut, alignment: &Alignment, rect: [f32; 4]) -> Option<Roi> {
    let [cx0, cy0, cx1, cy1] = rect;
    let corners = [(cx0, cy0), (cx1, cy0), (cx0, cy1), (cx1, cy1)]
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
    (x1 > x0 && y1 > y0).then_some(Roi {
        x: x0,
        y: y0,
        w: x1 - x0,
        h: y1 - y0,
    })
}

/// `v + change`, rounded half up and saturated to 0..=255.
fn add_rounded(v: u8, change: f32) -> u8 {
    round_to_u8(v as f32 + change)
}

/// Rounds half up and saturates to 0..=255: a float-to-int `as` cast saturates (and
/// maps NaN to 0), while `f32::round` would be a libm call per channel on baseline
/// x86-64.
fn round_to_u8(v: f32) -> u8 {
    (v + 0.5) as u8
}

fn add_residual(frame: &mut FrameMut, warped: &Mat, roi: Roi) -> Result<()> {
    let bpp = frame.layout().bytes_per_pixel();
    let offsets = frame.layout().rgb_offsets();
    let stride = frame.stride();
    let res = warped.data_typed::<opencv::core::Vec3f>()?;
    let data = frame.data_mut();
    for y in 0..roi.h {
        let row = (roi.y + y) * stride + roi.x * bpp;
        for x in 0..roi.w {
            let r = res[y * roi.w + x];
            if r[0] == 0.0 && r[1] == 0.0 && r[2] == 0.0 {
                continue;
            }
            let px = row + x * bpp;
            for c in 0..3 {
                let v = &mut data[px + offsets[c]];
                *v = add_rounded(*v, r[c]);
            }
        }
    }
    Ok(())
}

/// Writes each changed span pixel once: the remapped pixel where it moves (else the
/// frame's own) plus the residual, rounded. Unchanged pixels, and the 4th byte of 4-byte
/// layouts, are never written.
fn write_changes(
    frame: &mut FrameMut,
    moved: &[u8],
    spans: &[std::ops::Range<usize>],
    changes: &[Option<PixelChange>],
    roi: Roi,
) {
    let bpp = frame.layout().bytes_per_pixel();
    let offsets = frame.layout().rgb_offsets();
    let stride = frame.stride();
    let data = frame.data_mut();
    let mut changes = changes.iter();
    for (y, span) in spans.iter().enumerate() {
        let row = (roi.y + y) * stride;
        let moved_row = y * roi.w * bpp;
        for (x, change) in span.clone().zip(changes.by_ref()) {
            let Some(change) = change else { continue };
            let px = row + x * bpp;
            let from = if change.moves {
                &moved[moved_row + (x - roi.x) * bpp..][..bpp]
            } else {
                &data[px..px + bpp]
            };
            let rgb = offsets.map(|o| from[o]);
            for (k, &o) in offsets.iter().enumerate() {
                data[px + o] = add_rounded(rgb[k], change.residual[k]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spans that a flow model's change is sampled on come from `MaskEllipse`; a
    /// mask pixel outside it would be silently dropped, so the two must agree.
    #[test]
    fn every_non_zero_mask_pixel_lies_inside_the_mask_ellipse() {
        for size in [16, 31, 64, 128, 255] {
            let e = MaskEllipse::of_crop(size);
            for (i, &m) in face_mask(size).iter().enumerate() {
                let (x, y) = ((i % size) as f32, (i / size) as f32);
                let r2 = ((x - e.cx) / e.rx).powi(2) + ((y - e.cy) / e.ry).powi(2);
                assert!(
                    m == 0.0 || r2 < 1.0,
                    "size {size}: pixel ({x}, {y}) mask {m}"
                );
            }
        }
    }

    #[test]
    fn row_spans_are_the_ellipse_chords() {
        // Identity crop -> frame: the span of the ellipse's centre row is its diameter.
        let e = MaskEllipse::of_crop(100);
        let identity = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]];
        let (first, last) = e.frame_row_span(&identity, e.cy as f64).unwrap();
        assert!((first - (e.cx - e.rx) as f64).abs() < 1e-4, "{first}");
        assert!((last - (e.cx + e.rx) as f64).abs() < 1e-4, "{last}");
        assert!(e
            .frame_row_span(&identity, (e.cy + e.ry + 1.0) as f64)
            .is_none());
    }
}
