// SPDX-License-Identifier: MIT OR Apache-2.0
//! Reads structured values out of fuzzer bytes: every read succeeds (zeros once the bytes
//! run out), so any input maps to some geometry.

pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data, pos: 0 }
    }

    pub fn u8(&mut self) -> u8 {
        let v = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        v
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// A value in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.u16() as usize % (hi - lo + 1)
    }

    pub fn choose<T: Copy>(&mut self, options: &[T]) -> T {
        options[self.u8() as usize % options.len()]
    }

    /// Mostly a value in `lo..hi`, sometimes an extreme one (huge, negative, infinite,
    /// NaN, a raw bit pattern): geometry from a confused detector or a broken model.
    pub fn f32_in(&mut self, lo: f32, hi: f32) -> f32 {
        match self.u8() {
            0 => f32::NAN,
            1 => f32::INFINITY,
            2 => f32::NEG_INFINITY,
            3 => f32::from_bits(self.u32()),
            4 => -1e9,
            5 => 1e9,
            _ => lo + (hi - lo) * (self.u16() as f32 / u16::MAX as f32),
        }
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        &self.data[self.pos.min(self.data.len())..]
    }
}
