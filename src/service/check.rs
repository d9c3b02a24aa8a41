//! Request checks that need field paths (`recipients[3].data.thing1`); the rules themselves
//! live in `crate::validation` and, against the app's template, in `crate::templates::check`.
//!
//! A field path is anything `Display` (`"data"`, `format_args!("recipients[{i}].data")`) and is
//! rendered only for a violation: checking a valid request, the common case, allocates nothing.

use std::{collections::BTreeMap, fmt::Display, sync::Arc, time::Duration};

use tokio::time::Instant;

use super::{AppSender, SendError};
use crate::{
    templates::{self, Lookup},
    validation::{
        self, FieldViolation, LANGS, MAX_DATA_KEYS, MAX_ID_BYTES, MAX_IDEMPOTENCY_KEY_BYTES,
        MAX_KEY_BYTES, MAX_PAGE_BYTES, MAX_VALUE_BYTES,
    },
    wechat::TemplateInfo,
};

/// The template `template_id` of `app`, if its list is to be had by the caller's `deadline`
/// (and the cache's own wait bound); `None` to send unchecked (WeChat still checks it). Fails
/// when a freshly loaded list lacks it: WeChat would answer 40037.
pub(crate) async fn listed_template(
    app: &AppSender,
    template_id: &str,
    deadline: Option<Instant>,
) -> Result<Option<Arc<TemplateInfo>>, SendError> {
    let Some(templates) = app.templates() else {
        return Ok(None);
    };
    // The cache bounds the wait itself; only a sooner caller deadline matters here.
    let wait_until = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
    match templates.lookup(template_id, wait_until).await {
        Lookup::Listed(template) => Ok(Some(template)),
        Lookup::NotListed => Err(SendError::invalid_field(
            "template_id",
            "is not one of the app's templates",
        )),
        Lookup::Unavailable => Ok(None),
    }
}

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

    /// Keys of `data` (found at `map_field`, e.g. `recipients[3].data`) that the template does
    /// not have, and enum keywords whose value it does not list.
    pub(crate) fn template_values(
        &mut self,
        map_field: impl Display,
        template: &TemplateInfo,
        data: &BTreeMap<String, String>,
    ) {
        // Field paths are built only for a violation.
        templates::check::data_values(template, data, |key, description| {
            self.push(format!("{map_field}.{key}"), description);
        });
    }

    /// Keywords of the template that `has_key` says are missing, reported at `map_field`.
    pub(crate) fn template_keywords_present(
        &mut self,
        map_field: impl Display,
        template: &TemplateInfo,
        has_key: impl Fn(&str) -> bool,
    ) {
        templates::check::missing_keywords(template, has_key, |keyword, description| {
            self.push(format!("{map_field}.{keyword}"), description);
        });
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn into_vec(self) -> Vec<FieldViolation> {
        self.0
    }
}
