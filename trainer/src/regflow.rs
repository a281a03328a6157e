//! RegFlow: geometry-first expression synthesis. Two closed-form layers per target
//! expression, both fitted by batched ridge regression like MR:
//!
//! 1. **Flow layer.** The backward flow [2,S,S] that moves the input face's own pixels
//!    towards the target expression, regressed per cell of a G x G grid (4 px cells)
//!    on the k x k neighbourhood of the input's luma at that grid, plus a bias. The
//!    bias alone (k = 0) is the mean flow; the neighbourhood lets the flow depend on
//!    the face it moves. Targets are the DIS flows ([`crate::flow`]) between every crop
//!    of a performer and every crop of the same performer with the target expression,
//!    from ANY other expression (neutral included), mirrored too, with their
//!    similarity-transform part removed ([`RigidPart`]: alignment noise, not
//!    expression). The smallest k within [`FLOW_K_TOLERANCE`] of the best validation
//!    error is kept.
//!    Smoothness comes from three places: DIS's variational refinement smooths each
//!    training flow; the fit is on 4 px cells (area-averaged flow), and bilinear
//!    upsampling makes the field continuous; the ridge penalty shrinks every cell's
//!    weights towards the mean flow, which is itself an average of smooth fields.
//! 2. **Appearance layer.** MR (k = 3) fitted on (flow-warped source, target) pairs,
//!    so it only adds what moving cannot: teeth, the mouth interior, shading. Its ridge
//!    penalty pulls towards the identity (not towards zero, which is a mean face), and
//!    λ is chosen on the 4x4-block MSE: within a tolerance of the best on the
//!    validation performers and, with an out-of-distribution cache, of the best on
//!    other people (`ood_appearance_lambda`), so the input's own detail, colour and
//!    identity stay.
//!
//! Targets are the six expressions plus `neutral` (any expression to neutral).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::data::{load_subjects, Index, Subject};
use crate::flow::{luma, warp, FlowEstimator};
use crate::regression::{shifted, Features, Layer};

/// Flow grid cells per side (S / GRID pixels per cell).
pub const GRID: i64 = 32;
/// Receptive fields (grid cells per side) tried for the flow layer; 0 = mean flow.
pub const FLOW_KS: [usize; 4] = [0, 1, 3, 5];
/// A larger flow receptive field must beat a smaller one by more than this (relative
/// validation error) to be chosen. Luma-dependent flows fit the validation performers a
/// little better (k = 5: 4 % lower error than the mean flow) but bend the brows and
/// lips of faces unlike the training ones (seen on the London set): they read the
/// training performers' brow and lip shapes into other faces.
pub const FLOW_K_TOLERANCE: f64 = 0.05;
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

/// The similarity-transform part of training flows, fitted by least squares over the
/// face mask and removed. Two photos of one person are aligned from four detected
/// points, and an expression moves one of them (the mouth opens, so its centre drops):
/// the crops then differ by a small zoom, shift or tilt besides the expression. Left
/// in, the mean flow would zoom and shift every face it is applied to. What remains is
/// the non-rigid motion: lips, cheeks, brows relative to the rest of the face.
pub struct RigidPart {
    /// [4, 2G²]: maps a flattened grid flow to its similarity parameters.
    project: Tensor,
    /// [2G², 4]: the similarity basis (dx = a x - b y + tx, dy = b x + a y + ty).
    basis: Tensor,
}

impl RigidPart {
    pub fn new(crop_size: i64) -> Self {
        let g = GRID;
        let cell = crop_size as f64 / g as f64;
        // Cell centres in crop pixels, relative to the crop centre.
        let c = (Tensor::arange(g, (Kind::Double, tch::Device::Cpu)) + 0.5) * cell
            - crop_size as f64 / 2.0;
        let x = c.view([1, g]).expand([g, g], false).reshape([-1]);
        let y = c.view([g, 1]).expand([g, g], false).reshape([-1]);
        let one = Tensor::ones([g * g], (Kind::Double, tch::Device::Cpu));
        let zero = Tensor::zeros([g * g], (Kind::Double, tch::Device::Cpu));
        let dx_rows = Tensor::stack(&[&x, &(-&y), &one, &zero], 1);
        let dy_rows = Tensor::stack(&[&y, &x, &zero, &one], 1);
        let basis = Tensor::cat(&[dx_rows, dy_rows], 0); // [2G², 4]
        let mask = Tensor::from_slice(&reggan::composite::face_mask(crop_size as usize))
            .to_kind(Kind::Double)
            .view([1, 1, crop_size, crop_size])
            .avg_pool2d(
                [cell as i64, cell as i64],
                [cell as i64, cell as i64],
                [0, 0],
                false,
                true,
                None::<i64>,
            )
            .reshape([-1]);
        let w = Tensor::cat(&[&mask, &mask], 0); // [2G²]
        let bw = &basis * w.unsqueeze(1);
        let project = bw
            .transpose(0, 1)
            .matmul(&basis)
            .inverse()
            .matmul(&bw.transpose(0, 1));
        RigidPart { project, basis }
    }

    /// Flows [..., 2, G, G] without their similarity part.
    pub fn remove_from(&self, flow: &Tensor) -> Tensor {
        let shape = flow.size();
        let flat = flow.to_kind(Kind::Double).reshape([-1, 2 * GRID * GRID]); // [N, 2G²]
        let params = flat.matmul(&self.project.transpose(0, 1)); // [N, 4]
        let rigid = params.matmul(&self.basis.transpose(0, 1)); // [N, 2G²]
        (flat - rigid)
            .reshape(shape.as_slice())
            .to_kind(Kind::Float)
    }

    fn remove(&self, flows: &PersonFlows) -> PersonFlows {
        flows
            .iter()
            .map(|(e, f)| (e.clone(), self.remove_from(f)))
            .collect()
    }
}

/// DIS flows of every (source, target) pair of a performer, cached in
/// `cache/flows/<performer>.safetensors` (computing them takes a minute or two).
pub fn person_flows(cache: &Path, person: &Person, est: &mut FlowEstimator) -> Result<PersonFlows> {
    let file = cache.join("flows").join(format!(
        "{}-g{GRID}.safetensors",
        person.name.replace('/', "_")
    ));
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

/// Each source's weight in one performer's pairs towards `target` (`labels`: the
/// sources' expressions): 1, or with `neutral_share` the neutral sources together
/// carry that share of the performer's weight and the other expressions the rest
/// (the total stays the number of sources).
fn source_weights(labels: &[String], target: &str, neutral_share: Option<f64>) -> Vec<f64> {
    let n = labels.len() as f64;
    let neutral = labels.iter().filter(|l| l.as_str() == "neutral").count() as f64;
    match neutral_share {
        Some(share) if target != "neutral" && neutral > 0.0 && neutral < n => labels
            .iter()
            .map(|l| {
                if l == "neutral" {
                    n * share / neutral
                } else {
                    n * (1.0 - share) / (n - neutral)
                }
            })
            .collect(),
        _ => vec![1.0; labels.len()],
    }
}

/// Normal equations of the flow layer for one target over people and their flows,
/// each source weighted by [`source_weights`]: AᵀA [G²,K,K], Aᵀt [G²,K,2], and the
/// number of pairs.
fn flow_normal_equations(
    people: &[(&Person, &PersonFlows)],
    target: &str,
    k: usize,
    neutral_share: Option<f64>,
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
        let w = Tensor::from_slice(&source_weights(
            &person.source_labels(target),
            target,
            neutral_share,
        ));
        let weighted = &feats * w.view([1, 1, -1]);
        ata += (&weighted * nt as f64).bmm(&feats.transpose(1, 2));
        atb += weighted.bmm(&fsum);
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
    /// The appearance λ chosen on the out-of-distribution cache, if one was given.
    #[serde(default)]
    pub ood_lambda: Option<f64>,
    /// λ of the appearance layer inside the mouth region (chosen out of distribution
    /// too); outside it, `appearance_lambda`. None: one λ everywhere.
    #[serde(default)]
    pub appearance_mouth_lambda: Option<f64>,
    /// The flow fit's weight on neutral sources (None: every pair alike).
    #[serde(default)]
    pub neutral_share: Option<f64>,
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
    /// The weights as float32 (they may be stored as float16 for transport).
    pub fn to_float(self) -> Self {
        RegFlow {
            flow_w: self.flow_w.to_kind(Kind::Float),
            app_w: self.app_w.to_kind(Kind::Float),
            app_b: self.app_b.to_kind(Kind::Float),
            meta: self.meta,
        }
    }

    /// A copy with float16 weights (half the size; `to_float` restores the kind).
    pub fn to_half(&self) -> Self {
        RegFlow {
            flow_w: self.flow_w.to_kind(Kind::Half),
            app_w: self.app_w.to_kind(Kind::Half),
            app_b: self.app_b.to_kind(Kind::Half),
            meta: self.meta.clone(),
        }
    }
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
    /// A `prepare` cache of other people (London): its training performers' neutral ->
    /// happy pairs choose the appearance layer's λ out of distribution.
    pub ood_cache: Option<PathBuf>,
    pub flow_ks: Vec<usize>,
    /// Recoloured copies of each training performer for the appearance layer
    /// ([`crate::augment`]); 0 = none.
    pub colour_augment: usize,
    /// Fit the appearance layer (false: it is the identity, the flow does everything).
    pub appearance: bool,
    /// λ of the appearance layer inside the mouth region, fixed (None: chosen out of
    /// distribution with `ood_cache`, else one λ everywhere).
    pub mouth_lambda: Option<f64>,
    /// The share of the flow fit's weight on neutral sources, per performer and target
    /// (None: every pair alike, so neutral is one source expression of six).
    pub neutral_share: Option<f64>,
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
    let datasets = opts
        .datasets
        .clone()
        .unwrap_or_else(|| vec!["tfeid".into()]);
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
    let rigid = RigidPart::new(index.crop_size as i64);
    let train_flows: Vec<PersonFlows> = flows_of(&train)?.iter().map(|f| rigid.remove(f)).collect();
    let val_flows: Vec<PersonFlows> = flows_of(&val)?.iter().map(|f| rigid.remove(f)).collect();
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
    let sweep = flow_sweep(
        &train_set,
        &val_set,
        &targets,
        &opts.flow_ks,
        opts.neutral_share,
    );
    println!("{}", sweep.table());
    let (ki, li) = sweep.choose();
    let flow_k = sweep.ks[ki];
    println!("flow layer: k = {flow_k}");
    let mut flow_layers = Vec::new();
    let mut meta_flow_lambda = BTreeMap::new();
    let (mut flow_val, mut zero_val, mut train_pairs) =
        (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    for (e, &l) in targets.iter().zip(&li) {
        let (ata, atb, pairs) = flow_normal_equations(&train_set, e, flow_k, opts.neutral_share);
        let layer = solve_flow(&ata, &atb, sweep.lambdas[l], flow_k);
        let split = flow_sse(&val_set, e, |x| layer.grid_flow(x));
        let zsplit = flow_sse(&val_set, e, |x| {
            Tensor::zeros([x.size()[0], 2, GRID, GRID], (Kind::Float, x.device()))
        });
        let per = |p: [(f64, f64); 2]| p.map(|(s, n)| s / n.max(1.0));
        flow_val.insert(e.clone(), per(split));
        zero_val.insert(e.clone(), per(zsplit));
        // The mean flow (k = 0) has no penalty.
        let lambda = if flow_k == 0 { 0.0 } else { sweep.lambdas[l] };
        meta_flow_lambda.insert(e.clone(), lambda);
        train_pairs.insert(e.clone(), pairs);
        flow_layers.push(layer);
    }
    seconds.insert("flow_fit".into(), t.elapsed().as_secs_f64());

    // 3. Appearance layers on (warped source, target) pairs. λ: the largest within a
    // tolerance of the best on the validation performers, and at least the best on
    // other people's pairs when an out-of-distribution cache is given.
    let (ood_lambda, mouth_lambda) = match &opts.ood_cache {
        Some(c) => {
            let (face, mouth) = ood_appearance_lambda(
                c,
                &train,
                &flow_layers[targets.iter().position(|t| t == "happy").expect("happy")],
                opts.colour_augment,
            )?;
            (Some(face), mouth)
        }
        None => (None, None),
    };
    let mouth_lambda = opts.mouth_lambda.or(mouth_lambda);
    let mouth = mouth_weights(&index.template);
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
        let (lambda, layer, err) = if opts.appearance {
            let i = choose_towards_identity(&fits);
            // Never closer to the training faces than the out-of-distribution choice.
            let i = match ood_lambda {
                Some(l) => (0..fits.len())
                    .filter(|&j| fits[j].0 >= l)
                    .min_by(|&a, &b| fits[a].0.total_cmp(&fits[b].0))
                    .map_or(i, |j| j.max(i)),
                None => i,
            };
            let (lambda, layer, err) = fits.swap_remove(i);
            match mouth_lambda.filter(|&m| m < lambda) {
                // The face keeps its λ; the mouth, where the warp cannot paint teeth
                // or a mouth's interior, takes the smaller one.
                Some(m) => {
                    let map = lambda_map(lambda, m, &mouth);
                    let layer = solve_towards_identity_map(&ata, &atb, &map, size);
                    let err = coarse_mse(&va, e, |x| layer.apply(x));
                    (lambda, layer, err)
                }
                None => (lambda, layer, err),
            }
        } else {
            let layer = identity_layer(size);
            let err = coarse_mse(&va, e, |x| layer.apply(x));
            (f64::INFINITY, layer, err)
        };
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
            &flow_layers
                .iter()
                .map(|l| l.w.shallow_clone())
                .collect::<Vec<_>>(),
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
            ood_lambda,
            appearance_mouth_lambda: mouth_lambda.filter(|_| opts.appearance),
            neutral_share: opts.neutral_share,
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
                targets: BTreeMap::from([(
                    target.to_string(),
                    p.crops.get(target)?.shallow_clone(),
                )]),
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
    let (sse, n) = pair_sse_with(subjects, target, |x| coarse(&predict(x)), coarse);
    sse / n.max(1.0)
}

/// Means of COARSE x COARSE blocks.
fn coarse(x: &Tensor) -> Tensor {
    x.avg_pool2d(
        [COARSE, COARSE],
        [COARSE, COARSE],
        [0, 0],
        false,
        true,
        None::<i64>,
    )
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

/// How much worse (relative) than the best out-of-distribution fit the chosen
/// appearance λ may be: the smallest λ (the most appearance change) within this of the
/// best. On London the error falls all the way to the identity (λ = 1e5), which paints
/// no teeth at all; 1e3 is within 11 % of it and keeps part of the change.
pub const APPEARANCE_OOD_TOLERANCE: f64 = 0.15;

/// The appearance λ that fits other people (nearly) best: the happy layer is fitted on the
/// training performers for every λ of the grid and scored (4x4-block MSE) on the
/// training subjects of an out-of-distribution cache (London: another population,
/// studio and camera), neutral -> smiling. Validation performers of the training data
/// set share its studio and population, so they cannot tell a change that transfers
/// from the training performers' mean (their light, their mouths).
fn ood_appearance_lambda(
    cache: &Path,
    train: &[Person],
    happy_flow: &FlowLayer,
    colour_augment: usize,
) -> Result<(f64, Option<f64>)> {
    let index = Index::read(cache)?;
    let datasets: Vec<String> = index
        .entries
        .iter()
        .map(|e| e.dataset.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let people = load_people(cache, &index, &index.train_subjects, &datasets)?;
    // London has neutral and smiling photos: the sources are the neutral ones.
    let dev = warped_subjects(&people, "happy", happy_flow);
    let tr = crate::augment::augment(
        warped_subjects(train, "happy", happy_flow),
        colour_augment,
        crate::augment::SEED,
    );
    let (ata, atb) = appearance_normal_equations(&tr, "happy");
    let size = index.crop_size as i64;
    let scored: Vec<(f64, f64)> = APPEARANCE_LAMBDAS
        .iter()
        .map(|&l| {
            let layer = solve_towards_identity(&ata, &atb, l, size);
            (l, coarse_mse(&dev, "happy", |x| layer.apply(x)))
        })
        .collect();
    println!(
        "appearance, happy, out of distribution ({} people of {}): coarse MSE by lambda: {}",
        dev.len(),
        cache.display(),
        lambda_table(&scored)
    );
    let chosen = smallest_lambda_within_tolerance(&scored);

    // The mouth alone: the face keeps `chosen`; smaller λ inside the mouth region are
    // scored on the mouth region's error, and chosen by the same rule.
    let mouth = mouth_weights(&index.template);
    let in_mouth: Vec<(f64, f64)> = APPEARANCE_LAMBDAS
        .iter()
        .filter(|&&l| l <= chosen)
        .map(|&l| {
            let layer =
                solve_towards_identity_map(&ata, &atb, &lambda_map(chosen, l, &mouth), size);
            (l, coarse_mse_in(&dev, "happy", |x| layer.apply(x), &mouth))
        })
        .collect();
    println!(
        "appearance, happy, out of distribution, mouth region (face lambda {chosen:.0e}): coarse MSE by mouth lambda: {}",
        lambda_table(&in_mouth)
    );
    let mouth_lambda = smallest_lambda_within_tolerance(&in_mouth);
    Ok((chosen, (mouth_lambda < chosen).then_some(mouth_lambda)))
}

/// The smallest λ (the most appearance change) whose error is within
/// [`APPEARANCE_OOD_TOLERANCE`] of the best of `scored` (λ, error).
fn smallest_lambda_within_tolerance(scored: &[(f64, f64)]) -> f64 {
    let best = scored.iter().map(|s| s.1).fold(f64::INFINITY, f64::min);
    scored
        .iter()
        .filter(|s| s.1 <= best * (1.0 + APPEARANCE_OOD_TOLERANCE))
        .map(|s| s.0)
        .fold(f64::INFINITY, f64::min)
}

/// "λ error, λ error, ..." for the logs.
fn lambda_table(scored: &[(f64, f64)]) -> String {
    scored
        .iter()
        .map(|(l, m)| format!("{l:.0e} {m:.6}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The compositor's mouth region ([`reggan::composite::mouth_region`]) as [S,S]: where
/// the model's change is carried whole is where the appearance layer may paint.
fn mouth_weights(template: &reggan::Template) -> Tensor {
    let s = template.size as i64;
    Tensor::from_slice(&reggan::composite::mouth_region(template)).view([s, s])
}

/// Per-pixel λ [S,S]: `face` outside the mouth, `mouth` inside, log-interpolated over
/// the region's soft edge (no seam in the change).
fn lambda_map(face: f64, mouth: f64, region: &Tensor) -> Tensor {
    let (lf, lm) = (face.ln(), mouth.ln());
    (region.to_kind(Kind::Double) * (lm - lf) + lf).exp()
}

/// Coarse MSE weighted by `region` [S,S]: the error where the region is.
fn coarse_mse_in(
    subjects: &[Subject],
    target: &str,
    predict: impl Fn(&Tensor) -> Tensor,
    region: &Tensor,
) -> f64 {
    let w = coarse(&region.to_kind(Kind::Float).unsqueeze(0).unsqueeze(0)).sqrt();
    let share = w.square().mean(Kind::Double).double_value(&[]).max(1e-12);
    let (sse, n) = pair_sse_with(
        subjects,
        target,
        |x| coarse(&predict(x)) * &w,
        |t| coarse(t) * &w,
    );
    sse / n.max(1.0) / share
}

/// The appearance layer that changes nothing (`--flow-only`).
fn identity_layer(size: i64) -> Layer {
    let kk = (APPEARANCE_K * APPEARANCE_K) as i64;
    let w = Tensor::zeros([3, kk, size, size], (Kind::Float, tch::Device::Cpu));
    let _ = w.narrow(1, kk / 2, 1).fill_(1.0);
    Layer {
        k: APPEARANCE_K,
        w,
        b: Tensor::zeros([3, size, size], (Kind::Float, tch::Device::Cpu)),
    }
}

/// Ridge regression shrunk towards the identity (centre tap 1, other taps and the bias
/// 0) instead of towards zero: `(AᵀA + λI) w = Aᵀt + λ w₀`. A large λ leaves the
/// warped face as it is; a small one fits the pairs, bias included: the training
/// performers' mean change (their studio's light, a mean mouth), which on other faces
/// is a stranger's. The bias is shrunk too, so only a change the pairs support
/// strongly is painted.
fn solve_towards_identity(ata: &Tensor, atb: &Tensor, lambda: f64, size: i64) -> Layer {
    let map = Tensor::full([size, size], lambda, (Kind::Double, ata.device()));
    solve_towards_identity_map(ata, atb, &map, size)
}

/// [`solve_towards_identity`] with a λ per pixel ([S,S], shared by the channels): each
/// pixel's system is its own, so each may be shrunk by its own amount.
fn solve_towards_identity_map(ata: &Tensor, atb: &Tensor, lambda: &Tensor, size: i64) -> Layer {
    let kk = (APPEARANCE_K * APPEARANCE_K) as i64;
    // Rows are channel-major, then y, x: the map repeats for each channel.
    let lam = lambda
        .to_kind(Kind::Double)
        .to_device(ata.device())
        .reshape([1, -1])
        .repeat([3, 1])
        .reshape([-1, 1, 1]);
    let eye = Tensor::eye(kk + 1, (Kind::Double, ata.device())).unsqueeze(0) * &lam;
    let centre = Tensor::zeros([1, kk + 1, 1], (Kind::Double, ata.device()));
    let _ = centre.narrow(1, kk / 2, 1).fill_(1.0);
    let rhs = atb + centre * &lam;
    let sol = Tensor::linalg_solve(&(ata + eye), &rhs, true).squeeze_dim(2);
    let sol = sol.view([3, size, size, kk + 1]).permute([0, 3, 1, 2]);
    Layer {
        k: APPEARANCE_K,
        w: sol.narrow(1, 0, kk).to_kind(Kind::Float).contiguous(),
        b: sol.select(1, kk).to_kind(Kind::Float).contiguous(),
    }
}

fn flow_sweep(
    train: &[(&Person, &PersonFlows)],
    val: &[(&Person, &PersonFlows)],
    targets: &[String],
    ks: &[usize],
    neutral_share: Option<f64>,
) -> FlowSweep {
    let mut epe2 = Vec::new();
    for &k in ks {
        let per_target = targets
            .iter()
            .map(|e| {
                let (ata, atb, _) = flow_normal_equations(train, e, k, neutral_share);
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
    /// The smallest k whose mean (over targets) of the per-target best error is within
    /// [`FLOW_K_TOLERANCE`] of the lowest, and the best λ index of each target for it.
    pub fn choose(&self) -> (usize, Vec<usize>) {
        // The same rule as MR's k: the regression sweep's chooser on this table.
        crate::regression::Sweep {
            ks: self.ks.clone(),
            lambdas: self.lambdas.clone(),
            expressions: self.targets.clone(),
            mse: self.epe2.clone(),
        }
        .choose(FLOW_K_TOLERANCE)
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
                out += &format!(
                    "{k:>3} {:>8}",
                    if *k == 0 {
                        "mean".into()
                    } else {
                        format!("{l:.0e}")
                    }
                );
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

    /// Flow to sad depends linearly on the source's luma: dx = 4 l - 1, dy = -2 l.
    fn linear_law(l: f64) -> (f64, f64) {
        (4.0 * l - 1.0, -2.0 * l)
    }

    /// Three performers (neutral at luma b, happy at b + `happy_offset`, sad at b - 0.1)
    /// and their flows to sad by [`linear_law`].
    fn people_with_linear_flows(happy_offset: f64) -> (Vec<Person>, Vec<PersonFlows>) {
        let people: Vec<Person> = [0.2, 0.5, 0.7]
            .iter()
            .map(|&b| {
                person(
                    "p",
                    &[
                        ("neutral", b),
                        ("happy", b + happy_offset),
                        ("sad", b - 0.1),
                    ],
                )
            })
            .collect();
        let flows = people
            .iter()
            .map(|p| PersonFlows::from([("sad".to_string(), flows_for(p, "sad", linear_law))]))
            .collect();
        (people, flows)
    }

    #[test]
    fn mean_flow_is_the_pair_average_and_k1_recovers_a_linear_law() {
        let (people, flows) = people_with_linear_flows(0.1);
        let law = linear_law;
        let set: Vec<(&Person, &PersonFlows)> = people.iter().zip(&flows).collect();

        let (ata, atb, pairs) = flow_normal_equations(&set, "sad", 0, None);
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

        let (ata, atb, _) = flow_normal_equations(&set, "sad", 1, None);
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
    fn neutral_share_sets_the_neutral_sources_weight_in_the_mean_flow() {
        let (people, flows) = people_with_linear_flows(0.2);
        let law = linear_law;
        let set: Vec<(&Person, &PersonFlows)> = people.iter().zip(&flows).collect();
        let luma = |p: &Person, e: &str| p.crops[e].mean(Kind::Double).double_value(&[]);
        for share in [1.0, 0.5, 0.0] {
            let (ata, atb, _) = flow_normal_equations(&set, "sad", 0, Some(share));
            let mean = solve_flow(&ata, &atb, 0.0, 0);
            // Independent: per performer, `share` of law() at the neutral crop and the
            // rest at the other source (happy), averaged over performers.
            let expect_dx = people
                .iter()
                .map(|p| {
                    share * law(luma(p, "neutral")).0 + (1.0 - share) * law(luma(p, "happy")).0
                })
                .sum::<f64>()
                / people.len() as f64;
            let got = mean.grid_flow(&people[0].crops["neutral"]);
            assert!(
                (got.double_value(&[0, 0, 5, 5]) - expect_dx).abs() < 1e-4,
                "share {share}: {} vs {expect_dx}",
                got.double_value(&[0, 0, 5, 5])
            );
        }
        // The neutral target has no neutral source to weight: every pair alike.
        assert_eq!(
            source_weights(&["happy".into(), "sad".into()], "neutral", Some(0.9)),
            vec![1.0, 1.0]
        );
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
    fn rigid_part_removes_a_similarity_and_keeps_a_local_bump() {
        let rigid = RigidPart::new(128);
        let cell = 128.0 / GRID as f64;
        let mut v = vec![0f32; (2 * GRID * GRID) as usize];
        let g = GRID as usize;
        for gy in 0..g {
            for gx in 0..g {
                let (x, y) = (
                    (gx as f64 + 0.5) * cell - 64.0,
                    (gy as f64 + 0.5) * cell - 64.0,
                );
                // 3 % zoom, 2 degrees of rotation, a shift: a pure similarity.
                let (a, b, tx, ty) = (0.03, 0.035, 1.5, -2.0);
                v[gy * g + gx] = (a * x - b * y + tx) as f32;
                v[g * g + gy * g + gx] = (b * x + a * y + ty) as f32;
            }
        }
        let sim = Tensor::from_slice(&v).view([2, GRID, GRID]);
        let left = rigid.remove_from(&sim);
        assert!(left.abs().max().double_value(&[]) < 1e-4);
        // A local bump off the face's centre keeps most of its size.
        let bump = Tensor::zeros([2, GRID, GRID], (Kind::Float, tch::Device::Cpu));
        let _ = bump.get(1).narrow(0, 24, 3).narrow(1, 14, 4).fill_(2.0);
        let kept = rigid.remove_from(&bump);
        let at = kept.double_value(&[1, 25, 15]);
        assert!(at > 1.7, "bump kept {at}");
    }

    /// Each pixel is shrunk by its own λ: where λ is huge the layer stays the identity,
    /// where it is tiny it fits the pairs; a constant map is the scalar solve.
    #[test]
    fn per_pixel_lambda_shrinks_each_pixel_by_its_own_amount() {
        let s = 8i64;
        let kk = (APPEARANCE_K * APPEARANCE_K) as i64;
        let r = 3 * s * s;
        // Normal equations of pairs whose target is 0.3 + 0.5 x (centre tap) with a
        // random neighbourhood: AᵀA from random features, Aᵀt from the law.
        tch::manual_seed(1);
        let a = Tensor::rand([r, 40, kk + 1], (Kind::Double, tch::Device::Cpu));
        let _ = a.narrow(2, kk, 1).fill_(1.0);
        let t = a.narrow(2, kk / 2, 1) * 0.5 + 0.3;
        let ata = a.transpose(1, 2).matmul(&a);
        let atb = a.transpose(1, 2).matmul(&t);
        let map = Tensor::full([s, s], 1e9, (Kind::Double, tch::Device::Cpu));
        let _ = map.narrow(0, 0, 1).fill_(1e-9); // row 0: fit; the rest: identity
        let layer = solve_towards_identity_map(&ata, &atb, &map, s);
        let centre = layer.w.select(1, kk / 2); // [3,S,S]
        let fit_row = centre.narrow(1, 0, 1);
        let id_rows = centre.narrow(1, 1, s - 1);
        assert!((fit_row - 0.5).abs().max().double_value(&[]) < 1e-4);
        assert!(
            (layer.b.narrow(1, 0, 1) - 0.3)
                .abs()
                .max()
                .double_value(&[])
                < 1e-4
        );
        assert!((id_rows - 1.0).abs().max().double_value(&[]) < 1e-6);
        assert!(layer.b.narrow(1, 1, s - 1).abs().max().double_value(&[]) < 1e-6);
        let scalar = solve_towards_identity(&ata, &atb, 10.0, s);
        let mapped = solve_towards_identity_map(
            &ata,
            &atb,
            &Tensor::full([s, s], 10.0, (Kind::Double, tch::Device::Cpu)),
            s,
        );
        assert!((scalar.w - mapped.w).abs().max().double_value(&[]) < 1e-9);
    }

    #[test]
    fn lambda_map_is_the_face_lambda_outside_and_the_mouth_lambda_inside() {
        let region = Tensor::from_slice(&[0.0f32, 1.0, 0.5]).view([1, 3]);
        let m = lambda_map(1e3, 1.0, &region);
        let v: Vec<f64> = Vec::try_from(m.flatten(0, -1)).unwrap();
        assert!((v[0] - 1e3).abs() < 1e-6 && (v[1] - 1.0).abs() < 1e-9);
        assert!(
            (v[2] - (1e3f64).sqrt()).abs() < 1e-6,
            "log-interpolated: {}",
            v[2]
        );
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
