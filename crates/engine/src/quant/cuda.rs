//! CUDA side of [`super::quant_matmul`] (feature `cuda`; written against candle 0.11 / cudarc 0.19
//! but not yet compiled or run on a GPU: see docs/benchmarks.md). The codes are copied to the GPU
//! once; a kernel compiled at run time with NVRTC (`--fmad=false`, so it rounds exactly like the
//! CPU path) dequantizes them into a transient dense buffer in the compute dtype, and cuBLAS (the
//! backend's matmul) multiplies. GGUF blocks use candle's own CUDA dequantization kernels.

use super::{Absmax, DYNAMIC_MAP, QuantFormat, QuantWeight};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDevice, cudarc};
use candle_core::quantized::QTensor;
use candle_core::{CudaStorage, DType, Device, Layout, Result, bail};
use half::{bf16, f16};

const MODULE: &str = "finetune_quant";

const KERNELS: &str = r#"
__device__ __forceinline__ unsigned short f32_to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}
__device__ __forceinline__ unsigned short f32_to_f16(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
__device__ __forceinline__ void put(float* out, long long i, float v) { out[i] = v; }
__device__ __forceinline__ void put_bf16(unsigned short* out, long long i, float v) { out[i] = f32_to_bf16(v); }
__device__ __forceinline__ void put_f16(unsigned short* out, long long i, float v) { out[i] = f32_to_f16(v); }

#define FOUR_BIT(NAME, T, PUT)                                                                    \
extern "C" __global__ void NAME(const unsigned char* packed, const float* absmax,                 \
        const unsigned char* dq_codes, const float* absmax2, const float* dyn_map, float offset,  \
        int use_dq, const float* table, long long n, long long block, T* out) {                  \
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;                               \
    if (i >= n) return;                                                                           \
    unsigned char byte = packed[i >> 1];                                                          \
    int nib = (i & 1) ? (byte & 15) : (byte >> 4);                                                \
    long long b = i / block;                                                                      \
    float scale = use_dq ? dyn_map[dq_codes[b]] * absmax2[b / 256] + offset : absmax[b];          \
    PUT(out, i, table[nib] * scale);                                                              \
}
FOUR_BIT(dequant_4bit_f32, float, put)
FOUR_BIT(dequant_4bit_bf16, unsigned short, put_bf16)
FOUR_BIT(dequant_4bit_f16, unsigned short, put_f16)

#define INT8(NAME, T, PUT)                                                                        \
extern "C" __global__ void NAME(const signed char* codes, const float* scale, long long n,        \
        long long cols, T* out) {                                                                 \
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;                               \
    if (i >= n) return;                                                                           \
    float s = scale[i / cols] * (1.0f / 127.0f);                                                  \
    PUT(out, i, (float)codes[i] * s);                                                             \
}
INT8(dequant_int8_f32, float, put)
INT8(dequant_int8_bf16, unsigned short, put_bf16)
INT8(dequant_int8_f16, unsigned short, put_f16)
"#;

fn cuda_err(what: &str, e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("quantized matmul (CUDA): {what}: {e}"))
}

/// The codes of one weight on the GPU.
pub(crate) enum GpuCopy {
    FourBit {
        packed: CudaSlice<u8>,
        absmax: CudaSlice<f32>,
        dq_codes: CudaSlice<u8>,
        absmax2: CudaSlice<f32>,
        dyn_map: CudaSlice<f32>,
        offset: f32,
        use_dq: bool,
        table: CudaSlice<f32>,
        block: usize,
    },
    Int8 {
        codes: CudaSlice<i8>,
        scale: CudaSlice<f32>,
    },
    Ggml(QTensor),
}

impl std::fmt::Debug for GpuCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GpuCopy")
    }
}

fn upload(w: &QuantWeight, dev: &CudaDevice) -> Result<GpuCopy> {
    Ok(match &w.format {
        QuantFormat::FourBit(q) => {
            let (absmax, dq_codes, absmax2, offset, use_dq) = match &q.absmax {
                Absmax::F32(v) => {
                    (dev.clone_htod(v)?, dev.alloc_zeros::<u8>(1)?, dev.alloc_zeros::<f32>(1)?, 0.0, false)
                }
                Absmax::Double(d) => (
                    dev.alloc_zeros::<f32>(1)?,
                    dev.clone_htod(&d.codes)?,
                    dev.clone_htod(&d.absmax2)?,
                    d.offset,
                    true,
                ),
            };
            GpuCopy::FourBit {
                packed: dev.clone_htod(&q.packed)?,
                absmax,
                dq_codes,
                absmax2,
                dyn_map: dev.clone_htod(&DYNAMIC_MAP[..])?,
                offset,
                use_dq,
                table: dev.clone_htod(&q.kind.code()[..])?,
                block: q.block_size,
            }
        }
        QuantFormat::Int8(q) => {
            GpuCopy::Int8 { codes: dev.clone_htod(&q.codes)?, scale: dev.clone_htod(&q.scale)? }
        }
        QuantFormat::Ggml(g) => {
            GpuCopy::Ggml(g.to_qtensor(&Device::Cuda(dev.clone())).map_err(|e| cuda_err("GGUF upload", e))?)
        }
        // The loader keeps 16-bit stores for CPU runs only; a GPU computes in the stored dtype.
        QuantFormat::Half(_) => bail!("quantized matmul (CUDA): a 16-bit stored base is CPU-only"),
    })
}

fn ptx() -> Result<&'static str> {
    static PTX: std::sync::OnceLock<std::result::Result<String, String>> = std::sync::OnceLock::new();
    let r = PTX.get_or_init(|| {
        let opts = cudarc::nvrtc::CompileOptions { fmad: Some(false), ..Default::default() };
        cudarc::nvrtc::compile_ptx_with_opts(KERNELS, opts).map(|p| p.to_src()).map_err(|e| e.to_string())
    });
    match r {
        Ok(s) => Ok(s.as_str()),
        Err(e) => Err(cuda_err("NVRTC compilation", e)),
    }
}

/// Dequantizes the whole weight into a new dense `[rows, cols]` buffer in `dtype`.
fn dequantize(w: &QuantWeight, gpu: &GpuCopy, dev: &CudaDevice, dtype: DType) -> Result<CudaStorage> {
    let n = w.rows * w.cols;
    let suffix = match dtype {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        other => bail!("quantized matmul (CUDA): compute dtype {other:?} is not supported"),
    };
    let cfg = LaunchConfig::for_num_elems(n as u32);
    macro_rules! launch {
        ($ty:ty, $name:expr, $($arg:expr),*) => {{
            let out = dev.alloc_zeros::<$ty>(n)?;
            let func = dev.get_or_load_custom_func($name, MODULE, ptx()?)?;
            let mut b = func.builder();
            $( b.arg($arg); )*
            b.arg(&out);
            // SAFETY: the kernel reads `n` elements' codes and writes `n` outputs, all allocated above.
            unsafe { b.launch(cfg) }.map_err(|e| cuda_err("kernel launch", e))?;
            CudaStorage::wrap_cuda_slice(out, dev.clone())
        }};
    }
    let n64 = n as i64;
    Ok(match gpu {
        GpuCopy::FourBit { packed, absmax, dq_codes, absmax2, dyn_map, offset, use_dq, table, block } => {
            let (use_dq, block) = (*use_dq as i32, *block as i64);
            let name = format!("dequant_4bit_{suffix}");
            match dtype {
                DType::F32 => launch!(
                    f32, &name, packed, absmax, dq_codes, absmax2, dyn_map, offset, &use_dq, table, &n64,
                    &block
                ),
                DType::BF16 => launch!(
                    bf16, &name, packed, absmax, dq_codes, absmax2, dyn_map, offset, &use_dq, table, &n64,
                    &block
                ),
                _ => launch!(
                    f16, &name, packed, absmax, dq_codes, absmax2, dyn_map, offset, &use_dq, table, &n64,
                    &block
                ),
            }
        }
        GpuCopy::Int8 { codes, scale } => {
            let cols = w.cols as i64;
            let name = format!("dequant_int8_{suffix}");
            match dtype {
                DType::F32 => launch!(f32, &name, codes, scale, &n64, &cols),
                DType::BF16 => launch!(bf16, &name, codes, scale, &n64, &cols),
                _ => launch!(f16, &name, codes, scale, &n64, &cols),
            }
        }
        GpuCopy::Ggml(q) => {
            let t = q.dequantize(&Device::Cuda(dev.clone()))?.to_dtype(dtype)?;
            let (s, _) = t.storage_and_layout();
            match &*s {
                candle_core::Storage::Cuda(c) => c.try_clone(&Layout::contiguous((w.rows, w.cols)))?,
                _ => bail!("quantized matmul (CUDA): GGUF dequantization left the GPU"),
            }
        }
    })
}

/// `x · Wᵀ` (or `g · W` when `transpose`) on the GPU; `x` is contiguous `[m, inner]`.
pub(crate) fn quant_matmul_cuda(
    w: &QuantWeight,
    transpose: bool,
    x: &CudaStorage,
    l: &Layout,
    m: usize,
) -> Result<CudaStorage> {
    let dev = x.device().clone();
    if w.gpu.get().is_none() {
        let _ = w.gpu.set(upload(w, &dev)?);
    }
    let Some(gpu) = w.gpu.get() else { bail!("quantized matmul (CUDA): weight upload failed") };
    let compute = w.compute;
    let x_dtype = x.dtype();
    let xc = if x_dtype != compute { x.to_dtype(l, compute)? } else { x.try_clone(l)? };
    let xl = if x_dtype != compute { Layout::contiguous(l.shape()) } else { l.clone() };
    let dense = dequantize(w, gpu, &dev, compute)?;
    let (n, k) = (w.rows, w.cols);
    let (out_dim, inner) = if transpose { (k, n) } else { (n, k) };
    let wl = Layout::contiguous((n, k));
    // Forward multiplies by Wᵀ (a transposed view of W), backward by W itself.
    let rhs_l = if transpose { wl } else { wl.transpose(0, 1)? };
    let x2 = Layout::contiguous_with_offset((m, inner), xl.start_offset());
    let y = xc.matmul(&dense, (1, m, out_dim, inner), &x2, &rhs_l)?;
    drop(dense);
    if x_dtype != compute { y.to_dtype(&Layout::contiguous((m, out_dim)), x_dtype) } else { Ok(y) }
}
