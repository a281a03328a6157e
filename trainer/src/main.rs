//! reggan-train: prepare -> fit -> export.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use reggan_trainer::data::{self, data_root};
use reggan_trainer::fit::{self, FitOptions};
use reggan_trainer::weights::Weights;
use reggan_trainer::{export, onnx_export};

#[derive(Parser)]
#[command(
    name = "reggan-train",
    version,
    about = "Trains reggan expression models (LibTorch) and exports them to ONNX"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Detect, align and cache face crops; write CACHE/index.json with a split by subject.
    Prepare {
        /// TFEID folder (index.csv + images/); default $REGGAN_DATA/tfeid or ../shared/data/tfeid.
        #[arg(long)]
        tfeid: Option<PathBuf>,
        /// Leave TFEID out.
        #[arg(long)]
        no_tfeid: bool,
        /// Only TFEID expression images whose observers' rating agrees with the label.
        #[arg(long)]
        agreeing_only: bool,
        /// Add the London face set (neutral + smiling); without a value, the shared copy.
        /// Not used by `fit` unless asked for with --datasets (it is the OOD test set).
        #[arg(long, num_args = 0..=1, default_missing_value = "")]
        london: Option<PathBuf>,
        /// Generic paired data: DIR/neutral/<subject>* and DIR/<expression>/<subject>*.
        #[arg(long)]
        pairs: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Fit the closed-form expression layers (cross-validating k and lambda).
    Fit {
        #[arg(long, default_value = "mr", value_parser = ["mr", "pixel-rr"])]
        method: String,
        #[arg(long)]
        cache: PathBuf,
        /// Receptive field size; default: cross-validate 1, 3, 5 (MR) or 1 (Pixel-RR).
        #[arg(long)]
        k: Option<usize>,
        /// A ridge penalty, or "sweep" for the grid 1e-3 .. 1e3.
        #[arg(long, default_value = "sweep")]
        lambda: String,
        /// Data sets of the cache to train on (default: all but london).
        #[arg(long, value_delimiter = ',')]
        datasets: Option<Vec<String>>,
        /// Output folder (weights.safetensors + meta.json).
        #[arg(long)]
        out: PathBuf,
    },
    /// Write model.onnx + model.json and verify ONNX Runtime against tch.
    Export {
        #[arg(long)]
        weights: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Store weights as float16 (half the file size; computation stays float32).
        #[arg(long)]
        fp16: bool,
        /// Also write a PNG: validation faces and their outputs for every expression.
        #[arg(long)]
        preview: Option<PathBuf>,
    },
}

fn prepare(
    tfeid: Option<PathBuf>,
    no_tfeid: bool,
    agreeing_only: bool,
    london: Option<PathBuf>,
    pairs: Vec<PathBuf>,
    out: PathBuf,
) -> Result<()> {
    let mut sources = Vec::new();
    if !no_tfeid {
        sources.extend(data::tfeid_sources(
            &tfeid.unwrap_or_else(|| data_root().join("tfeid")),
            agreeing_only,
        )?);
    }
    if let Some(dir) = london {
        let dir = if dir.as_os_str().is_empty() {
            data_root().join("london")
        } else {
            dir
        };
        sources.extend(data::london_sources(&dir)?);
    }
    for dir in &pairs {
        sources.extend(data::pairs_sources(dir)?);
    }
    if sources.is_empty() {
        bail!("no source images: give --tfeid, --london or --pairs");
    }
    std::fs::create_dir_all(&out)?;
    data::prepare(&sources, &out)?;
    println!("wrote {}", out.join("index.json").display());
    Ok(())
}

fn fit_cmd(
    method: String,
    cache: PathBuf,
    k: Option<usize>,
    lambda: String,
    datasets: Option<Vec<String>>,
    out: PathBuf,
) -> Result<()> {
    let ks = match (method.as_str(), k) {
        ("pixel-rr", Some(k)) if k != 1 => bail!("pixel-rr is k = 1"),
        ("pixel-rr", _) => vec![1],
        (_, Some(k)) if k % 2 == 0 || k > 5 => bail!("k must be odd and at most 5"),
        (_, Some(k)) => vec![k],
        _ => vec![1, 3, 5],
    };
    let opts = FitOptions {
        method,
        ks,
        lambdas: fit::parse_lambdas(&lambda)?,
        datasets,
    };
    let weights = fit::run(&cache, &opts)?;
    weights.save(&out)?;
    println!("wrote {}", out.display());
    Ok(())
}

fn export_cmd(weights: PathBuf, out: PathBuf, fp16: bool, preview: Option<PathBuf>) -> Result<()> {
    let weights = Weights::load(&weights)?;
    let (_, size) = export::export(&weights, &out, fp16)?;
    if let Some(png) = preview {
        // One validation face per validation subject (the batch cycles through them).
        let (faces, _) = export::verification_batch(&weights.meta, 1)?;
        let n = weights
            .meta
            .val_subjects
            .len()
            .min(faces.size()[0] as usize) as i64;
        export::preview(&out, &faces.narrow(0, 0, n), &png)?;
        println!("wrote {}", png.display());
    }
    let ms = export::cpu_ms_per_face(&out, weights.meta.crop_size)?;
    println!(
        "model.onnx: {size} bytes, opset {}; CPU (1 thread) {ms:.2} ms per face",
        onnx_export::OPSET
    );
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Prepare {
            tfeid,
            no_tfeid,
            agreeing_only,
            london,
            pairs,
            out,
        } => prepare(tfeid, no_tfeid, agreeing_only, london, pairs, out),
        Command::Fit {
            method,
            cache,
            k,
            lambda,
            datasets,
            out,
        } => fit_cmd(method, cache, k, lambda, datasets, out),
        Command::Export {
            weights,
            out,
            fp16,
            preview,
        } => export_cmd(weights, out, fp16, preview),
    }
}
