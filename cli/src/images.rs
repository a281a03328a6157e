//! Small image operations the CLI needs around the core processor: side-by-side
//! strips, pasting into a larger frame, camera moves, crops with labels. All on packed
//! RGB `RgbImage`s; OpenCV does the resampling and text.

use anyhow::Result;
use opencv::core::{Mat, Point, Rect, Scalar, Size, CV_8UC3};
use opencv::imgproc;
use opencv::prelude::*;
use reggan::RgbImage;

/// An OpenCV RGB Mat that owns a copy of the image.
pub fn to_mat(image: &RgbImage) -> Result<Mat> {
    let mut img = image.clone();
    let mat = img.as_frame().as_mat()?.try_clone()?;
    Ok(mat)
}

/// Back from a continuous (or not) 8-bit, 3-channel RGB Mat.
pub fn from_mat(mat: &Mat) -> Result<RgbImage> {
    let mat = if mat.is_continuous() {
        mat.clone()
    } else {
        mat.try_clone()?
    };
    Ok(RgbImage {
        width: mat.cols() as usize,
        height: mat.rows() as usize,
        data: mat.data_bytes()?.to_vec(),
    })
}

/// Images next to each other, top-aligned, on black (heights may differ).
pub fn hconcat(images: &[&RgbImage]) -> RgbImage {
    let width = images.iter().map(|i| i.width).sum();
    let height = images.iter().map(|i| i.height).max().unwrap_or(0);
    let mut out = RgbImage::new(width, height);
    let mut x0 = 0;
    for image in images {
        paste(&mut out, image, x0, 0);
        x0 += image.width;
    }
    out
}

/// Copies `src` into `dst` with its top-left corner at (x0, y0); parts outside `dst` are cut.
pub fn paste(dst: &mut RgbImage, src: &RgbImage, x0: usize, y0: usize) {
    let w = src.width.min(dst.width.saturating_sub(x0));
    for y in 0..src.height.min(dst.height.saturating_sub(y0)) {
        let from = y * src.width * 3;
        let to = ((y0 + y) * dst.width + x0) * 3;
        dst.data[to..to + w * 3].copy_from_slice(&src.data[from..from + w * 3]);
    }
}

pub fn resize(image: &RgbImage, width: usize, height: usize) -> Result<RgbImage> {
    let mut out = Mat::default();
    imgproc::resize(
        &to_mat(image)?,
        &mut out,
        Size::new(width as i32, height as i32),
        0.0,
        0.0,
        imgproc::INTER_AREA,
    )?;
    from_mat(&out)
}

/// `image` scaled to `height` rows and centred on a grey `width`x`height` frame.
pub fn letterbox(image: &RgbImage, width: usize, height: usize) -> Result<RgbImage> {
    let scaled_w = (image.width * height / image.height).min(width);
    let scaled = resize(image, scaled_w, height)?;
    let mut frame = RgbImage {
        width,
        height,
        data: vec![96; width * height * 3],
    };
    paste(&mut frame, &scaled, (width - scaled_w) / 2, 0);
    Ok(frame)
}

/// A virtual camera looking at `center` (source pixels), magnifying by `zoom` and rolled
/// by `angle_deg`, rendered into a `width`x`height` frame.
pub fn camera_view(
    image: &Mat,
    center: (f64, f64),
    zoom: f64,
    angle_deg: f64,
    width: usize,
    height: usize,
) -> Result<RgbImage> {
    let (sin, cos) = angle_deg.to_radians().sin_cos();
    let (a, b) = (zoom * cos, zoom * sin);
    // dst = zoom * R * (src - center) + frame centre
    let tx = width as f64 / 2.0 - (a * center.0 - b * center.1);
    let ty = height as f64 / 2.0 - (b * center.0 + a * center.1);
    let m = Mat::from_slice_2d(&[[a, -b, tx], [b, a, ty]])?;
    let mut out = Mat::default();
    imgproc::warp_affine(
        image,
        &mut out,
        &m,
        Size::new(width as i32, height as i32),
        imgproc::INTER_LINEAR,
        opencv::core::BORDER_REFLECT_101,
        Scalar::default(),
    )?;
    from_mat(&out)
}

/// A square crop of side `side` centred at (cx, cy), moved inside the image.
pub fn square_crop(image: &RgbImage, cx: f32, cy: f32, side: usize) -> Result<RgbImage> {
    let side = side.min(image.width).min(image.height);
    let clamp =
        |c: f32, len: usize| ((c - side as f32 / 2.0).round().max(0.0) as usize).min(len - side);
    let (x0, y0) = (clamp(cx, image.width), clamp(cy, image.height));
    let mat = to_mat(image)?;
    let roi = Mat::roi(
        &mat,
        Rect::new(x0 as i32, y0 as i32, side as i32, side as i32),
    )?;
    from_mat(&roi.try_clone()?)
}

/// Writes `text` in the top-left corner, white on a dark band so it reads on any photo.
pub fn label(image: &RgbImage, text: &str) -> Result<RgbImage> {
    let mut mat = to_mat(image)?;
    let band = Rect::new(0, 0, image.width as i32, 30);
    imgproc::rectangle(
        &mut mat,
        band,
        Scalar::new(0.0, 0.0, 0.0, 0.0),
        imgproc::FILLED,
        imgproc::LINE_8,
        0,
    )?;
    imgproc::put_text(
        &mut mat,
        text,
        Point::new(8, 22),
        imgproc::FONT_HERSHEY_SIMPLEX,
        0.7,
        Scalar::new(255.0, 255.0, 255.0, 0.0),
        2,
        imgproc::LINE_AA,
        false,
    )?;
    debug_assert_eq!(mat.typ(), CV_8UC3);
    from_mat(&mat)
}
