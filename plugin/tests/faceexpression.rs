// SPDX-License-Identifier: MIT OR Apache-2.0
//! `faceexpression` through gst_check::Harness and small pipelines: every caps format,
//! odd strides, untouched frames, start-up errors and region-of-interest metas.
//!
//! Tests that need the shipped model (`reggan::default_model_dir()`, i.e. models/mr or
//! $REGGAN_MODEL) or the test photo print "SKIPPED: ..." and return when they are absent.

mod common;

use common::*;
use gst::prelude::*;
use gst_video::prelude::*;
use reggan::RgbImage;

/// Checks one processed astronaut frame: changed inside the face (and in its lower
/// half, where the mouth is), bit-identical far from it, padding and alpha untouched.
/// Returns the face ROI.
fn check_face_changed(
    before: &[u8],
    out: &gst::Buffer,
    info: &gst_video::VideoInfo,
) -> (u32, u32, u32, u32) {
    let what = format!("{:?} {}x{}", info.format(), info.width(), info.height());
    let after = bytes(out);
    let rois = face_rois(out);
    assert_eq!(rois.len(), 1, "{what}: expected one face ROI, got {rois:?}");
    let roi = rois[0];
    let d = diff(before, &after, info);
    assert_eq!(d.padding, 0, "{what}: row padding changed");
    assert_eq!(d.fourth, 0, "{what}: alpha/x bytes changed");

    let face = grow(roi, 0.0);
    let lower = (face.0, (roi.1 + roi.3 / 2) as usize, face.2, face.3);
    let in_face = d.pixels.iter().filter(|&&p| inside(p, face)).count();
    let in_lower = d.pixels.iter().filter(|&&p| inside(p, lower)).count();
    assert!(
        in_face >= 50 && in_lower >= 20,
        "{what}: too little change in the face {roi:?}: {in_face} pixels, {in_lower} in its lower half"
    );
    assert_none_far(&d.pixels, roi, &what);

    // Corners and a band across the bottom third are bit-identical (explicitly).
    let (w, h) = (info.width() as usize, info.height() as usize);
    for &(x, y) in &[(0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1)] {
        assert!(
            !d.pixels.contains(&(x, y)),
            "{what}: corner ({x},{y}) changed"
        );
    }
    assert!(
        !d.pixels.iter().any(|&(_, y)| y >= 2 * h / 3),
        "{what}: the bottom third changed"
    );
    roi
}

#[test]
fn every_format_changes_the_face_and_nothing_far_from_it() {
    let (Some(model), Some(img)) = (shipped_model(), astronaut()) else {
        return;
    };
    let reference = core_reference(&model, &img, "happy");
    for format in FORMATS {
        let (buffer, info) = to_buffer(&img, format);
        let mut h = harness(
            &[
                ("model", &model.to_str().unwrap()),
                ("expression", &gstreggan::Expression::Happy),
            ],
            &info,
        );
        let (before, out) = run_one(&mut h, buffer);
        let roi = check_face_changed(&before, &out, &info);
        // The same change as the core library makes on packed RGB (a byte of rounding
        // is allowed: BGR frames reach OpenCV's resampling in another channel order).
        let off = count_differences(&to_rgb(&out, &info), &reference, 1);
        eprintln!("{format:?}: face {roi:?}, {off} pixels off the core reference");
        assert_eq!(
            off, 0,
            "{format:?}: output differs from the core library's on {off} pixels"
        );
    }
}

#[test]
fn odd_width_and_height_rgb_keeps_padding() {
    let (Some(model), Some(img)) = (shipped_model(), astronaut()) else {
        return;
    };
    // 641x481: the photo's top 481 rows at x = 64 on a grey canvas. RGB rows of 641
    // pixels are 1923 bytes, padded by GStreamer to a stride of 1924.
    let (w, h) = (641, 481);
    let mut canvas = RgbImage::new(w, h);
    canvas.data.fill(128);
    for y in 0..h {
        let src = &img.data[y * img.width * 3..(y + 1) * img.width * 3];
        canvas.data[(y * w + 64) * 3..(y * w + 64 + img.width) * 3].copy_from_slice(src);
    }
    let reference = core_reference(&model, &canvas, "happy");
    for format in [gst_video::VideoFormat::Rgb, gst_video::VideoFormat::Bgr] {
        let (buffer, info) = to_buffer(&canvas, format);
        assert_eq!(info.stride()[0], 1924);
        assert_ne!(
            info.stride()[0] as usize,
            w * 3,
            "the test needs padded rows"
        );
        let mut hn = harness(&[("model", &model.to_str().unwrap())], &info);
        let (before, out) = run_one(&mut hn, buffer);
        let roi = check_face_changed(&before, &out, &info);
        assert!(
            roi.0 > 64 + 120 && roi.0 < 64 + 290,
            "face box {roi:?} not where the photo put it"
        );
        // Exactly what the core library makes of the same pixels packed (stride 3*641):
        // a wrong stride would skew the rows and detect or composite elsewhere.
        let off = count_differences(&to_rgb(&out, &info), &reference, 1);
        assert_eq!(
            off, 0,
            "{format:?}: {off} pixels differ from the core library's result"
        );
    }
}

/// What the core library makes of a 4:2:0 buffer: `Yuv420Bridge` around a still
/// picture's processing, on a copy.
fn core_yuv420_reference(
    model: &std::path::Path,
    buffer: &gst::Buffer,
    info: &gst_video::VideoInfo,
) -> Vec<u8> {
    let mut copy = buffer.copy_deep().unwrap();
    {
        let mut frame =
            gst_video::VideoFrameRef::from_buffer_ref_writable(copy.get_mut().unwrap(), info)
                .unwrap();
        let strides: Vec<usize> = frame.plane_stride().iter().map(|&s| s as usize).collect();
        let (w, h) = (info.width() as usize, info.height() as usize);
        let format = frame.format();
        let range = if info.colorimetry().range() == gst_video::VideoColorRange::Range0_255 {
            reggan::Yuv420Range::Full
        } else {
            reggan::Yuv420Range::Video
        };
        let [p0, p1, p2, _] = frame.planes_data_mut();
        let mut yuv = if format == gst_video::VideoFormat::I420 {
            reggan::Yuv420FrameMut::i420(
                [(p0, strides[0]), (p1, strides[1]), (p2, strides[2])],
                w,
                h,
            )
        } else {
            reggan::Yuv420FrameMut::nv12([(p0, strides[0]), (p1, strides[1])], w, h)
        }
        .unwrap()
        .with_range(range);
        let config = reggan::ProcessorConfig {
            expression: "happy".into(),
            ..Default::default()
        };
        let mut p = reggan::FrameProcessor::new(model, config).unwrap();
        let mut bridge = reggan::Yuv420Bridge::new();
        let report = p.process(&mut bridge.unpack(&yuv).unwrap()).unwrap();
        bridge.pack_changes(&mut yuv, &report.changed).unwrap();
    }
    bytes(&copy)
}

#[test]
fn i420_and_nv12_frames_are_edited_in_place_at_the_face_only() {
    let (Some(model), Some(img)) = (shipped_model(), astronaut()) else {
        return;
    };
    // Odd sides (the astronaut: 641x481): GStreamer pads the rows (Y 644, U and V 324
    // bytes for 641 pixels) and the chroma rounds up.
    let (w, h) = ((img.width + 128) | 1, (img.height * 15 / 16) | 1);
    let mut canvas = RgbImage::new(w, h);
    canvas.data.fill(128);
    for y in 0..h {
        let src = &img.data[y * img.width * 3..(y + 1) * img.width * 3];
        canvas.data[(y * w + 64) * 3..(y * w + 64 + img.width) * 3].copy_from_slice(src);
    }
    use gst_video::VideoFormat::{Nv12, I420};
    for (format, full_range) in [(I420, false), (Nv12, false), (I420, true)] {
        let (buffer, info) = to_yuv_buffer(&canvas, format, full_range);
        let expected = core_yuv420_reference(&model, &buffer, &info);
        let mut harness = harness(
            &[
                ("model", &model.to_str().unwrap()),
                ("expression", &gstreggan::Expression::Happy),
            ],
            &info,
        );
        let (before, out) = run_one(&mut harness, buffer);
        let after = bytes(&out);
        let rois = face_rois(&out);
        assert_eq!(
            rois.len(),
            1,
            "{format:?}: one face ROI expected, got {rois:?}"
        );
        assert!(
            after == expected,
            "{format:?}: differs from the core library's result"
        );

        // The luma changed inside the face, and nowhere more than half a face from it.
        let stride = info.stride()[0] as usize;
        let changed: Vec<(usize, usize)> = (0..h * stride)
            .filter(|&i| before[i] != after[i])
            .map(|i| (i % stride, i / stride))
            .collect();
        assert!(
            changed.len() > 500,
            "{format:?}: only {} luma bytes changed",
            changed.len()
        );
        assert_none_far(&changed, rois[0], &format!("{format:?} luma"));
        assert!(
            changed.iter().all(|&(x, _)| x < w),
            "{format:?}: row padding written"
        );
    }
}

#[test]
fn tiny_420_frames_pass_unchanged() {
    let Some(model) = shipped_model() else {
        return;
    };
    init();
    // One pixel wide or high has no whole chroma block; 2x2 and 3x5 do.
    for format in [gst_video::VideoFormat::I420, gst_video::VideoFormat::Nv12] {
        for (w, h) in [(1, 1), (1, 7), (2, 2), (3, 5)] {
            let info = gst_video::VideoInfo::builder(format, w, h).build().unwrap();
            let mut buffer = gst::Buffer::with_size(info.size()).unwrap();
            {
                let mut map = buffer.get_mut().unwrap().map_writable().unwrap();
                for (i, b) in map.iter_mut().enumerate() {
                    *b = (i * 37 % 256) as u8;
                }
            }
            let mut harness = harness(&[("model", &model.to_str().unwrap())], &info);
            let (before, out) = run_one(&mut harness, buffer);
            assert_eq!(before, bytes(&out), "{format:?} {w}x{h} changed");
        }
    }
}

#[test]
fn frames_without_a_face_pass_bit_identical() {
    let Some(model) = shipped_model() else {
        return;
    };
    let mut grey = RgbImage::new(320, 240);
    grey.data.fill(128);
    let mut noise = RgbImage::new(321, 241);
    let mut s = 0x1234_5678_u32;
    for v in noise.data.iter_mut() {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        *v = (s >> 24) as u8;
    }
    for img in [&grey, &noise] {
        for format in FORMATS {
            let (buffer, info) = to_buffer(img, format);
            let mut h = harness(&[("model", &model.to_str().unwrap())], &info);
            let (before, out) = run_one(&mut h, buffer);
            assert!(
                before == bytes(&out),
                "{format:?} {}x{}: a frame without a face changed",
                img.width,
                img.height
            );
            assert!(
                face_rois(&out).is_empty(),
                "{format:?}: ROI on a frame without a face"
            );
        }
    }
}

#[test]
fn intensity_zero_is_bit_identical_with_a_face() {
    let (Some(model), Some(img)) = (shipped_model(), astronaut()) else {
        return;
    };
    for format in [gst_video::VideoFormat::Rgb, gst_video::VideoFormat::Bgrx] {
        let (buffer, info) = to_buffer(&img, format);
        let mut h = harness(
            &[("model", &model.to_str().unwrap()), ("intensity", &0.0f64)],
            &info,
        );
        let (before, out) = run_one(&mut h, buffer);
        assert!(
            before == bytes(&out),
            "{format:?}: intensity 0 changed the frame"
        );
    }
}

#[test]
fn roi_meta_marks_the_astronaut_face() {
    let (Some(model), Some(img)) = (shipped_model(), astronaut()) else {
        return;
    };
    let (buffer, info) = to_buffer(&img, gst_video::VideoFormat::Rgb);
    let mut h = harness(&[("model", &model.to_str().unwrap())], &info);
    let (_, out) = run_one(&mut h, buffer);
    let metas: Vec<_> = out
        .iter_meta::<gst_video::VideoRegionOfInterestMeta>()
        .collect();
    assert_eq!(metas.len(), 1, "one ROI meta expected");
    let m = &metas[0];
    assert_eq!(m.roi_type(), "face");
    let (x, y, w, hh) = m.rect();
    // The face sits around x 170-230, y 70-140 in the 512x512 photo.
    assert!(
        (120..=200).contains(&x) && (30..=110).contains(&y),
        "{:?}",
        m.rect()
    );
    assert!(
        (40..=140).contains(&w) && (40..=160).contains(&hh),
        "{:?}",
        m.rect()
    );
    assert!(x + w <= 512 && y + hh <= 512);
    let p = m.param("detection").expect("detection param");
    let conf = p.get::<f64>("confidence").unwrap();
    assert!((0.5..=1.0).contains(&conf), "confidence {conf}");
    assert_eq!(p.get::<&str>("expression").unwrap(), "happy");
    // The astronaut looks at the camera: a small yaw, the whole edit.
    let yaw = p.get::<f64>("yaw").unwrap();
    assert!(yaw.abs() < 15.0, "yaw {yaw}");
    assert!(p.get::<f64>("pitch").is_ok() && p.get::<f64>("roll").is_ok());
    assert_eq!(p.get::<f64>("strength").unwrap(), 1.0);
    assert_eq!(p.get::<f64>("applied-intensity").unwrap(), 1.0);
}

/// With `max-yaw` under the astronaut's own small yaw the face is left alone (the fade
/// reached zero), the frame passes bit-identical, and the meta says so.
#[test]
fn a_face_turned_past_max_yaw_is_left_alone_and_the_meta_says_so() {
    let (Some(model), Some(img)) = (shipped_model(), astronaut()) else {
        return;
    };
    let (buffer, info) = to_buffer(&img, gst_video::VideoFormat::Rgb);
    let mut h = harness(
        &[("model", &model.to_str().unwrap()), ("max-yaw", &0.0f64)],
        &info,
    );
    let (before, out) = run_one(&mut h, buffer);
    assert!(before == bytes(&out), "a face past max-yaw was changed");
    let metas: Vec<_> = out
        .iter_meta::<gst_video::VideoRegionOfInterestMeta>()
        .collect();
    assert_eq!(metas.len(), 1);
    let p = metas[0].param("detection").unwrap();
    assert_eq!(p.get::<f64>("strength").unwrap(), 0.0);
    assert_eq!(p.get::<f64>("applied-intensity").unwrap(), 0.0);
}

/// The detail and colour options reach the compositor while playing: each setting gives
/// another frame, and `detail=off keep-colour=false` is the plain residual.
#[test]
fn detail_and_keep_colour_change_the_result_while_playing() {
    let (Some(model), Some(img)) = (shipped_model(), astronaut()) else {
        return;
    };
    let (buffer, info) = to_buffer(&img, gst_video::VideoFormat::Rgb);
    // A full search every frame, so each frame's face is found as the core finds it.
    let mut h = harness(
        &[
            ("model", &model.to_str().unwrap()),
            ("detect-interval", &1u32),
            // Each frame's own full search, as the still-picture path makes it.
            ("tracking", &false),
        ],
        &info,
    );
    let element = h.element().unwrap();
    let (_, default) = run_one(&mut h, buffer.copy());
    element.set_property_from_str("detail", "off");
    let (_, no_detail) = run_one(&mut h, buffer.copy());
    element.set_property("keep-colour", false);
    let (_, plain) = run_one(&mut h, buffer.copy());
    element.set_property_from_str("detail", "full");
    let (_, full) = run_one(&mut h, buffer.copy());
    let plain_rgb = to_rgb(&plain, &info);
    let [default, no_detail, plain, full] = [default, no_detail, plain, full].map(|b| bytes(&b));
    assert!(default != no_detail && no_detail != plain && plain != full);
    // The plain residual is what the core makes with both options off.
    let config = reggan::ProcessorConfig {
        detail: reggan::Detail::Off,
        keep_colour: false,
        ..Default::default()
    };
    let mut p = reggan::FrameProcessor::new(&model, config).unwrap();
    let mut reference = img.clone();
    p.process(&mut reference.as_frame()).unwrap();
    assert_eq!(count_differences(&plain_rgb, &reference, 0), 0);
}

#[test]
fn expression_and_intensity_change_while_playing() {
    let (Some(model), Some(img)) = (shipped_model(), astronaut()) else {
        return;
    };
    let (buffer, info) = to_buffer(&img, gst_video::VideoFormat::Rgb);
    // At once (the ramp over transition-ms is tested below).
    let mut h = harness(
        &[
            ("model", &model.to_str().unwrap()),
            ("transition-ms", &0u32),
        ],
        &info,
    );
    let element = h.element().unwrap();
    let provider = element.property::<String>("provider");
    assert!(!provider.is_empty(), "provider empty after start");
    let (before, happy) = run_one(&mut h, buffer.copy());
    element.set_property("expression", gstreggan::Expression::Sad);
    let (_, sad) = run_one(&mut h, buffer.copy());
    element.set_property("intensity", 0.0f64);
    let (_, zero) = run_one(&mut h, buffer.copy());
    let (happy, sad, zero) = (bytes(&happy), bytes(&sad), bytes(&zero));
    assert!(happy != before && sad != before, "no change");
    assert!(
        happy != sad,
        "switching expression while playing had no effect"
    );
    assert!(
        zero == before,
        "intensity 0 set while playing still changed the frame"
    );
    assert_eq!(
        element.property::<String>("provider"),
        provider,
        "switching reloaded the model"
    );
}

/// `buffer` stamped with a presentation time of `ms` milliseconds.
fn at_ms(buffer: &gst::Buffer, ms: u64) -> gst::Buffer {
    let mut b = buffer.copy();
    b.get_mut()
        .unwrap()
        .set_pts(gst::ClockTime::from_mseconds(ms));
    b
}

#[test]
fn intensity_change_ramps_over_transition_ms_of_stream_time() {
    let (Some(model), Some(img)) = (shipped_model(), astronaut()) else {
        return;
    };
    let (buffer, info) = to_buffer(&img, gst_video::VideoFormat::Rgb);
    let before = bytes(&buffer);
    let mut h = harness(
        &[
            ("model", &model.to_str().unwrap()),
            ("transition-ms", &200u32),
        ],
        &info,
    );
    let element = h.element().unwrap();
    // 40 ms frames; intensity 0 from frame 3 (120 ms): the ramp ends at 320 ms, frame 8.
    let mut change = Vec::new();
    let mut applied = Vec::new();
    for i in 0..11u64 {
        if i == 3 {
            element.set_property("intensity", 0.0f64);
        }
        let (_, out) = run_one(&mut h, at_ms(&buffer, 40 * i));
        let total: u64 = before
            .iter()
            .zip(bytes(&out))
            .map(|(a, b)| a.abs_diff(b) as u64)
            .sum();
        change.push(total);
        // The face meta reports the intensity the frame was really edited at.
        applied.push(
            out.iter_meta::<gst_video::VideoRegionOfInterestMeta>()
                .next()
                .and_then(|m| m.param("detection")?.get::<f64>("applied-intensity").ok()),
        );
    }
    eprintln!("total change by frame: {change:?}; applied intensity: {applied:?}");
    assert_eq!(applied[2], Some(1.0));
    let ramp: Vec<f64> = (4..8)
        .map(|i| applied[i].expect("a face meta mid-ramp"))
        .collect();
    assert!(
        ramp.windows(2).all(|w| w[1] < w[0]) && ramp[0] < 1.0 && ramp[3] > 0.0,
        "applied intensity does not follow the ramp: {applied:?}"
    );
    // Frame 3 is the ramp's start (weight 0): still the whole edit.
    assert!(change[2] > 1000);
    assert!(change[3].abs_diff(change[2]) * 50 < change[2], "{change:?}");
    assert!(
        (4..8).all(|i| change[i] > 0 && change[i] < change[i - 1]),
        "not a monotone ramp over the 200 ms: {change:?}"
    );
    assert!(
        change[8..].iter().all(|&c| c == 0),
        "not bit-identical after the ramp: {change:?}"
    );
}

#[test]
fn a_flushing_seek_and_new_caps_forget_tracked_faces() {
    let (Some(model), Some(img)) = (shipped_model(), astronaut()) else {
        return;
    };
    let (face, info) = to_buffer(&img, gst_video::VideoFormat::Rgb);
    let blank = RgbImage {
        data: vec![120; img.data.len()],
        ..img.clone()
    };
    let (empty, _) = to_buffer(&blank, gst_video::VideoFormat::Rgb);
    let mut h = harness(&[("model", &model.to_str().unwrap())], &info);
    for i in 0..3 {
        let (_, out) = run_one(&mut h, at_ms(&face, 40 * i));
        assert_eq!(face_rois(&out).len(), 1);
    }
    // Without a seek, a face that vanishes is held for a few frames (no pop)...
    let (_, held) = run_one(&mut h, at_ms(&empty, 120));
    assert_eq!(face_rois(&held).len(), 1, "a lost face was not held");
    // ...but after a flushing seek nothing from before applies.
    for i in 0..3 {
        run_one(&mut h, at_ms(&face, 160 + 40 * i));
    }
    assert!(h.push_event(gst::event::FlushStart::new()));
    assert!(h.push_event(gst::event::FlushStop::new(true)));
    assert!(
        h.push_event(gst::event::Segment::new(&gst::FormattedSegment::<
            gst::ClockTime,
        >::new()))
    );
    let (before, out) = run_one(&mut h, at_ms(&empty, 0));
    assert!(
        face_rois(&out).is_empty(),
        "stale face after a flushing seek"
    );
    assert_eq!(
        before,
        bytes(&out),
        "an empty frame was changed after the seek"
    );

    // A resolution change mid-stream: the face elsewhere in a larger frame is found and
    // changed there, and no face from the old size is kept.
    for i in 0..3 {
        run_one(&mut h, at_ms(&face, 40 + 40 * i));
    }
    let mut big = RgbImage::new(img.width + 160, img.height + 120);
    big.data.fill(120);
    for y in 0..img.height {
        let o = ((y + 120) * big.width + 160) * 3;
        big.data[o..o + img.width * 3]
            .copy_from_slice(&img.data[y * img.width * 3..(y + 1) * img.width * 3]);
    }
    let (big_face, big_info) = to_buffer(&big, gst_video::VideoFormat::Rgb);
    h.set_src_caps(big_info.to_caps().unwrap());
    let (before, out) = run_one(&mut h, at_ms(&big_face, 160));
    let rois = face_rois(&out);
    assert_eq!(rois.len(), 1, "faces after the caps change: {rois:?}");
    // The astronaut's face is around x 170-230, y 70-140 in the photo.
    assert!(rois[0].0 > 160 + 120 && rois[0].1 > 120 + 40, "{rois:?}");
    check_face_changed(&before, &out, &big_info);
}

#[test]
fn expression_nicks_are_the_names_models_use() {
    init();
    let class = gst::glib::EnumClass::with_type(gstreggan::Expression::static_type()).unwrap();
    let nicks: Vec<&str> = class.values().iter().map(|v| v.nick()).collect();
    assert_eq!(nicks, reggan::ALL_EXPRESSIONS);
    for (value, name) in class.values().iter().zip(reggan::ALL_EXPRESSIONS) {
        let e: gstreggan::Expression = class.to_value(value.value()).unwrap().get().unwrap();
        assert_eq!(e.name(), name);
    }
}

#[test]
fn properties_have_the_documented_defaults() {
    init();
    let e = gst::ElementFactory::make("faceexpression").build().unwrap();
    assert_eq!(
        e.property::<gstreggan::Expression>("expression"),
        gstreggan::Expression::Happy
    );
    assert_eq!(e.property::<f64>("intensity"), 1.0);
    assert_eq!(
        e.property::<gstreggan::Device>("device"),
        gstreggan::Device::Auto
    );
    assert_eq!(
        e.property::<gstreggan::Detector>("detector"),
        gstreggan::Detector::Auto
    );
    assert_eq!(e.property::<u32>("max-faces"), 4);
    assert_eq!(e.property::<u32>("min-face-size"), 32);
    assert_eq!(e.property::<String>("provider"), "");
    assert_eq!(e.property::<u32>("detect-interval"), 5);
    assert_eq!(e.property::<u32>("transition-ms"), 300);
    assert!(e.property::<bool>("tracking"));
    assert_eq!(
        e.property::<gstreggan::Detail>("detail"),
        gstreggan::Detail::Fine
    );
    assert!(e.property::<bool>("keep-colour"));
    assert_eq!(e.property::<f64>("max-yaw"), 35.0);
    e.set_property_from_str("detail", "full");
    assert_eq!(
        e.property::<gstreggan::Detail>("detail"),
        gstreggan::Detail::Full
    );
    let pspec = e.find_property("max-yaw").unwrap();
    let d = pspec.downcast_ref::<glib::ParamSpecDouble>().unwrap();
    assert_eq!((d.minimum(), d.maximum()), (0.0, 90.0));
    assert_eq!(
        std::path::PathBuf::from(e.property::<String>("model")),
        reggan::default_model_dir()
    );
    // gst-launch style string values for the enums.
    e.set_property_from_str("expression", "surprised");
    assert_eq!(
        e.property::<gstreggan::Expression>("expression"),
        gstreggan::Expression::Surprised
    );
    e.set_property_from_str("expression", "neutral");
    assert_eq!(
        e.property::<gstreggan::Expression>("expression"),
        gstreggan::Expression::Neutral
    );
    assert_eq!(gstreggan::Expression::Neutral.name(), "neutral");
    e.set_property_from_str("device", "cpu");
    assert_eq!(
        e.property::<gstreggan::Device>("device"),
        gstreggan::Device::Cpu
    );
    let pspec = e.find_property("intensity").unwrap();
    let d = pspec.downcast_ref::<glib::ParamSpecDouble>().unwrap();
    assert_eq!((d.minimum(), d.maximum()), (0.0, 2.0));
}

use gst::glib;

/// Starts `videotestsrc ! faceexpression ! fakesink` with the given model directory and
/// returns the error message from the bus (panics if it started).
fn start_error(model: &std::path::Path, expression: &str) -> String {
    init();
    let pipeline = gst::parse::launch(
        "videotestsrc num-buffers=1 ! video/x-raw,format=RGB,width=64,height=64 ! faceexpression name=f ! fakesink",
    )
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let f = pipeline.by_name("f").unwrap();
    f.set_property("model", model.to_str().unwrap());
    f.set_property_from_str("expression", expression);
    let res = pipeline.set_state(gst::State::Paused);
    let bus = pipeline.bus().unwrap();
    let msg = bus.timed_pop_filtered(gst::ClockTime::from_seconds(10), &[gst::MessageType::Error]);
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(
        res.is_err(),
        "the state change succeeded with model {}",
        model.display()
    );
    let Some(msg) = msg else {
        panic!("no error on the bus for {}", model.display())
    };
    let gst::MessageView::Error(err) = msg.view() else {
        unreachable!()
    };
    assert_eq!(
        msg.src().map(|s| s.name().to_string()).as_deref(),
        Some("f"),
        "error posted by the wrong element"
    );
    eprintln!("debug: {:?}", err.debug());
    err.error().to_string()
}

fn manifest(expressions: &[&str]) -> reggan::Manifest {
    reggan::Manifest {
        format_version: reggan::model::FORMAT_VERSION,
        family: "regression".into(),
        method: "test".into(),
        crop_size: 128,
        template: reggan::Template::lsrf(128),
        expressions: expressions.iter().map(|s| s.to_string()).collect(),
        normalization: "rgb01".into(),
        params: Default::default(),
        training: Default::default(),
        trainer_version: "test".into(),
        quality: Default::default(),
        outputs: Vec::new(),
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("faceexpression-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn missing_model_dir_fails_start_naming_the_path() {
    let dir = std::env::temp_dir().join("faceexpression-no-such-model-dir");
    let text = start_error(&dir, "happy");
    eprintln!("{text}");
    assert!(
        text.contains(dir.to_str().unwrap()),
        "error does not name {}: {text}",
        dir.display()
    );
}

#[test]
fn corrupt_model_onnx_fails_start_naming_the_path() {
    let dir = temp_dir("corrupt");
    manifest(&reggan::EXPRESSIONS).write(&dir).unwrap();
    std::fs::write(
        dir.join("model.onnx"),
        b"this is not an ONNX protobuf \x00\xff\x13\x37 at all",
    )
    .unwrap();
    let text = start_error(&dir, "happy");
    eprintln!("{text}");
    let onnx = dir.join("model.onnx");
    assert!(
        text.contains(onnx.to_str().unwrap()),
        "error does not name {}: {text}",
        onnx.display()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn corrupt_model_json_fails_start_naming_the_path() {
    let dir = temp_dir("badjson");
    std::fs::write(dir.join("model.json"), b"{ not json").unwrap();
    std::fs::write(dir.join("model.onnx"), b"").unwrap();
    let text = start_error(&dir, "happy");
    let json = dir.join("model.json");
    assert!(
        text.contains(json.to_str().unwrap()),
        "error does not name {}: {text}",
        json.display()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn expression_missing_from_the_model_fails_start() {
    let Some(model) = shipped_model() else {
        return;
    };
    let dir = temp_dir("oneexpr");
    let mut m = reggan::Manifest::read(&model).unwrap();
    m.expressions.truncate(1);
    m.write(&dir).unwrap();
    std::fs::copy(model.join("model.onnx"), dir.join("model.onnx")).unwrap();
    let missing = reggan::EXPRESSIONS
        .iter()
        .find(|e| **e != m.expressions[0])
        .unwrap();
    let text = start_error(&dir, missing);
    eprintln!("{text}");
    assert!(
        text.contains(&format!("'{missing}'")),
        "error does not name the expression: {text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn model_swapped_while_playing_is_loaded_or_fails_the_flow_cleanly() {
    let (Some(model), Some(img)) = (shipped_model(), astronaut()) else {
        return;
    };
    let (buffer, info) = to_buffer(&img, gst_video::VideoFormat::Rgb);
    let mut h = harness(&[("model", &model.to_str().unwrap())], &info);
    let element = h.element().unwrap();
    let (before, first) = run_one(&mut h, buffer.copy());
    // A copy of the same model in another directory: hot-swapped, same result.
    let dir = temp_dir("swap");
    for f in ["model.json", "model.onnx"] {
        std::fs::copy(model.join(f), dir.join(f)).unwrap();
    }
    element.set_property("model", dir.to_str().unwrap());
    let (_, second) = run_one(&mut h, buffer.copy());
    assert!(
        bytes(&first) != before && bytes(&first) == bytes(&second),
        "hot-swapped copy gave another result"
    );
    // A broken one: the frame fails with a flow error (and an element error), no panic.
    let missing = dir.join("nope");
    element.set_property("model", missing.to_str().unwrap());
    assert_eq!(h.push(buffer.copy()), Err(gst::FlowError::Error));
    std::fs::remove_dir_all(&dir).unwrap();
}
