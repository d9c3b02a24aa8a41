//! Checks of a message's data against its template as WeChat lists it: no key the template
//! lacks, enum keywords holding a listed value, every keyword present. Pure functions: each
//! problem goes to `report(key, description)`, and the service turns it into a field violation
//! at the key's path (`data.thing1`, `recipients[3].data.thing1`).

use std::collections::BTreeMap;

use crate::wechat::TemplateInfo;

/// Enum values named in one description at most.
const MAX_VALUES_LISTED: usize = 20;

/// Keys of `data` that the template does not have, and enum keywords whose value it does not
/// list, in key order.
pub fn data_values(
    template: &TemplateInfo,
    data: &BTreeMap<String, String>,
    mut report: impl FnMut(&str, String),
) {
    for (key, value) in data {
        if template.keywords_known() && !template.keywords.contains(key) {
            report(
                key,
                format!(
                    "is not a keyword of template {} (its keywords: {})",
                    template.id,
                    template.keywords.join(", ")
                ),
            );
        } else if let Some(allowed) = template.enum_values.get(key.as_str())
            && !allowed.contains(value)
        {
            report(key, enum_description(template, allowed));
        }
    }
}

/// Keywords of the template that `has_key` says are missing, in the template's order.
pub fn missing_keywords(
    template: &TemplateInfo,
    has_key: impl Fn(&str) -> bool,
    mut report: impl FnMut(&str, String),
) {
    for keyword in &template.keywords {
        if !has_key(keyword) {
            report(keyword, format!("is required by template {}", template.id));
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
    use super::*;
    use crate::wechat::TemplateKind;

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

    fn check(template: &TemplateInfo, data: &BTreeMap<String, String>) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        data_values(template, data, |key, description| {
            problems.push((key.to_owned(), description));
        });
        missing_keywords(
            template,
            |key| data.contains_key(key),
            |key, description| problems.push((key.to_owned(), description)),
        );
        problems
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
        let problems = check(&order_status(), &bad);
        let described: Vec<(&str, &str)> = problems
            .iter()
            .map(|(key, description)| (key.as_str(), description.as_str()))
            .collect();
        assert_eq!(
            described,
            [
                (
                    "amount7",
                    "is not a keyword of template T-status (its keywords: character_string1, \
                     enum_string2, thing3)"
                ),
                (
                    "enum_string2",
                    "must be one of the values template T-status lists for it: 待发货, 已发货"
                ),
                (
                    "thing9",
                    "is not a keyword of template T-status (its keywords: character_string1, \
                     enum_string2, thing3)"
                ),
                ("thing3", "is required by template T-status"),
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
