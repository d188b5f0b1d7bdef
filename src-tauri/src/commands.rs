//! The commands the web UI may call in the desktop app: native dialogs, each a forward to the
//! dialog plugin (async, so the blocking dialog runs off the main thread), and opening one of the
//! studio's pages (a job report) in the system's browser, since the window has no tabs.

use tauri::{AppHandle, State};
use tauri_plugin_dialog::DialogExt;

/// Where this launch's studio listens, and its token.
pub struct Studio {
    pub base: String,
    pub token: String,
}

/// A folder (a model) chosen by the user, or None when cancelled.
#[tauri::command]
pub async fn pick_folder(app: AppHandle) -> Option<String> {
    app.dialog().file().set_title("Choose a model folder").blocking_pick_folder().map(|p| p.to_string())
}

/// A JSONL/JSON dataset chosen by the user, or None when cancelled.
#[tauri::command]
pub async fn pick_dataset(app: AppHandle) -> Option<String> {
    app.dialog().file().add_filter("Datasets", &["jsonl", "json"]).blocking_pick_file().map(|p| p.to_string())
}

/// Opens a page of the studio's API (`/api/v1/fine-tuning/...`, e.g. a job's report) in the
/// system's browser, with this launch's token. Nothing outside the API can be opened this way.
#[tauri::command]
pub fn open_in_browser(studio: State<'_, Studio>, path: String) -> Result<(), String> {
    let url = studio_url(&studio.base, &studio.token, &path)?;
    open::that_detached(&url).map_err(|e| format!("could not open the browser: {e}"))
}

/// The studio's URL for an API path, with the token as `access_token` (a browser tab cannot send
/// a header); refuses anything that is not a plain path under the API.
pub(crate) fn studio_url(base: &str, token: &str, path: &str) -> Result<String, String> {
    let plain = path.chars().all(|c| c.is_ascii_alphanumeric() || "/-_.?=&".contains(c));
    if !path.starts_with("/api/v1/fine-tuning/") || !plain || path.contains("..") {
        return Err(format!("not a studio page: {path:?}"));
    }
    let sep = if path.contains('?') { '&' } else { '?' };
    Ok(format!("{base}{path}{sep}access_token={token}"))
}

#[cfg(test)]
mod tests {
    use super::studio_url;

    #[test]
    fn only_studio_pages_open_in_the_browser_with_the_token() {
        let base = "http://127.0.0.1:5000";
        assert_eq!(
            studio_url(base, "t0k", "/api/v1/fine-tuning/jobs/job-1/report?format=html").unwrap(),
            "http://127.0.0.1:5000/api/v1/fine-tuning/jobs/job-1/report?format=html&access_token=t0k"
        );
        assert_eq!(
            studio_url(base, "t", "/api/v1/fine-tuning/jobs/job-1/report").unwrap(),
            "http://127.0.0.1:5000/api/v1/fine-tuning/jobs/job-1/report?access_token=t"
        );
        for bad in [
            "https://example.com/",
            "/api/v1/fine-tuning/../../etc/passwd",
            "/api/v1/fine-tuning/jobs/x#frag",
            "/api/v1/fine-tuning/jobs/x y",
            "file:///etc/passwd",
            "/other",
        ] {
            assert!(studio_url(base, "t", bad).is_err(), "{bad}");
        }
    }
}
