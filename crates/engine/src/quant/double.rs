//! Double quantization of 4-bit block scales, as bitsandbytes 0.50 does it on the CPU: subtract
//! the mean (computed with torch's single-threaded cascade sum, so the offset is bit-identical),
//! then quantize blockwise (blocks of 256) to 8 bits with the signed dynamic map through the
//! same 65536-entry lookup table bitsandbytes' CPU kernel uses.

/// bitsandbytes' `create_dynamic_map(signed=True)`: 256 sorted values in [-0.993, 1].
pub const DYNAMIC_MAP: [f32; 256] = dynamic_map();

/// Block size of the second quantization.
pub const BLOCK: usize = 256;

const fn dynamic_map() -> [f32; 256] {
    let bits: [u32; 256] = [
        0xbf7e3333, 0xbf7a999a, 0xbf770000, 0xbf736666, 0xbf6fcccd, 0xbf6c3333, 0xbf68999a, 0xbf650000,
        0xbf616666, 0xbf5dcccd, 0xbf5a3333, 0xbf56999a, 0xbf530000, 0xbf4f6666, 0xbf4bcccd, 0xbf483333,
        0xbf44999a, 0xbf410000, 0xbf3d6666, 0xbf39cccd, 0xbf363334, 0xbf32999a, 0xbf2f0000, 0xbf2b6666,
        0xbf27cccd, 0xbf243334, 0xbf20999a, 0xbf1d0000, 0xbf196666, 0xbf15cccd, 0xbf123334, 0xbf0e999a,
        0xbf0b0000, 0xbf076666, 0xbf03cccc, 0xbf003333, 0xbef93332, 0xbef20000, 0xbeeacccc, 0xbee3999a,
        0xbedc6666, 0xbed53333, 0xbece0000, 0xbec6cccc, 0xbebf999a, 0xbeb86666, 0xbeb13333, 0xbeaa0000,
        0xbea2cccc, 0xbe9b999a, 0xbe946666, 0xbe8d3334, 0xbe860000, 0xbe7d9999, 0xbe6f3333, 0xbe60cccd,
        0xbe526666, 0xbe440000, 0xbe35999a, 0xbe273333, 0xbe18cccd, 0xbe0a6666, 0xbdf80000, 0xbddb3334,
        0xbdc9eb85, 0xbdc428f7, 0xbdbe6667, 0xbdb8a3d7, 0xbdb2e148, 0xbdad1eb8, 0xbda75c2a, 0xbda1999a,
        0xbd9bd70a, 0xbd96147b, 0xbd9051eb, 0xbd8a8f5d, 0xbd84cccd, 0xbd7e147b, 0xbd728f5d, 0xbd670a3d,
        0xbd5b851f, 0xbd500000, 0xbd447ae1, 0xbd38f5c3, 0xbd2d70a3, 0xbd21eb85, 0xbd166667, 0xbd0ae148,
        0xbcfeb852, 0xbce7ae15, 0xbcd0a3d7, 0xbcb9999a, 0xbca28f5d, 0xbc8b851f, 0xbc68f5c3, 0xbc3ae148,
        0xbc1f3b64, 0xbc160418, 0xbc0ccccd, 0xbc039581, 0xbbf4bc6a, 0xbbe24dd3, 0xbbcfdf3b, 0xbbbd70a4,
        0xbbab020d, 0xbb989374, 0xbb8624dd, 0xbb676c8a, 0xbb428f5c, 0xbb1db22d, 0xbaf1a9fc, 0xbaa7ef9d,
        0xba7765ff, 0xba59e83e, 0xba3c6a80, 0xba1eecc1, 0xba016f01, 0xb9c7e283, 0xb98ce705, 0xb923d70b,
        0xb8ba1f4b, 0xb88aefb3, 0xb8378034, 0xb7b24206, 0xb70205ff, 0xb65a1a94, 0xb513a3b7, 0x00000000,
        0x3513a3b7, 0x365a1a94, 0x370205ff, 0x37b24206, 0x38378034, 0x388aefb3, 0x38ba1f4b, 0x3923d70b,
        0x398ce705, 0x39c7e283, 0x3a016f01, 0x3a1eecc1, 0x3a3c6a80, 0x3a59e83e, 0x3a7765ff, 0x3aa7ef9d,
        0x3af1a9fc, 0x3b1db22d, 0x3b428f5c, 0x3b676c8a, 0x3b8624dd, 0x3b989374, 0x3bab020d, 0x3bbd70a4,
        0x3bcfdf3b, 0x3be24dd3, 0x3bf4bc6a, 0x3c039581, 0x3c0ccccd, 0x3c160418, 0x3c1f3b64, 0x3c3ae148,
        0x3c68f5c3, 0x3c8b851f, 0x3ca28f5d, 0x3cb9999a, 0x3cd0a3d7, 0x3ce7ae15, 0x3cfeb852, 0x3d0ae148,
        0x3d166667, 0x3d21eb85, 0x3d2d70a3, 0x3d38f5c3, 0x3d447ae1, 0x3d500000, 0x3d5b851f, 0x3d670a3d,
        0x3d728f5d, 0x3d7e147b, 0x3d84cccd, 0x3d8a8f5d, 0x3d9051eb, 0x3d96147b, 0x3d9bd70a, 0x3da1999a,
        0x3da75c2a, 0x3dad1eb8, 0x3db2e148, 0x3db8a3d7, 0x3dbe6667, 0x3dc428f7, 0x3dc9eb85, 0x3ddb3334,
        0x3df80000, 0x3e0a6666, 0x3e18cccd, 0x3e273333, 0x3e35999a, 0x3e440000, 0x3e526666, 0x3e60cccd,
        0x3e6f3333, 0x3e7d9999, 0x3e860000, 0x3e8d3334, 0x3e946666, 0x3e9b999a, 0x3ea2cccc, 0x3eaa0000,
        0x3eb13333, 0x3eb86666, 0x3ebf999a, 0x3ec6cccc, 0x3ece0000, 0x3ed53333, 0x3edc6666, 0x3ee3999a,
        0x3eeacccc, 0x3ef20000, 0x3ef93332, 0x3f003333, 0x3f03cccc, 0x3f076666, 0x3f0b0000, 0x3f0e999a,
        0x3f123334, 0x3f15cccd, 0x3f196666, 0x3f1d0000, 0x3f20999a, 0x3f243334, 0x3f27cccd, 0x3f2b6666,
        0x3f2f0000, 0x3f32999a, 0x3f363334, 0x3f39cccd, 0x3f3d6666, 0x3f410000, 0x3f44999a, 0x3f483333,
        0x3f4bcccd, 0x3f4f6666, 0x3f530000, 0x3f56999a, 0x3f5a3333, 0x3f5dcccd, 0x3f616666, 0x3f650000,
        0x3f68999a, 0x3f6c3333, 0x3f6fcccd, 0x3f736666, 0x3f770000, 0x3f7a999a, 0x3f7e3333, 0x3f800000,
    ];
    let mut out = [0f32; 256];
    let mut i = 0;
    while i < 256 {
        out[i] = f32::from_bits(bits[i]);
        i += 1;
    }
    out
}

/// 8-bit codes of block scales minus their mean, with one f32 scale per 256 codes.
#[derive(Debug, Clone)]
pub struct DoubleQuant {
    pub codes: Vec<u8>,
    pub absmax2: Vec<f32>,
    pub offset: f32,
}

impl DoubleQuant {
    pub fn quantize(absmax: &[f32]) -> Self {
        let offset = torch_mean(absmax);
        let centred: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
        let (codes, absmax2) = quantize_blockwise_dynamic(&centred, BLOCK);
        Self { codes, absmax2, offset }
    }

    pub fn len(&self) -> usize {
        self.codes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }

    /// The reconstructed scale of block `b`: `DYNAMIC_MAP[code] * absmax2 + offset` in f32.
    #[inline]
    pub fn value(&self, b: usize) -> f32 {
        DYNAMIC_MAP[self.codes[b] as usize] * self.absmax2[b / BLOCK] + self.offset
    }

    pub fn bytes(&self) -> usize {
        self.codes.len() + self.absmax2.len() * 4 + 4
    }
}

/// bitsandbytes 0.50's CPU `quantize_blockwise` with the dynamic map: per block the absmax,
/// `x * (1 / absmax)`, then a 65536-entry lookup table over [-1, 1] built from the midpoints
/// between neighbouring codes (so values closer than one table step resolve to the step's code,
/// exactly as bitsandbytes does).
pub fn quantize_blockwise_dynamic(x: &[f32], block: usize) -> (Vec<u8>, Vec<f32>) {
    let lut = dynamic_lut();
    let mut codes = Vec::with_capacity(x.len());
    let mut scales = Vec::with_capacity(x.len().div_ceil(block));
    for chunk in x.chunks(block) {
        let absmax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
        scales.push(absmax);
        if absmax == 0.0 {
            codes.extend(std::iter::repeat_n(0u8, chunk.len()));
            continue;
        }
        let inv = 1.0f32 / absmax;
        for &v in chunk {
            let normed = (v * inv).clamp(-1.0, 1.0);
            let idx = ((normed + 1.0) * 0.5 * (LUT_SIZE - 1) as f32 + 0.5) as usize;
            codes.push(lut[idx.min(LUT_SIZE - 1)]);
        }
    }
    (codes, scales)
}

const LUT_SIZE: usize = 65536;

/// Table index -> code: the number of code midpoints below the table point's value.
fn dynamic_lut() -> &'static [u8] {
    static LUT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    LUT.get_or_init(|| {
        let code = &DYNAMIC_MAP;
        let mid: Vec<f32> = code.windows(2).map(|w| 0.5f32 * (w[0] + w[1])).collect();
        let mut out = Vec::with_capacity(LUT_SIZE);
        let mut c = 0usize;
        for i in 0..LUT_SIZE {
            let val = -1.0f32 + (2.0f32 * i as f32) / (LUT_SIZE - 1) as f32;
            while c < mid.len() && mid[c] < val {
                c += 1;
            }
            out.push(c as u8);
        }
        out
    })
}

/// `torch.Tensor.mean()` of a contiguous f32 vector on one CPU thread: torch's cascade sum with
/// AVX-512 vectors (16 lanes, 4 accumulators, 4 levels), then a division by the count.
pub fn torch_mean(x: &[f32]) -> f32 {
    torch_sum(x) / x.len() as f32
}

const LANES: usize = 16;

#[derive(Clone, Copy)]
struct Lanes([f32; LANES]);

trait Acc: Copy {
    const ZERO: Self;
    fn add(self, o: Self) -> Self;
}

impl Acc for f32 {
    const ZERO: Self = 0.0;
    fn add(self, o: Self) -> Self {
        self + o
    }
}

impl Acc for Lanes {
    const ZERO: Self = Lanes([0.0; LANES]);
    fn add(self, o: Self) -> Self {
        let mut r = self.0;
        for (a, b) in r.iter_mut().zip(o.0) {
            *a += b;
        }
        Lanes(r)
    }
}

/// torch's `utils::CeilLog2`.
fn ceil_log2(x: usize) -> usize {
    if x <= 2 { 1 } else { (usize::BITS - (x - 1).leading_zeros()) as usize }
}

/// torch's `multi_row_sum` with 4 rows: `load(i, k)` is element k of row group i. The loops
/// mirror torch's so the summation order is visibly the same.
#[allow(clippy::needless_range_loop)]
fn multi_row_sum<T: Acc>(load: &impl Fn(usize, usize) -> T, size: usize) -> [T; 4] {
    const LEVELS: usize = 4;
    let level_power = 4.max(ceil_log2(size) / LEVELS);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = [[T::ZERO; 4]; LEVELS];
    let mut i = 0;
    while i + level_step <= size {
        for _ in 0..level_step {
            for (k, a) in acc[0].iter_mut().enumerate() {
                *a = a.add(load(i, k));
            }
            i += 1;
        }
        for j in 1..LEVELS {
            for k in 0..4 {
                acc[j][k] = acc[j][k].add(acc[j - 1][k]);
                acc[j - 1][k] = T::ZERO;
            }
            if i & (level_mask << (j * level_power)) != 0 {
                break;
            }
        }
    }
    while i < size {
        for (k, a) in acc[0].iter_mut().enumerate() {
            *a = a.add(load(i, k));
        }
        i += 1;
    }
    for j in 1..LEVELS {
        for k in 0..4 {
            acc[0][k] = acc[0][k].add(acc[j][k]);
        }
    }
    acc[0]
}

/// torch's `row_sum` (4-way instruction-level parallelism).
fn row_sum<T: Acc>(load: impl Fn(usize) -> T, size: usize) -> T {
    let size_ilp = size / 4;
    let mut partial = multi_row_sum(&|i, k| load(i * 4 + k), size_ilp);
    for i in size_ilp * 4..size {
        partial[0] = partial[0].add(load(i));
    }
    for k in 1..4 {
        partial[0] = partial[0].add(partial[k]);
    }
    partial[0]
}

/// torch's `cascade_sum` for a contiguous f32 vector (`vectorized_inner_sum`, or the scalar
/// `row_sum` below one vector).
pub fn torch_sum(x: &[f32]) -> f32 {
    if x.len() < LANES {
        return 0.0 + row_sum(|i| x[i], x.len());
    }
    let vecs = x.len() / LANES;
    let v = row_sum(
        |i| {
            let mut l = [0f32; LANES];
            l.copy_from_slice(&x[i * LANES..(i + 1) * LANES]);
            Lanes(l)
        },
        vecs,
    );
    let mut acc = 0f32;
    for &t in &x[vecs * LANES..] {
        acc += t;
    }
    for lane in v.0 {
        acc += lane;
    }
    0.0 + acc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_map_is_sorted_and_spans_minus_one_to_one() {
        assert!(DYNAMIC_MAP.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(DYNAMIC_MAP[255], 1.0);
        assert!((DYNAMIC_MAP[0] + 0.99296875).abs() < 1e-6);
        assert!(DYNAMIC_MAP.contains(&0.0));
    }

    #[test]
    fn cascade_sum_is_close_to_the_exact_sum() {
        let x: Vec<f32> = (0..5000).map(|i| ((i * 7919) % 1000) as f32 / 997.0).collect();
        let exact: f64 = x.iter().map(|&v| v as f64).sum();
        assert!((torch_sum(&x) as f64 - exact).abs() < 1e-3);
        assert_eq!(torch_sum(&[1.0, 2.0, 3.0]), 6.0);
        assert_eq!(ceil_log2(1), 1);
        assert_eq!(ceil_log2(16), 4);
        assert_eq!(ceil_log2(17), 5);
    }

    #[test]
    fn blockwise_codes_pick_the_nearest_value() {
        let x = [-1.0f32, 0.5, 0.0, 1.0];
        let (c, s) = quantize_blockwise_dynamic(&x, 256);
        assert_eq!(s, vec![1.0]);
        assert_eq!(c[0], 0, "below the first code maps to it");
        let (z, s0) = quantize_blockwise_dynamic(&[0.0; 3], 256);
        assert_eq!((z, s0), (vec![0, 0, 0], vec![0.0]), "an all-zero block has scale 0 and code 0");
        assert_eq!(c[3], 255);
        // Within one table step (2/65535) of the nearest code, as bitsandbytes resolves it.
        let step = 2.0 / 65535.0;
        for (v, &q) in [(0.0f32, &c[2]), (0.5, &c[1])] {
            let nearest = DYNAMIC_MAP.iter().map(|&d| (d - v).abs()).fold(f32::MAX, f32::min);
            assert!(
                (DYNAMIC_MAP[q as usize] - v).abs() <= nearest + step,
                "{v} -> {}",
                DYNAMIC_MAP[q as usize]
            );
        }
    }
}
