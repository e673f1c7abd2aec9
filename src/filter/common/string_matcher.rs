//! `type.matcher.v3.StringMatcher`, `ListStringMatcher` and `RegexMatcher` as config data and
//! compiled matchers.

use crate::config::ConfigError;
use serde::Deserialize;

/// `type.matcher.v3.RegexMatcher` (only `google_re2`, which is the default engine).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegexMatcherConfig {
    /// The engine (deprecated in Envoy, and RE2 whether or not it is set).
    pub google_re2: Option<GoogleRe2Config>,
    /// The expression, matched against the whole input (RE2 full match). Absent is the proto
    /// default `""`, which fails the same non-empty check as an explicit `""`.
    #[serde(default)]
    pub regex: String,
}

/// `type.matcher.v3.RegexMatcher.GoogleRE2`: Envoy accepts it absent, `null` or `{}`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GoogleRe2Config {
    /// Envoy rejects a regex whose RE2 program size exceeds this; the `regex` crate has no
    /// program size to compare, so a value is an error rather than a silently skipped check.
    pub max_program_size: Option<serde_json::Value>,
}

impl RegexMatcherConfig {
    /// Compiles the expression anchored at both ends, as RE2 `FullMatch` does.
    pub fn compile(&self, path: &str) -> Result<regex::Regex, ConfigError> {
        let RegexMatcherConfig { google_re2, regex } = self;
        if let Some(GoogleRe2Config {
            max_program_size: Some(_),
        }) = google_re2
        {
            return Err(ConfigError::new(
                format!("{path}.google_re2.max_program_size"),
                "max_program_size is not supported",
            ));
        }
        // Envoy's proto validation (`min_len: 1`) rejects it before any engine sees it.
        if regex.is_empty() {
            return Err(ConfigError::new(
                format!("{path}.regex"),
                "value length must be at least 1 characters",
            ));
        }
        regex::Regex::new(&format!("^(?:{regex})$"))
            .map_err(|e| ConfigError::new(format!("{path}.regex"), format!("invalid regex: {e}")))
    }
}

/// `type.matcher.v3.StringMatcher` as config.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct StringMatcherConfig {
    /// Exact match.
    pub exact: Option<String>,
    /// Prefix match.
    pub prefix: Option<String>,
    /// Suffix match.
    pub suffix: Option<String>,
    /// Substring match.
    pub contains: Option<String>,
    /// Regular expression (full match).
    pub safe_regex: Option<RegexMatcherConfig>,
    /// Case-insensitive comparison (not for `safe_regex`).
    #[serde(default)]
    pub ignore_case: bool,
}

/// `type.matcher.v3.ListStringMatcher` as config.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ListStringMatcherConfig {
    /// Matches if any pattern matches.
    #[serde(default)]
    pub patterns: Vec<StringMatcherConfig>,
}

/// A compiled `StringMatcher`.
#[derive(Debug, Clone)]
pub enum StringMatcher {
    /// Exact (with the case flag).
    Exact(String, bool),
    /// Prefix.
    Prefix(String, bool),
    /// Suffix.
    Suffix(String, bool),
    /// Substring.
    Contains(String, bool),
    /// Anchored regular expression.
    Regex(regex::Regex),
}

impl StringMatcher {
    /// Compiles a matcher; exactly one of the pattern fields must be set.
    pub fn build(cfg: &StringMatcherConfig, path: &str) -> Result<Self, ConfigError> {
        let StringMatcherConfig {
            exact,
            prefix,
            suffix,
            contains,
            safe_regex,
            ignore_case,
        } = cfg;
        let ic = *ignore_case;
        let fold = |s: &String| {
            if ic {
                s.to_ascii_lowercase()
            } else {
                s.clone()
            }
        };
        let set = [
            exact.is_some(),
            prefix.is_some(),
            suffix.is_some(),
            contains.is_some(),
            safe_regex.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set != 1 {
            return Err(ConfigError::new(
                path,
                "exactly one of exact, prefix, suffix, contains or safe_regex must be set",
            ));
        }
        Ok(match (exact, prefix, suffix, contains, safe_regex) {
            (Some(s), ..) => StringMatcher::Exact(fold(s), ic),
            (_, Some(s), ..) => StringMatcher::Prefix(fold(s), ic),
            (_, _, Some(s), ..) => StringMatcher::Suffix(fold(s), ic),
            (_, _, _, Some(s), _) => StringMatcher::Contains(fold(s), ic),
            (_, _, _, _, Some(r)) => {
                StringMatcher::Regex(r.compile(&format!("{path}.safe_regex"))?)
            }
            _ => return Err(ConfigError::new(path, "empty string matcher")),
        })
    }

    /// True if `input` matches.
    pub fn matches(&self, input: &str) -> bool {
        let folded = |ic: bool| {
            if ic {
                std::borrow::Cow::Owned(input.to_ascii_lowercase())
            } else {
                input.into()
            }
        };
        match self {
            StringMatcher::Exact(s, ic) => folded(*ic) == s.as_str(),
            StringMatcher::Prefix(s, ic) => folded(*ic).starts_with(s.as_str()),
            StringMatcher::Suffix(s, ic) => folded(*ic).ends_with(s.as_str()),
            StringMatcher::Contains(s, ic) => folded(*ic).contains(s.as_str()),
            StringMatcher::Regex(r) => r.is_match(input),
        }
    }
}

/// A compiled `ListStringMatcher`: matches if any pattern does.
#[derive(Debug, Clone)]
pub struct ListStringMatcher(pub Vec<StringMatcher>);

impl ListStringMatcher {
    /// Compiles every pattern.
    pub fn build(cfg: &ListStringMatcherConfig, path: &str) -> Result<Self, ConfigError> {
        let ListStringMatcherConfig { patterns } = cfg;
        patterns
            .iter()
            .enumerate()
            .map(|(i, p)| StringMatcher::build(p, &format!("{path}.patterns[{i}]")))
            .collect::<Result<Vec<_>, _>>()
            .map(ListStringMatcher)
    }

    /// True if any pattern matches.
    pub fn matches(&self, input: &str) -> bool {
        self.0.iter().any(|m| m.matches(input))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn matchers() {
        let m = StringMatcher::build(
            &StringMatcherConfig {
                prefix: Some("X-".into()),
                ignore_case: true,
                ..Default::default()
            },
            "p",
        )
        .unwrap();
        assert!(m.matches("x-foo"));
        assert!(!m.matches("y-foo"));
        let r = StringMatcher::build(
            &StringMatcherConfig {
                safe_regex: Some(RegexMatcherConfig {
                    google_re2: None,
                    regex: "a.c".into(),
                }),
                ..Default::default()
            },
            "p",
        )
        .unwrap();
        assert!(r.matches("abc"));
        assert!(!r.matches("abcd"), "full match only");
        let err = StringMatcher::build(&StringMatcherConfig::default(), "p").unwrap_err();
        assert_eq!(err.path, "p");
    }

    fn regex(yaml: &str) -> Result<regex::Regex, ConfigError> {
        let cfg: RegexMatcherConfig =
            crate::config::decode(serde_yaml_ng::from_str(yaml).unwrap(), "m.safe_regex")?;
        cfg.compile("m.safe_regex")
    }

    #[test]
    fn google_re2_takes_the_forms_envoy_accepts() {
        for yaml in [
            "{regex: a+}",
            "{regex: a+, google_re2: null}",
            "{regex: a+, google_re2: {}}",
            "{regex: a+, google_re2: {max_program_size: null}}",
        ] {
            let r = regex(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"));
            assert!(r.is_match("aa") && !r.is_match("ab"), "{yaml}");
        }
    }

    #[test]
    fn google_re2_errors_name_the_field() {
        for (yaml, path) in [
            // Envoy enforces it against RE2's program size, which the regex crate does not have.
            (
                "{regex: a+, google_re2: {max_program_size: 100}}",
                "m.safe_regex.google_re2.max_program_size",
            ),
            // Envoy rejects these when parsing the config.
            (
                "{regex: a+, google_re2: {bogus: 1}}",
                "m.safe_regex.google_re2.bogus",
            ),
            ("{regex: a+, google_re2: 5}", "m.safe_regex.google_re2"),
            ("{regex: a+, google_re2: re2}", "m.safe_regex.google_re2"),
        ] {
            let err = regex(yaml).unwrap_err();
            assert_eq!(err.path, path, "{yaml}: {err}");
        }
    }

    #[test]
    fn empty_regex_is_an_error_naming_the_field() {
        // Envoy's proto validation requires at least one character; absent is the default "".
        for yaml in ["{regex: ''}", "{google_re2: {}}"] {
            let err = regex(yaml).unwrap_err();
            assert_eq!(err.path, "m.safe_regex.regex", "{yaml}: {err}");
        }
        let cfg = StringMatcherConfig {
            safe_regex: Some(RegexMatcherConfig {
                google_re2: None,
                regex: String::new(),
            }),
            ..Default::default()
        };
        let err = StringMatcher::build(&cfg, "p").unwrap_err();
        assert_eq!(err.path, "p.safe_regex.regex", "{err}");
    }
}
