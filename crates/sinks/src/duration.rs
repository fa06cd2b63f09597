//! Durations in the sink tables: every duration may be written as a string (`"30s"`,
//! `"100ms"`, `"1h"`), as the rest of the configuration does; the older numeric keys with the
//! unit in their name (`keep_alive_secs = 30`, `linger_ms = 5`) stay accepted as aliases. Setting
//! both spellings of one setting is an error naming both.
//!
//! A table with such keys derives its serde impls with `#[serde(remote = "Self")]` and declares
//! its aliases with `duration_keys!`: the string is folded into the
//! numeric key (in the unit the broker protocol uses) before the derived code reads the table.

use std::time::Duration;

use serde_json::Value;

/// The unit of an old numeric key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Whole seconds (`_secs`).
    Secs,
    /// Whole milliseconds (`_ms`).
    Millis,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::Secs => "seconds",
            Unit::Millis => "milliseconds",
        }
    }

    /// `duration` in this unit, when it is a whole number of them.
    fn whole(self, duration: Duration) -> Option<u64> {
        match self {
            Unit::Secs => (duration.subsec_nanos() == 0).then_some(duration.as_secs()),
            Unit::Millis => (duration.subsec_nanos() % 1_000_000 == 0)
                .then(|| u64::try_from(duration.as_millis()).ok())
                .flatten(),
        }
    }
}

/// A duration key and the old numeric key it replaces.
#[derive(Debug, Clone, Copy)]
pub struct Alias {
    /// The duration key (`keep_alive`).
    pub key: &'static str,
    /// The old numeric key (`keep_alive_secs`).
    pub old: &'static str,
    /// The old key's unit.
    pub unit: Unit,
}

/// Why a duration key cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationKeyError {
    /// Both spellings of one setting are set.
    #[error("`{key}` and `{old}` are the same setting (`{old}` is its older spelling): set one")]
    Both {
        /// The duration key.
        key: &'static str,
        /// The old numeric key.
        old: &'static str,
    },
    /// The value is not a duration string.
    #[error("`{key}`: expected a duration such as \"30s\" or \"100ms\" ({reason})")]
    NotADuration {
        /// The duration key.
        key: &'static str,
        /// What is wrong with it (never the value itself).
        reason: String,
    },
    /// The broker protocol counts this setting in whole units.
    #[error("`{key}` must be a whole number of {unit}")]
    NotWhole {
        /// The duration key.
        key: &'static str,
        /// The unit's name.
        unit: &'static str,
    },
}

/// Folds every alias's duration string in `table` into its old numeric key.
pub fn fold(table: &mut Value, aliases: &[Alias]) -> Result<(), DurationKeyError> {
    let Value::Object(map) = table else {
        return Ok(());
    };
    for alias in aliases {
        let Some(value) = map.remove(alias.key) else {
            continue;
        };
        if map.contains_key(alias.old) {
            return Err(DurationKeyError::Both {
                key: alias.key,
                old: alias.old,
            });
        }
        let Value::String(text) = value else {
            return Err(DurationKeyError::NotADuration {
                key: alias.key,
                reason: "not a string".into(),
            });
        };
        let duration =
            humantime::parse_duration(&text).map_err(|e| DurationKeyError::NotADuration {
                key: alias.key,
                reason: e.to_string(),
            })?;
        let whole = alias
            .unit
            .whole(duration)
            .ok_or(DurationKeyError::NotWhole {
                key: alias.key,
                unit: alias.unit.name(),
            })?;
        map.insert(alias.old.to_owned(), Value::from(whole));
    }
    Ok(())
}

/// Implements `Deserialize` (duration strings folded into the old numeric keys, see
/// [`fold`](crate::duration::fold)) and `Serialize` for a table deriving both with
/// `#[serde(remote = "Self")]`:
/// `duration_keys!(MqttConfig, ["keep_alive" <- "keep_alive_secs" in Secs]);`
macro_rules! duration_keys {
    ($ty:ty, [$($key:literal <- $old:literal in $unit:ident),* $(,)?]) => {
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                use serde::de::Error as _;
                let mut table = serde_json::Value::deserialize(d)?;
                $crate::duration::fold(
                    &mut table,
                    &[$($crate::duration::Alias {
                        key: $key,
                        old: $old,
                        unit: $crate::duration::Unit::$unit,
                    }),*],
                )
                .map_err(D::Error::custom)?;
                <$ty>::deserialize(table).map_err(D::Error::custom)
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                <$ty>::serialize(self, s)
            }
        }
    };
}

pub(crate) use duration_keys;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ALIASES: &[Alias] = &[
        Alias {
            key: "keep_alive",
            old: "keep_alive_secs",
            unit: Unit::Secs,
        },
        Alias {
            key: "linger",
            old: "linger_ms",
            unit: Unit::Millis,
        },
    ];

    fn folded(mut table: Value) -> Result<Value, DurationKeyError> {
        fold(&mut table, ALIASES).map(|()| table)
    }

    #[test]
    fn strings_fold_into_the_old_keys_and_old_keys_stay() {
        assert_eq!(
            folded(json!({"keep_alive": "1m", "linger": "5ms"})).unwrap(),
            json!({"keep_alive_secs": 60, "linger_ms": 5})
        );
        assert_eq!(
            folded(json!({"keep_alive_secs": 30, "linger": "1s"})).unwrap(),
            json!({"keep_alive_secs": 30, "linger_ms": 1000})
        );
    }

    #[test]
    fn both_spellings_or_a_bad_value_are_errors_naming_the_keys() {
        let both = folded(json!({"linger": "5ms", "linger_ms": 5})).unwrap_err();
        assert_eq!(
            both,
            DurationKeyError::Both {
                key: "linger",
                old: "linger_ms"
            }
        );
        let shown = both.to_string();
        assert!(
            shown.contains("`linger`") && shown.contains("`linger_ms`"),
            "{shown}"
        );
        assert!(matches!(
            folded(json!({"keep_alive": "1500ms"})),
            Err(DurationKeyError::NotWhole {
                key: "keep_alive",
                ..
            })
        ));
        assert!(matches!(
            folded(json!({"keep_alive": 30})),
            Err(DurationKeyError::NotADuration {
                key: "keep_alive",
                ..
            })
        ));
        assert!(matches!(
            folded(json!({"linger": "soon"})),
            Err(DurationKeyError::NotADuration { key: "linger", .. })
        ));
    }
}
