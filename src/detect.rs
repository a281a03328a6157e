//! Face detection: MediaPipe BlazeFace (box + six keypoints) through ONNX Runtime (the
//! same runtime and execution providers as the expression model) or OpenCV `dnn`, with
//! OpenCV's Haar cascade as a fallback that needs no network file.
//!
//! The anchor layout, decoding and weighted non-maximum suppression follow MediaPipe's
//! `face_detection_{front,back}` graphs (SsdAnchorsCalculator, TensorsToDetections,
//! WeightedNms). They are plain functions so they can be checked by hand.

use std::path::{Path, PathBuf};

use opencv::core::{Mat, Rect, Scalar, Size, Vector, CV_32F};
use opencv::prelude::*;
use opencv::{dnn, imgproc, objdetect};

use crate::error::{Error, Result};
use crate::frame::FrameMut;
use crate::model::{build_session, Device};

/// A point in frame pixels.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Point {
    pub x: f32,
    pub y: f32,
}

/// An axis-aligned box in frame pixels.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct BoxF {
    pub x: f32,
    pub y: f32,
    pub w: f32,
    pub h: f32,
}

impl BoxF {
    pub fn area(&self) -> f32 {
        self.w.max(0.0) * self.h.max(0.0)
    }

    pub fn iou(&self, o: &BoxF) -> f32 {
        let x0 = self.x.max(o.x);
        let y0 = self.y.max(o.y);
        let x1 = (self.x + self.w).min(o.x + o.w);
        let y1 = (self.y + self.h).min(o.y + o.h);
        let inter = (x1 - x0).max(0.0) * (y1 - y0).max(0.0);
        let union = self.area() + o.area() - inter;
        if union <= 0.0 {
            0.0
        } else {
            inter / union
        }
    }
}

/// Keypoint order of BlazeFace (image-left eye first when the face looks at the camera).
pub const KEYPOINT_NAMES: [&str; 6] = [
    "eye_right",
    "eye_left",
    "nose",
    "mouth",
    "ear_right",
    "ear_left",
];

/// One detected face: box, the six BlazeFace keypoints, and a confidence in [0, 1].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Face {
    pub bbox: BoxF,
    pub keypoints: [Point; 6],
    pub score: f32,
}

impl Face {
    /// The same face moved by (dx, dy) pixels.
    pub fn translated(&self, dx: f32, dy: f32) -> Face {
        let mut f = self.clone();
        f.bbox.x += dx;
        f.bbox.y += dy;
        for k in f.keypoints.iter_mut() {
            k.x += dx;
            k.y += dy;
        }
        f
    }

    /// Eyes (image-left, image-right), nose tip and mouth centre: the points alignment uses.
    pub fn alignment_points(&self) -> [Point; 4] {
        let [a, b, nose, mouth, _, _] = self.keypoints;
        let (left, right) = if a.x <= b.x { (a, b) } else { (b, a) };
        [left, right, nose, mouth]
    }
}

// ---------------------------------------------------------------------------------------
// Anchors and decoding (pure functions)

/// An SSD anchor centre in normalised [0, 1] input coordinates (fixed size 1x1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Anchor {
    pub cx: f32,
    pub cy: f32,
}

/// MediaPipe's SSD anchors for BlazeFace: one grid per distinct stride, and for each
/// cell as many anchors as layers share that stride, times two (aspect ratio 1 plus the
/// interpolated scale). Front model: strides 8,16,16,16 -> 16x16x2 + 8x8x6 = 896.
pub fn ssd_anchors(input_size: usize, strides: &[usize]) -> Vec<Anchor> {
    let mut anchors = Vec::new();
    let mut layer = 0;
    while layer < strides.len() {
        let stride = strides[layer];
        let mut same = 0;
        while layer < strides.len() && strides[layer] == stride {
            same += 1;
            layer += 1;
        }
        let cells = input_size.div_ceil(stride);
        for y in 0..cells {
            for x in 0..cells {
                for _ in 0..2 * same {
                    anchors.push(Anchor {
                        cx: (x as f32 + 0.5) / cells as f32,
                        cy: (y as f32 + 0.5) / cells as f32,
                    });
                }
            }
        }
    }
    anchors
}

/// Numerically safe logistic function (MediaPipe clips raw scores to ±100).
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x.clamp(-100.0, 100.0)).exp())
}

/// Decodes one anchor's 16 regressor values into a face in normalised input coordinates.
pub fn decode_anchor(raw: &[f32], anchor: &Anchor, input_size: f32, score: f32) -> Face {
    let s = input_size;
    let cx = raw[0] / s + anchor.cx;
    let cy = raw[1] / s + anchor.cy;
    let w = raw[2] / s;
    let h = raw[3] / s;
    let mut keypoints = [Point::default(); 6];
    for (k, kp) in keypoints.iter_mut().enumerate() {
        kp.x = raw[4 + 2 * k] / s + anchor.cx;
        kp.y = raw[5 + 2 * k] / s + anchor.cy;
    }
    Face {
        bbox: BoxF {
            x: cx - w / 2.0,
            y: cy - h / 2.0,
            w,
            h,
        },
        keypoints,
        score,
    }
}

/// Weighted NMS: faces overlapping the best remaining one by IoU >= `iou_threshold` are
/// merged into it, box and keypoints averaged with their scores as weights; the merged
/// face keeps the highest score. Output is sorted by score, best first.
pub fn weighted_nms(mut faces: Vec<Face>, iou_threshold: f32) -> Vec<Face> {
    faces.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut out = Vec::new();
    let mut used = vec![false; faces.len()];
    for i in 0..faces.len() {
        if used[i] {
            continue;
        }
        let mut members = vec![i];
        for j in i + 1..faces.len() {
            if !used[j] && faces[i].bbox.iou(&faces[j].bbox) >= iou_threshold {
                members.push(j);
            }
        }
        let total: f32 = members.iter().map(|&m| faces[m].score).sum();
        let mut merged = Face {
            bbox: BoxF::default(),
            keypoints: [Point::default(); 6],
            score: faces[i].score,
        };
        for &m in &members {
            used[m] = true;
            let f = &faces[m];
            let wgt = f.score / total;
            merged.bbox.x += f.bbox.x * wgt;
            merged.bbox.y += f.bbox.y * wgt;
            merged.bbox.w += f.bbox.w * wgt;
            merged.bbox.h += f.bbox.h * wgt;
            for (k, kp) in merged.keypoints.iter_mut().enumerate() {
                kp.x += f.keypoints[k].x * wgt;
                kp.y += f.keypoints[k].y * wgt;
            }
        }
        out.push(merged);
    }
    out
}

/// How a frame was fitted into the square network input (aspect kept, centred, padded).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    pub scale: f32,
    pub pad_x: f32,
    pub pad_y: f32,
    pub input_size: usize,
}

impl Letterbox {
    pub fn new(width: usize, height: usize, input_size: usize) -> Self {
        let scale = input_size as f32 / width.max(height) as f32;
        Letterbox {
            scale,
            pad_x: (input_size as f32 - width as f32 * scale) / 2.0,
            pad_y: (input_size as f32 - height as f32 * scale) / 2.0,
            input_size,
        }
    }

    /// Normalised input coordinates -> frame pixels.
    pub fn to_frame(&self, p: Point) -> Point {
        let s = self.input_size as f32;
        Point {
            x: (p.x * s - self.pad_x) / self.scale,
            y: (p.y * s - self.pad_y) / self.scale,
        }
    }

    pub fn face_to_frame(&self, f: &Face) -> Face {
        let tl = self.to_frame(Point {
            x: f.bbox.x,
            y: f.bbox.y,
        });
        let br = self.to_frame(Point {
            x: f.bbox.x + f.bbox.w,
            y: f.bbox.y + f.bbox.h,
        });
        Face {
            bbox: BoxF {
                x: tl.x,
                y: tl.y,
                w: br.x - tl.x,
                h: br.y - tl.y,
            },
            keypoints: f.keypoints.map(|k| self.to_frame(k)),
            score: f.score,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Detectors

/// Which BlazeFace models a full-frame search runs. Video splits a full search over two
/// frames (the front model on one, the back model on another) so that no one frame
/// pays for both; a detector with one model runs it for either pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchPass {
    /// Every model loaded.
    All,
    /// The front model (128 px input): faces over about a fifth of the frame.
    Large,
    /// The back model (256 px input, four times the cost): smaller, farther faces.
    Small,
}

/// Which detector runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DetectorKind {
    /// Both BlazeFace models on full-frame searches, merged: front (128 px input, faces
    /// that fill a good part of the frame) and back (256 px, smaller, farther faces).
    #[default]
    Auto,
    /// BlazeFace front model: faces that fill a good part of the frame (webcam).
    BlazeFaceFront,
    /// BlazeFace back model: smaller, farther faces.
    BlazeFaceBack,
    /// OpenCV Haar cascade (frontal faces only; keypoints estimated from the box).
    Haar,
}

impl std::str::FromStr for DetectorKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(DetectorKind::Auto),
            "blazeface-front" | "front" => Ok(DetectorKind::BlazeFaceFront),
            "blazeface-back" | "back" => Ok(DetectorKind::BlazeFaceBack),
            "haar" => Ok(DetectorKind::Haar),
            _ => Err(format!("unknown detector '{s}' (auto, front, back, haar)")),
        }
    }
}

/// Where detector files live: `$REGGAN_BLAZEFACE_DIR` / `$REGGAN_HAAR_DIR`, else the
/// installed copy, else the locations `scripts/setup.sh` installs to (recorded at build
/// time; search order: [`crate::install`]). The Haar cascades come from Debian's
/// opencv-data.
pub fn default_blazeface_dir() -> PathBuf {
    crate::install::blazeface_dir()
}

pub fn default_haar_dir() -> PathBuf {
    std::env::var_os("REGGAN_HAAR_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/share/opencv4/haarcascades"))
}

/// What runs the BlazeFace networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetectorBackend {
    /// ONNX Runtime on this device (`auto`: TensorRT, CUDA, then CPU), with this many
    /// intra-op threads: about 5 times faster than OpenCV `dnn` on a CPU.
    OnnxRuntime { device: Device, threads: usize },
    /// OpenCV `dnn` (CPU).
    OpenCvDnn,
}

impl Default for DetectorBackend {
    fn default() -> Self {
        DetectorBackend::OnnxRuntime {
            device: Device::Auto,
            threads: 1,
        }
    }
}

enum Network {
    Dnn(dnn::Net),
    Ort(Box<ort::session::Session>),
}

struct BlazeFace {
    net: Network,
    input_size: usize,
    anchors: Vec<Anchor>,
    output_names: Vector<String>,
    resized: Mat,
    /// The region halved, and halved again, on the way to `resized`.
    shrunk: Mat,
    halved: Mat,
    blob: Mat,
}

impl BlazeFace {
    fn load(
        path: &Path,
        input_size: usize,
        strides: &[usize],
        backend: DetectorBackend,
    ) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::Detector {
                path: path.into(),
                reason: "file not found (run scripts/setup.sh)".into(),
            });
        }
        let net = match backend {
            DetectorBackend::OpenCvDnn => {
                Network::Dnn(dnn::read_net_from_onnx(path).map_err(|e| Error::Detector {
                    path: path.into(),
                    reason: e.to_string(),
                })?)
            }
            DetectorBackend::OnnxRuntime { device, threads } => {
                let (session, _) =
                    build_session(path, device, threads).map_err(|e| Error::Detector {
                        path: path.into(),
                        reason: e.to_string(),
                    })?;
                Network::Ort(Box::new(session))
            }
        };
        // Identity:0 / Identity_1:0 are the scores of the two anchor groups,
        // Identity_2:0 / Identity_3:0 their 16 regressor values.
        let output_names = Vector::<String>::from_iter([
            "Identity:0",
            "Identity_1:0",
            "Identity_2:0",
            "Identity_3:0",
        ]);
        let blob = Mat::new_nd_with_default(
            &[1, input_size as i32, input_size as i32, 3],
            CV_32F,
            Scalar::all(0.0),
        )?;
        Ok(BlazeFace {
            net,
            input_size,
            anchors: ssd_anchors(input_size, strides),
            output_names,
            resized: Mat::default(),
            shrunk: Mat::default(),
            halved: Mat::default(),
            blob,
        })
    }

    /// Faces inside `region` of the frame (the whole frame when `None`), in frame pixels.
    fn detect(
        &mut self,
        frame: &FrameMut,
        region: Option<Rect>,
        score_threshold: f32,
    ) -> Result<Vec<Face>> {
        let region = region.unwrap_or(Rect::new(0, 0, frame.width() as i32, frame.height() as i32));
        // Area averaging is slow at a fractional ratio (0.8 ms for a 500 px square to
        // 128) and, at a large whole one, reads every pixel in a scalar loop (0.7-0.9
        // ms for 1280x720 to 128 or 256). Halving is vectorised: halve while the
        // region is at least twice the input (the region trimmed by under `2^k` pixels
        // to a multiple of it), then shrink by the rest.
        let halvings = (region.width.max(region.height) / self.input_size as i32)
            .max(1)
            .ilog2();
        let whole = 1 << halvings;
        let region = Rect::new(
            region.x,
            region.y,
            (region.width - region.width % whole).max(1),
            (region.height - region.height % whole).max(1),
        );
        let lb = Letterbox::new(
            region.width as usize,
            region.height as usize,
            self.input_size,
        );
        let rw = ((region.width as f32 * lb.scale).round() as i32).max(1);
        let rh = ((region.height as f32 * lb.scale).round() as i32).max(1);
        let full = frame.as_mat()?;
        let view = Mat::roi(&full, region)?;
        if halvings > 0 {
            let (mut w, mut h) = (region.width / 2, region.height / 2);
            area(&view, &mut self.shrunk, w, h)?;
            for _ in 1..halvings {
                (w, h) = (w / 2, h / 2);
                area(&self.shrunk, &mut self.halved, w, h)?;
                std::mem::swap(&mut self.shrunk, &mut self.halved);
            }
            area(&self.shrunk, &mut self.resized, rw, rh)?;
        } else {
            area(&view, &mut self.resized, rw, rh)?;
        }
        self.fill_blob(frame, &lb, rw as usize, rh as usize)?;
        let outs = self.forward()?;
        let mut candidates = Vec::new();
        let mut anchor_base = 0;
        for group in 0..2 {
            let (scores, regs) = (&outs[group], &outs[group + 2]);
            for (i, &raw) in scores.iter().enumerate() {
                let score = sigmoid(raw);
                if score >= score_threshold {
                    let anchor = &self.anchors[anchor_base + i];
                    candidates.push(decode_anchor(
                        &regs[i * 16..i * 16 + 16],
                        anchor,
                        self.input_size as f32,
                        score,
                    ));
                }
            }
            anchor_base += scores.len();
        }
        let (ox, oy) = (region.x as f32, region.y as f32);
        Ok(weighted_nms(candidates, 0.3)
            .iter()
            .map(|f| lb.face_to_frame(f).translated(ox, oy))
            .collect())
    }

    /// The network on the blob: the scores of the two anchor groups, then their 16
    /// regressor values each.
    fn forward(&mut self) -> Result<[Vec<f32>; 4]> {
        match &mut self.net {
            Network::Dnn(net) => {
                net.set_input(&self.blob, "", 1.0, Scalar::default())?;
                let mut outs: Vector<Mat> = Vector::new();
                net.forward(&mut outs, &self.output_names)?;
                let mut out: [Vec<f32>; 4] = Default::default();
                for (i, o) in out.iter_mut().enumerate() {
                    *o = outs.get(i)?.data_typed::<f32>()?.to_vec();
                }
                Ok(out)
            }
            Network::Ort(session) => {
                let n = self.input_size;
                let blob = self.blob.data_typed::<f32>()?;
                let view = ndarray::ArrayView4::from_shape((1, n, n, 3), blob)
                    .map_err(|e| Error::Runtime(e.to_string()))?;
                let input = ort::value::TensorRef::from_array_view(view).map_err(Error::runtime)?;
                let outputs = session.run(ort::inputs![input]).map_err(Error::runtime)?;
                let mut out: [Vec<f32>; 4] = Default::default();
                for (o, name) in out.iter_mut().zip(self.output_names.iter()) {
                    let value = outputs.get(name.as_str()).ok_or_else(|| {
                        Error::Runtime(format!("BlazeFace gave no {name} output"))
                    })?;
                    let (_, data) = value.try_extract_tensor::<f32>().map_err(Error::runtime)?;
                    *o = data.to_vec();
                }
                Ok(out)
            }
        }
    }

    /// NHWC float RGB in [-1, 1], letterboxed with black (-1) padding.
    fn fill_blob(&mut self, frame: &FrameMut, lb: &Letterbox, rw: usize, rh: usize) -> Result<()> {
        let n = self.input_size;
        let bpp = frame.layout().bytes_per_pixel();
        let [ro, go, bo] = frame.layout().rgb_offsets();
        let src = self.resized.data_bytes()?;
        let step = self.resized.mat_step()[0];
        let blob = self.blob.data_typed_mut::<f32>()?;
        blob.fill(-1.0);
        let (px, py) = (lb.pad_x.floor() as usize, lb.pad_y.floor() as usize);
        for y in 0..rh.min(n - py) {
            let row = &src[y * step..];
            for x in 0..rw.min(n - px) {
                let p = &row[x * bpp..];
                let o = ((y + py) * n + x + px) * 3;
                blob[o] = p[ro] as f32 / 127.5 - 1.0;
                blob[o + 1] = p[go] as f32 / 127.5 - 1.0;
                blob[o + 2] = p[bo] as f32 / 127.5 - 1.0;
            }
        }
        Ok(())
    }
}

/// `from` resized to `w` x `h` by area averaging.
fn area(from: &impl opencv::core::ToInputArray, to: &mut Mat, w: i32, h: i32) -> Result<()> {
    imgproc::resize(from, to, Size::new(w, h), 0.0, 0.0, imgproc::INTER_AREA)?;
    Ok(())
}

struct Haar {
    cascade: objdetect::CascadeClassifier,
    gray: Mat,
}

impl Haar {
    fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("haarcascade_frontalface_default.xml");
        let fail = |reason: String| Error::Detector {
            path: path.clone(),
            reason,
        };
        if !path.is_file() {
            return Err(fail("file not found (Debian package opencv-data)".into()));
        }
        let cascade = objdetect::CascadeClassifier::new(&path).map_err(|e| fail(e.to_string()))?;
        if cascade.empty().map_err(|e| fail(e.to_string()))? {
            return Err(fail("cascade is empty or unreadable".into()));
        }
        Ok(Haar {
            cascade,
            gray: Mat::default(),
        })
    }

    fn detect(
        &mut self,
        frame: &FrameMut,
        region: Option<Rect>,
        min_size: i32,
    ) -> Result<Vec<Face>> {
        let region = region.unwrap_or(Rect::new(0, 0, frame.width() as i32, frame.height() as i32));
        let code = frame.layout().to_grey_code();
        let full = frame.as_mat()?;
        imgproc::cvt_color_def(&Mat::roi(&full, region)?, &mut self.gray, code)?;
        let mut rects = Vector::new();
        let m = min_size.max(24);
        self.cascade.detect_multi_scale(
            &self.gray,
            &mut rects,
            1.1,
            5,
            0,
            Size::new(m, m),
            Size::default(),
        )?;
        let (ox, oy) = (region.x as f32, region.y as f32);
        Ok(rects
            .iter()
            .map(|r| {
                face_from_box(
                    r.x as f32 + ox,
                    r.y as f32 + oy,
                    r.width as f32,
                    r.height as f32,
                )
            })
            .collect())
    }
}

/// Keypoints estimated from a Haar box at the average positions BlazeFace reports for
/// frontal faces, so the rest of the pipeline sees the same kind of face either way.
pub fn face_from_box(x: f32, y: f32, w: f32, h: f32) -> Face {
    let p = |fx: f32, fy: f32| Point {
        x: x + fx * w,
        y: y + fy * h,
    };
    Face {
        bbox: BoxF { x, y, w, h },
        keypoints: [
            p(0.31, 0.38),
            p(0.69, 0.38),
            p(0.5, 0.58),
            p(0.5, 0.77),
            p(0.08, 0.45),
            p(0.92, 0.45),
        ],
        score: 1.0,
    }
}

/// The detector the processor uses: a BlazeFace pair and/or the Haar cascade.
pub struct FaceDetector {
    kind: DetectorKind,
    front: Option<BlazeFace>,
    back: Option<BlazeFace>,
    haar: Option<Haar>,
    pub score_threshold: f32,
}

impl FaceDetector {
    /// The detector on OpenCV `dnn` (what the trainer's `prepare` aligned the training
    /// faces with; [`crate::FrameProcessor`] runs the same networks on ONNX Runtime).
    pub fn new(kind: DetectorKind) -> Result<Self> {
        Self::with_backend(kind, DetectorBackend::OpenCvDnn)
    }

    pub fn with_backend(kind: DetectorKind, backend: DetectorBackend) -> Result<Self> {
        Self::with_dirs(kind, &default_blazeface_dir(), &default_haar_dir(), backend)
    }

    pub fn with_dirs(
        kind: DetectorKind,
        blazeface_dir: &Path,
        haar_dir: &Path,
        backend: DetectorBackend,
    ) -> Result<Self> {
        let front = || {
            BlazeFace::load(
                &blazeface_dir.join("face_detection_front_128x128_barracuda.onnx"),
                128,
                &[8, 16, 16, 16],
                backend,
            )
        };
        let back = || {
            BlazeFace::load(
                &blazeface_dir.join("face_detection_back_256x256_barracuda.onnx"),
                256,
                &[16, 32, 32, 32],
                backend,
            )
        };
        let (f, b, h) = match kind {
            DetectorKind::Auto => (Some(front()?), Some(back()?), None),
            DetectorKind::BlazeFaceFront => (Some(front()?), None, None),
            DetectorKind::BlazeFaceBack => (None, Some(back()?), None),
            DetectorKind::Haar => (None, None, Some(Haar::load(haar_dir)?)),
        };
        Ok(FaceDetector {
            kind,
            front: f,
            back: b,
            haar: h,
            score_threshold: 0.6,
        })
    }

    pub fn kind(&self) -> DetectorKind {
        self.kind
    }

    /// Faces in frame pixels, best first, at least `min_face_size` pixels wide.
    ///
    /// Every face found in the whole frame is then looked at again in a square around it
    /// (`detect_near`), so its keypoints always come from the same view of the face as on
    /// the tracked frames in between: without this the keypoints of a small face jump by
    /// several pixels between the full-frame (256 px model) and the near (128 px model)
    /// searches, and the synthesised expression flickers. When the face fills the frame,
    /// as in the training photos, the square is the whole frame and nothing changes.
    pub fn detect(&mut self, frame: &FrameMut, min_face_size: f32) -> Result<Vec<Face>> {
        self.detect_new(frame, min_face_size, &[], SearchPass::All)
    }

    /// True when a full search runs two BlazeFace models, which can then run on
    /// different frames ([`SearchPass`]).
    pub fn has_two_passes(&self) -> bool {
        self.front.is_some() && self.back.is_some()
    }

    /// Like [`detect`](Self::detect), for faces other than `known` ones (those already
    /// followed): a face overlapping one of them is dropped before its refining search.
    pub fn detect_new(
        &mut self,
        frame: &FrameMut,
        min_face_size: f32,
        known: &[Face],
        pass: SearchPass,
    ) -> Result<Vec<Face>> {
        let found = self.search_whole(frame, min_face_size, pass)?;
        let mut faces = Vec::with_capacity(found.len());
        let new = found
            .into_iter()
            .filter(|f| known.iter().all(|k| k.bbox.iou(&f.bbox) <= 0.3));
        for face in new {
            let refined = if self.haar.is_some() {
                None
            } else {
                self.detect_near(frame, &face)?
            };
            faces.push(refined.unwrap_or(face));
        }
        let mut faces = weighted_nms(faces, 0.3);
        faces.retain(|f| f.bbox.w >= min_face_size);
        Ok(faces)
    }

    /// Finds a face again near where it was in the previous frame: the detector runs on
    /// a square around the old box (twice its size), where the face fills a good part of
    /// the input. This is much cheaper than a full-frame search in a large frame (the
    /// front model at 128 px instead of both models on the whole 1280x720 frame) and it
    /// finds small faces that the full-frame front model misses.
    pub fn detect_near(&mut self, frame: &FrameMut, previous: &Face) -> Result<Option<Face>> {
        let side = 2.0 * previous.bbox.w.max(previous.bbox.h);
        let (cx, cy) = (
            previous.bbox.x + previous.bbox.w / 2.0,
            previous.bbox.y + previous.bbox.h / 2.0,
        );
        let x0 = (cx - side / 2.0).max(0.0).floor() as i32;
        let y0 = (cy - side / 2.0).max(0.0).floor() as i32;
        let x1 = ((cx + side / 2.0).ceil() as i32).min(frame.width() as i32);
        let y1 = ((cy + side / 2.0).ceil() as i32).min(frame.height() as i32);
        if x1 - x0 < 16 || y1 - y0 < 16 {
            return Ok(None);
        }
        let region = Rect::new(x0, y0, x1 - x0, y1 - y0);
        let found = self.detect_in(frame, Some(region), 0.0)?;
        Ok(found
            .into_iter()
            .filter(|f| f.bbox.iou(&previous.bbox) > 0.2)
            .max_by(|a, b| a.score.total_cmp(&b.score)))
    }

    fn detect_in(
        &mut self,
        frame: &FrameMut,
        region: Option<Rect>,
        min_face_size: f32,
    ) -> Result<Vec<Face>> {
        let t = self.score_threshold;
        if let Some(haar) = self.haar.as_mut() {
            return haar.detect(frame, region, min_face_size as i32);
        }
        // Near a known face the front model suits best (the face fills the region); the
        // back model is only a fallback there.
        if region.is_some() {
            for model in [self.front.as_mut(), self.back.as_mut()]
                .into_iter()
                .flatten()
            {
                let faces = model.detect(frame, region, t)?;
                if !faces.is_empty() {
                    return Ok(faces);
                }
            }
            return Ok(Vec::new());
        }
        self.search_whole(frame, min_face_size, SearchPass::All)
    }

    /// A full-frame search: the models of `pass` (every model loaded for
    /// [`SearchPass::All`]), their faces merged. The front model alone misses faces
    /// under about a fifth of the frame, even when it finds a large one beside them.
    fn search_whole(
        &mut self,
        frame: &FrameMut,
        min_face_size: f32,
        pass: SearchPass,
    ) -> Result<Vec<Face>> {
        if let Some(haar) = self.haar.as_mut() {
            return haar.detect(frame, None, min_face_size as i32);
        }
        let t = self.score_threshold;
        let (front, back) = match pass {
            SearchPass::All => (true, true),
            SearchPass::Large => (true, self.front.is_none()),
            SearchPass::Small => (self.back.is_none(), true),
        };
        let mut faces = Vec::new();
        for (model, on) in [(self.front.as_mut(), front), (self.back.as_mut(), back)] {
            if let (Some(model), true) = (model, on) {
                faces.extend(model.detect(frame, None, t)?);
            }
        }
        Ok(weighted_nms(faces, 0.3))
    }
}
