//! Face tracking: the One Euro filter against the paper's formulas, and a face moving on
//! a known path followed through the processor's video path.

mod common;

use std::time::Duration;

use opencv::core::{Mat, Scalar, Size, CV_8UC3};
use opencv::prelude::*;
use reggan::detect::{face_from_box, Face, Point};
use reggan::{
    Device, FaceTracker, FrameProcessor, OneEuroFilter, OneEuroParams, ProcessorConfig, RgbImage,
    TrackingOptions,
};

/// Casiez et al. 2012, written out again from the paper: alpha = r / (r + 1) with
/// r = 2 pi fc Te; the derivative of the raw sample against the last filtered value is
/// low-passed at d_cutoff, the value at min_cutoff + beta |dx_hat|. In f64.
struct Reference {
    min_cutoff: f64,
    beta: f64,
    d_cutoff: f64,
    last: Option<(f64, f64, f64)>,
}

impl Reference {
    fn alpha(te: f64, fc: f64) -> f64 {
        let r = 2.0 * std::f64::consts::PI * fc * te;
        r / (r + 1.0)
    }

    fn step(&mut self, x: f64, t: f64) -> f64 {
        let Some((x_hat_prev, dx_hat_prev, t_prev)) = self.last else {
            self.last = Some((x, 0.0, t));
            return x;
        };
        let te = t - t_prev;
        let dx = (x - x_hat_prev) / te;
        let a_d = Self::alpha(te, self.d_cutoff);
        let dx_hat = a_d * dx + (1.0 - a_d) * dx_hat_prev;
        let fc = self.min_cutoff + self.beta * dx_hat.abs();
        let a = Self::alpha(te, fc);
        let x_hat = a * x + (1.0 - a) * x_hat_prev;
        self.last = Some((x_hat, dx_hat, t));
        x_hat
    }
}

/// A deterministic noisy signal at uneven sample times: a slow sine, then a fast ramp.
fn synthetic_signal() -> Vec<(f64, f64)> {
    let mut seed: u64 = 12345;
    let mut noise = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 33) as f64 / (1u64 << 31) as f64) - 0.5
    };
    let mut t = 0.0;
    (0..300)
        .map(|i| {
            t += 1.0 / 30.0 + 0.004 * noise();
            let clean = if i < 150 {
                (t * 2.0).sin()
            } else {
                (t * 2.0).sin() + 3.0 * (i - 150) as f64 / 30.0
            };
            (t, clean + 0.05 * noise())
        })
        .collect()
}

#[test]
fn one_euro_filter_follows_the_papers_formulas() {
    for (min_cutoff, beta, d_cutoff) in [(1.0, 0.0, 1.0), (0.5, 2.0, 1.0), (3.0, 0.3, 0.7)] {
        let mut ours = OneEuroFilter::new(OneEuroParams {
            min_cutoff,
            beta,
            d_cutoff,
        });
        let mut reference = Reference {
            min_cutoff: min_cutoff as f64,
            beta: beta as f64,
            d_cutoff: d_cutoff as f64,
            last: None,
        };
        for (i, (t, x)) in synthetic_signal().into_iter().enumerate() {
            let got = ours.filter(x as f32, t) as f64;
            let want = reference.step(x, t);
            assert!(
                (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                "({min_cutoff}, {beta}, {d_cutoff}) sample {i}: {got} vs reference {want}"
            );
        }
    }
}

#[test]
fn one_euro_filter_steadies_a_still_signal_and_follows_a_fast_one() {
    let filtered = |beta: f32, signal: &[(f64, f64)]| -> Vec<f64> {
        let mut f = OneEuroFilter::new(OneEuroParams {
            min_cutoff: 1.0,
            beta,
            d_cutoff: 1.0,
        });
        signal
            .iter()
            .map(|&(t, x)| f.filter(x as f32, t) as f64)
            .collect()
    };
    // Noise around a constant for 150 samples, then a ramp of 3 units a second.
    let signal: Vec<(f64, f64)> = synthetic_signal()
        .into_iter()
        .enumerate()
        .map(|(i, (t, x))| {
            let noise = x
                - (t * 2.0).sin()
                - if i < 150 {
                    0.0
                } else {
                    3.0 * (i - 150) as f64 / 30.0
                };
            (
                t,
                noise
                    + if i < 150 {
                        0.0
                    } else {
                        3.0 * (i - 150) as f64 / 30.0
                    },
            )
        })
        .collect();
    let jitter =
        |v: &[f64]| v.windows(2).map(|w| (w[1] - w[0]).abs()).sum::<f64>() / (v.len() - 1) as f64;
    let raw: Vec<f64> = signal.iter().map(|s| s.1).collect();
    let out = filtered(2.0, &signal);
    let still = jitter(&out[20..150]) / jitter(&raw[20..150]);
    assert!(still < 0.5, "still: jitter kept {still:.2}");
    // On the ramp beta raises the cutoff: the lag stays small, where a plain low-pass
    // at the same min_cutoff (beta 0) trails far behind.
    let lag = raw[280] - out[280];
    let lag_plain = raw[280] - filtered(0.0, &signal)[280];
    assert!(lag.abs() < 0.15, "lag on the ramp {lag:.3}");
    assert!(lag_plain > 0.3, "plain low-pass lag {lag_plain:.3}");
    // A constant stays exactly constant.
    let mut f = OneEuroFilter::new(OneEuroParams::default());
    for i in 0..10 {
        assert_eq!(f.filter(417.25, i as f64 / 30.0), 417.25);
    }
}

/// The photo's placement at frame `i`: still for 12 frames, then moving about 3 px a
/// frame along a curve while turning by up to 6 degrees. Row-major 2x3.
fn placement(i: usize) -> [f64; 6] {
    let s = i.saturating_sub(12) as f64;
    let angle = (6.0f64).to_radians() * (s / 9.0).sin();
    let (tx, ty) = (40.0 + 2.5 * s, 10.0 + 8.0 * (s / 7.0).sin());
    // Rotate about the face (about (256, 200) in the photo).
    let (cx, cy) = (256.0, 200.0);
    let (c, sn) = (angle.cos(), angle.sin());
    [
        c,
        -sn,
        cx - c * cx + sn * cy + tx,
        sn,
        c,
        cy - sn * cx - c * cy + ty,
    ]
}

fn map(m: &[f64; 6], p: Point) -> Point {
    Point {
        x: (m[0] * p.x as f64 + m[1] * p.y as f64 + m[2]) as f32,
        y: (m[3] * p.x as f64 + m[4] * p.y as f64 + m[5]) as f32,
    }
}

/// The photo placed by `m` over a textured 720x560 background.
fn render(photo: &Mat, m: &[f64; 6]) -> RgbImage {
    let mut frame = Mat::new_rows_cols_with_default(560, 720, CV_8UC3, Scalar::all(0.0)).unwrap();
    for y in 0..560 {
        for x in 0..720 {
            let v = 90 + ((x / 16 + y / 16) % 2) as u8 * 40;
            *frame.at_2d_mut::<opencv::core::Vec3b>(y, x).unwrap() =
                opencv::core::Vec3b::from([v, v / 2 + 30, 200 - v]);
        }
    }
    let mut affine =
        Mat::new_rows_cols_with_default(2, 3, opencv::core::CV_64F, Scalar::all(0.0)).unwrap();
    for (k, v) in m.iter().enumerate() {
        *affine
            .at_2d_mut::<f64>((k / 3) as i32, (k % 3) as i32)
            .unwrap() = *v;
    }
    opencv::imgproc::warp_affine(
        photo,
        &mut frame,
        &affine,
        Size::new(720, 560),
        opencv::imgproc::INTER_LINEAR,
        opencv::core::BORDER_TRANSPARENT,
        Scalar::default(),
    )
    .unwrap();
    RgbImage::from_bgr_mat(&frame).unwrap()
}

#[test]
fn a_face_on_a_known_path_is_followed_within_2_px_with_less_jitter_than_raw_detections() {
    let Some((model, photo)) = common::shipped_model_and_photo() else {
        return;
    };
    let config = ProcessorConfig {
        device: Device::Cpu,
        intensity: 0.0,
        ..Default::default()
    };
    let mut tracked = FrameProcessor::new(&model, config.clone()).unwrap();
    tracked.set_detect_interval(3);
    let mut raw = FrameProcessor::new(&model, config).unwrap();
    // Where the face's points are in the photo itself.
    let truth_points = raw.detect(&photo.clone().as_frame()).unwrap()[0].alignment_points();
    let bgr = photo.to_bgr_mat().unwrap();

    let (mut tracked_err, mut raw_err) = (Vec::new(), Vec::new());
    for i in 0..42 {
        let m = placement(i);
        let mut frame = render(&bgr, &m);
        let truth = truth_points.map(|p| map(&m, p));
        let detections = raw.detect(&frame.as_frame()).unwrap();
        let report = tracked
            .process_video(&mut frame.as_frame(), Duration::from_millis(33 * i as u64))
            .unwrap();
        assert_eq!(report.faces.len(), 1, "frame {i}: one face followed");
        assert_eq!(detections.len(), 1, "frame {i}: one face detected");
        let offsets = |pts: [Point; 4]| -> [Point; 4] {
            std::array::from_fn(|k| Point {
                x: pts[k].x - truth[k].x,
                y: pts[k].y - truth[k].y,
            })
        };
        tracked_err.push(offsets(report.faces[0].alignment_points()));
        raw_err.push(offsets(detections[0].alignment_points()));
    }
    // Distance to the truth, each point and frame; the error's constant part is the
    // detector's own bias on this face, common to both.
    let mean_distance = |err: &[[Point; 4]]| {
        err.iter()
            .flatten()
            .map(|e| e.x.hypot(e.y) as f64)
            .sum::<f64>()
            / (4 * err.len()) as f64
    };
    // Frame-to-frame jitter: how much the error changes from one frame to the next.
    let jitter = |err: &[[Point; 4]]| {
        err.windows(2)
            .flat_map(|w| (0..4).map(move |k| (w[1][k].x - w[0][k].x).hypot(w[1][k].y - w[0][k].y)))
            .map(|d| d as f64)
            .sum::<f64>()
            / (4 * (err.len() - 1)) as f64
    };
    let (dt, dr) = (mean_distance(&tracked_err), mean_distance(&raw_err));
    let (jt, jr) = (jitter(&tracked_err), jitter(&raw_err));
    eprintln!("tracked: {dt:.2} px from the truth, jitter {jt:.2} px; raw detections: {dr:.2} px, jitter {jr:.2} px");
    assert!(dt < 2.0, "tracked points {dt:.2} px from the truth");
    assert!(
        jt < jr,
        "tracked jitter {jt:.2} px not below raw {jr:.2} px"
    );
}

/// The faces the detector finds when it looks for those `due` (all there to be found).
fn looked_for(faces: &[Face], due: &[bool]) -> Vec<Face> {
    faces
        .iter()
        .zip(due)
        .filter(|(_, &d)| d)
        .map(|(f, _)| f.clone())
        .collect()
}

#[test]
fn a_confidently_followed_face_is_searched_for_every_search_interval_frames_and_faces_in_turn() {
    let mut tracker = FaceTracker::new(TrackingOptions {
        search_interval: 3,
        ..Default::default()
    });
    assert!(!tracker.may_skip_search(), "nothing followed yet: search");
    let face = face_from_box(100.0, 100.0, 80.0, 80.0);
    tracker.update(vec![face.clone()], 0.0);
    let mut skipped = Vec::new();
    let mut presence = Vec::new();
    for i in 1..=6 {
        let skip = tracker.may_skip_search();
        let followed = if skip {
            tracker.carry()
        } else {
            tracker.update(vec![face.clone()], i as f64 / 30.0)
        };
        skipped.push(skip);
        presence.push(followed[0].presence);
    }
    assert_eq!(skipped, [true, true, false, true, true, false]);
    assert!(presence.iter().all(|&p| p == 1.0), "{presence:?}");
    // A face the detector lost brings the search back at once, every frame.
    tracker.update(Vec::new(), 0.3);
    assert!(
        !tracker.may_skip_search(),
        "a lost face must be searched for"
    );
    // A face that appears later fades in on the frames the detector skips too.
    let mut tracker = FaceTracker::new(TrackingOptions {
        search_interval: 2,
        ..Default::default()
    });
    tracker.update(Vec::new(), 0.0);
    let first = tracker.update(vec![face.clone()], 0.1)[0].presence;
    assert!(tracker.may_skip_search());
    let carried = tracker.carry()[0].presence;
    assert!(first < carried && carried <= 1.0, "{first} then {carried}");
    // Four faces, each as costly to look for: each every eighth frame
    // (LOOK_FRAMES_PER_FACE per face).
    let mut tracker = FaceTracker::new(TrackingOptions {
        search_interval: 2,
        ..Default::default()
    });
    let four: Vec<_> = (0..4)
        .map(|k| face_from_box(100.0 + 150.0 * k as f32, 100.0, 80.0, 80.0))
        .collect();
    tracker.update(four.clone(), 0.0);
    let every = (reggan::track::LOOK_FRAMES_PER_FACE * 4) as usize;
    assert_eq!(every, 8);
    // Each face every eighth frame, at most one face a frame: the looks are spread,
    // so no frame pays for more than one, and half the frames pay for none.
    let mut looks = vec![Vec::new(); 4];
    for i in 1..=2 * every {
        let due = tracker.due();
        assert!(
            due.iter().filter(|&&d| d).count() <= 1,
            "frame {i}: {due:?}"
        );
        let followed = if tracker.may_skip_search() {
            tracker.carry()
        } else {
            tracker.update_looked(looked_for(&four, &due), &due, i as f64 / 30.0)
        };
        assert_eq!(
            followed.len(),
            4,
            "a face not looked for is carried, not lost"
        );
        assert!(followed.iter().all(|f| f.presence == 1.0));
        for (k, d) in due.iter().enumerate() {
            if *d {
                looks[k].push(i);
            }
        }
    }
    for (k, frames) in looks.iter().enumerate() {
        assert_eq!(frames.len(), 2, "face {k}: {frames:?}");
        assert_eq!(frames[1] - frames[0], every, "face {k}: {frames:?}");
    }
    // A face lost among them brings every look back at once.
    let seen = looked_for(&four, &tracker.due());
    tracker.update_looked(seen, &[true; 4], 0.5);
    assert_eq!(tracker.due(), [true; 4]);
    // Found again, the faces go back to their own turns, at most one a frame: four
    // looks in each stretch of `every` frames.
    let looks: Vec<usize> = (0..2 * every)
        .map(|i| {
            let due = tracker.due();
            tracker.update_looked(looked_for(&four, &due), &due, 0.6 + i as f64 / 30.0);
            due.iter().filter(|&&d| d).count()
        })
        .collect();
    assert!(looks[every..].iter().all(|&n| n <= 1), "{looks:?}");
    assert_eq!(looks[every..].iter().sum::<usize>(), 4, "{looks:?}");
    assert_eq!(tracker.len(), 4);
    // Every frame searched with an interval of 1, and without optical flow.
    for options in [
        TrackingOptions {
            search_interval: 1,
            ..Default::default()
        },
        TrackingOptions::raw(),
    ] {
        let mut tracker = FaceTracker::new(options);
        for i in 0..4 {
            tracker.update(vec![face.clone()], i as f64 / 30.0);
            assert!(!tracker.may_skip_search(), "{options:?}");
        }
    }
}

/// A planar RGB crop of side `s` in [0, 1]: smooth texture shifted right by `dx` px.
fn textured_crop(s: usize, dx: f32) -> Vec<f32> {
    let mut crop = vec![0.0f32; 3 * s * s];
    for c in 0..3 {
        for y in 0..s {
            for x in 0..s {
                let u = x as f32 - dx;
                let v = 0.5
                    + 0.2 * (u * 0.31 + c as f32).sin() * (y as f32 * 0.23).cos()
                    + 0.15 * (u * 0.11 + y as f32 * 0.17).sin();
                crop[c * s * s + y * s + x] = v;
            }
        }
    }
    crop
}

/// An edit of 3 planes: a Gaussian blob of height `h` centred at (`cx`, s / 2).
fn blob_edit(s: usize, cx: f32, h: f32) -> Vec<f32> {
    let mut e = vec![0.0f32; 3 * s * s];
    for c in 0..3 {
        for y in 0..s {
            for x in 0..s {
                let d2 = (x as f32 - cx).powi(2) + (y as f32 - s as f32 / 2.0).powi(2);
                e[c * s * s + y * s + x] = h * (-d2 / 50.0).exp();
            }
        }
    }
    e
}

#[test]
fn edit_smoother_is_a_low_pass_that_moves_with_the_face() {
    use reggan::track::{smoothing_factor, EditSmoother};
    let s = 64;
    let mut smoother = EditSmoother::default();
    let still = textured_crop(s, 0.0);
    // A new face's edit passes unchanged.
    let mut first = blob_edit(s, 32.0, 0.1);
    assert!(!smoother.smooth(7, 0.0, 4.0, &still, s, &mut first).unwrap());
    assert_eq!(first, blob_edit(s, 32.0, 0.1));
    // On a still crop it is the exponential low-pass: a step moves by alpha of the way.
    let a = smoothing_factor(0.04, 4.0);
    let mut step = blob_edit(s, 32.0, 0.3);
    assert!(smoother.smooth(7, 0.04, 4.0, &still, s, &mut step).unwrap());
    let centre = s * s / 2 + 32;
    let want = 0.1 + a * 0.2;
    assert!(
        (step[centre] - want).abs() < 1e-3,
        "{} against {want}",
        step[centre]
    );

    // The crop's content moves 3 px right, and the edit with it: the smoothed edit
    // follows (the last edit is carried along first), where a plain low-pass would
    // leave most of the blob where it was.
    let mut moving = EditSmoother::default();
    let mut e0 = blob_edit(s, 28.0, 0.2);
    moving
        .smooth(1, 0.0, 4.0, &textured_crop(s, 0.0), s, &mut e0)
        .unwrap();
    let mut e1 = blob_edit(s, 31.0, 0.2);
    moving
        .smooth(1, 0.04, 4.0, &textured_crop(s, 3.0), s, &mut e1)
        .unwrap();
    let truth = blob_edit(s, 31.0, 0.2);
    let plain: Vec<f32> = blob_edit(s, 28.0, 0.2)
        .iter()
        .zip(&truth)
        .map(|(l, n)| l + a * (n - l))
        .collect();
    let error = |e: &[f32]| {
        e.iter()
            .zip(&truth)
            .skip(8 * s)
            .take(s * (s - 16))
            .map(|(x, t)| (x - t).abs())
            .fold(0.0f32, f32::max)
    };
    let (compensated, uncompensated) = (error(&e1), error(&plain));
    eprintln!("moved edit {compensated:.4} off, plain low-pass {uncompensated:.4}");
    assert!(
        compensated < 0.25 * uncompensated,
        "moved with the face: {compensated:.4} off, a plain low-pass {uncompensated:.4}"
    );

    // Where the crop shows something new (an occlusion), the new edit passes.
    let mut occluded = EditSmoother::default();
    let mut before = blob_edit(s, 32.0, 0.0);
    occluded
        .smooth(2, 0.0, 4.0, &still, s, &mut before)
        .unwrap();
    let mut covered = still.clone();
    for c in 0..3 {
        for y in 24..40 {
            for x in 24..40 {
                covered[c * s * s + y * s + x] = if c == 0 { 0.95 } else { 0.05 };
            }
        }
    }
    let mut after = blob_edit(s, 32.0, 0.2);
    occluded
        .smooth(2, 0.04, 4.0, &covered, s, &mut after)
        .unwrap();
    assert!(
        (after[centre] - 0.2).abs() < 0.02,
        "new content keeps the new edit: {}",
        after[centre]
    );

    // Another face has its own memory; a forgotten face starts afresh.
    let mut other = blob_edit(s, 32.0, 0.5);
    assert!(!smoother
        .smooth(8, 0.08, 4.0, &still, s, &mut other)
        .unwrap());
    smoother.retain(&[8]);
    let mut back = blob_edit(s, 32.0, 0.4);
    assert!(!smoother.smooth(7, 0.12, 4.0, &still, s, &mut back).unwrap());
    assert_eq!(back, blob_edit(s, 32.0, 0.4));
}

/// A flow model's outputs on 30 frames of a moving face, with its edit's low-pass on
/// and off, compared over the frames after the first 14 (still, then the first moving
/// frames: both settle): (the largest and the mean difference in grey levels, how many
/// values the smoothed output changed by more than 8).
fn low_pass_on_and_off(name: &str, flow: common::FlowOutput) -> Option<(u8, f64, usize)> {
    let (_, photo) = common::shipped_model_and_photo()?;
    let s = 128;
    let dir = common::temp_dir(name);
    common::write_model(
        &dir,
        &common::manifest(2, s, &["happy"], &["face_out", "flow"]),
        &flow,
    );
    let processor = |edit_cutoff| {
        let config = ProcessorConfig {
            expression: "happy".into(),
            device: Device::Cpu,
            tracking: TrackingOptions {
                edit_cutoff,
                ..TrackingOptions::default()
            },
            ..Default::default()
        };
        FrameProcessor::new(&dir, config).unwrap()
    };
    let (mut smoothed, mut raw) = (processor(Some(0.25)), processor(None));
    let bgr = photo.to_bgr_mat().unwrap();
    let (mut worst, mut total, mut count, mut moved) = (0u8, 0u64, 0u64, 0usize);
    for i in 0..30 {
        let input = render(&bgr, &placement(i));
        let (mut a, mut b) = (input.clone(), input.clone());
        let t = Duration::from_millis(33 * i as u64);
        smoothed.process_video(&mut a.as_frame(), t).unwrap();
        raw.process_video(&mut b.as_frame(), t).unwrap();
        if i < 14 {
            continue;
        }
        moved += a
            .data
            .iter()
            .zip(&input.data)
            .filter(|(o, i)| o.abs_diff(**i) > 8)
            .count();
        for (x, y) in a.data.iter().zip(&b.data) {
            let d = x.abs_diff(*y);
            worst = worst.max(d);
            total += d as u64;
            count += 1;
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
    Some((worst, total as f64 / count as f64, moved))
}

/// A flow model whose appearance is the identity (`face_out` is the crop warped by its
/// flow, the same every frame) gives the edit's low-pass nothing to smooth: a moving
/// face must come out as with the low-pass off. Taking a flow model's change as
/// `out - crop` (the moved texture itself) smeared the texture from frame to frame.
#[test]
fn a_flow_models_low_pass_leaves_a_moving_faces_moved_texture_as_it_is() {
    let flow = common::FlowOutput::PerExpression(vec![common::constant_flow(128, 2.0, -1.5)]);
    let Some((worst, mean, moved)) = low_pass_on_and_off("track-identity-flow-model", flow) else {
        return;
    };
    // The flow moved the face's pixels: thousands of values a frame changed.
    assert!(
        moved > 16 * 3000,
        "the flow model changed only {moved} values"
    );
    // At most a rounding apart (the old change, `out - crop`, gave 17 grey levels).
    assert!(
        worst <= 1,
        "with the low-pass the moving face differs by up to {worst} grey levels (mean {mean:.4})"
    );
}

/// A flow that follows the face (here its red and green planes, with an identity
/// appearance) changes from frame to frame on a moving face and is low-passed: the
/// smoothed output lags the raw one (78 grey levels apart at most, a mean of 0.002 over
/// the frame; left unsmoothed, 1 and 0.0000), where a constant flow's stays a rounding
/// apart (above).
#[test]
fn a_flow_that_follows_the_face_is_low_passed_on_video() {
    let flow = common::FlowOutput::FromFace(4.0);
    let Some((worst, mean, moved)) = low_pass_on_and_off("track-face-flow-model", flow) else {
        return;
    };
    assert!(
        moved > 16 * 1000,
        "the flow model changed only {moved} values"
    );
    assert!(
        worst > 8 && mean > 0.0005,
        "the low-pass left the moving face's flow as it was: up to {worst} grey levels apart (mean {mean:.4})"
    );
}

/// The edit a still face shows, frame after frame, when only the camera's noise changes
/// (the shipped model; 40 frames, uniform noise of ±6 grey levels, fresh each frame):
/// the mean absolute frame-to-frame change of `output - input` over the face's box, in
/// grey levels, over the last 20 frames (the memory has settled), with the edit's
/// low-pass at `edit_cutoff`.
fn edit_change_on_a_noisy_still_face(edit_cutoff: Option<f32>) -> Option<f64> {
    let (model, photo) = common::shipped_model_and_photo()?;
    let config = ProcessorConfig {
        device: Device::Cpu,
        tracking: TrackingOptions {
            edit_cutoff,
            ..TrackingOptions::default()
        },
        ..Default::default()
    };
    let mut processor = FrameProcessor::new(&model, config).unwrap();
    let still = render(&photo.to_bgr_mat().unwrap(), &placement(0));
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut noise = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % 13) as i16 - 6
    };
    let (mut last_edit, mut total, mut count) = (None::<Vec<i16>>, 0u64, 0u64);
    for i in 0..40 {
        let mut input = still.clone();
        for v in input.data.iter_mut() {
            *v = (*v as i16 + noise()).clamp(0, 255) as u8;
        }
        let mut output = input.clone();
        let report = processor
            .process_video(&mut output.as_frame(), Duration::from_millis(33 * i))
            .unwrap();
        let b = report.faces.first().expect("the face is found").bbox;
        let (x0, y0) = (b.x.max(0.0) as usize, b.y.max(0.0) as usize);
        let (x1, y1) = ((b.x + b.w) as usize, (b.y + b.h) as usize);
        let edit: Vec<i16> = (y0..y1.min(still.height))
            .flat_map(|y| {
                (x0 * 3..(x1 * 3).min(still.width * 3)).map(move |k| y * still.width * 3 + k)
            })
            .map(|k| output.data[k] as i16 - input.data[k] as i16)
            .collect();
        if let Some(last) = last_edit
            .as_ref()
            .filter(|l| i >= 20 && l.len() == edit.len())
        {
            total += edit
                .iter()
                .zip(last)
                .map(|(a, b)| a.abs_diff(*b) as u64)
                .sum::<u64>();
            count += edit.len() as u64;
        }
        last_edit = Some(edit);
    }
    Some(total as f64 / count as f64)
}

/// What the low-pass smooths is the change the compositor carries back (its detail and
/// colour gates open and close with every frame's noise), so a still face's edit holds
/// still: 0.078 grey levels a frame against 0.392 without the low-pass. Smoothing the
/// model's raw output instead left the gates' flicker as it was (0.125 at 0.1 Hz, 0.129
/// at 0.25).
#[test]
fn a_still_faces_edit_holds_still_through_the_cameras_noise() {
    let Some(raw) = edit_change_on_a_noisy_still_face(None) else {
        return;
    };
    let smoothed = edit_change_on_a_noisy_still_face(TrackingOptions::default().edit_cutoff)
        .expect("the same model");
    println!("edit's frame-to-frame change: {raw:.3} grey levels raw, {smoothed:.3} low-passed");
    assert!(raw > 0.2, "the noise changes the raw edit ({raw:.3})");
    assert!(
        smoothed < 0.25 * raw,
        "the low-passed edit changes by {smoothed:.3} grey levels a frame, the raw one by {raw:.3}"
    );
}
