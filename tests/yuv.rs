//! 4:2:0 frames (I420, NV12) through `Yuv420Bridge` and the processor: the same edit as
//! on the packed frame, nothing written outside the changed rectangles, any stride, odd
//! sides, and clear errors for planes that are too small.

mod common;

use opencv::core::{Mat, CV_8UC1};
use opencv::imgproc;
use opencv::prelude::*;
use reggan::yuv::disjoint_blocks;
use reggan::{
    Device, FrameMut, FrameProcessor, PixelLayout, ProcessorConfig, RgbImage, Roi, Yuv420Bridge,
    Yuv420FrameMut, Yuv420Range,
};

fn processor(model: &std::path::Path) -> FrameProcessor {
    let config = ProcessorConfig {
        expression: "happy".into(),
        device: Device::Cpu,
        ..Default::default()
    };
    FrameProcessor::new(model, config).unwrap()
}

/// Planes of an I420 frame with padded rows, plus an extra last column and row (odd
/// sides) holding `EDGE`, and `PAD` in the row padding.
struct Planes {
    width: usize,
    height: usize,
    y: (Vec<u8>, usize),
    u: (Vec<u8>, usize),
    v: (Vec<u8>, usize),
}

const EDGE: u8 = 77;
const PAD: u8 = 0xA5;

impl Planes {
    /// `img` (even sides) in I420 by OpenCV's BT.601 conversion, widened by one
    /// column and one row.
    fn of(img: &RgbImage) -> Self {
        let (w, h) = (img.width, img.height);
        assert!(w % 2 == 0 && h % 2 == 0);
        let rgb = Mat::new_rows_cols_with_data(h as i32, (w * 3) as i32, &img.data)
            .unwrap()
            .reshape(3, h as i32)
            .unwrap()
            .try_clone()
            .unwrap();
        let mut i420 = Mat::default();
        imgproc::cvt_color_def(&rgb, &mut i420, imgproc::COLOR_RGB2YUV_I420).unwrap();
        let src = i420.data_bytes().unwrap();
        let (fw, fh) = (w + 1, h + 1);
        let (cw, ch) = (fw.div_ceil(2), fh.div_ceil(2));
        let plane = |row: usize, rows: usize, from: &[u8], from_row: usize, from_rows: usize| {
            let stride = row + 7;
            let mut p = vec![PAD; stride * rows];
            for r in 0..rows {
                p[r * stride..r * stride + row].fill(EDGE);
                if r < from_rows {
                    p[r * stride..r * stride + from_row]
                        .copy_from_slice(&from[r * from_row..(r + 1) * from_row]);
                }
            }
            (p, stride)
        };
        let (ys, us) = (w * h, w * h / 4);
        Planes {
            width: fw,
            height: fh,
            y: plane(fw, fh, &src[..ys], w, h),
            u: plane(cw, ch, &src[ys..ys + us], w / 2, h / 2),
            v: plane(cw, ch, &src[ys + us..], w / 2, h / 2),
        }
    }

    fn i420(&mut self) -> Yuv420FrameMut<'_> {
        Yuv420FrameMut::i420(
            [
                (&mut self.y.0, self.y.1),
                (&mut self.u.0, self.u.1),
                (&mut self.v.0, self.v.1),
            ],
            self.width,
            self.height,
        )
        .unwrap()
    }

    /// The same pixels as NV12: (Y, interleaved UV), same padding scheme.
    fn nv12(&self) -> ((Vec<u8>, usize), (Vec<u8>, usize)) {
        let cw = self.width.div_ceil(2);
        let stride = 2 * cw + 6;
        let rows = self.height.div_ceil(2);
        let mut uv = vec![PAD; stride * rows];
        for r in 0..rows {
            for c in 0..cw {
                uv[r * stride + 2 * c] = self.u.0[r * self.u.1 + c];
                uv[r * stride + 2 * c + 1] = self.v.0[r * self.v.1 + c];
            }
        }
        (self.y.clone(), (uv, stride))
    }

    /// The even part as BGR, by OpenCV's I420 conversion (independent of the bridge).
    fn to_rgb(&self) -> RgbImage {
        let (w, h) = (self.width & !1, self.height & !1);
        let mut packed = Vec::with_capacity(w * h * 3 / 2);
        for r in 0..h {
            packed.extend_from_slice(&self.y.0[r * self.y.1..][..w]);
        }
        for (p, s) in [&self.u, &self.v] {
            for r in 0..h / 2 {
                packed.extend_from_slice(&p[r * s..][..w / 2]);
            }
        }
        let i420 = Mat::new_rows_cols_with_data((h * 3 / 2) as i32, w as i32, &packed)
            .unwrap()
            .try_clone()
            .unwrap();
        assert_eq!(i420.typ(), CV_8UC1);
        let mut bgr = Mat::default();
        imgproc::cvt_color_def(&i420, &mut bgr, imgproc::COLOR_YUV2BGR_I420).unwrap();
        RgbImage::from_bgr_mat(&bgr).unwrap()
    }
}

/// The photo on a grey canvas with even sides.
fn canvas(photo: &RgbImage) -> RgbImage {
    let (w, h) = ((photo.width + 100) & !1, (photo.height + 60) & !1);
    let mut img = RgbImage::new(w, h);
    img.data.fill(128);
    for y in 0..photo.height {
        let row = &photo.data[y * photo.width * 3..][..photo.width * 3];
        img.data[((y + 30) * w + 50) * 3..][..photo.width * 3].copy_from_slice(row);
    }
    img
}

/// Runs one still frame through bridge and processor; returns the changed rectangles.
fn process(
    p: &mut FrameProcessor,
    bridge: &mut Yuv420Bridge,
    frame: &mut Yuv420FrameMut,
) -> Vec<Roi> {
    let report = {
        let mut packed = bridge.unpack(frame).unwrap();
        p.process(&mut packed).unwrap()
    };
    assert_eq!(report.faces.len(), 1, "one face expected");
    bridge.pack_changes(frame, &report.changed).unwrap();
    report.changed
}

fn inside(x: usize, y: usize, blocks: &[Roi]) -> bool {
    blocks
        .iter()
        .any(|b| x >= b.x && x < b.x + b.w && y >= b.y && y < b.y + b.h)
}

/// Mean absolute difference of two images over the pixels inside `blocks`.
fn mean_abs_inside(a: &RgbImage, b: &RgbImage, blocks: &[Roi]) -> f64 {
    let (mut sum, mut n) = (0.0, 0usize);
    for y in 0..a.height {
        for x in 0..a.width {
            if inside(x, y, blocks) {
                let (p, q) = (a.pixel(x, y), b.pixel(x, y));
                sum += (0..3).map(|c| p[c].abs_diff(q[c]) as f64).sum::<f64>();
                n += 3;
            }
        }
    }
    sum / n as f64
}

#[test]
fn a_420_frame_gets_the_packed_frames_edit_and_nothing_outside_the_changed_rectangles() {
    let Some((model, photo)) = common::shipped_model_and_photo() else {
        return;
    };
    let img = canvas(&photo);
    let original = Planes::of(&img);
    let input_rgb = original.to_rgb();

    // The packed path on exactly the pixels the bridge sees.
    let mut reference = input_rgb.clone();
    let mut bgrx: Vec<u8> = reference
        .data
        .chunks(3)
        .flat_map(|p| [p[2], p[1], p[0], 0])
        .collect();
    let (w, h) = (reference.width, reference.height);
    processor(&model)
        .process(&mut FrameMut::new(&mut bgrx, w, h, w * 4, PixelLayout::Bgrx).unwrap())
        .unwrap();
    for (rgb, p) in reference.data.chunks_mut(3).zip(bgrx.chunks(4)) {
        rgb.copy_from_slice(&[p[2], p[1], p[0]]);
    }

    let mut planes = Planes::of(&img);
    let mut bridge = Yuv420Bridge::new();
    let changed = process(&mut processor(&model), &mut bridge, &mut planes.i420());
    let blocks = disjoint_blocks(&changed, w, h);

    // Outside the changed blocks (and in the odd column, row and padding) no byte moved.
    for (name, (a, stride), (b, _), scale) in [
        ("Y", &planes.y, &original.y, 1),
        ("U", &planes.u, &original.u, 2),
        ("V", &planes.v, &original.v, 2),
    ] {
        let mut changed_inside = 0;
        for (i, (p, q)) in a.iter().zip(b).enumerate() {
            let (x, y) = ((i % stride) * scale, (i / stride) * scale);
            if p != q {
                assert!(
                    inside(x, y, &blocks),
                    "{name} byte at ({x}, {y}) changed outside {blocks:?}"
                );
                changed_inside += 1;
            }
        }
        assert!(
            changed_inside > 100,
            "{name}: only {changed_inside} bytes changed"
        );
    }

    // Inside, the edit is the packed frame's, up to the chroma subsampling.
    let result = planes.to_rgb();
    let edit = mean_abs_inside(&reference, &input_rgb, &blocks);
    let off = mean_abs_inside(&result, &reference, &blocks);
    eprintln!("mean edit {edit:.2} levels, 4:2:0 result off the packed one by {off:.2}");
    assert!(edit > 1.0, "the edit is too small to compare: {edit}");
    assert!(
        off < 0.25 * edit && off < 1.0,
        "off by {off} for an edit of {edit}"
    );

    // NV12 holds the same samples and gets the same bytes.
    let ((mut y, ys), (mut uv, uvs)) = original.nv12();
    let (fw, fh) = (original.width, original.height);
    let mut nv12 = Yuv420FrameMut::nv12([(&mut y, ys), (&mut uv, uvs)], fw, fh).unwrap();
    process(&mut processor(&model), &mut Yuv420Bridge::new(), &mut nv12);
    assert_eq!(y, planes.y.0, "NV12 luma differs from I420's");
    assert_eq!(uv, planes.nv12().1 .0, "NV12 chroma differs from I420's");
}

#[test]
fn planes_too_small_or_frames_too_thin_are_clear_errors() {
    let (mut y, mut u, mut v) = (vec![0u8; 64 * 48], vec![0u8; 32 * 24], vec![0u8; 32 * 23]);
    let err = Yuv420FrameMut::i420([(&mut y, 64), (&mut u, 32), (&mut v, 32)], 64, 48)
        .err()
        .expect("a short V plane is an error")
        .to_string();
    assert!(err.contains("V plane of 736 bytes is too small"), "{err}");
    let err = Yuv420FrameMut::nv12([(&mut y, 64), (&mut u, 31)], 64, 48)
        .err()
        .expect("a short stride is an error")
        .to_string();
    assert!(
        err.contains("UV plane stride 31 is shorter than a row of 64"),
        "{err}"
    );
    let mut v = vec![0u8; 32 * 24];
    let frame = Yuv420FrameMut::i420([(&mut y, 1), (&mut u, 1), (&mut v, 1)], 1, 48).unwrap();
    let err = Yuv420Bridge::new()
        .unpack(&frame)
        .err()
        .expect("a one-pixel-wide frame cannot be converted")
        .to_string();
    assert!(
        err.contains("1x48 4:2:0 frame has no whole 2x2 block"),
        "{err}"
    );
}

#[test]
fn a_frame_the_processor_left_alone_is_not_written() {
    let img = RgbImage {
        width: 64,
        height: 48,
        data: (0..64 * 48 * 3).map(|i| (i * 7 % 251) as u8).collect(),
    };
    let original = Planes::of(&img);
    let mut planes = Planes::of(&img);
    let mut bridge = Yuv420Bridge::new();
    let whole = Roi {
        x: 0,
        y: 0,
        w: 64,
        h: 48,
    };
    let mut frame = planes.i420();
    // Unchanged pixels inside a changed rectangle are not written either.
    bridge.unpack(&frame).unwrap();
    bridge.pack_changes(&mut frame, &[whole]).unwrap();
    // Without a changed rectangle nothing goes back, whatever the packed frame holds.
    bridge.unpack(&frame).unwrap().data_mut().fill(0);
    bridge.pack_changes(&mut frame, &[]).unwrap();
    assert_eq!(planes.y, original.y);
    assert_eq!((&planes.u, &planes.v), (&original.u, &original.v));
}

/// Full-range (JPEG, `jpegdec`'s) I420 of `rgb`, whose 2x2 blocks are of one colour,
/// by the JFIF formulas; unpadded planes.
fn jfif_i420(rgb: &RgbImage) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let (w, h) = (rgb.width, rgb.height);
    let to_u8 = |v: f64| v.round().clamp(0.0, 255.0) as u8;
    let mut y = vec![0; w * h];
    let (mut u, mut v) = (vec![0; w * h / 4], vec![0; w * h / 4]);
    for py in 0..h {
        for px in 0..w {
            let [r, g, b] = rgb.pixel(px, py).map(f64::from);
            y[py * w + px] = to_u8(0.299 * r + 0.587 * g + 0.114 * b);
            let c = (py / 2) * (w / 2) + px / 2;
            u[c] = to_u8(128.0 - 0.168736 * r - 0.331264 * g + 0.5 * b);
            v[c] = to_u8(128.0 + 0.5 * r - 0.418688 * g - 0.081312 * b);
        }
    }
    (y, u, v)
}

#[test]
fn a_full_range_frame_is_read_and_written_in_full_range() {
    let (w, h) = (16, 8);
    let mut rgb = RgbImage::new(w, h);
    for py in 0..h {
        for px in 0..w {
            let block = (py / 2) * (w / 2) + px / 2;
            let colour = [
                40 + block * 37 % 160,
                40 + block * 53 % 160,
                40 + block * 71 % 160,
            ];
            let i = (py * w + px) * 3;
            rgb.data[i..i + 3].copy_from_slice(&colour.map(|c| c as u8));
        }
    }
    let (y0, u0, v0) = jfif_i420(&rgb);
    let read_as = |range: Yuv420Range| {
        let (mut y, mut u, mut v) = (y0.clone(), u0.clone(), v0.clone());
        let frame = Yuv420FrameMut::i420([(&mut y, w), (&mut u, w / 2), (&mut v, w / 2)], w, h)
            .unwrap()
            .with_range(range);
        let mut bridge = Yuv420Bridge::new();
        let packed = bridge.unpack(&frame).unwrap();
        let data = packed.data();
        (0..w * h)
            .flat_map(|i| [2, 1, 0].map(|c| data[i * 4 + c].abs_diff(rgb.data[i * 3 + 2 - c])))
            .max()
            .unwrap()
    };
    let (full, video) = (read_as(Yuv420Range::Full), read_as(Yuv420Range::Video));
    eprintln!("largest error read as full range {full}, as video range {video}");
    assert!(full <= 3, "full range read back off by {full}");
    assert!(
        video > 10,
        "reading full range as video range should stretch it ({video})"
    );

    // A grey change of +10 goes back as +10 full-range luma steps and no chroma change.
    let (mut y, mut u, mut v) = (y0.clone(), u0.clone(), v0.clone());
    let mut frame = Yuv420FrameMut::i420([(&mut y, w), (&mut u, w / 2), (&mut v, w / 2)], w, h)
        .unwrap()
        .with_range(Yuv420Range::Full);
    let mut bridge = Yuv420Bridge::new();
    for (i, p) in bridge
        .unpack(&frame)
        .unwrap()
        .data_mut()
        .chunks_mut(4)
        .enumerate()
    {
        if i % w < 8 {
            p[..3].iter_mut().for_each(|c| *c += 10);
        }
    }
    let left = Roi {
        x: 0,
        y: 0,
        w: 8,
        h,
    };
    bridge.pack_changes(&mut frame, &[left]).unwrap();
    for (i, (after, before)) in y.iter().zip(&y0).enumerate() {
        let want = if i % w < 8 { 10 } else { 0 };
        assert_eq!(
            *after as i32 - *before as i32,
            want,
            "luma at ({}, {})",
            i % w,
            i / w
        );
    }
    assert_eq!((u, v), (u0, v0), "a grey change moved the chroma");
}
