//! Hand-checked cases for the pure parts of the core: anchors, decoding, NMS,
//! alignment algebra, the face mask and residual compositing.

use reggan::align::{apply, invert, Alignment, Template};
use reggan::composite::{face_mask, Compositor};
use reggan::detect::{
    decode_anchor, ssd_anchors, weighted_nms, Anchor, BoxF, Face, Letterbox, Point,
};
use reggan::{FrameMut, PixelLayout, RgbImage};

fn face(x: f32, y: f32, w: f32, h: f32, score: f32) -> Face {
    Face {
        bbox: BoxF { x, y, w, h },
        keypoints: [Point {
            x: x + w / 2.0,
            y: y + h / 2.0,
        }; 6],
        score,
    }
}

#[test]
fn front_and_back_anchor_layouts_match_mediapipe() {
    let front = ssd_anchors(128, &[8, 16, 16, 16]);
    assert_eq!(front.len(), 896);
    // First grid 16x16 with 2 anchors per cell, centred on the cell.
    assert_eq!(
        front[0],
        Anchor {
            cx: 0.5 / 16.0,
            cy: 0.5 / 16.0
        }
    );
    assert_eq!(front[1], front[0]);
    assert_eq!(
        front[2],
        Anchor {
            cx: 1.5 / 16.0,
            cy: 0.5 / 16.0
        }
    );
    // Second grid 8x8 with 6 anchors per cell starts at index 512.
    assert_eq!(
        front[512],
        Anchor {
            cx: 0.5 / 8.0,
            cy: 0.5 / 8.0
        }
    );
    assert_eq!(front[517], front[512]);
    assert_eq!(
        front[518],
        Anchor {
            cx: 1.5 / 8.0,
            cy: 0.5 / 8.0
        }
    );
    let back = ssd_anchors(256, &[16, 32, 32, 32]);
    assert_eq!(back.len(), 896);
    assert_eq!(
        back[512],
        Anchor {
            cx: 0.5 / 8.0,
            cy: 0.5 / 8.0
        }
    );
}

#[test]
fn decoding_offsets_are_relative_to_the_anchor_in_input_pixels() {
    let anchor = Anchor { cx: 0.25, cy: 0.5 };
    let mut raw = [0.0f32; 16];
    raw[0] = 12.8; // +0.1 of a 128 input
    raw[1] = -6.4; // -0.05
    raw[2] = 32.0; // w 0.25
    raw[3] = 64.0; // h 0.5
    raw[4] = -12.8; // eye x: anchor - 0.1
    raw[5] = 0.0;
    let f = decode_anchor(&raw, &anchor, 128.0, 0.9);
    let close = |a: f32, b: f32| (a - b).abs() < 1e-6;
    assert!(close(f.bbox.w, 0.25) && close(f.bbox.h, 0.5));
    assert!(close(f.bbox.x, 0.35 - 0.125) && close(f.bbox.y, 0.45 - 0.25));
    assert!(close(f.keypoints[0].x, 0.15) && close(f.keypoints[0].y, 0.5));
    assert!(close(f.keypoints[1].x, 0.25));
    assert_eq!(f.score, 0.9);
}

#[test]
fn weighted_nms_merges_overlaps_by_score_and_keeps_separate_faces() {
    let faces = vec![
        face(10.0, 10.0, 10.0, 10.0, 0.6),
        face(100.0, 100.0, 20.0, 20.0, 0.7),
        face(12.0, 10.0, 10.0, 10.0, 0.9), // IoU with the first = 80/120 = 0.667
    ];
    let out = weighted_nms(faces, 0.3);
    assert_eq!(out.len(), 2);
    // The cluster: weights 0.9 and 0.6 -> x = (12*0.9 + 10*0.6)/1.5 = 11.2, best score kept.
    assert!((out[0].bbox.x - 11.2).abs() < 1e-5, "{:?}", out[0]);
    assert_eq!(out[0].score, 0.9);
    assert!((out[0].keypoints[0].x - 16.2).abs() < 1e-5);
    assert_eq!(
        out[1].bbox,
        BoxF {
            x: 100.0,
            y: 100.0,
            w: 20.0,
            h: 20.0
        }
    );
    // Below the threshold nothing merges.
    let apart = weighted_nms(
        vec![
            face(0.0, 0.0, 10.0, 10.0, 0.8),
            face(8.0, 0.0, 10.0, 10.0, 0.7),
        ],
        0.3,
    );
    assert_eq!(apart.len(), 2); // IoU = 20/180
}

#[test]
fn letterbox_maps_normalised_coordinates_back_to_frame_pixels() {
    let lb = Letterbox::new(1280, 720, 128);
    assert!((lb.scale - 0.1).abs() < 1e-6 && lb.pad_x == 0.0 && (lb.pad_y - 28.0).abs() < 1e-4);
    let p = lb.to_frame(Point { x: 0.5, y: 0.5 });
    assert!((p.x - 640.0).abs() < 1e-3 && (p.y - 360.0).abs() < 1e-3);
    let top = lb.to_frame(Point {
        x: 0.0,
        y: 28.0 / 128.0,
    });
    assert!(top.x.abs() < 1e-3 && top.y.abs() < 1e-3);
}

#[test]
fn alignment_of_the_template_itself_is_the_identity() {
    let t = Template::lsrf(128);
    let pts = t.points.map(|[x, y]| Point { x, y });
    let a = Alignment::estimate(&pts, &t).unwrap();
    for (r, row) in a.to_crop.iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            let want = if r == c { 1.0 } else { 0.0 };
            assert!((v - want).abs() < 1e-6, "{:?}", a.to_crop);
        }
    }
}

#[test]
fn alignment_recovers_a_known_similarity_exactly_and_inverts() {
    let t = Template::lsrf(128);
    // Face = template rotated by 20 degrees, scaled by 2.5 and moved.
    let (s, th) = (2.5f64, 20f64.to_radians());
    let m = [
        [s * th.cos(), -s * th.sin(), 300.0],
        [s * th.sin(), s * th.cos(), 120.0],
    ];
    let pts = t.points.map(|[x, y]| apply(&m, Point { x, y }));
    let a = Alignment::estimate(&pts, &t).unwrap();
    for (p, q) in pts.iter().zip(t.points) {
        let c = apply(&a.to_crop, *p);
        assert!(
            (c.x - q[0]).abs() < 1e-3 && (c.y - q[1]).abs() < 1e-3,
            "{c:?} vs {q:?}"
        );
    }
    let inv = invert(&a.to_crop).unwrap();
    for r in 0..2 {
        for c in 0..3 {
            assert!((inv[r][c] - m[r][c]).abs() < 1e-3, "{inv:?} vs {m:?}");
        }
    }
}

#[test]
fn mask_is_one_at_the_centre_zero_on_the_border_and_feathered_between() {
    let m = face_mask(128);
    assert_eq!(m[64 * 128 + 64], 1.0);
    for i in 0..128 {
        for v in [m[i], m[127 * 128 + i], m[i * 128], m[i * 128 + 127]] {
            assert_eq!(v, 0.0);
        }
    }
    let row: Vec<f32> = (0..128).map(|x| m[69 * 128 + x]).collect();
    assert!(row.iter().any(|&v| v > 0.05 && v < 0.95), "no feathering");
}

/// A frame with a gradient, and a fake "model output" that brightens the crop.
fn composite_case(intensity: f32) -> (RgbImage, RgbImage) {
    let mut img = RgbImage::new(200, 150);
    for (i, v) in img.data.iter_mut().enumerate() {
        *v = (i % 251) as u8;
    }
    let before = img.clone();
    let t = Template::lsrf(64);
    let pts = t.points.map(|[x, y]| Point {
        x: x + 60.0,
        y: y + 40.0,
    });
    let a = Alignment::estimate(&pts, &t).unwrap();
    let mut frame = img.as_frame();
    let crop = vec![0.5f32; 3 * 64 * 64];
    let out = vec![0.7f32; 3 * 64 * 64];
    Compositor::new(64)
        .unwrap()
        .apply(&mut frame, &crop, &out, &a, intensity)
        .unwrap();
    (before, img)
}

#[test]
fn intensity_zero_is_bit_identical() {
    let (before, after) = composite_case(0.0);
    assert_eq!(before, after);
}

#[test]
fn residual_changes_the_face_only() {
    let (before, after) = composite_case(1.0);
    // The crop (64x64 at offset 60,40) centre gains 0.2*255 = 51 (clamped at 255).
    let (x, y) = (92, 74);
    let b = before.pixel(x, y);
    let a = after.pixel(x, y);
    for c in 0..3 {
        assert_eq!(a[c] as i32, (b[c] as i32 + 51).min(255), "channel {c}");
    }
    // Outside the crop everything is untouched.
    for (x, y) in [(0, 0), (199, 149), (59, 74), (125, 74), (92, 39), (92, 105)] {
        assert_eq!(before.pixel(x, y), after.pixel(x, y), "({x},{y})");
    }
}

#[test]
fn compositing_respects_stride_and_layout() {
    // BGRx with 8 bytes of row padding: the residual lands in the right channels and
    // the padding bytes are never written.
    let (w, h, stride) = (100, 80, 100 * 4 + 8);
    let mut data = vec![7u8; stride * h];
    let t = Template::lsrf(32);
    let pts = t.points.map(|[x, y]| Point {
        x: x + 30.0,
        y: y + 20.0,
    });
    let a = Alignment::estimate(&pts, &t).unwrap();
    let mut frame = FrameMut::new(&mut data, w, h, stride, PixelLayout::Bgrx).unwrap();
    let crop = vec![0.0f32; 3 * 32 * 32];
    let mut out = vec![0.0f32; 3 * 32 * 32];
    out[..32 * 32].fill(0.4); // red plane only
    Compositor::new(32)
        .unwrap()
        .apply(&mut frame, &crop, &out, &a, 1.0)
        .unwrap();
    let px = |x: usize, y: usize| &data[y * stride + x * 4..y * stride + x * 4 + 4];
    let centre = px(46, 37);
    assert_eq!(centre[0], 7, "blue untouched");
    assert_eq!(centre[1], 7, "green untouched");
    assert_eq!(centre[2], 7 + 102, "red gained 0.4*255");
    assert_eq!(centre[3], 7, "x byte untouched");
    for y in 0..h {
        assert!(
            data[y * stride + w * 4..(y + 1) * stride]
                .iter()
                .all(|&v| v == 7),
            "padding of row {y}"
        );
    }
}

#[test]
fn frames_with_bad_geometry_are_rejected_with_reasons() {
    let mut data = vec![0u8; 100];
    let e = FrameMut::new(&mut data, 10, 10, 20, PixelLayout::Rgb)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("stride 20") && e.contains("30 bytes"), "{e}");
    let e = FrameMut::new(&mut data, 10, 10, 30, PixelLayout::Rgb)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("too small"), "{e}");
    let e = FrameMut::new(&mut data, 0, 10, 30, PixelLayout::Rgb)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("empty"), "{e}");
}
