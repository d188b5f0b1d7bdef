//! A tuned BLAS found at run time, for the CPU's f32 matrix products.
//!
//! The `gemm` crate candle uses runs our products at 60–85 GFLOP/s on an AVX-512 core where
//! OpenBLAS's Skylake-X kernels run them at ~180 (PyTorch's MKL at 165–210), and the products are
//! most of a training step. So when the machine has OpenBLAS (Debian/Ubuntu: `libopenblas0`;
//! macOS: Accelerate, which every Mac has) the kernels in [`super::cpu`] call its `cblas_sgemm`,
//! and fall back to the `gemm` crate otherwise. The library is opened with `dlopen`, so neither
//! building nor running needs it.
//!
//! Two traps, handled here: OpenBLAS picks its kernels from the CPU model number at load time and
//! falls back to its slowest (Prescott, ~35 GFLOP/s) on CPUs it does not know, virtual machines
//! included; so unless the user set `OPENBLAS_CORETYPE` we name the kernel family from the CPU's
//! feature flags before loading it, and refuse a library whose kernels are still below what the
//! CPU can run. And OpenBLAS starts one spinning thread per logical CPU unless told otherwise; it
//! runs single-threaded here, called side by side from the kernel pool's threads, each product
//! split into column blocks (`ops::cpu`), so the process has one pool of threads, not two.
//!
//! `FINETUNE_BLAS=off` turns it off; `FINETUNE_BLAS=/path/to/libopenblas.so` picks a library.

use std::ffi::{CStr, c_char, c_int};
use std::sync::OnceLock;

/// `cblas_sgemm` (LP64: 32-bit dimensions).
type CblasSgemm = unsafe extern "C" fn(
    order: c_int,
    trans_a: c_int,
    trans_b: c_int,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: f32,
    a: *const f32,
    lda: c_int,
    b: *const f32,
    ldb: c_int,
    beta: f32,
    c: *mut f32,
    ldc: c_int,
);

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

/// An opened BLAS library.
pub struct Blas {
    _lib: libloading::Library,
    sgemm: CblasSgemm,
    /// What the library is, for logs and the device line: `OpenBLAS SkylakeX`, `Accelerate`.
    pub name: String,
}

/// Whether a BLAS is in use, and which, or why not.
pub fn status() -> Result<&'static Blas, &'static str> {
    match state() {
        Ok(b) => Ok(b),
        Err(why) => Err(why.as_str()),
    }
}

/// The BLAS, if one was found and is fast on this CPU.
pub(crate) fn get() -> Option<&'static Blas> {
    state().as_ref().ok()
}

fn state() -> &'static Result<Blas, String> {
    static STATE: OnceLock<Result<Blas, String>> = OnceLock::new();
    STATE.get_or_init(load)
}

/// Names OpenBLAS's kernel family for this CPU (`OPENBLAS_CORETYPE`) and makes it single-threaded
/// (`OPENBLAS_NUM_THREADS=1`), unless the user set them. Binaries call this at start-up, before
/// any other thread exists; the loader calls it again (a no-op then) for library users and tests.
pub fn prepare_env() {
    let set = |key: &str, value: &str| {
        if std::env::var_os(key).is_none() {
            // SAFETY: binaries call this first thing in `main`, before any thread exists; later
            // calls find the variables set and write nothing. (Library users that load the BLAS
            // lazily from several threads rely on std's environment lock, which every Rust
            // reader takes.)
            unsafe { std::env::set_var(key, value) };
        }
    };
    if let Some(core) = core_for_this_cpu() {
        set("OPENBLAS_CORETYPE", core);
    }
    // One thread: the kernel pool splits products across threads itself (see `ops::cpu`), and a
    // second pool of OpenBLAS threads spinning beside it would take cores from it.
    set("OPENBLAS_NUM_THREADS", "1");
}

/// OpenBLAS's kernel family for what this CPU can run, from its feature flags.
fn core_for_this_cpu() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") {
            return Some("SkylakeX");
        }
        if has!("avx2") && has!("fma") {
            return Some("Haswell");
        }
    }
    None
}

/// Whether OpenBLAS's chosen kernels (`openblas_get_corename`) are as fast as this CPU allows:
/// a CPU with AVX2 + FMA must get Haswell-class kernels or better.
pub(crate) fn core_is_tuned(corename: &str, cpu_best: Option<&str>) -> bool {
    const AVX2_CLASS: [&str; 8] =
        ["haswell", "zen", "skylakex", "cooperlake", "sapphirerapids", "skylake", "cascadelake", "icelake"];
    match cpu_best {
        None => true,
        Some(_) => AVX2_CLASS.iter().any(|c| corename.eq_ignore_ascii_case(c)),
    }
}

fn candidates() -> Result<Vec<String>, String> {
    match std::env::var("FINETUNE_BLAS") {
        Ok(v) if v.eq_ignore_ascii_case("off") || v == "0" => Err("turned off by FINETUNE_BLAS=off".into()),
        Ok(v) if !v.trim().is_empty() => Ok(vec![v]),
        _ if cfg!(target_os = "macos") => Ok(vec![
            "/System/Library/Frameworks/Accelerate.framework/Accelerate".into(),
            "/opt/homebrew/opt/openblas/lib/libopenblas.dylib".into(),
        ]),
        _ => Ok(vec!["libopenblas.so.0".into(), "libopenblas.so".into()]),
    }
}

fn load() -> Result<Blas, String> {
    prepare_env();
    let mut tried = Vec::new();
    for path in candidates()? {
        // SAFETY: loading a BLAS runs its initialisers, which only probe the CPU and start its
        // thread pool; the symbols are checked against the C BLAS signatures below.
        match unsafe { libloading::Library::new(&path) } {
            Ok(lib) => return open(lib, &path),
            Err(e) => tried.push(format!("{path}: {e}")),
        }
    }
    Err(format!("no BLAS library found ({}); install libopenblas0 for faster CPU training", tried.join("; ")))
}

fn open(lib: libloading::Library, path: &str) -> Result<Blas, String> {
    // SAFETY: `cblas_sgemm` has the reference CBLAS signature in OpenBLAS and Accelerate; the
    // OpenBLAS extras are looked up by name and only called with their documented signatures.
    unsafe {
        let sgemm = *lib
            .get::<CblasSgemm>(b"cblas_sgemm\0")
            .map_err(|e| format!("{path} has no cblas_sgemm: {e}"))?;
        let corename = lib
            .get::<unsafe extern "C" fn() -> *const c_char>(b"openblas_get_corename\0")
            .ok()
            .map(|f| f())
            .filter(|p| !p.is_null())
            .map(|p| CStr::from_ptr(p).to_string_lossy().into_owned());
        let name = match &corename {
            Some(core) => {
                if !core_is_tuned(core, core_for_this_cpu()) {
                    return Err(format!(
                        "{path} chose its `{core}` kernels, slower than this CPU allows \
                         (set OPENBLAS_CORETYPE={} to override)",
                        core_for_this_cpu().unwrap_or("?")
                    ));
                }
                if let Ok(set) = lib.get::<unsafe extern "C" fn(c_int)>(b"openblas_set_num_threads\0") {
                    set(1);
                }
                format!("OpenBLAS {core}")
            }
            None if path.contains("Accelerate") => "Accelerate".to_string(),
            None => format!("BLAS ({path})"),
        };
        Ok(Blas { _lib: lib, sgemm, name })
    }
}

/// One operand as BLAS sees it: a row-major matrix, possibly transposed, with its leading dimension.
#[derive(Clone, Copy)]
pub(crate) struct Operand {
    trans: bool,
    ld: usize,
}

impl Operand {
    /// How BLAS reads a `rows × cols` view whose element (i, j) is at `i * rs + j * cs`, if it can.
    pub fn of(rows: usize, cols: usize, rs: usize, cs: usize) -> Option<Self> {
        if cs == 1 && (rs >= cols.max(1) || rows == 1) {
            Some(Self { trans: false, ld: rs.max(cols).max(1) })
        } else if rs == 1 && (cs >= rows.max(1) || cols == 1) {
            Some(Self { trans: true, ld: cs.max(rows).max(1) })
        } else {
            None
        }
    }
}

impl Blas {
    /// Whether a product's dimensions fit the library's 32-bit integers.
    pub(crate) fn fits(
        &self,
        (m, n, k): (usize, usize, usize),
        oa: Operand,
        ob: Operand,
        ldc: usize,
    ) -> bool {
        [m, n, k, oa.ld, ob.ld, ldc].iter().all(|&v| c_int::try_from(v).is_ok())
    }

    /// `c[m, n] = (accumulate ? c : 0) + alpha · a · b` with `c` row-major, rows `ldc` apart.
    /// Returns false (and touches nothing) when a dimension does not fit the library's 32-bit
    /// integers.
    ///
    /// # Safety
    /// `a` and `b` must hold every element their operand views reach, and `c` `m` rows of `n`
    /// floats, `ldc ≥ n` apart.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn sgemm(
        &self,
        (m, n, k): (usize, usize, usize),
        a: *const f32,
        oa: Operand,
        b: *const f32,
        ob: Operand,
        (c, ldc): (*mut f32, usize),
        accumulate: bool,
        alpha: f32,
    ) -> bool {
        if !self.fits((m, n, k), oa, ob, ldc) {
            return false;
        }
        let (m, n, k, lda, ldb, ldc) =
            (m as c_int, n as c_int, k as c_int, oa.ld as c_int, ob.ld as c_int, ldc as c_int);
        let t = |o: Operand| if o.trans { TRANS } else { NO_TRANS };
        let beta = if accumulate { 1.0 } else { 0.0 };
        // SAFETY: the caller guarantees the extents; the library reads `a` and `b` and writes `c`.
        unsafe { (self.sgemm)(ROW_MAJOR, t(oa), t(ob), m, n, k, alpha, a, lda, b, ldb, beta, c, ldc) };
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misdetected_openblas_is_refused_on_a_modern_cpu() {
        assert!(!core_is_tuned("Prescott", Some("SkylakeX")));
        assert!(!core_is_tuned("Sandybridge", Some("Haswell")));
        assert!(core_is_tuned("SkylakeX", Some("SkylakeX")));
        assert!(core_is_tuned("Zen", Some("Haswell")));
        // A CPU without AVX2 (or not x86) takes whatever the library chose.
        assert!(core_is_tuned("armv8", None));
    }

    #[test]
    fn operands_map_row_major_views_and_their_transposes() {
        let o = Operand::of(3, 5, 5, 1).expect("row-major");
        assert!(!o.trans && o.ld == 5);
        let o = Operand::of(3, 5, 1, 3).expect("transposed");
        assert!(o.trans && o.ld == 3);
        // A padded row-major view keeps its stride as the leading dimension.
        let o = Operand::of(3, 5, 8, 1).expect("padded");
        assert!(!o.trans && o.ld == 8);
        // Neither unit stride: not expressible.
        assert!(Operand::of(3, 5, 10, 2).is_none());
    }
}
