//! Graphs built with the helpers parse back with the contents they were given, and
//! ONNX Runtime loads and runs them with the expected results.

use std::sync::OnceLock;

use ndarray::{array, Array1, Array2};
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::tensor_shape_proto::dimension;
use onnx_protobuf::{type_proto, GraphProto, Message, ModelProto, ValueInfoProto};
use ort::session::Session;
use ort::value::TensorRef;
use reggan_onnxgraph::*;

/// x [N,3] float, expression [N] int64 -> y [N,2] = ((x + TABLE[expression]) * two)[:, 1:3]
/// computed with `Abs` on an `Identity` so every helper appears in the graph.
fn small_graph() -> GraphProto {
    let mut g = GraphProto::new();
    g.name = "onnxgraph_test".into();
    g.input = vec![
        value_info("x", DataType::FLOAT, &[3]),
        value_info("expression", DataType::INT64, &[]),
    ];
    g.output = vec![value_info_partial("y", DataType::FLOAT, &[None])];
    g.initializer = vec![
        floats("TABLE", &[2, 3], &[0.0, 0.0, 0.0, 1.0, -2.0, 3.0]),
        scalar_f32("two", 2.0),
        int64s("starts", &[1]),
        int64s("ends", &[3]),
        int64_data("axes", &[1], &[1]),
    ];
    push_gather(&mut g, "TABLE", "row");
    g.node.push(node("Add", &["x", "row"], "sum", vec![]));
    g.node.push(node("Mul", &["sum", "two"], "twice", vec![]));
    g.node.push(node(
        "Slice",
        &["twice", "starts", "ends", "axes"],
        "sliced",
        vec![],
    ));
    g.node.push(node(
        "LeakyRelu",
        &["sliced"],
        "y",
        vec![attr_float("alpha", 0.5)],
    ));
    g
}

fn dims(v: &ValueInfoProto) -> Vec<dimension::Value> {
    let Some(type_proto::Value::TensorType(t)) = &v.type_.value else {
        panic!("{} is not a tensor", v.name);
    };
    t.shape
        .dim
        .iter()
        .map(|d| d.value.clone().unwrap())
        .collect()
}

#[test]
fn a_model_parses_back_with_its_nodes_attributes_and_shapes() {
    let m = model_of(small_graph(), "onnxgraph-test", "");
    let bytes = m.write_to_bytes().unwrap();
    let back = ModelProto::parse_from_bytes(&bytes).unwrap();
    assert_eq!(back, m);
    assert_eq!(
        (back.ir_version, back.opset_import[0].version),
        (IR_VERSION, OPSET)
    );
    assert_eq!(back.producer_name, "onnxgraph-test");
    assert!(back.producer_version.is_empty());
    let g = back.graph.unwrap();
    let gather = &g.node[0];
    assert_eq!(gather.op_type, "Gather");
    assert_eq!(gather.name, "Gather_row");
    assert_eq!(gather.input, ["TABLE", "expression"]);
    assert_eq!(gather.output, ["row"]);
    assert_eq!(
        (gather.attribute[0].name.as_str(), gather.attribute[0].i),
        ("axis", 0)
    );
    let leaky = &g.node[4].attribute[0];
    assert_eq!((leaky.name.as_str(), leaky.f), ("alpha", 0.5));

    use dimension::Value::{DimParam, DimValue};
    assert_eq!(dims(&g.input[0]), [DimParam("N".into()), DimValue(3)]);
    assert_eq!(dims(&g.input[1]), [DimParam("N".into())]);
    assert_eq!(
        dims(&g.output[0]),
        [DimParam("N".into()), DimParam("y_0".into())]
    );
    let sym = value_info_symbolic("flow", DataType::FLOAT, 2);
    assert_eq!(
        dims(&sym),
        [DimParam("flow_0".into()), DimParam("flow_1".into())]
    );

    // The encodings: raw little-endian floats, float_data scalars, int64_data lists.
    let table = &g.initializer[0];
    assert_eq!(table.dims, [2, 3]);
    assert_eq!(table.raw_data.len(), 6 * 4);
    assert_eq!(table.raw_data[12..16], 1.0f32.to_le_bytes());
    assert_eq!(
        (
            g.initializer[1].dims.len(),
            g.initializer[1].float_data.as_slice()
        ),
        (0, &[2.0][..])
    );
    assert_eq!(
        (
            g.initializer[2].dims.as_slice(),
            g.initializer[2].int64_data.as_slice()
        ),
        (&[1][..], &[1][..])
    );

    let a = attr_ints("perm", &[0, 2, 3, 1]);
    assert_eq!(a.ints, [0, 2, 3, 1]);
    let s = attr_str("mode", "edge");
    assert_eq!(s.s, b"edge");
    let h = float16_bits("H", &[2], &[0x3c00, 0xc000]);
    assert_eq!(
        (h.data_type, h.raw_data.as_slice()),
        (DataType::FLOAT16 as i32, &[0x00, 0x3c, 0x00, 0xc0][..])
    );
}

#[test]
fn write_model_writes_model_onnx_and_returns_its_size() {
    let dir = std::env::temp_dir().join(format!("reggan-onnxgraph-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let m = model_of(small_graph(), "onnxgraph-test", "1.2.3");
    let size = write_model(&m, &dir.join("sub")).unwrap();
    let bytes = std::fs::read(dir.join("sub/model.onnx")).unwrap();
    assert_eq!(size, bytes.len() as u64);
    assert_eq!(bytes, m.write_to_bytes().unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The ONNX Runtime of `scripts/setup.sh` (`$ORT_DYLIB_PATH`, set by `.deps/env.sh`).
fn environment() -> Option<&'static ort::environment::Environment> {
    static ENV: OnceLock<Option<ort::environment::Environment>> = OnceLock::new();
    ENV.get_or_init(|| {
        let Some(path) = std::env::var_os("ORT_DYLIB_PATH") else {
            eprintln!("skipping: ORT_DYLIB_PATH is not set (source .deps/env.sh)");
            return None;
        };
        let env = ort::init_from(&path)
            .unwrap()
            .with_name("onnxgraph-test")
            .build()
            .unwrap();
        Some(env)
    })
    .as_ref()
}

#[test]
fn onnx_runtime_runs_the_graph() {
    let Some(env) = environment() else { return };
    let bytes = model_of(small_graph(), "onnxgraph-test", "")
        .write_to_bytes()
        .unwrap();
    let mut session = Session::builder(env)
        .unwrap()
        .commit_from_memory(&bytes)
        .unwrap();
    let x: Array2<f32> = array![[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [0.5, -1.0, 0.0]];
    let e: Array1<i64> = array![0, 1, 1];
    let outputs = session
        .run(ort::inputs![
            "x" => TensorRef::from_array_view(x.view()).unwrap(),
            "expression" => TensorRef::from_array_view(e.view()).unwrap(),
        ])
        .unwrap();
    let y = outputs["y"].try_extract_array::<f32>().unwrap();
    assert_eq!(y.shape(), [3, 2]);
    // Row 0: (x + 0) * 2 -> [4, 6]; row 1: (x + [1,-2,3]) * 2 -> [0, 12];
    // row 2: [-3, 3] * 2 -> [-6, 6] -> LeakyRelu 0.5 -> [-3, 6].
    let got: Vec<f32> = y.iter().copied().collect();
    assert_eq!(got, [4.0, 6.0, 0.0, 12.0, -3.0, 6.0]);
}
