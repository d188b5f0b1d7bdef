//! A minimal ustar writer for downloads: regular files only, names up to 100 bytes, written
//! into memory. Enough to hand a user a job's adapter folder as one file without a compression
//! dependency (adapter weights do not compress).

/// Appends one regular file (`name` is its path inside the archive).
pub fn append_file(out: &mut Vec<u8>, name: &str, data: &[u8], mtime: u64) {
    let mut h = [0u8; 512];
    let name = name.as_bytes();
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    let octal = |field: &mut [u8], value: u64| {
        let s = format!("{:0width$o}\0", value, width = field.len() - 1);
        field.copy_from_slice(s.as_bytes());
    };
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], data.len() as u64);
    octal(&mut h[136..148], mtime);
    h[148..156].copy_from_slice(b"        ");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    let sum: u64 = h.iter().map(|&b| b as u64).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// Ends the archive (two zero blocks).
pub fn finish(out: &mut Vec<u8>) {
    out.resize(out.len() + 1024, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_readable_archive() {
        let mut out = Vec::new();
        append_file(&mut out, "a/adapter_config.json", b"{}", 0);
        append_file(&mut out, "a/w.bin", &[7u8; 600], 0);
        finish(&mut out);
        assert_eq!(out.len(), 512 + 512 + 512 + 1024 + 1024);
        assert_eq!(&out[..21], b"a/adapter_config.json");
        assert_eq!(&out[257..262], b"ustar");
        // The checksum field holds the sum of the header with the field read as spaces.
        let mut h = out[..512].to_vec();
        let stored = u64::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap(), 8).unwrap();
        h[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, h.iter().map(|&b| b as u64).sum::<u64>());
        assert_eq!(&out[512..514], b"{}");
        let size =
            u64::from_str_radix(std::str::from_utf8(&out[1024 + 124..1024 + 135]).unwrap(), 8).unwrap();
        assert_eq!(size, 600);
    }
}
