//! Protobuf JSON scalar forms used across the config: durations and enums.

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;
use std::marker::PhantomData;

/// A `google.protobuf.Duration` in its JSON form (`"1s"`, `"0.250s"`), or `{seconds, nanos}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// The duration as a `std::time::Duration`.
    pub fn get(self) -> std::time::Duration {
        self.0
    }

    /// From milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms))
    }

    fn parse(s: &str) -> Result<Self, String> {
        let digits = s
            .strip_suffix('s')
            .ok_or_else(|| format!("invalid duration {s:?}: expected a string like \"1.5s\""))?;
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        if int.starts_with('-') {
            return Err(format!(
                "invalid duration {s:?}: negative durations are not allowed"
            ));
        }
        let secs: u64 = int.parse().map_err(|_| format!("invalid duration {s:?}"))?;
        if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("invalid duration {s:?}"));
        }
        let nanos: u32 = if frac.is_empty() {
            0
        } else {
            format!("{frac:0<9}")
                .parse()
                .map_err(|_| format!("invalid duration {s:?}"))?
        };
        Duration::checked(secs, nanos).map_err(|e| format!("invalid duration {s:?}: {e}"))
    }

    /// Envoy's `validateDuration` (strict): seconds at most 9223372035 (so that seconds plus
    /// nanos fit an int64 of nanoseconds), nanos under one second. Larger values would also
    /// overflow `Instant + Duration` on the data path, which panics.
    fn checked(secs: u64, nanos: u32) -> Result<Self, String> {
        if secs > MAX_SECONDS || nanos > 999_999_999 {
            return Err(format!(
                "Duration out-of-range: seconds: {secs} nanos: {nanos} (at most {MAX_SECONDS}s)"
            ));
        }
        Ok(Duration(std::time::Duration::new(secs, nanos)))
    }
}

/// Envoy's largest accepted duration in seconds: `(i64::MAX - 999999999) / 10^9`.
const MAX_SECONDS: u64 = 9_223_372_035;

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Parts {
            #[serde(default)]
            seconds: u64,
            #[serde(default)]
            nanos: u32,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Text(String),
            Parts(Parts),
        }
        match Form::deserialize(d)? {
            Form::Text(s) => Duration::parse(&s).map_err(de::Error::custom),
            Form::Parts(p) => Duration::checked(p.seconds, p.nanos).map_err(de::Error::custom),
        }
    }
}

/// A protobuf enum: implementors list their `(NAME, number)` pairs; JSON accepts either form.
pub trait ProtoEnum: Sized + Copy + 'static {
    /// Every value with its proto name and number.
    const VALUES: &'static [(&'static str, i32, Self)];
    /// Name of the enum type, for error messages.
    const TYPE_NAME: &'static str;
}

/// Deserializes a [`ProtoEnum`] from its name or number. Use with `#[serde(deserialize_with)]`
/// or through the [`proto_enum!`](crate::proto_enum) macro, which implements `Deserialize`.
pub fn deserialize_enum<'de, D: Deserializer<'de>, E: ProtoEnum>(d: D) -> Result<E, D::Error> {
    struct V<E>(PhantomData<E>);
    impl<E: ProtoEnum> Visitor<'_> for V<E> {
        type Value = E;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a {} name or number", E::TYPE_NAME)
        }
        fn visit_str<Er: de::Error>(self, s: &str) -> Result<E, Er> {
            E::VALUES
                .iter()
                .find(|(n, _, _)| *n == s)
                .map(|(_, _, v)| *v)
                .ok_or_else(|| {
                    let names: Vec<&str> = E::VALUES.iter().map(|(n, _, _)| *n).collect();
                    Er::custom(format!(
                        "unknown {} value {s:?} (supported: {})",
                        E::TYPE_NAME,
                        names.join(", ")
                    ))
                })
        }
        fn visit_i64<Er: de::Error>(self, n: i64) -> Result<E, Er> {
            E::VALUES
                .iter()
                .find(|(_, i, _)| i64::from(*i) == n)
                .map(|(_, _, v)| *v)
                .ok_or_else(|| Er::custom(format!("unknown {} value {n}", E::TYPE_NAME)))
        }
        fn visit_u64<Er: de::Error>(self, n: u64) -> Result<E, Er> {
            self.visit_i64(i64::try_from(n).unwrap_or(i64::MAX))
        }
    }
    d.deserialize_any(V::<E>(PhantomData))
}

/// Declares a protobuf enum that deserializes from its proto name or number.
///
/// ```
/// extproxy::proto_enum!(LbPolicy "Cluster.LbPolicy" { RoundRobin = ("ROUND_ROBIN", 0), Random = ("RANDOM", 3) });
/// let by_name: LbPolicy = serde_json::from_str("\"RANDOM\"").unwrap();
/// let by_number: LbPolicy = serde_json::from_str("0").unwrap();
/// assert_eq!((by_name, by_number), (LbPolicy::Random, LbPolicy::RoundRobin));
/// ```
#[macro_export]
macro_rules! proto_enum {
    ($(#[$m:meta])* $name:ident $tn:literal { $($(#[$vm:meta])* $var:ident = ($s:literal, $n:literal)),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* #[doc = $s] $var),+ }
        impl $crate::config::ProtoEnum for $name {
            const VALUES: &'static [(&'static str, i32, Self)] = &[$(($s, $n, $name::$var)),+];
            const TYPE_NAME: &'static str = $tn;
        }
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $crate::config::value::deserialize_enum(d)
            }
        }
    };
}

/// Deserializes a number that proto JSON may also write as a string (`"1048576"`).
pub fn deserialize_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        Num(u64),
        Text(String),
    }
    match N::deserialize(d)? {
        N::Num(n) => Ok(n),
        N::Text(s) => s
            .parse()
            .map_err(|_| de::Error::custom(format!("invalid integer {s:?}"))),
    }
}

/// Like [`deserialize_u64`], for `Option` fields.
pub fn deserialize_opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    deserialize_u64(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_protobuf_json() {
        let d: Duration = serde_json::from_str("\"0.250s\"").unwrap();
        assert_eq!(d.get(), std::time::Duration::from_millis(250));
        let d: Duration = serde_json::from_str("\"3600s\"").unwrap();
        assert_eq!(d.get().as_secs(), 3600);
        let d: Duration = serde_json::from_str(r#"{"seconds": 1, "nanos": 5}"#).unwrap();
        assert_eq!(d.get(), std::time::Duration::new(1, 5));
        assert!(serde_json::from_str::<Duration>("\"1m\"").is_err());
        assert!(serde_json::from_str::<Duration>("\"-1s\"").is_err());
        assert!(serde_json::from_str::<Duration>("5").is_err());
    }

    #[test]
    fn durations_past_envoys_range_are_errors() {
        let d: Duration = serde_json::from_str("\"9223372035.999999999s\"").unwrap();
        assert_eq!(
            d.get(),
            std::time::Duration::new(9_223_372_035, 999_999_999)
        );
        for text in [
            "\"9223372036s\"",
            "\"18446744073709551615s\"",
            r#"{"seconds": 9223372036}"#,
            r#"{"nanos": 1000000000}"#,
            // `Duration::new` would panic on the carry from nanos into seconds.
            r#"{"seconds": 18446744073709551615, "nanos": 4294967295}"#,
        ] {
            let err = serde_json::from_str::<Duration>(text)
                .unwrap_err()
                .to_string();
            assert!(err.contains("Duration out-of-range"), "{text}: {err}");
        }
    }

    proto_enum!(Color "test.Color" { Red = ("RED", 0), Blue = ("BLUE", 2) });

    #[test]
    fn enums_accept_names_and_numbers() {
        assert_eq!(
            serde_json::from_str::<Color>("\"BLUE\"").unwrap(),
            Color::Blue
        );
        assert_eq!(serde_json::from_str::<Color>("0").unwrap(), Color::Red);
        let err = serde_json::from_str::<Color>("\"GREEN\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("supported: RED, BLUE"), "{err}");
    }
}
