// Tauri's build step: embeds tauri.conf.json, the capabilities and the app icon.
fn main() {
    tauri_build::build()
}
