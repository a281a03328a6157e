// SPDX-License-Identifier: MIT OR Apache-2.0
//! Shared helpers of the element tests: the test photo, the shipped model, frames in
//! every caps format with GStreamer's own strides, and pixel-exact comparisons.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Once;

use gst::prelude::*;
use gst_video::prelude::*;
use reggan::{PixelLayout, RgbImage};

pub const FORMATS: [gst_video::VideoFormat; 6] = [
    gst_video::VideoFormat::Rgb,
    gst_video::VideoFormat::Bgr,
    gst_video::VideoFormat::Rgba,
    gst_video::VideoFormat::Bgra,
    gst_video::VideoFormat::Rgbx,
    gst_video::VideoFormat::Bgrx,
];

/// Byte written into row padding before a frame enters the element.
pub const PADDING: u8 = 0xA5;
/// Value of the fourth byte (alpha or x) of 4-byte formats.
pub const FOURTH: u8 = 0x7F;

pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().unwrap();
        gstreggan::plugin_register_static().expect("faceexpression registers");
    });
}

/// The shipped model, or None (with a message) when it is not there yet.
pub fn shipped_model() -> Option<PathBuf> {
    let dir = reggan::default_model_dir();
    if dir.join("model.onnx").is_file() && dir.join("model.json").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: shipped model {} missing (train it, or set REGGAN_MODEL)",
            dir.display()
        );
        None
    }
}

pub fn astronaut_path() -> Option<PathBuf> {
    let path = std::env::var_os("REGGAN_TEST_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.deps/astronaut.png")
        });
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "SKIPPED: test image {} missing (run scripts/setup.sh)",
            path.display()
        );
        None
    }
}

/// The public-domain astronaut photo (512x512, one face around x 170-230, y 70-140).
pub fn astronaut() -> Option<RgbImage> {
    Some(RgbImage::load(&astronaut_path()?).expect("astronaut.png loads"))
}

pub fn layout(format: gst_video::VideoFormat) -> PixelLayout {
    use gst_video::VideoFormat as F;
    match format {
        F::Rgb => PixelLayout::Rgb,
        F::Bgr => PixelLayout::Bgr,
        F::Rgba => PixelLayout::Rgba,
        F::Bgra => PixelLayout::Bgra,
        F::Rgbx => PixelLayout::Rgbx,
        F::Bgrx => PixelLayout::Bgrx,
        f => panic!("unexpected format {f:?}"),
    }
}

/// A buffer holding `img` in `format` with the strides GStreamer's VideoInfo gives that
/// size (RGB rows padded to 4 bytes); padding bytes are [`PADDING`].
pub fn to_buffer(
    img: &RgbImage,
    format: gst_video::VideoFormat,
) -> (gst::Buffer, gst_video::VideoInfo) {
    init();
    let info = gst_video::VideoInfo::builder(format, img.width as u32, img.height as u32)
        .build()
        .unwrap();
    let mut buffer = gst::Buffer::with_size(info.size()).unwrap();
    {
        let b = buffer.get_mut().unwrap();
        b.map_writable().unwrap().fill(PADDING);
        let mut frame = gst_video::VideoFrameRef::from_buffer_ref_writable(b, &info).unwrap();
        let stride = frame.plane_stride()[0] as usize;
        let l = layout(format);
        let (bpp, off) = (l.bytes_per_pixel(), l.rgb_offsets());
        let data = frame.plane_data_mut(0).unwrap();
        for y in 0..img.height {
            for x in 0..img.width {
                let p = img.pixel(x, y);
                let i = y * stride + x * bpp;
                for c in 0..3 {
                    data[i + off[c]] = p[c];
                }
                if bpp == 4 {
                    data[i + 3] = FOURTH;
                }
            }
        }
    }
    (buffer, info)
}

/// `img` converted by GStreamer's own converter into `format` (GStreamer's strides),
/// full range (JPEG's colorimetry, as jpegdec gives) or GStreamer's default.
pub fn to_yuv_buffer(
    img: &RgbImage,
    format: gst_video::VideoFormat,
    full_range: bool,
) -> (gst::Buffer, gst_video::VideoInfo) {
    let (rgb, rgb_info) = to_buffer(img, gst_video::VideoFormat::Rgb);
    let jpeg = "1:4:0:0".parse::<gst_video::VideoColorimetry>().unwrap();
    let info = gst_video::VideoInfo::builder(format, img.width as u32, img.height as u32);
    let info = if full_range {
        info.colorimetry(&jpeg)
    } else {
        info
    };
    let info = info.build().unwrap();
    let mut out = gst::Buffer::with_size(info.size()).unwrap();
    {
        let src = gst_video::VideoFrameRef::from_buffer_ref_readable(&rgb, &rgb_info).unwrap();
        let mut dst =
            gst_video::VideoFrameRef::from_buffer_ref_writable(out.get_mut().unwrap(), &info)
                .unwrap();
        gst_video::VideoConverter::new(&rgb_info, &info, None)
            .unwrap()
            .frame_ref(&src, &mut dst);
    }
    (out, info)
}

/// The colour of a frame buffer back as a packed RGB image (honouring the stride).
pub fn to_rgb(buffer: &gst::BufferRef, info: &gst_video::VideoInfo) -> RgbImage {
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, info).unwrap();
    let stride = frame.plane_stride()[0] as usize;
    let l = layout(info.format());
    let (bpp, off) = (l.bytes_per_pixel(), l.rgb_offsets());
    let data = frame.plane_data(0).unwrap();
    let mut img = RgbImage::new(info.width() as usize, info.height() as usize);
    for y in 0..img.height {
        for x in 0..img.width {
            let i = y * stride + x * bpp;
            for c in 0..3 {
                img.data[(y * img.width + x) * 3 + c] = data[i + off[c]];
            }
        }
    }
    img
}

/// What the core library itself makes of `img` (packed RGB, default settings but the
/// expression): the element must produce exactly this, whatever the format and stride.
pub fn core_reference(model: &std::path::Path, img: &RgbImage, expression: &str) -> RgbImage {
    let config = reggan::ProcessorConfig {
        expression: expression.into(),
        ..Default::default()
    };
    let mut p = reggan::FrameProcessor::new(model, config).unwrap();
    let mut out = img.clone();
    p.process(&mut out.as_frame()).unwrap();
    out
}

/// Counts pixels where two images differ by more than `tol` in any channel.
pub fn count_differences(a: &RgbImage, b: &RgbImage, tol: u8) -> usize {
    assert_eq!((a.width, a.height), (b.width, b.height));
    a.data
        .chunks(3)
        .zip(b.data.chunks(3))
        .filter(|(p, q)| p.iter().zip(q.iter()).any(|(x, y)| x.abs_diff(*y) > tol))
        .count()
}

pub fn bytes(buffer: &gst::BufferRef) -> Vec<u8> {
    buffer.map_readable().unwrap().to_vec()
}

/// Where two frames of the same info differ.
#[derive(Debug, Default)]
pub struct Diff {
    /// Pixels (x, y) with any colour byte changed.
    pub pixels: Vec<(usize, usize)>,
    /// Changed bytes in row padding.
    pub padding: usize,
    /// Changed alpha / x bytes.
    pub fourth: usize,
}

pub fn diff(before: &[u8], after: &[u8], info: &gst_video::VideoInfo) -> Diff {
    assert_eq!(before.len(), after.len(), "buffer size changed");
    let stride = info.stride()[0] as usize;
    let bpp = layout(info.format()).bytes_per_pixel();
    let width = info.width() as usize;
    let mut d = Diff::default();
    for (i, (a, b)) in before.iter().zip(after).enumerate() {
        if a == b {
            continue;
        }
        let (y, col) = (i / stride, i % stride);
        let x = col / bpp;
        if x >= width || y >= info.height() as usize {
            d.padding += 1;
        } else if bpp == 4 && col % 4 == 3 {
            d.fourth += 1;
        } else if d.pixels.last() != Some(&(x, y)) {
            d.pixels.push((x, y));
        }
    }
    d
}

/// The "face" region-of-interest metas of a buffer as (x, y, w, h).
pub fn face_rois(buffer: &gst::BufferRef) -> Vec<(u32, u32, u32, u32)> {
    buffer
        .iter_meta::<gst_video::VideoRegionOfInterestMeta>()
        .filter(|m| m.roi_type() == "face")
        .map(|m| m.rect())
        .collect()
}

/// A `faceexpression` with the given properties, in a harness (started: PLAYING).
pub fn harness(props: &[(&str, &dyn ToValue)], info: &gst_video::VideoInfo) -> gst_check::Harness {
    init();
    let element = gst::ElementFactory::make("faceexpression").build().unwrap();
    for (name, value) in props {
        element.set_property_from_value(name, &value.to_value());
    }
    let mut h = gst_check::Harness::with_element(&element, Some("sink"), Some("src"));
    h.set_src_caps(info.to_caps().unwrap());
    h
}

/// Pushes one frame through and returns (input bytes, output buffer).
pub fn run_one(h: &mut gst_check::Harness, buffer: gst::Buffer) -> (Vec<u8>, gst::Buffer) {
    let before = bytes(&buffer);
    let out = h.push_and_pull(buffer).expect("a frame comes out");
    (before, out)
}

/// Panics if any of `pixels` lies more than half a face from the face box `roi`: the
/// aligned crop reaches beyond the detector's box, so "far" starts half a face away.
pub fn assert_none_far(pixels: &[(usize, usize)], roi: (u32, u32, u32, u32), what: &str) {
    let near = grow(roi, 0.5);
    let far: Vec<_> = pixels
        .iter()
        .filter(|&&p| !inside(p, near))
        .take(5)
        .collect();
    assert!(
        far.is_empty(),
        "{what}: pixels changed far from the face {roi:?}: {far:?}"
    );
}

/// Grows a box by `f` times its size on every side, clipped at 0.
pub fn grow(r: (u32, u32, u32, u32), f: f32) -> (usize, usize, usize, usize) {
    let (x, y, w, h) = (r.0 as f32, r.1 as f32, r.2 as f32, r.3 as f32);
    let x0 = (x - f * w).max(0.0) as usize;
    let y0 = (y - f * h).max(0.0) as usize;
    let x1 = (x + w + f * w).ceil() as usize;
    let y1 = (y + h + f * h).ceil() as usize;
    (x0, y0, x1, y1)
}

pub fn inside(p: (usize, usize), r: (usize, usize, usize, usize)) -> bool {
    p.0 >= r.0 && p.0 < r.2 && p.1 >= r.1 && p.1 < r.3
}

/// Newest modification time of the .rs files under `dir`.
fn newest_source(dir: &std::path::Path) -> std::time::SystemTime {
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let t = if path.is_dir() {
            newest_source(&path)
        } else if path.extension().is_some_and(|e| e == "rs") {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(newest)
        } else {
            continue;
        };
        newest = newest.max(t);
    }
    newest
}

/// The folder with `libgstreggan.so`: the test binary lives in `<target>/<profile>/deps`.
/// `cargo test` does not rebuild the cdylib, so a library older than the plugin's or
/// the core's sources is an error rather than a silent test of old code.
pub fn plugin_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?.parent()?.to_path_buf();
    let so = dir.join("libgstreggan.so");
    let Ok(built) = so.metadata().and_then(|m| m.modified()) else {
        eprintln!(
            "SKIPPED: {} missing (cargo build --release -p gst-plugin-reggan)",
            so.display()
        );
        return None;
    };
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let newest = newest_source(&manifest.join("src")).max(newest_source(&manifest.join("../src")));
    assert!(
        built >= newest,
        "{} is older than the plugin or core sources: run \
         `cargo build --release -p gst-plugin-reggan` before `cargo test`",
        so.display()
    );
    Some(dir)
}

pub fn gst_launch() -> Option<PathBuf> {
    gst_tool("gst-launch-1.0")
}

/// A GStreamer command-line tool on PATH, or None (with a message).
pub fn gst_tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        eprintln!("SKIPPED: {name} not on PATH (apt install gstreamer1.0-tools)");
    }
    found
}
