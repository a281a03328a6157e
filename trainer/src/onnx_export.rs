//! Writes the expression layers as an ONNX graph following the model contract:
//! inputs `face` float32 [N,3,S,S] and `expression` int64 [N], output `face_out`.
//!
//! Gather W and B by expression; Pad the face (edge) by k/2; k² Slices -> Unsqueeze ->
//! Concat = [N,3,k²,S,S]; Mul by W; ReduceSum over k²; Add B; Clip to [0,1]. The
//! same arithmetic as `regression::Layer::apply`, so tch can check the file.

use std::path::Path;

use anyhow::{Context, Result};
use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::tensor_shape_proto::{dimension, Dimension};
use onnx_protobuf::type_proto;
use onnx_protobuf::{
    AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};
use tch::{Kind, Tensor};

pub const OPSET: i64 = 17;
pub const IR_VERSION: i64 = 8;

/// W/B as stored in the file: float32, or float16 rounded (what the graph computes
/// with after its Cast back to float).
pub fn stored(t: &Tensor, fp16: bool) -> Tensor {
    if fp16 {
        t.to_kind(Kind::Half).to_kind(Kind::Float)
    } else {
        t.to_kind(Kind::Float)
    }
}

pub fn initializer(name: &str, t: &Tensor, fp16: bool) -> Result<TensorProto> {
    let mut p = TensorProto::new();
    p.name = name.into();
    p.dims = t.size();
    let flat = t.flatten(0, -1).contiguous();
    if fp16 {
        p.data_type = DataType::FLOAT16 as i32;
        let bits = Vec::<i16>::try_from(&flat.to_kind(Kind::Half).view_dtype(Kind::Int16))?;
        p.raw_data = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
    } else {
        p.data_type = DataType::FLOAT as i32;
        let vals = Vec::<f32>::try_from(&flat.to_kind(Kind::Float))?;
        p.raw_data = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    }
    Ok(p)
}

pub fn int64s(name: &str, vals: &[i64]) -> TensorProto {
    let mut p = TensorProto::new();
    p.name = name.into();
    p.dims = vec![vals.len() as i64];
    p.data_type = DataType::INT64 as i32;
    p.int64_data = vals.to_vec();
    p
}

pub fn scalar_f32(name: &str, v: f32) -> TensorProto {
    let mut p = TensorProto::new();
    p.name = name.into();
    p.data_type = DataType::FLOAT as i32;
    p.float_data = vec![v];
    p
}

pub fn attr_int(name: &str, v: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INT.into();
    a.i = v;
    a
}

pub fn attr_str(name: &str, v: &str) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::STRING.into();
    a.s = v.as_bytes().to_vec();
    a
}

pub fn node(op: &str, inputs: &[&str], output: &str, attrs: Vec<AttributeProto>) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.name = format!("{op}_{output}");
    n.input = inputs.iter().map(|s| s.to_string()).collect();
    n.output = vec![output.into()];
    n.attribute = attrs;
    n
}

/// A tensor value with a symbolic batch dimension "N" first.
pub fn value_info(name: &str, elem: DataType, dims: &[i64]) -> ValueInfoProto {
    let mut shape = TensorShapeProto::new();
    let mut n = Dimension::new();
    n.value = Some(dimension::Value::DimParam("N".into()));
    shape.dim.push(n);
    for &d in dims {
        let mut dim = Dimension::new();
        dim.value = Some(dimension::Value::DimValue(d));
        shape.dim.push(dim);
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

/// The graph for W [E,3,k²,S,S] and B [E,3,S,S].
pub fn build(w: &Tensor, b: &Tensor, k: usize, fp16: bool) -> Result<ModelProto> {
    let s = w.size()[3];
    let mut g = GraphProto::new();
    g.name = "reggan_expression_layer".into();
    g.input = vec![
        value_info("face", DataType::FLOAT, &[3, s, s]),
        value_info("expression", DataType::INT64, &[]),
    ];
    g.output = vec![value_info("face_out", DataType::FLOAT, &[3, s, s])];
    g.initializer = vec![
        initializer("W", w, fp16)?,
        initializer("B", b, fp16)?,
        int64s("axis2", &[2]),
        scalar_f32("zero", 0.0),
        scalar_f32("one", 1.0),
    ];

    // Per-face weights; float16 storage is cast back so the arithmetic is float32.
    let (wg, bg) = if fp16 { ("W_h", "B_h") } else { ("W_g", "B_g") };
    g.node.push(node(
        "Gather",
        &["W", "expression"],
        wg,
        vec![attr_int("axis", 0)],
    ));
    g.node.push(node(
        "Gather",
        &["B", "expression"],
        bg,
        vec![attr_int("axis", 0)],
    ));
    if fp16 {
        g.node.push(node(
            "Cast",
            &["W_h"],
            "W_g",
            vec![attr_int("to", DataType::FLOAT as i64)],
        ));
        g.node.push(node(
            "Cast",
            &["B_h"],
            "B_g",
            vec![attr_int("to", DataType::FLOAT as i64)],
        ));
    }

    push_shifted(&mut g, "face", k, s, "", "stack");
    push_weighted_sum(&mut g, "stack", "W_g", "B_g", "", "biased");
    g.node
        .push(node("Clip", &["biased", "zero", "one"], "face_out", vec![]));

    let mut m = ModelProto::new();
    m.ir_version = IR_VERSION;
    m.producer_name = "reggan-trainer".into();
    m.producer_version = env!("CARGO_PKG_VERSION").into();
    let mut opset = OperatorSetIdProto::new();
    opset.version = OPSET;
    m.opset_import = vec![opset];
    m.graph = protobuf::MessageField::some(g);
    Ok(m)
}

/// Nodes computing the k² shifted copies of `input` [N,C,H,W] (edge padded by k/2),
/// stacked on axis 2 as `out` [N,C,k²,H,W], in the order of `regression::shifted`.
/// `prefix` keeps the names of several such blocks in one graph apart. Needs the
/// initializer `axis2` ([2]) in the graph.
pub fn push_shifted(g: &mut GraphProto, input: &str, k: usize, size: i64, prefix: &str, out: &str) {
    if k == 1 {
        g.node
            .push(node("Unsqueeze", &[input, "axis2"], out, vec![]));
        return;
    }
    let r = (k / 2) as i64;
    let (pads, axes, padded) = (
        format!("{prefix}pads"),
        format!("{prefix}hw_axes"),
        format!("{prefix}padded"),
    );
    g.initializer.push(int64s(&pads, &[0, 0, r, r, 0, 0, r, r]));
    g.initializer.push(int64s(&axes, &[2, 3]));
    g.node.push(node(
        "Pad",
        &[input, &pads],
        &padded,
        vec![attr_str("mode", "edge")],
    ));
    let mut copies = Vec::new();
    for dy in 0..k as i64 {
        for dx in 0..k as i64 {
            let (st, en, sl, un) = (
                format!("{prefix}st_{dy}_{dx}"),
                format!("{prefix}en_{dy}_{dx}"),
                format!("{prefix}sl_{dy}_{dx}"),
                format!("{prefix}un_{dy}_{dx}"),
            );
            g.initializer.push(int64s(&st, &[dy, dx]));
            g.initializer.push(int64s(&en, &[dy + size, dx + size]));
            g.node
                .push(node("Slice", &[&padded, &st, &en, &axes], &sl, vec![]));
            g.node.push(node("Unsqueeze", &[&sl, "axis2"], &un, vec![]));
            copies.push(un);
        }
    }
    let refs: Vec<&str> = copies.iter().map(|c| c.as_str()).collect();
    g.node
        .push(node("Concat", &refs, out, vec![attr_int("axis", 2)]));
}

/// Nodes computing `out = ReduceSum_axis2(stack * w) + b`: the per-pixel linear map of
/// a `push_shifted` stack with gathered weights [N,C,k²,H,W] and bias [N,C,H,W].
/// Needs the initializer `axis2` ([2]).
pub fn push_weighted_sum(
    g: &mut GraphProto,
    stack: &str,
    w: &str,
    b: &str,
    prefix: &str,
    out: &str,
) {
    let (prod, sum) = (format!("{prefix}prod"), format!("{prefix}sum"));
    g.node.push(node("Mul", &[stack, w], &prod, vec![]));
    g.node.push(node(
        "ReduceSum",
        &[&prod, "axis2"],
        &sum,
        vec![attr_int("keepdims", 0)],
    ));
    g.node.push(node("Add", &[&sum, b], out, vec![]));
}

/// Writes `dir/model.onnx`; returns its size in bytes.
pub fn write(w: &Tensor, b: &Tensor, k: usize, fp16: bool, dir: &Path) -> Result<u64> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let bytes = build(w, b, k, fp16)?.write_to_bytes()?;
    let path = dir.join("model.onnx");
    std::fs::write(&path, &bytes).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(bytes.len() as u64)
}

/// An attribute holding a list of ints (e.g. `axes` of ReduceMin/ReduceMax in opset 17).
pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INTS.into();
    a.ints = v.to_vec();
    a
}

/// Wraps a graph into a model of this trainer's IR version and opset.
pub fn model_of(g: GraphProto) -> ModelProto {
    let mut m = ModelProto::new();
    m.ir_version = IR_VERSION;
    m.producer_name = "reggan-trainer".into();
    m.producer_version = env!("CARGO_PKG_VERSION").into();
    let mut opset = OperatorSetIdProto::new();
    opset.version = OPSET;
    m.opset_import = vec![opset];
    m.graph = protobuf::MessageField::some(g);
    m
}

/// Writes a model as `dir/model.onnx`; returns its size in bytes.
pub fn write_model(m: &ModelProto, dir: &Path) -> Result<u64> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let bytes = m.write_to_bytes()?;
    let path = dir.join("model.onnx");
    std::fs::write(&path, &bytes).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(bytes.len() as u64)
}
