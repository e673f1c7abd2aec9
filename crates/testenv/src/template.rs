//! `{{KEY}}` placeholders in YAML templates.

/// Replaces every `{{KEY}}` in `template` with its value from `vars`.
///
/// Panics if a placeholder is left unreplaced, so a typo in a template or a forgotten variable
/// fails the test at once instead of producing a confusing proxy config error.
///
/// ```
/// let yaml = testenv::render("port_value: {{PORT}}", &[("PORT", "8080")]);
/// assert_eq!(yaml, "port_value: 8080");
/// ```
pub fn render(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = template.to_string();
    for (key, value) in vars {
        out = out.replace(&format!("{{{{{key}}}}}"), value);
    }
    if let Some(start) = out.find("{{") {
        let end = out[start..].find("}}").map_or(out.len(), |e| start + e + 2);
        panic!(
            "testenv::render: placeholder {} has no value (given: {:?})",
            &out[start..end],
            vars.iter().map(|(k, _)| *k).collect::<Vec<_>>()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn replaces_all_occurrences() {
        assert_eq!(
            render("{{A}}-{{B}}-{{A}}", &[("A", "1"), ("B", "2")]),
            "1-2-1"
        );
    }

    #[test]
    #[should_panic(expected = "{{MISSING}}")]
    fn panics_on_unreplaced_placeholder() {
        render("x: {{MISSING}}", &[("OTHER", "1")]);
    }
}
