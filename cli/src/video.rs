//! The pipeline `reggan apply` runs on a recording: the video is decoded, changed by the
//! `faceexpression` element and encoded as H.264; every audio track is passed through
//! as it is (parsed, not decoded, not re-encoded), into the same container type.
//!
//! ```text
//! filesrc ! parsebin ─ video ─> queue ! decodebin ! RGB ! faceexpression ! I420 ! x264enc ─> mux ! filesink
//!                    └ audio ─> queue ───────────────────────────────────────────────────> mux
//! ```
//!
//! parsebin exposes all its pads in one go before any data flows, so the muxer gets its
//! audio pads before it starts writing. Timestamps pass through untouched, so the frame
//! rate (also a variable one) and the audio's place in time are kept.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use gst::prelude::*;

use crate::gstutil;

/// The gst-launch description of everything but the audio branches, which are linked
/// when parsebin shows what the file holds. I420 is forced before x264enc because from
/// RGB it would otherwise pick 4:4:4, which most players cannot decode.
pub fn description(output: &Path, side_by_side: bool) -> String {
    let mux = if crate::apply::extension(output) == "mkv" {
        "matroskamux"
    } else {
        "mp4mux"
    };
    // `even`: H.264 in 4:2:0 needs even sides (`pad_to_even_sides`).
    let encode = "videobox name=even ! videoconvert ! video/x-raw,format=I420 ! \
                  x264enc speed-preset=faster pass=qual quantizer=20 ! queue ! mux.";
    // `videoflip`: a phone video stored sideways with a display rotation (which the
    // muxer cannot write back) is turned upright, for the detector and for players.
    // I420 or NV12, what decoders give (videoconvert passes them through; anything
    // else becomes I420): the element converts only what it needs and writes back
    // only the faces, cheaper than packing every pixel to BGRx and back (at 1280x720
    // 0.75 + 1.81 ms).
    let decode = "queue name=vin ! decodebin ! videoflip video-direction=auto ! videoconvert ! \
                  capsfilter name=decoded caps=video/x-raw,format={I420,NV12}";
    let video = if side_by_side {
        format!(
            "{decode} ! tee name=t \
             t. ! queue ! comp.sink_0 \
             t. ! queue ! faceexpression name=fx ! comp.sink_1 \
             compositor name=comp ! {encode}"
        )
    } else {
        format!("{decode} ! faceexpression name=fx ! {encode}")
    };
    format!("filesrc name=src ! parsebin name=demux {video} {mux} name=mux ! filesink name=sink")
}

/// The size a video with an odd side was padded to, once its caps are known.
pub type PaddedSize = Arc<Mutex<Option<(i32, i32)>>>;

/// H.264 in 4:2:0 (what every player plays) codes whole 2x2 chroma blocks, so x264
/// cannot take a frame with an odd side. Such a frame gets one black column (right)
/// or row (bottom) added, set on `even` from the caps before they reach it: every
/// pixel of the video is kept. Returns the padded size once known, for the report.
pub fn pad_to_even_sides(pipeline: &gst::Pipeline) -> Result<PaddedSize> {
    let even = gstutil::by_name(pipeline, "even")?;
    let sink = even.static_pad("sink").expect("videobox has a sink pad");
    let padded = Arc::new(Mutex::new(None));
    let report = padded.clone();
    sink.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
        if let Some(gst::PadProbeData::Event(ref event)) = info.data {
            if let gst::EventView::Caps(caps) = event.view() {
                let size = caps.caps().structure(0).and_then(|s| {
                    Some((s.get::<i32>("width").ok()?, s.get::<i32>("height").ok()?))
                });
                if let Some((w, h)) = size {
                    // videobox adds a border for negative values.
                    even.set_property("right", -(w % 2));
                    even.set_property("bottom", -(h % 2));
                    let odd = w % 2 == 1 || h % 2 == 1;
                    *report.lock().expect("not poisoned") = odd.then_some((w + w % 2, h + h % 2));
                }
            }
        }
        gst::PadProbeReturn::Ok
    });
    Ok(padded)
}

/// Links parsebin's streams as they appear: the first video stream into the
/// faceexpression branch, each audio stream straight to the muxer. A stream the
/// container cannot hold without re-encoding fails the file with a message that says
/// which codec and what to do.
pub fn link_streams(pipeline: &gst::Pipeline) -> Result<()> {
    let demux = gstutil::by_name(pipeline, "demux")?;
    let video_in = gstutil::by_name(pipeline, "vin")?
        .static_pad("sink")
        .expect("queue has a sink pad");
    let mux = gstutil::by_name(pipeline, "mux")?;
    let weak_pipeline = pipeline.downgrade();
    demux.connect_pad_added(move |demux, pad| {
        let Some(pipeline) = weak_pipeline.upgrade() else {
            return;
        };
        let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
        let Some(kind) = caps.structure(0).map(|s| s.name().to_string()) else {
            return;
        };
        let linked = if kind.starts_with("video/") {
            if video_in.is_linked() {
                // A second video stream (another angle, a thumbnail track) is dropped.
                discard(&pipeline, pad)
            } else {
                pad.link(&video_in)
                    .map(|_| ())
                    .map_err(|e| format!("cannot link the video stream: {e:?}"))
            }
        } else if kind.starts_with("audio/") {
            pass_audio(&pipeline, &mux, pad, &caps)
        } else {
            // Subtitles, data tracks: not carried over.
            discard(&pipeline, pad)
        };
        if let Err(message) = linked {
            gst::element_error!(demux, gst::StreamError::Format, ("{}", message));
        }
    });
    let video_in = gstutil::by_name(pipeline, "vin")?
        .static_pad("sink")
        .expect("queue has a sink pad");
    demux.connect_no_more_pads(move |demux| {
        if !video_in.is_linked() {
            gst::element_error!(
                demux,
                gst::StreamError::WrongType,
                ("the file has no video stream")
            );
        }
    });
    Ok(())
}

/// queue ! mux, for an audio stream the muxer takes as it is.
fn pass_audio(
    pipeline: &gst::Pipeline,
    mux: &gst::Element,
    pad: &gst::Pad,
    caps: &gst::Caps,
) -> Result<(), String> {
    let template = mux
        .pad_template("audio_%u")
        .ok_or_else(|| format!("{} has no audio input", mux.name()))?;
    if !template.caps().can_intersect(caps) {
        return Err(format!(
            "the audio ({}) cannot go into this container without re-encoding; \
             write to .mkv instead",
            caps.structure(0).map(|s| s.name().as_str()).unwrap_or("?")
        ));
    }
    // Unbounded: the demuxer pushes audio and video from one thread, and the muxer
    // waits for video that x264enc holds back for dozens of frames (look-ahead); a
    // bounded audio queue would fill, block the demuxer and starve the video. Compressed
    // audio is small (about 16 KB a second).
    let queue = gst::ElementFactory::make("queue")
        .property("max-size-buffers", 0u32)
        .property("max-size-bytes", 0u32)
        .property("max-size-time", 0u64)
        .build()
        .map_err(|e| e.to_string())?;
    pipeline.add(&queue).map_err(|e| e.to_string())?;
    queue.sync_state_with_parent().map_err(|e| e.to_string())?;
    let mux_pad = mux
        .request_pad_simple("audio_%u")
        .ok_or_else(|| "the muxer gave no audio pad".to_string())?;
    pad.link(&queue.static_pad("sink").expect("queue has a sink pad"))
        .map_err(|e| format!("cannot link the audio stream: {e:?}"))?;
    queue
        .static_pad("src")
        .expect("queue has a src pad")
        .link(&mux_pad)
        .map_err(|e| format!("cannot link the audio stream to the muxer: {e:?}"))?;
    Ok(())
}

fn discard(pipeline: &gst::Pipeline, pad: &gst::Pad) -> Result<(), String> {
    let sink = gst::ElementFactory::make("fakesink")
        .property("sync", false)
        .property("async", false)
        .build()
        .map_err(|e| e.to_string())?;
    pipeline.add(&sink).map_err(|e| e.to_string())?;
    sink.sync_state_with_parent().map_err(|e| e.to_string())?;
    pad.link(&sink.static_pad("sink").expect("fakesink has a sink pad"))
        .map(|_| ())
        .map_err(|e| format!("cannot drop stream: {e:?}"))
}

/// Sets the creation and modification times that mp4mux writes (the wall clock, in the
/// mvhd, tkhd and mdhd boxes) to 0, "unknown", as `ffmpeg -fflags +bitexact` does: the
/// same input and options then give a byte-identical file, so a resumed batch can be
/// checked against an uninterrupted one.
pub fn clear_mp4_times(path: &Path) -> Result<()> {
    let mut data =
        std::fs::read(path).with_context(|| format!("cannot read back {}", path.display()))?;
    let mut found = 0;
    clear_times_in(&mut data, &mut found);
    if found > 0 {
        std::fs::write(path, &data).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Walks the boxes of `data`, entering the containers on the way to the header boxes.
fn clear_times_in(data: &mut [u8], found: &mut usize) {
    let mut at = 0;
    while at + 8 <= data.len() {
        let size32 = u32::from_be_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        let kind: [u8; 4] = data[at + 4..at + 8].try_into().unwrap();
        let (header, size) = match size32 {
            0 => (8, data.len() - at),
            1 if at + 16 <= data.len() => (
                16,
                u64::from_be_bytes(data[at + 8..at + 16].try_into().unwrap()) as usize,
            ),
            n => (8, n),
        };
        if size < header || at + size > data.len() {
            return;
        }
        let body = &mut data[at + header..at + size];
        match &kind {
            b"moov" | b"trak" | b"mdia" => clear_times_in(body, found),
            b"mvhd" | b"tkhd" | b"mdhd" if !body.is_empty() => {
                // version 0: 32-bit creation + modification time; version 1: 64-bit.
                let width = if body[0] == 1 { 16 } else { 8 };
                if body.len() >= 4 + width {
                    body[4..4 + width].fill(0);
                    *found += 1;
                }
            }
            _ => {}
        }
        at += size;
    }
}
