//! Placeholder: replaced by the extended form parser.

pub fn parse(_body: &[u8]) -> Result<serde_json::Value, String> {
    Err("form bodies are not supported yet".into())
}
