//! The tile unit's instructions (inline assembly: the AMX intrinsics are not stable Rust), the
//! permission request and the AVX512-BF16 conversion; stubs elsewhere than x86-64.

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::T;
    use std::arch::asm;

    /// Asks Linux for the tile state (`ARCH_REQ_XCOMP_PERM`, `XFEATURE_XTILEDATA`) when the CPU
    /// has AMX-TILE and AMX-BF16.
    pub fn request() -> bool {
        let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
        let has = leaf7.edx & (1 << 22) != 0 && leaf7.edx & (1 << 24) != 0;
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a plain syscall with integer arguments.
        has && unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) } == 0
    }

    /// Converts the longest prefix of whole 32-value groups with AVX512-BF16 (when the CPU has
    /// it) and returns its length.
    pub fn convert_vector(src: &[f32], dst: &mut [std::mem::MaybeUninit<u16>]) -> usize {
        if !std::arch::is_x86_feature_detected!("avx512bf16") {
            return 0;
        }
        // SAFETY: the CPU has AVX512-BF16 (checked above), and both slices hold `src.len()`
        // values.
        unsafe { convert_avx512(src, dst) }
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn convert_avx512(src: &[f32], dst: &mut [std::mem::MaybeUninit<u16>]) -> usize {
        use std::arch::x86_64::*;
        let groups = src.len().min(dst.len()) / 32;
        for g in 0..groups {
            // SAFETY: group g covers values 32g..32g+32 of both slices.
            unsafe {
                let lo = _mm512_loadu_ps(src.as_ptr().add(32 * g));
                let hi = _mm512_loadu_ps(src.as_ptr().add(32 * g + 16));
                let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_storeu_si512(dst.as_mut_ptr().add(32 * g) as *mut __m512i, packed);
            }
        }
        32 * groups
    }

    /// Palette 1, all eight tiles 16 rows of 64 bytes.
    #[repr(C, align(64))]
    struct Config([u8; 64]);

    const CONFIG: Config = {
        let mut c = [0u8; 64];
        c[0] = 1;
        let mut t = 0;
        while t < 8 {
            c[16 + 2 * t] = 64;
            c[48 + t] = T as u8;
            t += 1;
        }
        Config(c)
    };

    /// The tile configuration loaded on this thread while it lives; dropping it gives the tile
    /// state back (a thread holding it makes every context switch save 8 KiB more).
    pub struct Tiles(());

    impl Tiles {
        pub fn configure() -> Self {
            // SAFETY: CONFIG is a valid 64-byte palette-1 configuration, and callers reach here
            // only after `request` granted the tile state.
            unsafe { asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly)) };
            Self(())
        }
    }

    impl Drop for Tiles {
        fn drop(&mut self) {
            // SAFETY: releasing the tile state is always allowed.
            unsafe { asm!("tilerelease", options(nostack, nomem)) };
        }
    }

    /// Where a task's 32 rows of W are: tile rows `stride` values apart, rows 16–31 `second`
    /// values after rows 0–15, the next 32 values of k `step` values further.
    #[derive(Clone, Copy)]
    pub struct Operand {
        pub at: *const u16,
        pub stride: usize,
        pub second: usize,
        pub step: usize,
    }

    /// One 32×32 block of `W · Xᵀ` over `32 · kbs` values of k into `c` (32×32 row-major; rows:
    /// W rows, columns: X rows), added to what `c` holds when `accumulate`.
    ///
    /// # Safety
    /// `a` must reach `kbs` steps of its 32 rows, `xp` two packed blocks (`k/2 · 32` values
    /// apart) of `16 · kbs` pair rows, `c` 1024 values, and a [`Tiles`] must be alive on this
    /// thread.
    pub unsafe fn block_wx(a: Operand, k: usize, xp: *const u16, kbs: usize, c: *mut f32, accumulate: bool) {
        unsafe {
            if accumulate {
                load(c, 2 * T);
            } else {
                zero();
            }
            let (sa, sb) = (2 * a.stride, 4 * T);
            for kb in 0..kbs {
                let a0 = a.at.add(kb * a.step);
                asm!(
                    "tileloadd tmm4, [{a0} + {sa} * 1]",
                    "tileloadd tmm5, [{a1} + {sa} * 1]",
                    "tileloadd tmm6, [{b0} + {sb} * 1]",
                    "tileloadd tmm7, [{b1} + {sb} * 1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a0,
                    a1 = in(reg) a0.add(a.second),
                    b0 = in(reg) xp.add(kb * T * 2 * T),
                    b1 = in(reg) xp.add(T * k + kb * T * 2 * T),
                    sa = in(reg) sa,
                    sb = in(reg) sb,
                    options(nostack, readonly),
                );
            }
            store(c, 2 * T);
        }
    }

    /// `C (+)= A · B` for one 32×32 block of C (f32, rows `ldc` values apart; overwritten unless
    /// `accumulate`) over `n` values of the reduction: `gp` 32 rows of A (bf16, `ldg` apart),
    /// `pairs` the first of B's two 16-column halves (a panel from `pair_rows` or
    /// `interleave_columns`) at its first pair row, the second `next` values further.
    ///
    /// # Safety
    /// `gp` must reach 32 rows of `n` values `ldg` apart, both halves `n/2` pair rows of 16
    /// pairs, `c` 32 rows of 32 values `ldc` apart, and a [`Tiles`] must be alive on this thread.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn block_panel(
        gp: *const u16,
        ldg: usize,
        pairs: *const u16,
        next: usize,
        n: usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        unsafe {
            if accumulate {
                load(c, ldc);
            } else {
                zero();
            }
            let (sa, sb) = (2 * ldg, 4 * T);
            for nb in 0..n / (2 * T) {
                let a0 = gp.add(nb * 2 * T);
                let b0 = pairs.add(nb * T * 2 * T);
                asm!(
                    "tileloadd tmm4, [{a0} + {sa} * 1]",
                    "tileloadd tmm5, [{a1} + {sa} * 1]",
                    "tileloadd tmm6, [{b0} + {sb} * 1]",
                    "tileloadd tmm7, [{b1} + {sb} * 1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a0,
                    a1 = in(reg) a0.add(T * ldg),
                    b0 = in(reg) b0,
                    b1 = in(reg) b0.add(next),
                    sa = in(reg) sa,
                    sb = in(reg) sb,
                    options(nostack, readonly),
                );
            }
            store(c, ldc);
        }
    }

    /// Zeroes tiles 0–3.
    unsafe fn zero() {
        unsafe {
            asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem))
        };
    }

    /// Loads tiles 0–3 from the four 16×16 quarters of a 32×32 f32 block (rows `ldc` apart).
    unsafe fn load(c: *const f32, ldc: usize) {
        unsafe {
            asm!(
                "tileloadd tmm0, [{c0} + {sc} * 1]",
                "tileloadd tmm1, [{c1} + {sc} * 1]",
                "tileloadd tmm2, [{c2} + {sc} * 1]",
                "tileloadd tmm3, [{c3} + {sc} * 1]",
                c0 = in(reg) c,
                c1 = in(reg) c.add(T),
                c2 = in(reg) c.add(T * ldc),
                c3 = in(reg) c.add(T * ldc + T),
                sc = in(reg) 4 * ldc,
                options(nostack, readonly),
            );
        }
    }

    /// Stores tiles 0–3 as the four 16×16 quarters of a 32×32 block (rows `ldc` values apart).
    unsafe fn store(c: *mut f32, ldc: usize) {
        unsafe {
            asm!(
                "tilestored [{c0} + {sc} * 1], tmm0",
                "tilestored [{c1} + {sc} * 1], tmm1",
                "tilestored [{c2} + {sc} * 1], tmm2",
                "tilestored [{c3} + {sc} * 1], tmm3",
                c0 = in(reg) c,
                c1 = in(reg) c.add(T),
                c2 = in(reg) c.add(T * ldc),
                c3 = in(reg) c.add(T * ldc + T),
                sc = in(reg) 4 * ldc,
                options(nostack),
            );
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod other {
    use super::super::T;

    pub fn request() -> bool {
        false
    }

    pub fn convert_vector(_: &[f32], _: &mut [std::mem::MaybeUninit<u16>]) -> usize {
        0
    }

    pub struct Tiles(());

    impl Tiles {
        pub fn configure() -> Self {
            Self(())
        }
    }

    /// Never called: [`super::available`] is false off x86-64.
    #[derive(Clone, Copy)]
    pub struct Operand {
        pub at: *const u16,
        pub stride: usize,
        pub second: usize,
        pub step: usize,
    }

    pub unsafe fn block_wx(_: Operand, _: usize, _: *const u16, _: usize, _: *mut f32, _: bool) {}

    /// Never called: [`super::available`] is false off x86-64.
    pub unsafe fn block_panel(
        _: *const u16,
        _: usize,
        _: *const u16,
        _: usize,
        _: usize,
        _: *mut f32,
        _: usize,
    ) {
    }
}

#[cfg(target_arch = "x86_64")]
pub use x86::*;

#[cfg(not(target_arch = "x86_64"))]
pub use other::*;
