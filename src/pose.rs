//! Head pose from BlazeFace's six keypoints, and how much of an edit a turned head gets.
//!
//! The alignment maps a frontal template onto the face with a 2-D similarity, so on a
//! head turned far to one side the model paints a frontal mouth beside the real one.
//! [`HeadPose::estimate`] fits a rigid 3-D template of the six points (eyes, nose tip,
//! mouth centre, ears) under scaled orthographic projection: for each candidate yaw and
//! pitch the best 2-D similarity (roll, scale, shift) is solved in closed form, and the
//! yaw/pitch with the smallest weighted error wins (a coarse grid, then finer ones
//! around the best: no local minima to get stuck in). The fit's sums are taken once a
//! yaw, so each of the search's 1,170 candidates costs a few multiplications (6 µs a
//! face in all; 67 µs with a fit per candidate).
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
        let Some(points) = CentredKeypoints::of(keypoints) else {
            return HeadPose::default();
        };
        let template = centred(template.map(|v| v.map(|c| c as f64)));
        // An angle with its sine and cosine, worked out once per grid line rather than
        // once per candidate.
        let angle = |deg: f64| (deg, deg.to_radians().sin_cos());
        // (error, yaw, pitch, the similarity's (along, across) for its roll): a 5-degree
        // grid, then 1 and 0.2 degrees around the best.
        let mut best = (f64::MAX, 0.0, 0.0, (1.0, 0.0));
        let search = |best: &mut (f64, f64, f64, (f64, f64)), yaws: &[Angle], pitches: &[Angle]| {
            for &(yaw, yaw_sc) in yaws {
                let sums = YawSums::new(&template, &points, yaw_sc);
                for &(pitch, pitch_sc) in pitches {
                    if let Some((error, similarity)) = sums.fit(pitch_sc, points.spread) {
                        if error < best.0 {
                            *best = (error, yaw, pitch, similarity);
                        }
                    }
                }
            }
        };
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
        let (error, yaw, pitch, (along, across)) = best;
        if error == f64::MAX {
            return HeadPose::default();
        }
        HeadPose {
            yaw: yaw as f32,
            pitch: pitch as f32,
            roll: across.atan2(along).to_degrees() as f32,
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

/// The keypoints about their weighted mean, and their weighted spread (sum of w |p|^2).
struct CentredKeypoints {
    p: [[f64; 2]; 6],
    spread: f64,
}

impl CentredKeypoints {
    /// None for keypoints that all coincide.
    fn of(keypoints: &[Point; 6]) -> Option<Self> {
        let p = centred(keypoints.map(|k| [k.x as f64, k.y as f64]));
        let spread = p
            .iter()
            .zip(WEIGHTS)
            .map(|(v, w)| w as f64 * v.iter().map(|c| c * c).sum::<f64>())
            .sum::<f64>();
        (spread > 0.0).then_some(CentredKeypoints { p, spread })
    }
}

/// `points` less their [`WEIGHTS`]-weighted mean. A rotation and an orthographic
/// projection are linear, so a template centred so projects to centred points.
fn centred<const D: usize>(points: [[f64; D]; 6]) -> [[f64; D]; 6] {
    let total: f64 = WEIGHTS.iter().map(|&w| w as f64).sum();
    let mut mean = [0.0; D];
    for (v, w) in points.iter().zip(WEIGHTS) {
        for (m, c) in mean.iter_mut().zip(v) {
            *m += w as f64 * c / total;
        }
    }
    points.map(|v| std::array::from_fn(|k| v[k] - mean[k]))
}

/// The weighted sums of the least-squares similarity `p ≈ [a -b; b a] q` between the
/// keypoints and the template turned by one yaw, as functions of the pitch.
///
/// The template point (x, y, z) turned by yaw and then pitch projects to
/// `q = (x cos yaw + z sin yaw, y cos pitch + z1 sin pitch)` with
/// `z1 = -x sin yaw + z cos yaw` (the nose, z > 0, moves to +x for yaw > 0 and to +y,
/// down, for pitch > 0). Only q's y depends on the pitch, linearly in its sine and
/// cosine, so every sum of the fit is a fixed combination of these ten, taken once a
/// yaw: the pitch search then costs a few multiplications a candidate.
struct YawSums {
    /// Σ w qx², Σ w y², Σ w y z1, Σ w z1².
    qx_qx: f64,
    y_y: f64,
    y_z1: f64,
    z1_z1: f64,
    /// Σ w qx px, Σ w qx py, Σ w y px, Σ w y py, Σ w z1 px, Σ w z1 py.
    qx_px: f64,
    qx_py: f64,
    y_px: f64,
    y_py: f64,
    z1_px: f64,
    z1_py: f64,
}

impl YawSums {
    fn new(template: &[[f64; 3]; 6], points: &CentredKeypoints, (sy, cy): (f64, f64)) -> Self {
        let mut s = YawSums {
            qx_qx: 0.0,
            y_y: 0.0,
            y_z1: 0.0,
            z1_z1: 0.0,
            qx_px: 0.0,
            qx_py: 0.0,
            y_px: 0.0,
            y_py: 0.0,
            z1_px: 0.0,
            z1_py: 0.0,
        };
        for (([x, y, z], [px, py]), w) in template.iter().zip(&points.p).zip(WEIGHTS) {
            let w = w as f64;
            let (qx, z1) = (x * cy + z * sy, -x * sy + z * cy);
            s.qx_qx += w * qx * qx;
            s.y_y += w * y * y;
            s.y_z1 += w * y * z1;
            s.z1_z1 += w * z1 * z1;
            s.qx_px += w * qx * px;
            s.qx_py += w * qx * py;
            s.y_px += w * y * px;
            s.y_py += w * y * py;
            s.z1_px += w * z1 * px;
            s.z1_py += w * z1 * py;
        }
        s
    }

    /// The best similarity's weighted squared error relative to the keypoints' `spread`
    /// (scale-free) at one pitch, and the similarity as (along, across), proportional to
    /// (cos roll, sin roll); None when the template projects to a point.
    fn fit(&self, (sp, cp): (f64, f64), spread: f64) -> Option<(f64, (f64, f64))> {
        let qq = self.qx_qx + cp * cp * self.y_y + 2.0 * cp * sp * self.y_z1 + sp * sp * self.z1_z1;
        if qq <= 0.0 {
            return None;
        }
        // Σ w (qx px + qy py) and Σ w (qx py - qy px), qy = y cos pitch + z1 sin pitch.
        let along = self.qx_px + cp * self.y_py + sp * self.z1_py;
        let across = self.qx_py - cp * self.y_px - sp * self.z1_px;
        // The residual of the optimal similarity (a, b) = (along, across) / qq is
        // spread - (a² + b²) qq.
        let error = (1.0 - (along * along + across * across) / (qq * spread)).max(0.0);
        Some((error, (along, across)))
    }
}
