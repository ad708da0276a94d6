//! Memory-mapped safetensors weights, single file or sharded
//! (`model.safetensors.index.json`). Tensors stay in their stored dtype
//! (bf16, f16 or f32); compute widens them tile by tile.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use super::merge::Merged;
use crate::{Error, Result};

/// Stored element type of a weight tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    /// Round f32 values to this dtype and back, in place (nearest, ties to
    /// even: what storing them in it keeps).
    pub fn round(self, v: &mut [f32]) {
        match self {
            DType::F32 => {}
            DType::BF16 => v.iter_mut().for_each(|x| *x = round_bf16(*x)),
            DType::F16 => v
                .iter_mut()
                .for_each(|x| *x = half::f16::from_f32(*x).to_f32()),
        }
    }

    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }
}

/// `bf16::from_f32(x).to_f32()` without branches (the loop vectorises):
/// round to nearest even on the upper 16 bits; a NaN stays a quiet NaN.
#[inline]
pub(crate) fn round_bf16(x: f32) -> f32 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) & 0xffff_0000;
    let nan = (b | 0x0040_0000) & 0xffff_0000;
    f32::from_bits(if (b & 0x7fff_ffff) > 0x7f80_0000 {
        nan
    } else {
        rounded
    })
}

impl std::str::FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "bf16" => Ok(DType::BF16),
            "f16" => Ok(DType::F16),
            "f32" => Ok(DType::F32),
            _ => Err(format!("unknown dtype `{s}`; expected bf16, f16 or f32")),
        }
    }
}

/// A borrowed, typed view of a tensor's bytes inside a mapped file.
#[derive(Clone, Copy)]
pub enum Stored<'a> {
    F32(&'a [f32]),
    F16(&'a [half::f16]),
    BF16(&'a [half::bf16]),
}

impl Stored<'_> {
    pub fn len(&self) -> usize {
        match self {
            Stored::F32(s) => s.len(),
            Stored::F16(s) => s.len(),
            Stored::BF16(s) => s.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn dtype(&self) -> DType {
        match self {
            Stored::F32(_) => DType::F32,
            Stored::F16(_) => DType::F16,
            Stored::BF16(_) => DType::BF16,
        }
    }
    /// Widen `[start, start + out.len())` into `out` as f32.
    #[inline]
    pub fn widen_into(&self, start: usize, out: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        let end = start + out.len();
        match self {
            Stored::F32(s) => out.copy_from_slice(&s[start..end]),
            Stored::F16(s) => s[start..end].convert_to_f32_slice(out),
            Stored::BF16(s) => widen_bf16(&s[start..end], out),
        }
    }
}

/// A weight as compute reads it: stored bytes, or a merge of two stored
/// tensors formed while widening ([`crate::model::merge`]).
#[derive(Clone, Copy)]
pub enum Data<'a> {
    F32(&'a [f32]),
    F16(&'a [half::f16]),
    BF16(&'a [half::bf16]),
    Merged(Merged<'a>),
}

impl<'a> From<Stored<'a>> for Data<'a> {
    fn from(s: Stored<'a>) -> Data<'a> {
        match s {
            Stored::F32(s) => Data::F32(s),
            Stored::F16(s) => Data::F16(s),
            Stored::BF16(s) => Data::BF16(s),
        }
    }
}

impl<'a> Data<'a> {
    /// The stored bytes, `None` for a merged view.
    pub fn stored(&self) -> Option<Stored<'a>> {
        match *self {
            Data::F32(s) => Some(Stored::F32(s)),
            Data::F16(s) => Some(Stored::F16(s)),
            Data::BF16(s) => Some(Stored::BF16(s)),
            Data::Merged(_) => None,
        }
    }
    pub fn len(&self) -> usize {
        match self {
            Data::Merged(m) => m.len(),
            _ => self.stored().map_or(0, |s| s.len()),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The checkpoint's dtype (a merged view rounds to the reference's).
    pub fn dtype(&self) -> DType {
        match self {
            Data::F32(_) => DType::F32,
            Data::F16(_) => DType::F16,
            Data::BF16(_) => DType::BF16,
            Data::Merged(m) => m.dtype(),
        }
    }
    /// Widen `[start, start + out.len())` into `out` as f32.
    #[inline]
    pub fn widen_into(&self, start: usize, out: &mut [f32]) {
        match self {
            Data::F32(s) => Stored::F32(s).widen_into(start, out),
            Data::F16(s) => Stored::F16(s).widen_into(start, out),
            Data::BF16(s) => Stored::BF16(s).widen_into(start, out),
            Data::Merged(m) => m.widen_into(start, out),
        }
    }
    /// The whole tensor widened to f32 (only for small tensors: norms, biases).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let mut v = vec![0.0; self.len()];
        self.widen_into(0, &mut v);
        v
    }
}

crate::dispatch! {
    /// bf16 → f32 is a 16-bit shift: exact.
    fn widen_bf16(src: &[half::bf16], out: &mut [f32]) {
        for (o, v) in out.iter_mut().zip(src) {
            *o = f32::from_bits((v.to_bits() as u32) << 16);
        }
    }
}

/// Where one tensor lives: which mapped shard and which byte range.
#[derive(Debug, Clone)]
struct Entry {
    shard: usize,
    /// `Err(stored dtype)` when padv cannot read it: an error only if the
    /// model uses the tensor (towers a scorer ignores may hold anything).
    dtype: std::result::Result<DType, Dtype>,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// A mapped shard. Tensors whose bytes are not aligned for their dtype are
/// copied once into `Weights::realigned_words` (safetensors does not promise
/// alignment).
struct Shard {
    path: PathBuf,
    map: Mmap,
}

/// All tensors of one checkpoint.
pub struct Weights {
    dir: PathBuf,
    shards: Vec<Shard>,
    entries: HashMap<String, Entry>,
    /// Alignment buffers are stored as u32 words so any dtype can borrow them.
    realigned_words: HashMap<String, Vec<u32>>,
}

/// A weight tensor handle: name, shape and a typed view.
#[derive(Clone, Copy)]
pub struct Tensor<'a> {
    pub name: &'a str,
    pub shape: &'a [usize],
    pub data: Data<'a>,
}

impl<'a> Tensor<'a> {
    pub fn rows(&self) -> usize {
        self.shape[0]
    }
    pub fn cols(&self) -> usize {
        self.shape.get(1).copied().unwrap_or(1)
    }
}

fn convert_dtype(d: Dtype) -> Option<DType> {
    match d {
        Dtype::F32 => Some(DType::F32),
        Dtype::F16 => Some(DType::F16),
        Dtype::BF16 => Some(DType::BF16),
        _ => None,
    }
}

impl Weights {
    /// Map `DIR/model.safetensors`, or every shard named by
    /// `DIR/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Arc<Weights>> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        // `exists()` would call a symlink loop or an unreadable directory
        // "no model.safetensors": ask, and report the OS error.
        let present = |p: &Path| p.try_exists().map_err(|e| Error::io(p, e));
        let files: Vec<PathBuf> = if present(&index)? {
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::config(&index, format!("invalid JSON: {e}")))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::config(&index, "missing object `weight_map`"))?;
            let mut names: Vec<String> = map
                .values()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect();
            names.sort();
            names.dedup();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else if present(&single)? {
            vec![single]
        } else {
            return Err(Error::config(
                dir,
                "no model.safetensors or model.safetensors.index.json in this directory",
            ));
        };

        let mut w = Weights {
            dir: dir.to_path_buf(),
            shards: Vec::new(),
            entries: HashMap::new(),
            realigned_words: HashMap::new(),
        };
        for (si, path) in files.iter().enumerate() {
            let file = File::open(path).map_err(|e| Error::io(path, e))?;
            // SAFETY: the mapping is read-only; like every mmap-based loader we
            // assume the checkpoint is not modified while padv runs.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
            let (header_len, meta) = SafeTensors::read_metadata(&map[..]).map_err(|e| {
                let why = super::header::problem(&map[..])
                    .unwrap_or_else(|| format!("not a valid safetensors file: {e}"));
                Error::config(path, why)
            })?;
            let data_start = 8 + header_len;
            let tensors = meta.tensors();
            for (name, info) in tensors {
                let dtype = convert_dtype(info.dtype).ok_or(info.dtype);
                let (s, e) = info.data_offsets;
                let (start, end) = (data_start + s, data_start + e);
                if end > map.len() {
                    return Err(Error::tensor(
                        path,
                        &name,
                        "data runs past the end of the file (truncated shard?)",
                    ));
                }
                w.entries.insert(
                    name.clone(),
                    Entry {
                        shard: si,
                        dtype,
                        shape: info.shape.clone(),
                        start,
                        end,
                    },
                );
            }
            w.shards.push(Shard {
                path: path.clone(),
                map,
            });
        }
        // Copy any misaligned tensor once so typed views are always valid.
        let misaligned: Vec<String> = w
            .entries
            .iter()
            .filter(|(_, e)| {
                let ptr = w.shards[e.shard].map[e.start..].as_ptr() as usize;
                e.dtype.is_ok_and(|d| !ptr.is_multiple_of(d.size()))
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in misaligned {
            let e = &w.entries[&name];
            let bytes = &w.shards[e.shard].map[e.start..e.end];
            let mut words = vec![0u32; bytes.len().div_ceil(4)];
            bytemuck::cast_slice_mut::<u32, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
            w.realigned_words.insert(name.clone(), words);
        }
        Ok(Arc::new(w))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The stored shape of `name`, if the checkpoint has it.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Dtype of the first matrix-shaped tensor, for display.
    pub fn main_dtype(&self) -> Option<DType> {
        self.entries
            .values()
            .filter(|e| e.shape.len() == 2)
            .find_map(|e| e.dtype.ok())
    }

    /// Every tensor name in the checkpoint.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Total bytes of all mapped shards.
    pub fn mapped_bytes(&self) -> usize {
        self.shards.iter().map(|s| s.map.len()).sum()
    }

    fn shard_path(&self, name: &str) -> PathBuf {
        self.entries
            .get(name)
            .map(|e| self.shards[e.shard].path.clone())
            .unwrap_or_else(|| self.dir.clone())
    }

    /// Look up `name` and check its shape.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor<'_>> {
        let (key, e) = self
            .entries
            .get_key_value(name)
            .ok_or_else(|| Error::tensor(&self.dir, name, "missing from the checkpoint"))?;
        if e.shape != shape {
            return Err(Error::tensor(
                self.shard_path(name),
                name,
                format!("shape {:?}, expected {:?}", e.shape, shape),
            ));
        }
        let bytes: &[u8] = match self.realigned_words.get(name) {
            Some(words) => &bytemuck::cast_slice::<u32, u8>(words)[..e.end - e.start],
            None => &self.shards[e.shard].map[e.start..e.end],
        };
        let dtype = e.dtype.map_err(|d| {
            Error::tensor(
                self.shard_path(name),
                name,
                format!("dtype {d:?} unsupported (need F32, F16 or BF16)"),
            )
        })?;
        let data = match dtype {
            DType::F32 => Data::F32(bytemuck::cast_slice(bytes)),
            DType::F16 => Data::F16(bytemuck::cast_slice(bytes)),
            DType::BF16 => Data::BF16(bytemuck::cast_slice(bytes)),
        };
        Ok(Tensor {
            name: key,
            shape: &e.shape,
            data,
        })
    }
}
