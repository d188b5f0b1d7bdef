//! Plain loops compiled once per vector width and picked at run time. The crate is built for
//! baseline x86-64, where a loop the compiler vectorises moves 16 bytes at a time (SSE2);
//! [`widest_simd!`] compiles the same loop again for AVX-512 and for AVX2, and calls the widest
//! the CPU runs. Every version performs the same IEEE operations in the same order (Rust never
//! fuses a multiply and an add on its own), so all give the same bits; only the width differs.
//! CPUs without AVX-512 are most of them (AMD before Zen 4, Intel's desktop chips since Alder
//! Lake), so the AVX2 version is the one most users run.

/// The vector widths a [`widest_simd!`] function can run at, narrowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Simd {
    /// The build's own target: SSE2 on x86-64, whatever the target has elsewhere.
    Baseline,
    /// AVX2 with FMA and F16C ([`super::cpu::avx2_fma`]).
    Avx2,
    /// AVX-512 F, BW and VL ([`super::cpu::avx512_wide`]).
    Avx512,
}

/// Whether code picked by vector width ([`widest_simd!`] functions, the stored-base product
/// kernels) may run at `level` here: the CPU has it and (in tests) no narrower cap is set.
#[inline]
pub(crate) fn runs(level: Simd) -> bool {
    #[cfg(test)]
    if CAP.with(|c| c.get()).is_some_and(|cap| level > cap) {
        return false;
    }
    match level {
        Simd::Baseline => true,
        Simd::Avx2 => super::cpu::avx2_fma(),
        Simd::Avx512 => super::cpu::avx512_wide(),
    }
}

/// The widest level that [`runs`] here.
#[inline]
pub(crate) fn widest() -> Simd {
    if runs(Simd::Avx512) {
        Simd::Avx512
    } else if runs(Simd::Avx2) {
        Simd::Avx2
    } else {
        Simd::Baseline
    }
}

#[cfg(test)]
thread_local! {
    /// The widest level this thread's [`widest_simd!`] calls may use (tests run each level).
    static CAP: std::cell::Cell<Option<Simd>> = const { std::cell::Cell::new(None) };
}

/// Runs `check` once per level this CPU has, with [`widest_simd!`] functions capped at it.
#[cfg(test)]
pub(crate) fn with_each_level(mut check: impl FnMut(Simd)) {
    for level in [Simd::Baseline, Simd::Avx2, Simd::Avx512] {
        if runs(level) {
            CAP.with(|c| c.set(Some(level)));
            check(level);
            CAP.with(|c| c.set(None));
        }
    }
}

/// `widest_simd!(vis fn name<T: Bound, ..>(arg: Type, ..) [-> Ret] => body)` defines `name`,
/// which calls `body` (an `#[inline(always)]` function with the same signature) compiled for
/// AVX-512 where the CPU runs it, else for AVX2, else as built.
macro_rules! widest_simd {
    ($(#[$attr:meta])* $vis:vis fn $name:ident $(<$($g:ident: $bound:path),* $(,)?>)?
        ($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $body:path) => {
        $(#[$attr])*
        $vis fn $name $(<$($g: $bound),*>)? ($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
                unsafe fn avx512 $(<$($g: $bound),*>)? ($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma,f16c")]
                unsafe fn avx2 $(<$($g: $bound),*>)? ($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                match $crate::ops::simd::widest() {
                    // SAFETY: the CPU runs AVX-512 F/BW/VL (checked).
                    $crate::ops::simd::Simd::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: the CPU runs AVX2, FMA and F16C (checked).
                    $crate::ops::simd::Simd::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::ops::simd::Simd::Baseline => {}
                }
            }
            $body($($arg),*)
        }
    };
}
pub(crate) use widest_simd;

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(always)]
    fn scaled_sum(xs: &[f32], s: f32) -> f32 {
        xs.iter().map(|x| x * s).sum()
    }

    widest_simd!(fn scaled_sum_wide(xs: &[f32], s: f32) -> f32 => scaled_sum);

    /// Each level runs (the cap is honoured and lifted again), and they agree.
    #[test]
    fn each_level_runs_and_agrees() {
        let xs: Vec<f32> = (0..1000).map(|i| (i as f32).sin()).collect();
        let mut seen = Vec::new();
        with_each_level(|level| {
            assert!(runs(level));
            assert!(level == Simd::Avx512 || !runs(Simd::Avx512), "{level:?} caps the wider level");
            seen.push((level, scaled_sum_wide(&xs, 0.3).to_bits()));
        });
        assert_eq!(seen[0].0, Simd::Baseline);
        assert!(seen.iter().all(|&(_, bits)| bits == seen[0].1), "{seen:?}");
        assert_eq!(seen.last().map(|s| s.0), Some(widest()), "the widest level runs last");
        assert!(
            runs(Simd::Baseline) && runs(Simd::Avx2) == super::super::cpu::avx2_fma(),
            "the cap is lifted"
        );
    }
}
