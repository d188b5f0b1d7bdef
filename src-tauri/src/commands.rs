//! The commands the web UI may call in the desktop app: native dialogs, each a forward to the
//! dialog plugin (async, so the blocking dialog runs off the main thread).

use tauri::AppHandle;
use tauri_plugin_dialog::DialogExt;

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
