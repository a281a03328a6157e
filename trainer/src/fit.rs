//! `fit`: cross-validates k and λ on the validation subjects, then fits the final
//! layers on the training subjects (validation stays held out, so its error is honest).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};

use crate::data::{load_subjects, Index};
use crate::regression::{expressions_present, identity_mse, layer_mse, solve, sweep, Features};
use crate::weights::{Meta, Weights};

/// λ grid of the sweep (on the summed normal equations).
pub const LAMBDAS: [f64; 7] = [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0];
/// A larger k must beat the smaller one by more than this (relative) to be chosen.
pub const K_TOLERANCE: f64 = 0.01;

#[derive(Debug, Clone)]
pub struct FitOptions {
    /// "mr" or "pixel-rr" (k = 1).
    pub method: String,
    pub ks: Vec<usize>,
    pub lambdas: Vec<f64>,
    /// Data sets to train on; None = all in the cache except London (kept out as the
    /// out-of-distribution test set).
    pub datasets: Option<Vec<String>>,
    /// Recoloured copies of each training subject (0 = none); see [`crate::augment`].
    pub colour_augment: usize,
}

pub fn run(cache: &Path, opts: &FitOptions) -> Result<Weights> {
    let index = Index::read(cache)?;
    let datasets: Vec<String> = match &opts.datasets {
        Some(d) => d.clone(),
        None => index
            .entries
            .iter()
            .map(|e| e.dataset.clone())
            .filter(|d| d != "london")
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
    };
    let train = load_subjects(cache, &index, &index.train_subjects, &datasets)?;
    let val = load_subjects(cache, &index, &index.val_subjects, &datasets)?;
    if train.is_empty() || val.is_empty() {
        bail!("data sets {datasets:?} give {} training and {} validation subjects with neutral crops; need both", train.len(), val.len());
    }
    let train = crate::augment::augment(train, opts.colour_augment, crate::augment::SEED);
    let expressions = expressions_present(&train);
    println!(
        "training on {datasets:?}: {} train / {} validation subjects, expressions {expressions:?}",
        train.len(),
        val.len()
    );

    let t = Instant::now();
    let table = sweep(&train, &val, &expressions, &opts.ks, &opts.lambdas);
    println!(
        "validation MSE (k x lambda), {:.1} s:\n{}",
        t.elapsed().as_secs_f64(),
        table.table()
    );
    let (ki, li) = table.choose(K_TOLERANCE);
    let k = table.ks[ki];
    println!("chosen k = {k}");

    let t = Instant::now();
    let feats = Features::new(&train, k);
    println!("features for k = {k}: {:.2} s", t.elapsed().as_secs_f64());
    let mut meta = Meta {
        method: opts.method.clone(),
        k,
        ..Meta::for_fit(&index, &expressions, &train, &val, datasets, cache)
    };
    meta.sweep = Some(table.clone());
    let mut layers = Vec::new();
    println!(
        "{:<10} {:>7} {:>6} {:>10} {:>10} {:>7} {:>8}",
        "expression", "lambda", "pairs", "val MSE", "identity", "ratio", "fit s"
    );
    for (e, &l) in expressions.iter().zip(&li) {
        let lambda = table.lambdas[l];
        let t = Instant::now();
        let (ata, atb, pairs) = feats.normal_equations(&train, e);
        let layer = solve(&ata, &atb, lambda, k, feats.size);
        let secs = t.elapsed().as_secs_f64();
        let (mse, id) = (layer_mse(&layer, &val, e), identity_mse(&val, e));
        println!(
            "{e:<10} {lambda:>7.0e} {pairs:>6} {mse:>10.6} {id:>10.6} {:>7.3} {secs:>8.3}",
            mse / id
        );
        meta.lambda.insert(e.clone(), lambda);
        meta.val_mse.insert(e.clone(), mse);
        meta.identity_mse.insert(e.clone(), id);
        meta.fit_seconds.insert(e.clone(), secs);
        meta.train_pairs.insert(e.clone(), pairs);
        layers.push(layer);
    }
    Ok(Weights::from_layers(meta, &layers))
}

/// Parses a hyper-parameter option (`--lambda`, `--sigma`): a positive number, or
/// "sweep" for `grid`.
pub fn parse_grid(option: &str, s: &str, grid: &[f64]) -> Result<Vec<f64>> {
    if s == "sweep" {
        return Ok(grid.to_vec());
    }
    let v: f64 = s
        .parse()
        .map_err(|_| anyhow::anyhow!("{option} takes a number or 'sweep', not '{s}'"))?;
    if v.is_nan() || v <= 0.0 {
        bail!("{option} must be positive");
    }
    Ok(vec![v])
}

/// Parses `--lambda`: a number, or "sweep" for the default grid.
pub fn parse_lambdas(s: &str) -> Result<Vec<f64>> {
    parse_grid("--lambda", s, &LAMBDAS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_options_take_a_number_or_sweep_and_name_themselves_in_errors() {
        assert_eq!(parse_lambdas("sweep").unwrap(), LAMBDAS.to_vec());
        assert_eq!(parse_lambdas("0.5").unwrap(), vec![0.5]);
        assert_eq!(
            crate::kernel::parse_sigmas("sweep").unwrap(),
            crate::kernel::SIGMAS.to_vec()
        );
        let e = crate::kernel::parse_sigmas("wide").unwrap_err().to_string();
        assert_eq!(e, "--sigma takes a number or 'sweep', not 'wide'");
        let e = parse_lambdas("-1").unwrap_err().to_string();
        assert_eq!(e, "--lambda must be positive");
        assert!(parse_lambdas("NaN").is_err());
    }
}
