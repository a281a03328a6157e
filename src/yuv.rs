//! 4:2:0 YUV frames (I420, NV12: what decoders and cameras give) for the processor,
//! which works on packed RGB.
//!
//! Putting a `videoconvert` on each side of the element costs a 1280x720 stream 2.6 ms a
//! frame (I420 to BGRx 0.75 ms, back 1.8 ms), about half of what the element itself
//! takes, and the way back is the dearer half although only the faces changed.
//! [`Yuv420Bridge`] converts the frame once to BGRx for the processor to read and
//! write, then carries back only what the processor changed: in each rectangle of
//! [`crate::FrameReport::changed`], the difference between the BGRx after and the same
//! rectangle converted afresh from the untouched planes is mapped to Y (per pixel) and
//! to U and V (per 2x2 block, averaged) by the inverse of the same conversion. A pixel
//! whose BGRx did not change is not written, so everything outside the edit stays
//! bit-identical.
//!
//! Colours: OpenCV's conversion (BT.601, video range) both ways. A full-range frame
//! (JPEG's, as `jpegdec` gives a webcam's MJPEG; [`Yuv420Range::Full`]) is first mapped
//! to video range by a table, and its change scaled back to full range, so the model
//! sees neither crushed blacks nor a stretched contrast. The BT.709 matrix of HD streams
//! is not honoured: the model sees such material with a slightly different tint (a few
//! levels), and the change goes back through the exact inverse, so nothing drifts.
//! Odd sizes: the last column or row of an odd-sized frame is left out of the
//! conversion (it has no whole 2x2 chroma block) and never changed.

use opencv::core::{Mat, Rect, Vector, CV_8UC1, CV_8UC2, CV_8UC4};
use opencv::imgproc;
use opencv::prelude::*;

use crate::composite::Roi;
use crate::error::{Error, Result};
use crate::frame::{FrameMut, PixelLayout};

/// How the chroma of a 4:2:0 frame is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Yuv420Layout {
    /// Three planes: Y, then U and V at half width and height.
    I420,
    /// Two planes: Y, then U and V interleaved at half height.
    Nv12,
}

/// The sample range of a 4:2:0 frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Yuv420Range {
    /// Y in 16..=235, U and V in 16..=240 (video, TV): what video codecs carry.
    #[default]
    Video,
    /// All of 0..=255 (JPEG, and GStreamer's colorimetry `1:4:0:0`).
    Full,
}

/// A mutable 4:2:0 frame: its planes, each with its own row stride.
pub struct Yuv420FrameMut<'a> {
    luma: &'a mut [u8],
    luma_stride: usize,
    /// I420: U, V. NV12: UV, and an empty second plane.
    chroma: [&'a mut [u8]; 2],
    chroma_stride: [usize; 2],
    width: usize,
    height: usize,
    layout: Yuv420Layout,
    range: Yuv420Range,
}

impl<'a> Yuv420FrameMut<'a> {
    /// An I420 frame of `width` x `height` from its three planes.
    pub fn i420(planes: [(&'a mut [u8], usize); 3], width: usize, height: usize) -> Result<Self> {
        let [(luma, luma_stride), (u, u_stride), (v, v_stride)] = planes;
        let frame = Yuv420FrameMut {
            luma,
            luma_stride,
            chroma: [u, v],
            chroma_stride: [u_stride, v_stride],
            width,
            height,
            layout: Yuv420Layout::I420,
            range: Yuv420Range::Video,
        };
        frame.check()?;
        Ok(frame)
    }

    /// An NV12 frame of `width` x `height` from its two planes.
    pub fn nv12(planes: [(&'a mut [u8], usize); 2], width: usize, height: usize) -> Result<Self> {
        let [(luma, luma_stride), (uv, uv_stride)] = planes;
        let frame = Yuv420FrameMut {
            luma,
            luma_stride,
            chroma: [uv, &mut []],
            chroma_stride: [uv_stride, 0],
            width,
            height,
            layout: Yuv420Layout::Nv12,
            range: Yuv420Range::Video,
        };
        frame.check()?;
        Ok(frame)
    }

    pub fn width(&self) -> usize {
        self.width
    }
    pub fn height(&self) -> usize {
        self.height
    }
    pub fn layout(&self) -> Yuv420Layout {
        self.layout
    }

    /// The same frame with samples in `range` (video range unless said).
    pub fn with_range(mut self, range: Yuv420Range) -> Self {
        self.range = range;
        self
    }
    pub fn range(&self) -> Yuv420Range {
        self.range
    }

    /// The part made of whole 2x2 chroma blocks, the part the bridge converts.
    pub fn even_size(&self) -> (usize, usize) {
        (self.width & !1, self.height & !1)
    }

    /// Every plane large enough for its rows (the chroma of an odd side rounds up).
    fn check(&self) -> Result<()> {
        let (w, h) = (self.width, self.height);
        if w == 0 || h == 0 {
            return Err(Error::Frame(format!("empty frame {w}x{h}")));
        }
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        let chroma_row = match self.layout {
            Yuv420Layout::I420 => cw,
            Yuv420Layout::Nv12 => 2 * cw,
        };
        let mut planes = vec![("Y", &*self.luma, self.luma_stride, w, h)];
        let names: &[&str] = match self.layout {
            Yuv420Layout::I420 => &["U", "V"],
            Yuv420Layout::Nv12 => &["UV"],
        };
        for (k, name) in names.iter().enumerate() {
            planes.push((
                name,
                &*self.chroma[k],
                self.chroma_stride[k],
                chroma_row,
                ch,
            ));
        }
        for (name, data, stride, row, rows) in planes {
            if stride < row {
                return Err(Error::Frame(format!(
                    "{name} plane stride {stride} is shorter than a row of {row} bytes ({w}x{h} {:?})",
                    self.layout
                )));
            }
            let needed = stride * (rows - 1) + row;
            if data.len() < needed {
                return Err(Error::Frame(format!(
                    "{name} plane of {} bytes is too small for {w}x{h} {:?} with stride {stride} ({needed} needed)",
                    data.len(),
                    self.layout
                )));
            }
        }
        Ok(())
    }
}

/// An OpenCV header over `rows` x `cols` elements of `data` (no copy), to read from.
fn plane_mat(data: &[u8], rows: usize, cols: usize, typ: i32, step: usize) -> Result<Mat> {
    // SAFETY: callers pass sizes inside the plane (`Yuv420FrameMut::check`); the Mat
    // lives only while `data` is borrowed here and is only an input to OpenCV.
    let mat = unsafe {
        Mat::new_rows_cols_with_data_unsafe(
            rows as i32,
            cols as i32,
            typ,
            data.as_ptr() as *mut std::ffi::c_void,
            step,
        )?
    };
    Ok(mat)
}

/// The 4:2:0 <-> BGRx conversion around the processor, with buffers kept between
/// frames. `unpack` a frame, process the packed view, then `pack_changes` with the
/// report's `changed` rectangles:
///
/// ```no_run
/// # fn edit(processor: &mut reggan::FrameProcessor, bridge: &mut reggan::Yuv420Bridge,
/// #         y: &mut [u8], uv: &mut [u8], t: std::time::Duration) -> reggan::Result<()> {
/// // An NV12 frame of 1280x720 with unpadded rows, as a decoder hands it over.
/// let mut frame = reggan::Yuv420FrameMut::nv12([(y, 1280), (uv, 1280)], 1280, 720)?;
/// let report = processor.process_video(&mut bridge.unpack(&frame)?, t)?;
/// bridge.pack_changes(&mut frame, &report.changed)?;
/// # Ok(())
/// # }
/// ```
#[derive(Default)]
pub struct Yuv420Bridge {
    /// The whole frame as BGRx (even part).
    packed: Mat,
    /// I420's U and V interleaved (NV12's layout, which OpenCV converts from any stride).
    uv: Mat,
    /// One changed rectangle converted afresh from the untouched planes.
    before: Mat,
    /// A full-range frame's luma and chroma mapped to video range.
    video_range: [Mat; 2],
}

impl Yuv420Bridge {
    pub fn new() -> Self {
        Self::default()
    }

    /// The frame as BGRx, for the processor (the even part: see the module notes).
    /// Errors on a frame with a side of one pixel, which has no chroma block.
    pub fn unpack(&mut self, frame: &Yuv420FrameMut) -> Result<FrameMut<'_>> {
        let (w, h) = frame.even_size();
        if w == 0 || h == 0 {
            return Err(Error::Frame(format!(
                "a {}x{} 4:2:0 frame has no whole 2x2 block to convert",
                frame.width, frame.height
            )));
        }
        let luma = plane_mat(frame.luma, h, w, CV_8UC1, frame.luma_stride)?;
        self.interleave_chroma(frame)?;
        let chroma = self.chroma_plane(frame)?;
        to_bgra(
            &luma,
            &chroma,
            frame.range,
            &mut self.video_range,
            &mut self.packed,
        )?;
        let data = self.packed.data_bytes_mut()?;
        FrameMut::new(data, w, h, w * 4, PixelLayout::Bgrx)
    }

    /// Writes what changed in the packed frame inside `changed` (frame rectangles)
    /// back into `frame`'s planes. `frame` must be the one last unpacked, not written
    /// since.
    pub fn pack_changes(&mut self, frame: &mut Yuv420FrameMut, changed: &[Roi]) -> Result<()> {
        let (w, h) = frame.even_size();
        if self.packed.rows() != h as i32 || self.packed.cols() != w as i32 {
            return Err(Error::Frame(format!(
                "the bridge holds a {}x{} frame, not this {w}x{h} one",
                self.packed.cols(),
                self.packed.rows()
            )));
        }
        for block in disjoint_blocks(changed, w, h) {
            self.convert_before(frame, block)?;
            self.write_back(frame, block)?;
        }
        Ok(())
    }

    /// I420: U and V interleaved into `self.uv` (NV12 needs nothing).
    fn interleave_chroma(&mut self, frame: &Yuv420FrameMut) -> Result<()> {
        if frame.layout != Yuv420Layout::I420 {
            return Ok(());
        }
        let (w, h) = frame.even_size();
        let planes: Vector<Mat> = frame
            .chroma
            .iter()
            .zip(frame.chroma_stride)
            .map(|(p, stride)| plane_mat(p, h / 2, w / 2, CV_8UC1, stride))
            .collect::<Result<_>>()?;
        opencv::core::merge(&planes, &mut self.uv)?;
        Ok(())
    }

    /// The interleaved chroma (even part): a header over the frame's own NV12 plane,
    /// or over I420's interleaved copy.
    fn chroma_plane(&self, frame: &Yuv420FrameMut) -> Result<Mat> {
        let (w, h) = frame.even_size();
        match frame.layout {
            Yuv420Layout::Nv12 => plane_mat(
                frame.chroma[0],
                h / 2,
                w / 2,
                CV_8UC2,
                frame.chroma_stride[0],
            ),
            Yuv420Layout::I420 => plane_mat(self.uv.data_bytes()?, h / 2, w / 2, CV_8UC2, w),
        }
    }

    /// `self.before`: the block's BGRx as `unpack` made it, from the planes.
    fn convert_before(&mut self, frame: &Yuv420FrameMut, block: Roi) -> Result<()> {
        let (w, h) = frame.even_size();
        let luma = plane_mat(frame.luma, h, w, CV_8UC1, frame.luma_stride)?;
        let luma = Mat::roi(&luma, rect_of(block))?;
        let chroma = self.chroma_plane(frame)?;
        let chroma = Mat::roi(
            &chroma,
            Rect::new(
                block.x as i32 / 2,
                block.y as i32 / 2,
                block.w as i32 / 2,
                block.h as i32 / 2,
            ),
        )?;
        to_bgra(
            &luma,
            &chroma,
            frame.range,
            &mut self.video_range,
            &mut self.before,
        )?;
        debug_assert_eq!(self.before.typ(), CV_8UC4);
        Ok(())
    }

    /// Adds the block's BGRx change to Y per pixel and to U, V per 2x2 block.
    fn write_back(&mut self, frame: &mut Yuv420FrameMut, block: Roi) -> Result<()> {
        let packed_stride = self.packed.cols() as usize * 4;
        let after = self.packed.data_bytes()?;
        let before = self.before.data_bytes()?;
        let row_bytes = block.w * 4;
        let (ys, [s0, s1]) = (frame.luma_stride, frame.chroma_stride);
        let layout = frame.layout;
        let [to_y, to_u, to_v] = inverse_rows(frame.range);
        let [c0, c1] = &mut frame.chroma;
        for by in (0..block.h).step_by(2) {
            let after_rows = [by, by + 1]
                .map(|y| &after[(block.y + y) * packed_stride + block.x * 4..][..row_bytes]);
            let before_rows = [by, by + 1].map(|y| &before[y * row_bytes..][..row_bytes]);
            if after_rows == before_rows {
                continue;
            }
            let cy = (block.y + by) / 2;
            for bx in (0..block.w).step_by(2) {
                let mut sum = [0i32; 3];
                for (r, (a_row, b_row)) in after_rows.iter().zip(&before_rows).enumerate() {
                    let luma_row = (block.y + by + r) * ys + block.x;
                    for x in [bx, bx + 1] {
                        let pixel = |row: &[u8]| -> [u8; 3] {
                            row[x * 4..x * 4 + 3].try_into().expect("three bytes")
                        };
                        let (a, b) = (pixel(a_row), pixel(b_row));
                        if a == b {
                            continue;
                        }
                        // BGRx: blue first.
                        let d = [2, 1, 0].map(|c| a[c] as i32 - b[c] as i32);
                        let luma = &mut frame.luma[luma_row + x];
                        *luma = add_fixed(*luma, dot(to_y, d), 16);
                        (0..3).for_each(|c| sum[c] += d[c]);
                    }
                }
                if sum == [0; 3] {
                    continue;
                }
                let cx = (block.x + bx) / 2;
                let (u, v) = match layout {
                    Yuv420Layout::I420 => (&mut c0[cy * s0 + cx], &mut c1[cy * s1 + cx]),
                    Yuv420Layout::Nv12 => {
                        let [u, v] = &mut c0[cy * s0 + 2 * cx..][..2] else {
                            unreachable!("a slice of two")
                        };
                        (u, v)
                    }
                };
                // The block's mean change: the sum over its four pixels, two more bits.
                *u = add_fixed(*u, dot(to_u, sum), 18);
                *v = add_fixed(*v, dot(to_v, sum), 18);
            }
        }
        Ok(())
    }
}

/// Rows of the inverse of OpenCV's BT.601 video-range YUV-to-RGB matrix (its
/// fixed-point coefficients inverted), times 2^16: the Y, U and V change of an RGB
/// change. U and V rows sum to zero (grey stays grey).
pub const TO_Y: [i32; 3] = [16840, 33058, 6405];
pub const TO_U: [i32; 3] = [-9713, -19068, 28781];
pub const TO_V: [i32; 3] = [28781, -24110, -4671];

/// The rows for `range`: full-range samples span 255/219 (luma) and 255/224 (chroma)
/// times the video-range steps.
fn inverse_rows(range: Yuv420Range) -> [[i32; 3]; 3] {
    let scale = |row: [i32; 3], f: f64| row.map(|c| (c as f64 * f).round() as i32);
    match range {
        Yuv420Range::Video => [TO_Y, TO_U, TO_V],
        Yuv420Range::Full => [
            scale(TO_Y, 255.0 / 219.0),
            scale(TO_U, 255.0 / 224.0),
            scale(TO_V, 255.0 / 224.0),
        ],
    }
}

/// `dst` = BGRA of NV12-ordered `luma` and `chroma` by OpenCV's video-range BT.601
/// conversion; full-range samples are first mapped to video range (into `scratch`).
fn to_bgra(
    luma: &impl opencv::core::ToInputArray,
    chroma: &impl opencv::core::ToInputArray,
    range: Yuv420Range,
    scratch: &mut [Mat; 2],
    dst: &mut Mat,
) -> Result<()> {
    let code = imgproc::COLOR_YUV2BGRA_NV12;
    if range == Yuv420Range::Video {
        imgproc::cvt_color_two_plane(luma, chroma, dst, code)?;
        return Ok(());
    }
    let table = |f: fn(f64) -> f64| -> Result<Mat> {
        let values: Vec<u8> = (0..256).map(|v| f(v as f64).round() as u8).collect();
        Ok(Mat::from_slice(&values)?.try_clone()?)
    };
    let luma_table = table(|y| 16.0 + y * 219.0 / 255.0)?;
    let chroma_table = table(|c| 128.0 + (c - 128.0) * 224.0 / 255.0)?;
    let [luma_video, chroma_video] = scratch;
    opencv::core::lut(luma, &luma_table, luma_video)?;
    opencv::core::lut(chroma, &chroma_table, chroma_video)?;
    imgproc::cvt_color_two_plane(luma_video, chroma_video, dst, code)?;
    Ok(())
}

fn dot(row: [i32; 3], d: [i32; 3]) -> i32 {
    row[0] * d[0] + row[1] * d[1] + row[2] * d[2]
}

/// `v + change / 2^shift`, rounded half up and saturated to 0..=255.
fn add_fixed(v: u8, change: i32, shift: u32) -> u8 {
    ((((v as i32) << shift) + change + (1 << (shift - 1))).clamp(0, 255 << shift) >> shift) as u8
}

fn rect_of(r: Roi) -> Rect {
    Rect::new(r.x as i32, r.y as i32, r.w as i32, r.h as i32)
}

/// The rectangles grown to whole 2x2 blocks inside `w` x `h` (both even), then merged
/// until none overlap: a block written back must not be converted again as "before".
pub fn disjoint_blocks(rects: &[Roi], w: usize, h: usize) -> Vec<Roi> {
    let mut blocks: Vec<Roi> = rects
        .iter()
        .filter_map(|r| {
            let (x0, y0) = (r.x & !1, r.y & !1);
            let x1 = (r.x + r.w).next_multiple_of(2).min(w);
            let y1 = (r.y + r.h).next_multiple_of(2).min(h);
            (x1 > x0 && y1 > y0).then_some(Roi {
                x: x0,
                y: y0,
                w: x1 - x0,
                h: y1 - y0,
            })
        })
        .collect();
    let overlap =
        |a: &Roi, b: &Roi| a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
    'merge: loop {
        for i in 0..blocks.len() {
            for j in i + 1..blocks.len() {
                if overlap(&blocks[i], &blocks[j]) {
                    let b = blocks.swap_remove(j);
                    let a = blocks[i];
                    let (x0, y0) = (a.x.min(b.x), a.y.min(b.y));
                    let (x1, y1) = ((a.x + a.w).max(b.x + b.w), (a.y + a.h).max(b.y + b.h));
                    blocks[i] = Roi {
                        x: x0,
                        y: y0,
                        w: x1 - x0,
                        h: y1 - y0,
                    };
                    continue 'merge;
                }
            }
        }
        return blocks;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roi(x: usize, y: usize, w: usize, h: usize) -> Roi {
        Roi { x, y, w, h }
    }

    #[test]
    fn blocks_are_whole_2x2_blocks_inside_the_frame_and_disjoint() {
        // Grown to even edges and clipped to the frame.
        assert_eq!(
            disjoint_blocks(&[roi(3, 5, 4, 4)], 100, 100),
            vec![roi(2, 4, 6, 6)]
        );
        assert_eq!(
            disjoint_blocks(&[roi(95, 97, 9, 9)], 98, 98),
            vec![roi(94, 96, 4, 2)]
        );
        // Two overlapping faces become one block; a third apart stays.
        let merged = disjoint_blocks(
            &[roi(0, 0, 10, 10), roi(60, 60, 4, 4), roi(8, 8, 10, 10)],
            100,
            100,
        );
        assert_eq!(merged.len(), 2);
        assert!(merged.contains(&roi(0, 0, 18, 18)), "{merged:?}");
        assert!(merged.contains(&roi(60, 60, 4, 4)), "{merged:?}");
        // Chained overlaps merge transitively.
        let chain = disjoint_blocks(
            &[roi(0, 0, 4, 4), roi(10, 0, 4, 4), roi(2, 0, 10, 2)],
            100,
            100,
        );
        assert_eq!(chain, vec![roi(0, 0, 14, 4)]);
    }

    /// The fixed-point rows are the inverse of OpenCV's forward matrix: an RGB change
    /// made from a YUV change comes back as that YUV change.
    #[test]
    fn the_inverse_matrix_undoes_opencvs_conversion() {
        let scale = (1u32 << 20) as f64;
        let (cy, cub, cug, cvg, cvr) = (
            1220542.0 / scale,
            2116026.0 / scale,
            -409993.0 / scale,
            -852492.0 / scale,
            1673527.0 / scale,
        );
        let row = |r: [i32; 3]| r.map(|c| c as f64 / 65536.0);
        let apply = |r: [f64; 3], rgb: [f64; 3]| r[0] * rgb[0] + r[1] * rgb[1] + r[2] * rgb[2];
        for (dy, du, dv) in [(10.0, 0.0, 0.0), (0.0, 7.0, -3.0), (-4.0, 2.5, 9.0)] {
            let rgb = [
                cy * dy + cvr * dv,
                cy * dy + cug * du + cvg * dv,
                cy * dy + cub * du,
            ];
            let back = [TO_Y, TO_U, TO_V].map(|r| apply(row(r), rgb));
            for (got, want) in back.iter().zip([dy, du, dv]) {
                assert!((got - want).abs() < 2e-3, "{back:?} vs {:?}", (dy, du, dv));
            }
        }
    }

    #[test]
    fn fixed_point_changes_round_half_up_and_saturate() {
        assert_eq!(add_fixed(100, 3 << 16, 16), 103);
        assert_eq!(add_fixed(100, (1 << 15) - 1, 16), 100);
        assert_eq!(add_fixed(100, 1 << 15, 16), 101);
        assert_eq!(add_fixed(100, -(1 << 15), 16), 100);
        assert_eq!(add_fixed(100, -(1 << 15) - 1, 16), 99);
        assert_eq!(add_fixed(250, 40 << 18, 18), 255);
        assert_eq!(add_fixed(5, -40 << 18, 18), 0);
    }
}
