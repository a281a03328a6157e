//! Model contract v2 (geometry-first models): manifests and load-time checks with tiny
//! generated models, and the runtime warp of the frame, measured on synthetic frames
//! against independently computed expectations.
//!
//! Geometry tests place a bright blob (a "feature") on a face whose crop -> frame
//! similarity is made by hand, give the compositor a constant backward flow `d` (crop
//! pixels) and find the blob's centroid after the warp. The expected move is computed
//! here from the contract alone: the edited frame at p samples the input at
//! p + intensity * L d (L = scale * rotation), so content moves by -intensity * L d.

mod common;

use common::{
    channel_mean, constant_flow, laplacian_variance, linear, manifest, similarity, temp_dir,
    write_model, FlowOutput,
};
use reggan::align::{crop_to_planar, Alignment};
use reggan::composite::{face_mask, Compositor};
use reggan::detect::{BoxF, Face, Point};
use reggan::flow::FlowWarper;
use reggan::{
    CompositeOptions, Detail, DetectorKind, Device, ExpressionModel, FaceDetector, FrameMut,
    FrameProcessor, Manifest, PixelLayout, ProcessorConfig, RgbImage,
};

/// ONNX Runtime is needed by the model tests; without it (no scripts/setup.sh) they skip.
fn runtime_available() -> bool {
    let path = reggan::model::onnxruntime_path();
    let ok = path.is_file();
    if !ok {
        eprintln!("skipping: needs {} (run scripts/setup.sh)", path.display());
    }
    ok
}

// ---------------------------------------------------------------------------------------
// Manifests and load-time checks

const S: usize = 64;
/// The flow of each expression of the test models: happy, neutral.
const FLOWS: [(f32, f32); 2] = [(2.0, -1.25), (-1.5, 0.5)];

fn flow_model(dir: &std::path::Path) {
    let flows = FLOWS.map(|(dx, dy)| constant_flow(S, dx, dy)).to_vec();
    write_model(
        dir,
        &manifest(2, S, &["happy", "neutral"], &["face_out", "flow"]),
        &FlowOutput::PerExpression(flows),
    );
}

fn load(dir: &std::path::Path) -> reggan::Result<ExpressionModel> {
    ExpressionModel::load(dir, Device::Cpu, 1)
}

#[test]
fn v1_and_v2_models_load_and_only_v2_gives_a_flow() {
    if !runtime_available() {
        return;
    }
    let v1 = temp_dir("v1");
    write_model(&v1, &manifest(1, S, &["happy"], &[]), &FlowOutput::Absent);
    let mut model = load(&v1).unwrap();
    assert!(!model.manifest().has_flow());
    let faces = ndarray::Array4::<f32>::from_elem((1, 3, S, S), 0.25);
    let out = model.run_with_flow(faces.view(), &[0]).unwrap();
    assert!(out.flow.is_none());
    assert!(out.face.iter().all(|&v| v == 0.25), "identity face_out");

    let v2 = temp_dir("v2");
    flow_model(&v2);
    let mut model = load(&v2).unwrap();
    assert!(model.manifest().has_flow());
    let out = model.run_with_flow(faces.view(), &[1]).unwrap();
    let flow = out.flow.expect("a v2 model gives its flow");
    assert_eq!(flow.shape(), [1, 2, S, S]);
    let (dx, dy) = FLOWS[1];
    assert!(flow
        .index_axis(ndarray::Axis(1), 0)
        .iter()
        .all(|&v| v == dx));
    assert!(flow
        .index_axis(ndarray::Axis(1), 1)
        .iter()
        .all(|&v| v == dy));
    // run() keeps returning face_out alone (the trainer's eval calls it).
    assert_eq!(model.run(faces.view(), &[0]).unwrap().shape(), [1, 3, S, S]);

    // Format 2 without a flow output is a face_out-only model.
    let v2_plain = temp_dir("v2-plain");
    write_model(
        &v2_plain,
        &manifest(2, S, &["happy"], &["face_out"]),
        &FlowOutput::Absent,
    );
    assert!(!load(&v2_plain).unwrap().manifest().has_flow());
    for dir in [v1, v2, v2_plain] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// The video path low-passes a flow only when it depends on the face; whether it does
/// is found at load.
#[test]
fn a_flow_that_does_not_depend_on_the_face_is_found_constant_at_load() {
    if !runtime_available() {
        return;
    }
    let constant = temp_dir("constant-flow");
    flow_model(&constant);
    assert!(load(&constant).unwrap().flow_is_constant());

    let from_face = temp_dir("face-flow");
    write_model(
        &from_face,
        &manifest(2, S, &["happy"], &["face_out", "flow"]),
        &FlowOutput::FromFace(3.0),
    );
    let mut model = load(&from_face).unwrap();
    assert!(!model.flow_is_constant());
    // The graph really follows the face: a red face of 0.5 flows 1.5 px in x.
    let mut faces = ndarray::Array4::<f32>::zeros((1, 3, S, S));
    faces.index_axis_mut(ndarray::Axis(1), 0).fill(0.5);
    let flow = model
        .run_with_flow(faces.view(), &[0])
        .unwrap()
        .flow
        .unwrap();
    assert!(flow
        .index_axis(ndarray::Axis(1), 0)
        .iter()
        .all(|&v| v == 1.5));
    assert!(flow
        .index_axis(ndarray::Axis(1), 1)
        .iter()
        .all(|&v| v == 0.0));

    let v1 = temp_dir("v1-constant");
    write_model(&v1, &manifest(1, S, &["happy"], &[]), &FlowOutput::Absent);
    assert!(!load(&v1).unwrap().flow_is_constant(), "no flow at all");
    for dir in [constant, from_face, v1] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn a_v2_model_listing_flow_without_a_flow_output_fails_at_load_naming_the_file() {
    if !runtime_available() {
        return;
    }
    let dir = temp_dir("no-flow-output");
    write_model(
        &dir,
        &manifest(2, S, &["happy"], &["face_out", "flow"]),
        &FlowOutput::Absent,
    );
    let e = load(&dir).unwrap_err().to_string();
    let onnx = dir.join("model.onnx");
    assert!(e.contains(onnx.to_str().unwrap()), "names the file: {e}");
    assert!(e.contains("flow"), "names the missing output: {e}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_flow_of_the_wrong_shape_fails_at_load_naming_the_file() {
    if !runtime_available() {
        return;
    }
    let dir = temp_dir("one-channel-flow");
    write_model(
        &dir,
        &manifest(2, S, &["happy"], &["face_out", "flow"]),
        &FlowOutput::OneChannel,
    );
    let e = load(&dir).unwrap_err().to_string();
    let onnx = dir.join("model.onnx");
    assert!(e.contains(onnx.to_str().unwrap()), "names the file: {e}");
    assert!(
        e.contains("flow has shape [1, 1, 64, 64], expected [1, 2, 64, 64]"),
        "names the problem: {e}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

fn read_error(m: &Manifest) -> String {
    let dir = temp_dir(&format!("manifest-{}", m.outputs.join("-")));
    m.write(&dir).unwrap();
    let e = Manifest::read(&dir).unwrap_err().to_string();
    assert!(
        e.contains(dir.join("model.json").to_str().unwrap()),
        "names the file: {e}"
    );
    std::fs::remove_dir_all(dir).unwrap();
    e
}

#[test]
fn manifests_outside_the_contract_are_rejected_with_reasons() {
    let e = read_error(&manifest(3, S, &["happy"], &[]));
    assert!(
        e.contains("format_version 3") && e.contains("1 to 2"),
        "{e}"
    );
    let e = read_error(&manifest(1, S, &["happy"], &["face_out", "flow"]));
    assert!(e.contains("needs format_version 2"), "{e}");
    let e = read_error(&manifest(2, S, &["happy"], &["face_out", "depth"]));
    assert!(e.contains("'depth'"), "{e}");
    let e = read_error(&manifest(2, S, &["happy"], &["flow"]));
    assert!(e.contains("lack face_out"), "{e}");
}

#[test]
fn a_v1_manifest_is_written_without_outputs_and_reads_back_equal() {
    let dir = temp_dir("v1-json");
    let m = manifest(1, S, &["happy"], &[]);
    m.write(&dir).unwrap();
    let text = std::fs::read_to_string(dir.join("model.json")).unwrap();
    assert!(!text.contains("outputs"), "{text}");
    assert_eq!(Manifest::read(&dir).unwrap(), m);
    let v2 = manifest(2, S, &["happy"], &["face_out", "flow"]);
    v2.write(&dir).unwrap();
    assert_eq!(Manifest::read(&dir).unwrap(), v2);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn neutral_is_a_target_of_models_that_list_it_only() {
    let v2 = manifest(2, S, &["happy", "neutral"], &["face_out", "flow"]);
    assert_eq!(v2.expression_index("neutral").unwrap(), 1);
    let v1 = manifest(1, S, &reggan::EXPRESSIONS, &[]);
    let e = v1.expression_index("neutral").unwrap_err().to_string();
    assert!(e.contains("'neutral'") && e.contains("surprised"), "{e}");
    assert!(!reggan::EXPRESSIONS.contains(&"neutral"));
    assert!(reggan::ALL_EXPRESSIONS.contains(&"neutral"));
}

// ---------------------------------------------------------------------------------------
// The runtime warp

fn to_frame(a: &Alignment, (x, y): (f64, f64)) -> (f64, f64) {
    let m = a.to_frame;
    (
        m[0][0] * x + m[0][1] * y + m[0][2],
        m[1][0] * x + m[1][1] * y + m[1][2],
    )
}

const BACKGROUND: f64 = 40.0;

/// A grey frame with one Gaussian blob (sigma in frame pixels) at `at`.
fn blob_frame(w: usize, h: usize, at: (f64, f64), sigma: f64) -> RgbImage {
    let mut img = RgbImage::new(w, h);
    for y in 0..h {
        for x in 0..w {
            let r2 = (x as f64 - at.0).powi(2) + (y as f64 - at.1).powi(2);
            let v = BACKGROUND + 200.0 * (-r2 / (2.0 * sigma * sigma)).exp();
            let i = (y * w + x) * 3;
            img.data[i..i + 3].fill(v.round() as u8);
        }
    }
    img
}

/// Centroid of the frame's brightness above the background.
fn centroid(img: &RgbImage) -> (f64, f64) {
    let (mut sx, mut sy, mut sw) = (0.0, 0.0, 0.0);
    for y in 0..img.height {
        for x in 0..img.width {
            let w = (img.pixel(x, y)[1] as f64 - BACKGROUND).max(0.0);
            sx += w * x as f64;
            sy += w * y as f64;
            sw += w;
        }
    }
    (sx / sw, sy / sw)
}

/// The face's crop as the model's planar input.
fn planar_crop(frame: &FrameMut, a: &Alignment) -> Vec<f32> {
    let mut crop = vec![0.0; 3 * a.size * a.size];
    crop_to_planar(&a.warp_crop(frame).unwrap(), frame.layout(), &mut crop).unwrap();
    crop
}

/// What an identity-appearance flow model outputs: the crop warped by its flow.
fn warped(crop: &[f32], flow: &[f32], s: usize) -> Vec<f32> {
    let mut out = vec![0.0; crop.len()];
    FlowWarper::new(s)
        .unwrap()
        .warp_crop(crop, flow, &mut out)
        .unwrap();
    out
}

/// Warps a blob placed where the mask is 1 and returns (moved to, expected position).
fn move_feature(scale: f64, degrees: f64, intensity: f32) -> ((f64, f64), (f64, f64)) {
    let (w, h) = (360, 300);
    let a = similarity(S, scale, degrees, (180.0, 150.0));
    let feature = to_frame(&a, (0.5 * S as f64, 0.53 * S as f64));
    let mut img = blob_frame(w, h, feature, 1.5 * scale);
    let (dx, dy) = FLOWS[0];
    let flow = constant_flow(S, dx, dy);
    let mut frame = img.as_frame();
    let crop = planar_crop(&frame, &a);
    let out = warped(&crop, &flow, S);
    Compositor::new(S)
        .unwrap()
        .apply_with_flow(&mut frame, &crop, &out, Some(&flow), &a, intensity)
        .unwrap();
    let l = linear(scale, degrees);
    let (dx, dy) = (intensity as f64 * dx as f64, intensity as f64 * dy as f64);
    let expected = (
        feature.0 - (l[0][0] * dx + l[0][1] * dy),
        feature.1 - (l[1][0] * dx + l[1][1] * dy),
    );
    (centroid(&img), expected)
}

fn assert_feature_moves(scale: f64, degrees: f64, intensity: f32) {
    let (got, want) = move_feature(scale, degrees, intensity);
    let err = ((got.0 - want.0).powi(2) + (got.1 - want.1).powi(2)).sqrt();
    eprintln!("scale {scale}, {degrees} deg, intensity {intensity}: feature at {got:.3?}, expected {want:.3?} (error {err:.3} px)");
    assert!(err < 0.5, "moved to {got:?}, expected {want:?}");
}

#[test]
fn the_warp_moves_a_feature_by_the_mapped_flow_at_scale_1() {
    assert_feature_moves(1.0, 0.0, 1.0);
}

#[test]
fn the_warp_moves_a_feature_by_the_mapped_flow_at_scale_4() {
    assert_feature_moves(4.0, 0.0, 1.0);
}

#[test]
fn the_warp_moves_a_feature_of_a_face_rotated_30_degrees() {
    assert_feature_moves(1.0, 30.0, 1.0);
    assert_feature_moves(2.5, 30.0, 1.0);
}

#[test]
fn half_intensity_moves_a_feature_half_as_far() {
    assert_feature_moves(4.0, -20.0, 0.5);
}

/// A frame with texture everywhere, so that any stray write shows.
fn textured(w: usize, h: usize) -> RgbImage {
    let mut img = RgbImage::new(w, h);
    for (i, v) in img.data.iter_mut().enumerate() {
        *v = ((i * 2654435761) >> 7) as u8;
    }
    img
}

/// A 30-degree face at scale 2 with a non-constant flow and an appearance change on top.
struct Case {
    a: Alignment,
    flow: Vec<f32>,
}

impl Case {
    fn new() -> Self {
        let n = S * S;
        let mut flow = vec![0.0; 2 * n];
        for i in 0..n {
            let (x, y) = ((i % S) as f32, (i / S) as f32);
            flow[i] = 3.0 * (y / 9.0).sin();
            flow[n + i] = -2.0 + 0.05 * x;
        }
        Case {
            a: similarity(S, 2.0, 30.0, (110.0, 90.0)),
            flow,
        }
    }

    fn apply(&self, frame: &mut FrameMut, intensity: f32) {
        let crop = planar_crop(frame, &self.a);
        let out: Vec<f32> = warped(&crop, &self.flow, S)
            .iter()
            .map(|v| (v + 0.1).min(1.0))
            .collect();
        Compositor::new(S)
            .unwrap()
            .apply_with_flow(frame, &crop, &out, Some(&self.flow), &self.a, intensity)
            .unwrap();
    }
}

#[test]
fn a_change_shaped_by_the_caller_composites_as_the_compositors_own() {
    // The processor shapes each face's change itself (the video low-pass smooths what
    // the frame will show), against the crop it warped by the flow; the frame must come
    // out as when the compositor does both.
    let case = Case::new();
    let mut img = textured(220, 180);
    let crop = planar_crop(&img.as_frame(), &case.a);
    let moved = warped(&crop, &case.flow, S);
    // A brighter mouth half and a blurred rest, so that the shaping has work to do.
    let out: Vec<f32> = moved
        .iter()
        .enumerate()
        .map(|(i, v)| {
            if (i % (S * S)) / S > S / 2 {
                (v + 0.1).min(1.0)
            } else {
                v * 0.95
            }
        })
        .collect();
    let (mut own, mut handed) = (img.clone(), img.clone());
    let mut compositor = Compositor::with_options(S, CompositeOptions::default()).unwrap();
    compositor
        .apply_with_flow(
            &mut own.as_frame(),
            &crop,
            &out,
            Some(&case.flow),
            &case.a,
            0.8,
        )
        .unwrap();
    let plain: Vec<f32> = out.iter().zip(&moved).map(|(o, m)| o - m).collect();
    let shaped = compositor
        .shape(&crop, &out, Some(&case.flow), &case.a)
        .unwrap()
        .to_vec();
    assert_eq!(
        compositor.warped_crop(),
        moved.as_slice(),
        "the crop it warped"
    );
    assert!(
        shaped.iter().zip(&plain).any(|(s, p)| (s - p).abs() > 1e-3),
        "the default options shape the change"
    );
    compositor
        .add_shaped(
            &mut handed.as_frame(),
            &shaped,
            Some(&case.flow),
            &case.a,
            0.8,
        )
        .unwrap();
    assert!(own.data != img.data, "the case changes the frame");
    assert!(
        own.data == handed.data,
        "shaping by the caller changed the result"
    );
    let err = compositor
        .shape(&crop[1..], &out, Some(&case.flow), &case.a)
        .unwrap_err()
        .to_string();
    assert!(err.contains("crop, model output and flow"), "{err}");
    let err = compositor
        .add_shaped(
            &mut handed.as_frame(),
            &shaped[1..],
            Some(&case.flow),
            &case.a,
            0.8,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("shaped change and flow of 12287"), "{err}");
}

#[test]
fn intensity_zero_is_bit_identical_with_a_flow() {
    let mut img = textured(220, 180);
    let before = img.clone();
    Case::new().apply(&mut img.as_frame(), 0.0);
    assert_eq!(img, before);
}

/// Whether the mask is zero on every crop pixel near crop position (cx, cy) (bilinear
/// reads the 2x2 around it; one more on each side for margin).
fn mask_zero_near(mask: &[f32], cx: f64, cy: f64) -> bool {
    let (x0, y0) = (cx.floor() as i64, cy.floor() as i64);
    (y0 - 1..=y0 + 2).all(|y| {
        (x0 - 1..=x0 + 2).all(|x| {
            let inside = (0..S as i64).contains(&x) && (0..S as i64).contains(&y);
            !inside || mask[y as usize * S + x as usize] == 0.0
        })
    })
}

#[test]
fn pixels_outside_the_mask_are_bit_identical_with_a_flow() {
    let mut img = textured(220, 180);
    let before = img.clone();
    let case = Case::new();
    case.apply(&mut img.as_frame(), 1.5);
    let mask = face_mask(S);
    let (mut outside, mut changed_inside) = (0, 0);
    for y in 0..img.height {
        for x in 0..img.width {
            let m = case.a.to_crop;
            let (fx, fy) = (x as f64, y as f64);
            let cx = m[0][0] * fx + m[0][1] * fy + m[0][2];
            let cy = m[1][0] * fx + m[1][1] * fy + m[1][2];
            if mask_zero_near(&mask, cx, cy) {
                assert_eq!(img.pixel(x, y), before.pixel(x, y), "({x}, {y})");
                outside += 1;
            } else if img.pixel(x, y) != before.pixel(x, y) {
                changed_inside += 1;
            }
        }
    }
    assert!(
        outside > 20_000,
        "the face covers too much to test: {outside}"
    );
    assert!(
        changed_inside > 3000,
        "only {changed_inside} face pixels changed"
    );
}

#[test]
fn bgrx_with_padded_stride_warps_like_rgb() {
    let (w, h) = (220, 180);
    let mut rgb = textured(w, h);
    let stride = w * 4 + 12;
    let mut bgrx = vec![0xCDu8; stride * h];
    for y in 0..h {
        for x in 0..w {
            let [r, g, b] = rgb.pixel(x, y);
            bgrx[y * stride + x * 4..][..4].copy_from_slice(&[b, g, r, 0xAB]);
        }
    }
    let case = Case::new();
    case.apply(&mut rgb.as_frame(), 1.0);
    case.apply(
        &mut FrameMut::new(&mut bgrx, w, h, stride, PixelLayout::Bgrx).unwrap(),
        1.0,
    );
    for y in 0..h {
        for x in 0..w {
            let [r, g, b] = rgb.pixel(x, y);
            let px = &bgrx[y * stride + x * 4..][..4];
            assert_eq!(px, [b, g, r, 0xAB], "({x}, {y})");
        }
        assert!(
            bgrx[y * stride + w * 4..(y + 1) * stride]
                .iter()
                .all(|&v| v == 0xCD),
            "padding of row {y}"
        );
    }
}

#[test]
fn a_face_partly_off_the_frame_is_warped_inside_it_only() {
    let mut img = textured(160, 120);
    let before = img.clone();
    let mut case = Case::new();
    case.a = similarity(S, 2.0, 30.0, (10.0, 115.0));
    case.apply(&mut img.as_frame(), 1.0);
    assert_ne!(img, before, "the visible part of the face changed");
    assert_eq!(img.pixel(159, 0), before.pixel(159, 0));
}

// ---------------------------------------------------------------------------------------
// Through the processor with a real (tiny) v2 model

/// A detector-free face whose four alignment points are the template's under `a`.
fn face_for(a: &Alignment, template: &reggan::Template) -> Face {
    let p = template.points.map(|[x, y]| {
        let (fx, fy) = to_frame(a, (x as f64, y as f64));
        Point {
            x: fx as f32,
            y: fy as f32,
        }
    });
    let (x0, x1) = (p[0].x.min(p[3].x) - 20.0, p[1].x.max(p[3].x) + 20.0);
    Face {
        bbox: BoxF {
            x: x0,
            y: p[0].y - 20.0,
            w: x1 - x0,
            h: x1 - x0,
        },
        keypoints: [p[0], p[1], p[2], p[3], p[0], p[1]],
        score: 1.0,
    }
}

/// A processor on the tiny v2 model (the Haar detector is only there to satisfy the
/// constructor: faces are given by hand), or None when the runtime or cascade is absent.
fn v2_processor(expression: &str, intensity: f32) -> Option<FrameProcessor> {
    if !runtime_available() {
        return None;
    }
    let detector = match FaceDetector::new(DetectorKind::Haar) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("skipping: {e}");
            return None;
        }
    };
    let dir = temp_dir(&format!("processor-{expression}-{intensity}"));
    flow_model(&dir);
    let model = load(&dir).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
    let config = ProcessorConfig {
        expression: expression.into(),
        intensity,
        min_face_size: 0.0,
        device: Device::Cpu,
        ..Default::default()
    };
    Some(FrameProcessor::from_parts(model, detector, config).unwrap())
}

#[test]
fn the_processor_moves_the_face_by_a_v2_models_flow() {
    for (expression, flow) in [("happy", FLOWS[0]), ("neutral", FLOWS[1])] {
        let Some(mut p) = v2_processor(expression, 1.0) else {
            return;
        };
        let (scale, degrees) = (2.0, 20.0);
        let a = similarity(S, scale, degrees, (180.0, 150.0));
        let feature = to_frame(&a, (0.5 * S as f64, 0.53 * S as f64));
        let mut img = blob_frame(360, 300, feature, 1.5 * scale);
        let face = face_for(&a, &p.model().manifest().template);
        let report = p.process_faces(&mut img.as_frame(), vec![face]).unwrap();
        assert_eq!(report.faces.len(), 1);
        let l = linear(scale, degrees);
        let (dx, dy) = (flow.0 as f64, flow.1 as f64);
        let want = (
            feature.0 - (l[0][0] * dx + l[0][1] * dy),
            feature.1 - (l[1][0] * dx + l[1][1] * dy),
        );
        let got = centroid(&img);
        let err = ((got.0 - want.0).powi(2) + (got.1 - want.1).powi(2)).sqrt();
        eprintln!("{expression}: feature at {got:.3?}, expected {want:.3?} ({err:.3} px)");
        assert!(
            err < 0.5,
            "{expression}: moved to {got:?}, expected {want:?}"
        );
    }
}

#[test]
fn the_processor_at_intensity_zero_is_bit_identical_with_a_v2_model() {
    let Some(mut p) = v2_processor("happy", 0.0) else {
        return;
    };
    let a = similarity(S, 2.0, 20.0, (180.0, 150.0));
    let mut img = textured(360, 300);
    let before = img.clone();
    let face = face_for(&a, &p.model().manifest().template);
    p.process_faces(&mut img.as_frame(), vec![face]).unwrap();
    assert_eq!(img, before);
}

#[test]
fn the_graphs_grid_sample_matches_the_runtime_crop_warp() {
    // The tiny model's face_out is GridSample of the face by its flow (the way a real
    // v2 graph warps); the runtime's crop warp must agree, or the appearance residual
    // would carry a ghost of the geometry.
    if !runtime_available() {
        return;
    }
    let dir = temp_dir("grid-sample");
    flow_model(&dir);
    let mut model = load(&dir).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
    let mut img = textured(120, 120);
    let frame = img.as_frame();
    // A smooth face-like crop: the texture blurred by a 4x scale-up.
    let crop = planar_crop(&frame, &similarity(S, 0.25, 0.0, (60.0, 60.0)));
    let batch = ndarray::Array4::from_shape_vec((1, 3, S, S), crop.clone()).unwrap();
    let out = model.run_with_flow(batch.view(), &[0]).unwrap();
    let flow = out.flow.unwrap();
    let runtime = warped(&crop, flow.as_slice().unwrap(), S);
    let worst = out
        .face
        .iter()
        .zip(&runtime)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst < 0.01,
        "GridSample and the runtime warp differ by {worst}"
    );
}

// ---------------------------------------------------------------------------------------
// Speed

/// Laplacian variance of the grey values (channel means) in a square window.
fn window_laplacian_variance(img: &RgbImage, (cx, cy): (usize, usize), r: usize) -> f64 {
    laplacian_variance(img, channel_mean, |x, y| {
        (cx - r..cx + r).contains(&x) && (cy - r..cy + r).contains(&y)
    })
}

/// The frame warp keeps a fine texture's sharpness where it moves by about half a
/// pixel (any interpolation there averages neighbours: bicubic kept 0.39 of this
/// texture's Laplacian variance): its fine band is sampled at the nearest pixel. With
/// every `detail` setting, as the warp does not depend on it.
#[test]
fn a_fine_texture_moved_by_half_a_pixel_keeps_its_sharpness() {
    let (w, h) = (360, 300);
    let mut source = RgbImage::new(w, h);
    for y in 0..h {
        for x in 0..w {
            let v = 128.0
                + 60.0
                    * (2.0 * std::f64::consts::PI * x as f64 / 3.3).sin()
                    * (2.0 * std::f64::consts::PI * y as f64 / 2.9).sin();
            let i = (y * w + x) * 3;
            source.data[i..i + 3].fill(v.round() as u8);
        }
    }
    let a = similarity(S, 2.0, 0.0, (180.0, 150.0));
    // About half a frame pixel at scale 2 (exactly half would be a tie for the nearest
    // pixel, which OpenCV breaks to even, every second column one way).
    let flow = constant_flow(S, 0.22, 0.28);
    let moved = |detail: Detail| {
        let mut img = source.clone();
        let mut frame = img.as_frame();
        let crop = planar_crop(&frame, &a);
        let out = warped(&crop, &flow, S);
        let options = CompositeOptions {
            detail,
            keep_colour: true,
        };
        Compositor::with_options(S, options)
            .unwrap()
            .apply_with_flow(&mut frame, &crop, &out, Some(&flow), &a, 1.0)
            .unwrap();
        (
            img.data != source.data,
            window_laplacian_variance(&img, (180, 150), 20),
        )
    };
    let before = window_laplacian_variance(&source, (180, 150), 20);
    for detail in [Detail::Fine, Detail::Full, Detail::Off] {
        let (changed, after) = moved(detail);
        eprintln!("{detail:?}: Laplacian variance kept {:.3}", after / before);
        assert!(changed, "{detail:?}: the texture should have moved");
        assert!(
            (0.95..=1.1).contains(&(after / before)),
            "{detail:?}: kept {:.3} of the texture's Laplacian variance",
            after / before
        );
    }
}
