//! GStreamer plumbing: start-up with the element registered in-process, building the
//! `faceexpression` element from the CLI options, and running a pipeline to its end.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use gst::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};

use crate::options::ModelArgs;

pub const ELEMENT: &str = "faceexpression";

/// Initialises GStreamer and registers the element from the statically linked plugin,
/// so the CLI works without GST_PLUGIN_PATH.
pub fn init() -> Result<()> {
    gst::init().context("cannot initialise GStreamer")?;
    if gst::ElementFactory::find(ELEMENT).is_none() {
        gstreggan::plugin_register_static()
            .context("cannot register the reggan GStreamer plugin")?;
    }
    require_encoders()
}

/// The element configured like the core processor would be from the same options.
/// Sets the element up like the core processor would be from the same options (the
/// enum nicks of `device` and `detector` are the CLI's value names).
pub fn configure(
    element: &gst::Element,
    model: &ModelArgs,
    expression: &str,
    intensity: f64,
    threads: usize,
) {
    element.set_property("model", model.model_dir().to_string_lossy().to_string());
    element.set_property_from_str("expression", expression);
    element.set_property("intensity", intensity);
    element.set_property_from_str("device", &model.device);
    element.set_property_from_str("detector", &model.detector);
    element.set_property("max-faces", model.max_faces as u32);
    element.set_property("min-face-size", model.min_face_size.round() as u32);
    element.set_property("threads", threads as u32);
    element.set_property_from_str("detail", &model.detail);
    element.set_property("keep-colour", model.keep_colour);
    element.set_property("max-yaw", model.max_yaw as f64);
}

/// The element's face following (videos).
pub fn configure_tracking(element: &gst::Element, tracking: &crate::options::TrackingArgs) {
    element.set_property("detect-interval", tracking.detect_interval);
    element.set_property("tracking", tracking.tracking);
    element.set_property("transition-ms", tracking.transition_ms);
}

/// Builds a pipeline from a gst-launch description.
pub fn launch(description: &str) -> Result<gst::Pipeline> {
    let element = gst::parse::launch(description)
        .with_context(|| format!("cannot build pipeline: {description}"))?;
    element
        .downcast::<gst::Pipeline>()
        .map_err(|_| anyhow!("pipeline description did not give a pipeline"))
}

pub fn by_name(pipeline: &gst::Pipeline, name: &str) -> Result<gst::Element> {
    pipeline
        .by_name(name)
        .ok_or_else(|| anyhow!("pipeline has no element named {name}"))
}

/// Plays the pipeline until end of stream or an error, calling `on_tick` about every
/// 100 ms (for progress bars).
pub fn run_to_eos(pipeline: &gst::Pipeline, on_tick: impl FnMut(&gst::Pipeline)) -> Result<()> {
    let result = play(pipeline, on_tick);
    // Always back to Null, also after an error, or the element threads keep running.
    let _ = pipeline.set_state(gst::State::Null);
    result
}

fn play(pipeline: &gst::Pipeline, mut on_tick: impl FnMut(&gst::Pipeline)) -> Result<()> {
    let bus = pipeline.bus().expect("a pipeline has a bus");
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|_| bus_error(&bus).unwrap_or_else(|| anyhow!("pipeline failed to start")))?;
    loop {
        let msg = bus.timed_pop_filtered(
            gst::ClockTime::from_mseconds(100),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        );
        on_tick(pipeline);
        let Some(msg) = msg else { continue };
        match msg.view() {
            gst::MessageView::Eos(..) => return Ok(()),
            gst::MessageView::Error(err) => return Err(describe_error(err)),
            _ => {}
        }
    }
}

fn bus_error(bus: &gst::Bus) -> Option<anyhow::Error> {
    let msg =
        bus.timed_pop_filtered(gst::ClockTime::from_seconds(1), &[gst::MessageType::Error])?;
    match msg.view() {
        gst::MessageView::Error(err) => Some(describe_error(err)),
        _ => None,
    }
}

fn describe_error(err: &gst::message::Error) -> anyhow::Error {
    let source = err
        .src()
        .map(|s| s.name().to_string())
        .unwrap_or_else(|| "pipeline".into());
    match err.debug() {
        Some(debug) if std::env::var_os("REGGAN_DEBUG").is_some() => {
            anyhow!("{source}: {} ({debug})", err.error())
        }
        _ => anyhow!("{source}: {}", err.error()),
    }
}

/// Moves `bar` (in stream milliseconds) to the pipeline's position. Queried on a timer
/// because demuxers only know the duration once they run.
pub fn follow_position(pipeline: &gst::Pipeline, bar: &ProgressBar) {
    if let Some(duration) = pipeline.query_duration::<gst::ClockTime>() {
        bar.set_length(duration.mseconds());
    }
    if let Some(position) = pipeline.query_position::<gst::ClockTime>() {
        bar.set_position(position.mseconds());
    }
    let secs = |ms: u64| ms as f64 / 1000.0;
    bar.set_message(format!(
        "{:.1}/{:.1} s",
        secs(bar.position()),
        secs(bar.length().unwrap_or(0))
    ));
}

/// A bar in stream milliseconds, shown as seconds by [`follow_position`].
pub fn time_bar(label: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:40}] {msg} ({elapsed})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar.with_message("starting")
}

/// Counts the frames that leave `pad` (for fps and for reporting).
pub fn count_buffers(pad: &gst::Pad) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = count.clone();
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        gst::PadProbeReturn::Ok
    });
    count
}

/// Checks that the encoder and muxers the output pipelines need are installed, so a
/// missing package is named instead of a pipeline syntax error.
pub fn require_encoders() -> Result<()> {
    for (factory, package) in [
        ("x264enc", "gstreamer1.0-plugins-ugly"),
        ("mp4mux", "gstreamer1.0-plugins-good"),
        ("matroskamux", "gstreamer1.0-plugins-good"),
    ] {
        if gst::ElementFactory::find(factory).is_none() {
            bail!("GStreamer element '{factory}' is missing (install {package})");
        }
    }
    Ok(())
}
