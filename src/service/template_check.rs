//! Checks against the app's template as WeChat lists it: every keyword present, no key the
//! template lacks, enum keywords holding a listed value, and the template itself listed. When
//! the list cannot be had the message goes unchecked (WeChat still checks it).

use std::{collections::BTreeMap, fmt::Display, sync::Arc, time::Duration};

use tokio::time::Instant;

use super::{App, SendError, check::Violations};
use crate::{templates::Lookup, wechat::TemplateInfo};

/// Enum values named in one error message at most.
const MAX_VALUES_LISTED: usize = 20;

/// The template `template_id` of `app`, if its list is to be had by the caller's `deadline`
/// (and the cache's own wait bound); `None` to send unchecked. Fails when a freshly loaded list
/// lacks it: WeChat would answer 40037.
pub(crate) async fn listed_template(
    app: &App,
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

impl Violations {
    /// Keys of `data` (found at `map_field`, e.g. `recipients[3].data`) that the template does
    /// not have, and enum keywords whose value it does not list.
    pub(crate) fn template_values(
        &mut self,
        map_field: impl Display,
        template: &TemplateInfo,
        data: &BTreeMap<String, String>,
    ) {
        // In key order (a BTreeMap); field paths are built only for a violation.
        let field = |key: &str| format!("{map_field}.{key}");
        for (key, value) in data {
            if template.keywords_known() && !template.keywords.contains(key) {
                self.push(
                    field(key),
                    format!(
                        "is not a keyword of template {} (its keywords: {})",
                        template.id,
                        template.keywords.join(", ")
                    ),
                );
            } else if let Some(allowed) = template.enum_values.get(key.as_str())
                && !allowed.contains(value)
            {
                self.push(field(key), enum_description(template, allowed));
            }
        }
    }

    /// Keywords of the template that `has_key` says are missing, reported at `map_field`.
    pub(crate) fn template_keywords_present(
        &mut self,
        map_field: impl Display,
        template: &TemplateInfo,
        has_key: impl Fn(&str) -> bool,
    ) {
        for keyword in &template.keywords {
            if !has_key(keyword) {
                self.push(
                    format!("{map_field}.{keyword}"),
                    format!("is required by template {}", template.id),
                );
            }
        }
    }
}

fn enum_description(template: &TemplateInfo, allowed: &[String]) -> String {
    let mut listed = allowed
        .iter()
        .take(MAX_VALUES_LISTED)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if allowed.len() > MAX_VALUES_LISTED {
        listed.push_str(", ...");
    }
    format!(
        "must be one of the values template {} lists for it: {listed}",
        template.id
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{validation::FieldViolation, wechat::TemplateKind};

    fn order_status() -> TemplateInfo {
        TemplateInfo {
            id: "T-status".into(),
            title: "订单状态通知".into(),
            kind: TemplateKind::OneTime,
            keywords: vec![
                "character_string1".into(),
                "enum_string2".into(),
                "thing3".into(),
            ],
            enum_values: BTreeMap::from([(
                "enum_string2".to_owned(),
                vec!["待发货".to_owned(), "已发货".to_owned()],
            )]),
        }
    }

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }

    fn check(template: &TemplateInfo, data: &BTreeMap<String, String>) -> Vec<FieldViolation> {
        let mut violations = Violations::default();
        violations.template_values("data", template, data);
        violations.template_keywords_present("data", template, |key| data.contains_key(key));
        violations.into_vec()
    }

    #[test]
    fn a_matching_message_passes() {
        let good = data(&[
            ("character_string1", "SBX1"),
            ("enum_string2", "已发货"),
            ("thing3", "请注意查收"),
        ]);
        assert_eq!(check(&order_status(), &good), []);
    }

    #[test]
    fn missing_extra_and_unlisted_values_are_each_named() {
        let bad = data(&[
            ("character_string1", "SBX1"),
            ("enum_string2", "丢了"),
            ("thing9", "x"),
            ("amount7", "1元"),
        ]);
        let violations = check(&order_status(), &bad);
        let described: Vec<(&str, &str)> = violations
            .iter()
            .map(|v| (v.field.as_str(), v.description.as_str()))
            .collect();
        assert_eq!(
            described,
            [
                (
                    "data.amount7",
                    "is not a keyword of template T-status (its keywords: character_string1, \
                     enum_string2, thing3)"
                ),
                (
                    "data.enum_string2",
                    "must be one of the values template T-status lists for it: 待发货, 已发货"
                ),
                (
                    "data.thing9",
                    "is not a keyword of template T-status (its keywords: character_string1, \
                     enum_string2, thing3)"
                ),
                ("data.thing3", "is required by template T-status"),
            ]
        );
    }

    #[test]
    fn unknown_keywords_check_only_enum_values() {
        let template = TemplateInfo {
            keywords: Vec::new(),
            enum_values: BTreeMap::new(),
            ..order_status()
        };
        assert_eq!(check(&template, &data(&[("anything1", "x")])), []);
    }

    #[test]
    fn long_enum_lists_are_cut_short() {
        let allowed: Vec<String> = (0..30).map(|n| format!("v{n}")).collect();
        let description = enum_description(&order_status(), &allowed);
        assert!(description.ends_with("v19, ..."), "{description}");
    }
}
