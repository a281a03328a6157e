//! Colour change at the frame's resolution (issue 9): how much an edit recolours the
//! part of the face an expression has no reason to recolour.
//!
//! Chroma change = mean CIELAB chromatic difference `sqrt(da*^2 + db*^2)` (L* on the
//! 0-100 scale, a*, b* in the same units; lightness changes do not count) between the
//! input and the output over the upper 55 % of the face box: brows, eyes and nose.
//!
//! Uses only OpenCV and the core's `RgbImage`, so it also builds inside
//! `trainer/examples/compositing_eval.rs`.

use anyhow::Result;
use opencv::core::{Mat, Rect, Vec3f, CV_32FC3};
use opencv::prelude::*;
use reggan::RgbImage;

/// Share of the face box, from its top, that [`upper_face`] keeps.
pub const UPPER_SHARE: f64 = 0.55;

/// The upper [`UPPER_SHARE`] of a face box (brows, eyes, nose).
pub fn upper_face(face_box: Rect) -> Rect {
    Rect::new(
        face_box.x,
        face_box.y,
        face_box.width,
        ((face_box.height as f64 * UPPER_SHARE).round() as i32).max(1),
    )
}

/// `rect` of a packed RGB image as CIELAB (CV_32FC3: L* 0-100, a*, b*).
pub fn lab(img: &RgbImage, rect: Rect) -> Result<Mat> {
    let rgb = Mat::new_rows_cols_with_data(img.height as i32, (img.width * 3) as i32, &img.data)?
        .reshape(3, img.height as i32)?
        .try_clone()?;
    let roi = Mat::roi(&rgb, rect)?.try_clone()?;
    let mut f = Mat::default();
    roi.convert_to(&mut f, CV_32FC3, 1.0 / 255.0, 0.0)?;
    let mut lab = Mat::default();
    opencv::imgproc::cvt_color_def(&f, &mut lab, opencv::imgproc::COLOR_RGB2Lab)?;
    Ok(lab)
}

/// Mean `sqrt(da*^2 + db*^2)` between two same-sized images over `rect`.
pub fn chroma_change(input: &RgbImage, output: &RgbImage, rect: Rect) -> Result<f64> {
    anyhow::ensure!(
        (input.width, input.height) == (output.width, output.height),
        "input {}x{} and output {}x{} differ in size",
        input.width,
        input.height,
        output.width,
        output.height
    );
    let (a, b) = (lab(input, rect)?, lab(output, rect)?);
    let (pa, pb) = (a.data_typed::<Vec3f>()?, b.data_typed::<Vec3f>()?);
    let sum: f64 = pa
        .iter()
        .zip(pb)
        .map(|(p, q)| (((p[1] - q[1]).powi(2) + (p[2] - q[2]).powi(2)) as f64).sqrt())
        .sum();
    Ok(sum / pa.len().max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(rgb: [u8; 3]) -> RgbImage {
        let mut img = RgbImage::new(20, 10);
        for px in img.data.chunks_exact_mut(3) {
            px.copy_from_slice(&rgb);
        }
        img
    }

    #[test]
    fn lightness_does_not_count_and_a_hue_change_does() {
        let rect = Rect::new(0, 0, 20, 10);
        let grey = filled([100, 100, 100]);
        // Greys differ in L* only.
        let lighter = filled([180, 180, 180]);
        assert!(chroma_change(&grey, &lighter, rect).unwrap() < 0.05);
        // Blue to brown at about the same luma: a large change (tens of a*b* units).
        let (blue, brown) = (filled([70, 110, 170]), filled([140, 94, 56]));
        let d = chroma_change(&blue, &brown, rect).unwrap();
        assert!(d > 30.0, "{d}");
        assert_eq!(chroma_change(&blue, &blue, rect).unwrap(), 0.0);
    }

    #[test]
    fn the_upper_face_is_the_top_55_percent() {
        assert_eq!(
            upper_face(Rect::new(10, 20, 100, 200)),
            Rect::new(10, 20, 100, 110)
        );
    }
}
