//! `reggan-train gan` as a program that links LibTorch and nothing of OpenCV, so that it
//! runs on a GPU machine that has PyTorch's libtorch but not this project's system
//! libraries. Same options as `reggan-train gan`; pair it with `reggan-train pack`
//! (JPEG crops, float16 RegFlow weights) to carry the data.
//!
//! ```sh
//! LD_LIBRARY_PATH=<site-packages>/torch/lib train_refiner --model reggan --config paper \
//!     --cache PACK/cache --regflow-weights PACK/regflow --restore-cache PACK/utk \
//!     --device cuda --out RUN
//! ```

use clap::Parser;

/// Trains RegGAN's refinement network (or US-GAN / SARGAN) from `prepare` caches.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    gan: reggan_trainer::gan::train::GanCli,
}

fn main() -> anyhow::Result<()> {
    reggan_trainer::gan::train::run(Cli::parse().gan.into())
}
