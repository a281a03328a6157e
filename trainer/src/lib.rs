//! reggan-trainer: makes the models the reggan runtime loads.
//!
//! - [`data`] - `prepare`: detect, align with the core aligner, cache crops, split by subject
//! - [`regression`] - closed-form MR / Pixel-RR expression layers, batched over pixels
//! - [`fit`] - cross-validation of k and λ, and the final layers
//! - [`weights`] - fitted layers on disk
//! - [`onnx_export`], [`export`] - the ONNX graph of the model contract, and its check
//! - [`lsrf`] (+ [`npz`]) - `import-lsrf`: the LSRF/OMP authors' sparse weights as a model
//! - [`eval`] - `eval`: ECS, FSS, Fréchet proxy, sharpness; tables and grid
//! - [`kernel`] - Pixel-KR (Gaussian-kernel ridge regression per pixel) and its ONNX graph
//! - [`augment`] - colour augmentation of training pairs
//! - [`measure`] - pair MSE of an exported model
//! - [`flow`] - dense optical flow between crops (DIS) and the backward warp
//! - [`regflow`], [`regflow_export`] - RegFlow: flow layer + appearance layer, format-2 model

pub mod augment;
pub mod data;
pub mod eval;
pub mod export;
pub mod fit;
pub mod flow;
pub mod gan;
pub mod kernel;
pub mod lsrf;
pub mod measure;
pub mod npz;
pub mod onnx_export;
pub mod regflow;
pub mod regflow_export;
pub mod regression;
pub mod weights;
