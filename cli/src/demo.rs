//! `reggan demo`: the neutral demo face (London Set) as a short video with a slowly moving camera,
//! pushed through a real GStreamer pipeline whose `faceexpression` element cycles
//! through every expression; plus a still strip of all expressions.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use gst::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};
use reggan::{Face, FrameProcessor, RgbImage};

use crate::gstutil;
use crate::images;
use crate::options::{load_photo, ModelArgs};

const FPS: u64 = 25;
/// Tile size of the still strip.
const TILE: usize = 256;

/// Make out/demo.mp4 (the photo with a moving camera, cycling through all expressions)
/// and out/demo.png (input and every expression side by side)
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Output directory
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Photo with one face [default: $REGGAN_DEMO_IMAGE, else the neutral London Set face in assets/]
    #[arg(long, value_name = "FILE")]
    pub image: Option<PathBuf>,
    /// Video frames per expression (25 fps)
    #[arg(long, default_value_t = 30)]
    pub frames_per_expression: u64,
    #[arg(long, default_value_t = 640)]
    pub width: usize,
    #[arg(long, default_value_t = 480)]
    pub height: usize,
    /// Expression strength, 0..2 (the video eases in to it at the start of each segment)
    #[arg(long, default_value_t = 1.0, value_parser = parse_intensity)]
    pub intensity: f64,
    #[command(flatten)]
    pub model: ModelArgs,
}

fn parse_intensity(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=2.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is outside 0..2"))
    }
}

pub fn run(args: DemoArgs) -> Result<()> {
    let manifest = args.model.manifest()?;
    let expressions = manifest.expressions.clone();
    let photo = load_photo(args.image.as_deref())?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;

    let config =
        args.model
            .processor_config(&expressions[0], 1.0, crate::options::resolve_threads(0))?;
    let mut processor = FrameProcessor::new(&args.model.model_dir(), config)?;
    let face = largest_face(&mut processor, &photo)?;
    let still = args.out.join("demo.png");
    processor.set_intensity(args.intensity as f32);
    write_strip(&mut processor, &photo, &face, &expressions, &still)?;
    drop(processor);
    println!("still: {}", still.display());

    let video = args.out.join("demo.mp4");
    let fps = write_video(&args, &photo, &face, &expressions, &video)?;
    println!(
        "video: {} ({} expressions, {fps:.1} fps through the pipeline)",
        video.display(),
        expressions.len()
    );
    Ok(())
}

fn largest_face(processor: &mut FrameProcessor, photo: &RgbImage) -> Result<Face> {
    let mut copy = photo.clone();
    let faces = processor.detect(&copy.as_frame())?;
    match faces
        .into_iter()
        .max_by(|a, b| a.bbox.area().total_cmp(&b.bbox.area()))
    {
        Some(face) => Ok(face),
        None => bail!("no face found in the demo photo"),
    }
}

/// One row: the input crop, then the same crop after each expression, labelled.
fn write_strip(
    processor: &mut FrameProcessor,
    photo: &RgbImage,
    face: &Face,
    expressions: &[String],
    path: &Path,
) -> Result<()> {
    let (cx, cy) = (
        face.bbox.x + face.bbox.w / 2.0,
        face.bbox.y + face.bbox.h / 2.0,
    );
    let side = (face.bbox.w.max(face.bbox.h) * 2.0) as usize;
    let tile = |image: &RgbImage, text: &str| -> Result<RgbImage> {
        let crop = images::square_crop(image, cx, cy, side)?;
        images::label(&images::resize(&crop, TILE, TILE)?, text)
    };
    let mut tiles = vec![tile(photo, "input")?];
    for expression in expressions {
        processor.set_expression(expression)?;
        let mut changed = photo.clone();
        processor.process(&mut changed.as_frame())?;
        tiles.push(tile(&changed, expression)?);
    }
    let strip = images::hconcat(&tiles.iter().collect::<Vec<_>>());
    strip
        .save(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Streams the camera moves through appsrc ! faceexpression ! x264enc ! mp4mux and
/// returns the frames per second the whole pipeline achieved.
fn write_video(
    args: &DemoArgs,
    photo: &RgbImage,
    face: &Face,
    expressions: &[String],
    path: &Path,
) -> Result<f64> {
    gstutil::init()?;
    let pipeline = gstutil::launch(&format!(
        "appsrc name=src format=time block=true max-bytes={} \
           caps=video/x-raw,format=RGB,width={},height={},framerate={FPS}/1 \
         ! videoconvert ! faceexpression name=fx ! videoconvert ! video/x-raw,format=I420 \
         ! x264enc speed-preset=faster pass=qual quantizer=20 ! mp4mux ! filesink name=sink",
        4 * args.width * args.height * 3,
        args.width,
        args.height
    ))?;
    gstutil::by_name(&pipeline, "sink")?
        .set_property("location", path.to_string_lossy().to_string());
    let fx = gstutil::by_name(&pipeline, "fx")?;
    gstutil::configure(&fx, &args.model, &expressions[0], 0.0, 0);
    let total = args.frames_per_expression * expressions.len() as u64;
    cycle_expressions(
        &fx,
        expressions.to_vec(),
        args.frames_per_expression,
        args.intensity,
    );
    let done = gstutil::count_buffers(&fx.static_pad("src").expect("element has a src pad"));

    let appsrc = gstutil::by_name(&pipeline, "src")?
        .downcast::<gst_app::AppSrc>()
        .expect("appsrc is an AppSrc");
    let camera = Camera::new(photo, face, args.width, args.height)?;
    let feeder = std::thread::spawn(move || feed(&appsrc, &camera, total));

    let bar = frame_bar(total);
    let start = Instant::now();
    let result = gstutil::run_to_eos(&pipeline, |_| {
        bar.set_position(done.load(Ordering::Relaxed))
    });
    let secs = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    feeder.join().expect("feeder thread does not panic")?;
    result.context("running the demo pipeline")?;
    Ok(done.load(Ordering::Relaxed) as f64 / secs)
}

fn frame_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("demo.mp4 [{bar:40}] {pos}/{len} frames ({elapsed})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

/// Sets expression and intensity on the element from each frame's timestamp, right
/// before the element sees that frame, so the switch lands exactly on segment
/// boundaries whatever the queueing between feeder and element.
fn cycle_expressions(
    fx: &gst::Element,
    expressions: Vec<String>,
    frames_per_expression: u64,
    intensity: f64,
) {
    let element = fx.clone();
    let last_segment = Arc::new(AtomicU64::new(u64::MAX));
    let sink = fx.static_pad("sink").expect("element has a sink pad");
    sink.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        let Some(pts) = info.buffer().and_then(|b| b.pts()) else {
            return gst::PadProbeReturn::Ok;
        };
        let frame = pts.nseconds() * FPS / 1_000_000_000;
        let segment = (frame / frames_per_expression) % expressions.len() as u64;
        if last_segment.swap(segment, Ordering::Relaxed) != segment {
            element.set_property_from_str("expression", &expressions[segment as usize]);
        }
        element.set_property(
            "intensity",
            intensity * ramp(frame % frames_per_expression, frames_per_expression),
        );
        gst::PadProbeReturn::Ok
    });
}

/// Intensity within a segment: eases in from 0 over the first 40 % of it, then holds 1.
fn ramp(frame_in_segment: u64, frames_per_expression: u64) -> f64 {
    let t = frame_in_segment as f64 / (0.4 * frames_per_expression as f64);
    let t = t.min(1.0);
    t * t * (3.0 - 2.0 * t)
}

fn feed(appsrc: &gst_app::AppSrc, camera: &Camera, total: u64) -> Result<()> {
    let frame_duration = gst::ClockTime::from_nseconds(1_000_000_000 / FPS);
    for i in 0..total {
        let image = camera.frame(i as f64 / total as f64)?;
        let mut buffer = gst::Buffer::from_mut_slice(image.data);
        {
            let buffer = buffer.get_mut().expect("a new buffer is writable");
            buffer.set_pts(frame_duration * i);
            buffer.set_duration(frame_duration);
        }
        if appsrc.push_buffer(buffer).is_err() {
            // The pipeline stopped (error or shutdown); run_to_eos reports why.
            return Ok(());
        }
    }
    let _ = appsrc.end_of_stream();
    Ok(())
}

/// A slow hand-held camera around the face: drifting centre, gentle zoom, a little roll.
struct Camera {
    photo: opencv::core::Mat,
    center: (f64, f64),
    zoom: f64,
    width: usize,
    height: usize,
}

impl Camera {
    fn new(photo: &RgbImage, face: &Face, width: usize, height: usize) -> Result<Self> {
        // Face about a third of the frame height, but never zoomed out past the photo.
        let fit = (width as f64 / photo.width as f64).max(height as f64 / photo.height as f64);
        let zoom = (height as f64 / 3.0 / face.bbox.h as f64).max(fit * 1.15);
        let (half_w, half_h) = (width as f64 / 2.0 / zoom, height as f64 / 2.0 / zoom);
        let keep_inside =
            |c: f64, half: f64, len: usize| c.clamp(half, (len as f64 - half).max(half));
        let center = (
            keep_inside(
                (face.bbox.x + face.bbox.w / 2.0) as f64,
                half_w * 1.1,
                photo.width,
            ),
            keep_inside(
                (face.bbox.y + face.bbox.h / 2.0) as f64,
                half_h * 1.1,
                photo.height,
            ),
        );
        Ok(Camera {
            photo: images::to_mat(photo)?,
            center,
            zoom,
            width,
            height,
        })
    }

    /// The view at `t` in [0, 1).
    fn frame(&self, t: f64) -> Result<RgbImage> {
        use std::f64::consts::TAU;
        let drift = 0.06 * self.width as f64 / self.zoom;
        let center = (
            self.center.0 + drift * (TAU * 0.7 * t).sin(),
            self.center.1 + 0.5 * drift * (TAU * 0.5 * t + 1.0).sin(),
        );
        let zoom = self.zoom * (1.0 + 0.08 * (TAU * 0.5 * t).sin());
        let roll = 3.0 * (TAU * 0.8 * t).sin();
        images::camera_view(&self.photo, center, zoom, roll, self.width, self.height)
    }
}

#[cfg(test)]
mod tests {
    use super::ramp;

    #[test]
    fn intensity_eases_in_then_holds() {
        assert_eq!(ramp(0, 30), 0.0);
        assert!(ramp(6, 30) > 0.4 && ramp(6, 30) < 0.6);
        assert_eq!(ramp(12, 30), 1.0);
        assert_eq!(ramp(29, 30), 1.0);
    }
}
