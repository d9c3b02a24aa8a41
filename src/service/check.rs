//! Request checks that need field paths (`recipients[3].data.thing1`); the rules themselves
//! live in `crate::validation`.
//!
//! A field path is anything `Display` (`"data"`, `format_args!("recipients[{i}].data")`) and is
//! rendered only for a violation: checking a valid request, the common case, allocates nothing.

use std::fmt::Display;

use crate::validation::{
    self, FieldViolation, LANGS, MAX_DATA_KEYS, MAX_ID_BYTES, MAX_IDEMPOTENCY_KEY_BYTES,
    MAX_KEY_BYTES, MAX_PAGE_BYTES, MAX_VALUE_BYTES,
};

/// Collects every bad field of a request, so the caller learns all of them at once.
#[derive(Debug, Default)]
pub(crate) struct Violations(Vec<FieldViolation>);

impl Violations {
    pub(crate) fn push(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    /// A required identifier (`touser`, `template_id`).
    pub(crate) fn required_id(&mut self, field: impl Display, value: &str) {
        if value.is_empty() {
            self.push(field.to_string(), "is required");
        } else {
            self.max_bytes(field, value, MAX_ID_BYTES);
        }
    }

    pub(crate) fn max_bytes(&mut self, field: impl Display, value: &str, max: usize) {
        if value.len() > max {
            self.push(
                field.to_string(),
                format!("is {} bytes, at most {max} allowed", value.len()),
            );
        }
    }

    pub(crate) fn page(&mut self, field: impl Display, page: &str) {
        self.max_bytes(field, page, MAX_PAGE_BYTES);
    }

    pub(crate) fn idempotency_key(&mut self, key: &str) {
        self.max_bytes("idempotency_key", key, MAX_IDEMPOTENCY_KEY_BYTES);
    }

    pub(crate) fn lang(&mut self, lang: &str) {
        if !lang.is_empty() && !LANGS.contains(&lang) {
            self.push(
                "lang",
                format!("must be one of {} (or empty for zh_CN)", LANGS.join(", ")),
            );
        }
    }

    /// The size of a (merged) data map.
    pub(crate) fn data_count(&mut self, field: impl Display, count: usize) {
        if count == 0 {
            self.push(field.to_string(), "is required: at least one keyword");
        } else if count > MAX_DATA_KEYS {
            self.push(
                field.to_string(),
                format!("has {count} keywords, at most {MAX_DATA_KEYS} allowed"),
            );
        }
    }

    /// One keyword: `map_field` is the path of the map it came from (`data`,
    /// `recipients[3].data`).
    pub(crate) fn data_entry(&mut self, map_field: impl Display, key: &str, value: &str) {
        // The field path is built only for a violation: valid keywords, the common case, cost
        // no allocation.
        let field = || format!("{map_field}.{key}");
        if key.is_empty() {
            self.push(map_field.to_string(), "has an empty keyword name");
        } else if key.len() > MAX_KEY_BYTES {
            self.push(
                field(),
                format!(
                    "keyword name is {} bytes, at most {MAX_KEY_BYTES} allowed",
                    key.len()
                ),
            );
        } else if value.len() > MAX_VALUE_BYTES {
            self.push(
                field(),
                format!(
                    "is {} bytes, at most {MAX_VALUE_BYTES} allowed",
                    value.len()
                ),
            );
        } else if let Err(rule) = validation::check_keyword_value(key, value) {
            self.push(field(), rule);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn into_vec(self) -> Vec<FieldViolation> {
        self.0
    }
}
