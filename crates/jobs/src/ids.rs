//! Identifiers for jobs, datasets and models: a prefix plus 12 random hex digits, drawn from the
//! standard library's randomly keyed hasher (no RNG dependency, different in every process).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// `prefix-` followed by 12 lowercase hex digits, e.g. `job-3f9a0c12d4e5`.
pub fn new_id(prefix: &str) -> String {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_i64(crate::time::now_ms());
    format!("{prefix}-{:012x}", h.finish() & 0xffff_ffff_ffff)
}

/// Whether `id` looks like one of ours (letters, digits and `-` only), so it is safe in a path.
pub fn is_valid(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_and_path_safe() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_id("job")).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|i| is_valid(i) && i.starts_with("job-") && i.len() == 16));
        assert!(!is_valid("../etc"));
        assert!(!is_valid(""));
    }
}
