//! `reggan`: apply facial expressions to images and videos, make the demo, measure speed.

mod apply;
mod batch;
mod bench;
mod demo;
mod gstutil;
mod images;
mod options;
mod photo;
mod video;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "reggan",
    version,
    about = "Facial-expression synthesis for images and video"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Apply(apply::ApplyArgs),
    Demo(demo::DemoArgs),
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Apply(args) => apply::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
