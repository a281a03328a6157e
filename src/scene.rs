//! Whether the picture changed outside the followed faces since a whole-frame search
//! last looked at it.
//!
//! A whole-frame search only looks for new faces (the followed ones are searched for
//! around where they are), and a new face can only come where the picture changed: a
//! person walking in, turning towards the camera, a camera that moves. On a still
//! background (a webcam call, a talking head, a presenter) the searches find nothing
//! new frame after frame, yet they are most of the detection cost (at 1280x720 the back
//! model alone is 8 ms every fifth frame). So the processor skips a due search while
//! this says the picture is the same, and searches anyway at least every
//! [`STILL_SCENE_INTERVALS`] intervals (a face the detector missed in a still scene
//! is looked for again).
//!
//! The picture is compared on a sparse grid of 2x2-pixel means of luma (about 160x90
//! points at any frame size, tens of microseconds); points near a followed face (its
//! box grown by about the head and shoulders), then or now, do not count, because a
//! talking head moves there all the time.

use crate::detect::BoxF;
use crate::frame::FrameMut;

/// A due whole-frame search is skipped for at most this many detection intervals while
/// the picture stays the same (at the default interval of 5 and 30 fps, once a second).
pub const STILL_SCENE_INTERVALS: u32 = 6;

/// Grid points along the frame's shorter side.
const POINTS_ON_SHORT_SIDE: usize = 90;
/// Luma change (grey levels, of a 2x2 mean) that counts as a change of the picture:
/// about six times a webcam's noise on such a mean in low light, well under what a
/// face coming into view changes.
const CHANGE_LEVEL: u8 = 24;
/// The share of grid points that must change (and at least [`MIN_CHANGED_POINTS`]): a
/// face 45 px wide in a 1280x720 frame covers about 30 points.
const CHANGED_SHARE: f32 = 0.0005;
const MIN_CHANGED_POINTS: usize = 4;

/// The luma of a frame on a sparse grid, and the followed faces at that time.
#[derive(Debug, Clone)]
pub struct SceneSamples {
    width: usize,
    height: usize,
    step: usize,
    luma: Vec<u8>,
    /// Where the picture is expected to change: around each followed face.
    faces: Vec<BoxF>,
}

impl SceneSamples {
    /// Samples `frame`, with `faces` the followed faces' boxes in it.
    pub fn of(frame: &FrameMut, faces: &[BoxF]) -> Self {
        let (width, height) = (frame.width(), frame.height());
        let step = (width.min(height) / POINTS_ON_SHORT_SIDE).max(2);
        let (bpp, stride) = (frame.layout().bytes_per_pixel(), frame.stride());
        let [r, g, b] = frame.layout().rgb_offsets();
        let data = frame.data();
        // BT.601 weights in 8-bit fixed point, summed over a 2x2 block.
        let luma_at = |x: usize, y: usize| -> u8 {
            let mut sum = 0u32;
            for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                let p = (y + dy) * stride + (x + dx) * bpp;
                sum += 77 * data[p + r] as u32 + 150 * data[p + g] as u32 + 29 * data[p + b] as u32;
            }
            (sum >> 10) as u8
        };
        let mut luma = Vec::new();
        for y in (step / 2..height.saturating_sub(1)).step_by(step) {
            for x in (step / 2..width.saturating_sub(1)).step_by(step) {
                luma.push(luma_at(x, y));
            }
        }
        SceneSamples {
            width,
            height,
            step,
            luma,
            faces: faces.iter().map(around_the_head).collect(),
        }
    }

    /// True unless the picture is the same as in `earlier` away from the followed faces
    /// of both: a different frame size always counts as changed.
    pub fn changed_since(&self, earlier: &SceneSamples) -> bool {
        if (self.width, self.height) != (earlier.width, earlier.height) {
            return true;
        }
        let columns = (self.step / 2..self.width.saturating_sub(1))
            .step_by(self.step)
            .len();
        let near_a_face = |x: f32, y: f32| {
            self.faces
                .iter()
                .chain(&earlier.faces)
                .any(|b| x >= b.x && x < b.x + b.w && y >= b.y && y < b.y + b.h)
        };
        let needed = ((self.luma.len() as f32 * CHANGED_SHARE) as usize).max(MIN_CHANGED_POINTS);
        let mut changed = 0;
        for (i, (&now, &then)) in self.luma.iter().zip(&earlier.luma).enumerate() {
            if now.abs_diff(then) <= CHANGE_LEVEL {
                continue;
            }
            let x = (self.step / 2 + (i % columns) * self.step) as f32;
            let y = (self.step / 2 + (i / columns) * self.step) as f32;
            if !near_a_face(x, y) {
                changed += 1;
                if changed >= needed {
                    return true;
                }
            }
        }
        false
    }
}

/// A face's box grown to where a talking, nodding head and its shoulders move: half a
/// face on either side and above, one and a half below.
fn around_the_head(b: &BoxF) -> BoxF {
    BoxF {
        x: b.x - 0.5 * b.w,
        y: b.y - 0.5 * b.h,
        w: 2.0 * b.w,
        h: 3.0 * b.h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::RgbImage;

    /// A 640x480 frame of smooth texture (what a background looks like to the grid).
    fn background() -> RgbImage {
        let mut img = RgbImage::new(640, 480);
        for (i, v) in img.data.iter_mut().enumerate() {
            let (x, y) = ((i / 3) % 640, (i / 3) / 640);
            *v = (60 + (x / 7 + y / 5) % 120) as u8;
        }
        img
    }

    /// `img` with a `side` px square of `value` at (x, y).
    fn with_square(img: &RgbImage, x: usize, y: usize, side: usize, value: u8) -> RgbImage {
        let mut out = img.clone();
        for row in y..y + side {
            let o = (row * img.width + x) * 3;
            out.data[o..o + 3 * side].fill(value);
        }
        out
    }

    fn samples(img: &mut RgbImage, faces: &[BoxF]) -> SceneSamples {
        SceneSamples::of(&img.as_frame(), faces)
    }

    const FACE: BoxF = BoxF {
        x: 260.0,
        y: 120.0,
        w: 120.0,
        h: 120.0,
    };

    #[test]
    fn the_same_picture_or_its_noise_is_no_change() {
        let mut still = background();
        let before = samples(&mut still, &[FACE]);
        assert!(!samples(&mut still, &[FACE]).changed_since(&before));
        // Every pixel off by up to 12 grey levels (sensor noise, a re-encoded frame).
        let mut noisy = still.clone();
        for (i, v) in noisy.data.iter_mut().enumerate() {
            *v = v.saturating_add(((i * 7919) % 25) as u8).saturating_sub(12);
        }
        assert!(!samples(&mut noisy, &[FACE]).changed_since(&before));
    }

    #[test]
    fn something_new_away_from_the_faces_is_a_change_near_them_is_not() {
        let mut still = background();
        let before = samples(&mut still, &[FACE]);
        // A face-sized thing coming in at the left edge: a change.
        let mut arrived = with_square(&still, 10, 200, 48, 250);
        assert!(samples(&mut arrived, &[FACE]).changed_since(&before));
        // The same inside the followed head's neighbourhood (beside the face, on the
        // shoulders): a talking head moves there, no change.
        for (x, y) in [(200, 150), (300, 300)] {
            let mut moved = with_square(&still, x, y, 48, 250);
            assert!(
                !samples(&mut moved, &[FACE]).changed_since(&before),
                "square at ({x}, {y})"
            );
        }
        // Where the face was then counts as near a face too: a head that moved.
        let mut left = with_square(&still, 270, 130, 48, 250);
        let elsewhere = BoxF { x: 20.0, ..FACE };
        assert!(!samples(&mut left, &[elsewhere]).changed_since(&before));
        // A speck of a few pixels is not a new face.
        let mut speck = with_square(&still, 10, 200, 6, 250);
        assert!(!samples(&mut speck, &[FACE]).changed_since(&before));
    }

    #[test]
    fn a_new_frame_size_is_a_change() {
        let before = samples(&mut background(), &[]);
        let mut smaller = RgbImage::new(320, 240);
        assert!(samples(&mut smaller, &[]).changed_since(&before));
    }
}
