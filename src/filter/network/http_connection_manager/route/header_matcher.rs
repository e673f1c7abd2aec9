//! `config.route.v3.HeaderMatcher`: one header condition of a route's `match`, over
//! pseudo-headers too.

use super::RequestView;
use crate::config::ConfigError;
use crate::filter::common::string_matcher::StringMatcher;
use crate::filter::network::http_connection_manager::config::HeaderMatcher;

#[derive(Debug)]
enum HeaderMatchKind {
    Present(bool),
    Value(StringMatcher),
}

/// A compiled `HeaderMatcher`.
#[derive(Debug)]
pub(super) struct CompiledHeaderMatcher {
    name: String,
    kind: HeaderMatchKind,
    invert: bool,
    missing_as_empty: bool,
}

impl CompiledHeaderMatcher {
    /// Builds one `HeaderMatcher`; no specifier means "present", as in Envoy.
    pub(super) fn build(h: &HeaderMatcher, path: &str) -> Result<Self, ConfigError> {
        let HeaderMatcher {
            name,
            string_match,
            present_match,
            exact_match,
            prefix_match,
            suffix_match,
            contains_match,
            safe_regex_match,
            invert_match,
            treat_missing_header_as_empty,
        } = h;
        let mut kinds = Vec::new();
        if let Some(sm) = string_match {
            kinds.push(HeaderMatchKind::Value(StringMatcher::build(
                sm,
                &format!("{path}.string_match"),
            )?));
        }
        if let Some(p) = present_match {
            kinds.push(HeaderMatchKind::Present(*p));
        }
        // The legacy fields share the `header_match_specifier` oneof with `string_match`; each
        // is compiled on its own so an error names the field that was set.
        let legacy = [
            exact_match.clone().map(|s| StringMatcher::Exact(s, false)),
            prefix_match
                .clone()
                .map(|s| StringMatcher::Prefix(s, false)),
            suffix_match
                .clone()
                .map(|s| StringMatcher::Suffix(s, false)),
            contains_match
                .clone()
                .map(|s| StringMatcher::Contains(s, false)),
            safe_regex_match
                .as_ref()
                .map(|r| r.compile(&format!("{path}.safe_regex_match")))
                .transpose()?
                .map(StringMatcher::Regex),
        ];
        kinds.extend(legacy.into_iter().flatten().map(HeaderMatchKind::Value));
        let kind = match kinds.len() {
            0 => HeaderMatchKind::Present(true),
            1 => kinds.remove(0),
            _ => {
                return Err(ConfigError::new(
                    path,
                    "only one header match specifier may be set",
                ))
            }
        };
        Ok(CompiledHeaderMatcher {
            name: name.to_ascii_lowercase(),
            kind,
            invert: *invert_match,
            missing_as_empty: *treat_missing_header_as_empty,
        })
    }

    /// True if the request's header (all its values joined) meets the condition.
    pub(super) fn matches(&self, req: &RequestView<'_>) -> bool {
        let value = req.header(&self.name);
        match &self.kind {
            HeaderMatchKind::Present(want) => (value.is_some() == *want) != self.invert,
            HeaderMatchKind::Value(m) => match value {
                Some(v) => m.matches(&v) != self.invert,
                None if self.missing_as_empty => m.matches("") != self.invert,
                None => self.invert,
            },
        }
    }
}
