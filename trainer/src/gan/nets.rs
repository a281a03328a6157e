//! The generators and discriminators of RegGAN, US-GAN and SARGAN in tch, each with
//! an `emit` that writes the same arithmetic as ONNX nodes (see [`super::onnx`]).
//!
//! Layers are plain structs holding their parameter tensors (created in a VarStore
//! path), so the exporter reads exactly the tensors training updated.

use tch::nn::{Init, Path};
use tch::{Kind, Tensor};

use super::onnx::Onnx;

/// A (transposed) 2-D convolution with bias, zero padding.
#[derive(Debug)]
pub struct Conv {
    pub w: Tensor,
    pub b: Tensor,
    pub stride: i64,
    pub pad: i64,
    pub transposed: bool,
}

impl Conv {
    pub fn new(p: &Path, cin: i64, cout: i64, k: i64, stride: i64, pad: i64) -> Self {
        let std = (2.0 / (cin * k * k) as f64).sqrt();
        Conv {
            w: p.var(
                "weight",
                &[cout, cin, k, k],
                Init::Randn {
                    mean: 0.0,
                    stdev: std,
                },
            ),
            b: p.var("bias", &[cout], Init::Const(0.0)),
            stride,
            pad,
            transposed: false,
        }
    }

    /// Transposed convolution (weight [cin, cout, k, k], as in PyTorch and ONNX).
    pub fn transposed(p: &Path, cin: i64, cout: i64, k: i64, stride: i64, pad: i64) -> Self {
        let std = (2.0 / (cin * k * k / (stride * stride)).max(1) as f64).sqrt();
        Conv {
            w: p.var(
                "weight",
                &[cin, cout, k, k],
                Init::Randn {
                    mean: 0.0,
                    stdev: std,
                },
            ),
            b: p.var("bias", &[cout], Init::Const(0.0)),
            stride,
            pad,
            transposed: true,
        }
    }

    /// Scales the initial weights (e.g. a near-zero last layer so a residual generator
    /// starts near the identity).
    pub fn scaled(self, s: f64) -> Self {
        tch::no_grad(|| {
            let mut w = self.w.shallow_clone();
            let _ = w.f_mul_scalar_(s);
        });
        self
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let (s, p) = (self.stride, self.pad);
        if self.transposed {
            x.conv_transpose2d(&self.w, Some(&self.b), [s, s], [p, p], [0, 0], 1, [1, 1])
        } else {
            x.conv2d(&self.w, Some(&self.b), [s, s], [p, p], [1, 1], 1)
        }
    }

    pub fn emit(&self, g: &mut Onnx, x: &str) -> String {
        g.conv(x, self)
    }
}

#[derive(Debug)]
pub struct PRelu {
    pub w: Tensor,
}

impl PRelu {
    pub fn new(p: &Path, c: i64) -> Self {
        PRelu {
            w: p.var("weight", &[c], Init::Const(0.25)),
        }
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.prelu(&self.w)
    }
    pub fn emit(&self, g: &mut Onnx, x: &str) -> String {
        g.prelu(x, &self.w)
    }
}

#[derive(Debug)]
pub struct InstanceNorm {
    pub w: Tensor,
    pub b: Tensor,
}

pub const IN_EPS: f64 = 1e-5;

impl InstanceNorm {
    pub fn new(p: &Path, c: i64) -> Self {
        InstanceNorm {
            w: p.var("weight", &[c], Init::Const(1.0)),
            b: p.var("bias", &[c], Init::Const(0.0)),
        }
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.instance_norm(
            Some(&self.w),
            Some(&self.b),
            None::<&Tensor>,
            None::<&Tensor>,
            true,
            0.1,
            IN_EPS,
            false,
        )
    }
    pub fn emit(&self, g: &mut Onnx, x: &str) -> String {
        g.instance_norm(x, &self.w, &self.b)
    }
}

pub fn up2(x: &Tensor) -> Tensor {
    let s = x.size();
    x.upsample_nearest2d([s[2] * 2, s[3] * 2], 2.0, 2.0)
}

// ---------------------------------------------------------------- RegGAN refinement

/// Pre-activation conv block: PReLU -> 3x3 conv.
#[derive(Debug)]
pub struct Pcb {
    act: PRelu,
    conv: Conv,
}

impl Pcb {
    pub fn new(p: &Path, cin: i64, cout: i64, stride: i64) -> Self {
        Pcb {
            act: PRelu::new(&(p / "act"), cin),
            conv: Conv::new(&(p / "conv"), cin, cout, 3, stride, 1),
        }
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.conv.forward(&self.act.forward(x))
    }
    pub fn emit(&self, g: &mut Onnx, x: &str) -> String {
        let a = self.act.emit(g, x);
        self.conv.emit(g, &a)
    }
}

/// Hourglass: skip branch at this scale + (down, inner, up) branch, summed.
#[derive(Debug)]
pub struct Hourglass {
    skip: Pcb,
    down: Pcb,
    inner: Option<Box<Hourglass>>,
    low: Pcb,
}

impl Hourglass {
    pub fn new(p: &Path, c: i64, levels: usize) -> Self {
        Hourglass {
            skip: Pcb::new(&(p / "skip"), c, c, 1),
            down: Pcb::new(&(p / "down"), c, c, 2),
            inner: (levels > 1).then(|| Box::new(Hourglass::new(&(p / "inner"), c, levels - 1))),
            low: Pcb::new(&(p / "low"), c, c, 1),
        }
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut low = self.down.forward(x);
        if let Some(h) = &self.inner {
            low = h.forward(&low);
        }
        self.skip.forward(x) + up2(&self.low.forward(&low))
    }
    pub fn emit(&self, g: &mut Onnx, x: &str) -> String {
        let mut low = self.down.emit(g, x);
        if let Some(h) = &self.inner {
            low = h.emit(g, &low);
        }
        let low = self.low.emit(g, &low);
        let up = g.up2(&low);
        let skip = self.skip.emit(g, x);
        g.add(&skip, &up)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BlockKind {
    Encode,
    Latent,
    Decode,
}

/// EAB / LAB / DAB: y = skip(x) + F(x) ⊗ σ(conv(HG(F(x)))).
#[derive(Debug)]
pub struct AttentionBlock {
    kind: BlockKind,
    f1: Pcb,
    f2: Pcb,
    skip: Option<Conv>,
    hg: Hourglass,
    att: Conv,
}

impl AttentionBlock {
    pub fn new(p: &Path, kind: BlockKind, cin: i64, cout: i64, hg_levels: usize) -> Self {
        let (s2, skip) = match kind {
            BlockKind::Encode => (2, Some(Conv::new(&(p / "skip"), cin, cout, 1, 2, 0))),
            BlockKind::Latent => (1, None),
            BlockKind::Decode => (
                1,
                (cin != cout).then(|| Conv::new(&(p / "skip"), cin, cout, 1, 1, 0)),
            ),
        };
        AttentionBlock {
            kind,
            f1: Pcb::new(&(p / "f1"), cin, cout, 1),
            f2: Pcb::new(&(p / "f2"), cout, cout, s2),
            skip,
            hg: Hourglass::new(&(p / "hg"), cout, hg_levels),
            att: Conv::new(&(p / "att"), cout, cout, 3, 1, 1),
        }
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let x = if self.kind == BlockKind::Decode {
            up2(x)
        } else {
            x.shallow_clone()
        };
        let f = self.f2.forward(&self.f1.forward(&x));
        let a = self.att.forward(&self.hg.forward(&f)).sigmoid();
        let s = match &self.skip {
            Some(c) => c.forward(&x),
            None => x,
        };
        s + f * a
    }
    pub fn emit(&self, g: &mut Onnx, x: &str) -> String {
        let x = if self.kind == BlockKind::Decode {
            g.up2(x)
        } else {
            x.to_string()
        };
        let f1 = self.f1.emit(g, &x);
        let f = self.f2.emit(g, &f1);
        let h = self.hg.emit(g, &f);
        let a = self.att.emit(g, &h);
        let a = g.unary("Sigmoid", &a);
        let fa = g.mul(&f, &a);
        let s = match &self.skip {
            Some(c) => c.emit(g, &x),
            None => x,
        };
        g.add(&s, &fa)
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct RefinerConfig {
    /// Channels at full resolution.
    pub base: i64,
    /// Channels after each of the three EABs.
    pub enc: [i64; 3],
    pub labs: usize,
    pub hg_levels: usize,
    /// Discriminator base channels and layers (PatchGAN), per scale.
    pub d_base: i64,
}

/// The refinement network: head conv, 3 EAB, N LAB, 3 DAB, tail conv; global residual
/// to its input (the MR image): y = clip(x + G(x), 0, 1).
#[derive(Debug)]
pub struct Refiner {
    head: Conv,
    blocks: Vec<AttentionBlock>,
    tail_act: PRelu,
    tail: Conv,
}

impl Refiner {
    pub fn new(p: &Path, c: &RefinerConfig) -> Self {
        let e = c.enc;
        let mut blocks = Vec::new();
        let chans = [c.base, e[0], e[1], e[2]];
        for j in 0..3 {
            let hg = c.hg_levels.min(4 - j); // coarser scales get shallower hourglasses
            blocks.push(AttentionBlock::new(
                &(p / format!("eab{j}")),
                BlockKind::Encode,
                chans[j],
                chans[j + 1],
                hg,
            ));
        }
        for j in 0..c.labs {
            blocks.push(AttentionBlock::new(
                &(p / format!("lab{j}")),
                BlockKind::Latent,
                e[2],
                e[2],
                c.hg_levels.min(2),
            ));
        }
        for j in 0..3 {
            let hg = c.hg_levels.min(j + 2);
            blocks.push(AttentionBlock::new(
                &(p / format!("dab{j}")),
                BlockKind::Decode,
                chans[3 - j],
                chans[2 - j],
                hg,
            ));
        }
        Refiner {
            head: Conv::new(&(p / "head"), 3, c.base, 3, 1, 1),
            blocks,
            tail_act: PRelu::new(&(p / "tail_act"), c.base),
            tail: Conv::new(&(p / "tail"), c.base, 3, 3, 1, 1).scaled(0.0),
        }
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = self.head.forward(x);
        for b in &self.blocks {
            h = b.forward(&h);
        }
        let r = self.tail.forward(&self.tail_act.forward(&h));
        (x + r).clamp(0.0, 1.0)
    }
    pub fn emit(&self, g: &mut Onnx, x: &str) -> String {
        let mut h = self.head.emit(g, x);
        for b in &self.blocks {
            h = b.emit(g, &h);
        }
        let a = self.tail_act.emit(g, &h);
        let r = self.tail.emit(g, &a);
        let y = g.add(x, &r);
        g.clip01(&y)
    }
}

fn lrelu(x: &Tensor) -> Tensor {
    x.maximum(&(x * 0.2))
}

/// PatchGAN discriminator (no normalisation; LeakyReLU 0.2); returns its feature maps
/// (for feature matching) and the patch logits last.
#[derive(Debug)]
pub struct PatchD {
    convs: Vec<Conv>,
}

impl PatchD {
    pub fn new(p: &Path, cin: i64, base: i64) -> Self {
        let c = [cin, base, base * 2, base * 4, base * 4];
        let mut convs = Vec::new();
        for i in 0..4 {
            let stride = if i < 3 { 2 } else { 1 };
            convs.push(Conv::new(
                &(p / format!("c{i}")),
                c[i],
                c[i + 1],
                4,
                stride,
                if i < 3 { 1 } else { 2 },
            ));
        }
        convs.push(Conv::new(&(p / "out"), c[4], 1, 3, 1, 1));
        PatchD { convs }
    }
    pub fn forward(&self, x: &Tensor) -> Vec<Tensor> {
        let mut out = Vec::new();
        let mut h = x.shallow_clone();
        for (i, c) in self.convs.iter().enumerate() {
            h = c.forward(&h);
            if i + 1 < self.convs.len() {
                h = lrelu(&h);
            }
            out.push(h.shallow_clone());
        }
        out
    }
}

/// Three PatchGANs on an image pyramid (1, 1/2, 1/4), conditioned on the MR input.
#[derive(Debug)]
pub struct MultiScaleD {
    pub ds: Vec<PatchD>,
}

impl MultiScaleD {
    pub fn new(p: &Path, base: i64) -> Self {
        MultiScaleD {
            ds: (0..3)
                .map(|i| PatchD::new(&(p / format!("d{i}")), 6, base))
                .collect(),
        }
    }
    /// Per scale: features..., logits.
    pub fn forward(&self, cond: &Tensor, img: &Tensor) -> Vec<Vec<Tensor>> {
        let mut x = Tensor::cat(&[cond, img], 1);
        let mut out = Vec::new();
        for d in &self.ds {
            out.push(d.forward(&x));
            x = x.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>);
        }
        out
    }
}

// ---------------------------------------------------------------- US-GAN / SARGAN

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct StarConfig {
    /// Generator channels after the first encoding layer (x2, x4 after the next two).
    pub base: i64,
    /// Residual blocks (US-GAN: vanilla; SARGAN: spatial-attention).
    pub blocks: usize,
    pub attention: bool,
    /// Discriminator base channels and strided layers.
    pub d_base: i64,
    pub d_layers: usize,
}

/// Number of domains: the six expressions, then neutral (index 6, training only).
pub const DOMAINS: i64 = 7;

/// conv -> IN -> ReLU.
#[derive(Debug)]
struct ConvInRelu {
    conv: Conv,
    norm: InstanceNorm,
    relu: bool,
}

impl ConvInRelu {
    fn new(conv: Conv, p: &Path, c: i64, relu: bool) -> Self {
        ConvInRelu {
            conv,
            norm: InstanceNorm::new(&(p / "in"), c),
            relu,
        }
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.norm.forward(&self.conv.forward(x));
        if self.relu {
            h.relu()
        } else {
            h
        }
    }
    fn emit(&self, g: &mut Onnx, x: &str) -> String {
        let h = self.conv.emit(g, x);
        let h = self.norm.emit(g, &h);
        if self.relu {
            g.unary("Relu", &h)
        } else {
            h
        }
    }
}

/// Vanilla residual block (US-GAN) or SARB (SARGAN): f = FU(φ0);
/// φ1 = φ0 + f (vanilla) or φ0 + α ⊗ f with α = σ(conv(SEDN(f))).
#[derive(Debug)]
struct ResBlock {
    f1: ConvInRelu,
    f2: ConvInRelu,
    /// SEDN: two strided convs, two transposed convs with symmetric skip links, conv.
    att: Option<[Conv; 5]>,
}

impl ResBlock {
    fn new(p: &Path, c: i64, attention: bool) -> Self {
        ResBlock {
            f1: ConvInRelu::new(Conv::new(&(p / "f1"), c, c, 3, 1, 1), &(p / "f1"), c, true),
            f2: ConvInRelu::new(Conv::new(&(p / "f2"), c, c, 3, 1, 1), &(p / "f2"), c, true),
            att: attention.then(|| {
                [
                    Conv::new(&(p / "e1"), c, c, 4, 2, 1),
                    Conv::new(&(p / "e2"), c, c, 4, 2, 1),
                    Conv::transposed(&(p / "d1"), c, c, 4, 2, 1),
                    Conv::transposed(&(p / "d2"), c, c, 4, 2, 1),
                    Conv::new(&(p / "a"), c, c, 3, 1, 1),
                ]
            }),
        }
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        let f = self.f2.forward(&self.f1.forward(x));
        match &self.att {
            None => x + f,
            Some([e1, e2, d1, d2, a]) => {
                let h1 = e1.forward(&f).relu();
                let h2 = e2.forward(&h1).relu();
                let u1 = d1.forward(&h2).relu() + h1;
                let u2 = d2.forward(&u1).relu() + &f;
                let alpha = a.forward(&u2).sigmoid();
                x + alpha * f
            }
        }
    }
    fn emit(&self, g: &mut Onnx, x: &str) -> String {
        let f1 = self.f1.emit(g, x);
        let f = self.f2.emit(g, &f1);
        match &self.att {
            None => g.add(x, &f),
            Some([e1, e2, d1, d2, a]) => {
                let h1 = e1.emit(g, &f);
                let h1 = g.unary("Relu", &h1);
                let h2 = e2.emit(g, &h1);
                let h2 = g.unary("Relu", &h2);
                let u1 = d1.emit(g, &h2);
                let u1 = g.unary("Relu", &u1);
                let u1 = g.add(&u1, &h1);
                let u2 = d2.emit(g, &u1);
                let u2 = g.unary("Relu", &u2);
                let u2 = g.add(&u2, &f);
                let al = a.emit(g, &u2);
                let al = g.unary("Sigmoid", &al);
                let af = g.mul(&al, &f);
                g.add(x, &af)
            }
        }
    }
}

/// US-GAN / SARGAN generator: input = face ⊕ tiled one-hot domain; 3 encoding layers,
/// residual block(s), 2 transposed-conv decoding layers + 7x7 conv (tanh);
/// ultimate skip y = clip(x + G(x, e), 0, 1).
#[derive(Debug)]
pub struct StarG {
    enc: Vec<ConvInRelu>,
    res: Vec<ResBlock>,
    dec: Vec<ConvInRelu>,
    out: Conv,
}

impl StarG {
    pub fn new(p: &Path, c: &StarConfig) -> Self {
        let b = c.base;
        let cin = 3 + DOMAINS;
        StarG {
            enc: vec![
                ConvInRelu::new(
                    Conv::new(&(p / "enc0"), cin, b, 7, 1, 3),
                    &(p / "enc0"),
                    b,
                    true,
                ),
                ConvInRelu::new(
                    Conv::new(&(p / "enc1"), b, 2 * b, 4, 2, 1),
                    &(p / "enc1"),
                    2 * b,
                    true,
                ),
                ConvInRelu::new(
                    Conv::new(&(p / "enc2"), 2 * b, 4 * b, 4, 2, 1),
                    &(p / "enc2"),
                    4 * b,
                    true,
                ),
            ],
            res: (0..c.blocks)
                .map(|i| ResBlock::new(&(p / format!("res{i}")), 4 * b, c.attention))
                .collect(),
            dec: vec![
                ConvInRelu::new(
                    Conv::transposed(&(p / "dec0"), 4 * b, 2 * b, 4, 2, 1),
                    &(p / "dec0"),
                    2 * b,
                    true,
                ),
                ConvInRelu::new(
                    Conv::transposed(&(p / "dec1"), 2 * b, b, 4, 2, 1),
                    &(p / "dec1"),
                    b,
                    true,
                ),
            ],
            out: Conv::new(&(p / "out"), b, 3, 7, 1, 3).scaled(0.1),
        }
    }

    /// x [N,3,S,S], domain indices [N] (int64).
    pub fn forward(&self, x: &Tensor, domain: &Tensor) -> Tensor {
        let s = x.size();
        let onehot = domain
            .onehot(DOMAINS)
            .to_kind(Kind::Float)
            .view([s[0], DOMAINS, 1, 1])
            .expand([s[0], DOMAINS, s[2], s[3]], false);
        let mut h = Tensor::cat(&[x, &onehot], 1);
        for l in &self.enc {
            h = l.forward(&h);
        }
        for r in &self.res {
            h = r.forward(&h);
        }
        for l in &self.dec {
            h = l.forward(&h);
        }
        (x + self.out.forward(&h).tanh()).clamp(0.0, 1.0)
    }

    pub fn emit(&self, g: &mut Onnx, x: &str, expression: &str) -> String {
        let tiled = g.onehot_tiled(expression, DOMAINS);
        let mut h = g.concat(&[x, &tiled], DOMAINS + 3);
        for l in &self.enc {
            h = l.emit(g, &h);
        }
        for r in &self.res {
            h = r.emit(g, &h);
        }
        for l in &self.dec {
            h = l.emit(g, &h);
        }
        let o = self.out.emit(g, &h);
        let o = g.unary("Tanh", &o);
        let y = g.add(x, &o);
        g.clip01(&y)
    }
}

/// StarGAN-style discriminator: strided 4x4 convs with LeakyReLU(0.01); a real/fake
/// patch head and an expression-classification head.
#[derive(Debug)]
pub struct StarD {
    convs: Vec<Conv>,
    src: Conv,
    cls: Conv,
}

impl StarD {
    pub fn new(p: &Path, c: &StarConfig, size: i64) -> Self {
        let mut convs = Vec::new();
        let mut ch = 3;
        for i in 0..c.d_layers {
            let out = c.d_base << i;
            convs.push(Conv::new(&(p / format!("c{i}")), ch, out, 4, 2, 1));
            ch = out;
        }
        let k = size >> c.d_layers;
        StarD {
            convs,
            src: Conv::new(&(p / "src"), ch, 1, 3, 1, 1),
            cls: Conv::new(&(p / "cls"), ch, DOMAINS, k, 1, 0),
        }
    }
    /// (patch scores [N,1,h,w], class logits [N,DOMAINS]).
    pub fn forward(&self, x: &Tensor) -> (Tensor, Tensor) {
        let mut h = x.shallow_clone();
        for c in &self.convs {
            let y = c.forward(&h);
            h = y.maximum(&(&y * 0.01));
        }
        let n = x.size()[0];
        (
            self.src.forward(&h),
            self.cls.forward(&h).view([n, DOMAINS]),
        )
    }
}
