//! The model contract and its runtime.
//!
//! A model is a directory with `model.onnx` (inputs `face` float32 [N,3,S,S] RGB in
//! [0,1] and `expression` int64 [N]; output `face_out` float32 [N,3,S,S]) and
//! `model.json` (the [`Manifest`]). The runtime is an ONNX Runtime session on the
//! execution provider the caller chose; `auto` tries TensorRT, then CUDA, then CPU and
//! reports which one really runs.
//!
//! Format 2 (geometry-first models) adds an optional second output, `flow` float32
//! [N,2,S,S]: a backward displacement field in crop pixels (channel 0 dx, channel 1 dy;
//! the edited crop at x samples the input crop at x + flow(x)). Such a model's
//! `face_out` is its appearance result on the flow-warped crop. The manifest says which
//! outputs the graph has (`outputs`); see [`crate::flow`] for how the runtime applies
//! the flow at the frame's own resolution.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ndarray::{Array1, Array4, ArrayView4};
use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;

use crate::align::Template;
use crate::error::{Error, Result};

/// Version of the model.json format of a model whose only output is `face_out` (what
/// the trainer writes for its regression and GAN models).
pub const FORMAT_VERSION: u32 = 1;

/// Version of the model.json format that may list a `flow` output (contract v2). This
/// build reads every version from [`FORMAT_VERSION`] up to this one.
pub const FORMAT_VERSION_FLOW: u32 = 2;

/// The largest crop side a model may have (the shipped ones use 128).
pub const MAX_CROP_SIZE: usize = 1024;

/// The graph output every model has: the edited face.
pub const OUTPUT_FACE: &str = "face_out";

/// The optional graph output of format-2 models: the backward expression flow.
pub const OUTPUT_FLOW: &str = "flow";

/// The expressions the product knows, in the order models list them by default (the
/// six targets the trainer learns from neutral faces).
pub const EXPRESSIONS: [&str; 6] = ["happy", "sad", "angry", "disgusted", "afraid", "surprised"];

/// Every expression name the element and the CLI accept: [`EXPRESSIONS`] plus
/// `neutral`, which format-2 models may offer as a target (calming a face). Whether a
/// given model has one is still up to its manifest.
pub const ALL_EXPRESSIONS: [&str; 7] = [
    "happy",
    "sad",
    "angry",
    "disgusted",
    "afraid",
    "surprised",
    "neutral",
];

/// `model.json`: everything needed to use a model, and what is known about its quality.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    /// "regression" (MR, Pixel-RR, Pixel-KR, LSRF) or "gan" (RegGAN, US-GAN, SARGAN).
    pub family: String,
    /// "mr", "pixel-rr", ...
    pub method: String,
    pub crop_size: usize,
    pub template: Template,
    /// Expression names in index order (the `expression` input indexes this list).
    pub expressions: Vec<String>,
    /// How pixels enter and leave the graph; always "rgb01" in format 1.
    pub normalization: String,
    /// Method hyper-parameters (e.g. `{"k": 3, "lambda": 0.1}`).
    #[serde(default)]
    pub params: serde_json::Value,
    /// Training data, subjects, licence.
    #[serde(default)]
    pub training: serde_json::Value,
    pub trainer_version: String,
    /// Measured quality (validation errors, ...).
    #[serde(default)]
    pub quality: serde_json::Value,
    /// The graph's outputs (format 2): `["face_out"]` or `["face_out", "flow"]`. Empty
    /// (and left out of the file) means `["face_out"]`, as in every format-1 model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<String>,
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("model.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::model(&path, format!("cannot read: {e}")))?;
        Self::parse(&text, &path)
    }

    /// Parses and checks the text of a `model.json` (`path` only names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let m: Manifest = serde_json::from_str(text)
            .map_err(|e| Error::model(path, format!("not a valid model.json: {e}")))?;
        let path = path.to_path_buf();
        if !(FORMAT_VERSION..=FORMAT_VERSION_FLOW).contains(&m.format_version) {
            return Err(Error::model(
                &path,
                format!(
                    "format_version {} (this build reads {FORMAT_VERSION} to {FORMAT_VERSION_FLOW})",
                    m.format_version
                ),
            ));
        }
        m.check_outputs()
            .map_err(|reason| Error::model(&path, reason))?;
        if m.expressions.is_empty() {
            return Err(Error::model(&path, "lists no expressions"));
        }
        if !(1..=MAX_CROP_SIZE).contains(&m.crop_size) {
            // Every buffer of the model and the compositor is S x S: a typo or a hostile
            // file must not make the element allocate gigabytes before it fails.
            return Err(Error::model(
                &path,
                format!("crop_size {} is outside 1 to {MAX_CROP_SIZE}", m.crop_size),
            ));
        }
        if m.template.size != m.crop_size {
            return Err(Error::model(&path, "template size differs from crop_size"));
        }
        if let Some(p) = m.template.points.iter().flatten().find(|v| !v.is_finite()) {
            return Err(Error::model(
                &path,
                format!("template point coordinate {p} is not a finite number"),
            ));
        }
        Ok(m)
    }

    /// `outputs` must name `face_out`, may name `flow` only from format 2 on, and
    /// nothing else: a runtime that silently ignored an output would composite a
    /// result the model did not mean.
    fn check_outputs(&self) -> std::result::Result<(), String> {
        if self.outputs.is_empty() {
            return Ok(());
        }
        if let Some(unknown) = self
            .outputs
            .iter()
            .find(|o| *o != OUTPUT_FACE && *o != OUTPUT_FLOW)
        {
            return Err(format!(
                "lists output '{unknown}' (known: {OUTPUT_FACE}, {OUTPUT_FLOW})"
            ));
        }
        if !self.outputs.iter().any(|o| o == OUTPUT_FACE) {
            return Err(format!("outputs {:?} lack {OUTPUT_FACE}", self.outputs));
        }
        if self.has_flow() && self.format_version < FORMAT_VERSION_FLOW {
            return Err(format!(
                "lists a {OUTPUT_FLOW} output, which needs format_version {FORMAT_VERSION_FLOW} (it has {})",
                self.format_version
            ));
        }
        Ok(())
    }

    /// Whether the graph has the `flow` output (a format-2 geometry-first model).
    pub fn has_flow(&self) -> bool {
        self.outputs.iter().any(|o| o == OUTPUT_FLOW)
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join("model.json");
        let text = serde_json::to_string_pretty(self).expect("manifest serialises");
        std::fs::write(&path, text + "\n").map_err(|source| Error::Io { path, source })
    }

    pub fn expression_index(&self, name: &str) -> Result<usize> {
        self.expressions
            .iter()
            .position(|e| e == name)
            .ok_or_else(|| Error::UnknownExpression {
                name: name.into(),
                available: self.expressions.join(", "),
            })
    }
}

/// Where inference runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Auto,
    Cpu,
    Cuda,
    TensorRt,
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda),
            "tensorrt" => Ok(Device::TensorRt),
            _ => Err(format!("unknown device '{s}' (auto, cpu, cuda, tensorrt)")),
        }
    }
}

/// The ONNX Runtime shared library: `$ORT_DYLIB_PATH`, the installed copy, else where
/// `scripts/setup.sh` put it when this crate was built (search order: [`crate::install`]).
pub fn onnxruntime_path() -> PathBuf {
    crate::install::onnxruntime_path()
}

/// One ONNX Runtime environment per process, loaded on first use.
pub fn environment() -> Result<&'static Environment> {
    static ENV: OnceLock<std::result::Result<Environment, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let path = onnxruntime_path();
        if !path.is_file() {
            return Err(format!(
                "ONNX Runtime library {} not found (run scripts/setup.sh or scripts/install.sh, or set ORT_DYLIB_PATH)",
                path.display()
            ));
        }
        let builder =
            ort::init_from(&path).map_err(|e| format!("cannot load {}: {e}", path.display()))?;
        builder
            .with_name("reggan")
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| Error::Runtime(e.clone()))
}

/// A loaded model: its manifest and a session on one execution provider.
pub struct ExpressionModel {
    dir: PathBuf,
    manifest: Manifest,
    session: Session,
    provider: &'static str,
    /// The flow does not depend on the face (found at load, [`Self::flow_is_constant`]).
    constant_flow: bool,
}

impl std::fmt::Debug for ExpressionModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpressionModel")
            .field("dir", &self.dir)
            .field("method", &self.manifest.method)
            .field("provider", &self.provider)
            .finish()
    }
}

impl ExpressionModel {
    /// Loads and checks a model directory. Everything that can be wrong with a model is
    /// found here, not on the first frame: missing or corrupt files, a graph that does
    /// not follow the contract, a provider that cannot be used.
    pub fn load(dir: &Path, device: Device, threads: usize) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::model(dir, "not a directory"));
        }
        let manifest = Manifest::read(dir)?;
        let onnx = dir.join("model.onnx");
        if !onnx.is_file() {
            return Err(Error::model(&onnx, "file not found"));
        }
        let (session, provider) = build_session(&onnx, device, threads)?;
        let mut model = ExpressionModel {
            dir: dir.into(),
            manifest,
            session,
            provider,
            constant_flow: false,
        };
        model.check_contract(&onnx)?;
        model.constant_flow = model.probe_constant_flow()?;
        Ok(model)
    }

    fn check_contract(&mut self, onnx: &Path) -> Result<()> {
        let inputs: Vec<String> = self
            .session
            .inputs()
            .iter()
            .map(|i| i.name().to_string())
            .collect();
        let outputs: Vec<String> = self
            .session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        if !(inputs.iter().any(|n| n == "face")
            && inputs.iter().any(|n| n == "expression")
            && outputs.iter().any(|n| n == OUTPUT_FACE))
        {
            return Err(Error::model(onnx, format!("graph has inputs {inputs:?} and outputs {outputs:?}; the contract needs inputs face, expression and output face_out")));
        }
        if self.manifest.has_flow() && !outputs.iter().any(|n| n == OUTPUT_FLOW) {
            return Err(Error::model(
                onnx,
                format!(
                    "model.json lists a {OUTPUT_FLOW} output but the graph has only {outputs:?}"
                ),
            ));
        }
        // Real runs: a graph that loads but cannot execute, or whose outputs do not
        // follow the batch (one face out per face in), fails here, at start-up, not on
        // the first frame with two faces.
        let s = self.manifest.crop_size;
        let last = self.manifest.expressions.len() as i64 - 1;
        for n in [1, 2] {
            let probe = Array4::<f32>::from_elem((n, 3, s, s), 0.5);
            let codes: Vec<i64> = (0..n as i64).map(|i| i.min(last)).collect();
            // The graph itself, batched (the CPU runs faces one at a time, a GPU not).
            self.check_batch(probe.view(), &codes)?;
            self.run_batch(probe.view(), &codes).map_err(|e| match e {
                Error::Model { .. } => e,
                e => Error::model(onnx, format!("test inference failed: {e}")),
            })?;
        }
        Ok(())
    }

    /// Whether two different faces get bit-identical flows for every expression: a
    /// flow that does not depend on the face (RegFlow's mean flow). The video path then
    /// has no flow to low-pass over time.
    fn probe_constant_flow(&mut self) -> Result<bool> {
        if !self.manifest.has_flow() {
            return Ok(false);
        }
        let (s, e) = (self.manifest.crop_size, self.manifest.expressions.len());
        // Grey faces, then a texture over every channel, each with every expression.
        let faces = Array4::<f32>::from_shape_fn((2 * e, 3, s, s), |(i, c, y, x)| match i < e {
            true => 0.5,
            false => ((7 * x + 13 * y + 29 * c) % 64) as f32 / 63.0,
        });
        let codes: Vec<i64> = (0..2 * e as i64).map(|i| i % e as i64).collect();
        let flow = self.run_with_flow(faces.view(), &codes)?.flow;
        let flow = flow.expect("a model with a flow output gives one");
        let (grey, textured) = flow.view().split_at(ndarray::Axis(0), e);
        Ok(grey
            .iter()
            .zip(textured.iter())
            .all(|(a, b)| a.to_bits() == b.to_bits()))
    }

    /// The flow output does not depend on the face (checked at load: two different
    /// faces get bit-identical flows for every expression), so there is no flow to
    /// low-pass over time. False for models without a flow.
    pub fn flow_is_constant(&self) -> bool {
        self.constant_flow
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The execution provider that really runs this model.
    pub fn provider(&self) -> &'static str {
        self.provider
    }
    pub fn crop_size(&self) -> usize {
        self.manifest.crop_size
    }

    /// Runs a batch of faces [N,3,S,S], each with its own expression index, and returns
    /// `face_out` (for a flow model: the appearance on the flow-warped crop).
    pub fn run(&mut self, faces: ArrayView4<f32>, expressions: &[i64]) -> Result<Array4<f32>> {
        self.run_with_flow(faces, expressions).map(|o| o.face)
    }

    /// Runs a batch like [`run`](Self::run) and also returns the `flow` output when the
    /// manifest lists one.
    ///
    /// On the CPU the faces run one at a time: a face's intermediates fit in the cache
    /// and a batch's do not (`models/mr`: 0.29 ms for one face, 2.6 ms for four in one
    /// batch; `models/regflow` 1.3 and 6.8 ms; the others about even). A GPU gets the
    /// whole batch.
    pub fn run_with_flow(
        &mut self,
        faces: ArrayView4<f32>,
        expressions: &[i64],
    ) -> Result<ModelOutput> {
        self.check_batch(faces, expressions)?;
        let n = faces.shape()[0];
        if self.provider != "CPU" || n <= 1 {
            return self.run_batch(faces, expressions);
        }
        let parts = (0..n)
            .map(|i| {
                let face = faces.slice(ndarray::s![i..i + 1, .., .., ..]);
                self.run_batch(face, &expressions[i..i + 1])
            })
            .collect::<Result<Vec<_>>>()?;
        let join = |arrays: Vec<ArrayView4<f32>>| {
            ndarray::concatenate(ndarray::Axis(0), &arrays)
                .map_err(|e| Error::Runtime(format!("joining the faces' outputs: {e}")))
        };
        Ok(ModelOutput {
            face: join(parts.iter().map(|p| p.face.view()).collect())?,
            flow: match self.manifest.has_flow() {
                true => Some(join(
                    parts
                        .iter()
                        .map(|p| p.flow.as_ref().expect("checked per face").view())
                        .collect(),
                )?),
                false => None,
            },
        })
    }

    /// One run of the session on a batch of faces.
    fn run_batch(&mut self, faces: ArrayView4<f32>, expressions: &[i64]) -> Result<ModelOutput> {
        let faces = faces.as_standard_layout();
        let expr = Array1::from_vec(expressions.to_vec());
        let outputs = self
            .session
            .run(ort::inputs![
                "face" => TensorRef::from_array_view(faces.view()).map_err(Error::runtime)?,
                "expression" => TensorRef::from_array_view(expr.view()).map_err(Error::runtime)?,
            ])
            .map_err(Error::runtime)?;
        let extract = |name: &str| -> Result<Array4<f32>> {
            let value = outputs
                .get(name)
                .ok_or_else(|| Error::Runtime(format!("the graph gave no {name} output")))?;
            let array = value.try_extract_array::<f32>().map_err(Error::runtime)?;
            array
                .into_dimensionality::<ndarray::Ix4>()
                .map_err(|e| Error::Runtime(format!("{name}: {e}")))
                .map(|a| a.to_owned())
        };
        let out = ModelOutput {
            face: extract(OUTPUT_FACE)?,
            flow: match self.manifest.has_flow() {
                true => Some(extract(OUTPUT_FLOW)?),
                false => None,
            },
        };
        // The compositor indexes one output per input face: a graph that answers a
        // batch with another count or size is an error here, never a panic there.
        let (n, s) = (faces.shape()[0], self.manifest.crop_size);
        check_output(&self.dir, OUTPUT_FACE, &out.face, [n, 3, s, s])?;
        if let Some(flow) = &out.flow {
            check_output(&self.dir, OUTPUT_FLOW, flow, [n, 2, s, s])?;
        }
        Ok(out)
    }

    fn check_batch(&self, faces: ArrayView4<f32>, expressions: &[i64]) -> Result<()> {
        let n = faces.shape()[0];
        let s = self.manifest.crop_size;
        if faces.shape() != [n, 3, s, s] || expressions.len() != n {
            return Err(Error::Frame(format!(
                "batch shape {:?} with {} expressions; the model takes [N, 3, {s}, {s}] and N expressions",
                faces.shape(),
                expressions.len()
            )));
        }
        let count = self.manifest.expressions.len() as i64;
        if let Some(bad) = expressions.iter().find(|&&e| e < 0 || e >= count) {
            return Err(Error::Frame(format!(
                "expression index {bad} out of range 0..{count}"
            )));
        }
        Ok(())
    }
}

/// An output of the shape the contract gives it for the batch, or an error naming the model.
fn check_output(dir: &Path, name: &str, value: &Array4<f32>, want: [usize; 4]) -> Result<()> {
    if value.shape() == want {
        return Ok(());
    }
    Err(Error::model(
        dir.join("model.onnx"),
        format!(
            "{name} has shape {:?}, expected {want:?} for a batch of {}",
            value.shape(),
            want[0]
        ),
    ))
}

/// What one batch through the model gives.
#[derive(Debug, Clone)]
pub struct ModelOutput {
    /// `face_out` [N,3,S,S], RGB in [0, 1].
    pub face: Array4<f32>,
    /// `flow` [N,2,S,S] in crop pixels (dx, dy; backward), for format-2 flow models.
    pub flow: Option<Array4<f32>>,
}

fn builder(threads: usize) -> Result<ort::session::builder::SessionBuilder> {
    let b = Session::builder(environment()?).map_err(Error::runtime)?;
    let b = b
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(Error::runtime)?;
    let b = b
        .with_intra_threads(threads.max(1))
        .map_err(Error::runtime)?;
    // Idle pool threads wait without spinning: the decoder, the encoder, OpenCV and the
    // element's own threads share the cores, and spinning ORT threads took them away. On
    // two cores with two threads: a 1280x720 clip through the element 3.2 s against
    // 1.6 s with one thread (1.5 s without spinning); `reggan bench --threads 2`, the
    // core at 720p 75 fps (191 without spinning; one thread 175).
    b.with_intra_op_spinning(false).map_err(Error::runtime)
}

/// Builds a session on the requested provider. Provider registration that fails is an
/// error for an explicit choice and a step down the list for `auto`.
pub(crate) fn build_session(
    onnx: &Path,
    device: Device,
    threads: usize,
) -> Result<(Session, &'static str)> {
    use ort::ep;
    let candidates: Vec<(&'static str, Option<ort::ep::ExecutionProviderDispatch>)> = match device {
        Device::Cpu => vec![("CPU", None)],
        Device::Cuda => vec![("CUDA", Some(ep::CUDA::default().build().error_on_failure()))],
        Device::TensorRt => vec![(
            "TensorRT",
            Some(ep::TensorRT::default().build().error_on_failure()),
        )],
        Device::Auto => vec![
            (
                "TensorRT",
                Some(ep::TensorRT::default().build().error_on_failure()),
            ),
            ("CUDA", Some(ep::CUDA::default().build().error_on_failure())),
            ("CPU", None),
        ],
    };
    let mut reasons = Vec::new();
    for (name, provider) in candidates {
        let b = builder(threads)?;
        let b = match provider {
            Some(p) => match b.with_execution_providers([p]) {
                Ok(b) => b,
                Err(e) => {
                    reasons.push(format!("{name}: {e}"));
                    continue;
                }
            },
            None => b,
        };
        let mut b = b;
        match b.commit_from_file(onnx) {
            Ok(s) => return Ok((s, name)),
            Err(e) if name == "CPU" => {
                return Err(Error::model(
                    onnx,
                    format!("ONNX Runtime cannot load it: {e}"),
                ))
            }
            Err(e) => reasons.push(format!("{name}: {e}")),
        }
    }
    Err(Error::Device(format!(
        "no requested execution provider is usable: {}",
        reasons.join("; ")
    )))
}
