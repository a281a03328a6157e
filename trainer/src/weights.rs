//! The fitted expression layers on disk: `weights.safetensors` (W [E,3,k²,S,S],
//! B [E,3,S,S]) and `meta.json` (hyper-parameters, subjects, measured quality).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use reggan::Template;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::data::{Index, Subject};
use crate::regression::{Layer, Sweep};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    /// "mr" or "pixel-rr".
    pub method: String,
    pub k: usize,
    pub crop_size: usize,
    pub template: Template,
    /// Expression names in index order (W's first axis).
    pub expressions: Vec<String>,
    pub lambda: BTreeMap<String, f64>,
    pub val_mse: BTreeMap<String, f64>,
    pub identity_mse: BTreeMap<String, f64>,
    pub fit_seconds: BTreeMap<String, f64>,
    pub train_pairs: BTreeMap<String, usize>,
    pub train_subjects: Vec<String>,
    pub val_subjects: Vec<String>,
    pub datasets: Vec<String>,
    /// The prepare cache the layers were fitted from (export verifies on its crops).
    pub cache: String,
    pub sweep: Option<Sweep>,
}

impl Meta {
    /// The metadata of a fresh fit: what was trained on; method and k are the caller's,
    /// the per-expression maps are filled in as the layers are solved.
    pub fn for_fit(
        index: &Index,
        expressions: &[String],
        train: &[Subject],
        val: &[Subject],
        datasets: Vec<String>,
        cache: &Path,
    ) -> Self {
        Meta {
            method: String::new(),
            k: 0,
            crop_size: index.crop_size,
            template: index.template.clone(),
            expressions: expressions.to_vec(),
            lambda: BTreeMap::new(),
            val_mse: BTreeMap::new(),
            identity_mse: BTreeMap::new(),
            fit_seconds: BTreeMap::new(),
            train_pairs: BTreeMap::new(),
            // Recoloured copies (`<subject>~cN`) are not listed.
            train_subjects: train
                .iter()
                .filter(|s| !s.name.contains('~'))
                .map(|s| s.name.clone())
                .collect(),
            val_subjects: val.iter().map(|s| s.name.clone()).collect(),
            datasets,
            cache: cache
                .canonicalize()
                .unwrap_or(cache.into())
                .display()
                .to_string(),
            sweep: None,
        }
    }
}

#[derive(Debug)]
pub struct Weights {
    pub meta: Meta,
    pub w: Tensor,
    pub b: Tensor,
}

impl Weights {
    pub fn from_layers(meta: Meta, layers: &[Layer]) -> Self {
        let w: Vec<&Tensor> = layers.iter().map(|l| &l.w).collect();
        let b: Vec<&Tensor> = layers.iter().map(|l| &l.b).collect();
        Weights {
            meta,
            w: Tensor::stack(&w, 0),
            b: Tensor::stack(&b, 0),
        }
    }

    pub fn layer(&self, e: usize) -> Layer {
        Layer {
            k: self.meta.k,
            w: self.w.get(e as i64),
            b: self.b.get(e as i64),
        }
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        write_folder(
            dir,
            "weights.safetensors",
            &self.meta,
            &[("w", &self.w), ("b", &self.b)],
        )
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let (meta, t): (Meta, _) = read_folder(dir, "weights.safetensors", &["w", "b"])?;
        let (w, b) = (t[0].shallow_clone(), t[1].shallow_clone());
        let (e, k, s) = (
            meta.expressions.len() as i64,
            meta.k as i64,
            meta.crop_size as i64,
        );
        if w.size() != [e, 3, k * k, s, s] || b.size() != [e, 3, s, s] {
            bail!(
                "weights have shapes {:?} and {:?}; meta.json says E={e}, k={k}, S={s}",
                w.size(),
                b.size()
            );
        }
        Ok(Weights { meta, w, b })
    }
}

/// Writes a weights folder: `dir/meta.json` and the named tensors in `dir/<file>`.
pub fn write_folder<M: Serialize>(
    dir: &Path,
    file: &str,
    meta: &M,
    tensors: &[(&str, &Tensor)],
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Tensor::write_safetensors(tensors, dir.join(file))?;
    std::fs::write(
        dir.join("meta.json"),
        serde_json::to_string_pretty(meta)? + "\n",
    )?;
    Ok(())
}

/// Reads a weights folder written by [`write_folder`]: its metadata and the tensors
/// named in `names`, in that order.
pub fn read_folder<M: serde::de::DeserializeOwned>(
    dir: &Path,
    file: &str,
    names: &[&str],
) -> Result<(M, Vec<Tensor>)> {
    let meta_path = dir.join("meta.json");
    let meta: M = serde_json::from_str(
        &std::fs::read_to_string(&meta_path)
            .with_context(|| format!("cannot read {}", meta_path.display()))?,
    )
    .with_context(|| format!("{} is not valid", meta_path.display()))?;
    let tensors = Tensor::read_safetensors(dir.join(file))
        .with_context(|| format!("cannot read {}/{file}", dir.display()))?;
    let picked = names
        .iter()
        .map(|name| {
            tensors
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.shallow_clone())
                .with_context(|| format!("{file} lacks tensor {name}"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((meta, picked))
}
