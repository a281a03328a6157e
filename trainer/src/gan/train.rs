//! `reggan-train gan`: training loops (RegGAN refinement on top of the fitted MR layer;
//! US-GAN / SARGAN with WGAN-GP), checkpoints, loss curves and sample grids.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::adam::Adam;
use super::nets::{Conv, DOMAINS};
use super::restore::Restoration;
use super::{recover_checkpoint, stage, staged, write_atomic, Disc, Nets, RunConfig, EXPRESSIONS};
use crate::data::{load_subjects, Index, Subject};
use crate::export::tch_forward;
use crate::regflow::RegFlow;
use crate::weights::Weights;

/// The fitted expression layer (W [E,3,k²,S,S], B [E,3,S,S]).
pub struct Mr {
    pub w: Tensor,
    pub b: Tensor,
    pub k: usize,
}

impl Mr {
    pub fn load(dir: &Path) -> Result<Self> {
        let weights = Weights::load(dir)?;
        if weights.meta.expressions != EXPRESSIONS {
            bail!(
                "{}: expressions {:?} differ from the contract's {:?}",
                dir.display(),
                weights.meta.expressions,
                EXPRESSIONS
            );
        }
        Ok(Mr {
            w: weights.w.to_kind(Kind::Float),
            b: weights.b.to_kind(Kind::Float),
            k: weights.meta.k,
        })
    }
    pub fn apply(&self, faces: &Tensor, expressions: &[i64]) -> Tensor {
        let dev = faces.device();
        tch::no_grad(|| {
            tch_forward(
                &self.w,
                &self.b,
                self.k,
                &faces.to_device(Device::Cpu),
                expressions,
            )
            .to_device(dev)
        })
    }
}

/// The closed-form expression layer in front of RegGAN's refinement network.
pub enum ExpressionLayer {
    /// MR (`reggan-train fit`): the paper's regression layer, from neutral faces.
    Mr(Mr),
    /// RegFlow (`reggan-train regflow`): a learned flow warps the face, then an
    /// appearance layer; it also targets neutral, and takes any expression as source.
    RegFlow(Box<RegFlow>),
}

impl ExpressionLayer {
    /// Loads `--mr-weights` or `--regflow-weights` (exactly one must be given).
    pub fn load(mr: Option<&str>, regflow: Option<&str>) -> Result<Self> {
        match (mr, regflow) {
            (Some(p), None) => Ok(Self::Mr(Mr::load(Path::new(p))?)),
            (None, Some(p)) => Ok(Self::RegFlow(Box::new(
                RegFlow::load(Path::new(p))?.to_float(),
            ))),
            (Some(_), Some(_)) => bail!("give either --mr-weights or --regflow-weights, not both"),
            (None, None) => bail!(
                "RegGAN trains on an expression layer's outputs: give --mr-weights (from `reggan-train fit`) or --regflow-weights (from `reggan-train regflow`)"
            ),
        }
    }

    /// The layer's output for faces [N,3,S,S] (on their device) and target indices.
    pub fn apply(&self, faces: &Tensor, expressions: &[i64]) -> Tensor {
        match self {
            Self::Mr(mr) => mr.apply(faces, expressions),
            Self::RegFlow(rf) => tch::no_grad(|| {
                rf.forward(&faces.to_device(Device::Cpu), expressions)
                    .0
                    .to_device(faces.device())
            }),
        }
    }

    /// Crop size the layer was fitted for.
    pub fn size(&self) -> i64 {
        match self {
            Self::Mr(mr) => mr.w.size()[3],
            Self::RegFlow(rf) => rf.app_w.size()[3],
        }
    }

    /// Target expressions in index order.
    pub fn targets(&self) -> Vec<String> {
        match self {
            Self::Mr(_) => EXPRESSIONS.iter().map(|e| e.to_string()).collect(),
            Self::RegFlow(rf) => rf.meta.targets.clone(),
        }
    }
}

/// Subjects with neutral crops and per-expression targets (train and validation).
pub struct Data {
    pub train: Vec<Subject>,
    pub val: Vec<Subject>,
    pub size: i64,
}

impl Data {
    pub fn load(cache: &Path) -> Result<Self> {
        if !cache.is_dir() {
            bail!(
                "data folder {} does not exist (run `reggan-train prepare --out {}` first)",
                cache.display(),
                cache.display()
            );
        }
        let index = Index::read(cache)?;
        let datasets: Vec<String> = {
            let mut d: Vec<String> = index
                .entries
                .iter()
                .map(|e| e.dataset.clone())
                .filter(|d| d != "london")
                .collect();
            d.sort();
            d.dedup();
            d
        };
        let train = load_subjects(cache, &index, &index.train_subjects, &datasets)
            .with_context(|| format!("cannot load the training crops of {}", cache.display()))?;
        let val = load_subjects(cache, &index, &index.val_subjects, &datasets)
            .with_context(|| format!("cannot load the validation crops of {}", cache.display()))?;
        let paired = |s: &[Subject]| s.iter().filter(|s| !s.targets.is_empty()).count();
        if paired(&train) == 0 {
            bail!(
                "{}: no training subject has both neutral and expression crops",
                cache.display()
            );
        }
        if val.is_empty() {
            bail!(
                "{}: no validation subject has a neutral crop",
                cache.display()
            );
        }
        Ok(Data {
            train,
            val,
            size: index.crop_size as i64,
        })
    }
}

/// SplitMix64: a tiny deterministic generator for batch sampling.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// Uniform in [a, b).
    pub fn uniform(&mut self, a: f64, b: f64) -> f64 {
        a + (b - a) * (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn expr_index(name: &str) -> Option<i64> {
    EXPRESSIONS
        .iter()
        .position(|e| *e == name)
        .map(|i| i as i64)
}

/// (neutral, target, expression index) pairs of training subjects.
pub fn sample_pairs(subjects: &[Subject], b: i64, rng: &mut Rng) -> (Tensor, Tensor, Vec<i64>) {
    let paired: Vec<&Subject> = subjects.iter().filter(|s| !s.targets.is_empty()).collect();
    let (mut xs, mut ys, mut es) = (Vec::new(), Vec::new(), Vec::new());
    while (xs.len() as i64) < b {
        let s = paired[rng.below(paired.len())];
        let keys: Vec<&String> = s
            .targets
            .keys()
            .filter(|k| expr_index(k).is_some())
            .collect();
        if keys.is_empty() {
            continue;
        }
        let k = keys[rng.below(keys.len())];
        let t = &s.targets[k];
        xs.push(
            s.neutral
                .get(rng.below(s.neutral.size()[0] as usize) as i64),
        );
        ys.push(t.get(rng.below(t.size()[0] as usize) as i64));
        es.push(expr_index(k).unwrap_or(0));
    }
    (Tensor::stack(&xs, 0), Tensor::stack(&ys, 0), es)
}

/// (source, target, target index) pairs of training subjects from ANY source expression
/// (neutral included) to any other of `targets` the subject has: a talking or smiling
/// face must be editable too.
pub fn sample_any_pairs(
    subjects: &[Subject],
    targets: &[String],
    b: i64,
    rng: &mut Rng,
) -> (Tensor, Tensor, Vec<i64>) {
    let (mut xs, mut ys, mut es) = (Vec::new(), Vec::new(), Vec::new());
    while (xs.len() as i64) < b {
        let s = &subjects[rng.below(subjects.len())];
        let mut crops: Vec<(&str, &Tensor)> = vec![("neutral", &s.neutral)];
        crops.extend(s.targets.iter().map(|(k, t)| (k.as_str(), t)));
        let (src_name, src) = crops[rng.below(crops.len())];
        let options: Vec<(usize, &Tensor)> = crops
            .iter()
            .filter(|(name, _)| *name != src_name)
            .filter_map(|(name, t)| targets.iter().position(|e| e == name).map(|i| (i, *t)))
            .collect();
        if options.is_empty() {
            continue;
        }
        let (e, tgt) = options[rng.below(options.len())];
        xs.push(src.get(rng.below(src.size()[0] as usize) as i64));
        ys.push(tgt.get(rng.below(tgt.size()[0] as usize) as i64));
        es.push(e as i64);
    }
    (Tensor::stack(&xs, 0), Tensor::stack(&ys, 0), es)
}

/// Any crops with their domain (expression index, neutral = 6), plus random target
/// domains different from the source's.
pub fn sample_domains(subjects: &[Subject], b: i64, rng: &mut Rng) -> (Tensor, Vec<i64>, Vec<i64>) {
    let (mut xs, mut ls, mut ts) = (Vec::new(), Vec::new(), Vec::new());
    while (xs.len() as i64) < b {
        let s = &subjects[rng.below(subjects.len())];
        let mut doms: Vec<(i64, &Tensor)> = vec![(DOMAINS - 1, &s.neutral)];
        doms.extend(
            s.targets
                .iter()
                .filter_map(|(k, t)| expr_index(k).map(|i| (i, t))),
        );
        let (l, t) = doms[rng.below(doms.len())];
        xs.push(t.get(rng.below(t.size()[0] as usize) as i64));
        ls.push(l);
        let tgt = (l + 1 + rng.below(DOMAINS as usize - 1) as i64) % DOMAINS;
        ts.push(tgt);
    }
    (Tensor::stack(&xs, 0), ls, ts)
}

/// The perceptual-loss backbone (frozen).
pub struct Backbone {
    _vs: VarStore,
    convs: Vec<Conv>,
    /// Max-pool after these conv indices.
    pool_after: Vec<usize>,
    /// (conv index whose ReLU output is compared, weight)
    taps: Vec<(usize, f64)>,
    imagenet: bool,
}

impl Backbone {
    /// "random-convnet", "vgg19:<path>" or "none".
    pub fn new(spec: &str, device: Device) -> Result<Option<Self>> {
        if spec == "none" {
            return Ok(None);
        }
        let mut vs = VarStore::new(device);
        let bb = if let Some(path) = spec.strip_prefix("vgg19:") {
            // torchvision's vgg19().features layout: conv indices in `features`.
            let idx = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34];
            let ch = [
                3, 64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512,
            ];
            let f = vs.root() / "features";
            let convs = idx
                .iter()
                .enumerate()
                .map(|(i, n)| Conv::new(&(&f / n.to_string()), ch[i], ch[i + 1], 3, 1, 1))
                .collect();
            vs.load(path).with_context(|| format!("cannot load VGG-19 weights from {path} (torchvision names features.N.weight/bias)"))?;
            Backbone {
                _vs: vs,
                convs,
                pool_after: vec![1, 3, 7, 11],
                taps: vec![
                    (0, 1.0 / 32.0),
                    (2, 1.0 / 16.0),
                    (4, 1.0 / 8.0),
                    (8, 1.0 / 4.0),
                    (12, 1.0),
                ],
                imagenet: true,
            }
        } else if spec == "random-convnet" {
            // A fixed, seeded random VGG-like net (random-weight features still measure
            // local structure); independent of the run's seed.
            tch::manual_seed(20_240_601);
            let ch = [3, 16, 32, 64, 64];
            let convs = (0..4)
                .map(|i| Conv::new(&(vs.root() / format!("c{i}")), ch[i], ch[i + 1], 3, 1, 1))
                .collect();
            Backbone {
                _vs: vs,
                convs,
                pool_after: vec![0, 1, 2],
                taps: vec![(0, 0.25), (1, 0.25), (2, 0.25), (3, 0.25)],
                imagenet: false,
            }
        } else {
            bail!("unknown perceptual backbone {spec} (random-convnet, vgg19:<path>, none)");
        };
        let mut bb = bb;
        bb._vs.freeze();
        Ok(Some(bb))
    }

    fn features(&self, x: &Tensor) -> Vec<Tensor> {
        let mut h = if self.imagenet {
            let mean = Tensor::from_slice(&[0.485f32, 0.456, 0.406])
                .view([1, 3, 1, 1])
                .to_device(x.device());
            let std = Tensor::from_slice(&[0.229f32, 0.224, 0.225])
                .view([1, 3, 1, 1])
                .to_device(x.device());
            (x - mean) / std
        } else {
            x * 2.0 - 1.0
        };
        let last = self.taps.iter().map(|t| t.0).max().unwrap_or(0);
        let mut out = Vec::new();
        for (i, c) in self.convs.iter().enumerate().take(last + 1) {
            h = c.forward(&h).relu();
            if self.taps.iter().any(|t| t.0 == i) {
                out.push(h.shallow_clone());
            }
            if self.pool_after.contains(&i) {
                h = h.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false);
            }
        }
        out
    }

    pub fn loss(&self, fake: &Tensor, real: &Tensor) -> Tensor {
        let ff = self.features(fake);
        let fr = tch::no_grad(|| self.features(real));
        let mut l = Tensor::zeros([], (Kind::Float, fake.device()));
        for ((a, b), (_, w)) in ff.iter().zip(fr.iter()).zip(self.taps.iter()) {
            l += (a - b).abs().mean(Kind::Float) * *w;
        }
        l
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct HistEntry {
    pub step: usize,
    pub losses: BTreeMap<String, f64>,
}

/// RUN_DIR/state.json.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct State {
    pub step: usize,
    pub elapsed_s: f64,
    pub history: Vec<HistEntry>,
    /// Mean L1 over validation (neutral, expression) pairs: generator vs its input.
    pub val: BTreeMap<String, f64>,
    pub g_params: i64,
    pub d_params: i64,
    pub g_macs_per_face: f64,
    pub device: String,
}

pub struct Trainer {
    pub cfg: RunConfig,
    pub nets: Nets,
    opt_g: Adam,
    opt_d: Adam,
    pub layer: Option<ExpressionLayer>,
    backbone: Option<Backbone>,
    /// Crops for restoration pretraining, built on the first pretraining step.
    restoration: Option<Restoration>,
    /// Unpaired crops [M,3,S,S] added to the restoration set (`--restore-cache`).
    pub restore_extra: Option<Tensor>,
    pub state: State,
    device: Device,
}

fn f(t: &Tensor) -> f64 {
    t.double_value(&[])
}

impl Trainer {
    pub fn new(cfg: RunConfig, layer: Option<ExpressionLayer>, device: Device) -> Result<Self> {
        if cfg.model == "reggan" && layer.is_none() {
            bail!("RegGAN needs a fitted expression layer (--mr-weights or --regflow-weights)");
        }
        let backbone = Backbone::new(&cfg.perceptual, device)?;
        tch::manual_seed(cfg.seed as i64);
        let nets = Nets::new(&cfg, device);
        let opt_g = Adam::new(&nets.gvs, cfg.lr_g, cfg.beta1, cfg.beta2);
        let opt_d = Adam::new(&nets.dvs, cfg.lr_d, cfg.beta1, cfg.beta2);
        let (_, macs, _) = nets.g_cost(cfg.size);
        let state = State {
            g_params: nets.g_params(),
            d_params: nets.d_params(),
            g_macs_per_face: macs,
            device: format!("{device:?}"),
            ..State::default()
        };
        Ok(Trainer {
            cfg,
            nets,
            opt_g,
            opt_d,
            layer,
            backbone,
            restoration: None,
            restore_extra: None,
            state,
            device,
        })
    }

    /// Rough peak memory of one training step in bytes: activations kept for backward
    /// (generator counted from its graph; the discriminators and second generator pass
    /// of the cycle loss as multiples of it) plus parameters, gradients and Adam moments.
    pub fn memory_estimate(&self) -> f64 {
        let (_, _, acts) = self.nets.g_cost(self.cfg.size);
        let passes = if self.cfg.model == "reggan" { 2.5 } else { 3.5 };
        let params = (self.state.g_params + self.state.d_params) as f64;
        self.cfg.batch as f64 * acts * passes * 4.0 * 2.0 + params * 4.0 * 4.0
    }

    /// One generator update (and `n_critic` discriminator updates); returns the losses.
    pub fn step(&mut self, data: &[Subject]) -> Result<BTreeMap<String, f64>> {
        let step = self.state.step as u64;
        tch::manual_seed((self.cfg.seed.wrapping_mul(1_000_003).wrapping_add(step)) as i64);
        let mut rng = Rng::new(self.cfg.seed.wrapping_mul(1_000_003).wrapping_add(step));
        let losses = if self.pretraining() {
            self.step_restore(data, &mut rng)
        } else if self.cfg.model == "reggan" {
            self.step_reggan(data, &mut rng)
        } else {
            self.step_star(data, &mut rng)
        };
        for (k, v) in &losses {
            if !v.is_finite() {
                bail!("loss {k} is {v} at step {}", self.state.step);
            }
        }
        self.state.step += 1;
        Ok(losses)
    }

    /// Whether the next step is a restoration-pretraining step.
    pub fn pretraining(&self) -> bool {
        self.cfg.model == "reggan" && self.state.step < self.cfg.pretrain_steps
    }

    /// Restoration pretraining: the refinement network learns to undo a regression-like
    /// degradation of clean crops (pixel + perceptual loss; no discriminator yet).
    fn step_restore(&mut self, data: &[Subject], rng: &mut Rng) -> BTreeMap<String, f64> {
        let l = self.cfg.lambdas.clone();
        let seed = self.cfg.seed;
        let extra = self.restore_extra.as_ref();
        let r = self
            .restoration
            .get_or_insert_with(|| Restoration::new(data, extra, seed));
        let clean = r.sample(self.cfg.batch, rng);
        let degraded = r.degrade(&clean, rng).to_device(self.device);
        let clean = clean.to_device(self.device);
        let out = self
            .nets
            .generate(&degraded, &Tensor::zeros([1], (Kind::Int64, Device::Cpu)));
        let pix = (&out - &clean).abs().mean(Kind::Float);
        let pcp = match &self.backbone {
            Some(b) => b.loss(&out, &clean),
            None => Tensor::zeros([], (Kind::Float, self.device)),
        };
        let loss = &pix * l.pix + &pcp * l.pcp;
        self.opt_g.zero_grad();
        loss.backward();
        self.opt_g.step();
        BTreeMap::from([
            ("restore_pix".to_string(), f(&pix)),
            ("restore_pcp".to_string(), f(&pcp)),
            (
                "restore_input_pix".to_string(),
                f(&(&degraded - &clean).abs().mean(Kind::Float)),
            ),
        ])
    }

    fn step_reggan(&mut self, data: &[Subject], rng: &mut Rng) -> BTreeMap<String, f64> {
        let l = self.cfg.lambdas.clone();
        let layer = self.layer.as_ref().expect("checked in new");
        let (source, target, ex) = match layer {
            ExpressionLayer::Mr(_) => sample_pairs(data, self.cfg.batch, rng),
            ExpressionLayer::RegFlow(rf) => {
                sample_any_pairs(data, &rf.meta.targets, self.cfg.batch, rng)
            }
        };
        let mr = layer.apply(&source, &ex).to_device(self.device);
        let target = target.to_device(self.device);
        let Disc::Reg(d) = &self.nets.d else {
            unreachable!()
        };
        let fake = self.nets.generate(&mr, &Tensor::from_slice(&ex));

        // Discriminators: hinge loss on every scale.
        let real_out = d.forward(&mr, &target);
        let fake_out = d.forward(&mr, &fake.detach());
        let mut loss_d = Tensor::zeros([], (Kind::Float, self.device));
        for (r, fk) in real_out.iter().zip(fake_out.iter()) {
            let (rl, fl): (&Tensor, &Tensor) =
                (r.last().expect("logits"), fk.last().expect("logits"));
            loss_d += (-rl + 1.0).relu().mean(Kind::Float) + (fl + 1.0).relu().mean(Kind::Float);
        }
        self.opt_d.zero_grad();
        loss_d.backward();
        self.opt_d.step();

        // Generator: pixel + adversarial + feature matching + perceptual.
        let fake_out = d.forward(&mr, &fake);
        let mut adv = Tensor::zeros([], (Kind::Float, self.device));
        let mut fm = Tensor::zeros([], (Kind::Float, self.device));
        let scales = fake_out.len() as f64;
        for (r, fk) in real_out.iter().zip(fake_out.iter()) {
            adv += -fk.last().expect("logits").mean(Kind::Float) / scales;
            let n = (fk.len() - 1) as f64;
            for (a, b) in fk.iter().zip(r.iter()).take(fk.len() - 1) {
                fm += (a - b.detach()).abs().mean(Kind::Float) / (n * scales);
            }
        }
        let pix = (&fake - &target).abs().mean(Kind::Float);
        let pcp = match &self.backbone {
            Some(b) => b.loss(&fake, &target),
            None => Tensor::zeros([], (Kind::Float, self.device)),
        };
        let loss_g = &pix * l.pix + &adv * l.adv + &fm * l.fm + &pcp * l.pcp;
        self.opt_g.zero_grad();
        loss_g.backward();
        self.opt_g.step();
        let mr_l1 = f(&(&mr - &target).abs().mean(Kind::Float));
        BTreeMap::from([
            ("d_hinge".to_string(), f(&loss_d)),
            ("g_total".to_string(), f(&loss_g)),
            ("g_pix".to_string(), f(&pix)),
            ("g_adv".to_string(), f(&adv)),
            ("g_fm".to_string(), f(&fm)),
            ("g_pcp".to_string(), f(&pcp)),
            ("mr_pix".to_string(), mr_l1),
        ])
    }

    fn step_star(&mut self, data: &[Subject], rng: &mut Rng) -> BTreeMap<String, f64> {
        let l = self.cfg.lambdas.clone();
        let dev = self.device;
        let Disc::Star(d) = &self.nets.d else {
            unreachable!()
        };
        let b = self.cfg.batch;
        let mut out = BTreeMap::new();
        for _ in 0..self.cfg.n_critic {
            let (x, lab, tgt) = sample_domains(data, b, rng);
            let x = x.to_device(dev);
            let (lab, tgt) = (
                Tensor::from_slice(&lab).to_device(dev),
                Tensor::from_slice(&tgt).to_device(dev),
            );
            let fake = tch::no_grad(|| self.nets.generate(&x, &tgt));
            let (src_r, cls_r) = d.forward(&x);
            let (src_f, _) = d.forward(&fake);
            let alpha = Tensor::rand([b, 1, 1, 1], (Kind::Float, dev));
            let xh: Tensor = (&alpha * &x + (-&alpha + 1.0) * &fake)
                .detach()
                .set_requires_grad(true);
            let (src_h, _) = d.forward(&xh);
            let grad = &Tensor::run_backward(&[src_h.sum(Kind::Float)], &[&xh], true, true)[0];
            let norm =
                (grad.flatten(1, -1).square().sum_dim_intlist(1, false, None) + 1e-12).sqrt();
            let gp = (norm - 1.0).square().mean(Kind::Float);
            let cls = cls_r.cross_entropy_for_logits(&lab);
            let wd = src_r.mean(Kind::Float) - src_f.mean(Kind::Float);
            let loss_d = -&wd + &cls * l.cls + &gp * l.gp;
            self.opt_d.zero_grad();
            loss_d.backward();
            self.opt_d.step();
            out.insert("d_total".to_string(), f(&loss_d));
            out.insert("d_wdist".to_string(), f(&wd));
            out.insert("d_cls".to_string(), f(&cls));
            out.insert("d_gp".to_string(), f(&gp));
        }
        let (x, lab, tgt) = sample_domains(data, b, rng);
        let x = x.to_device(dev);
        let (lab, tgt) = (
            Tensor::from_slice(&lab).to_device(dev),
            Tensor::from_slice(&tgt).to_device(dev),
        );
        let fake = self.nets.generate(&x, &tgt);
        let (src_f, cls_f) = d.forward(&fake);
        let rec = self.nets.generate(&fake, &lab);
        let adv = -src_f.mean(Kind::Float);
        let cls = cls_f.cross_entropy_for_logits(&tgt);
        let rl = (&x - &rec).abs().mean(Kind::Float);
        let loss_g = &adv + &cls * l.cls + &rl * l.rec;
        self.opt_g.zero_grad();
        loss_g.backward();
        self.opt_g.step();
        out.insert("g_total".to_string(), f(&loss_g));
        out.insert("g_adv".to_string(), f(&adv));
        out.insert("g_cls".to_string(), f(&cls));
        out.insert("g_rec".to_string(), f(&rl));
        out
    }

    /// The generator's output for validation faces and every expression.
    pub fn outputs(&self, faces: &Tensor, expressions: &[i64]) -> Tensor {
        tch::no_grad(|| {
            let x = match &self.layer {
                Some(layer) if self.cfg.model == "reggan" => layer.apply(faces, expressions),
                _ => faces.shallow_clone(),
            }
            .to_device(self.device);
            self.nets
                .generate(&x, &Tensor::from_slice(expressions).to_device(self.device))
                .to_device(Device::Cpu)
        })
    }

    /// Mean L1 to the real targets over validation (first neutral, first target) pairs:
    /// the generator's, and its input's (MR output for RegGAN, the neutral face otherwise).
    pub fn validate(&self, val: &[Subject]) -> BTreeMap<String, f64> {
        let (mut g, mut base, mut n) = (0.0f64, 0.0f64, 0.0f64);
        for s in val {
            for (k, t) in &s.targets {
                let Some(e) = expr_index(k) else { continue };
                let x = s.neutral.get(0).unsqueeze(0);
                let y = self.outputs(&x, &[e]);
                let inp = match &self.layer {
                    Some(layer) if self.cfg.model == "reggan" => layer.apply(&x, &[e]),
                    _ => x,
                };
                let t = t.get(0).unsqueeze(0);
                g += f(&(&y - &t).abs().mean(Kind::Float));
                base += f(&(&inp - &t).abs().mean(Kind::Float));
                n += 1.0;
            }
        }
        let input = if self.cfg.model == "reggan" {
            "val_l1_mr"
        } else {
            "val_l1_identity"
        };
        BTreeMap::from([
            ("val_l1".to_string(), g / n.max(1.0)),
            (input.to_string(), base / n.max(1.0)),
        ])
    }

    /// Writes a checkpoint: weights, both optimisers' moments and the state, as one.
    /// Every file is staged first ([`super::staged`]); `state.next.json` then commits
    /// them and they are moved in. A save killed or out of disk before the commit
    /// leaves the previous checkpoint as it was (and [`recover_checkpoint`] removes
    /// the staged files); one killed after it is completed by [`recover_checkpoint`].
    pub fn save(&self, run: &Path) -> Result<()> {
        std::fs::create_dir_all(run).with_context(|| format!("cannot create {}", run.display()))?;
        recover_checkpoint(run)?;
        write_atomic(
            &run.join("config.json"),
            (serde_json::to_string_pretty(&self.cfg)? + "\n").as_bytes(),
        )?;
        if let Err(e) = self.stage_checkpoint(run) {
            // Nothing was committed: drop the partial files, keep the previous checkpoint.
            let _ = recover_checkpoint(run);
            return Err(e.context(format!(
                "checkpoint of step {} not written; {} keeps the previous one",
                self.state.step,
                run.display()
            )));
        }
        test_pause("committed", self.state.step);
        recover_checkpoint(run)?;
        Ok(())
    }

    fn stage_checkpoint(&self, run: &Path) -> Result<()> {
        stage(&staged(run, "gen.safetensors"), |p| {
            save_var_store(&self.nets.gvs, p)
        })?;
        stage(&staged(run, "disc.safetensors"), |p| {
            save_var_store(&self.nets.dvs, p)
        })?;
        stage(&staged(run, "gen-adam.safetensors"), |p| self.opt_g.save(p))?;
        stage(&staged(run, "disc-adam.safetensors"), |p| {
            self.opt_d.save(p)
        })?;
        test_pause("staged", self.state.step);
        // The commit point: written whole (temporary file, then rename) or not at all.
        let state = serde_json::to_string_pretty(&self.state)? + "\n";
        stage(&staged(run, "state.json"), |p| {
            write_atomic(p, state.as_bytes())
        })
    }

    /// Restores weights, optimiser moments and state from a run folder (first
    /// completing or removing what an interrupted save left). A run saved before the
    /// moments were checkpointed resumes with fresh ones.
    pub fn resume(&mut self, run: &Path) -> Result<()> {
        if let Some(did) = recover_checkpoint(run)? {
            eprintln!("{}: {did}", run.display());
        }
        self.nets
            .gvs
            .load(run.join("gen.safetensors"))
            .with_context(|| format!("cannot load {}/gen.safetensors", run.display()))?;
        self.nets
            .dvs
            .load(run.join("disc.safetensors"))
            .with_context(|| format!("cannot load {}/disc.safetensors", run.display()))?;
        for (opt, file) in [
            (&mut self.opt_g, "gen-adam.safetensors"),
            (&mut self.opt_d, "disc-adam.safetensors"),
        ] {
            let path = run.join(file);
            if path.is_file() {
                opt.load(&path)?;
            } else {
                eprintln!("{}: no {file}; the optimiser restarts", run.display());
            }
        }
        let p = run.join("state.json");
        self.state = serde_json::from_str(
            &std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?,
        )
        .with_context(|| format!("{} is not a valid state", p.display()))?;
        Ok(())
    }
}

fn save_var_store(vs: &VarStore, path: &Path) -> Result<()> {
    vs.save(path)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// For the crash tests: `REGGAN_TEST_CHECKPOINT_PAUSE=POINT@STEP` stops the save of
/// step STEP at POINT (`staged`: every file staged, nothing committed; `committed`:
/// committed, nothing moved in), says so on stderr and waits to be killed.
fn test_pause(point: &str, step: usize) {
    let Ok(want) = std::env::var("REGGAN_TEST_CHECKPOINT_PAUSE") else {
        return;
    };
    if want == format!("{point}@{step}") {
        eprintln!("checkpoint paused: {want}");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
}

pub use crate::data::save_png;

/// Sample grid: per validation subject a row (neutral, then the six expressions); for
/// RegGAN a second row with the MR layer's outputs (what the refinement network saw).
pub fn sample_grid(t: &Trainer, val: &[Subject], path: &Path) -> Result<()> {
    let e: Vec<i64> = (0..EXPRESSIONS.len() as i64).collect();
    let mut rows = Vec::new();
    for s in val.iter().take(6) {
        let x = s.neutral.get(0).unsqueeze(0);
        let xs = x.repeat([e.len() as i64, 1, 1, 1]);
        let y = t.outputs(&xs, &e);
        let mut row = vec![x.shallow_clone()];
        row.extend(y.unbind(0).into_iter().map(|v| v.unsqueeze(0)));
        rows.push(Tensor::cat(&Tensor::cat(&row, 0).unbind(0), 2));
        if let Some(layer) = t.layer.as_ref().filter(|_| t.cfg.model == "reggan") {
            let m = layer.apply(&xs, &e);
            let mut row = vec![Tensor::ones_like(&x) * 0.5];
            row.extend(m.unbind(0).into_iter().map(|v| v.unsqueeze(0)));
            rows.push(Tensor::cat(&Tensor::cat(&row, 0).unbind(0), 2));
        }
    }
    save_png(&Tensor::cat(&rows, 1), path)
}

const COLORS: [[u8; 3]; 8] = [
    [230, 25, 75],
    [60, 180, 75],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [128, 128, 0],
];

/// Loss curves: one panel per loss (in the order of losses.csv's columns), each scaled
/// to its own min..max, with a grey zero line where zero is in range.
pub fn loss_plot(history: &[HistEntry], png: &Path, csv: &Path) -> Result<()> {
    // Every loss that was ever logged (pretraining and fine-tuning log different ones).
    let keys: Vec<String> = history
        .iter()
        .flat_map(|h| h.losses.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut text = format!("step,{}\n", keys.join(","));
    for h in history {
        let vals: Vec<String> = keys
            .iter()
            .map(|k| format!("{:.6}", h.losses.get(k).copied().unwrap_or(f64::NAN)))
            .collect();
        text += &format!("{},{}\n", h.step, vals.join(","));
    }
    write_atomic(csv, text.as_bytes())?;
    if history.len() < 2 || keys.is_empty() {
        return Ok(());
    }
    let (w, ph) = (640usize, 90usize);
    let h = ph * keys.len();
    let mut img = vec![255u8; w * h * 3];
    let put = |x: usize, y: usize, c: [u8; 3], img: &mut Vec<u8>| {
        if x < w && y < h {
            img[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&c);
        }
    };
    for (ki, k) in keys.iter().enumerate() {
        let ys: Vec<f64> = history
            .iter()
            .map(|e| e.losses.get(k).copied().unwrap_or(f64::NAN))
            .collect();
        let lo = ys
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .fold(f64::INFINITY, f64::min);
        let hi = ys
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .fold(f64::NEG_INFINITY, f64::max);
        let span = (hi - lo).max(1e-12);
        let top = ki * ph;
        for x in 0..w {
            put(x, top + ph - 1, [0, 0, 0], &mut img);
        }
        let py = |v: f64| top + 4 + ((hi - v) / span * (ph - 10) as f64).round() as usize;
        if lo < 0.0 && hi > 0.0 {
            let zy = py(0.0);
            for x in 0..w {
                put(x, zy, [200, 200, 200], &mut img);
            }
        }
        let n = ys.len();
        let mut prev: Option<(usize, usize)> = None;
        for (i, v) in ys.iter().enumerate() {
            if !v.is_finite() {
                continue;
            }
            let x = i * (w - 1) / (n - 1).max(1);
            let y = py(*v);
            if let Some((x0, y0)) = prev {
                let steps = (x.abs_diff(x0)).max(y.abs_diff(y0)).max(1);
                for s in 0..=steps {
                    let xi = x0 as f64 + (x as f64 - x0 as f64) * s as f64 / steps as f64;
                    let yi = y0 as f64 + (y as f64 - y0 as f64) * s as f64 / steps as f64;
                    put(
                        xi.round() as usize,
                        yi.round() as usize,
                        COLORS[ki % 8],
                        &mut img,
                    );
                }
            }
            prev = Some((x, y));
        }
    }
    crate::data::save_rgb(w, h, img, png, 95)
}

/// The options of `reggan-train gan` (also taken by `examples/train_refiner.rs`).
#[derive(clap::Args, Debug)]
pub struct GanCli {
    #[arg(long, value_parser = ["reggan", "usgan", "sargan"])]
    pub model: String,
    /// Network size: small (CPU), medium (GPU), paper (the paper's RegGAN).
    #[arg(long, default_value = "small", value_parser = ["small", "medium", "paper"])]
    pub config: String,
    #[arg(long)]
    pub cache: PathBuf,
    /// Fitted MR layer (RegGAN only).
    #[arg(long)]
    pub mr_weights: Option<PathBuf>,
    /// A fitted RegFlow instead of MR (RegGAN only): the refinement network then
    /// learns on flow-warped faces, from every source expression, neutral included.
    #[arg(long)]
    pub regflow_weights: Option<PathBuf>,
    /// A `prepare --unpaired` cache (e.g. UTKFace) added to restoration pretraining.
    #[arg(long)]
    pub restore_cache: Option<PathBuf>,
    /// Run folder: config.json, checkpoints, losses.png, samples.png.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 100_000)]
    pub steps: usize,
    /// Stop (and checkpoint) after this many minutes.
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    pub resume: bool,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
    pub device: String,
    /// Perceptual backbone: random-convnet, vgg19:<weights.safetensors> or none.
    #[arg(long)]
    pub perceptual: Option<String>,
    #[arg(long)]
    pub batch: Option<i64>,
    /// Steps between checkpoints / sample grids / loss plots.
    #[arg(long)]
    pub every: Option<usize>,
    /// Weight of the adversarial loss (default: the config's, 1.0).
    #[arg(long)]
    pub adv_weight: Option<f64>,
    /// Learning rate of generator and discriminator (default: the config's).
    #[arg(long)]
    pub lr: Option<f64>,
    /// RegGAN: steps of restoration pretraining before fine-tuning on the MR
    /// layer's outputs (default: the config's; 0 turns it off).
    #[arg(long)]
    pub pretrain_steps: Option<usize>,
}

impl From<GanCli> for GanArgs {
    fn from(c: GanCli) -> Self {
        GanArgs {
            model: c.model,
            config: c.config,
            cache: c.cache,
            mr_weights: c.mr_weights,
            regflow_weights: c.regflow_weights,
            restore_cache: c.restore_cache,
            out: c.out,
            steps: c.steps,
            max_minutes: c.max_minutes,
            resume: c.resume,
            seed: c.seed,
            device: if c.device == "cuda" {
                Device::Cuda(0)
            } else {
                Device::Cpu
            },
            perceptual: c.perceptual,
            batch: c.batch,
            every: c.every,
            adv_weight: c.adv_weight,
            lr: c.lr,
            pretrain_steps: c.pretrain_steps,
        }
    }
}

pub struct GanArgs {
    pub model: String,
    pub config: String,
    pub cache: PathBuf,
    pub mr_weights: Option<PathBuf>,
    /// A fitted RegFlow (`reggan-train regflow`) instead of MR (RegGAN only).
    pub regflow_weights: Option<PathBuf>,
    /// A `prepare --unpaired` cache whose crops join restoration pretraining.
    pub restore_cache: Option<PathBuf>,
    pub out: PathBuf,
    pub steps: usize,
    pub max_minutes: Option<f64>,
    pub resume: bool,
    pub seed: u64,
    pub device: Device,
    pub perceptual: Option<String>,
    pub batch: Option<i64>,
    pub every: Option<usize>,
    /// Overrides the adversarial loss weight (λ_adv) of the config.
    pub adv_weight: Option<f64>,
    /// Overrides both learning rates of the config.
    pub lr: Option<f64>,
    /// Overrides the config's restoration-pretraining steps (RegGAN).
    pub pretrain_steps: Option<usize>,
}

/// Every crop of an unpaired cache (`prepare --unpaired`), [M,3,S,S].
pub fn load_unpaired(cache: &Path, size: i64) -> Result<Tensor> {
    let index = Index::read(cache)?;
    if index.crop_size as i64 != size {
        bail!(
            "{} has {} px crops; the run uses {} px",
            cache.display(),
            index.crop_size,
            size
        );
    }
    let crops = index
        .entries
        .iter()
        .map(|e| crate::data::load_crop(&cache.join(&e.path)))
        .collect::<Result<Vec<_>>>()?;
    if crops.is_empty() {
        bail!("{} holds no crops", cache.display());
    }
    println!(
        "restoration pretraining: {} unpaired crops from {}",
        crops.len(),
        cache.display()
    );
    Ok(Tensor::stack(&crops, 0))
}

/// Available memory in bytes: MemAvailable on CPU; for CUDA $REGGAN_GPU_MEM_GB (default 16).
fn available_memory(device: Device) -> f64 {
    if device.is_cuda() {
        return std::env::var("REGGAN_GPU_MEM_GB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(16.0)
            * 1e9;
    }
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<f64>().ok())
                })
        })
        .map(|kb| kb * 1024.0)
        .unwrap_or(f64::INFINITY)
}

pub fn run(args: GanArgs) -> Result<()> {
    tch::set_num_threads(
        std::env::var("REGGAN_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2),
    );
    let cfg = if args.resume {
        RunConfig::read(&args.out)?
    } else {
        let data_size = Index::read(&args.cache)
            .map(|i| i.crop_size as i64)
            .unwrap_or(128);
        let mut cfg = RunConfig::new(&args.model, &args.config, data_size)?;
        cfg.seed = args.seed;
        cfg.cache = std::fs::canonicalize(&args.cache)
            .unwrap_or(args.cache.clone())
            .display()
            .to_string();
        let absolute = |p: &PathBuf| {
            std::fs::canonicalize(p)
                .unwrap_or(p.clone())
                .display()
                .to_string()
        };
        cfg.mr_weights = args.mr_weights.as_ref().map(absolute);
        cfg.regflow_weights = args.regflow_weights.as_ref().map(absolute);
        cfg.restore_cache = args.restore_cache.as_ref().map(absolute);
        if let Some(p) = &args.perceptual {
            cfg.perceptual = p.clone();
        }
        if let Some(b) = args.batch {
            cfg.batch = b;
        }
        if let Some(e) = args.every {
            cfg.every = e;
        }
        if let Some(a) = args.adv_weight {
            cfg.lambdas.adv = a;
        }
        if let Some(lr) = args.lr {
            cfg.lr_g = lr;
            cfg.lr_d = lr;
        }
        if let Some(p) = args.pretrain_steps {
            if cfg.model != "reggan" && p > 0 {
                bail!("--pretrain-steps is for RegGAN's refinement network only");
            }
            cfg.pretrain_steps = p;
        }
        cfg
    };
    let data = Data::load(Path::new(&cfg.cache))?;
    if data.size != cfg.size {
        bail!(
            "the cache has {} px crops; the run was made for {} px",
            data.size,
            cfg.size
        );
    }
    let layer = if cfg.model == "reggan" {
        let layer =
            ExpressionLayer::load(cfg.mr_weights.as_deref(), cfg.regflow_weights.as_deref())?;
        if layer.size() != cfg.size {
            bail!(
                "the expression layer is for {} px crops, the cache has {} px",
                layer.size(),
                cfg.size
            );
        }
        Some(layer)
    } else {
        None
    };
    let restore_extra = match &cfg.restore_cache {
        Some(dir) => Some(load_unpaired(Path::new(dir), cfg.size)?),
        None => None,
    };
    let mut t = Trainer::new(cfg, layer, args.device)?;
    t.restore_extra = restore_extra;
    let need = t.memory_estimate();
    let have = available_memory(args.device);
    if need > 0.8 * have {
        bail!(
            "config {} with batch {} needs about {:.1} GB for a training step; {:.1} GB available: use a smaller --config or --batch",
            t.cfg.config,
            t.cfg.batch,
            need / 1e9,
            have / 1e9
        );
    }
    if args.resume {
        t.resume(&args.out)?;
        println!("resumed {} at step {}", args.out.display(), t.state.step);
    }
    println!(
        "{} ({}): generator {} parameters, {:.2} GMAC per face; discriminator {} parameters; ~{:.2} GB per step; perceptual: {}; restoration pretraining: {} steps",
        t.cfg.model,
        t.cfg.config,
        t.state.g_params,
        t.state.g_macs_per_face / 1e9,
        t.state.d_params,
        need / 1e9,
        t.cfg.perceptual,
        t.cfg.pretrain_steps
    );
    std::fs::create_dir_all(&args.out)?;
    let start = Instant::now();
    let elapsed0 = t.state.elapsed_s;
    let pb = ProgressBar::new(args.steps as u64);
    pb.set_style(ProgressStyle::with_template(
        "{bar:30} {pos}/{len} {elapsed} ETA {eta} {msg}",
    )?);
    pb.set_position(t.state.step as u64);
    let mut acc: BTreeMap<String, f64> = BTreeMap::new();
    let mut acc_n = 0.0;
    let log_every = (t.cfg.every / 5).max(1);
    let finish =
        |t: &mut Trainer, acc: &mut BTreeMap<String, f64>, acc_n: &mut f64| -> Result<()> {
            t.state.elapsed_s = elapsed0 + start.elapsed().as_secs_f64();
            if *acc_n > 0.0 {
                let losses = acc.iter().map(|(k, v)| (k.clone(), v / *acc_n)).collect();
                t.state.history.push(HistEntry {
                    step: t.state.step,
                    losses,
                });
                acc.clear();
                *acc_n = 0.0;
            }
            Ok(())
        };
    while t.state.step < args.steps {
        if let Some(m) = args.max_minutes {
            if start.elapsed().as_secs_f64() > m * 60.0 {
                pb.println(format!(
                    "time budget of {m} minutes reached at step {}",
                    t.state.step
                ));
                break;
            }
        }
        let losses = t.step(&data.train)?;
        t.state.elapsed_s = elapsed0 + start.elapsed().as_secs_f64();
        for (k, v) in &losses {
            *acc.entry(k.clone()).or_default() += v;
        }
        acc_n += 1.0;
        pb.set_message(
            losses
                .iter()
                .filter(|(k, _)| {
                    !k.starts_with("d_") || k.as_str() == "d_total" || k.as_str() == "d_hinge"
                })
                .map(|(k, v)| format!("{k} {v:.3}"))
                .collect::<Vec<_>>()
                .join(" "),
        );
        pb.set_position(t.state.step as u64);
        if t.state.step % log_every == 0 {
            finish(&mut t, &mut acc, &mut acc_n)?;
        }
        if t.state.step % t.cfg.every == 0 {
            checkpoint(&mut t, &data, &args.out)?;
        }
    }
    pb.finish();
    finish(&mut t, &mut acc, &mut acc_n)?;
    checkpoint(&mut t, &data, &args.out)?;
    println!(
        "step {}: {:.1} s in all ({:.2} s per step); validation {:?}; wrote {}",
        t.state.step,
        t.state.elapsed_s,
        t.state.elapsed_s / t.state.step.max(1) as f64,
        t.state.val,
        args.out.display()
    );
    Ok(())
}

fn checkpoint(t: &mut Trainer, data: &Data, run: &Path) -> Result<()> {
    t.state.val = t.validate(&data.val);
    if let Some(h) = t.state.history.last() {
        // A plain line too, for logs (the progress bar is hidden without a terminal).
        eprintln!(
            "checkpoint step {} ({:.0} s): {:?}; validation {:?}",
            t.state.step, t.state.elapsed_s, h.losses, t.state.val
        );
    }
    t.save(run)?;
    sample_grid(t, &data.val, &run.join("samples.png"))?;
    loss_plot(
        &t.state.history,
        &run.join("losses.png"),
        &run.join("losses.csv"),
    )
}
