//! The shipped model on real faces through the whole core path.

mod common;

use std::path::{Path, PathBuf};

use reggan::align::apply;
use reggan::detect::Point;
use reggan::{Device, Error, ExpressionModel, FrameProcessor, ProcessorConfig, RgbImage};

fn processor(model: &Path, expression: &str) -> FrameProcessor {
    let config = ProcessorConfig {
        expression: expression.into(),
        device: Device::Cpu,
        ..Default::default()
    };
    FrameProcessor::new(model, config).unwrap()
}

/// Mean absolute change over a square around `p`.
fn change_around(a: &RgbImage, b: &RgbImage, p: Point, r: i32) -> f64 {
    let (mut sum, mut n) = (0.0, 0);
    for y in (p.y as i32 - r)..(p.y as i32 + r) {
        for x in (p.x as i32 - r)..(p.x as i32 + r) {
            let (pa, pb) = (
                a.pixel(x as usize, y as usize),
                b.pixel(x as usize, y as usize),
            );
            sum += (0..3)
                .map(|c| (pa[c] as f64 - pb[c] as f64).abs())
                .sum::<f64>();
            n += 3;
        }
    }
    sum / n as f64
}

#[test]
fn every_expression_changes_the_mouth_and_nothing_outside_the_face() {
    let Some((model, original)) = common::shipped_model_and_photo() else {
        return;
    };
    let mut p = processor(&model, "happy");
    let expressions = p.model().manifest().expressions.clone();
    assert_eq!(expressions.len(), 6, "{expressions:?}");
    for name in &expressions {
        p.set_expression(name).unwrap();
        let mut img = original.clone();
        let report = p.process(&mut img.as_frame()).unwrap();
        assert_eq!(report.faces.len(), 1, "{name}");
        let face = &report.faces[0];
        let mouth = face.alignment_points()[3];
        let d = change_around(&original, &img, mouth, 8);
        assert!(d > 2.0, "{name}: mean change at the mouth only {d:.2}");
        // Outside a generous face box nothing moves.
        let b = face.bbox;
        let (x0, y0) = (
            (b.x - 0.6 * b.w).max(0.0) as usize,
            (b.y - 0.6 * b.h).max(0.0) as usize,
        );
        let (x1, y1) = ((b.x + 1.6 * b.w) as usize, (b.y + 1.6 * b.h) as usize);
        for y in 0..img.height {
            for x in 0..img.width {
                if x < x0 || x > x1 || y < y0 || y > y1 {
                    assert_eq!(
                        original.pixel(x, y),
                        img.pixel(x, y),
                        "{name}: pixel ({x},{y}) outside the face changed"
                    );
                }
            }
        }
    }
}

#[test]
fn different_expressions_give_different_faces_and_intensity_scales_the_change() {
    let Some((model, original)) = common::shipped_model_and_photo() else {
        return;
    };
    let mut p = processor(&model, "happy");
    let run = |p: &mut FrameProcessor| {
        let mut img = original.clone();
        let r = p.process(&mut img.as_frame()).unwrap();
        (img, r.faces[0].alignment_points()[3])
    };
    let (happy, mouth) = run(&mut p);
    p.set_expression("surprised").unwrap();
    let (surprised, _) = run(&mut p);
    assert!(
        change_around(&happy, &surprised, mouth, 10) > 1.5,
        "happy and surprised look alike"
    );
    p.set_expression("happy").unwrap();
    p.set_intensity(0.5);
    let (half, _) = run(&mut p);
    let full_change = change_around(&original, &happy, mouth, 10);
    let half_change = change_around(&original, &half, mouth, 10);
    assert!(
        half_change < 0.75 * full_change && half_change > 0.25 * full_change,
        "half {half_change:.2} vs full {full_change:.2}"
    );
}

#[test]
fn tfeid_faces_change_towards_their_own_expression() {
    // A real expression photo of a validation-style subject should be closer to the
    // model's output for that expression than the neutral input is.
    let Some((model, _)) = common::shipped_model_and_photo() else {
        return;
    };
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/tfeid/images");
    let (neutral, happy) = (data.join("0101a02.jpg"), data.join("0111b01.jpg"));
    if !neutral.is_file() || !happy.is_file() {
        eprintln!("skipping: TFEID not found at {}", data.display());
        return;
    }
    let mut p = processor(&model, "happy");
    let mut neutral_img = RgbImage::load(&neutral).unwrap();
    let mut happy_img = RgbImage::load(&happy).unwrap();
    let faces_n = p.detect(&neutral_img.as_frame()).unwrap();
    let faces_h = p.detect(&happy_img.as_frame()).unwrap();
    assert!(!faces_n.is_empty() && !faces_h.is_empty());
    let template = p.model().manifest().template.clone();
    let crop = |img: &mut RgbImage, f: &reggan::Face| {
        reggan::Alignment::for_face(f, &template)
            .unwrap()
            .crop_rgb(&img.as_frame())
            .unwrap()
    };
    let neutral_crop = crop(&mut neutral_img, &faces_n[0]);
    let happy_crop = crop(&mut happy_img, &faces_h[0]);
    // Run the model on the aligned crop directly.
    let mut m = ExpressionModel::load(&model, Device::Cpu, 1).unwrap();
    let s = m.crop_size();
    let mut x = ndarray::Array4::<f32>::zeros((1, 3, s, s));
    for (i, px) in neutral_crop.data.chunks_exact(3).enumerate() {
        for c in 0..3 {
            x[[0, c, i / s, i % s]] = px[c] as f32 / 255.0;
        }
    }
    let out = m
        .run(
            x.view(),
            &[m.manifest().expression_index("happy").unwrap() as i64],
        )
        .unwrap();
    let mut err_in = 0.0;
    let mut err_out = 0.0;
    let mask = reggan::composite::face_mask(s);
    for (i, px) in happy_crop.data.chunks_exact(3).enumerate() {
        for c in 0..3 {
            let t = px[c] as f32 / 255.0;
            err_in += mask[i] * (x[[0, c, i / s, i % s]] - t).powi(2);
            err_out += mask[i] * (out[[0, c, i / s, i % s]] - t).powi(2);
        }
    }
    assert!(err_out < err_in, "model output ({err_out:.1}) is not closer to the real happy face than the input ({err_in:.1})");
    let _ = apply;
}

#[test]
fn a_missing_or_corrupt_model_is_a_clear_error() {
    let missing = std::env::temp_dir().join("reggan-no-such-model");
    let e = ExpressionModel::load(&missing, Device::Cpu, 1).unwrap_err();
    assert!(
        matches!(e, Error::Model { .. }) && e.to_string().contains("reggan-no-such-model"),
        "{e}"
    );

    let Some((model, _)) = common::shipped_model_and_photo() else {
        return;
    };
    let dir = tempdir("corrupt");
    std::fs::copy(model.join("model.json"), dir.join("model.json")).unwrap();
    std::fs::write(dir.join("model.onnx"), b"this is not an onnx graph").unwrap();
    let e = ExpressionModel::load(&dir, Device::Cpu, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("model.onnx") && e.contains("cannot load"), "{e}");

    std::fs::copy(model.join("model.onnx"), dir.join("model.onnx")).unwrap();
    std::fs::write(dir.join("model.json"), b"{\"format_version\": 1}").unwrap();
    let e = ExpressionModel::load(&dir, Device::Cpu, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("model.json") && e.contains("not a valid"), "{e}");
}

#[test]
fn an_unknown_expression_names_the_available_ones() {
    let Some((model, _)) = common::shipped_model_and_photo() else {
        return;
    };
    let mut p = processor(&model, "happy");
    let e = p.set_expression("bored").unwrap_err().to_string();
    assert!(
        e.contains("bored") && e.contains("happy") && e.contains("surprised"),
        "{e}"
    );
}

#[test]
fn an_unusable_explicit_device_is_an_error_not_a_silent_fallback() {
    let Some((model, _)) = common::shipped_model_and_photo() else {
        return;
    };
    if std::path::Path::new("/dev/nvidia0").exists() {
        eprintln!("skipping: a GPU is present, CUDA may well work");
        return;
    }
    let e = ExpressionModel::load(&model, Device::Cuda, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("CUDA"), "{e}");
    let auto = ExpressionModel::load(&model, Device::Auto, 1).unwrap();
    assert_eq!(auto.provider(), "CPU");
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("reggan-test-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The astronaut pasted at (dx, dy) into a 960x640 grey frame (or no face at all).
fn scene(img: &RgbImage, dx: usize, dy: usize, with_face: bool) -> RgbImage {
    let (w, h) = (960, 640);
    let mut out = RgbImage {
        width: w,
        height: h,
        data: vec![100; w * h * 3],
    };
    if with_face {
        for y in 0..img.height {
            let o = ((y + dy) * w + dx) * 3;
            out.data[o..o + img.width * 3]
                .copy_from_slice(&img.data[y * img.width * 3..(y + 1) * img.width * 3]);
        }
    }
    out
}

#[test]
fn with_a_detect_interval_faces_are_followed_between_full_searches() {
    let Some((model, original)) = common::shipped_model_and_photo() else {
        return;
    };
    let mut p = processor(&model, "happy");
    p.set_detect_interval(3);
    let at = |i: usize| std::time::Duration::from_millis(40 * i as u64);
    let mut previous_x: Option<f32> = None;
    for i in 0..7 {
        // The face moves 6 px right and 3 px down per frame.
        let mut frame = scene(&original, 100 + 6 * i, 40 + 3 * i, true);
        let report = p.process_video(&mut frame.as_frame(), at(i)).unwrap();
        assert_eq!(report.faces.len(), 1, "frame {i}");
        let x: f32 = report.faces[0].alignment_points()[2].x;
        if let Some(px) = previous_x {
            let moved = x - px;
            assert!(
                (moved - 6.0).abs() < 3.0,
                "frame {i}: nose moved {moved:.1} px, the face 6"
            );
        }
        previous_x = Some(x);
    }
    // A face that appears between full searches is picked up at the next one.
    p.reset_tracking();
    let mut empty = scene(&original, 0, 0, false);
    assert!(p
        .process_video(&mut empty.as_frame(), at(0))
        .unwrap()
        .faces
        .is_empty());
    let found: Vec<usize> = (1..4)
        .map(|i| {
            let mut frame = scene(&original, 200, 60, true);
            p.process_video(&mut frame.as_frame(), at(i))
                .unwrap()
                .faces
                .len()
        })
        .collect();
    assert_eq!(
        found,
        vec![0, 0, 1],
        "searched on frames 1 and 2 only around known faces, fully on frame 3"
    );
}

#[test]
fn a_still_picture_is_searched_whole_only_now_and_then_and_a_change_brings_the_search_back() {
    let Some((model, original)) = common::shipped_model_and_photo() else {
        return;
    };
    let mut p = processor(&model, "happy");
    let interval = reggan::processor::DEFAULT_DETECT_INTERVAL as usize;
    p.set_detect_interval(interval as u32);
    let at = |i: usize| std::time::Duration::from_millis(40 * i as u64);
    let still = scene(&original, 100, 40, true);
    // Something moving at the frame's right edge, far from the face, from frame 40 on.
    let frame_at = |i: usize| {
        let mut frame = still.clone();
        if i >= 40 {
            for y in (i * 8) % 400..(i * 8) % 400 + 48 {
                let o = (y * frame.width + 900) * 3;
                frame.data[o..o + 48 * 3].fill(255);
            }
        }
        frame
    };
    let (mut searched, mut looked) = (Vec::new(), Vec::new());
    for i in 0..60 {
        let report = p.process_video(&mut frame_at(i).as_frame(), at(i)).unwrap();
        assert_eq!(report.faces.len(), 1, "frame {i}");
        if report.whole_frame_search.is_some() {
            searched.push(i);
        }
        assert!(report.faces_looked_for <= 1, "frame {i}: one face");
        if report.faces_looked_for == 1 {
            looked.push(i);
        }
    }
    eprintln!("whole-frame searches on frames {searched:?}, looks near the face on {looked:?}");
    // The followed face itself is looked for around where it is every
    // `search_interval` frames, optical flow alone carrying it in between.
    let every = reggan::TrackingOptions::default().search_interval as usize;
    assert!(
        looked.windows(2).all(|w| w[1] - w[0] == every),
        "looks every {every} frames: {looked:?}"
    );
    assert!(looked.len() >= 60 / every - 1, "{looked:?}");
    // The first frame; then nothing changed away from the face, so the front and the
    // back model look again only after six intervals.
    let wait = reggan::scene::STILL_SCENE_INTERVALS as usize * interval;
    let first_moving = searched
        .iter()
        .position(|&i| i >= 40)
        .expect("a search after the motion");
    assert_eq!(&searched[..first_moving], [0, wait, wait + interval / 2]);
    // Once something moves, every due pass runs again: the front model every interval
    // and the back model half an interval after it.
    let moving = &searched[first_moving..];
    assert!(moving[0] < 40 + interval, "{searched:?}");
    assert!(
        moving.windows(2).all(|w| w[1] - w[0] <= interval),
        "{searched:?}"
    );
}

/// The astronaut's face region (about 160 px around the face) scaled to `side` pixels.
fn face_tile(original: &RgbImage, side: usize) -> RgbImage {
    let (x0, y0, src) = (150.0, 50.0, 170.0);
    let mut img = RgbImage::new(side, side);
    for y in 0..side {
        for x in 0..side {
            let sx = (x0 + x as f32 * src / side as f32) as usize;
            let sy = (y0 + y as f32 * src / side as f32) as usize;
            let i = (y * side + x) * 3;
            img.data[i..i + 3].copy_from_slice(&original.pixel(sx, sy));
        }
    }
    img
}

fn paste(dst: &mut RgbImage, src: &RgbImage, x0: usize, y0: usize) {
    for y in 0..src.height {
        let o = ((y0 + y) * dst.width + x0) * 3;
        dst.data[o..o + src.width * 3]
            .copy_from_slice(&src.data[y * src.width * 3..(y + 1) * src.width * 3]);
    }
}

#[test]
fn twenty_faces_are_limited_to_max_faces() {
    let Some((model, original)) = common::shipped_model_and_photo() else {
        return;
    };
    // 5 x 4 faces of about 140 px in a 1280x1024 frame.
    let tile = face_tile(&original, 256);
    let (w, h) = (1280, 1024);
    let mut frame = RgbImage {
        width: w,
        height: h,
        data: vec![0; w * h * 3],
    };
    for t in 0..20 {
        paste(&mut frame, &tile, (t % 5) * 256, (t / 5) * 256);
    }
    let before = frame.clone();
    let mut p = processor(&model, "happy");
    p.set_max_faces(3);
    let report = p.process(&mut frame.as_frame()).unwrap();
    assert!(
        report.detected >= 15,
        "only {} of 20 faces detected",
        report.detected
    );
    assert_eq!(report.faces.len(), 3);
    let changed_tiles = (0..20)
        .filter(|t| {
            let (tx, ty) = (t % 5, t / 5);
            (0..256).any(|y| {
                let o = ((ty * 256 + y) * w + tx * 256) * 3;
                frame.data[o..o + 256 * 3] != before.data[o..o + 256 * 3]
            })
        })
        .count();
    assert_eq!(
        changed_tiles, 3,
        "max-faces 3 must change exactly three faces"
    );
}

#[test]
fn tiny_and_huge_frames_are_processed_without_error() {
    let Some((model, original)) = common::shipped_model_and_photo() else {
        return;
    };
    let mut p = processor(&model, "happy");
    for (w, h) in [(1, 1), (2, 3), (17, 9), (64, 48)] {
        let mut img = RgbImage::new(w, h);
        let before = img.clone();
        let report = p.process(&mut img.as_frame()).unwrap();
        assert!(report.faces.is_empty(), "{w}x{h}");
        assert_eq!(img, before, "{w}x{h} changed without a face");
    }
    // 4K UHD with a 600 px face in a corner: found and changed, the rest untouched.
    let (w, h) = (3840, 2160);
    let mut big = RgbImage {
        width: w,
        height: h,
        data: vec![50; w * h * 3],
    };
    paste(&mut big, &face_tile(&original, 1000), 0, 0);
    let before = big.clone();
    let report = p.process(&mut big.as_frame()).unwrap();
    assert_eq!(report.faces.len(), 1);
    assert_ne!(big, before);
    assert!(
        big.data[(1100 * w) * 3..].iter().all(|&v| v == 50),
        "pixels far from the face changed"
    );
}

#[test]
fn a_degenerate_face_is_skipped_without_failing_the_frame() {
    let Some((model, original)) = common::shipped_model_and_photo() else {
        return;
    };
    let mut p = processor(&model, "happy");
    let mut img = original.clone();
    let real = p.detect(&img.as_frame()).unwrap().remove(0);
    // A detector glitch: every keypoint on one spot, so no similarity transform exists.
    let mut glitch = real.clone();
    glitch.bbox.w *= 1.5;
    glitch.keypoints = [reggan::detect::Point { x: 10.0, y: 10.0 }; 6];
    let report = p
        .process_faces(&mut img.as_frame(), vec![glitch, real])
        .unwrap();
    assert_eq!(report.faces.len(), 1, "the real face is still processed");
    assert_ne!(img, original);
}

/// The astronaut at the left of a 1100x640 grey frame, and a second copy at the right
/// when `second`.
fn two_people(img: &RgbImage, second: bool) -> RgbImage {
    let (w, h) = (1100, 640);
    let mut out = RgbImage {
        width: w,
        height: h,
        data: vec![100; w * h * 3],
    };
    let xs: &[usize] = if second { &[0, 560] } else { &[0] };
    for &dx in xs {
        for y in 0..img.height.min(h - 60) {
            let o = ((y + 60) * w + dx) * 3;
            out.data[o..o + img.width * 3]
                .copy_from_slice(&img.data[y * img.width * 3..(y + 1) * img.width * 3]);
        }
    }
    out
}

#[test]
fn a_face_that_comes_is_picked_up_and_one_that_leaves_is_gone_within_5_frames() {
    let Some((model, original)) = common::shipped_model_and_photo() else {
        return;
    };
    let mut p = processor(&model, "happy");
    p.set_detect_interval(reggan::processor::DEFAULT_DETECT_INTERVAL);
    let at = |i: usize| std::time::Duration::from_millis(40 * i as u64);
    // One person for 13 frames (so the tracker is confident and full searches are
    // routine), then a second for 20, then the first alone again.
    let counts: Vec<usize> = (0..50)
        .map(|i| {
            let mut frame = two_people(&original, (13..33).contains(&i));
            p.process_video(&mut frame.as_frame(), at(i))
                .unwrap()
                .faces
                .len()
        })
        .collect();
    eprintln!("faces per frame: {counts:?}");
    assert!(counts[..13].iter().all(|&n| n == 1), "{counts:?}");
    let came = counts[13..]
        .iter()
        .position(|&n| n == 2)
        .expect("picked up");
    assert!(
        came < 5,
        "picked up {came} frames after it came: {counts:?}"
    );
    let gone = counts[33..].iter().position(|&n| n == 1).expect("gone");
    assert!(gone <= 5, "gone {gone} frames after it left: {counts:?}");
}

#[test]
fn a_batch_gives_each_face_its_own_result_as_a_run_alone_does() {
    let Some((model, _)) = common::shipped_model_and_photo() else {
        return;
    };
    use ndarray::s;
    let mut m = ExpressionModel::load(&model, Device::Cpu, 1).unwrap();
    let size = m.crop_size();
    let batch = ndarray::Array4::from_shape_fn((3, 3, size, size), |(n, c, y, x)| {
        ((n * 7 + c * 3 + x * y) % 17) as f32 / 17.0
    });
    let codes = [0i64, 3, 5];
    let out = m.run(batch.view(), &codes).unwrap();
    assert_eq!(out.shape(), &[3, 3, size, size]);
    for i in 0..3 {
        let alone = m
            .run(batch.slice(s![i..i + 1, .., .., ..]), &codes[i..i + 1])
            .unwrap();
        assert_eq!(out.slice(s![i..i + 1, .., .., ..]), alone, "face {i}");
    }
    // Each face got its own expression: face 0 as expression 3 is another picture.
    let other = m.run(batch.slice(s![0..1, .., .., ..]), &[3]).unwrap();
    assert_ne!(out.slice(s![0..1, .., .., ..]), other);
}
