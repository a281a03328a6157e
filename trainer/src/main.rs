//! reggan-train: prepare -> fit -> export.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
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
        #[arg(long, num_args = 0..=1)]
        london: Option<Option<PathBuf>>,
        /// Generic paired data: DIR/neutral/<subject>* and DIR/<expression>/<subject>*.
        #[arg(long)]
        pairs: Vec<PathBuf>,
        /// Unpaired faces, one subject each, for the refinement network's restoration
        /// pretraining (e.g. ../shared/data/utkface); only the sharp crops are kept.
        #[arg(long)]
        unpaired: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Fit the closed-form expression layers (cross-validating k and lambda).
    Fit {
        #[arg(long, default_value = "mr", value_parser = ["mr", "pixel-rr", "pixel-kr"])]
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
        #[command(flatten)]
        extra: FitExtra,
    },
    /// Fit RegFlow (flow layer + appearance layer, every source expression to every
    /// target and to neutral); with --model, export and verify it too.
    Regflow(RegflowArgs),
    /// Train RegGAN's refinement network (on the fitted MR layer), US-GAN or SARGAN.
    Gan(reggan_trainer::gan::train::GanCli),
    /// Portable copies for another machine (e.g. a GPU box without OpenCV): caches with
    /// JPEG crops, and RegFlow weights as float16.
    Pack {
        /// `prepare` caches, each copied to OUT/<its folder name>.
        #[arg(long)]
        cache: Vec<PathBuf>,
        /// A fitted RegFlow, copied to OUT/regflow.
        #[arg(long)]
        regflow_weights: Option<PathBuf>,
        /// JPEG quality of the crops.
        #[arg(long, default_value_t = 85)]
        quality: u8,
        /// Keep only this many of the sharpest unpaired crops of each cache.
        #[arg(long)]
        sharpest: Option<usize>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Export a GAN run to model.onnx + model.json and verify ONNX Runtime against tch.
    ExportGan {
        #[arg(long)]
        run: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Store RegGAN's MR weights as float16.
        #[arg(long)]
        fp16: bool,
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
    /// Pair MSE of an exported model on a prepare cache (per expression, vs identity).
    Mse {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        cache: PathBuf,
        /// All subjects of the cache (default: its validation subjects).
        #[arg(long)]
        all: bool,
    },
    /// Import the LSRF/OMP authors' published weights (scipy CSR .npz) as a model.
    ImportLsrf {
        /// The .npz (S² x S²+1 CSR: weights + bias column).
        file: PathBuf,
        /// The expression the weights synthesise.
        #[arg(long, default_value = "happy")]
        expression: String,
        /// faithful: the authors' per-image min-max of input and output (flickers on
        /// video); video: weights applied to the [0,1] input, clipped.
        #[arg(long, default_value = "video")]
        mode: reggan_trainer::lsrf::Mode,
        /// A prepare cache: validation crops to verify and measure on.
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Further prepare caches to measure on, all subjects (e.g. London).
        #[arg(long)]
        ood: Vec<PathBuf>,
        #[arg(long)]
        preview: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Score models the papers' way: ECS, FSS, Fréchet proxy (or FID), sharpness, ms;
    /// writes eval.md, eval.json and grid.png.
    Eval(reggan_trainer::eval::EvalArgs),
}

fn prepare(
    tfeid: Option<PathBuf>,
    no_tfeid: bool,
    agreeing_only: bool,
    london: Option<Option<PathBuf>>,
    pairs: Vec<PathBuf>,
    unpaired: Vec<PathBuf>,
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
        let dir = dir.unwrap_or_else(|| data_root().join("london"));
        sources.extend(data::london_sources(&dir)?);
    }
    for dir in &pairs {
        sources.extend(data::pairs_sources(dir)?);
    }
    for dir in &unpaired {
        sources.extend(data::unpaired_sources(dir)?);
    }
    if sources.is_empty() {
        bail!("no source images: give --tfeid, --london, --pairs or --unpaired");
    }
    std::fs::create_dir_all(&out)?;
    data::prepare(&sources, &out)?;
    println!("wrote {}", out.join("index.json").display());
    Ok(())
}

/// `regflow` options.
#[derive(clap::Args)]
struct RegflowArgs {
    #[arg(long)]
    cache: PathBuf,
    /// Output folder of the fitted weights (weights.safetensors + meta.json).
    #[arg(long)]
    out: PathBuf,
    /// Also export the model here (model.onnx + model.json).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Flow-layer receptive field (grid cells); default: cross-validate 0, 1, 3, 5.
    #[arg(long)]
    flow_k: Option<usize>,
    /// Data sets of the cache to train on (default: tfeid).
    #[arg(long, value_delimiter = ',')]
    datasets: Option<Vec<String>>,
    /// Store the appearance weights as float16.
    #[arg(long)]
    fp16: bool,
    /// Recolour each training performer N times for the appearance layer; 0 = off.
    #[arg(long, default_value_t = 0)]
    colour_augment: usize,
    /// A prepare cache of other people (e.g. London) whose training subjects'
    /// neutral -> happy pairs choose the appearance penalty out of distribution.
    #[arg(long)]
    ood_cache: Option<PathBuf>,
    /// No appearance layer (the identity): the flow alone (an ablation).
    #[arg(long)]
    flow_only: bool,
    /// The appearance layer's λ inside the mouth region, fixed (where the warp cannot
    /// paint teeth); default: chosen on --ood-cache, else the face's λ.
    #[arg(long)]
    mouth_lambda: Option<f64>,
    /// The share (0-1) of the flow fit's weight on neutral sources, per performer and
    /// target; default: every pair alike (neutral is one source expression of six).
    #[arg(long, value_parser = share_in_unit_interval)]
    neutral_share: Option<f64>,
    /// A PNG of validation faces and their outputs for every target.
    #[arg(long)]
    preview: Option<PathBuf>,
}

/// `fit` options of Pixel-KR and colour augmentation.
#[derive(clap::Args)]
struct FitExtra {
    /// Pixel-KR: Gaussian kernel width on the [0,1] pixel scale, or "sweep".
    #[arg(long, default_value = "sweep")]
    sigma: String,
    /// Pixel-KR: kernel centres (training neutral crops, evenly spaced) per pixel.
    #[arg(long, default_value_t = reggan_trainer::kernel::DEFAULT_CENTRES)]
    centres: usize,
    /// Recolour each training subject N times (same colour transform for a pair's
    /// input and target); 0 = off.
    #[arg(long, default_value_t = 0)]
    colour_augment: usize,
}

fn fit_cmd(
    method: String,
    cache: PathBuf,
    k: Option<usize>,
    lambda: String,
    datasets: Option<Vec<String>>,
    out: PathBuf,
    extra: FitExtra,
) -> Result<()> {
    if method == "pixel-kr" {
        if k.is_some_and(|k| k != 1) {
            bail!("pixel-kr is k = 1");
        }
        if extra.centres < 2 {
            bail!("--centres must be at least 2");
        }
        let lambdas = if lambda == "sweep" {
            reggan_trainer::kernel::LAMBDAS.to_vec()
        } else {
            fit::parse_lambdas(&lambda)?
        };
        let opts = FitOptions {
            method,
            ks: vec![1],
            lambdas,
            datasets,
            colour_augment: extra.colour_augment,
        };
        let sigmas = reggan_trainer::kernel::parse_sigmas(&extra.sigma)?;
        let w = reggan_trainer::kernel::run(&cache, &opts, extra.centres, &sigmas)?;
        w.save(&out)?;
        println!("wrote {}", out.display());
        return Ok(());
    }
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
        colour_augment: extra.colour_augment,
    };
    let weights = fit::run(&cache, &opts)?;
    weights.save(&out)?;
    println!("wrote {}", out.display());
    Ok(())
}

fn export_cmd(weights: PathBuf, out: PathBuf, fp16: bool, preview: Option<PathBuf>) -> Result<()> {
    if reggan_trainer::kernel::KrWeights::is_kr(&weights) {
        return reggan_trainer::kernel::export_cmd(&weights, &out, fp16, preview.as_deref());
    }
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

fn pack_cmd(
    caches: &[PathBuf],
    regflow: Option<&Path>,
    quality: u8,
    sharpest: Option<usize>,
    out: &Path,
) -> Result<()> {
    if out.exists() && std::fs::read_dir(out)?.next().is_some() {
        bail!(
            "{} exists and is not empty; pack writes a fresh folder",
            out.display()
        );
    }
    for cache in caches {
        let name = cache
            .file_name()
            .with_context(|| format!("{} has no folder name", cache.display()))?;
        let n = data::pack_cache(cache, &out.join(name), quality, sharpest)?;
        println!("{}: {n} crops", out.join(name).display());
    }
    if let Some(dir) = regflow {
        reggan_trainer::regflow::RegFlow::load(dir)?
            .to_half()
            .save(&out.join("regflow"))?;
        println!("{}: float16 weights", out.join("regflow").display());
    }
    Ok(())
}

fn share_in_unit_interval(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s} is not a share between 0 and 1")),
    }
}

fn regflow_cmd(args: RegflowArgs) -> Result<()> {
    use reggan_trainer::{regflow, regflow_export};
    let RegflowArgs {
        cache,
        out,
        model,
        flow_k,
        datasets,
        fp16,
        colour_augment,
        ood_cache,
        flow_only,
        mouth_lambda,
        neutral_share,
        preview,
    } = args;
    let flow_ks = match flow_k {
        Some(k) if k % 2 == 0 && k != 0 => bail!("--flow-k must be 0 or odd"),
        Some(k) => vec![k],
        None => regflow::FLOW_KS.to_vec(),
    };
    let fitted = regflow::fit(
        &cache,
        &regflow::RegFlowOptions {
            datasets,
            ood_cache,
            flow_ks,
            colour_augment,
            appearance: !flow_only,
            mouth_lambda,
            neutral_share,
        },
    )?;
    fitted.save(&out)?;
    println!("wrote {}", out.display());
    let Some(dir) = model else { return Ok(()) };
    let size = regflow_export::export(&fitted, &dir, fp16)?;
    if let Some(png) = preview {
        let faces = regflow_export::preview_faces(&fitted)?;
        export::preview(&dir, &faces, &png)?;
        println!("wrote {}", png.display());
    }
    let ms = export::cpu_ms_per_face(&dir, fitted.meta.crop_size)?;
    println!("model.onnx: {size} bytes; CPU (1 thread) {ms:.2} ms per face");
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
            unpaired,
            out,
        } => prepare(tfeid, no_tfeid, agreeing_only, london, pairs, unpaired, out),
        Command::Fit {
            method,
            cache,
            k,
            lambda,
            datasets,
            out,
            extra,
        } => fit_cmd(method, cache, k, lambda, datasets, out, extra),
        Command::Regflow(args) => regflow_cmd(args),
        Command::Gan(cli) => reggan_trainer::gan::train::run(cli.into()),
        Command::Pack {
            cache,
            regflow_weights,
            quality,
            sharpest,
            out,
        } => pack_cmd(&cache, regflow_weights.as_deref(), quality, sharpest, &out),
        Command::ExportGan { run, out, fp16 } => {
            reggan_trainer::gan::export::export_run(&run, &out, fp16)
        }
        Command::Export {
            weights,
            out,
            fp16,
            preview,
        } => export_cmd(weights, out, fp16, preview),
        Command::Mse { model, cache, all } => {
            reggan_trainer::measure::run_cmd(&model, &cache, all).map(|_| ())
        }
        Command::ImportLsrf {
            file,
            expression,
            mode,
            cache,
            ood,
            preview,
            out,
        } => reggan_trainer::lsrf::run_import(&reggan_trainer::lsrf::ImportOptions {
            file,
            expression,
            mode,
            out,
            cache,
            ood,
            preview,
        }),
        Command::Eval(args) => reggan_trainer::eval::run_cli(args),
    }
}

#[cfg(test)]
mod tests {
    use super::share_in_unit_interval;

    #[test]
    fn a_neutral_share_outside_zero_to_one_is_refused_by_name() {
        assert_eq!(share_in_unit_interval("0.5"), Ok(0.5));
        assert_eq!(share_in_unit_interval("1"), Ok(1.0));
        for bad in ["1.5", "-0.1", "half"] {
            assert_eq!(
                share_in_unit_interval(bad),
                Err(format!("{bad} is not a share between 0 and 1"))
            );
        }
    }
}
