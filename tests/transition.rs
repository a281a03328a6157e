//! Video transitions in `FrameProcessor`: a change of expression or intensity ramps over
//! the set stream time, monotonically, and lands exactly on the new result; new faces
//! fade in, lost faces hold and fade out.

mod common;

use std::time::Duration;

use reggan::{Device, FrameProcessor, ProcessorConfig, RgbImage, TrackingOptions};

fn processor(model: &std::path::Path, expression: &str) -> FrameProcessor {
    let config = ProcessorConfig {
        expression: expression.into(),
        device: Device::Cpu,
        transition: Duration::from_millis(300),
        ..Default::default()
    };
    FrameProcessor::new(model, config).unwrap()
}

/// With each frame's own full search (as the still path), so that video frames can be
/// compared with still results bit for bit.
fn untracked(model: &std::path::Path, expression: &str) -> FrameProcessor {
    let mut p = processor(model, expression);
    p.set_tracking(TrackingOptions::raw());
    p
}

/// Mean absolute difference over all channels.
fn distance(a: &RgbImage, b: &RgbImage) -> f64 {
    a.data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| x.abs_diff(*y) as f64)
        .sum::<f64>()
        / a.data.len() as f64
}

/// 25 ms frames: the 300 ms ramp started on frame 4 ends exactly on frame 16.
fn at(i: usize) -> Duration {
    Duration::from_millis(25 * i as u64)
}

/// Runs frames 0..20 of the still photo, calling `change` before frame 4.
fn run(
    p: &mut FrameProcessor,
    photo: &RgbImage,
    change: impl Fn(&mut FrameProcessor),
) -> Vec<RgbImage> {
    (0..20)
        .map(|i| {
            if i == 4 {
                change(p);
            }
            let mut frame = photo.clone();
            p.process_video(&mut frame.as_frame(), at(i)).unwrap();
            frame
        })
        .collect()
}

fn still(model: &std::path::Path, photo: &RgbImage, expression: &str) -> RgbImage {
    let mut out = photo.clone();
    processor(model, expression)
        .process(&mut out.as_frame())
        .unwrap();
    out
}

#[test]
fn intensity_ramps_down_monotonically_and_ends_bit_identical_at_the_set_time() {
    let Some((model, photo)) = common::shipped_model_and_photo() else {
        return;
    };
    let mut p = untracked(&model, "happy");
    let frames = run(&mut p, &photo, |p| p.set_intensity(0.0));
    let d: Vec<f64> = frames.iter().map(|f| distance(f, &photo)).collect();
    eprintln!("distance to the input by frame: {d:.3?}");
    assert!(d[0] > 0.05, "the face was not changed before the ramp");
    // Frame 4 is where the ramp starts (weight 0): still the whole edit.
    assert_eq!(d[4], d[3]);
    for i in 5..16 {
        assert!(
            d[i] < d[i - 1],
            "frame {i}: {} not below {}",
            d[i],
            d[i - 1]
        );
        assert!(
            d[i] > 0.0,
            "frame {i}: reached the input before the set time"
        );
    }
    for (i, frame) in frames.iter().enumerate().skip(16) {
        assert!(
            frame.data == photo.data,
            "frame {i}: not bit-identical at intensity 0"
        );
    }
    // Half way (frame 10 = 150 ms into 300) about half the change is left.
    let half = d[10] / d[3];
    assert!(
        (0.35..0.65).contains(&half),
        "half way: {half:.2} of the change left"
    );
}

#[test]
fn an_expression_change_cross_fades_and_lands_on_the_new_result() {
    let Some((model, photo)) = common::shipped_model_and_photo() else {
        return;
    };
    let (happy, sad) = (still(&model, &photo, "happy"), still(&model, &photo, "sad"));
    let mut p = untracked(&model, "happy");
    let frames = run(&mut p, &photo, |p| p.set_expression("sad").unwrap());
    let to_sad: Vec<f64> = frames.iter().map(|f| distance(f, &sad)).collect();
    let to_happy: Vec<f64> = frames.iter().map(|f| distance(f, &happy)).collect();
    eprintln!("distance to sad by frame: {to_sad:.3?}");
    assert!(
        to_happy[3] == 0.0,
        "settled video frames differ from the still result"
    );
    assert!(
        to_happy[4] < 0.01,
        "the ramp's first frame is not still happy"
    );
    for i in 5..16 {
        assert!(
            to_sad[i] < to_sad[i - 1],
            "frame {i}: not moving towards sad"
        );
        assert!(to_sad[i] > 0.0, "frame {i}: sad before the set time");
    }
    for (i, frame) in frames.iter().enumerate().skip(16) {
        assert!(frame.data == sad.data, "frame {i}: not the sad result");
    }
}

#[test]
fn a_transition_of_zero_is_immediate() {
    let Some((model, photo)) = common::shipped_model_and_photo() else {
        return;
    };
    let mut p = untracked(&model, "happy");
    p.set_transition(Duration::ZERO);
    let frames = run(&mut p, &photo, |p| p.set_intensity(0.0));
    assert!(frames[3].data != photo.data);
    assert!(frames[4].data == photo.data);
}

/// The photo on a grey canvas, or the canvas alone.
fn scene(photo: &RgbImage, with_face: bool) -> RgbImage {
    let (w, h) = (photo.width + 200, photo.height + 100);
    let mut out = RgbImage {
        width: w,
        height: h,
        data: vec![110; w * h * 3],
    };
    if with_face {
        for y in 0..photo.height {
            let o = ((y + 50) * w + 100) * 3;
            out.data[o..o + photo.width * 3]
                .copy_from_slice(&photo.data[y * photo.width * 3..(y + 1) * photo.width * 3]);
        }
    }
    out
}

#[test]
fn a_new_face_fades_in_and_a_lost_one_holds_then_fades_out_within_5_frames() {
    let Some((model, photo)) = common::shipped_model_and_photo() else {
        return;
    };
    let mut p = processor(&model, "happy");
    let mut strengths = Vec::new();
    // Frames 0-2 empty, 3-11 the face, 12-19 empty again.
    for i in 0..20 {
        let mut frame = scene(&photo, (3..12).contains(&i));
        let report = p.process_video(&mut frame.as_frame(), at(i)).unwrap();
        let s = report.edits.iter().map(|e| e.strength).fold(0.0, f32::max);
        strengths.push(s);
    }
    eprintln!("strength by frame: {strengths:.2?}");
    assert_eq!(&strengths[..3], &[0.0, 0.0, 0.0]);
    // Picked up at once, fading in over three frames, never jumping to full.
    assert!(strengths[3] > 0.0 && strengths[3] < 0.5);
    assert!(strengths[3] < strengths[4] && strengths[4] < strengths[5]);
    assert_eq!(strengths[5], 1.0);
    // Lost on frame 12: kept two frames at its last place, then fading, gone by frame 16.
    assert_eq!(&strengths[12..14], &[1.0, 1.0]);
    assert!(strengths[14] < 1.0 && strengths[15] < strengths[14]);
    assert!(strengths[16..].iter().all(|&s| s == 0.0));
}

#[test]
fn faces_in_a_streams_first_frame_get_the_whole_edit_at_once() {
    let Some((model, photo)) = common::shipped_model_and_photo() else {
        return;
    };
    let mut p = processor(&model, "happy");
    let mut first = photo.clone();
    let report = p.process_video(&mut first.as_frame(), at(0)).unwrap();
    assert_eq!(report.edits[0].strength, 1.0);
    assert!(first.data == still(&model, &photo, "happy").data);
}
