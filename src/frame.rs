//! Borrowed views of packed 8-bit video frames with any row stride, and their OpenCV
//! headers. No pixel is copied to look at a frame: detection and alignment read the
//! caller's memory directly, and compositing writes back into it.

use opencv::core::{Mat, Rect, CV_64F, CV_8UC3, CV_8UC4};
use opencv::prelude::*;

use crate::error::{Error, Result};

/// The packed formats the processor accepts (GStreamer's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PixelLayout {
    Rgb,
    Bgr,
    Rgba,
    Bgra,
    Rgbx,
    Bgrx,
}

impl PixelLayout {
    pub const ALL: [PixelLayout; 6] = [
        PixelLayout::Rgb,
        PixelLayout::Bgr,
        PixelLayout::Rgba,
        PixelLayout::Bgra,
        PixelLayout::Rgbx,
        PixelLayout::Bgrx,
    ];

    pub fn bytes_per_pixel(self) -> usize {
        match self {
            PixelLayout::Rgb | PixelLayout::Bgr => 3,
            _ => 4,
        }
    }

    /// Byte offsets of red, green and blue inside one pixel.
    pub fn rgb_offsets(self) -> [usize; 3] {
        match self {
            PixelLayout::Rgb | PixelLayout::Rgba | PixelLayout::Rgbx => [0, 1, 2],
            PixelLayout::Bgr | PixelLayout::Bgra | PixelLayout::Bgrx => [2, 1, 0],
        }
    }

    /// OpenCV's colour-conversion code to grey for this layout (BT.601 weights).
    pub(crate) fn to_grey_code(self) -> i32 {
        use opencv::imgproc;
        match (self.bytes_per_pixel(), self.rgb_offsets()[0]) {
            (3, 0) => imgproc::COLOR_RGB2GRAY,
            (3, _) => imgproc::COLOR_BGR2GRAY,
            (_, 0) => imgproc::COLOR_RGBA2GRAY,
            _ => imgproc::COLOR_BGRA2GRAY,
        }
    }

    pub(crate) fn cv_type(self) -> i32 {
        if self.bytes_per_pixel() == 3 {
            CV_8UC3
        } else {
            CV_8UC4
        }
    }
}

/// A mutable packed frame. `stride` is the distance in bytes between row starts and may
/// exceed `width * bytes_per_pixel` (GStreamer pads rows to 4 bytes, e.g. RGB at 641 px).
pub struct FrameMut<'a> {
    data: &'a mut [u8],
    width: usize,
    height: usize,
    stride: usize,
    layout: PixelLayout,
}

impl<'a> FrameMut<'a> {
    pub fn new(
        data: &'a mut [u8],
        width: usize,
        height: usize,
        stride: usize,
        layout: PixelLayout,
    ) -> Result<Self> {
        if width == 0 || height == 0 {
            return Err(Error::Frame(format!("empty frame {width}x{height}")));
        }
        let row = width * layout.bytes_per_pixel();
        if stride < row {
            return Err(Error::Frame(format!(
                "stride {stride} is shorter than a row of {width} {layout:?} pixels ({row} bytes)"
            )));
        }
        let needed = stride * (height - 1) + row;
        if data.len() < needed {
            return Err(Error::Frame(format!(
                "buffer of {} bytes is too small for {width}x{height} {layout:?} with stride {stride} ({needed} needed)",
                data.len()
            )));
        }
        Ok(FrameMut {
            data,
            width,
            height,
            stride,
            layout,
        })
    }

    pub fn width(&self) -> usize {
        self.width
    }
    pub fn height(&self) -> usize {
        self.height
    }
    pub fn stride(&self) -> usize {
        self.stride
    }
    pub fn layout(&self) -> PixelLayout {
        self.layout
    }
    pub fn data(&self) -> &[u8] {
        self.data
    }
    pub fn data_mut(&mut self) -> &mut [u8] {
        self.data
    }

    /// An OpenCV header over the frame's memory (no copy). Only read through it: the
    /// header borrows `self` immutably, and OpenCV functions that take `&Mat` as input
    /// do not write.
    pub fn as_mat(&self) -> Result<Mat> {
        // SAFETY: the buffer holds `height` rows of `stride` bytes (checked in `new`),
        // the Mat does not outlive `self` in any caller of this crate, and it is only
        // passed to OpenCV as an input array.
        let mat = unsafe {
            Mat::new_rows_cols_with_data_unsafe(
                self.height as i32,
                self.width as i32,
                self.layout.cv_type(),
                self.data.as_ptr() as *mut std::ffi::c_void,
                self.stride,
            )?
        };
        Ok(mat)
    }
}

/// An owned, tightly packed RGB image (used for crops, test images and the CLI).
#[derive(Clone, Debug, PartialEq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl RgbImage {
    pub fn new(width: usize, height: usize) -> Self {
        RgbImage {
            width,
            height,
            data: vec![0; width * height * 3],
        }
    }

    pub fn as_frame(&mut self) -> FrameMut<'_> {
        let (w, h) = (self.width, self.height);
        FrameMut::new(&mut self.data, w, h, w * 3, PixelLayout::Rgb)
            .expect("packed RGB image is a valid frame")
    }

    /// Reads a PNG/JPEG (anything OpenCV's imgcodecs reads) as RGB.
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let bgr = opencv::imgcodecs::imread(path, opencv::imgcodecs::IMREAD_COLOR)?;
        if bgr.empty() {
            return Err(Error::Io {
                path: path.into(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "not a readable image",
                ),
            });
        }
        Self::from_bgr_mat(&bgr)
    }

    pub fn from_bgr_mat(bgr: &Mat) -> Result<Self> {
        let mut rgb = Mat::default();
        opencv::imgproc::cvt_color_def(bgr, &mut rgb, opencv::imgproc::COLOR_BGR2RGB)?;
        let rgb = if rgb.is_continuous() {
            rgb
        } else {
            rgb.try_clone()?
        };
        Ok(RgbImage {
            width: rgb.cols() as usize,
            height: rgb.rows() as usize,
            data: rgb.data_bytes()?.to_vec(),
        })
    }

    pub fn to_bgr_mat(&self) -> Result<Mat> {
        let mut img = self.clone();
        let frame = img.as_frame();
        let mut bgr = Mat::default();
        opencv::imgproc::cvt_color_def(&frame.as_mat()?, &mut bgr, opencv::imgproc::COLOR_RGB2BGR)?;
        Ok(bgr)
    }

    /// Writes the image; the format follows the extension.
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        let bgr = self.to_bgr_mat()?;
        let ok = opencv::imgcodecs::imwrite(path, &bgr, &opencv::core::Vector::new())?;
        if !ok {
            return Err(Error::Io {
                path: path.into(),
                source: std::io::Error::other(
                    "OpenCV could not write this file (unknown extension?)",
                ),
            });
        }
        Ok(())
    }

    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }
}

/// Sharpness of the pixels of `rect` in an image: the variance of the Laplacian
/// (OpenCV's 4-neighbour kernel, replicated border) of their grey values (OpenCV's
/// RGB-to-grey, 0..255). The evaluation's sharpness ratios are this measure after over
/// before. Errors when `rect` is not inside the image.
pub fn laplacian_variance(img: &RgbImage, rect: Rect) -> Result<f64> {
    let rgb = Mat::new_rows_cols_with_data(img.height as i32, (img.width * 3) as i32, &img.data)?
        .reshape(3, img.height as i32)?
        .try_clone()?;
    let roi = Mat::roi(&rgb, rect)?.try_clone()?;
    let mut grey = Mat::default();
    opencv::imgproc::cvt_color_def(&roi, &mut grey, opencv::imgproc::COLOR_RGB2GRAY)?;
    let mut lap = Mat::default();
    opencv::imgproc::laplacian(
        &grey,
        &mut lap,
        CV_64F,
        1,
        1.0,
        0.0,
        opencv::core::BORDER_REPLICATE,
    )?;
    let (mut mean, mut dev) = (Mat::default(), Mat::default());
    opencv::core::mean_std_dev(&lap, &mut mean, &mut dev, &opencv::core::no_array())?;
    let sd = *dev.at_2d::<f64>(0, 0)?;
    Ok(sd * sd)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same measure computed directly: integer grey (OpenCV's 15-bit fixed-point weights),
    /// 4-neighbour Laplacian with replicated border, population variance.
    fn direct(img: &RgbImage, (x0, y0, w, h): (usize, usize, usize, usize)) -> f64 {
        let grey = |x: usize, y: usize| {
            let [r, g, b] = img.pixel(x0 + x, y0 + y);
            ((r as u32 * 9798 + g as u32 * 19235 + b as u32 * 3735 + (1 << 14)) >> 15) as f64
        };
        let mut lap = Vec::new();
        for y in 0..h {
            for x in 0..w {
                let at = |dx: isize, dy: isize| {
                    let cx = (x as isize + dx).clamp(0, w as isize - 1) as usize;
                    let cy = (y as isize + dy).clamp(0, h as isize - 1) as usize;
                    grey(cx, cy)
                };
                lap.push(at(-1, 0) + at(1, 0) + at(0, -1) + at(0, 1) - 4.0 * at(0, 0));
            }
        }
        let n = lap.len() as f64;
        let mean = lap.iter().sum::<f64>() / n;
        lap.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n
    }

    #[test]
    fn laplacian_variance_is_the_variance_of_the_grey_laplacian() {
        let (w, h) = (23, 17);
        let mut img = RgbImage::new(w, h);
        for (i, v) in img.data.iter_mut().enumerate() {
            *v = ((i * 37 + (i / 5) * (i / 7)) % 256) as u8;
        }
        for (x, y, rw, rh) in [(0, 0, w, h), (3, 2, 11, 9), (10, 5, 13, 12)] {
            let rect = Rect::new(x as i32, y as i32, rw as i32, rh as i32);
            let got = laplacian_variance(&img, rect).unwrap();
            let want = direct(&img, (x, y, rw, rh));
            assert!(
                (got - want).abs() <= 1e-9 * want.max(1.0),
                "{got} vs {want}"
            );
        }
        let flat = RgbImage {
            width: 8,
            height: 8,
            data: vec![77; 8 * 8 * 3],
        };
        assert_eq!(
            laplacian_variance(&flat, Rect::new(0, 0, 8, 8)).unwrap(),
            0.0
        );
        assert!(laplacian_variance(&flat, Rect::new(4, 4, 8, 8)).is_err());
    }
}
