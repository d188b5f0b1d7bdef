//! The TOML config parser and validator: any input gives a config or an error, never a panic.
#![no_main]

use finetune_engine::config::TrainConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(c) = TrainConfig::from_toml_str(&text, std::path::Path::new("fuzz.toml")) {
        // A config that parses must round-trip and validate cleanly.
        let again = TrainConfig::from_toml_str(&c.to_toml(), std::path::Path::new("again.toml")).expect("round trip");
        assert_eq!(again, c);
        assert!(c.validate().is_empty());
    }
    let _ = TrainConfig::default().with_overrides(&[text.to_string()]);
});
