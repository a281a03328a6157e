//! Residual compositing: `frame += inverse_warp(mask * intensity * shape(out - crop))`.
//!
//! Only the change the model made is carried back, so pixels outside the feathered face
//! mask stay bit-identical and `intensity` scales the expression continuously (0 =
//! untouched, 2 = exaggerated). Before it is carried back, the change is shaped in crop
//! space ([`ResidualShaper`], [`CompositeOptions`]) so that it keeps the person:
//!
//! - detail: only the model's coarse change is carried everywhere; its fine band where
//!   the coarse change is large (mouth, teeth), or where it adds detail the input
//!   lacks (a crease). A model that smooths the face leaves the frame's skin texture,
//!   lashes and hair as they were;
//! - colour: the luma change everywhere (so that each pixel keeps its CIELAB a*, b*:
//!   a quarter in proportion to its channels, the rest grey; a darkened highlight loses
//!   its white light first), the chroma change only where the luma change is large, so
//!   irises, make-up and skin tone keep their colours;
//! - rim: the model's tone drift along the mask's feathered rim (a plane, fitted
//!   robustly) is taken out of the change, so no edge shows where the mask ends.
//!
//! For a flow model (contract v2) the face's own frame pixels are moved by the scaled
//! flow first ([`crate::flow`]), and the residual is taken against the crop warped by
//! the full flow, which is what the model's `face_out` was computed on:
//! `frame(p) = frame(p + d_frame(p)) + residual(p)`, with the residual
//! `mask * intensity * shape(out - warp_crop(crop, flow))` (the moved pixels keep their
//! own detail and colour). Both are sampled at each frame pixel's crop position, only
//! on the frame rows' spans that the mask can reach; the frame is remapped once into a
//! scratch image, and each changed pixel is written and rounded once.
//!
//! [`Compositor::apply`] shapes and carries back in one call. The video path splits it
//! ([`Compositor::shape`], then [`Compositor::add_shaped`]) so that the low-pass in
//! between smooths the shaped change, what the frame will show.

use opencv::core::{Mat, Scalar, Size, Vec2f, CV_32FC3};
use opencv::imgproc;
use opencv::prelude::*;

use crate::align::{affine_mat, apply, Affine, Alignment, Template};
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
    /// Turns the model's change into what is carried back (detail, colour, rim).
    shaper: ResidualShaper,
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
    /// A compositor that carries the model's change back as it is
    /// ([`CompositeOptions::PLAIN`]); see [`with_options`](Self::with_options).
    pub fn new(size: usize) -> Result<Self> {
        Self::with_options(size, CompositeOptions::PLAIN)
    }

    /// A compositor that shapes the model's change as `options` say before carrying it
    /// back, for crops aligned to [`Template::lsrf`] (every shipped model's).
    pub fn with_options(size: usize, options: CompositeOptions) -> Result<Self> {
        Self::for_template(&Template::lsrf(size), options)
    }

    /// A compositor for crops aligned to `template` (it says where the mouth is, the only
    /// place where colour changes are carried; the [`FrameProcessor`](crate::FrameProcessor)
    /// passes the model's).
    pub fn for_template(template: &Template, options: CompositeOptions) -> Result<Self> {
        let size = template.size;
        let mask = face_mask(size);
        let s = size as i32;
        let mut shaper = ResidualShaper::new(template, &mask);
        shaper.set_options(options);
        Ok(Compositor {
            size,
            support: mask_support(&mask, size),
            shaper,
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

    pub fn options(&self) -> CompositeOptions {
        self.shaper.options()
    }

    pub fn set_options(&mut self, options: CompositeOptions) {
        self.shaper.set_options(options);
    }

    /// The crop-space change that the last face carried back, before mask and intensity
    /// (planar RGB, [0, 1] units; see [`ResidualShaper::shape`]).
    pub fn last_change(&self) -> &[f32] {
        &self.shaper.diff
    }

    /// Adds the model's change to one face back into the frame. `crop` and `out` are
    /// planar RGB in [0, 1] (3*S*S values each). Returns the frame rectangle the change
    /// could reach (None: nothing written); no pixel outside it was written.
    pub fn apply(
        &mut self,
        frame: &mut FrameMut,
        crop: &[f32],
        out: &[f32],
        alignment: &Alignment,
        intensity: f32,
    ) -> Result<Option<Roi>> {
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
    ) -> Result<Option<Roi>> {
        if intensity == 0.0 {
            return Ok(None);
        }
        self.check_lengths("crop", crop, out, flow)?;
        let Some(roi) = frame_roi(frame, alignment, self.support) else {
            return Ok(None);
        };
        self.shape(crop, out, flow, alignment)?;
        // The shaper's change, taken out of it for the call (the compositor's other
        // buffers are written meanwhile).
        let shaped = std::mem::take(&mut self.shaper.diff);
        let added = self.add_at(frame, &shaped, flow, alignment, intensity, roi);
        self.shaper.diff = shaped;
        added.map(|()| Some(roi))
    }

    /// The change the compositor carries back for a model output `out` on the face's
    /// `crop` (planar RGB in [0, 1], 3*S*S values each): the model's change with the
    /// face's own detail and colours kept as the [`CompositeOptions`] say, unmasked, at
    /// intensity 1, planar RGB in [0, 1] units. With a flow model's `flow`, the change
    /// is taken against the crop warped by it (then [`warped_crop`](Self::warped_crop)).
    /// For [`add_shaped`](Self::add_shaped), after whatever the caller does to it (the
    /// video low-pass smooths it over time).
    pub fn shape(
        &mut self,
        crop: &[f32],
        out: &[f32],
        flow: Option<&[f32]>,
        alignment: &Alignment,
    ) -> Result<&[f32]> {
        self.check_lengths("crop", crop, out, flow)?;
        let base = match flow {
            Some(flow) => {
                self.flow.warp_crop(crop, flow, &mut self.warped_crop)?;
                &self.warped_crop
            }
            None => crop,
        };
        self.shaper.shape(base, out, frame_scale(alignment))
    }

    /// The crop the last [`shape`](Self::shape) with a flow warped by it (3*S*S, planar
    /// RGB): what that change lives on.
    pub fn warped_crop(&self) -> &[f32] {
        &self.warped_crop
    }

    /// Adds a change made by [`shape`](Self::shape) (3*S*S values) of one face back
    /// into the frame, moving a flow model's face by `intensity * mask * flow` first, as
    /// [`apply_with_flow`](Self::apply_with_flow) does. Returns the frame rectangle the
    /// change could reach (None: nothing written).
    pub fn add_shaped(
        &mut self,
        frame: &mut FrameMut,
        shaped: &[f32],
        flow: Option<&[f32]>,
        alignment: &Alignment,
        intensity: f32,
    ) -> Result<Option<Roi>> {
        if intensity == 0.0 {
            return Ok(None);
        }
        let n = self.size * self.size;
        if shaped.len() != 3 * n || flow.is_some_and(|f| f.len() != 2 * n) {
            return Err(Error::Frame(format!(
                "shaped change and flow of {} and {} values for a {s}x{s} face (need {} and {})",
                shaped.len(),
                flow.map_or(0, <[f32]>::len),
                3 * n,
                2 * n,
                s = self.size
            )));
        }
        let Some(roi) = frame_roi(frame, alignment, self.support) else {
            return Ok(None);
        };
        self.add_at(frame, shaped, flow, alignment, intensity, roi)?;
        Ok(Some(roi))
    }

    /// An error naming the lengths unless `base` (the crop, called `what`) and `out` hold
    /// 3*S*S values and `flow`, if any, 2*S*S.
    fn check_lengths(
        &self,
        what: &str,
        base: &[f32],
        out: &[f32],
        flow: Option<&[f32]>,
    ) -> Result<()> {
        let n = self.size * self.size;
        if base.len() != 3 * n || out.len() != 3 * n || flow.is_some_and(|f| f.len() != 2 * n) {
            return Err(Error::Frame(format!(
                "{what}, model output and flow of {}, {} and {} values for a {s}x{s} face (need {}, {} and {})",
                base.len(),
                out.len(),
                flow.map_or(0, <[f32]>::len),
                3 * n,
                3 * n,
                2 * n,
                s = self.size
            )));
        }
        Ok(())
    }

    /// Adds the shaped change to the face in `roi`: for a face-only model
    /// `frame += warp(mask * intensity * shaped)`; for a flow model the face's pixels
    /// first move by the flow, then the appearance change is added.
    fn add_at(
        &mut self,
        frame: &mut FrameMut,
        shaped: &[f32],
        flow: Option<&[f32]>,
        alignment: &Alignment,
        intensity: f32,
        roi: Roi,
    ) -> Result<()> {
        let Some(flow) = flow else {
            fill_residual(&mut self.residual, &self.mask, shaped, intensity)?;
            warp_to_roi(&self.residual, &mut self.warped, alignment, roi)?;
            return add_residual(frame, &self.warped, roi);
        };
        self.change.fill(&ChangeInputs {
            mask: &self.mask,
            flow,
            linear: linear_part(&alignment.to_frame),
            diff: shaped,
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
    /// The shaped appearance change: `out` against the input crop warped by the full
    /// flow (planar RGB, [0, 1] units).
    diff: &'a [f32],
    intensity: f32,
}

/// A flow model's change over the SxS crop, per pixel: frame displacement
/// `L * intensity * mask * flow`, then residual `255 * intensity * mask * diff`;
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
                    let res = |c: usize| 255.0 * g * inputs.diff[c * n + i];
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

/// `residual = 255 * intensity * mask * diff` as interleaved RGB (`diff` planar), exactly
/// zero where the mask is.
fn fill_residual(residual: &mut Mat, mask: &[f32], diff: &[f32], intensity: f32) -> Result<()> {
    let n = mask.len();
    let gain = 255.0 * intensity;
    for (i, r) in residual
        .data_typed_mut::<opencv::core::Vec3f>()?
        .iter_mut()
        .enumerate()
    {
        let m = mask[i] * gain;
        for c in 0..3 {
            r[c] = if m == 0.0 { 0.0 } else { m * diff[c * n + i] };
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Shaping the model's change before it is carried back

/// How much of the person's own detail is kept where the model smoothed it away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Detail {
    /// Every change is carried, the detail the model smoothed away too.
    Off,
    /// The finest band of the change (under [`FINE_SIGMA`] crop pixels: skin texture,
    /// lashes, hair strands) is dropped wherever the model's coarse change is small
    /// (under [`DETAIL_GATE`]), outside the mouth, and the model's fine band holds less
    /// energy than the input's there (it smoothed rather than drew, [`ENERGY_GATE`]):
    /// the input's own fine detail stays. Everything coarser, where the expression
    /// lives, is carried.
    #[default]
    Fine,
    /// Also the detail the model smoothed away at coarser scales: the change above the
    /// finest band is fitted, over a small window, as a blend of two blurs of the
    /// input ([`BLUR_BASES`]), and that blend is dropped wherever the coarse change is
    /// under [`MID_GATE`]. A model that only blurs leaves the face as it was. And the
    /// irises keep their own darkness where the model fades them: no expression
    /// lightens an iris. Sharper, but it also keeps the parts of an expression that
    /// consist in softening a feature, and fer's expression scores drop by a few points.
    Full,
}

impl std::str::FromStr for Detail {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "off" => Ok(Detail::Off),
            "fine" => Ok(Detail::Fine),
            "full" => Ok(Detail::Full),
            _ => Err(format!("unknown detail '{s}' (off, fine, full)")),
        }
    }
}

/// How the model's change to a face is carried back into the frame. Every step works on
/// the SxS crop-space change (the appearance residual of a flow model), before it is
/// sampled into the frame, so its cost does not grow with the face's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompositeOptions {
    /// Keep the person's detail where the model's coarse change (the change blurred by
    /// [`COARSE_SIGMA`]) is small; where it is large (an opened mouth, teeth, brows
    /// raised), and around the mouth ([`mouth_region`]), the model's own is carried.
    pub detail: Detail,
    /// Keep the person's colours: the brightness (luma) change is carried everywhere
    /// (so that each pixel keeps its CIELAB colour: a quarter of it in proportion to
    /// the pixel's channels, the rest grey), the
    /// colour (chroma) change only around the mouth (lips, teeth, mouth interior) and
    /// there only where the brightness change is large too, so irises, make-up and
    /// skin tone keep their colours. And the model's tone drift along the mask's rim is
    /// taken out of the whole change, so no edge shows where the mask ends.
    pub keep_colour: bool,
}

impl CompositeOptions {
    /// The change carried back as the model made it (the compositing before issue 9).
    pub const PLAIN: CompositeOptions = CompositeOptions {
        detail: Detail::Off,
        keep_colour: false,
    };
}

impl Default for CompositeOptions {
    fn default() -> Self {
        CompositeOptions {
            detail: Detail::Fine,
            keep_colour: true,
        }
    }
}

/// Gaussian sigma (crop pixels of a 128 px crop; scaled with the crop, and at least
/// this many frame pixels) under which the change is its finest band.
pub const FINE_SIGMA: f32 = 0.8;
/// Gaussian sigma of the coarse change (about 1/50 of the face's width), which says
/// where the model really changed the face: a blur by up to 1.6 crop pixels changes it
/// by under a grey level.
pub const COARSE_SIGMA: f32 = 3.2;
/// The blurs (crop pixels, beyond the finest band) whose blend is fitted to the change
/// to find the detail a model smoothed away ([`Detail::Full`]); blurs between and
/// under them are fitted closely.
pub const BLUR_BASES: [f32; 2] = [0.8, 1.6];
/// Sigma of the window of that fit.
const WINDOW_SIGMA: f32 = 2.0;
/// Gaussian sigma (crop pixels of a 128 px crop) of the surroundings an iris's pixels
/// are compared with (an iris is about 10 px wide, an eye 25).
const IRIS_FEATURE_SIGMA: f32 = 8.0;
/// Radii (eye distances) of the disc around an iris where a fade is not carried, and of
/// the one by which that fades out (an iris is about 0.19 eye distances wide).
const IRIS_RADII: (f32, f32) = (0.1, 0.16);
/// How much lighter than the darkest spot near an eye (luma, [0, 1]: 3 grey levels) a
/// spot is whose weight in the iris's centre has fallen by a factor e.
const IRIS_SPREAD: f32 = 3.0 / 255.0;
/// Amplitude (grey levels) under which a blur of the input counts as flat in the fit.
const FIT_FLOOR: f32 = 0.3;
/// Sigma of the smoothing of the coarse change's magnitude, so that a large change's
/// zero crossings (dark lips on one side, bright teeth on the other) do not close the
/// gates along a line.
const GATE_SIGMA: f32 = 3.0;
/// Coarse luma change (grey levels, at intensity 1) over which the model's finest band
/// fades in.
pub const DETAIL_GATE: (f32, f32) = (10.0, 30.0);
/// Ratio of the output's to the input's fine-band energy (windowed) over which the
/// model's finest band is taken for new detail rather than a loss of the input's.
pub const ENERGY_GATE: (f32, f32) = (1.0, 1.25);
/// Coarse luma change over which the model's coarser smoothing fades in
/// ([`Detail::Full`]): only where it changed next to nothing is it taken for a blur.
pub const MID_GATE: (f32, f32) = (2.0, 6.0);
/// Coarse luma change over which the model's chroma change fades in (inside the mouth
/// region).
pub const COLOUR_GATE: (f32, f32) = (6.0, 18.0);
/// Cosine of the turn of a colour's hue (input to output, in the opponent plane R - Y,
/// B - Y) under which the change counts as a repainting, fading in between: 45 to 73
/// degrees. On the 93 faces of `compositing_eval`, `models/usgan` sad / happy: dlib
/// distance 0.310 / 0.429 without the rule, 0.284 / 0.386 with it (plain compositing
/// 0.271 / 0.381); `models/mr` unchanged (fer's p 16.4 / 35.1 -> 16.4 / 35.3).
pub const REPAINT_TURN: (f32, f32) = (0.7, 0.3);
/// Chroma (grey levels, both before and after) over which a hue counts: a near-grey
/// pixel's hue is noise.
pub const REPAINT_CHROMA: (f32, f32) = (2.0, 6.0);
/// Gaussian sigma (crop pixels of a 128 px crop) of the neighbourhood whose colour a
/// pixel is compared with to find white light in it ([`white_light`]).
const HIGHLIGHT_SIGMA: f32 = 8.0;
/// Scale of the robust (Cauchy) weights of the rim's tone fit, grey levels.
const RIM_ROBUST_SCALE: f32 = 3.0;
const LUMA: [f32; 3] = [0.299, 0.587, 0.114];
/// Added to a pixel's channels and luma before their ratio is taken, so that the luma
/// change of near-black pixels is shared out evenly ([0, 1] units).
const DARK: f32 = 0.03;
/// Share of a luma change made in proportion to the pixel's own channels; the rest is
/// grey (the same in every channel). In proportion alone (what light does) brightened
/// skin turns more saturated in CIELAB, grey alone paler; a quarter in proportion keeps
/// a*, b* of skin tones within 0.03 at +-10 grey levels (in proportion alone 0.75-1.7,
/// grey alone 0.2-0.55), of a blue iris or red lips within 0.3 (1.8-2.3 and 0.4-0.6).
const PROPORTIONAL_SHARE: f32 = 0.25;

/// Grey levels to [0, 1] units.
fn in_units((a, b): (f32, f32)) -> (f32, f32) {
    (a / 255.0, b / 255.0)
}

fn smoothstep((e0, e1): (f32, f32), x: f32) -> f32 {
    // By the reciprocal: the edges are constants, so a multiplication per call instead
    // of a division.
    let t = ((x - e0) * (1.0 / (e1 - e0))).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// Turns the model's raw change `out - base` of one face into what is carried back
/// (planar RGB in [0, 1] units, unmasked, at intensity 1; see [`CompositeOptions`]).
/// All buffers are kept between faces.
pub struct ResidualShaper {
    size: usize,
    options: CompositeOptions,
    rim: Rim,
    /// The model's territory (S*S, [`mouth_region`]): its detail is kept there, and
    /// only there its colour changes may pass.
    mouth: Vec<f32>,
    /// Where the irises are found ([`find_irises`](Self::find_irises)), S*S: there a
    /// fade is not carried ([`keep_irises`](Self::keep_irises)).
    irises: Vec<f32>,
    /// The template's eye points, their distance, and the rows in which the irises are
    /// looked for (with their discs' reach).
    template_eyes: [[f32; 2]; 2],
    eye_distance: f32,
    eye_rows: std::ops::Range<usize>,
    /// The irises' surroundings: the input blurred by [`IRIS_FEATURE_SIGMA`], 3*S*S.
    iris_surroundings: Vec<f32>,
    /// The shaped change, 3*S*S.
    diff: Vec<f32>,
    /// Side of the grid of the coarse change: a quarter of the crop's (the coarse
    /// change is smooth, and this is where most of the cost would go).
    small: usize,
    /// The change on the quarter grid (area averages) and blurred there by
    /// [`COARSE_SIGMA`], 3 planes.
    small_diff: Vec<f32>,
    coarse: Vec<f32>,
    /// |luma of the coarse change|, smoothed, on the quarter grid and on the crop's
    /// (S*S): where the model changed the face.
    small_gate: Vec<f32>,
    gate: Vec<f32>,
    /// The input on the quarter grid, its colour around each point there (blurred by
    /// [`HIGHLIGHT_SIGMA`]), and that on the crop's grid, 3 planes each.
    small_base: Vec<f32>,
    /// The input on the quarter grid blurred by [`IRIS_FEATURE_SIGMA`], 3 planes.
    small_iris_mean: Vec<f32>,
    small_around: Vec<f32>,
    /// Where the model repaints a colour ([`find_repainting`](Self::find_repainting)),
    /// on the quarter grid and on the crop's (S*S).
    small_repainted: Vec<f32>,
    repainted: Vec<f32>,
    around: Vec<f32>,
    /// The change blurred by [`FINE_SIGMA`], 3*S*S.
    above_fine: Vec<f32>,
    /// What the change takes away of the input's detail, 3*S*S: its finest band, and
    /// ([`Detail::Full`]) the fitted blend of blurs above it.
    lost_fine: Vec<f32>,
    lost_blur: Vec<f32>,
    /// The input blurred by [`FINE_SIGMA`] and by each of [`BLUR_BASES`] beyond it,
    /// 3*S*S each.
    blurred_base: [Vec<f32>; 3],
    /// The windowed products of the fit, S*S each, and a scratch plane.
    products: [Vec<f32>; 5],
    windowed: [Vec<f32>; 5],
    scratch: Vec<f32>,
}

impl ResidualShaper {
    /// A shaper for crops aligned to `template`, masked by `mask` ([`face_mask`]).
    pub fn new(template: &Template, mask: &[f32]) -> Self {
        let size = template.size;
        let n = size * size;
        let small = size.div_ceil(4).max(1);
        let planes = || vec![0.0; 3 * n];
        let [left, right, ..] = template.points;
        let eye_distance = (right[0] - left[0]).hypot(right[1] - left[1]);
        ResidualShaper {
            size,
            options: CompositeOptions::default(),
            rim: Rim::new(size, small, mask),
            mouth: mouth_region(template),
            irises: vec![0.0; n],
            template_eyes: [left, right],
            eye_distance,
            eye_rows: eye_rows(template),
            iris_surroundings: planes(),
            diff: planes(),
            small,
            small_diff: vec![0.0; 3 * small * small],
            coarse: vec![0.0; 3 * small * small],
            small_gate: vec![0.0; small * small],
            small_base: vec![0.0; 3 * small * small],
            small_iris_mean: vec![0.0; 3 * small * small],
            small_around: vec![0.0; 3 * small * small],
            small_repainted: vec![0.0; small * small],
            repainted: vec![0.0; n],
            around: planes(),
            gate: vec![0.0; n],
            above_fine: planes(),
            lost_fine: planes(),
            lost_blur: planes(),
            blurred_base: std::array::from_fn(|_| planes()),
            products: std::array::from_fn(|_| vec![0.0; n]),
            windowed: std::array::from_fn(|_| vec![0.0; n]),
            scratch: vec![0.0; n],
        }
    }

    pub fn options(&self) -> CompositeOptions {
        self.options
    }

    pub fn set_options(&mut self, options: CompositeOptions) {
        self.options = options;
    }

    /// The smoothed magnitude of the coarse luma change of the last [`shape`](Self::shape)
    /// (S*S, [0, 1] units): where the gates open. Zero with [`CompositeOptions::PLAIN`].
    pub fn coarse_change(&self) -> &[f32] {
        &self.gate
    }

    /// The change to carry back for a model output `out` on `base` (both planar RGB in
    /// [0, 1], 3*S*S), for a face whose crop pixel is `frame_scale` frame pixels wide.
    /// With [`CompositeOptions::PLAIN`] it is exactly `out - base`.
    pub fn shape(&mut self, base: &[f32], out: &[f32], frame_scale: f32) -> Result<&[f32]> {
        for ((d, &o), &b) in self.diff.iter_mut().zip(out).zip(base) {
            *d = o - b;
        }
        if self.options == CompositeOptions::PLAIN {
            self.gate.fill(0.0);
            return Ok(&self.diff);
        }
        let (s, n, m) = (self.size, self.size * self.size, self.small);
        // Sigmas on the quarter grid.
        let quarter = m as f32 / 128.0;
        for (d, c) in self
            .diff
            .chunks_exact(n)
            .zip(self.small_diff.chunks_exact_mut(m * m))
        {
            resize(d, s, c, m, imgproc::INTER_AREA)?;
        }
        blur_planes(
            &self.small_diff,
            &mut self.coarse,
            m,
            COARSE_SIGMA * quarter,
        )?;
        if self.options.keep_colour {
            self.remove_rim_drift();
        }
        let magnitude = &mut self.scratch[..m * m];
        luma_into(&self.coarse, magnitude);
        for v in magnitude.iter_mut() {
            *v = v.abs();
        }
        blur(magnitude, &mut self.small_gate, m, GATE_SIGMA * quarter)?;
        resize(
            &self.small_gate,
            m,
            &mut self.gate,
            s,
            imgproc::INTER_LINEAR,
        )?;
        if self.options.detail != Detail::Off {
            // The finest band reaches at least FINE_SIGMA frame pixels: on a face smaller
            // than its crop, the frame's own finest detail lies in coarser crop bands.
            let fine = (FINE_SIGMA * s as f32 / 128.0).max(FINE_SIGMA / frame_scale.max(1e-3));
            self.find_lost_detail(base, fine)?;
            let fine_gate = in_units(DETAIL_GATE);
            let blur_gate = in_units(MID_GATE);
            // How much of each loss leaves the change, per pixel (the same in every
            // channel): outside the mouth, where the coarse change is small.
            let full = self.options.detail == Detail::Full;
            let [fine_weight, blur_weight, ..] = &mut self.products;
            let pixels = fine_weight
                .iter_mut()
                .zip(blur_weight.iter_mut())
                .zip(&self.gate)
                .zip(&self.mouth);
            for (((f, b), &g), &m) in pixels {
                *f = (1.0 - m) * (1.0 - smoothstep(fine_gate, g));
                if full {
                    *b = (1.0 - m) * (1.0 - smoothstep(blur_gate, g));
                }
            }
            let planes = self
                .diff
                .chunks_exact_mut(n)
                .zip(self.lost_fine.chunks_exact(n))
                .zip(self.lost_blur.chunks_exact(n));
            for ((d, fine), blurred) in planes {
                for ((d, &f), &fw) in d.iter_mut().zip(fine).zip(&*fine_weight) {
                    *d -= fw * f;
                }
                if full {
                    for ((d, &b), &bw) in d.iter_mut().zip(blurred).zip(&*blur_weight) {
                        *d -= bw * b;
                    }
                }
            }
        }
        if self.options.keep_colour || self.options.detail == Detail::Full {
            // The input on the quarter grid, for the wide blurs of the irises' and the
            // colours' steps.
            for (b, q) in base
                .chunks_exact(n)
                .zip(self.small_base.chunks_exact_mut(m * m))
            {
                resize(b, s, q, m, imgproc::INTER_AREA)?;
            }
        }
        if self.options.detail == Detail::Full {
            self.keep_irises(base)?;
        }
        if self.options.keep_colour {
            self.keep_colours(base)?;
        }
        Ok(&self.diff)
    }

    /// The irises keep their own darkness ([`Detail::Full`]): at each iris
    /// ([`find_irises`](Self::find_irises)) the change may not pull a pixel towards its
    /// surroundings (the input blurred by [`IRIS_FEATURE_SIGMA`]); the part that does,
    /// up to the pixel's own contrast with them, is not carried. No expression lightens
    /// an iris; a model that can only cross-fade (MR, Pixel-RR) shows a narrowed or
    /// widened eye that way, as grey, glassy irises, a darkened white beside them where
    /// the training performers' mean iris sits (and fer reads some of that fade as sad
    /// or surprised). A flow model moves the lids with its flow.
    fn keep_irises(&mut self, base: &[f32]) -> Result<()> {
        let (s, n, m) = (self.size, self.size * self.size, self.small);
        blur_on_quarter_grid(
            &self.small_base,
            &mut self.small_iris_mean,
            &mut self.iris_surroundings,
            (m, s),
            IRIS_FEATURE_SIGMA,
        )?;
        self.find_irises(base)?;
        for i in self.eye_rows.start * s..self.eye_rows.end * s {
            let region = self.irises[i];
            if region == 0.0 {
                continue;
            }
            for c in 0..3 {
                let k = c * n + i;
                let (d, f) = (self.diff[k], base[k] - self.iris_surroundings[k]);
                // A change against the pixel's contrast with its surroundings is the
                // fade, up to that contrast; one that adds to it stays.
                if d * f < 0.0 {
                    self.diff[k] -= region * d.signum() * d.abs().min(f.abs());
                }
            }
        }
        Ok(())
    }

    /// Where the irises are (`irises`, S*S, 0..1): a disc around the darkest spots (luma
    /// averaged over an iris's size) near each of the template's eye points. The
    /// alignment fits eyes, nose and mouth together, so on a face whose proportions
    /// differ from the template's an iris lands a few pixels off its point.
    fn find_irises(&mut self, base: &[f32]) -> Result<()> {
        let s = self.size;
        let rows = self.eye_rows.start * s..self.eye_rows.end * s;
        let (n, d) = (s * s, self.eye_distance);
        let (luma, averaged) = (&mut self.scratch, &mut self.products[0]);
        // Only the rows searched.
        for i in rows.clone() {
            luma[i] = LUMA[0] * base[i] + LUMA[1] * base[n + i] + LUMA[2] * base[2 * n + i];
        }
        blur(
            &luma[rows.clone()],
            &mut averaged[rows.clone()],
            s,
            0.05 * d,
        )?;
        self.irises[rows.clone()].fill(0.0);
        for eye in &self.template_eyes {
            // Searched within a fifth of the eye distance to either side, an eighth up
            // and down.
            let (x0, x1) = (eye[0] - 0.2 * d, eye[0] + 0.2 * d);
            let (y0, y1) = (eye[1] - 0.125 * d, eye[1] + 0.125 * d);
            let clamp = |v: f32, lo: usize, hi: usize| (v.round().max(0.0) as usize).clamp(lo, hi);
            let ys = clamp(y0, self.eye_rows.start, self.eye_rows.end - 1)
                ..=clamp(y1, self.eye_rows.start, self.eye_rows.end - 1);
            let xs = clamp(x0, 0, s - 1)..=clamp(x1, 0, s - 1);
            let window = || ys.clone().flat_map(|y| xs.clone().map(move |x| (x, y)));
            let darkest = window()
                .map(|(x, y)| averaged[y * s + x])
                .fold(f32::MAX, f32::min);
            // The centroid of the spots within a few grey levels of the darkest, not the
            // darkest alone, so that two near-equal spots do not make it jump.
            let (mut sum, mut sx, mut sy) = (0.0, 0.0, 0.0);
            for (x, y) in window() {
                let w = (-(averaged[y * s + x] - darkest) / IRIS_SPREAD).exp();
                (sum, sx, sy) = (sum + w, sx + w * x as f32, sy + w * y as f32);
            }
            let centre = [sx / sum, sy / sum - self.eye_rows.start as f32];
            add_feature_region(
                &mut self.irises[rows.clone()],
                s,
                centre,
                (IRIS_RADII.0 * d, IRIS_RADII.0 * d),
                (IRIS_RADII.1 * d, IRIS_RADII.1 * d),
            );
        }
        Ok(())
    }

    /// The model's tone drift, as the rim sees it, leaves the whole change: a plane
    /// fitted to the coarse change over the mask's feathered rim. (A plane blurs to
    /// itself, so the coarse change loses the same plane, and the finer bands do not
    /// see it.)
    fn remove_rim_drift(&mut self) {
        let (s, m) = (self.size, self.small);
        for (d, l) in self
            .diff
            .chunks_exact_mut(s * s)
            .zip(self.coarse.chunks_exact_mut(m * m))
        {
            let plane = self.rim.fit(l);
            plane.subtract_from(d, s);
            plane.subtract_from(l, m);
        }
    }

    /// The luma change, made so that the pixel keeps its CIELAB colour (a*, b*): a
    /// quarter in proportion to the pixel's own channels, the rest grey
    /// ([`PROPORTIONAL_SHARE`]), then the model's own colour change where it may pass.
    ///
    /// A darkened highlight is the exception: a specular highlight is white light on
    /// top of the skin's own colour, so taking it away takes away white light (the same
    /// from every channel) and leaves the skin's colour. The white light in the pixel
    /// ([`white_light`]) is taken away first, the rest of a darkening as above.
    fn keep_colours(&mut self, base: &[f32]) -> Result<()> {
        let (s, n, m) = (self.size, self.size * self.size, self.small);
        blur_on_quarter_grid(
            &self.small_base,
            &mut self.small_around,
            &mut self.around,
            (m, s),
            HIGHLIGHT_SIGMA,
        )?;
        self.find_repainting()?;
        let gate = in_units(COLOUR_GATE);
        let (dr, rest) = self.diff.split_at_mut(n);
        let (dg, db) = rest.split_at_mut(n);
        for i in 0..n {
            let w = self.mouth[i] * smoothstep(gate, self.gate[i]);
            let mut c = [dr[i], dg[i], db[i]];
            let y = LUMA[0] * c[0] + LUMA[1] * c[1] + LUMA[2] * c[2];
            let px = [base[i], base[n + i], base[2 * n + i]];
            let base_y = LUMA[0] * px[0] + LUMA[1] * px[1] + LUMA[2] * px[2];
            // The share of a darkening that takes white light away (under a tenth of
            // a grey level, how a change is shared out does not show).
            // Computed everywhere and selected, so that the loop has no branch.
            let around = [self.around[i], self.around[n + i], self.around[2 * n + i]];
            let share = (white_light(px, around) / -y).min(1.0);
            let white = if y < -0.1 / 255.0 { share } else { 0.0 };
            let (k, grey) = (y / (base_y + DARK), (1.0 - PROPORTIONAL_SHARE) * y);
            for (v, p) in c.iter_mut().zip(px) {
                let shaded = PROPORTIONAL_SHARE * k * (p + DARK) + grey;
                let keep = (1.0 - white) * shaded + white * y;
                *v = keep + w * (*v - keep);
            }
            // A repainting outside the mouth is not carried at all.
            let repainted = (1.0 - self.mouth[i]) * self.repainted[i];
            [dr[i], dg[i], db[i]] = c.map(|v| v * (1.0 - repainted));
        }
        Ok(())
    }

    /// Where the model repaints a colour rather than shading it (`repainted`, S*S, 0..1):
    /// where its coarse change turns the hue of the input's colour ([`REPAINT_TURN`]),
    /// both colours being more than grey ([`REPAINT_CHROMA`]). Light and shade change a
    /// colour's brightness and saturation, not its hue; a model that turns brown irises
    /// green or skin lavender paints over the person, and the luma of that paint is not
    /// the person's either (on `models/usgan`, carried, it turned brown irises light
    /// grey). On the quarter grid, where the coarse change lives; called by
    /// [`keep_colours`](Self::keep_colours) once the input is there.
    fn find_repainting(&mut self) -> Result<()> {
        let (s, m) = (self.size, self.small);
        let mm = m * m;
        let chroma = |p: [f32; 3]| {
            let y = LUMA[0] * p[0] + LUMA[1] * p[1] + LUMA[2] * p[2];
            (p[0] - y, p[2] - y)
        };
        let floor = in_units(REPAINT_CHROMA);
        for j in 0..mm {
            let at = |v: &[f32]| [v[j], v[mm + j], v[2 * mm + j]];
            let (base, change) = (at(&self.small_base), at(&self.coarse));
            let after = [0, 1, 2].map(|c| base[c] + change[c]);
            let ((u0, u1), (v0, v1)) = (chroma(base), chroma(after));
            let (before, after) = (u0.hypot(u1), v0.hypot(v1));
            // The weight rises as the cosine of the turn falls through REPAINT_TURN.
            let cos = (u0 * v0 + u1 * v1) / (before * after + 1e-6);
            self.small_repainted[j] =
                smoothstep(REPAINT_TURN, cos) * smoothstep(floor, before.min(after));
        }
        resize(
            &self.small_repainted,
            m,
            &mut self.repainted,
            s,
            imgproc::INTER_LINEAR,
        )
    }

    /// The part of the change that only takes the input's detail away: its finest band
    /// where that smooths the input (`lost_fine`), and with [`Detail::Full`] the blend
    /// of blurs of the input that best explains the rest of it over a Gaussian window
    /// (`lost_blur`). A model that blurs by one of [`BLUR_BASES`] changes the bands
    /// above the finest by exactly that blur; a new crease or a moved lip does not look
    /// like a blur of the input and stays. The fit is on luma, by non-negative least
    /// squares.
    fn find_lost_detail(&mut self, base: &[f32], fine: f32) -> Result<()> {
        let (s, n) = (self.size, self.size * self.size);
        let scale = s as f32 / 128.0;
        blur_planes(&self.diff, &mut self.above_fine, s, fine)?;
        for ((lost, &d), &f) in self
            .lost_fine
            .iter_mut()
            .zip(&self.diff)
            .zip(&self.above_fine)
        {
            *lost = d - f;
        }
        self.gate_lost_fine_by_energy(base, fine)?;
        if self.options.detail != Detail::Full {
            return Ok(());
        }
        // Blurs of the input beyond the finest band: G(e_j) base with e_j^2 = fine^2 +
        // sigma_j^2 (Gaussians compose so), against G(fine) base. A model that blurs by
        // sigma_j changes the change's bands above the finest by exactly their
        // difference, B_j.
        blur_planes(base, &mut self.blurred_base[0], s, fine)?;
        for (j, &sigma) in BLUR_BASES.iter().enumerate() {
            let e = (fine.powi(2) + (sigma * scale).powi(2)).sqrt();
            blur_planes(base, &mut self.blurred_base[j + 1], s, e)?;
        }
        let luma =
            |v: &[f32], i: usize| LUMA[0] * v[i] + LUMA[1] * v[n + i] + LUMA[2] * v[2 * n + i];
        // Windowed normal equations of `change ≈ c0 B0 + c1 B1`: B0.B0, B0.B1, B1.B1,
        // B0.change, B1.change.
        for i in 0..n {
            let b = luma(&self.blurred_base[0], i);
            let (b0, b1) = (
                luma(&self.blurred_base[1], i) - b,
                luma(&self.blurred_base[2], i) - b,
            );
            let d = luma(&self.above_fine, i);
            for (k, v) in [b0 * b0, b0 * b1, b1 * b1, b0 * d, b1 * d]
                .into_iter()
                .enumerate()
            {
                self.products[k][i] = v;
            }
        }
        for (p, w) in self.products.iter().zip(self.windowed.iter_mut()) {
            blur(p, w, s, WINDOW_SIGMA * scale)?;
        }
        let floor = (FIT_FLOOR / 255.0).powi(2);
        let [w00, w01, w11, w0d, w1d] = &self.windowed;
        let [b, b0, b1] = &self.blurred_base;
        for i in 0..n {
            let (c0, c1) = nnls2(
                [[w00[i] + floor, w01[i]], [w01[i], w11[i] + floor]],
                [w0d[i], w1d[i]],
            );
            let (c0, c1) = (c0.min(1.0), c1.min(1.0));
            for c in 0..3 {
                let k = c * n + i;
                self.lost_blur[k] = c0 * (b0[k] - b[k]) + c1 * (b1[k] - b[k]);
            }
        }
        Ok(())
    }

    /// Drops the change's finest band only where it takes the input's finest band away
    /// (a blur, a fade towards a smooth mean face): where, over a Gaussian window, the
    /// output's fine band holds less energy than the input's. Where it holds more (a
    /// crease the input lacks, teeth) the model's detail stays.
    fn gate_lost_fine_by_energy(&mut self, base: &[f32], fine: f32) -> Result<()> {
        let (s, n) = (self.size, self.size * self.size);
        let scale = s as f32 / 128.0;
        // On luma only: one blur instead of three.
        let (luma_base, luma_blurred) = (&mut self.scratch, &mut self.windowed[2]);
        luma_into(base, luma_base);
        blur(luma_base, luma_blurred, s, fine)?;
        for i in 0..n {
            let b = luma_base[i] - luma_blurred[i];
            let d = LUMA[0] * self.lost_fine[i]
                + LUMA[1] * self.lost_fine[n + i]
                + LUMA[2] * self.lost_fine[2 * n + i];
            self.products[0][i] = b * b;
            self.products[1][i] = (b + d) * (b + d);
        }
        for k in 0..2 {
            blur(
                &self.products[k],
                &mut self.windowed[k],
                s,
                WINDOW_SIGMA * scale,
            )?;
        }
        let floor = (FIT_FLOOR / 255.0).powi(2);
        for i in 0..n {
            let gain = (self.windowed[1][i] + floor) / (self.windowed[0][i] + floor);
            let lost = 1.0 - smoothstep(ENERGY_GATE, gain);
            for ch in 0..3 {
                self.lost_fine[ch * n + i] *= lost;
            }
        }
        Ok(())
    }
}

/// The white light in a pixel `p` (RGB, [0, 1]) over the colour `around` it: `s` of
/// the fit `p = a * around + s * (1, 1, 1)` (least squares over the three channels),
/// 0 when the fit finds none. A specular highlight on skin is mostly white light; an
/// iris, a lip or a shadow has none.
fn white_light(p: [f32; 3], around: [f32; 3]) -> f32 {
    let (sa2, sa) = (
        around.iter().map(|a| a * a).sum::<f32>(),
        around.iter().sum::<f32>(),
    );
    let (sap, sp) = (
        around.iter().zip(p).map(|(a, p)| a * p).sum::<f32>(),
        p.iter().sum::<f32>(),
    );
    let det = 3.0 * sa2 - sa * sa;
    let white = ((sa2 * sp - sa * sap) / det.max(1e-6)).max(0.0);
    // In a grey neighbourhood white light cannot be told apart.
    if det > 1e-6 {
        white
    } else {
        0.0
    }
}

/// Non-negative least squares of two unknowns from the normal equations `a c = r`: the
/// joint solution if both are non-negative, else the better single one (each lowers
/// the squared error by `r_j^2 / a_jj`), else none.
fn nnls2(a: [[f32; 2]; 2], r: [f32; 2]) -> (f32, f32) {
    let det = a[0][0] * a[1][1] - a[0][1] * a[1][0];
    if det > 0.0 {
        let c0 = (r[0] * a[1][1] - r[1] * a[0][1]) / det;
        let c1 = (r[1] * a[0][0] - r[0] * a[1][0]) / det;
        if c0 >= 0.0 && c1 >= 0.0 {
            return (c0, c1);
        }
    }
    let s0 = (r[0] / a[0][0]).max(0.0);
    let s1 = (r[1] / a[1][1]).max(0.0);
    if s0 * r[0] >= s1 * r[1] {
        (s0, 0.0)
    } else {
        (0.0, s1)
    }
}

/// Luma of planar RGB into one plane.
fn luma_into(rgb: &[f32], out: &mut [f32]) {
    let n = out.len();
    for (i, o) in out.iter_mut().enumerate() {
        *o = LUMA[0] * rgb[i] + LUMA[1] * rgb[n + i] + LUMA[2] * rgb[2 * n + i];
    }
}

/// Resizes one `from`x`from` plane to `to`x`to`.
fn resize(src: &[f32], from: usize, dst: &mut [f32], to: usize, interpolation: i32) -> Result<()> {
    let src = Mat::new_rows_cols_with_data(from as i32, from as i32, src)?;
    let mut dst = Mat::new_rows_cols_with_data_mut(to as i32, to as i32, dst)?;
    let target = dst.data();
    imgproc::resize(
        &src,
        &mut dst,
        Size::new(to as i32, to as i32),
        0.0,
        0.0,
        interpolation,
    )?;
    if dst.data() != target {
        return Err(Error::Frame(
            "OpenCV resized elsewhere than the output buffer".into(),
        ));
    }
    Ok(())
}

/// [`blur`] of each plane of planar RGB.
fn blur_planes(src: &[f32], dst: &mut [f32], size: usize, sigma: f32) -> Result<()> {
    let n = size * size;
    for (s, d) in src.chunks_exact(n).zip(dst.chunks_exact_mut(n)) {
        blur(s, d, size, sigma)?;
    }
    Ok(())
}

/// The mouth's part of the crop, where the model's change is carried whole, detail and
/// colour: an ellipse around the template's mouth point, in eye distances `d` 0.55
/// wide and 0.35 high on each side (a wide smile's corners, an opened jaw), fading to 0
/// at 0.8 and 0.55 (S*S weights in [0, 1]).
pub fn mouth_region(template: &Template) -> Vec<f32> {
    let [left, right, _, mouth] = template.points;
    let d = ((right[0] - left[0]).powi(2) + (right[1] - left[1]).powi(2)).sqrt();
    feature_region(
        template.size,
        mouth,
        (0.55 * d, 0.35 * d),
        (0.8 * d, 0.55 * d),
    )
}

/// Rows of the crop in which the irises are looked for, with the reach of their discs
/// ([`IRIS_RADII`]): the template's eye rows and an eighth of the eye distance above
/// and below.
fn eye_rows(template: &Template) -> std::ops::Range<usize> {
    let [left, right, ..] = template.points;
    let d = (right[0] - left[0]).hypot(right[1] - left[1]);
    let reach = 0.125 * d + IRIS_RADII.1 * d + 1.0;
    let top = (left[1].min(right[1]) - reach).floor().max(0.0) as usize;
    let bottom = ((left[1].max(right[1]) + reach).ceil() as usize).min(template.size);
    top..bottom.max(top + 1)
}

/// 1 inside the ellipse of radii `inner` around `centre`, 0 outside the one of radii
/// `outer`, smooth between (S*S).
fn feature_region(s: usize, centre: [f32; 2], inner: (f32, f32), outer: (f32, f32)) -> Vec<f32> {
    let mut region = vec![0.0; s * s];
    add_feature_region(&mut region, s, centre, inner, outer);
    region
}

/// [`feature_region`] laid over `region` (rows of width `s`) by the maximum.
fn add_feature_region(
    region: &mut [f32],
    s: usize,
    [cx, cy]: [f32; 2],
    inner: (f32, f32),
    outer: (f32, f32),
) {
    for (i, w) in region.iter_mut().enumerate() {
        let (x, y) = ((i % s) as f32 - cx, (i / s) as f32 - cy);
        let r = |(rx, ry): (f32, f32)| ((x / rx).powi(2) + (y / ry).powi(2)).sqrt();
        // t runs from 0 on the inner ellipse to 1 on the outer along each ray.
        let (ri, ro) = (r(inner), r(outer));
        let t = if ri <= 1.0 {
            0.0
        } else {
            (ri - 1.0) / (ri / ro - 1.0)
        };
        *w = w.max(1.0 - smoothstep((0.0, 1.0), t));
    }
}

/// A wide Gaussian blur (`sigma` in crop pixels of a 128 px crop) of planar RGB, made on
/// the quarter grid (`small`, side m: a fifth of the cost at full size) into
/// `small_blurred` and resized up to the crop's grid (`out`, side s).
fn blur_on_quarter_grid(
    small: &[f32],
    small_blurred: &mut [f32],
    out: &mut [f32],
    (m, s): (usize, usize),
    sigma: f32,
) -> Result<()> {
    blur_planes(small, small_blurred, m, sigma * m as f32 / 128.0)?;
    for (q, o) in small_blurred
        .chunks_exact(m * m)
        .zip(out.chunks_exact_mut(s * s))
    {
        resize(q, m, o, s, imgproc::INTER_LINEAR)?;
    }
    Ok(())
}

/// Gaussian blur of one SxS plane (or of a band of its rows: `size` is the width),
/// edges replicated (the crop's own edges are).
fn blur(src: &[f32], dst: &mut [f32], size: usize, sigma: f32) -> Result<()> {
    // A band of rows of a plane is a plane too (edges replicated at the band's).
    let (width, rows) = (size as i32, (src.len() / size) as i32);
    let src = Mat::new_rows_cols_with_data(rows, width, src)?;
    let mut dst = Mat::new_rows_cols_with_data_mut(rows, width, dst)?;
    let target = dst.data();
    imgproc::gaussian_blur(
        &src,
        &mut dst,
        Size::new(0, 0),
        sigma as f64,
        sigma as f64,
        opencv::core::BORDER_REPLICATE,
    )?;
    if dst.data() != target {
        return Err(Error::Frame(
            "OpenCV wrote a blur elsewhere than the output buffer".into(),
        ));
    }
    Ok(())
}

/// The mask's feathered rim (0 < mask < 1): where the change fades out, so where a
/// tone drift of the model would show as an edge.
struct Rim {
    /// Pixel index and centred coordinates (crop sizes) of each rim pixel.
    pixels: Vec<(usize, f32, f32)>,
    weights: Vec<f32>,
}

/// `a + b u + c v`, u and v the centred coordinates in crop sizes.
#[derive(Debug, Clone, Copy)]
struct Plane([f32; 3]);

impl Plane {
    /// Subtracts the plane from an SxS grid over the crop.
    fn subtract_from(&self, grid: &mut [f32], size: usize) {
        let [a, b, c] = self.0;
        for (y, row) in grid.chunks_exact_mut(size).enumerate() {
            let (u0, v) = centred(0, y, size);
            let (start, step) = (a + b * u0 + c * v, b / size as f32);
            for (x, g) in row.iter_mut().enumerate() {
                *g -= start + step * x as f32;
            }
        }
    }
}

fn centred(x: usize, y: usize, size: usize) -> (f32, f32) {
    let s = size as f32;
    ((x as f32 + 0.5) / s - 0.5, (y as f32 + 0.5) / s - 0.5)
}

impl Rim {
    /// The rim on a `small`-sided grid over the crop (where the coarse change is).
    fn new(size: usize, small: usize, mask: &[f32]) -> Self {
        let mut grid = vec![0.0; small * small];
        // A mask can always be resized; failing that, the rim is empty (no drift fit).
        let _ = resize(mask, size, &mut grid, small, imgproc::INTER_AREA);
        let pixels: Vec<_> = grid
            .iter()
            .enumerate()
            .filter(|(_, &m)| m > 0.01 && m < 0.99)
            .map(|(i, _)| {
                let (u, v) = centred(i % small, i / small, small);
                (i, u, v)
            })
            .collect();
        Rim {
            weights: vec![1.0; pixels.len()],
            pixels,
        }
    }

    /// A plane fitted to `values` (the rim's grid, [0, 1] units) over the rim, robustly (Cauchy
    /// weights, three rounds), so that a real change reaching into part of the rim (a
    /// dropped jaw) counts little against the drift all around it.
    fn fit(&mut self, values: &[f32]) -> Plane {
        self.weights.fill(1.0);
        let mut plane = Plane([0.0; 3]);
        let scale = RIM_ROBUST_SCALE / 255.0;
        for round in 0..3 {
            if round > 0 {
                for (w, &(i, u, v)) in self.weights.iter_mut().zip(&self.pixels) {
                    let r = (values[i] - (plane.0[0] + plane.0[1] * u + plane.0[2] * v)) / scale;
                    *w = 1.0 / (1.0 + r * r);
                }
            }
            let mut a = [[0.0f64; 3]; 3];
            let mut b = [0.0f64; 3];
            for (&w, &(i, u, v)) in self.weights.iter().zip(&self.pixels) {
                let basis = [1.0, u as f64, v as f64];
                for r in 0..3 {
                    for c in 0..3 {
                        a[r][c] += w as f64 * basis[r] * basis[c];
                    }
                    b[r] += w as f64 * basis[r] * values[i] as f64;
                }
            }
            match solve3(a, b) {
                Some(p) => plane = Plane(p.map(|v| v as f32)),
                None => return Plane([0.0; 3]),
            }
        }
        plane
    }
}

/// Solves the 3x3 system by Cramer's rule (None when it is singular).
fn solve3(a: [[f64; 3]; 3], b: [f64; 3]) -> Option<[f64; 3]> {
    let det = |m: &[[f64; 3]; 3]| {
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    };
    let d = det(&a);
    if d.abs() < 1e-12 {
        return None;
    }
    let mut x = [0.0; 3];
    for (k, xk) in x.iter_mut().enumerate() {
        let mut m = a;
        for r in 0..3 {
            m[r][k] = b[r];
        }
        *xk = det(&m) / d;
    }
    Some(x)
}

/// Frame pixels per crop pixel of a face (the similarity's scale).
fn frame_scale(alignment: &Alignment) -> f32 {
    let [[a, b, _], [c, d, _]] = alignment.to_frame;
    (a * d - b * c).abs().sqrt() as f32
}

/// A rectangle of the frame: the part of it one face's change can reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roi {
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

/// Adds `warped` (the residual over `roi`, interleaved RGB float) to the frame there.
/// For RGB one straight loop per row (0.40 -> 0.36 ms for a 250 px face); the other
/// layouts skip the pixels without change (a straight loop measured slower there).
fn add_residual(frame: &mut FrameMut, warped: &Mat, roi: Roi) -> Result<()> {
    let bpp = frame.layout().bytes_per_pixel();
    let offsets = frame.layout().rgb_offsets();
    let stride = frame.stride();
    // One channel per value: a row of the change lines up with the frame's row.
    let res = warped.reshape(1, 0)?;
    let res = res.data_typed::<f32>()?;
    let data = frame.data_mut();
    for (y, res_row) in res.chunks_exact(3 * roi.w).enumerate() {
        let row = &mut data[(roi.y + y) * stride + roi.x * bpp..][..roi.w * bpp];
        if bpp == 3 && offsets == [0, 1, 2] {
            // A zero change rounds back to the value itself, so RGB runs as one
            // straight, vectorised loop over the row.
            for (v, &r) in row.iter_mut().zip(res_row) {
                *v = add_rounded(*v, r);
            }
            continue;
        }
        for (px, r) in row.chunks_exact_mut(bpp).zip(res_row.chunks_exact(3)) {
            if r == [0.0; 3] {
                continue;
            }
            for (&o, &r) in offsets.iter().zip(r) {
                px[o] = add_rounded(px[o], r);
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
