//! Tunes the tracker's One Euro filter on real clips: every (min_cutoff, beta) pair of
//! the grid runs through `eval --video`'s measure (warping-error ratio inside the face,
//! coverage) for every low-pass cutoff of the edit too, and the table is printed with
//! the means over clips per setting.
//!
//! ```sh
//! source .deps/env.sh
//! cargo run --release -p reggan-trainer --example tune_tracking -- \
//!     ../shared/data/video models/mr 90 0.3,1,3 0,0.5,2 0,2,4 1,2,3
//! ```
//!
//! Arguments: clip folder, model, frames per clip, min_cutoff values, beta values, edit
//! cutoffs (Hz; 0 = no low-pass of the edit), search intervals (frames between the
//! detector's looks at a confidently followed face).

use std::path::PathBuf;

use anyhow::{Context, Result};
use reggan::{OneEuroParams, ProcessorConfig, TrackingOptions};
use reggan_trainer::eval::video;

fn list(s: &str) -> Result<Vec<f32>> {
    s.split(',')
        .map(|v| {
            v.parse::<f32>()
                .with_context(|| format!("'{v}' is not a number"))
        })
        .collect()
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.into());
    let dir = PathBuf::from(arg(0, "../shared/data/video"));
    let model = PathBuf::from(arg(1, "models/mr"));
    let frames: usize = arg(2, "90").parse()?;
    let cutoffs = list(&arg(3, "0.3,1,3"))?;
    let betas = list(&arg(4, "0,0.5,2"))?;
    let edit_cutoffs = list(&arg(5, "4"))?;
    let search_intervals = list(&arg(6, "1"))?;
    let mut extra = Vec::new();
    for &min_cutoff in &cutoffs {
        for &beta in &betas {
            for (&edit, &every) in edit_cutoffs
                .iter()
                .flat_map(|e| search_intervals.iter().map(move |s| (e, s)))
            {
                let tracking = TrackingOptions {
                    filter: Some(OneEuroParams {
                        min_cutoff,
                        beta,
                        ..Default::default()
                    }),
                    edit_cutoff: (edit > 0.0).then_some(edit),
                    search_interval: every as u32,
                    ..Default::default()
                };
                let config = ProcessorConfig {
                    tracking,
                    ..video::settings("happy").remove(1).1
                };
                let name =
                    format!("min_cutoff {min_cutoff} beta {beta} edit {edit} search every {every}");
                extra.push((name, config));
            }
        }
    }
    let rows = video::run(&model, &dir, "happy", frames, extra)?;
    print!("{}", video::markdown(&rows));
    Ok(())
}
