//! `config.route.v3.HeaderMatcher`: one header condition of a route's `match`, over
//! pseudo-headers too.

use super::RequestView;
use crate::config::ConfigError;
use crate::filter::common::string_matcher::{StringMatcher, StringMatcherConfig};
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
        let legacy = StringMatcherConfig {
            exact: exact_match.clone(),
            prefix: prefix_match.clone(),
            suffix: suffix_match.clone(),
            contains: contains_match.clone(),
            safe_regex: safe_regex_match.clone(),
            ignore_case: false,
        };
        if exact_match.is_some()
            || prefix_match.is_some()
            || suffix_match.is_some()
            || contains_match.is_some()
            || safe_regex_match.is_some()
        {
            kinds.push(HeaderMatchKind::Value(StringMatcher::build(&legacy, path)?));
        }
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
