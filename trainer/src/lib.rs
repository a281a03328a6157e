//! reggan-trainer: makes the models the reggan runtime loads.
//!
//! - [`data`] - `prepare`: detect, align with the core aligner, cache crops, split by subject
//! - [`regression`] - closed-form MR / Pixel-RR expression layers, batched over pixels
//! - [`fit`] - cross-validation of k and λ, and the final layers
//! - [`weights`] - fitted layers on disk
//! - [`onnx_export`], [`export`] - the ONNX graph of the model contract, and its check

pub mod data;
pub mod export;
pub mod fit;
pub mod onnx_export;
pub mod regression;
pub mod weights;
