// SPDX-License-Identifier: MIT OR Apache-2.0
//! Embedding `faceexpression` in a Rust application.
//!
//! The plugin is registered statically (no `GST_PLUGIN_PATH` needed), frames come from
//! an `appsrc` (here: a photo, pushed 30 times as a 10 fps stream), the expression and
//! the intensity change while the pipeline is PLAYING, and an `appsink` reads the
//! face region-of-interest metas the element attaches.
//!
//! ```sh
//! source .deps/env.sh
//! cargo run --release -p gst-plugin-reggan --example embed -- [photo.png] [out.png]
//! ```
//! Without arguments it uses `$REGGAN_TEST_IMAGE`; with a second argument the last
//! frame is written there.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow_like::{bail, Result};
use gst::prelude::*;
use gst_video::prelude::*;

/// A tiny error type so the example needs no extra crates.
mod anyhow_like {
    pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;
    macro_rules! bail {
        ($($t:tt)*) => { return Err(format!($($t)*).into()) };
    }
    pub(crate) use bail;
}

const FRAMES: u64 = 30;
const FPS: u64 = 10;

fn main() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let photo = args
        .next()
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("REGGAN_TEST_IMAGE").map(PathBuf::from))
        .ok_or("give a photo, or source .deps/env.sh for $REGGAN_TEST_IMAGE")?;
    let out_png = args.next().map(PathBuf::from);

    gst::init()?;
    gstreggan::plugin_register_static()?;

    let img = reggan::RgbImage::load(&photo)?;
    let info = gst_video::VideoInfo::builder(
        gst_video::VideoFormat::Rgb,
        img.width as u32,
        img.height as u32,
    )
    .fps(gst::Fraction::new(FPS as i32, 1))
    .build()?;

    let appsrc = gst_app::AppSrc::builder()
        .caps(&info.to_caps()?)
        .format(gst::Format::Time)
        .is_live(false)
        // Keep at most one frame queued, so the property changes below land on the
        // frames pushed after them.
        .block(true)
        .max_buffers(1)
        .build();
    let filter = gst::ElementFactory::make("faceexpression")
        .name("fx")
        .property_from_str("expression", "happy")
        .property("intensity", 1.0f64)
        .build()?;
    let appsink = gst_app::AppSink::builder()
        .caps(&info.to_caps()?)
        .sync(false)
        .build();

    let pipeline = gst::Pipeline::new();
    pipeline.add_many([appsrc.upcast_ref(), &filter, appsink.upcast_ref()])?;
    gst::Element::link_many([appsrc.upcast_ref(), &filter, appsink.upcast_ref()])?;

    // The appsink reads the ROI metas (and keeps the last frame).
    let last = Arc::new(Mutex::new(None::<gst::Buffer>));
    let last_in_cb = last.clone();
    appsink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let buffer = sample.buffer_owned().ok_or(gst::FlowError::Error)?;
                let pts = buffer.pts().display();
                let faces: Vec<String> = buffer
                    .iter_meta::<gst_video::VideoRegionOfInterestMeta>()
                    .filter(|m| m.roi_type() == "face")
                    .map(|m| {
                        let (x, y, w, h) = m.rect();
                        let detail = m
                            .param("detection")
                            .map(|s| {
                                format!(
                                    " {} conf {:.2} intensity {:.2}",
                                    s.get::<&str>("expression").unwrap_or("?"),
                                    s.get::<f64>("confidence").unwrap_or(0.0),
                                    s.get::<f64>("intensity").unwrap_or(0.0)
                                )
                            })
                            .unwrap_or_default();
                        format!("face {w}x{h}+{x}+{y}{detail}")
                    })
                    .collect();
                println!(
                    "{pts}: {}",
                    if faces.is_empty() {
                        "no face".into()
                    } else {
                        faces.join(", ")
                    }
                );
                *last_in_cb.lock().unwrap() = Some(buffer);
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );

    pipeline.set_state(gst::State::Playing)?;
    println!(
        "model {} on {}",
        filter.property::<String>("model"),
        filter.property::<String>("provider")
    );

    for i in 0..FRAMES {
        // Properties can change while PLAYING; they apply from the next frame.
        if i == FRAMES / 3 {
            filter.set_property_from_str("expression", "surprised");
        }
        if i == 2 * FRAMES / 3 {
            filter.set_property("intensity", 0.5f64);
        }
        let mut buffer = gst::Buffer::with_size(info.size())?;
        {
            let b = buffer.get_mut().unwrap();
            b.set_pts(gst::ClockTime::SECOND * i / FPS);
            b.set_duration(gst::ClockTime::SECOND / FPS);
            let mut frame = gst_video::VideoFrameRef::from_buffer_ref_writable(b, &info)?;
            let stride = frame.plane_stride()[0] as usize;
            let row = img.width * 3;
            let data = frame.plane_data_mut(0)?;
            for (y, src) in img.data.chunks(row).enumerate() {
                data[y * stride..y * stride + row].copy_from_slice(src);
            }
        }
        if appsrc.push_buffer(buffer).is_err() {
            break;
        }
    }
    appsrc.end_of_stream()?;

    let bus = pipeline.bus().unwrap();
    let mut failed = None;
    for msg in bus.iter_timed(gst::ClockTime::NONE) {
        match msg.view() {
            gst::MessageView::Eos(..) => break,
            gst::MessageView::Error(err) => {
                failed = Some(format!("{} ({:?})", err.error(), err.debug()));
                break;
            }
            _ => (),
        }
    }
    pipeline.set_state(gst::State::Null)?;
    if let Some(e) = failed {
        bail!("pipeline error: {e}");
    }

    if let (Some(path), Some(buffer)) = (out_png, last.lock().unwrap().take()) {
        let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer.as_ref(), &info)?;
        let stride = frame.plane_stride()[0] as usize;
        let data = frame.plane_data(0)?;
        let mut out = reggan::RgbImage::new(img.width, img.height);
        let row = img.width * 3;
        for (y, dst) in out.data.chunks_mut(row).enumerate() {
            dst.copy_from_slice(&data[y * stride..y * stride + row]);
        }
        out.save(&path)?;
        println!("last frame written to {}", path.display());
    }
    Ok(())
}
