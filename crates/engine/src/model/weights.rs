//! Where weights come from. [`WeightSource`] hands tensors to the model by their Hugging Face
//! names; [`SafetensorsWeights`] reads single-file or sharded safetensors through a memory map,
//! one tensor at a time, checking every header against the file so that a truncated or corrupt
//! file is an error naming the file and the tensor.

use crate::error::{EngineError, Result};
use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Tensors by name, in whatever storage they live.
pub trait WeightSource: Send + Sync {
    fn contains(&self, name: &str) -> bool;
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// The dtype a tensor is stored in, where the source stores plain dense tensors.
    fn stored_dtype(&self, _name: &str) -> Option<DType> {
        None
    }
    /// Loads a tensor converted to `dtype` on `device`.
    fn load(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor>;
    fn names(&self) -> Vec<String>;
    /// The file a tensor lives in (for error messages).
    fn origin(&self, name: &str) -> PathBuf;

    /// The tensor as a quantized matrix when the source stores it quantized (GGUF blocks), so it
    /// can stay quantized as a frozen base; `None` for dense tensors. `compute` is the dtype it
    /// is dequantized into for each matmul.
    fn load_quantized(&self, _name: &str, _compute: DType) -> Result<Option<crate::quant::QuantWeight>> {
        Ok(None)
    }

    /// Loads a tensor and checks its shape.
    fn load_shaped(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        match self.shape(name) {
            None => Err(EngineError::tensor(self.origin(name), name, "missing from the checkpoint")),
            Some(s) if s != shape => Err(EngineError::tensor(
                self.origin(name),
                name,
                format!("has shape {s:?}, the config implies {shape:?}"),
            )),
            Some(_) => self.load(name, dtype, device),
        }
    }
}

/// Drops the pages of a read-only file mapping's range from this process's resident set once
/// its bytes have been copied out, so that reading a model through a memory map does not keep
/// the whole file resident (the pages stay in the OS page cache).
pub(crate) fn release_pages(map: &Mmap, start: usize, len: usize) {
    #[cfg(unix)]
    // SAFETY: the mapping is read-only and file-backed, so MADV_DONTNEED only drops this
    // process's page-table entries; a later read faults the same file contents back in.
    unsafe {
        let _ = map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len);
    }
    #[cfg(not(unix))]
    let _ = (map, start, len);
}

struct Entry {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// Memory-mapped safetensors, single or sharded.
pub struct SafetensorsWeights {
    files: Vec<PathBuf>,
    maps: Vec<Mmap>,
    entries: HashMap<String, Entry>,
    dir: PathBuf,
}

fn st_dtype(d: safetensors::Dtype) -> Option<DType> {
    use safetensors::Dtype as S;
    Some(match d {
        S::F32 => DType::F32,
        S::F16 => DType::F16,
        S::BF16 => DType::BF16,
        S::F64 => DType::F64,
        S::U8 => DType::U8,
        S::U32 => DType::U32,
        S::I64 => DType::I64,
        _ => return None,
    })
}

impl SafetensorsWeights {
    /// Opens `model.safetensors.index.json` (sharded) or `model.safetensors` in a model folder.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let files = if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| EngineError::io(&index, e))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| EngineError::file(&index, format!("invalid JSON: {e}")))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| EngineError::file(&index, "missing `weight_map` object"))?;
            let mut names: Vec<String> = map.values().filter_map(|f| f.as_str().map(String::from)).collect();
            names.sort();
            names.dedup();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else if dir.join("model.safetensors").exists() {
            vec![dir.join("model.safetensors")]
        } else {
            return Err(EngineError::file(
                dir,
                "no model.safetensors or model.safetensors.index.json in this folder",
            ));
        };
        Self::from_files(dir, files)
    }

    /// Opens explicit safetensors files (e.g. a PEFT `adapter_model.safetensors`).
    pub fn from_files(dir: &Path, files: Vec<PathBuf>) -> Result<Self> {
        let mut maps = Vec::with_capacity(files.len());
        let mut entries = HashMap::new();
        for (i, path) in files.iter().enumerate() {
            let file = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
            // SAFETY: the map is read-only; a file truncated under us by another process would be a
            // bug of that process, and every read below is bounds-checked against the map length.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| EngineError::io(path, e))?;
            let (header_len, meta) = safetensors::SafeTensors::read_metadata(&map).map_err(|e| {
                match first_truncated_tensor(&map) {
                    Some(name) => EngineError::tensor(
                        path,
                        name,
                        "its data lies past the end of the file (truncated download or copy?)",
                    ),
                    None => EngineError::file(path, format!("not a valid safetensors file: {e}")),
                }
            })?;
            let data_start = 8 + header_len;
            for (name, info) in meta.tensors() {
                let dtype = st_dtype(info.dtype).ok_or_else(|| {
                    EngineError::tensor(path, &name, format!("unsupported dtype {:?}", info.dtype))
                })?;
                let (a, b) = info.data_offsets;
                let expected = info.shape.iter().product::<usize>() * dtype.size_in_bytes();
                if b < a || b - a != expected || data_start + b > map.len() {
                    return Err(EngineError::tensor(
                        path,
                        &name,
                        "data lies outside the file or does not match its shape (truncated or corrupt file?)",
                    ));
                }
                entries.insert(
                    name.clone(),
                    Entry {
                        file: i,
                        dtype,
                        shape: info.shape.clone(),
                        start: data_start + a,
                        end: data_start + b,
                    },
                );
            }
            maps.push(map);
        }
        Ok(Self { files, maps, entries, dir: dir.to_path_buf() })
    }

    /// The stored dtype of a tensor.
    pub fn dtype(&self, name: &str) -> Option<DType> {
        self.entries.get(name).map(|e| e.dtype)
    }

    /// Total bytes of all tensors as stored.
    pub fn stored_bytes(&self) -> usize {
        self.entries.values().map(|e| e.end - e.start).sum()
    }
}

/// For a file whose header parses but whose data is short: the first tensor that does not fit.
fn first_truncated_tensor(bytes: &[u8]) -> Option<String> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let header: serde_json::Value = serde_json::from_slice(bytes.get(8..8usize.checked_add(n)?)?).ok()?;
    let available = bytes.len() - 8 - n;
    let mut tensors: Vec<(usize, &String)> = header
        .as_object()?
        .iter()
        .filter_map(|(name, v)| Some((v.get("data_offsets")?.get(1)?.as_u64()? as usize, name)))
        .collect();
    tensors.sort();
    tensors.into_iter().find(|(end, _)| *end > available).map(|(_, name)| name.clone())
}

impl WeightSource for SafetensorsWeights {
    fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.entries.get(name).map(|e| e.shape.clone())
    }

    fn stored_dtype(&self, name: &str) -> Option<DType> {
        self.dtype(name)
    }

    fn load(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| EngineError::tensor(&self.dir, name, "missing from the checkpoint"))?;
        let bytes = &self.maps[e.file][e.start..e.end];
        let t = Tensor::from_raw_buffer(bytes, e.dtype, &e.shape, &Device::Cpu)
            .map_err(|err| EngineError::tensor(&self.files[e.file], name, err.to_string()));
        release_pages(&self.maps[e.file], e.start, e.end - e.start);
        let t = t?;
        let t = if e.dtype != dtype { t.to_dtype(dtype)? } else { t };
        let t = t.to_device(device)?;
        Ok(t)
    }

    fn names(&self) -> Vec<String> {
        let mut n: Vec<String> = self.entries.keys().cloned().collect();
        n.sort();
        n
    }

    fn origin(&self, name: &str) -> PathBuf {
        match self.entries.get(name) {
            Some(e) => self.files[e.file].clone(),
            None => self.files.first().cloned().unwrap_or_else(|| self.dir.clone()),
        }
    }
}
