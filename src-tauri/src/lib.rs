//! Finetune Studio's desktop shell, kept thin: it starts the same studio server that
//! `finetune-studio serve` runs, in-process on 127.0.0.1 with a random port and a token made
//! for this launch, and opens a window on the bundled web UI, which it tells where the server is
//! (`window.__STUDIO__`). The only other things here are the native file dialogs, notifications
//! (the UI sends them through the notification plugin: alerts and finished jobs) and opening a
//! report in the system's browser.
//!
//! Workers are the `finetune-studio` binary: `$FINETUNE_STUDIO_WORKER`, else the one next to this
//! executable (the .deb installs both in /usr/bin), else the one on `PATH`.

mod commands;

use finetune_server::state::default_data_dir;
use finetune_server::{Server, ServerConfig, generate_token};
use std::path::PathBuf;
use tauri::webview::DownloadEvent;
use tauri::{Manager, WebviewUrl, WebviewWindowBuilder};

fn worker_exe() -> PathBuf {
    if let Some(w) = std::env::var_os("FINETUNE_STUDIO_WORKER") {
        return w.into();
    }
    let sibling = std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.join("finetune-studio")));
    sibling.filter(|p| p.is_file()).unwrap_or_else(|| PathBuf::from("finetune-studio"))
}

/// The script run in the window before the UI: where the API is, its token, and the first page
/// (`$FINETUNE_STUDIO_START`, e.g. `/new?demo=1` after `scripts/studio.sh` set up the demo).
fn init_script(base: &str, token: &str, start: Option<&str>) -> String {
    let studio = serde_json::json!({ "base": base, "token": token });
    let mut s = format!("window.__STUDIO__ = {studio};");
    if let Some(route) = start {
        let route = serde_json::Value::String(format!("#{route}"));
        s.push_str(&format!("if (!location.hash || location.hash === '#/') location.hash = {route};"));
    }
    s
}

/// Starts the studio server and the window; returns when the window is closed.
pub fn run() {
    let mut cfg = ServerConfig::new(default_data_dir(), worker_exe());
    cfg.host = "127.0.0.1".into();
    cfg.port = 0;
    cfg.token = Some(generate_token());
    let server = tauri::async_runtime::block_on(Server::bind(cfg)).unwrap_or_else(|e| {
        eprintln!("error: cannot start the studio: {e}");
        std::process::exit(1);
    });
    let base = format!("http://127.0.0.1:{}", server.addr().port());
    let token = server.token().unwrap_or_default().to_string();
    println!("studio listening on {base}");
    tauri::async_runtime::spawn(async move {
        if let Err(e) = server.run(std::future::pending()).await {
            eprintln!("error: the studio server stopped: {e}");
        }
    });
    let start = std::env::var("FINETUNE_STUDIO_START").ok();
    let script = init_script(&base, &token, start.as_deref());
    let studio = commands::Studio { base: base.clone(), token: token.clone() };
    tauri::Builder::default()
        .plugin(tauri_plugin_dialog::init())
        .plugin(tauri_plugin_notification::init())
        .manage(studio)
        .invoke_handler(tauri::generate_handler![
            commands::pick_folder,
            commands::pick_dataset,
            commands::open_in_browser
        ])
        .setup(move |app| {
            WebviewWindowBuilder::new(app, "main", WebviewUrl::App("index.html".into()))
                .title("Finetune Studio")
                .inner_size(1280.0, 800.0)
                .min_inner_size(960.0, 640.0)
                .initialization_script(&script)
                .on_download(|webview, event| {
                    // "Download adapter" saves into the user's Downloads folder.
                    if let DownloadEvent::Requested { url, destination } = event {
                        let name = destination.file_name().map(PathBuf::from).unwrap_or_else(|| {
                            PathBuf::from(url.path().rsplit('/').next().unwrap_or("download"))
                        });
                        let dir = webview.path().download_dir().unwrap_or_else(|_| std::env::temp_dir());
                        *destination = dir.join(name);
                    }
                    true
                })
                .build()?;
            Ok(())
        })
        .run(tauri::generate_context!())
        .unwrap_or_else(|e| {
            eprintln!("error: the desktop window failed: {e}");
            std::process::exit(1);
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_learns_the_server_and_its_first_page() {
        let s = init_script("http://127.0.0.1:5000", "abc", Some("/new?demo=1"));
        assert!(
            s.starts_with(r#"window.__STUDIO__ = {"base":"http://127.0.0.1:5000","token":"abc"};"#),
            "{s}"
        );
        assert!(s.contains(r##"location.hash = "#/new?demo=1""##), "{s}");
        assert!(!init_script("b", "t", None).contains("location.hash"));
    }

    #[test]
    fn the_context_embeds_the_built_ui() {
        let ctx: tauri::Context<tauri::Wry> = tauri::generate_context!();
        assert_eq!(ctx.config().identifier, "dev.finetune-studio.app");
        assert!(ctx.config().app.with_global_tauri, "the UI calls the dialogs through window.__TAURI__");
    }
}
