//! The upkeep settings, with etcd's names: `quota_backend_bytes`,
//! `auto_compaction_mode`, `auto_compaction_retention`, and
//! `corrupt_check_interval` (etcd's `--experimental-corrupt-check-time`).

use std::time::Duration;

use crate::upkeep::policy::Retention;
use crate::upkeep::Settings;

/// etcd's default backend quota: 2 GiB.
pub const DEFAULT_QUOTA_BYTES: u64 = 2 << 30;
/// How often voters checksum their history by default.
pub const DEFAULT_CORRUPT_CHECK: Duration = Duration::from_secs(60);

/// The fields as the file gives them.
#[derive(Debug, Default)]
pub struct UpkeepFields<'a> {
    pub quota_backend_bytes: Option<u64>,
    pub auto_compaction_mode: Option<&'a str>,
    pub auto_compaction_retention: Option<&'a str>,
    pub corrupt_check_interval: Option<&'a str>,
}

/// Checks the fields; an error names the field and what it expects.
pub fn check(fields: UpkeepFields<'_>) -> Result<Settings, (&'static str, String)> {
    let quota_bytes = match fields.quota_backend_bytes {
        None | Some(0) => DEFAULT_QUOTA_BYTES,
        Some(bytes) if bytes < 1 << 20 => {
            return Err((
                "quota_backend_bytes",
                format!(
                "is {bytes}: expected at least 1048576 (1 MiB), or 0 for etcd's default of 2 GiB"
            ),
            ))
        }
        Some(bytes) => bytes,
    };
    let retention = fields.auto_compaction_retention.unwrap_or("0").trim();
    let mode = fields.auto_compaction_mode.unwrap_or("periodic");
    let retention = match (mode, retention) {
        (_, "0") | (_, "") => None,
        ("periodic", text) => {
            // As etcd: a bare number is hours.
            let parsed = match text.parse::<u64>() {
                Ok(hours) => Some(Duration::from_secs(hours.saturating_mul(3600))),
                Err(_) => humantime::parse_duration(text).ok(),
            };
            match parsed.filter(|d| *d >= Duration::from_secs(1)) {
                Some(keep) => Some(Retention::Periodic(keep)),
                None => {
                    return Err((
                        "auto_compaction_retention",
                        format!("is {text:?}: with auto_compaction_mode = \"periodic\" expected a duration such as \"1h\" or \"30m\" (a bare number is hours), or \"0\" to turn it off"),
                    ))
                }
            }
        }
        ("revision", text) => match text.parse::<i64>() {
            Ok(keep) if keep > 0 => Some(Retention::Revisions(keep)),
            _ => {
                return Err((
                    "auto_compaction_retention",
                    format!("is {text:?}: with auto_compaction_mode = \"revision\" expected a number of revisions to keep, such as \"1000\", or \"0\" to turn it off"),
                ))
            }
        },
        (other, _) => {
            return Err((
                "auto_compaction_mode",
                format!("is {other:?}: expected \"periodic\" or \"revision\""),
            ))
        }
    };
    let corrupt_check = match fields.corrupt_check_interval {
        None => Some(DEFAULT_CORRUPT_CHECK),
        Some(text) => match humantime::parse_duration(text) {
            Ok(d) if d.is_zero() => None,
            Ok(d) if d >= Duration::from_secs(1) => Some(d),
            _ => {
                return Err((
                    "corrupt_check_interval",
                    format!("is {text:?}: expected a duration of at least 1s, such as \"5m\", or \"0s\" to turn the check off"),
                ))
            }
        },
    };
    Ok(Settings {
        quota_bytes,
        corrupt_check,
        retention,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_etcds_and_bad_values_name_their_field() {
        let settings = check(UpkeepFields::default()).unwrap();
        assert_eq!(settings.quota_bytes, 2 << 30);
        assert_eq!(settings.retention, None);
        assert_eq!(settings.corrupt_check, Some(Duration::from_secs(60)));
        let fields = |mode, retention| UpkeepFields {
            auto_compaction_mode: Some(mode),
            auto_compaction_retention: Some(retention),
            ..UpkeepFields::default()
        };
        assert_eq!(
            check(fields("periodic", "72")).unwrap().retention,
            Some(Retention::Periodic(Duration::from_secs(72 * 3600)))
        );
        assert_eq!(
            check(fields("periodic", "30m")).unwrap().retention,
            Some(Retention::Periodic(Duration::from_secs(1800)))
        );
        assert_eq!(
            check(fields("revision", "1000")).unwrap().retention,
            Some(Retention::Revisions(1000))
        );
        for (mode, retention, field) in [
            ("periodic", "soon", "auto_compaction_retention"),
            ("revision", "1h", "auto_compaction_retention"),
            ("daily", "1h", "auto_compaction_mode"),
        ] {
            assert_eq!(check(fields(mode, retention)).unwrap_err().0, field);
        }
        let small = UpkeepFields {
            quota_backend_bytes: Some(10),
            ..UpkeepFields::default()
        };
        assert_eq!(check(small).unwrap_err().0, "quota_backend_bytes");
        let off = UpkeepFields {
            corrupt_check_interval: Some("0s"),
            ..UpkeepFields::default()
        };
        assert_eq!(check(off).unwrap().corrupt_check, None);
    }
}
