//! Head pose from BlazeFace's six keypoints, and how much of an edit a turned head gets.
//!
//! The alignment maps a frontal template onto the face with a 2-D similarity, so on a
//! head turned far to one side the model paints a frontal mouth beside the real one.
//! [`HeadPose::estimate`] fits a rigid 3-D template of the six points (eyes, nose tip,
//! mouth centre, ears) under scaled orthographic projection: for each candidate yaw and
//! pitch the best 2-D similarity (roll, scale, shift) is solved in closed form, and the
//! yaw/pitch with the smallest weighted error wins (a coarse grid, then finer ones
//! around the best: no local minima to get stuck in).
//! [`yaw_strength`] turns the yaw into the share of the edit the face gets.

use crate::detect::Point;

/// Head rotation in degrees. Yaw > 0: the nose points to the image's right (the person
/// turned to their left); pitch > 0: the nose points down; roll > 0: the eye line
/// turns clockwise in the image (the image-right eye lower).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct HeadPose {
    pub yaw: f32,
    pub pitch: f32,
    pub roll: f32,
}

/// The six points of a frontal head in millimetres, in BlazeFace's order (image-left
/// eye, image-right eye, nose tip, mouth centre, image-left ear, image-right ear);
/// x to the image's right, y down, z towards the camera, origin between the pupils.
/// x and y are the mean BlazeFace keypoints of 40 frontal faces of the London set
/// (scaled to a 63 mm pupil distance), z from adult anthropometry (nose tip about
/// 20 mm in front of the pupils, the lips 6 mm, the tragions 75 mm behind).
pub const TEMPLATE_MM: [[f32; 3]; 6] = [
    [-31.5, 0.0, 0.0],
    [31.5, 0.0, 0.0],
    [0.0, 31.0, 20.0],
    [0.0, 64.0, 6.0],
    [-64.0, 18.5, -75.0],
    [64.0, 18.5, -75.0],
];

/// How much each keypoint counts in the fit: the ears are the least precise (the far
/// one is hidden on a turned head, and BlazeFace guesses it).
const WEIGHTS: [f32; 6] = [1.0, 1.0, 1.0, 1.0, 0.5, 0.5];

/// Largest yaw and pitch searched (degrees).
const YAW_RANGE: f32 = 90.0;
const PITCH_RANGE: f32 = 60.0;

impl HeadPose {
    /// The pose whose projected template fits `keypoints` (frame pixels, BlazeFace
    /// order) best. Keypoints that coincide (a degenerate face) give the frontal pose.
    pub fn estimate(keypoints: &[Point; 6]) -> HeadPose {
        Self::estimate_with(keypoints, &TEMPLATE_MM)
    }

    /// [`estimate`](Self::estimate) against another 3-D template (same order and axes).
    pub fn estimate_with(keypoints: &[Point; 6], template: &[[f32; 3]; 6]) -> HeadPose {
        let p = keypoints.map(|k| [k.x as f64, k.y as f64]);
        let t = template.map(|v| v.map(|c| c as f64));
        // An angle with its sine and cosine, worked out once per grid line rather than
        // once per candidate (the trigonometry was most of the search's cost).
        let angle = |deg: f64| (deg, deg.to_radians().sin_cos());
        let consider = |best: &mut (f64, f64, f64, f64), yaw: Angle, pitch: Angle| {
            let fit = fit_similarity(&p, &project(&t, yaw.1, pitch.1));
            if fit.error < best.0 {
                *best = (fit.error, yaw.0, pitch.0, fit.roll);
            }
        };
        let search = |best: &mut (f64, f64, f64, f64), yaws: &[Angle], pitches: &[Angle]| {
            for &yaw in yaws {
                for &pitch in pitches {
                    consider(best, yaw, pitch);
                }
            }
        };
        // (error, yaw, pitch, roll): a 5-degree grid, then 1 and 0.2 degrees around
        // the best.
        let mut best = (f64::MAX, 0.0, 0.0, 0.0);
        let (yr, pr) = (YAW_RANGE as f64, PITCH_RANGE as f64);
        let grid = |range: f64| -> Vec<Angle> {
            (0..=(2.0 * range / 5.0) as i32)
                .map(|i| angle(-range + 5.0 * i as f64))
                .collect()
        };
        search(&mut best, &grid(yr), &grid(pr));
        for (step, reach) in [(1.0, 5), (0.2, 5)] {
            let around = |centre: f64, range: f64| -> Vec<Angle> {
                (-reach..=reach)
                    .map(|i| angle((centre + i as f64 * step).clamp(-range, range)))
                    .collect()
            };
            let (yaws, pitches) = (around(best.1, yr), around(best.2, pr));
            search(&mut best, &yaws, &pitches);
        }
        if best.0 == f64::MAX {
            return HeadPose::default();
        }
        HeadPose {
            yaw: best.1 as f32,
            pitch: best.2 as f32,
            roll: best.3.to_degrees() as f32,
        }
    }
}

/// The share of the edit a face turned by `yaw` degrees gets when the edit must be gone
/// at `max_yaw`: 1 up to `max_yaw - YAW_FADE`, then a smoothstep down to exactly 0 at
/// `max_yaw` and beyond. `max_yaw` >= 90 never fades (no face is turned further).
///
/// Why this ramp: the alignment's 4-point similarity fits a turned face worse as the
/// yaw grows. With [`TEMPLATE_MM`], the RMS misplacement of the eyes, nose and mouth
/// after the best similarity, in a 128 px crop (eyes 52 px apart), is 1.1 px at 10
/// degrees, 1.7 at 15, 2.4 at 20, 3.1 at 25, 3.9 at 30 and 4.7 at 35: at 35 degrees
/// the template's mouth is a lip's height off, and the model (trained on frontal
/// faces) paints onto a foreshortened cheek. Full strength holds while the misplacement
/// stays under about 2.5 px, a twentieth of the eye distance (20 degrees at the default
/// `max_yaw` of 35), and the 15-degree smoothstep hides the change of strength as a
/// head turns in a video.
pub fn yaw_strength(yaw: f32, max_yaw: f32) -> f32 {
    if max_yaw >= 90.0 {
        return 1.0;
    }
    let a = yaw.abs();
    let start = max_yaw - YAW_FADE;
    if a <= start {
        1.0
    } else if a >= max_yaw {
        0.0
    } else {
        1.0 - smoothstep(start, max_yaw, a)
    }
}

/// Degrees over which [`yaw_strength`] goes from 1 to 0.
pub const YAW_FADE: f32 = 15.0;

/// The default limit: past it a face is left alone.
pub const DEFAULT_MAX_YAW: f32 = 35.0;

fn smoothstep(e0: f32, e1: f32, x: f32) -> f32 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// Degrees, and the (sine, cosine) of the angle.
type Angle = (f64, (f64, f64));

/// The template rotated by yaw (about the vertical axis), then pitch (about the
/// horizontal one), projected orthographically onto the image plane; each angle given
/// by its (sine, cosine).
fn project(t: &[[f64; 3]; 6], (sy, cy): (f64, f64), (sp, cp): (f64, f64)) -> [[f64; 2]; 6] {
    t.map(|[x, y, z]| {
        // Yaw: the nose (z > 0) moves to +x for yaw > 0.
        let (x1, z1) = (x * cy + z * sy, -x * sy + z * cy);
        // Pitch: the nose moves to +y (down) for pitch > 0.
        let y2 = y * cp + z1 * sp;
        [x1, y2]
    })
}

struct SimilarityFit {
    /// Weighted squared error, relative to the keypoints' spread (scale-free).
    error: f64,
    /// Radians.
    roll: f64,
}

/// Least-squares `p ≈ [a -b; b a] q + t` over the weighted points.
fn fit_similarity(p: &[[f64; 2]; 6], q: &[[f64; 2]; 6]) -> SimilarityFit {
    let w = WEIGHTS.map(|v| v as f64);
    let sw: f64 = w.iter().sum();
    let mean = |pts: &[[f64; 2]; 6]| {
        let mut m = [0.0; 2];
        for (v, wi) in pts.iter().zip(w) {
            m[0] += wi * v[0] / sw;
            m[1] += wi * v[1] / sw;
        }
        m
    };
    let (mp, mq) = (mean(p), mean(q));
    let (mut sqq, mut spp, mut num_a, mut num_b) = (0.0, 0.0, 0.0, 0.0);
    for i in 0..6 {
        let (qx, qy) = (q[i][0] - mq[0], q[i][1] - mq[1]);
        let (px, py) = (p[i][0] - mp[0], p[i][1] - mp[1]);
        sqq += w[i] * (qx * qx + qy * qy);
        spp += w[i] * (px * px + py * py);
        num_a += w[i] * (qx * px + qy * py);
        num_b += w[i] * (qx * py - qy * px);
    }
    if sqq <= 0.0 || spp <= 0.0 {
        return SimilarityFit {
            error: f64::MAX,
            roll: 0.0,
        };
    }
    let (a, b) = (num_a / sqq, num_b / sqq);
    // Residual of the optimal similarity: spp - (a^2 + b^2) sqq.
    let error = (spp - (a * a + b * b) * sqq).max(0.0) / spp;
    SimilarityFit {
        error,
        roll: b.atan2(a),
    }
}
