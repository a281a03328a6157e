//! RegFlow: geometry-first expression synthesis. Two closed-form layers per target
//! expression, both fitted by batched ridge regression like MR:
//!
//! 1. **Flow layer.** The backward flow [2,S,S] that moves the input face's own pixels
//!    towards the target expression, regressed per cell of a G x G grid (4 px cells)
//!    on the k x k neighbourhood of the input's luma at that grid, plus a bias. The
//!    bias alone (k = 0) is the mean flow; the neighbourhood lets the flow depend on
//!    the face it moves (a smiling source needs its smile undone, a neutral one not).
//!    Targets are the DIS flows ([`crate::flow`]) between every crop of a performer and
//!    every crop of the same performer with the target expression, from ANY other
//!    expression (neutral included), mirrored too.
//!    Smoothness comes from three places: DIS's variational refinement smooths each
//!    training flow; the fit is on 4 px cells (area-averaged flow), and bilinear
//!    upsampling makes the field continuous; the ridge penalty shrinks every cell's
//!    weights towards the mean flow, which is itself an average of smooth fields.
//! 2. **Appearance layer.** MR (k = 3) fitted on (flow-warped source, target) pairs,
//!    so it only adds what moving cannot: teeth, the mouth interior, shading. Its ridge
//!    penalty pulls towards the identity (not towards zero, which is a mean face), and
//!    λ is chosen on the 4x4-block MSE, so the input's own detail and colour stay.
//!
//! Targets are the six expressions plus `neutral` (any expression to neutral).
//! λ and k of the flow layer and λ of the appearance layer are cross-validated on the
//! validation performers.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::data::{load_subjects, Index, Subject};
use crate::flow::{luma, warp, FlowEstimator};
use crate::regression::{shifted, solve, Features, Layer};

/// Flow grid cells per side (S / GRID pixels per cell).
pub const GRID: i64 = 32;
/// Receptive fields (grid cells per side) tried for the flow layer; 0 = mean flow.
pub const FLOW_KS: [usize; 4] = [0, 1, 3, 5];
/// Ridge penalties tried for the flow layer (on the summed normal equations).
pub const FLOW_LAMBDAS: [f64; 6] = [1e-1, 1.0, 10.0, 100.0, 1e3, 1e4];
/// Receptive field of the appearance layer (MR's).
pub const APPEARANCE_K: usize = 3;
/// Ridge penalties tried for the appearance layer.
pub const APPEARANCE_LAMBDAS: [f64; 7] = [1e-1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5];

/// The model's targets in index order: the product's six, then neutral.
pub fn targets() -> Vec<String> {
    reggan::EXPRESSIONS
        .iter()
        .map(|e| e.to_string())
        .chain(std::iter::once("neutral".to_string()))
        .collect()
}

/// Every crop of one performer, by expression.
pub struct Person {
    pub name: String,
    pub crops: BTreeMap<String, Tensor>,
}

impl Person {
    fn from_subject(s: Subject) -> Self {
        let mut crops = s.targets;
        crops.insert("neutral".into(), s.neutral);
        Person {
            name: s.name,
            crops,
        }
    }

    /// The crops whose expression is not `target`, [Ns,3,S,S] (None if there are none).
    pub fn sources_for(&self, target: &str) -> Option<Tensor> {
        let v: Vec<&Tensor> = self
            .crops
            .iter()
            .filter(|(e, _)| e.as_str() != target)
            .map(|(_, t)| t)
            .collect();
        (!v.is_empty()).then(|| Tensor::cat(&v, 0))
    }

    /// Expression of each row of `sources_for(target)`.
    pub fn source_labels(&self, target: &str) -> Vec<String> {
        self.crops
            .iter()
            .filter(|(e, _)| e.as_str() != target)
            .flat_map(|(e, t)| std::iter::repeat_n(e.clone(), t.size()[0] as usize))
            .collect()
    }

    /// The performer mirrored left-right.
    fn mirrored(&self) -> Person {
        Person {
            name: format!("{}~m", self.name),
            crops: self
                .crops
                .iter()
                .map(|(e, t)| (e.clone(), t.flip([3])))
                .collect(),
        }
    }
}

/// Loads the performers of `names` (all their crops).
pub fn load_people(
    cache: &Path,
    index: &Index,
    names: &[String],
    datasets: &[String],
) -> Result<Vec<Person>> {
    Ok(load_subjects(cache, index, names, datasets)?
        .into_iter()
        .map(Person::from_subject)
        .collect())
}

/// Training flows of one performer: per target expression, [Ns,Nt,2,G,G] (source i,
/// target j), averaged over each grid cell.
pub type PersonFlows = BTreeMap<String, Tensor>;

/// Area-averages a full-resolution flow [.., 2, S, S] onto the G x G grid.
fn to_grid(flow: &Tensor) -> Tensor {
    let s = flow.size()[flow.dim() - 1];
    let c = s / GRID;
    let shape = flow.size();
    let lead: Vec<i64> = shape[..shape.len() - 3].to_vec();
    let flat = flow.reshape([-1, 2, s, s]);
    let pooled = flat.avg_pool2d([c, c], [c, c], [0, 0], false, true, None::<i64>);
    let mut out = lead;
    out.extend([2, GRID, GRID]);
    pooled.reshape(out)
}

/// DIS flows of every (source, target) pair of a performer, cached in
/// `cache/flows/<performer>.safetensors` (computing them takes a minute or two).
pub fn person_flows(cache: &Path, person: &Person, est: &mut FlowEstimator) -> Result<PersonFlows> {
    let file = cache
        .join("flows")
        .join(format!("{}-g{GRID}.safetensors", person.name.replace('/', "_")));
    if file.is_file() {
        let named = Tensor::read_safetensors(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        return Ok(named.into_iter().collect());
    }
    let mut flows = PersonFlows::new();
    for (target, tgt) in &person.crops {
        let Some(src) = person.sources_for(target) else {
            continue;
        };
        let mut rows = Vec::new();
        for i in 0..src.size()[0] {
            let mut row = Vec::new();
            for j in 0..tgt.size()[0] {
                row.push(est.estimate(&tgt.get(j), &src.get(i))?);
            }
            rows.push(to_grid(&Tensor::stack(&row, 0)));
        }
        flows.insert(target.clone(), Tensor::stack(&rows, 0));
    }
    std::fs::create_dir_all(file.parent().expect("has a parent"))?;
    let tmp = file.with_extension("tmp");
    let named: Vec<(&str, &Tensor)> = flows.iter().map(|(k, v)| (k.as_str(), v)).collect();
    Tensor::write_safetensors(&named, &tmp)?;
    std::fs::rename(&tmp, &file)?;
    Ok(flows)
}

/// The flows of the mirrored performer: mirrored fields with dx negated.
fn mirror_flows(flows: &PersonFlows) -> PersonFlows {
    let sign = Tensor::from_slice(&[-1f32, 1.0]).view([2, 1, 1]);
    flows
        .iter()
        .map(|(e, f)| (e.clone(), f.flip([4]) * &sign))
        .collect()
}

/// Flow-layer features of faces [N,3,S,S]: [N,K,G,G] with K = k² + 1 (the last is 1).
pub fn flow_features(faces: &Tensor, k: usize) -> Tensor {
    let s = faces.size()[2];
    let c = s / GRID;
    let n = faces.size()[0];
    let small = luma(faces).avg_pool2d([c, c], [c, c], [0, 0], false, true, None::<i64>);
    let ones = Tensor::ones([n, 1, GRID, GRID], (faces.kind(), faces.device()));
    if k == 0 {
        return ones;
    }
    Tensor::cat(&[shifted(&small, k).squeeze_dim(1), ones], 1)
}

/// One target's flow layer: weights [2,K,G,G] over `flow_features`.
#[derive(Debug)]
pub struct FlowLayer {
    pub k: usize,
    pub w: Tensor,
}

impl FlowLayer {
    /// Flow on the grid [N,2,G,G] for faces [N,3,S,S].
    pub fn grid_flow(&self, faces: &Tensor) -> Tensor {
        let f = flow_features(&faces.to_kind(Kind::Float), self.k); // [N,K,G,G]
        (f.unsqueeze(1) * self.w.unsqueeze(0)).sum_dim_intlist(2, false, None)
    }

    /// Flow at full resolution [N,2,S,S] (bilinear, as the exported graph's Resize).
    pub fn flow(&self, faces: &Tensor) -> Tensor {
        let s = faces.size()[2];
        self.grid_flow(faces)
            .upsample_bilinear2d([s, s], false, None, None)
    }
}

/// Normal equations of the flow layer for one target over people and their flows:
/// AᵀA [G²,K,K], Aᵀt [G²,K,2], and the number of pairs.
fn flow_normal_equations(
    people: &[(&Person, &PersonFlows)],
    target: &str,
    k: usize,
) -> (Tensor, Tensor, usize) {
    let kk = if k == 0 { 1 } else { (k * k + 1) as i64 };
    let g2 = GRID * GRID;
    let mut ata = Tensor::zeros([g2, kk, kk], (Kind::Double, tch::Device::Cpu));
    let mut atb = Tensor::zeros([g2, kk, 2], (Kind::Double, tch::Device::Cpu));
    let mut pairs = 0;
    for (person, flows) in people {
        let (Some(src), Some(f)) = (person.sources_for(target), flows.get(target)) else {
            continue;
        };
        let nt = f.size()[1];
        pairs += (f.size()[0] * nt) as usize;
        // [Ns,K,G,G] -> [G²,K,Ns]
        let feats = flow_features(&src.to_kind(Kind::Double), k)
            .permute([2, 3, 1, 0])
            .reshape([g2, kk, -1]);
        let fsum = f
            .to_kind(Kind::Double)
            .sum_dim_intlist(1, false, None) // [Ns,2,G,G]
            .permute([2, 3, 0, 1])
            .reshape([g2, -1, 2]);
        ata += (&feats * nt as f64).bmm(&feats.transpose(1, 2));
        atb += feats.bmm(&fsum);
    }
    (ata, atb, pairs)
}

fn solve_flow(ata: &Tensor, atb: &Tensor, lambda: f64, k: usize) -> FlowLayer {
    let kk = ata.size()[1];
    let mut reg = vec![lambda; kk as usize - 1];
    reg.push(0.0); // the bias (mean flow) is not regularised
    let d = Tensor::from_slice(&reg).diag(0).unsqueeze(0);
    let sol = Tensor::linalg_solve(&(ata + d), atb, true); // [G²,K,2]
    let w = sol
        .view([GRID, GRID, kk, 2])
        .permute([3, 2, 0, 1])
        .to_kind(Kind::Float)
        .contiguous();
    FlowLayer { k, w }
}

/// Sum of squared endpoint errors (px²) and pair count of a flow predictor on people,
/// split by whether the source is neutral.
fn flow_sse(
    people: &[(&Person, &PersonFlows)],
    target: &str,
    predict: impl Fn(&Tensor) -> Tensor,
) -> [(f64, f64); 2] {
    let mut out = [(0.0, 0.0); 2];
    for (person, flows) in people {
        let (Some(src), Some(f)) = (person.sources_for(target), flows.get(target)) else {
            continue;
        };
        let pred = predict(&src).to_kind(Kind::Double); // [Ns,2,G,G]
        let err = (pred.unsqueeze(1) - f.to_kind(Kind::Double))
            .square()
            .sum_dim_intlist(&[1i64, 2, 3, 4][..], false, None); // [Ns]
        let err = Vec::<f64>::try_from(&err).expect("double vector");
        for (e, label) in err.iter().zip(person.source_labels(target)) {
            let slot = &mut out[usize::from(label != "neutral")];
            slot.0 += e;
            slot.1 += (f.size()[1] * GRID * GRID) as f64;
        }
    }
    out
}

fn mse_of(parts: [(f64, f64); 2]) -> f64 {
    (parts[0].0 + parts[1].0) / (parts[0].1 + parts[1].1).max(1.0)
}

/// Cross-validation of the flow layer: mean squared endpoint error per grid cell (px²)
/// on the validation pairs, for every (k, λ) and target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowSweep {
    pub ks: Vec<usize>,
    pub lambdas: Vec<f64>,
    pub targets: Vec<String>,
    /// epe2[k][target][lambda]
    pub epe2: Vec<Vec<Vec<f64>>>,
    /// Zero flow's error per target.
    pub zero: Vec<f64>,
}

/// Everything `regflow` learned and measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegFlowMeta {
    pub targets: Vec<String>,
    pub grid: i64,
    pub flow_k: usize,
    pub flow_lambda: BTreeMap<String, f64>,
    pub appearance_k: usize,
    pub appearance_lambda: BTreeMap<String, f64>,
    #[serde(default)]
    pub colour_augment: usize,
    /// Validation squared endpoint error (px² per grid cell): [neutral src, other src].
    pub flow_val_epe2: BTreeMap<String, [f64; 2]>,
    pub zero_flow_val_epe2: BTreeMap<String, [f64; 2]>,
    /// Validation MSE of 4x4-block means (RGB in [0,1]): input unchanged, warped only,
    /// warped + appearance.
    pub val_mse_identity: BTreeMap<String, f64>,
    pub val_mse_warp: BTreeMap<String, f64>,
    pub val_mse: BTreeMap<String, f64>,
    pub train_pairs: BTreeMap<String, usize>,
    pub flow_sweep: FlowSweep,
    pub train_subjects: Vec<String>,
    pub val_subjects: Vec<String>,
    pub datasets: Vec<String>,
    pub cache: String,
    pub crop_size: usize,
    pub template: reggan::Template,
    pub seconds: BTreeMap<String, f64>,
}

/// The fitted model: per target (index order of `meta.targets`) a flow layer and an
/// appearance layer, stacked.
pub struct RegFlow {
    pub meta: RegFlowMeta,
    /// [E,2,K,G,G]
    pub flow_w: Tensor,
    /// [E,3,k²,S,S] and [E,3,S,S]
    pub app_w: Tensor,
    pub app_b: Tensor,
}

impl RegFlow {
    pub fn flow_layer(&self, e: usize) -> FlowLayer {
        FlowLayer {
            k: self.meta.flow_k,
            w: self.flow_w.get(e as i64),
        }
    }

    /// The whole model in tch for faces [N,3,S,S] with per-face target indices:
    /// (face_out, flow), the arithmetic of the exported graph.
    pub fn forward(&self, faces: &Tensor, expressions: &[i64]) -> (Tensor, Tensor) {
        let idx = Tensor::from_slice(expressions);
        let s = faces.size()[2];
        let w = self.flow_w.index_select(0, &idx); // [N,2,K,G,G]
        let f = flow_features(&faces.to_kind(Kind::Float), self.meta.flow_k);
        let grid = (f.unsqueeze(1) * w).sum_dim_intlist(2, false, None);
        let flow = grid.upsample_bilinear2d([s, s], false, None, None);
        let warped = warp(faces, &flow);
        let out = crate::export::tch_forward(
            &self.app_w,
            &self.app_b,
            self.meta.appearance_k,
            &warped,
            expressions,
        );
        (out, flow)
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        Tensor::write_safetensors(
            &[
                ("flow_w", &self.flow_w),
                ("app_w", &self.app_w),
                ("app_b", &self.app_b),
            ],
            dir.join("weights.safetensors"),
        )?;
        std::fs::write(
            dir.join("meta.json"),
            serde_json::to_string_pretty(&self.meta)? + "\n",
        )?;
        Ok(())
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let meta: RegFlowMeta = serde_json::from_str(
            &std::fs::read_to_string(dir.join("meta.json"))
                .with_context(|| format!("cannot read {}/meta.json", dir.display()))?,
        )?;
        let named: BTreeMap<String, Tensor> =
            Tensor::read_safetensors(dir.join("weights.safetensors"))?
                .into_iter()
                .collect();
        let get = |n: &str| {
            named
                .get(n)
                .map(|t| t.shallow_clone())
                .with_context(|| format!("{} lacks {n}", dir.display()))
        };
        Ok(RegFlow {
            flow_w: get("flow_w")?,
            app_w: get("app_w")?,
            app_b: get("app_b")?,
            meta,
        })
    }
}

/// Options of `reggan-train regflow`.
#[derive(Debug, Clone)]
pub struct RegFlowOptions {
    pub datasets: Option<Vec<String>>,
    pub flow_ks: Vec<usize>,
    /// Recoloured copies of each training performer for the appearance layer
    /// ([`crate::augment`]); 0 = none.
    pub colour_augment: usize,
}

fn progress(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} [{elapsed}<{eta}]")
            .expect("valid template"),
    );
    bar.set_message(what.to_string());
    bar
}

/// Fits the whole model on the cache's training performers, measuring on its
/// validation performers.
pub fn fit(cache: &Path, opts: &RegFlowOptions) -> Result<RegFlow> {
    let index = Index::read(cache)?;
    let datasets = opts.datasets.clone().unwrap_or_else(|| vec!["tfeid".into()]);
    let train = load_people(cache, &index, &index.train_subjects, &datasets)?;
    let val = load_people(cache, &index, &index.val_subjects, &datasets)?;
    if train.is_empty() || val.is_empty() {
        bail!(
            "data sets {datasets:?} give {} training and {} validation performers; need both",
            train.len(),
            val.len()
        );
    }
    let targets = targets();
    let mut seconds = BTreeMap::new();

    // 1. DIS flows of every pair (cached).
    let t = Instant::now();
    let mut est = FlowEstimator::new()?;
    let bar = progress(train.len() + val.len(), "optical flow of every pair");
    let mut flows_of = |people: &[Person]| -> Result<Vec<PersonFlows>> {
        people
            .iter()
            .map(|p| {
                let f = person_flows(cache, p, &mut est);
                bar.inc(1);
                f
            })
            .collect()
    };
    let train_flows = flows_of(&train)?;
    let val_flows = flows_of(&val)?;
    bar.finish_and_clear();
    seconds.insert("optical_flow".into(), t.elapsed().as_secs_f64());
    println!(
        "optical flow of every pair: {:.1} s ({} train / {} validation performers)",
        t.elapsed().as_secs_f64(),
        train.len(),
        val.len()
    );
    let mirrored: Vec<Person> = train.iter().map(Person::mirrored).collect();
    let mirrored_flows: Vec<PersonFlows> = train_flows.iter().map(mirror_flows).collect();
    let train_set: Vec<(&Person, &PersonFlows)> = train
        .iter()
        .zip(&train_flows)
        .chain(mirrored.iter().zip(&mirrored_flows))
        .collect();
    let val_set: Vec<(&Person, &PersonFlows)> = val.iter().zip(&val_flows).collect();

    // 2. Flow layer: sweep k and λ.
    let t = Instant::now();
    let sweep = flow_sweep(&train_set, &val_set, &targets, &opts.flow_ks);
    println!("{}", sweep.table());
    let (ki, li) = sweep.choose();
    let flow_k = sweep.ks[ki];
    println!("flow layer: k = {flow_k}");
    let mut flow_layers = Vec::new();
    let mut meta_flow_lambda = BTreeMap::new();
    let (mut flow_val, mut zero_val, mut train_pairs) =
        (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    for (e, &l) in targets.iter().zip(&li) {
        let (ata, atb, pairs) = flow_normal_equations(&train_set, e, flow_k);
        let layer = solve_flow(&ata, &atb, sweep.lambdas[l], flow_k);
        let split = flow_sse(&val_set, e, |x| layer.grid_flow(x));
        let zsplit = flow_sse(&val_set, e, |x| {
            Tensor::zeros([x.size()[0], 2, GRID, GRID], (Kind::Float, x.device()))
        });
        let per = |p: [(f64, f64); 2]| p.map(|(s, n)| s / n.max(1.0));
        flow_val.insert(e.clone(), per(split));
        zero_val.insert(e.clone(), per(zsplit));
        meta_flow_lambda.insert(e.clone(), sweep.lambdas[l]);
        train_pairs.insert(e.clone(), pairs);
        flow_layers.push(layer);
    }
    seconds.insert("flow_fit".into(), t.elapsed().as_secs_f64());

    // 3. Appearance layers on (warped source, target) pairs.
    let t = Instant::now();
    let mut app_layers = Vec::new();
    let (mut app_lambda, mut mse_id, mut mse_warp, mut mse) = (
        BTreeMap::new(),
        BTreeMap::new(),
        BTreeMap::new(),
        BTreeMap::new(),
    );
    println!(
        "{:<10} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "target", "lambda", "identity", "warped", "+appear.", "fit s"
    );
    for (e, flow_layer) in targets.iter().zip(&flow_layers) {
        let te = Instant::now();
        let tr = crate::augment::augment(
            warped_subjects(&train, e, flow_layer),
            opts.colour_augment,
            crate::augment::SEED,
        );
        let va = warped_subjects(&val, e, flow_layer);
        let (ata, atb) = appearance_normal_equations(&tr, e);
        let size = index.crop_size as i64;
        let mut fits: Vec<(f64, Layer, f64)> = APPEARANCE_LAMBDAS
            .iter()
            .map(|&l| {
                let layer = solve_towards_identity(&ata, &atb, l, size);
                let err = coarse_mse(&va, e, |x| layer.apply(x));
                (l, layer, err)
            })
            .collect();
        println!(
            "{e:<10} coarse validation MSE by lambda: {}",
            fits.iter()
                .map(|(l, _, m)| format!("{l:.0e} {m:.6}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let (lambda, layer, err) = fits.swap_remove(choose_towards_identity(&fits));
        let sw = coarse_mse(&va, e, |x| x.shallow_clone());
        let id = coarse_mse(&identity_subjects(&val, e), e, |x| x.shallow_clone());
        println!(
            "{e:<10} {lambda:>8.0e} {id:>9.6} {sw:>9.6} {err:>9.6} {:>9.1}",
            te.elapsed().as_secs_f64()
        );
        app_lambda.insert(e.clone(), lambda);
        mse_id.insert(e.clone(), id);
        mse_warp.insert(e.clone(), sw);
        mse.insert(e.clone(), err);
        app_layers.push(layer);
    }
    seconds.insert("appearance_fit".into(), t.elapsed().as_secs_f64());

    let stack = |f: &dyn Fn(&Layer) -> &Tensor| {
        Tensor::stack(&app_layers.iter().map(f).collect::<Vec<_>>(), 0)
    };
    Ok(RegFlow {
        flow_w: Tensor::stack(
            &flow_layers.iter().map(|l| l.w.shallow_clone()).collect::<Vec<_>>(),
            0,
        ),
        app_w: stack(&|l| &l.w),
        app_b: stack(&|l| &l.b),
        meta: RegFlowMeta {
            targets,
            grid: GRID,
            flow_k,
            flow_lambda: meta_flow_lambda,
            appearance_k: APPEARANCE_K,
            appearance_lambda: app_lambda,
            colour_augment: opts.colour_augment,
            flow_val_epe2: flow_val,
            zero_flow_val_epe2: zero_val,
            val_mse_identity: mse_id,
            val_mse_warp: mse_warp,
            val_mse: mse,
            train_pairs,
            flow_sweep: sweep,
            train_subjects: train.iter().map(|p| p.name.clone()).collect(),
            val_subjects: val.iter().map(|p| p.name.clone()).collect(),
            datasets,
            cache: cache
                .canonicalize()
                .unwrap_or(cache.into())
                .display()
                .to_string(),
            crop_size: index.crop_size,
            template: index.template.clone(),
            seconds,
        },
    })
}

/// Per performer, the sources of `target` warped by the flow layer as the "neutral"
/// inputs and the target crops as targets: the pairs of the appearance layer.
fn warped_subjects(people: &[Person], target: &str, flow: &FlowLayer) -> Vec<Subject> {
    people
        .iter()
        .filter_map(|p| {
            let src = p.sources_for(target)?;
            let tgt = p.crops.get(target)?;
            let warped = tch::no_grad(|| warp(&src, &flow.flow(&src)));
            Some(Subject {
                name: p.name.clone(),
                neutral: warped,
                targets: BTreeMap::from([(target.to_string(), tgt.shallow_clone())]),
            })
        })
        .collect()
}

/// The appearance layer's normal equations, summed over chunks of subjects: the
/// per-pixel design of every source at once would need tens of GB.
fn appearance_normal_equations(subjects: &[Subject], target: &str) -> (Tensor, Tensor) {
    let mut sum: Option<(Tensor, Tensor)> = None;
    for chunk in subjects.chunks(8) {
        let (ata, atb, _) = Features::new(chunk, APPEARANCE_K).normal_equations(chunk, target);
        sum = Some(match sum {
            None => (ata, atb),
            Some((a, b)) => (a + ata, b + atb),
        });
    }
    sum.expect("at least one training subject")
}

/// Per performer, the unwarped sources of `target` and its target crops (the pairs of
/// the do-nothing baseline).
fn identity_subjects(people: &[Person], target: &str) -> Vec<Subject> {
    people
        .iter()
        .filter_map(|p| {
            Some(Subject {
                name: p.name.clone(),
                neutral: p.sources_for(target)?,
                targets: BTreeMap::from([(target.to_string(), p.crops.get(target)?.shallow_clone())]),
            })
        })
        .collect()
}

/// Pixels per side of the blocks `coarse_mse` averages over.
const COARSE: i64 = 4;

/// MSE over every (source, target) pair after averaging 4x4 blocks of both: the
/// appearance layer is scored on the change it can predict (shading, teeth, the
/// mouth's interior), not on the fine detail of another photo, which no regression
/// can predict and whose plain MSE rewards blurring the input's own detail away.
fn coarse_mse(subjects: &[Subject], target: &str, predict: impl Fn(&Tensor) -> Tensor) -> f64 {
    let coarse = |x: &Tensor| {
        x.avg_pool2d([COARSE, COARSE], [COARSE, COARSE], [0, 0], false, true, None::<i64>)
    };
    let (sse, n) = pair_sse_with(subjects, target, |x| coarse(&predict(x)), coarse);
    sse / n.max(1.0)
}

fn pair_sse_with(
    subjects: &[Subject],
    target: &str,
    predict: impl Fn(&Tensor) -> Tensor,
    prepare_target: impl Fn(&Tensor) -> Tensor,
) -> (f64, f64) {
    let (mut sse, mut count) = (0.0, 0.0);
    for subj in subjects {
        let Some(t) = subj.targets.get(target) else {
            continue;
        };
        let pred = predict(&subj.neutral).to_kind(Kind::Double);
        let t = prepare_target(t).to_kind(Kind::Double);
        let diff = pred.unsqueeze(1) - t.unsqueeze(0);
        sse += diff.square().sum(Kind::Double).double_value(&[]);
        count += diff.numel() as f64;
    }
    (sse, count)
}

/// How much worse (relative) than the best λ's coarse validation error the chosen
/// appearance layer may be.
pub const APPEARANCE_TOLERANCE: f64 = 0.05;

/// The largest λ (the layer closest to the identity) whose coarse validation error is
/// within [`APPEARANCE_TOLERANCE`] of the best. The validation performers come from
/// the same studio and population as the training ones, so the best-fitting λ there
/// over-trusts the training faces' mean: on other faces that mean pulls the face
/// towards another person (seen on the London set). Keeping close to the identity at a
/// small cost in fit keeps the person.
fn choose_towards_identity(fits: &[(f64, Layer, f64)]) -> usize {
    let best = fits.iter().map(|f| f.2).fold(f64::INFINITY, f64::min);
    (0..fits.len())
        .filter(|&i| fits[i].2 <= best * (1.0 + APPEARANCE_TOLERANCE))
        .max_by(|&a, &b| fits[a].0.total_cmp(&fits[b].0))
        .unwrap_or(0)
}

/// Ridge regression shrunk towards the identity (centre tap 1, other taps 0) instead
/// of towards zero: `(AᵀA + λD) w = Aᵀt + λ D w₀`. A large λ leaves the warped face as
/// it is plus the mean change (the bias is free); a small one fits the pairs.
fn solve_towards_identity(ata: &Tensor, atb: &Tensor, lambda: f64, size: i64) -> Layer {
    let kk = (APPEARANCE_K * APPEARANCE_K) as i64;
    let mut prior = vec![0.0; kk as usize + 1];
    prior[(kk / 2) as usize] = lambda;
    let shifted_atb = atb + Tensor::from_slice(&prior).view([1, -1, 1]);
    solve(ata, &shifted_atb, lambda, APPEARANCE_K, size)
}

fn flow_sweep(
    train: &[(&Person, &PersonFlows)],
    val: &[(&Person, &PersonFlows)],
    targets: &[String],
    ks: &[usize],
) -> FlowSweep {
    let mut epe2 = Vec::new();
    for &k in ks {
        let per_target = targets
            .iter()
            .map(|e| {
                let (ata, atb, _) = flow_normal_equations(train, e, k);
                let lambdas: &[f64] = if k == 0 { &[0.0] } else { &FLOW_LAMBDAS };
                let row: Vec<f64> = lambdas
                    .iter()
                    .map(|&l| {
                        let layer = solve_flow(&ata, &atb, l, k);
                        mse_of(flow_sse(val, e, |x| layer.grid_flow(x)))
                    })
                    .collect();
                // k = 0 has no λ: repeat its one value across the grid's columns.
                if k == 0 {
                    vec![row[0]; FLOW_LAMBDAS.len()]
                } else {
                    row
                }
            })
            .collect();
        epe2.push(per_target);
    }
    let zero = targets
        .iter()
        .map(|e| {
            mse_of(flow_sse(val, e, |x| {
                Tensor::zeros([x.size()[0], 2, GRID, GRID], (Kind::Float, x.device()))
            }))
        })
        .collect();
    FlowSweep {
        ks: ks.to_vec(),
        lambdas: FLOW_LAMBDAS.to_vec(),
        targets: targets.to_vec(),
        epe2,
        zero,
    }
}

impl FlowSweep {
    /// The k with the lowest mean (over targets) of the per-target best error, and the
    /// best λ index of each target for it.
    pub fn choose(&self) -> (usize, Vec<usize>) {
        let best = |ki: usize| -> (Vec<usize>, f64) {
            let idx: Vec<usize> = self.epe2[ki]
                .iter()
                .map(|row| {
                    (0..row.len())
                        .min_by(|&a, &b| row[a].total_cmp(&row[b]))
                        .unwrap_or(0)
                })
                .collect();
            let mean = idx
                .iter()
                .zip(&self.epe2[ki])
                .map(|(&i, r)| r[i])
                .sum::<f64>()
                / idx.len().max(1) as f64;
            (idx, mean)
        };
        let ki = (0..self.ks.len())
            .min_by(|&a, &b| best(a).1.total_cmp(&best(b).1))
            .unwrap_or(0);
        (ki, best(ki).0)
    }

    /// Rows (k, λ), columns targets: validation squared endpoint error, px² per cell.
    pub fn table(&self) -> String {
        let mut out = format!(
            "flow layer, validation squared endpoint error (px² per {0}x{0} cell)\n{1:>3} {2:>8}",
            128 / GRID,
            "k",
            "lambda"
        );
        for e in &self.targets {
            out += &format!(" {:>9}", &e[..e.len().min(9)]);
        }
        out += "\nzero flow   ";
        for z in &self.zero {
            out += &format!(" {z:>9.3}");
        }
        out += "\n";
        for (ki, k) in self.ks.iter().enumerate() {
            for (li, l) in self.lambdas.iter().enumerate() {
                if *k == 0 && li > 0 {
                    continue;
                }
                out += &format!("{k:>3} {:>8}", if *k == 0 { "mean".into() } else { format!("{l:.0e}") });
                for row in &self.epe2[ki] {
                    out += &format!(" {:>9.3}", row[li]);
                }
                out += "\n";
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A performer whose crops are flat grey faces of different brightness per
    /// expression, with the given flows to every target.
    fn person(name: &str, brightness: &[(&str, f64)]) -> Person {
        Person {
            name: name.into(),
            crops: brightness
                .iter()
                .map(|(e, b)| {
                    let t = Tensor::full([1, 3, 128, 128], *b, (Kind::Float, tch::Device::Cpu));
                    (e.to_string(), t)
                })
                .collect(),
        }
    }

    /// Flows [Ns,Nt,2,G,G] for `target` from a function of the source's brightness.
    fn flows_for(p: &Person, target: &str, f: impl Fn(f64) -> (f64, f64)) -> Tensor {
        let src = p.sources_for(target).unwrap();
        let rows: Vec<Tensor> = (0..src.size()[0])
            .map(|i| {
                let b = src.get(i).mean(Kind::Double).double_value(&[]);
                let (dx, dy) = f(b);
                Tensor::from_slice(&[dx as f32, dy as f32])
                    .view([1, 2, 1, 1])
                    .expand([1, 2, GRID, GRID], false)
            })
            .collect();
        Tensor::stack(&rows, 0)
    }

    #[test]
    fn mean_flow_is_the_pair_average_and_k1_recovers_a_linear_law() {
        let people: Vec<Person> = [0.2, 0.5, 0.7]
            .iter()
            .map(|&b| person("p", &[("neutral", b), ("happy", b + 0.1), ("sad", b - 0.1)]))
            .collect();
        // Flow to sad depends linearly on the source's luma: dx = 4 l - 1, dy = -2 l.
        let law = |l: f64| (4.0 * l - 1.0, -2.0 * l);
        let flows: Vec<PersonFlows> = people
            .iter()
            .map(|p| PersonFlows::from([("sad".to_string(), flows_for(p, "sad", law))]))
            .collect();
        let set: Vec<(&Person, &PersonFlows)> = people.iter().zip(&flows).collect();

        let (ata, atb, pairs) = flow_normal_equations(&set, "sad", 0);
        assert_eq!(pairs, 6);
        let mean = solve_flow(&ata, &atb, 0.0, 0);
        // Independent: the average of law() over every source's luma.
        let lumas: Vec<f64> = people
            .iter()
            .flat_map(|p| {
                let s = p.sources_for("sad").unwrap();
                (0..s.size()[0])
                    .map(|i| s.get(i).mean(Kind::Double).double_value(&[]))
                    .collect::<Vec<_>>()
            })
            .collect();
        let expect_dx = lumas.iter().map(|&l| law(l).0).sum::<f64>() / lumas.len() as f64;
        let got = mean.grid_flow(&people[0].crops["neutral"]);
        assert!((got.double_value(&[0, 0, 5, 5]) - expect_dx).abs() < 1e-4);

        let (ata, atb, _) = flow_normal_equations(&set, "sad", 1);
        let lin = solve_flow(&ata, &atb, 1e-9, 1);
        for l in [0.3, 0.6] {
            let face = Tensor::full([1, 3, 128, 128], l, (Kind::Float, tch::Device::Cpu));
            let g = lin.grid_flow(&face);
            let (dx, dy) = law(l);
            assert!((g.double_value(&[0, 0, 10, 10]) - dx).abs() < 1e-3);
            assert!((g.double_value(&[0, 1, 10, 10]) - dy).abs() < 1e-3);
        }
        // Validation error of the exact law is zero; of zero flow, the mean square.
        let [a, b] = flow_sse(&set, "sad", |x| lin.grid_flow(x));
        assert!((a.0 + b.0) / (a.1 + b.1) < 1e-6);
    }

    #[test]
    fn mirrored_flows_flip_and_negate_dx() {
        let f = Tensor::zeros([1, 1, 2, GRID, GRID], (Kind::Float, tch::Device::Cpu));
        let _ = f.get(0).get(0).get(0).get(0).get(0).fill_(3.0); // dx at the left edge
        let _ = f.get(0).get(0).get(1).get(0).get(0).fill_(2.0); // dy at the left edge
        let m = mirror_flows(&PersonFlows::from([("sad".to_string(), f)]));
        let m = &m["sad"];
        assert_eq!(m.double_value(&[0, 0, 0, 0, GRID - 1]), -3.0);
        assert_eq!(m.double_value(&[0, 0, 1, 0, GRID - 1]), 2.0);
        assert_eq!(m.double_value(&[0, 0, 0, 0, 0]), 0.0);
    }

    #[test]
    fn grid_pooling_averages_cells() {
        let f = Tensor::arange(128, (Kind::Float, tch::Device::Cpu))
            .view([1, 1, 128])
            .expand([2, 128, 128], false)
            .contiguous();
        let g = to_grid(&f);
        assert_eq!(g.size(), vec![2, GRID, GRID]);
        // Cell 0 averages columns 0..4: 1.5.
        assert!((g.double_value(&[0, 7, 0]) - 1.5).abs() < 1e-6);
        assert!((g.double_value(&[1, 0, 31]) - 125.5).abs() < 1e-6);
    }
}
