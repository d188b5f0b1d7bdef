//! The Hugging Face hub cache: `models--<org>--<name>/snapshots/<revision>/` folders, the
//! revision that `refs/main` points at preferred. Listed so models downloaded by other tools can
//! be picked without copying them.

use std::path::{Path, PathBuf};

/// (repo id such as `org/name`, snapshot folder) of each cached model with a `config.json`.
pub fn cached_models(cache: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(cache) else { return Vec::new() };
    let mut out = Vec::new();
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(repo) = name.strip_prefix("models--") else { continue };
        let repo = repo.replacen("--", "/", 1);
        let dir = e.path();
        let snapshots = dir.join("snapshots");
        let main =
            std::fs::read_to_string(dir.join("refs").join("main")).ok().map(|s| snapshots.join(s.trim()));
        let snapshot = main.filter(|p| p.join("config.json").is_file()).or_else(|| {
            let mut all: Vec<PathBuf> = std::fs::read_dir(&snapshots)
                .ok()?
                .filter_map(|s| s.ok().map(|s| s.path()))
                .filter(|p| p.join("config.json").is_file())
                .collect();
            all.sort();
            all.pop()
        });
        if let Some(s) = snapshot {
            out.push((repo, s));
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_snapshots_preferring_main() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("models--acme--tiny");
        for rev in ["aaa", "bbb"] {
            std::fs::create_dir_all(repo.join("snapshots").join(rev)).unwrap();
            std::fs::write(repo.join("snapshots").join(rev).join("config.json"), "{}").unwrap();
        }
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "aaa\n").unwrap();
        std::fs::create_dir_all(dir.path().join("datasets--x--y/snapshots/r")).unwrap();
        let found = cached_models(dir.path());
        assert_eq!(found, vec![("acme/tiny".to_string(), repo.join("snapshots/aaa"))]);
        assert!(cached_models(&dir.path().join("missing")).is_empty());
    }
}
