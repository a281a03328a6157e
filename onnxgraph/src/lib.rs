//! Builders for ONNX graphs: nodes, attributes, constant tensors, value infos and the
//! model around a graph, on the `onnx-protobuf` / `protobuf` crates. One home for the
//! helpers the trainer's exporters (`reggan-trainer`), the core's contract tests
//! (`tests/common`) and the fuzz targets (`reggan-fuzz`) all build their graphs with;
//! what each graph computes stays with its user.
//!
//! The encodings are part of the output: `floats` stores its values in `raw_data`,
//! `float_data`/`scalar_f32` in `float_data`, `int64s`/`int64_data` in `int64_data`.
//! Exported files stay byte-identical only while these stay as they are.

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

pub use onnx_protobuf;
pub use protobuf;

/// The ONNX opset every reggan graph is written for.
pub const OPSET: i64 = 17;
/// The ONNX IR version the files declare (IR 8 is the one that came with opset 17).
pub const IR_VERSION: i64 = 8;

/// A node with one output, named `{op}_{output}`.
pub fn node(op: &str, inputs: &[&str], output: &str, attrs: Vec<AttributeProto>) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.name = format!("{op}_{output}");
    n.input = inputs.iter().map(|s| s.to_string()).collect();
    n.output = vec![output.into()];
    n.attribute = attrs;
    n
}

pub fn attr_int(name: &str, v: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INT.into();
    a.i = v;
    a
}

/// An attribute holding a list of ints (e.g. `perm`, or `axes` of ReduceMean in opset 17).
pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INTS.into();
    a.ints = v.to_vec();
    a
}

pub fn attr_float(name: &str, v: f32) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::FLOAT.into();
    a.f = v;
    a
}

pub fn attr_str(name: &str, v: &str) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::STRING.into();
    a.s = v.as_bytes().to_vec();
    a
}

/// A float32 tensor of shape `dims`, its values little-endian in `raw_data` (the
/// compact form, for weight tables).
pub fn floats(name: &str, dims: &[i64], vals: &[f32]) -> TensorProto {
    let mut p = TensorProto::new();
    p.name = name.into();
    p.dims = dims.to_vec();
    p.data_type = DataType::FLOAT as i32;
    p.raw_data = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    p
}

/// A float32 tensor of shape `dims`, its values in the `float_data` field (small
/// constants).
pub fn float_data(name: &str, dims: &[i64], vals: &[f32]) -> TensorProto {
    let mut p = TensorProto::new();
    p.name = name.into();
    p.dims = dims.to_vec();
    p.data_type = DataType::FLOAT as i32;
    p.float_data = vals.to_vec();
    p
}

/// A float32 scalar (shape []) in `float_data`.
pub fn scalar_f32(name: &str, v: f32) -> TensorProto {
    float_data(name, &[], &[v])
}

/// A 1-D int64 tensor of these values (in `int64_data`): axes, pads, starts, shapes.
pub fn int64s(name: &str, vals: &[i64]) -> TensorProto {
    int64_data(name, &[vals.len() as i64], vals)
}

/// An int64 tensor of shape `dims`, its values in `int64_data`.
pub fn int64_data(name: &str, dims: &[i64], vals: &[i64]) -> TensorProto {
    let mut p = TensorProto::new();
    p.name = name.into();
    p.dims = dims.to_vec();
    p.data_type = DataType::INT64 as i32;
    p.int64_data = vals.to_vec();
    p
}

/// A float16 tensor of shape `dims` from the IEEE half bit patterns, little-endian in
/// `raw_data`.
pub fn float16_bits(name: &str, dims: &[i64], bits: &[u16]) -> TensorProto {
    let mut p = TensorProto::new();
    p.name = name.into();
    p.dims = dims.to_vec();
    p.data_type = DataType::FLOAT16 as i32;
    p.raw_data = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
    p
}

/// One dimension of a value's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Value(i64),
    /// A symbolic size (any size at run time), by its label.
    Param(String),
}

/// A tensor value of element type `elem` and exactly these dimensions.
pub fn value_info_dims(name: &str, elem: DataType, dims: &[Dim]) -> ValueInfoProto {
    let mut shape = TensorShapeProto::new();
    for d in dims {
        let mut dim = Dimension::new();
        dim.value = Some(match d {
            Dim::Value(v) => dimension::Value::DimValue(*v),
            Dim::Param(label) => dimension::Value::DimParam(label.clone()),
        });
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

/// A batched tensor value: the symbolic batch dimension "N" first, then `dims`, all
/// fixed (the contract's `face` is `value_info("face", FLOAT, &[3, S, S])`).
pub fn value_info(name: &str, elem: DataType, dims: &[i64]) -> ValueInfoProto {
    let all: Vec<Dim> = std::iter::once(Dim::Param("N".into()))
        .chain(dims.iter().map(|&d| Dim::Value(d)))
        .collect();
    value_info_dims(name, elem, &all)
}

/// A batched tensor value like [`value_info`], where a `None` dimension is symbolic
/// (labelled `{name}_{i}`, `i` counting the dimensions after N from 0).
pub fn value_info_partial(name: &str, elem: DataType, dims: &[Option<i64>]) -> ValueInfoProto {
    let all: Vec<Dim> = std::iter::once(Dim::Param("N".into()))
        .chain(dims.iter().enumerate().map(|(i, d)| match d {
            Some(v) => Dim::Value(*v),
            None => Dim::Param(format!("{name}_{i}")),
        }))
        .collect();
    value_info_dims(name, elem, &all)
}

/// A tensor value of `rank` dimensions, every one symbolic (`{name}_{i}`, no batch
/// label): ONNX Runtime's own shape checks then let any shape of that rank through.
pub fn value_info_symbolic(name: &str, elem: DataType, rank: usize) -> ValueInfoProto {
    let all: Vec<Dim> = (0..rank)
        .map(|i| Dim::Param(format!("{name}_{i}")))
        .collect();
    value_info_dims(name, elem, &all)
}

/// `out = Gather(table, expression)` on axis 0: the per-face row of a table with one
/// row per expression (the contract's input `expression`).
pub fn push_gather(g: &mut GraphProto, table: &str, out: &str) {
    g.node.push(node(
        "Gather",
        &[table, "expression"],
        out,
        vec![attr_int("axis", 0)],
    ));
}

/// Wraps a graph into a model of [`IR_VERSION`] and [`OPSET`]. `producer_version` may
/// be empty (then the field is left out of the file).
pub fn model_of(g: GraphProto, producer_name: &str, producer_version: &str) -> ModelProto {
    let mut m = ModelProto::new();
    m.ir_version = IR_VERSION;
    m.producer_name = producer_name.into();
    m.producer_version = producer_version.into();
    let mut opset = OperatorSetIdProto::new();
    opset.version = OPSET;
    m.opset_import = vec![opset];
    m.graph = protobuf::MessageField::some(g);
    m
}

/// Writes a model as `dir/model.onnx` (creating `dir`); returns its size in bytes.
pub fn write_model(m: &ModelProto, dir: &Path) -> Result<u64> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let bytes = m.write_to_bytes()?;
    let path = dir.join("model.onnx");
    std::fs::write(&path, &bytes).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(bytes.len() as u64)
}
