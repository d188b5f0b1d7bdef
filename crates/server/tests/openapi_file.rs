//! The web UI's API types are generated from `ui/openapi.json` (openapi-typescript). This test
//! keeps that file equal to the document the server serves; after changing the API, regenerate
//! it with `UPDATE_OPENAPI=1 cargo test -p finetune-server --test openapi_file`, then
//! `npm run gen:api` in `ui/` (the UI build checks the types are current).

use std::path::Path;

#[test]
fn ui_openapi_json_is_current() {
    let (_, doc) = finetune_server::api::routes(1 << 20);
    let text = serde_json::to_string_pretty(&doc).expect("serialize") + "\n";
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ui/openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &text).expect("write ui/openapi.json");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == text,
        "ui/openapi.json is out of date: run `UPDATE_OPENAPI=1 cargo test -p finetune-server --test openapi_file` and `npm run gen:api` in ui/"
    );
}
