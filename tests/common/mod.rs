//! Tiny model directories for contract tests, written with the same ONNX crates the
//! trainer uses (the few helpers are copied from trainer/src/onnx_export.rs so the core's
//! tests do not depend on the trainer).
//!
//! A flow test model has one constant flow per expression: `flow = Gather(FLOWS,
//! expression)`, and its `face_out` is the face warped by that flow with GridSample
//! (bilinear, border, pixel centres), the way a real format-2 graph computes its
//! appearance on the warped crop. Its appearance layer is the identity, so the whole
//! change it makes is geometric.

#![allow(dead_code)] // each test binary uses a part of it

use std::path::{Path, PathBuf};

use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::tensor_shape_proto::{dimension, Dimension};
use onnx_protobuf::type_proto;
use onnx_protobuf::{
    AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};
use reggan::{default_model_dir, Manifest, RgbImage, Template};

const OPSET: i64 = 17;
const IR_VERSION: i64 = 8;

/// What the graph's `flow` output is.
pub enum FlowOutput {
    /// No `flow` output (a format-1 graph).
    Absent,
    /// One flow per expression, each 2*S*S values (dx plane, dy plane) in crop pixels.
    PerExpression(Vec<Vec<f32>>),
    /// A flow of one channel instead of two: breaks the contract's [N,2,S,S].
    OneChannel,
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
        value_info("face", DataType::FLOAT, &[Some(3), Some(si), Some(si)]),
        value_info("expression", DataType::INT64, &[]),
    ];
    g.output = vec![value_info(
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
        FlowOutput::OneChannel => {
            g.node.push(node("Identity", &["face"], "face_out", vec![]));
            let zeros = vec![0.0; expressions * s * s];
            g.initializer
                .push(floats("FLOWS", &[expressions as i64, 1, si, si], &zeros));
            push_gather(&mut g, "FLOWS", "flow");
            g.output.push(flow_value_info());
        }
    }
    model_of(g)
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
    g.output.push(flow_value_info());
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

fn push_gather(g: &mut GraphProto, table: &str, out: &str) {
    g.node.push(node(
        "Gather",
        &[table, "expression"],
        out,
        vec![attr_int("axis", 0)],
    ));
}

/// `flow` with every dimension symbolic, so that ONNX Runtime's own shape checks let a
/// wrong shape through to the loader's probe (which must catch it).
fn flow_value_info() -> ValueInfoProto {
    value_info("flow", DataType::FLOAT, &[None, None, None])
}

fn floats(name: &str, dims: &[i64], vals: &[f32]) -> TensorProto {
    assert_eq!(dims.iter().product::<i64>() as usize, vals.len(), "{name}");
    let mut p = TensorProto::new();
    p.name = name.into();
    p.dims = dims.to_vec();
    p.data_type = DataType::FLOAT as i32;
    p.raw_data = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    p
}

fn attr_int(name: &str, v: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INT.into();
    a.i = v;
    a
}

fn attr_str(name: &str, v: &str) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::STRING.into();
    a.s = v.as_bytes().to_vec();
    a
}

fn node(op: &str, inputs: &[&str], output: &str, attrs: Vec<AttributeProto>) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.name = format!("{op}_{output}");
    n.input = inputs.iter().map(|s| s.to_string()).collect();
    n.output = vec![output.into()];
    n.attribute = attrs;
    n
}

/// A tensor value with a symbolic batch dimension "N" first; `None` dims are symbolic.
fn value_info(name: &str, elem: DataType, dims: &[Option<i64>]) -> ValueInfoProto {
    let mut shape = TensorShapeProto::new();
    let symbolic = |label: String| {
        let mut d = Dimension::new();
        d.value = Some(dimension::Value::DimParam(label));
        d
    };
    shape.dim.push(symbolic("N".into()));
    for (i, d) in dims.iter().enumerate() {
        shape.dim.push(match d {
            Some(v) => {
                let mut dim = Dimension::new();
                dim.value = Some(dimension::Value::DimValue(*v));
                dim
            }
            None => symbolic(format!("{name}_{i}")),
        });
    }
    let mut tt = type_proto::Tensor::new();
    tt.elem_type = elem as i32;
    tt.shape = protobuf::MessageField::some(shape);
    let mut ty = TypeProto::new();
    ty.value = Some(type_proto::Value::TensorType(tt));
    let mut v = ValueInfoProto::new();
    v.name = name.into();
    v.type_ = protobuf::MessageField::some(ty);
    v
}

fn model_of(g: GraphProto) -> ModelProto {
    let mut m = ModelProto::new();
    m.ir_version = IR_VERSION;
    m.producer_name = "reggan-tests".into();
    let mut opset = OperatorSetIdProto::new();
    opset.version = OPSET;
    m.opset_import = vec![opset];
    m.graph = protobuf::MessageField::some(g);
    m
}
