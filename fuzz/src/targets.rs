// SPDX-License-Identifier: MIT OR Apache-2.0
//! The targets: `manifest`, `model_dir`, `image`, `composite`, `align`.

use std::path::{Path, PathBuf};

use ndarray::Array4;
use reggan::align::crop_to_planar;
use reggan::composite::Compositor;
use reggan::detect::{BoxF, Point};
use reggan::{
    Alignment, CompositeOptions, Detail, Device, ExpressionModel, Face, FrameMut, HeadPose,
    Manifest, PixelLayout, RgbImage, Template,
};

use crate::input::Input;
use crate::onnx::GraphSpec;

pub const TARGETS: [&str; 5] = ["manifest", "model_dir", "image", "composite", "align"];

/// Runs `target` on `data`; panics on a broken invariant. Returns a short label of the
/// outcome.
pub fn run(target: &str, data: &[u8]) -> String {
    match target {
        "manifest" => manifest(data),
        "model_dir" => model_dir(data),
        "image" => image(data),
        "composite" => composite(data),
        "align" => align(data),
        _ => panic!("unknown target {target} (known: {TARGETS:?})"),
    }
}

/// An error's message without numbers or paths, cut short: errors that differ only in
/// a value get the same label.
fn label(prefix: &str, err: &dyn std::fmt::Display) -> String {
    let scratch = scratch_base().to_string_lossy().to_string();
    // Quoted parts (the offending value in a JSON error) and numbers are left out, so
    // that labels name kinds of outcome, not values.
    let mut quote = None;
    let text: String = err
        .to_string()
        .replace(&scratch, "")
        .chars()
        .filter(|&c| match (quote, c) {
            (Some(q), c) if c == q => {
                quote = None;
                false
            }
            (Some(_), _) => false,
            (None, '"' | '`' | '\'') => {
                quote = Some(c);
                false
            }
            (None, c) => !c.is_ascii_digit(),
        })
        .take(120)
        .collect();
    format!("{prefix}: {text}")
}

fn scratch_base() -> PathBuf {
    std::env::temp_dir().join(format!("reggan-fuzz-{}-", std::process::id()))
}

/// A per-process scratch directory for targets that need files.
fn scratch(name: &str) -> PathBuf {
    let mut dir = scratch_base().into_os_string();
    dir.push(name);
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// `model.json` text: parsed and checked, then what the loader builds from it first
/// (the compositor for its template).
pub fn manifest(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    let m = match Manifest::parse(&text, Path::new("fuzz/model.json")) {
        Ok(m) => m,
        Err(e) => return label("parse", &e),
    };
    assert!(!m.expressions.is_empty(), "accepted without expressions");
    assert_eq!(
        m.template.size, m.crop_size,
        "accepted a template of another size"
    );
    match Compositor::for_template(&m.template, CompositeOptions::default()) {
        Ok(c) => assert_eq!(c.mask().len(), m.crop_size * m.crop_size),
        Err(e) => return label("compositor", &e),
    }
    format!("ok v{} flow={}", m.format_version, m.has_flow())
}

/// A model directory: a valid ONNX graph with the contract's names but possibly the
/// wrong shapes, types or batch behaviour (and sometimes corrupted bytes), with a
/// model.json that may disagree with it. Whatever loads must then run every batch size
/// with the contract's output shapes, and its output must composite without a panic.
pub fn model_dir(data: &[u8]) -> String {
    let mut input = Input::new(data);
    let size = input.choose(&[8i64, 16, 32]);
    let graph_expressions = input.range(1, 3) as i64;
    let spec = GraphSpec::from_input(&mut input, size, graph_expressions);
    let crop_size = match input.u8() % 6 {
        0 => (size * 2) as usize,
        1 => (size / 2) as usize,
        _ => size as usize,
    };
    let expressions = input.range(1, 6);
    let (format_version, outputs) = match input.u8() % 4 {
        0 => (1, vec![]),
        1 => (2, vec!["face_out"]),
        2 => (2, vec!["face_out", "flow"]),
        _ => (input.choose(&[1, 2]), vec![]),
    };
    let manifest = Manifest {
        format_version,
        family: "fuzz".into(),
        method: "fuzz".into(),
        crop_size,
        template: Template::lsrf(crop_size),
        expressions: reggan::EXPRESSIONS[..expressions]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        normalization: "rgb01".into(),
        params: Default::default(),
        training: Default::default(),
        trainer_version: "fuzz".into(),
        quality: Default::default(),
        outputs: outputs.iter().map(|s| s.to_string()).collect(),
    };
    let mut onnx = spec.to_bytes();
    // Now and then the file itself is damaged: a few bytes overwritten from the input.
    if input.u8().is_multiple_of(8) && !onnx.is_empty() {
        for _ in 0..input.range(1, 8) {
            let at = input.u32() as usize % onnx.len();
            onnx[at] = input.u8();
        }
    }
    let dir = scratch("model");
    manifest.write(&dir).expect("model.json written");
    std::fs::write(dir.join("model.onnx"), &onnx).expect("model.onnx written");

    let mut model = match ExpressionModel::load(&dir, Device::Cpu, 1) {
        Ok(m) => m,
        Err(e) => return label("load", &e),
    };
    let s = crop_size;
    for n in 1..=3 {
        let faces = Array4::<f32>::from_elem((n, 3, s, s), 0.5);
        let codes: Vec<i64> = (0..n as i64).map(|i| i % expressions as i64).collect();
        let out = match model.run_with_flow(faces.view(), &codes) {
            Ok(out) => out,
            Err(e) => return label(&format!("run n={n}"), &e),
        };
        assert_eq!(
            out.face.shape(),
            [n, 3, s, s],
            "{spec:?} loaded, but a batch of {n} gave face_out {:?}",
            out.face.shape()
        );
        if let Some(flow) = &out.flow {
            assert_eq!(
                flow.shape(),
                [n, 2, s, s],
                "{spec:?} loaded, but a batch of {n} gave flow {:?}",
                flow.shape()
            );
        }
        if n == 2 {
            composite_model_output(&manifest.template, &faces, &out);
        }
    }
    format!("loaded {:?} flow={}", spec.body, manifest.has_flow())
}

/// Composites the second face of a model's output into a small frame (its values may
/// be anything the model gave: infinities, NaN): no panic, nothing outside the face.
fn composite_model_output(template: &Template, faces: &Array4<f32>, out: &reggan::ModelOutput) {
    let mut frame_img = RgbImage::new(96, 96);
    frame_img.data.fill(90);
    let mut frame = frame_img.as_frame();
    let face = face_at(48.0, 48.0, 30.0);
    let Ok(alignment) = Alignment::for_face(&face, template) else {
        return;
    };
    let mut compositor = Compositor::for_template(template, CompositeOptions::default())
        .expect("a compositor for a loaded model's template");
    let slot = |a: &Array4<f32>| a.index_axis(ndarray::Axis(0), 1).to_owned();
    let crop = slot(faces);
    let result = slot(&out.face);
    let flow = out.flow.as_ref().map(slot);
    compositor
        .apply_with_flow(
            &mut frame,
            crop.as_slice().unwrap(),
            result.as_slice().unwrap(),
            flow.as_ref().map(|f| f.as_slice().unwrap()),
            &alignment,
            1.0,
        )
        .expect("compositing a loaded model's output");
}

/// A frontal face of eye distance `d` centred at (cx, cy).
fn face_at(cx: f32, cy: f32, d: f32) -> Face {
    let p = |x: f32, y: f32| Point {
        x: cx + x * d,
        y: cy + y * d,
    };
    Face {
        bbox: BoxF {
            x: cx - d,
            y: cy - d,
            w: 2.0 * d,
            h: 2.0 * d,
        },
        keypoints: [
            p(-0.5, -0.3),
            p(0.5, -0.3),
            p(0.0, 0.2),
            p(0.0, 0.6),
            p(-0.9, -0.1),
            p(0.9, -0.1),
        ],
        score: 0.9,
    }
}

/// Image file bytes (PNG, JPEG, BMP, ... whatever OpenCV's imread recognises).
pub fn image(data: &[u8]) -> String {
    let path = scratch("image").join("input");
    std::fs::write(&path, data).expect("image written");
    match RgbImage::load(&path) {
        Ok(img) => {
            assert!(img.width > 0 && img.height > 0, "an empty image loaded");
            assert_eq!(img.data.len(), img.width * img.height * 3);
            let kind = data.get(..2).map_or(0, |b| b[0] as u32 * 256 + b[1] as u32);
            format!("ok {kind:x}")
        }
        Err(e) => label("load", &e),
    }
}

/// A frame of random size, layout and stride, filled from the input; padding bytes and
/// alpha/x bytes are set to values the pipeline must never change.
struct TestFrame {
    data: Vec<u8>,
    width: usize,
    height: usize,
    stride: usize,
    layout: PixelLayout,
}

const PADDING: u8 = 0xA5;
const FOURTH: u8 = 0x5A;

impl TestFrame {
    fn from_input(input: &mut Input, max_side: usize) -> Self {
        let layout = input.choose(&PixelLayout::ALL);
        let width = input.range(1, max_side);
        let height = input.range(1, max_side);
        let bpp = layout.bytes_per_pixel();
        let stride = width * bpp + input.range(0, 9);
        let mut data = vec![PADDING; stride * height];
        let seed = input.u32() | 1;
        let mut s = seed;
        for y in 0..height {
            for x in 0..width {
                let i = y * stride + x * bpp;
                for c in 0..3 {
                    s ^= s << 13;
                    s ^= s >> 17;
                    s ^= s << 5;
                    // A smooth gradient with noise: something a detector-free face crop
                    // can change visibly.
                    data[i + c] = ((x * 3 + y * 2 + c * 40) as u32 % 200 + (s >> 28)) as u8;
                }
                if bpp == 4 {
                    data[i + 3] = FOURTH;
                }
            }
        }
        // The last row may be cut at the row's end, as GStreamer allows.
        if input.u8().is_multiple_of(4) {
            data.truncate(stride * (height - 1) + width * bpp);
        }
        TestFrame {
            data,
            width,
            height,
            stride,
            layout,
        }
    }

    fn frame(&mut self) -> FrameMut<'_> {
        FrameMut::new(
            &mut self.data,
            self.width,
            self.height,
            self.stride,
            self.layout,
        )
        .expect("a valid frame")
    }

    /// Every byte that differs from `before` lies in `reached`, the rectangle the
    /// compositor says its change could reach (what a YUV caller writes back).
    fn check_changes_inside(&self, before: &[u8], reached: Option<reggan::Roi>) {
        let bpp = self.layout.bytes_per_pixel();
        for (i, (a, b)) in self.data.iter().zip(before).enumerate() {
            if a == b {
                continue;
            }
            let (x, y) = ((i % self.stride) / bpp, i / self.stride);
            let inside =
                reached.is_some_and(|r| x >= r.x && x < r.x + r.w && y >= r.y && y < r.y + r.h);
            assert!(inside, "pixel ({x}, {y}) changed outside {reached:?}");
        }
    }

    /// Checks that no padding or alpha/x byte differs from what was written.
    fn check_untouched_bytes(&self) {
        let bpp = self.layout.bytes_per_pixel();
        for (i, &b) in self.data.iter().enumerate() {
            let col = i % self.stride;
            if col >= self.width * bpp {
                assert_eq!(b, PADDING, "padding byte {i} changed");
            } else if bpp == 4 && col % 4 == 3 {
                assert_eq!(b, FOURTH, "alpha/x byte {i} changed");
            }
        }
    }
}

fn face_from_input(input: &mut Input, width: usize, height: usize) -> Face {
    let (w, h) = (width as f32, height as f32);
    let point = |input: &mut Input| Point {
        x: input.f32_in(-0.5 * w, 1.5 * w),
        y: input.f32_in(-0.5 * h, 1.5 * h),
    };
    let keypoints = [(); 6].map(|_| point(input));
    let corner = point(input);
    Face {
        bbox: BoxF {
            x: corner.x,
            y: corner.y,
            w: input.f32_in(0.0, w),
            h: input.f32_in(0.0, h),
        },
        keypoints,
        score: 0.9,
    }
}

fn template_from_input(input: &mut Input) -> Template {
    let size = input.choose(&[1usize, 2, 8, 16, 32, 64]);
    let mut t = Template::lsrf(size);
    if input.u8().is_multiple_of(4) {
        let s = size as f32;
        for p in t.points.iter_mut() {
            *p = [input.f32_in(-s, 2.0 * s), input.f32_in(-s, 2.0 * s)];
        }
    }
    t
}

/// Values for a model output or flow: mostly in `lo..hi`, sometimes NaN or infinite.
fn values(input: &mut Input, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    let bytes = input.rest();
    (0..n)
        .map(
            |i| match bytes.get(i % bytes.len().max(1)).copied().unwrap_or(128) {
                0 => f32::NAN,
                1 => f32::INFINITY,
                2 => f32::NEG_INFINITY,
                b => lo + (hi - lo) * b as f32 / 255.0 + (i % 7) as f32 * 1e-3,
            },
        )
        .collect()
}

/// The compositor with random frame geometry, layouts and strides, face geometry,
/// options, model outputs and flows: padding and alpha never change, intensity 0
/// changes nothing.
pub fn composite(data: &[u8]) -> String {
    let mut input = Input::new(data);
    let mut tf = TestFrame::from_input(&mut input, 160);
    let template = template_from_input(&mut input);
    let options = CompositeOptions {
        detail: input.choose(&[Detail::Off, Detail::Fine, Detail::Full]),
        keep_colour: input.u8().is_multiple_of(2),
    };
    let face = face_from_input(&mut input, tf.width, tf.height);
    let intensity = match input.u8() % 5 {
        0 => 0.0,
        _ => input.f32_in(0.0, 2.0),
    };
    let with_flow = input.u8().is_multiple_of(2);
    let alignment = match Alignment::for_face(&face, &template) {
        Ok(a) => a,
        Err(e) => return label("align", &e),
    };
    let mut compositor = match Compositor::for_template(&template, options) {
        Ok(c) => c,
        Err(e) => return label("compositor", &e),
    };
    let s = template.size;
    let mut crop = vec![0.0; 3 * s * s];
    {
        let frame = tf.frame();
        let warped = match alignment.warp_crop(&frame) {
            Ok(w) => w,
            Err(e) => return label("warp", &e),
        };
        crop_to_planar(&warped, frame.layout(), &mut crop).expect("crop of the template's size");
    }
    let out = values(&mut input, 3 * s * s, -0.2, 1.2);
    let flow = with_flow.then(|| values(&mut input, 2 * s * s, -6.0, 6.0));
    let before = tf.data.clone();
    let result = {
        let mut frame = tf.frame();
        compositor.apply_with_flow(
            &mut frame,
            &crop,
            &out,
            flow.as_deref(),
            &alignment,
            intensity,
        )
    };
    tf.check_untouched_bytes();
    if intensity == 0.0 {
        assert!(tf.data == before, "intensity 0 changed the frame");
    }
    if let Ok(reached) = &result {
        tf.check_changes_inside(&before, *reached);
    }
    match result {
        Ok(_) => format!(
            "ok flow={with_flow} changed={}",
            tf.data != before && intensity != 0.0
        ),
        Err(e) => label("composite", &e),
    }
}

/// The aligner and the head pose with random keypoints (degenerate, far outside the
/// frame, NaN) on frames of random geometry: the crop is SxS, the frame is only read,
/// and a transform that exists maps crop -> frame -> crop back to where it was.
pub fn align(data: &[u8]) -> String {
    let mut input = Input::new(data);
    let mut tf = TestFrame::from_input(&mut input, 300);
    let template = template_from_input(&mut input);
    let face = face_from_input(&mut input, tf.width, tf.height);
    let pose = HeadPose::estimate(&face.keypoints);
    let strength = reggan::pose::yaw_strength(pose.yaw, input.f32_in(0.0, 90.0));
    assert!(
        strength.is_nan() || (0.0..=1.0).contains(&strength),
        "yaw strength {strength} out of [0, 1]"
    );
    let alignment = match Alignment::for_face(&face, &template) {
        Ok(a) => a,
        Err(e) => return label("align", &e),
    };
    let before = tf.data.clone();
    let frame = tf.frame();
    let crop = match alignment.crop_rgb(&frame) {
        Ok(c) => c,
        Err(e) => return label("crop", &e),
    };
    assert_eq!((crop.width, crop.height), (template.size, template.size));
    assert!(tf.data == before, "cropping changed the frame");
    let finite = alignment
        .to_crop
        .iter()
        .chain(&alignment.to_frame)
        .flatten()
        .all(|v| v.is_finite());
    if finite {
        // Checked where f32 keeps the round trip exact enough: frame points near the
        // frame, scales a face can have.
        let p = Point { x: 3.0, y: 5.0 };
        let mid = reggan::align::apply(&alignment.to_frame, p);
        let q = reggan::align::apply(&alignment.to_crop, mid);
        let scale = alignment.to_frame[0][0].hypot(alignment.to_frame[1][0]);
        if scale > 1e-2 && scale < 1e2 && mid.x.abs() < 1e3 && mid.y.abs() < 1e3 {
            assert!(
                (q.x - p.x).abs() < 0.05 && (q.y - p.y).abs() < 0.05,
                "crop -> frame -> crop moved {p:?} to {q:?} ({alignment:?})"
            );
        }
    }
    format!("ok finite={finite}")
}
