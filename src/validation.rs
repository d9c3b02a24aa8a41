//! Pure checks of request fields and template keyword values, before anything is sent.
//!
//! CONTRACT STUB: signatures are fixed; bodies are being written.

/// One bad field: `field` is a path such as `data["thing1"]` or `recipients[3].touser`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field in the request.
    pub field: String,
    /// What is wrong, lowercase, naming the rule.
    pub description: String,
}

/// `data` holds at most this many keys.
pub const MAX_DATA_KEYS: usize = 32;
/// A `data` key is at most this many bytes.
pub const MAX_KEY_BYTES: usize = 64;
/// A `data` value is at most this many bytes.
pub const MAX_VALUE_BYTES: usize = 1024;
/// `touser`, `template_id` and `app` are at most this many bytes.
pub const MAX_ID_BYTES: usize = 128;
/// `page` is at most this many bytes.
pub const MAX_PAGE_BYTES: usize = 1024;
/// `idempotency_key` is at most this many bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;
/// The languages WeChat accepts for `lang`.
pub const LANGS: &[&str] = &["zh_CN", "en_US", "zh_HK", "zh_TW"];

/// The keyword type of a data key: the key without its trailing digits (`thing1` -> `thing`).
pub fn keyword_type(key: &str) -> Option<&str> {
    let _ = key;
    unimplemented!()
}

/// Checks one value against its keyword type's WeChat rule. Unknown types pass.
pub fn check_keyword_value(key: &str, value: &str) -> Result<(), String> {
    let _ = (key, value);
    unimplemented!()
}
