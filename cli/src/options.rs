//! Options shared by the subcommands: which model, where it runs, how faces are found.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use reggan::{DetectorKind, Device, Manifest, ProcessorConfig};

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model directory (model.onnx + model.json) [default: $REGGAN_MODEL, else the shipped models/mr]
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Where the model runs
    #[arg(long, default_value = "auto", value_parser = ["auto", "cpu", "cuda", "tensorrt"])]
    pub device: String,
    /// Face detector: BlazeFace front (close faces), back (small faces), both (auto), or Haar
    #[arg(long, default_value = "auto", value_parser = ["auto", "front", "back", "haar"])]
    pub detector: String,
    /// At most this many faces per frame are changed (largest first)
    #[arg(long, default_value_t = 4)]
    pub max_faces: usize,
    /// Faces narrower than this many pixels are left alone
    #[arg(long, default_value_t = 32.0)]
    pub min_face_size: f32,
    /// Keep the face's own detail where the model smoothed it away: off, fine (skin
    /// texture, lashes, hair where the model changed little), full (also the model's
    /// coarser smoothing, and the irises' darkness where the model fades them; sharpest,
    /// weaker expressions)
    #[arg(long, default_value = "fine", value_parser = ["off", "fine", "full"])]
    pub detail: String,
    /// Keep the face's colours (eyes, make-up, skin tone): the model's colour changes
    /// only at the mouth, and no tone edge where the edit ends
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub keep_colour: bool,
    /// Degrees a head may turn: the edit fades from full strength 15 degrees before this
    /// to nothing at it (90: never fades)
    #[arg(long, default_value_t = reggan::pose::DEFAULT_MAX_YAW, value_parser = parse_max_yaw, value_name = "DEG")]
    pub max_yaw: f32,
}

fn parse_max_yaw(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if !(0.0..=90.0).contains(&v) {
        return Err(format!("{v} is outside 0..90"));
    }
    Ok(v)
}

impl ModelArgs {
    pub fn model_dir(&self) -> PathBuf {
        self.model.clone().unwrap_or_else(reggan::default_model_dir)
    }

    /// Reads the manifest up front so a missing model fails before any work starts, with
    /// a message that names the directory.
    pub fn manifest(&self) -> Result<Manifest> {
        let dir = self.model_dir();
        if !dir.is_dir() {
            bail!(
                "model directory {} does not exist (give --model DIR or set REGGAN_MODEL; the shipped model is models/mr)",
                dir.display()
            );
        }
        Manifest::read(&dir)
            .with_context(|| format!("cannot use model directory {}", dir.display()))
    }

    pub fn processor_config(
        &self,
        expression: &str,
        intensity: f32,
        threads: usize,
    ) -> Result<ProcessorConfig> {
        Ok(ProcessorConfig {
            expression: expression.into(),
            intensity,
            max_faces: self.max_faces,
            min_face_size: self.min_face_size,
            detector: self
                .detector
                .parse::<DetectorKind>()
                .map_err(anyhow::Error::msg)?,
            device: self.device.parse::<Device>().map_err(anyhow::Error::msg)?,
            threads,
            detail: self.detail.parse().map_err(anyhow::Error::msg)?,
            keep_colour: self.keep_colour,
            max_yaw: self.max_yaw,
            ..Default::default()
        })
    }
}

/// Fails with the list of the model's expressions when `name` is not one of them.
pub fn check_expression(manifest: &Manifest, name: &str, model_dir: &Path) -> Result<()> {
    if manifest.expressions.iter().any(|e| e == name) {
        return Ok(());
    }
    bail!(
        "unknown expression '{name}'; the model {} has: {}",
        model_dir.display(),
        manifest.expressions.join(", ")
    )
}

/// The neutral demo face that demo and bench use (London Set, CC BY 4.0; see NOTICE):
/// `$REGGAN_DEMO_IMAGE`, the installed copy, the committed `assets/` one.
pub fn default_photo() -> PathBuf {
    reggan::install::demo_face()
}

pub fn load_photo(path: Option<&Path>) -> Result<reggan::RgbImage> {
    let path = path.map(Path::to_path_buf).unwrap_or_else(default_photo);
    reggan::RgbImage::load(&path).with_context(|| {
        format!(
            "cannot read the photo {} (give --image FILE)",
            path.display()
        )
    })
}

/// Thread count where 0 means one per CPU core (as the element's `threads` property).
pub fn resolve_threads(threads: usize) -> usize {
    match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// How a video's faces are followed: the element's `detect-interval`, `tracking` and
/// `transition-ms` (videos only; a still picture is one full search).
#[derive(Args, Debug, Clone)]
pub struct TrackingArgs {
    /// Full-frame face search every N frames, and whenever a tracked face is lost
    #[arg(long, default_value_t = reggan::processor::DEFAULT_DETECT_INTERVAL, value_parser = clap::value_parser!(u32).range(1..=300))]
    pub detect_interval: u32,
    /// Follow faces with optical flow and a One Euro filter, and low-pass each face's edit along its own motion (false: each frame's raw detections and edits)
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub tracking: bool,
    /// Stream time over which a new face fades in (and an expression change would ramp)
    #[arg(long, default_value_t = reggan::processor::DEFAULT_TRANSITION.as_millis() as u32, value_parser = clap::value_parser!(u32).range(0..=10_000), value_name = "MS")]
    pub transition_ms: u32,
}
