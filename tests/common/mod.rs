//! Tiny model directories for contract tests, written with the graph helpers the
//! trainer's exporters use (`reggan-onnxgraph`, which does not depend on the trainer).
//!
//! A flow test model has one constant flow per expression: `flow = Gather(FLOWS,
//! expression)`, and its `face_out` is the face warped by that flow with GridSample
//! (bilinear, border, pixel centres), the way a real format-2 graph computes its
//! appearance on the warped crop. Its appearance layer is the identity, so the whole
//! change it makes is geometric.

#![allow(dead_code)] // each test binary uses a part of it

use std::path::{Path, PathBuf};

use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::{GraphProto, Message, ModelProto, TensorProto, ValueInfoProto};
use reggan::align::{invert, Alignment};
use reggan::{default_model_dir, Manifest, RgbImage, Template};
use reggan_onnxgraph::{attr_int, attr_str, node, push_gather, value_info_partial};

/// What the graph's `flow` output is.
pub enum FlowOutput {
    /// No `flow` output (a format-1 graph).
    Absent,
    /// One flow per expression, each 2*S*S values (dx plane, dy plane) in crop pixels.
    PerExpression(Vec<Vec<f32>>),
    /// A flow of one channel instead of two: breaks the contract's [N,2,S,S].
    OneChannel,
    /// A flow that depends on the face: its red and green planes times this many
    /// pixels (`face_out`: the face warped by it, an identity appearance).
    FromFace(f32),
}

/// The shipped default model and the test photo, or None (with a message) when
/// `scripts/setup.sh` has not fetched them.
pub fn shipped_model_and_photo() -> Option<(PathBuf, RgbImage)> {
    let model = default_model_dir();
    let image = std::env::var_os("REGGAN_TEST_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".deps/astronaut.png"));
    if !model.join("model.onnx").is_file() || !image.is_file() {
        eprintln!(
            "skipping: needs {} and {} (run scripts/setup.sh)",
            model.display(),
            image.display()
        );
        return None;
    }
    Some((model, RgbImage::load(&image).unwrap()))
}

/// A fresh, empty directory for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("reggan-flow-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A face whose crop -> frame map is `scale * rotation(degrees)`, with the crop centre
/// at `centre` in the frame.
pub fn similarity(s: usize, scale: f64, degrees: f64, centre: (f64, f64)) -> Alignment {
    let l = linear(scale, degrees);
    let c = s as f64 / 2.0;
    let to_frame = [
        [l[0][0], l[0][1], centre.0 - (l[0][0] * c + l[0][1] * c)],
        [l[1][0], l[1][1], centre.1 - (l[1][0] * c + l[1][1] * c)],
    ];
    Alignment {
        to_crop: invert(&to_frame).unwrap(),
        to_frame,
        size: s,
    }
}

/// `scale` times the rotation by `degrees`.
pub fn linear(scale: f64, degrees: f64) -> [[f64; 2]; 2] {
    let (sin, cos) = degrees.to_radians().sin_cos();
    [[scale * cos, -scale * sin], [scale * sin, scale * cos]]
}

/// A pixel's grey value as BT.601 luma.
pub fn luma(p: [u8; 3]) -> f64 {
    0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64
}

/// A pixel's grey value as the mean of its channels.
pub fn channel_mean(p: [u8; 3]) -> f64 {
    (p[0] as f64 + p[1] as f64 + p[2] as f64) / 3.0
}

/// Variance of the grey image's 4-neighbour Laplacian (`grey` of each pixel) over the
/// pixels `keep` selects, the frame's outermost rows and columns left out.
pub fn laplacian_variance(
    img: &RgbImage,
    grey: impl Fn([u8; 3]) -> f64,
    keep: impl Fn(usize, usize) -> bool,
) -> f64 {
    let grey = |x: usize, y: usize| grey(img.pixel(x, y));
    let mut lap = Vec::new();
    for y in 1..img.height - 1 {
        for x in 1..img.width - 1 {
            if keep(x, y) {
                lap.push(
                    grey(x - 1, y) + grey(x + 1, y) + grey(x, y - 1) + grey(x, y + 1)
                        - 4.0 * grey(x, y),
                );
            }
        }
    }
    let mean = lap.iter().sum::<f64>() / lap.len() as f64;
    lap.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / lap.len() as f64
}

/// A model.json for an SxS model with these expressions and outputs.
pub fn manifest(format_version: u32, s: usize, expressions: &[&str], outputs: &[&str]) -> Manifest {
    Manifest {
        format_version,
        family: "test".into(),
        method: "test".into(),
        crop_size: s,
        template: Template::lsrf(s),
        expressions: expressions.iter().map(|e| e.to_string()).collect(),
        normalization: "rgb01".into(),
        params: Default::default(),
        training: Default::default(),
        trainer_version: "test".into(),
        quality: Default::default(),
        outputs: outputs.iter().map(|o| o.to_string()).collect(),
    }
}

/// Writes `dir/model.json` and `dir/model.onnx`.
pub fn write_model(dir: &Path, manifest: &Manifest, flow: &FlowOutput) {
    manifest.write(dir).unwrap();
    let graph = graph(manifest.crop_size, manifest.expressions.len(), flow);
    std::fs::write(dir.join("model.onnx"), graph.write_to_bytes().unwrap()).unwrap();
}

/// A flow constant over the crop: every pixel samples `(dx, dy)` away.
pub fn constant_flow(s: usize, dx: f32, dy: f32) -> Vec<f32> {
    let mut f = vec![dx; 2 * s * s];
    f[s * s..].fill(dy);
    f
}

fn graph(s: usize, expressions: usize, flow: &FlowOutput) -> ModelProto {
    let si = s as i64;
    let mut g = GraphProto::new();
    g.name = "reggan_test_model".into();
    g.input = vec![
        value_info_partial("face", DataType::FLOAT, &[Some(3), Some(si), Some(si)]),
        value_info_partial("expression", DataType::INT64, &[]),
    ];
    g.output = vec![value_info_partial(
        "face_out",
        DataType::FLOAT,
        &[Some(3), Some(si), Some(si)],
    )];
    match flow {
        FlowOutput::Absent => {
            g.node.push(node("Identity", &["face"], "face_out", vec![]));
        }
        FlowOutput::PerExpression(flows) => {
            assert_eq!(flows.len(), expressions, "one flow per expression");
            push_flow_and_warp(&mut g, s, flows);
        }
        FlowOutput::FromFace(gain) => {
            g.initializer
                .push(reggan_onnxgraph::int64s("RG_START", &[0]));
            g.initializer.push(reggan_onnxgraph::int64s("RG_END", &[2]));
            g.initializer
                .push(reggan_onnxgraph::int64s("RG_AXIS", &[1]));
            g.initializer
                .push(reggan_onnxgraph::scalar_f32("GAIN", *gain));
            g.node.push(node(
                "Slice",
                &["face", "RG_START", "RG_END", "RG_AXIS"],
                "red_green",
                vec![],
            ));
            g.node
                .push(node("Mul", &["red_green", "GAIN"], "flow", vec![]));
            // face_out: the face warped by that flow (an identity appearance), through
            // GridSample's normalised positions of x + flow(x).
            let base = sample_grid(s, &vec![0.0; 2 * s * s]);
            g.initializer.push(floats("BASE", &[1, si, si, 2], &base));
            g.initializer
                .push(reggan_onnxgraph::scalar_f32("TO_GRID", 2.0 / s as f32));
            g.node.push(node(
                "Transpose",
                &["flow"],
                "flow_nhwc",
                vec![reggan_onnxgraph::attr_ints("perm", &[0, 2, 3, 1])],
            ));
            g.node
                .push(node("Mul", &["flow_nhwc", "TO_GRID"], "offsets", vec![]));
            g.node
                .push(node("Add", &["BASE", "offsets"], "grid", vec![]));
            push_grid_sample(&mut g);
            g.output.push(flow_value_info());
        }
        FlowOutput::OneChannel => {
            g.node.push(node("Identity", &["face"], "face_out", vec![]));
            let zeros = vec![0.0; expressions * s * s];
            g.initializer
                .push(floats("FLOWS", &[expressions as i64, 1, si, si], &zeros));
            push_gather(&mut g, "FLOWS", "flow");
            g.output.push(flow_value_info());
        }
    }
    reggan_onnxgraph::model_of(g, "reggan-tests", "")
}

/// flow = Gather(FLOWS, expression); face_out = GridSample(face, base grid + flow * 2/S).
fn push_flow_and_warp(g: &mut GraphProto, s: usize, flows: &[Vec<f32>]) {
    let si = s as i64;
    let e = flows.len() as i64;
    let planar: Vec<f32> = flows.concat();
    g.initializer
        .push(floats("FLOWS", &[e, 2, si, si], &planar));
    let grids: Vec<f32> = flows.iter().flat_map(|f| sample_grid(s, f)).collect();
    g.initializer.push(floats("GRIDS", &[e, si, si, 2], &grids));
    push_gather(g, "FLOWS", "flow");
    push_gather(g, "GRIDS", "grid");
    push_grid_sample(g);
    g.output.push(flow_value_info());
}

/// face_out = GridSample(face, grid), bilinear, edges replicated, pixel centres.
fn push_grid_sample(g: &mut GraphProto) {
    g.node.push(node(
        "GridSample",
        &["face", "grid"],
        "face_out",
        vec![
            attr_str("mode", "bilinear"),
            attr_str("padding_mode", "border"),
            attr_int("align_corners", 0),
        ],
    ));
}

/// GridSample's normalised coordinates (align_corners = 0: pixel centres) of the
/// positions x + flow(x), as [S,S,2] (x, y).
fn sample_grid(s: usize, flow: &[f32]) -> Vec<f32> {
    let n = s * s;
    let norm = |px: f32| (2.0 * px + 1.0) / s as f32 - 1.0;
    (0..n)
        .flat_map(|i| {
            let (x, y) = ((i % s) as f32, (i / s) as f32);
            [norm(x + flow[i]), norm(y + flow[n + i])]
        })
        .collect()
}

/// `flow` with every dimension symbolic, so that ONNX Runtime's own shape checks let a
/// wrong shape through to the loader's probe (which must catch it).
fn flow_value_info() -> ValueInfoProto {
    value_info_partial("flow", DataType::FLOAT, &[None, None, None])
}

/// A float32 table (values in `raw_data`), checked against its shape.
fn floats(name: &str, dims: &[i64], vals: &[f32]) -> TensorProto {
    assert_eq!(dims.iter().product::<i64>() as usize, vals.len(), "{name}");
    reggan_onnxgraph::floats(name, dims, vals)
}
