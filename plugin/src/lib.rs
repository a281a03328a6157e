// SPDX-License-Identifier: MIT OR Apache-2.0
#![allow(clippy::non_send_fields_in_send_ty, unused_doc_comments)]

//! GStreamer plugin `reggan`: the `faceexpression` element, which changes the facial
//! expression of every face in raw RGB-family video, in place, with a model of the
//! reggan project (see `plugin/README.md`).
//!
//! Apps that link this crate can register the plugin without installing the `.so`:
//!
//! ```no_run
//! gst::init().unwrap();
//! gstreggan::plugin_register_static().unwrap();
//! let filter = gst::ElementFactory::make("faceexpression").build().unwrap();
//! ```

use gst::glib;

pub mod faceexpression;

pub use faceexpression::{Detail, Detector, Device, Expression, FaceExpression};

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    faceexpression::register(plugin)
}

gst::plugin_define!(
    reggan,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    // The crate is MIT OR Apache-2.0; GStreamer knows this pair as "MIT/X11".
    "MIT/X11",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_REPOSITORY"),
    env!("BUILD_REL_DATE")
);
