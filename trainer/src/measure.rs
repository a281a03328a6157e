//! Pair MSE of an exported model (through the core library's ONNX Runtime loader), on
//! every (neutral, expression) pair of some subjects. Used by `import-lsrf` and the
//! model cards; the paper metrics live in `eval`.

use std::cell::RefCell;
use std::path::Path;

use anyhow::{bail, Result};
use reggan::{Device, ExpressionModel};
use tch::{Kind, Tensor};

use crate::data::{load_subjects, Index, Subject};
use crate::export::to_array;
use crate::regression::pair_sse;

/// Crops resized (area average) to `size` when the model's crop differs from the cache's.
pub fn resize(x: &Tensor, size: i64) -> Tensor {
    if x.size()[2] == size {
        x.shallow_clone()
    } else {
        x.adaptive_avg_pool2d([size, size])
    }
}

/// Runs a model on faces [N,3,S,S] (batches of 16) for one expression index.
pub fn run_model(model: &mut ExpressionModel, faces: &Tensor, expression: i64) -> Result<Tensor> {
    let mut outs = Vec::new();
    for chunk in faces.split(16, 0) {
        let n = chunk.size()[0] as usize;
        let y = model.run(to_array(&chunk)?.view(), &vec![expression; n])?;
        outs.push(
            Tensor::from_slice(y.as_slice().expect("ORT output is contiguous"))
                .view_as(&chunk.to_kind(Kind::Float)),
        );
    }
    Ok(Tensor::cat(&outs, 0))
}

/// (model MSE, identity MSE, pairs) for `expression` over the subjects' pairs, at the
/// model's crop size (targets resized like inputs).
pub fn model_pair_mse(
    dir: &Path,
    subjects: &[Subject],
    expression: &str,
) -> Result<(f64, f64, usize)> {
    let model = ExpressionModel::load(dir, Device::Cpu, 2)?;
    let e = model.manifest().expression_index(expression)? as i64;
    let s = model.crop_size() as i64;
    let resized: Vec<Subject> = subjects
        .iter()
        .map(|sub| Subject {
            name: sub.name.clone(),
            neutral: resize(&sub.neutral, s),
            targets: sub
                .targets
                .iter()
                .map(|(k, t)| (k.clone(), resize(t, s)))
                .collect(),
        })
        .collect();
    let model = RefCell::new(model);
    let err = RefCell::new(None);
    let (sse, n) = pair_sse(&resized, expression, |x| {
        run_model(&mut model.borrow_mut(), x, e).unwrap_or_else(|e| {
            *err.borrow_mut() = Some(e);
            x.shallow_clone()
        })
    });
    if let Some(e) = err.into_inner() {
        return Err(e);
    }
    if n == 0.0 {
        bail!("no ({expression}) pairs in the given subjects");
    }
    let (id, _) = pair_sse(&resized, expression, |x| x.shallow_clone());
    let pairs = n as usize / (3 * s * s) as usize;
    Ok((sse / n, id / n, pairs))
}

/// Subjects of a prepare cache: the validation subjects (`all` = false) or every subject.
pub fn cache_subjects(cache: &Path, all: bool) -> Result<Vec<Subject>> {
    let index = Index::read(cache)?;
    let datasets: Vec<String> = index
        .entries
        .iter()
        .map(|e| e.dataset.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let names = if all {
        let mut v = index.train_subjects.clone();
        v.extend(index.val_subjects.iter().cloned());
        v
    } else {
        index.val_subjects.clone()
    };
    load_subjects(cache, &index, &names, &datasets)
}

/// `reggan-train mse`: pair MSE of an exported model for each of its expressions that
/// the cache has, on the validation subjects (or all with `all`); prints a table and
/// returns (expression, MSE, identity MSE, pairs).
pub fn run_cmd(model: &Path, cache: &Path, all: bool) -> Result<Vec<(String, f64, f64, usize)>> {
    let subjects = cache_subjects(cache, all)?;
    let manifest = reggan::Manifest::read(model)?;
    println!(
        "{} ({}) on {} {} subjects of {}:",
        model.display(),
        manifest.method,
        subjects.len(),
        if all { "(all)" } else { "validation" },
        cache.display()
    );
    println!(
        "{:<10} {:>10} {:>10} {:>7} {:>6}",
        "expression", "MSE", "identity", "ratio", "pairs"
    );
    let mut out = Vec::new();
    for e in &manifest.expressions {
        if !subjects.iter().any(|s| s.targets.contains_key(e)) {
            continue;
        }
        let (mse, id, pairs) = model_pair_mse(model, &subjects, e)?;
        println!(
            "{e:<10} {mse:>10.6} {id:>10.6} {:>7.3} {pairs:>6}",
            mse / id
        );
        out.push((e.clone(), mse, id, pairs));
    }
    if out.is_empty() {
        bail!(
            "{} has no pairs for the model's expressions {:?}",
            cache.display(),
            manifest.expressions
        );
    }
    Ok(out)
}
