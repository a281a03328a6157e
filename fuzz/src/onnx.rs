// SPDX-License-Identifier: MIT OR Apache-2.0
//! Valid ONNX graphs with the contract's names (`face`, `expression` -> `face_out`,
//! optionally `flow`) but the wrong shapes, element types or batch behaviour: what a
//! half-finished export or a model for another product looks like. The loader must
//! refuse each at load time, or the model must then run correctly on any batch.

use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::{GraphProto, Message, ModelProto};
use reggan_onnxgraph::{
    attr_int, attr_ints, floats, int64s, model_of, node, push_gather, value_info_symbolic,
};

use crate::input::Input;

/// How `face_out` is computed from the inputs.
#[derive(Debug, Clone, Copy)]
pub enum Body {
    /// face_out = face: the contract's shapes, an identity model.
    Identity,
    /// Only the first face of the batch comes out ([1,3,S,S] whatever N is).
    FirstOfBatch,
    /// NHWC instead of NCHW.
    Transpose,
    /// One channel instead of three.
    ChannelMean,
    /// float64 instead of float32.
    Double,
    /// face / 0: infinities and NaN.
    DivideByZero,
    /// A constant face per expression, of side `table`.
    Constant { table: i64 },
}

#[derive(Debug, Clone, Copy)]
pub enum Flow {
    Absent,
    /// flow = Gather(zeros [E, channels, S, S], expression).
    Zeros {
        channels: i64,
    },
    /// flow = the face's first two channels times `scale` (huge or NaN flows).
    FromFace {
        scale: f32,
    },
    /// Only the first item of the batch.
    FirstOfBatch,
}

#[derive(Debug, Clone)]
pub struct GraphSpec {
    pub size: i64,
    pub expressions: i64,
    pub face_type: DataType,
    pub expression_type: DataType,
    pub body: Body,
    pub flow: Flow,
}

impl GraphSpec {
    pub fn from_input(input: &mut Input, size: i64, expressions: i64) -> Self {
        let body = match input.u8() % 8 {
            0 | 1 => Body::Identity,
            2 => Body::FirstOfBatch,
            3 => Body::Transpose,
            4 => Body::ChannelMean,
            5 => Body::Double,
            6 => Body::DivideByZero,
            _ => Body::Constant {
                table: input.choose(&[size, size / 2, size + 1]),
            },
        };
        let flow = match input.u8() % 6 {
            0 | 1 => Flow::Absent,
            2 => Flow::Zeros {
                channels: input.choose(&[2, 1, 3]),
            },
            3 => Flow::FromFace {
                scale: input.choose(&[1.0, 1e4, 1e30, f32::NAN, f32::INFINITY]),
            },
            4 => Flow::FirstOfBatch,
            _ => Flow::Zeros { channels: 2 },
        };
        let common = |input: &mut Input, good: DataType, bad: &[DataType]| {
            if input.u8().is_multiple_of(4) {
                input.choose(bad)
            } else {
                good
            }
        };
        GraphSpec {
            size,
            expressions,
            face_type: common(
                input,
                DataType::FLOAT,
                &[DataType::DOUBLE, DataType::FLOAT16, DataType::UINT8],
            ),
            expression_type: common(input, DataType::INT64, &[DataType::INT32, DataType::FLOAT]),
            body,
            flow,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.model().write_to_bytes().expect("the model serialises")
    }

    fn model(&self) -> ModelProto {
        let mut g = GraphProto::new();
        g.name = "reggan_fuzz_model".into();
        g.input = vec![
            value_info_symbolic("face", self.face_type, 4),
            value_info_symbolic("expression", self.expression_type, 1),
        ];
        self.push_body(&mut g);
        g.output = vec![value_info_symbolic("face_out", DataType::FLOAT, 4)];
        if self.push_flow(&mut g) {
            g.output
                .push(value_info_symbolic("flow", DataType::FLOAT, 4));
        }
        model_of(g, "reggan-fuzz", "")
    }

    fn push_body(&self, g: &mut GraphProto) {
        let (s, e) = (self.size, self.expressions);
        match self.body {
            Body::Identity => g.node.push(node("Identity", &["face"], "face_out", vec![])),
            Body::FirstOfBatch => push_slice(g, "face", "face_out", 0, 0, 1),
            Body::Transpose => g.node.push(node(
                "Transpose",
                &["face"],
                "face_out",
                vec![attr_ints("perm", &[0, 2, 3, 1])],
            )),
            Body::ChannelMean => g.node.push(node(
                "ReduceMean",
                &["face"],
                "face_out",
                vec![attr_ints("axes", &[1]), attr_int("keepdims", 1)],
            )),
            Body::Double => g.node.push(node(
                "Cast",
                &["face"],
                "face_out",
                vec![attr_int("to", DataType::DOUBLE as i64)],
            )),
            Body::DivideByZero => {
                g.initializer.push(floats("ZERO", &[], &[0.0]));
                g.node
                    .push(node("Div", &["face", "ZERO"], "face_out", vec![]));
            }
            Body::Constant { table } => {
                let n = (e * 3 * table * table).max(0) as usize;
                g.initializer
                    .push(floats("TABLE", &[e, 3, table, table], &vec![0.25; n]));
                push_gather(g, "TABLE", "face_out");
            }
        }
        let _ = s;
    }

    /// Adds the flow nodes; false when the graph has no flow.
    fn push_flow(&self, g: &mut GraphProto) -> bool {
        let (s, e) = (self.size, self.expressions);
        match self.flow {
            Flow::Absent => return false,
            Flow::Zeros { channels } => {
                let n = (e * channels * s * s).max(0) as usize;
                g.initializer
                    .push(floats("FLOWS", &[e, channels, s, s], &vec![0.0; n]));
                push_gather(g, "FLOWS", "flow");
            }
            Flow::FromFace { scale } => {
                push_slice(g, "face", "face_xy", 1, 0, 2);
                g.initializer.push(floats("SCALE", &[], &[scale]));
                g.node
                    .push(node("Mul", &["face_xy", "SCALE"], "flow", vec![]));
            }
            Flow::FirstOfBatch => {
                let n = (e * 2 * s * s).max(0) as usize;
                g.initializer
                    .push(floats("FLOWS", &[e, 2, s, s], &vec![0.5; n]));
                push_gather(g, "FLOWS", "all_flows");
                push_slice(g, "all_flows", "flow", 0, 0, 1);
            }
        }
        true
    }
}

/// `out = in[start:end]` along `axis`.
fn push_slice(g: &mut GraphProto, input: &str, out: &str, axis: i64, start: i64, end: i64) {
    let names = [
        format!("{out}_starts"),
        format!("{out}_ends"),
        format!("{out}_axes"),
    ];
    for (name, v) in names.iter().zip([start, end, axis]) {
        g.initializer.push(int64s(name, &[v]));
    }
    g.node.push(node(
        "Slice",
        &[input, &names[0], &names[1], &names[2]],
        out,
        vec![],
    ));
}
