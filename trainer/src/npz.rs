//! Minimal `.npy` / `.npz` reader (numpy's format, version 1-3 headers, C order,
//! little-endian numbers and byte strings), enough for `scipy.sparse.save_npz` files.
//! tch's own reader rejects the `|S3` string array those files carry.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// One array's values (converted to a wide type of its kind) and its shape.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    Float(Vec<f64>),
    Int(Vec<i64>),
    Bytes(Vec<Vec<u8>>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub values: Values,
}

impl Array {
    pub fn len(&self) -> usize {
        match &self.values {
            Values::Float(v) => v.len(),
            Values::Int(v) => v.len(),
            Values::Bytes(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn floats(&self, name: &str) -> Result<&[f64]> {
        match &self.values {
            Values::Float(v) => Ok(v),
            _ => bail!("array {name} is not floating point"),
        }
    }

    pub fn ints(&self, name: &str) -> Result<&[i64]> {
        match &self.values {
            Values::Int(v) => Ok(v),
            _ => bail!("array {name} is not integer"),
        }
    }
}

/// Parses one `.npy` byte buffer.
pub fn parse_npy(bytes: &[u8]) -> Result<Array> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        bail!("not a .npy array (bad magic)");
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => bail!("unsupported .npy version {v}"),
    };
    let header = bytes
        .get(start..start + len)
        .context("truncated .npy header")?;
    let header = std::str::from_utf8(header).context(".npy header is not text")?;
    let data = &bytes[start + len..];
    let field = |key: &str| -> Result<&str> {
        let at = header
            .find(&format!("'{key}'"))
            .with_context(|| format!(".npy header lacks '{key}': {header}"))?;
        let rest = header[at + key.len() + 2..].trim_start();
        Ok(rest.strip_prefix(':').unwrap_or(rest).trim_start())
    };
    let descr = field("descr")?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|d| d.split('\'').next())
        .with_context(|| format!("cannot read descr in {header}"))?;
    if field("fortran_order")?.starts_with("True") {
        bail!("Fortran-order arrays are not supported");
    }
    let shape_text = field("shape")?;
    let shape_text = shape_text
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .with_context(|| format!("cannot read shape in {header}"))?;
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().with_context(|| format!("bad dimension '{s}'")))
        .collect::<Result<_>>()?;
    let count: usize = shape.iter().product();
    let need = |size: usize| -> Result<&[u8]> {
        data.get(..count * size).with_context(|| {
            format!(
                "array data truncated: {} bytes for {count} x {size}",
                data.len()
            )
        })
    };
    let (order, kind) = descr.split_at(1);
    if order == ">" {
        bail!("big-endian arrays are not supported ({descr})");
    }
    let values = match kind {
        "f8" => Values::Float(
            need(8)?
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
        ),
        "f4" => Values::Float(
            need(4)?
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64)
                .collect(),
        ),
        "i8" => Values::Int(
            need(8)?
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
        ),
        "i4" => Values::Int(
            need(4)?
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64)
                .collect(),
        ),
        k if k.starts_with('S') => {
            let n: usize = k[1..]
                .parse()
                .with_context(|| format!("bad string dtype {descr}"))?;
            Values::Bytes(
                need(n)?
                    .chunks_exact(n.max(1))
                    .map(|c| c.iter().copied().take_while(|&b| b != 0).collect())
                    .collect(),
            )
        }
        _ => bail!("unsupported dtype {descr}"),
    };
    Ok(Array { shape, values })
}

/// Reads every array of an `.npz` file (stored or deflated members), by name without `.npy`.
pub fn read_npz(path: &Path) -> Result<BTreeMap<String, Array>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .with_context(|| format!("{} is not an npz (zip) file", path.display()))?;
    let mut out = BTreeMap::new();
    for i in 0..zip.len() {
        let mut member = zip.by_index(i)?;
        let name = member.name().to_string();
        let mut bytes = Vec::new();
        member
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read {name} in {}", path.display()))?;
        let array = parse_npy(&bytes).with_context(|| format!("{name} in {}", path.display()))?;
        out.insert(
            name.strip_suffix(".npy").unwrap_or(&name).to_string(),
            array,
        );
    }
    Ok(out)
}
