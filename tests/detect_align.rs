//! Detection and alignment on a real photo (the public-domain NASA astronaut portrait
//! that scripts/setup.sh extracts from the scikit-image wheel).

use std::path::PathBuf;

use reggan::align::{apply, Alignment, Template};
use reggan::detect::Point;
use reggan::{DetectorKind, FaceDetector, RgbImage};

fn astronaut() -> Option<RgbImage> {
    let path = std::env::var_os("REGGAN_TEST_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".deps/astronaut.png"));
    if !path.is_file() {
        eprintln!(
            "skipping: {} missing (run scripts/setup.sh)",
            path.display()
        );
        return None;
    }
    Some(RgbImage::load(&path).expect("astronaut.png loads"))
}

#[test]
fn blazeface_finds_the_astronaut_with_plausible_eyes() {
    let Some(mut img) = astronaut() else { return };
    let mut det = FaceDetector::new(DetectorKind::Auto).unwrap();
    let frame = img.as_frame();
    let faces = det.detect(&frame, 20.0).unwrap();
    assert_eq!(faces.len(), 1, "{faces:?}");
    let f = &faces[0];
    eprintln!("{f:?}");
    // The face sits around x 170-230, y 70-140 in the 512x512 photo.
    let [le, re, nose, mouth] = f.alignment_points();
    assert!(
        f.bbox.x > 120.0 && f.bbox.x + f.bbox.w < 290.0,
        "{:?}",
        f.bbox
    );
    assert!(
        le.y < nose.y && re.y < nose.y && nose.y < mouth.y,
        "eyes above nose above mouth"
    );
    let eye_dist = ((re.x - le.x).powi(2) + (re.y - le.y).powi(2)).sqrt();
    assert!(
        (20.0..80.0).contains(&eye_dist),
        "inter-ocular distance {eye_dist}"
    );
}

#[test]
fn aligned_crop_puts_the_eyes_on_the_template() {
    let Some(mut img) = astronaut() else { return };
    let mut det = FaceDetector::new(DetectorKind::Auto).unwrap();
    let frame = img.as_frame();
    let face = det.detect(&frame, 20.0).unwrap().remove(0);
    let t = Template::lsrf(128);
    let a = Alignment::for_face(&face, &t).unwrap();
    let crop = a.crop_rgb(&frame).unwrap();
    crop.save(&std::env::temp_dir().join("reggan_astronaut_crop.png"))
        .unwrap();
    for (p, q) in face.alignment_points().iter().zip(t.points) {
        let m = apply(&a.to_crop, *p);
        // A similarity cannot fit four points exactly; a few pixels is a good fit.
        assert!(
            (m.x - q[0]).abs() < 8.0 && (m.y - q[1]).abs() < 8.0,
            "{m:?} vs {q:?}"
        );
        let back = apply(&a.to_frame, m);
        assert!((back.x - p.x).abs() < 1e-3 && (back.y - p.y).abs() < 1e-3);
    }
    let _ = Point::default();
}

/// The astronaut shifted right/down by (dx, dy) inside a larger grey frame.
fn shifted(img: &RgbImage, w: usize, h: usize, dx: usize, dy: usize) -> RgbImage {
    let mut out = RgbImage {
        width: w,
        height: h,
        data: vec![90; w * h * 3],
    };
    for y in 0..img.height.min(h - dy) {
        let src = &img.data[y * img.width * 3..(y + 1) * img.width * 3];
        let o = ((y + dy) * w + dx) * 3;
        let n = (img.width.min(w - dx)) * 3;
        out.data[o..o + n].copy_from_slice(&src[..n]);
    }
    out
}

#[test]
fn a_face_is_found_again_near_its_last_position_after_it_moves() {
    let Some(img) = astronaut() else { return };
    let mut det = FaceDetector::new(DetectorKind::Auto).unwrap();
    let mut a = shifted(&img, 1280, 720, 100, 50);
    let first = det.detect(&a.as_frame(), 20.0).unwrap().remove(0);
    let mut b = shifted(&img, 1280, 720, 112, 58);
    let again = det
        .detect_near(&b.as_frame(), &first)
        .unwrap()
        .expect("found near the last position");
    // Compare the eyes, nose and mouth (the box conventions of the two BlazeFace models
    // differ a little; the keypoints are what alignment uses).
    let centre = |f: &reggan::Face| {
        let p = f.alignment_points();
        (
            p.iter().map(|q| q.x).sum::<f32>() / 4.0,
            p.iter().map(|q| q.y).sum::<f32>() / 4.0,
        )
    };
    let same = det
        .detect_near(&a.as_frame(), &first)
        .unwrap()
        .expect("found where it was");
    let ((x0, y0), (x1, y1)) = (centre(&same), centre(&again));
    let (fx, fy) = centre(&first);
    assert!(
        (x0 - fx).abs() < 5.0 && (y0 - fy).abs() < 5.0,
        "near search disagrees with the full search"
    );
    let (dx, dy) = (x1 - x0, y1 - y0);
    assert!(
        (dx - 12.0).abs() < 3.0 && (dy - 8.0).abs() < 3.0,
        "moved by ({dx}, {dy}), expected (12, 8)"
    );
    // Nothing there any more: no face, rather than a stale one.
    let mut empty = RgbImage {
        width: 1280,
        height: 720,
        data: vec![90; 1280 * 720 * 3],
    };
    assert!(det
        .detect_near(&empty.as_frame(), &first)
        .unwrap()
        .is_none());
}

/// Up to `n` photos of the London face set (`../shared/data/london`), if it is there.
fn london_photos(n: usize) -> Vec<RgbImage> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/london/neutral");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("London set {} absent: astronaut only", dir.display());
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jpg" || e == "png"))
        .collect();
    paths.sort();
    paths
        .iter()
        .take(n)
        .filter_map(|p| RgbImage::load(p).ok())
        .collect()
}

#[test]
fn onnx_runtime_and_opencv_dnn_give_the_same_faces_within_half_a_pixel() {
    let Some(astronaut) = astronaut() else { return };
    let mut photos = vec![astronaut];
    photos.extend(london_photos(6));
    let ort = reggan::DetectorBackend::OnnxRuntime {
        device: reggan::Device::Cpu,
        threads: 1,
    };
    for kind in [
        DetectorKind::Auto,
        DetectorKind::BlazeFaceFront,
        DetectorKind::BlazeFaceBack,
    ] {
        let mut dnn = FaceDetector::new(kind).unwrap();
        let mut rt = FaceDetector::with_backend(kind, ort).unwrap();
        for (i, photo) in photos.iter().enumerate() {
            let mut img = photo.clone();
            let frame = img.as_frame();
            let (a, b) = (
                dnn.detect(&frame, 20.0).unwrap(),
                rt.detect(&frame, 20.0).unwrap(),
            );
            assert_eq!(a.len(), b.len(), "{kind:?} photo {i}: {a:?} vs {b:?}");
            if i == 0 && kind != DetectorKind::BlazeFaceFront {
                assert_eq!(a.len(), 1, "{kind:?}: the astronaut not found");
            }
            for (fa, fb) in a.iter().zip(&b) {
                let box_points = |f: &reggan::Face| {
                    [
                        Point {
                            x: f.bbox.x,
                            y: f.bbox.y,
                        },
                        Point {
                            x: f.bbox.x + f.bbox.w,
                            y: f.bbox.y + f.bbox.h,
                        },
                    ]
                };
                let pa = fa
                    .keypoints
                    .iter()
                    .chain(box_points(fa).iter())
                    .copied()
                    .collect::<Vec<_>>();
                let pb = fb
                    .keypoints
                    .iter()
                    .chain(box_points(fb).iter())
                    .copied()
                    .collect::<Vec<_>>();
                for (k, (p, q)) in pa.iter().zip(&pb).enumerate() {
                    let d = (p.x - q.x).hypot(p.y - q.y);
                    assert!(d < 0.5, "{kind:?} photo {i} point {k}: {d:.3} px apart");
                }
                assert!((fa.score - fb.score).abs() < 1e-3);
            }
        }
    }
}
