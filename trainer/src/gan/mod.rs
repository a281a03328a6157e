//! RegGAN's refinement network, US-GAN and SARGAN: networks ([`nets`]), training
//! ([`train`]), ONNX export under the model contract ([`export`]).

pub mod adam;
pub mod export;
pub mod nets;
pub mod onnx;
pub mod restore;
pub mod train;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Device, Tensor};

use nets::{MultiScaleD, Refiner, RefinerConfig, StarConfig, StarD, StarG};

/// The contract's expressions, in index order.
pub const EXPRESSIONS: [&str; 6] = ["happy", "sad", "angry", "disgusted", "afraid", "surprised"];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Lambdas {
    pub pix: f64,
    pub adv: f64,
    pub fm: f64,
    pub pcp: f64,
    pub cls: f64,
    pub rec: f64,
    pub gp: f64,
}

/// Restoration pretraining steps of the `small` RegGAN config (10.5 minutes on two
/// CPU cores).
pub const PRETRAIN_STEPS_SMALL: usize = 4000;

/// Everything that defines a run; written to RUN_DIR/config.json.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunConfig {
    /// "reggan", "usgan" or "sargan".
    pub model: String,
    /// "small", "paper" or "tiny" (tests).
    pub config: String,
    pub size: i64,
    pub batch: i64,
    pub lr_g: f64,
    pub lr_d: f64,
    pub beta1: f64,
    pub beta2: f64,
    /// Discriminator updates per generator update.
    pub n_critic: usize,
    pub lambdas: Lambdas,
    pub refiner: Option<RefinerConfig>,
    pub star: Option<StarConfig>,
    /// "random-convnet" (fixed random VGG-like net), "vgg19:<weights.safetensors>" or "none".
    pub perceptual: String,
    pub seed: u64,
    /// Steps between checkpoints, sample grids and loss plots.
    pub every: usize,
    pub cache: String,
    pub mr_weights: Option<String>,
    /// RegGAN on a RegFlow layer instead of MR.
    #[serde(default)]
    pub regflow_weights: Option<String>,
    /// Unpaired crops for restoration pretraining.
    #[serde(default)]
    pub restore_cache: Option<String>,
    /// RegGAN: generator steps of restoration pretraining ([`restore`]) before the
    /// fine-tuning on the MR layer's outputs (0: none).
    #[serde(default)]
    pub pretrain_steps: usize,
}

impl RunConfig {
    pub fn new(model: &str, config: &str, size: i64) -> Result<Self> {
        let (small, paper) = match config {
            "small" => (true, false),
            "paper" => (false, true),
            "tiny" | "medium" => (true, false),
            _ => bail!("unknown config {config} (small, medium, paper)"),
        };
        let medium = config == "medium";
        let tiny = config == "tiny";
        let _ = small;
        let (refiner, star) = match model {
            "reggan" => (
                Some(if tiny {
                    RefinerConfig {
                        base: 4,
                        enc: [6, 8, 8],
                        labs: 1,
                        hg_levels: 2,
                        d_base: 4,
                    }
                } else if medium {
                    // For GPUs: about 4x `small`'s compute; fp16 weights of a few MB.
                    RefinerConfig {
                        base: 16,
                        enc: [32, 48, 64],
                        labs: 4,
                        hg_levels: 3,
                        d_base: 32,
                    }
                } else if paper {
                    RefinerConfig {
                        base: 32,
                        enc: [64, 128, 256],
                        labs: 10,
                        hg_levels: 4,
                        d_base: 64,
                    }
                } else {
                    RefinerConfig {
                        base: 8,
                        enc: [16, 24, 32],
                        labs: 2,
                        hg_levels: 2,
                        d_base: 16,
                    }
                }),
                None,
            ),
            "usgan" | "sargan" => {
                let attention = model == "sargan";
                (
                    None,
                    Some(if tiny {
                        StarConfig {
                            base: 4,
                            blocks: 1,
                            attention,
                            d_base: 4,
                            d_layers: 3,
                        }
                    } else if paper {
                        StarConfig {
                            base: 64,
                            blocks: 1,
                            attention,
                            d_base: 64,
                            d_layers: 6,
                        }
                    } else {
                        StarConfig {
                            base: 12,
                            blocks: 1,
                            attention,
                            d_base: 16,
                            d_layers: 5,
                        }
                    }),
                )
            }
            _ => bail!("unknown model {model} (reggan, usgan, sargan)"),
        };
        let reg = model == "reggan";
        Ok(RunConfig {
            model: model.into(),
            config: config.into(),
            size,
            batch: if paper { 8 } else { 4 },
            lr_g: if reg { 2e-4 } else { 1e-4 },
            lr_d: if reg { 2e-4 } else { 1e-4 },
            beta1: 0.5,
            beta2: 0.999,
            n_critic: if reg { 1 } else { 5 },
            lambdas: Lambdas {
                pix: 10.0,
                // The paper's weight of 1 turned the `small` refinement network blotchy
                // within a few hundred fine-tuning steps on our 20 training subjects
                // (models/reggan/README.md has the ablation); 0.01 did not.
                adv: if reg && !paper { 0.01 } else { 1.0 },
                fm: 10.0,
                pcp: 10.0,
                cls: 1.0,
                rec: 10.0,
                gp: 10.0,
            },
            refiner,
            star,
            perceptual: if reg {
                "random-convnet".into()
            } else {
                "none".into()
            },
            seed: 1,
            every: if tiny { 1 } else { 50 },
            cache: String::new(),
            mr_weights: None,
            regflow_weights: None,
            restore_cache: None,
            pretrain_steps: if !reg || tiny {
                0
            } else if paper {
                20_000
            } else {
                PRETRAIN_STEPS_SMALL
            },
        })
    }

    pub fn read(run: &Path) -> Result<Self> {
        let p = run.join("config.json");
        serde_json::from_str(
            &std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?,
        )
        .with_context(|| format!("{} is not a valid run config", p.display()))
    }
}

pub enum Gen {
    Reg(Refiner),
    Star(StarG),
}

pub enum Disc {
    Reg(MultiScaleD),
    Star(StarD),
}

/// Generator and discriminator with their variable stores.
pub struct Nets {
    pub gvs: VarStore,
    pub dvs: VarStore,
    pub g: Gen,
    pub d: Disc,
}

impl Nets {
    pub fn new(cfg: &RunConfig, device: Device) -> Self {
        let gvs = VarStore::new(device);
        let dvs = VarStore::new(device);
        let (g, d) = match (&cfg.refiner, &cfg.star) {
            (Some(r), _) => (
                Gen::Reg(Refiner::new(&(gvs.root() / "g"), r)),
                Disc::Reg(MultiScaleD::new(&(dvs.root() / "d"), r.d_base)),
            ),
            (None, Some(s)) => (
                Gen::Star(StarG::new(&(gvs.root() / "g"), s)),
                Disc::Star(StarD::new(&(dvs.root() / "d"), s, cfg.size)),
            ),
            (None, None) => unreachable!("a run config has a refiner or a star config"),
        };
        Nets { gvs, dvs, g, d }
    }

    /// Generator output. RegGAN: `x` is the expression layer's output (expression is
    /// not used); US-GAN/SARGAN: `x` is the face and `domain` the target index.
    pub fn generate(&self, x: &Tensor, domain: &Tensor) -> Tensor {
        match &self.g {
            Gen::Reg(r) => r.forward(x),
            Gen::Star(s) => s.forward(x, domain),
        }
    }

    pub fn g_params(&self) -> i64 {
        self.gvs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum()
    }

    pub fn d_params(&self) -> i64 {
        self.dvs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum()
    }

    /// (parameters, multiply-adds, activation elements) per face of the generator,
    /// counted from the ONNX graph it would emit.
    pub fn g_cost(&self, size: i64) -> (i64, f64, f64) {
        let mut g = onnx::Onnx::new();
        g.set_shape("face", (3, size, size));
        match &self.g {
            Gen::Reg(r) => {
                r.emit(&mut g, "face");
            }
            Gen::Star(s) => {
                s.emit(&mut g, "face", "expression");
            }
        }
        (g.params, g.macs, g.activations)
    }
}

/// Writes `bytes` to `path` atomically (temporary file in the same folder, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename to {}", path.display()))
}

/// The files of a checkpoint in a run folder, in the order a save commits them:
/// `state.json` last, since it names the step the others belong to.
pub const CHECKPOINT_FILES: [&str; 5] = [
    "gen.safetensors",
    "disc.safetensors",
    "gen-adam.safetensors",
    "disc-adam.safetensors",
    "state.json",
];

/// Where a checkpoint file waits while a save is in progress:
/// `gen.safetensors` -> `gen.next.safetensors`.
pub fn staged(run: &Path, file: &str) -> PathBuf {
    let (stem, ext) = file
        .split_once('.')
        .expect("checkpoint files have an extension");
    run.join(format!("{stem}.next.{ext}"))
}

/// Writes a staged checkpoint file with `write` and flushes it to the disk.
pub fn stage(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    write(path)?;
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot flush {}", path.display()))
}

/// Makes a run folder's checkpoint whole after a save that was interrupted (killed,
/// out of disk). A save stages every file, then writes `state.next.json` (the commit
/// point), then moves the staged files in: staged files with a `state.next.json` are
/// moved in (the new checkpoint), staged files without one are removed (the previous
/// checkpoint stays as it was). Returns what it did, for the log.
pub fn recover_checkpoint(run: &Path) -> Result<Option<&'static str>> {
    let committed = staged(run, "state.json").is_file();
    let mut did = None;
    for file in CHECKPOINT_FILES {
        let next = staged(run, file);
        if !next.exists() {
            continue;
        }
        if committed {
            std::fs::rename(&next, run.join(file))
                .with_context(|| format!("cannot move {} in", next.display()))?;
            did = Some("completed the checkpoint an interrupted save had written");
        } else {
            std::fs::remove_file(&next)
                .with_context(|| format!("cannot remove {}", next.display()))?;
            did = Some("removed the partial checkpoint of an interrupted save");
        }
    }
    Ok(did)
}

/// Saves a VarStore atomically as safetensors.
pub fn save_vs(vs: &VarStore, path: &Path) -> Result<()> {
    let tmp = path.with_extension("tmp.safetensors");
    vs.save(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename to {}", path.display()))
}
