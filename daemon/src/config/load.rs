//! Loading the settings: the TOML file (if any), then the environment's
//! `KILN_SECTION__KEY` variables. Any other variable, `KILN_BIN` say, is not
//! Kiln's business. A mistake is reported where it was made: a file's names
//! the file, a variable's names the variable.

use super::{ConfigError, Settings};
use std::path::Path;

/// The environment variables that override settings, as (name, value).
type Overrides = Vec<(String, String)>;

/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: &[&str] = &[
    "callbacks.allow_networks",
    "dns.nameservers",
    "delivery.https_allow_networks",
    "delivery.require_tls_domains",
    "http.metrics_networks",
    "queue.retry_schedule",
    "store.redis_cluster",
    "store.redis_sentinels",
    "smtp.literal_networks",
];

/// The sections a `KILN_SECTION__KEY` variable may name: every table of the
/// settings.
fn sections() -> Vec<String> {
    match toml::Value::try_from(Settings::default()) {
        Ok(toml::Value::Table(t)) => t
            .into_iter()
            .filter(|(_, v)| v.is_table())
            .map(|(k, _)| k)
            .collect(),
        _ => Vec::new(),
    }
}

/// The config overrides among `vars`: `KILN_` then a section, `__`, a key.
/// A variable shaped like one whose section does not exist is an error
/// (a misspelling, like an unknown key in the file); others are ignored.
fn overrides(vars: impl IntoIterator<Item = (String, String)>) -> Result<Overrides, ConfigError> {
    let sections = sections();
    let mut out = Vec::new();
    for (name, value) in vars {
        let Some(rest) = name.strip_prefix("KILN_") else {
            continue;
        };
        let Some((section, key)) = rest.split_once("__") else {
            continue;
        };
        if !sections.iter().any(|s| s.eq_ignore_ascii_case(section)) || key.is_empty() {
            let problem = format!(
                "{section:?} is not a config section (one of {})",
                sections.join(", ")
            );
            return Err(ConfigError::Env { var: name, problem });
        }
        out.push((name, value));
    }
    out.sort();
    Ok(out)
}

/// The file's settings with `vars` over them.
fn build(file: Option<&Path>, vars: &[(String, String)]) -> Result<Settings, config::ConfigError> {
    let mut builder = config::Config::builder();
    if let Some(path) = file {
        builder = builder.add_source(
            config::File::from(path)
                .format(config::FileFormat::Toml)
                .required(true),
        );
    }
    let mut env = config::Environment::with_prefix("KILN")
        .prefix_separator("_")
        .separator("__")
        .list_separator(",")
        .try_parsing(true)
        .source(Some(vars.iter().cloned().collect()));
    for key in LIST_KEYS {
        env = env.with_list_parse_key(key);
    }
    builder.add_source(env).build()?.try_deserialize()
}

/// The first mistake of each section of `file`, each read on its own (a
/// whole file stops at its first); None when the file does not parse as
/// TOML at all (its own error says where).
fn section_problems(file: &Path) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(file).ok()?;
    let doc: toml::Table = toml::from_str(&text).ok()?;
    let mut out = Vec::new();
    for (section, value) in doc {
        let mut alone = toml::Table::new();
        alone.insert(section.clone(), value);
        let Ok(text) = toml::to_string(&alone) else {
            continue;
        };
        let built = config::Config::builder()
            .add_source(config::File::from_str(&text, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize::<Settings>());
        match built {
            Err(e) => out.push(readable(&e.to_string())),
            // A section that reads may still be wrong (an address that does
            // not parse): its first semantic problem.
            Ok(alone) => out.extend(alone.problems().into_iter().find(|p| {
                p.starts_with(&format!("{section}.")) || p.starts_with(&format!("{section}["))
            })),
        }
    }
    Some(out)
}

/// A deserialising error as an operator reads it: the values an option
/// takes instead of a type's name, keys written as they are in the file.
fn readable(error: &str) -> String {
    // "enum ListenerTls does not have variant constructor startls for key
    // smtp.listeners[0]tls" (the config crate drops the dot after `]`).
    let key_fixed = {
        let mut out = String::with_capacity(error.len());
        let mut chars = error.chars().peekable();
        while let Some(c) = chars.next() {
            out.push(c);
            if c == ']' && chars.peek().is_some_and(|n| n.is_ascii_alphabetic()) {
                out.push('.');
            }
        }
        out
    };
    let values = [
        ("ListenerTls", "starttls, implicit, none"),
        ("StoreBackend", "embedded, redis"),
        ("DkimAlgorithm", "rsa, ed25519"),
        ("LogFormat", "human, json"),
    ];
    let Some(rest) = key_fixed
        .strip_prefix("enum ")
        .and_then(|r| r.split_once(" does not have variant constructor "))
    else {
        return key_fixed;
    };
    let (name, rest) = rest;
    let (given, key) = rest.split_once(" for key ").unwrap_or((rest, "?"));
    let key = key.trim_matches('`');
    match values.iter().find(|(n, _)| *n == name) {
        Some((_, takes)) => format!("{key}: {given:?} is not one of: {takes}"),
        // Never a type's name: the option and the value it refused.
        None => format!("{key}: {given:?} is not a value it takes"),
    }
}

/// `section.key` of a `KILN_SECTION__KEY` variable.
fn key_of(var: &str) -> String {
    var.trim_start_matches("KILN_")
        .replacen("__", ".", 1)
        .to_ascii_lowercase()
}

impl Settings {
    /// Reads the file (if any) and the environment, then validates.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_with(file, std::env::vars())
    }

    /// [`Settings::load`] with the environment given (tests).
    pub fn load_with(
        file: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let file_name = file
            .map(|f| f.display().to_string())
            .unwrap_or_else(|| "(defaults)".into());
        let vars = overrides(vars)?;
        let settings = match build(file, &vars) {
            Ok(s) => s,
            Err(source) => {
                // Whose mistake: the file's alone, or a variable's.
                if vars.is_empty() || build(file, &[]).is_err() {
                    // Every section's first mistake, not only the first
                    // section's: one run for several mistakes.
                    if let Some(problems) = file.and_then(section_problems).filter(|p| p.len() > 1)
                    {
                        return Err(ConfigError::Invalid {
                            problems: problems
                                .into_iter()
                                .map(|p| format!("{file_name}: {p}"))
                                .collect(),
                        });
                    }
                    return Err(ConfigError::Load {
                        file: file_name,
                        source: config::ConfigError::Message(readable(&source.to_string())),
                    });
                }
                let culprit = vars
                    .iter()
                    .find_map(|v| build(file, std::slice::from_ref(v)).err().map(|e| (v, e)));
                return Err(match culprit {
                    Some(((var, _), e)) => ConfigError::Env {
                        var: var.clone(),
                        problem: e.to_string(),
                    },
                    None => ConfigError::Env {
                        var: vars
                            .iter()
                            .map(|(n, _)| n.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        problem: source.to_string(),
                    },
                });
            }
        };
        let problems = settings.problems();
        if problems.is_empty() {
            return Ok(settings);
        }
        Err(ConfigError::Invalid {
            problems: problems
                .into_iter()
                .map(|p| {
                    let var = vars
                        .iter()
                        .map(|(n, _)| n)
                        .find(|n| p.starts_with(&key_of(n)));
                    match var {
                        Some(v) => format!("environment variable {v}: {p}"),
                        None => format!("{file_name}: {p}"),
                    }
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    fn file_with(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        file
    }

    fn as_toml(s: &Settings) -> toml::Table {
        match toml::Value::try_from(s) {
            Ok(toml::Value::Table(t)) => t,
            other => panic!("settings are not a table: {other:?}"),
        }
    }

    /// For every section and every key of it, generated from the
    /// declarations: a file that gives the section without that key gets
    /// the key's default. (A section given in part once got zero for what
    /// it left out: `[dns]` without `timeout`.)
    #[test]
    fn every_key_left_out_gets_its_default() {
        let defaults = as_toml(&Settings::default());
        let dir = tempfile::tempdir().unwrap();
        let mut checked = 0;
        for (section, value) in &defaults {
            let Some(table) = value.as_table() else {
                continue;
            };
            for key in table.keys() {
                let mut partial = table.clone();
                partial.remove(key);
                let mut doc = toml::Table::new();
                doc.insert(section.clone(), toml::Value::Table(partial));
                let file = file_with(&dir, "partial.toml", &toml::to_string(&doc).unwrap());
                let loaded = Settings::load_with(Some(&file), no_env())
                    .unwrap_or_else(|e| panic!("[{section}] without {key}: {e}"));
                assert_eq!(
                    as_toml(&loaded)[section].get(key),
                    table.get(key),
                    "[{section}] without {key}"
                );
                checked += 1;
            }
            // The section given empty: every key its default.
            let file = file_with(&dir, "empty.toml", &format!("[{section}]\n"));
            let loaded = Settings::load_with(Some(&file), no_env()).unwrap();
            assert_eq!(as_toml(&loaded)[section], *value, "[{section}] given empty");
        }
        assert!(checked > 60, "only {checked} keys checked");
        // A listener given with its address alone.
        let listener = &defaults["smtp"]["listeners"][0];
        let file = file_with(
            &dir,
            "listener.toml",
            "[[smtp.listeners]]\naddress = \"127.0.0.1:2525\"\n",
        );
        let loaded = Settings::load_with(Some(&file), no_env()).unwrap();
        assert_eq!(as_toml(&loaded)["smtp"]["listeners"][0], *listener);
    }

    #[test]
    fn every_problem_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = file_with(
            &dir,
            "bad.toml",
            "[dns]\nnameservers = [\"nope\"]\n[dkim]\nalgorithm = \"dsa\"\n",
        );
        let err = Settings::load_with(Some(&file), no_env())
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.toml: dns.nameservers[0]"), "{err}");
        assert!(
            err.contains("bad.toml: dkim.algorithm: \"dsa\" is not one of: rsa, ed25519"),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = file_with(&dir, "typo.toml", "[delivery]\nmx_prot = 25\n");
        let err = Settings::load_with(Some(&file), no_env())
            .unwrap_err()
            .to_string();
        assert!(err.contains("mx_prot"), "{err}");
    }

    #[test]
    fn transport_security_settings_read_from_file_and_environment() {
        let dir = tempfile::tempdir().unwrap();
        // `tls_roots` is another name for `tls_ca_file`.
        let file = file_with(
            &dir,
            "kiln.toml",
            "[delivery]\ntls_roots = \"/etc/kiln/private-ca.pem\"\nmta_sts = false\n\n[dns]\ndnssec = \"resolver\"\n",
        );
        let s = Settings::load_with(Some(&file), no_env()).unwrap();
        assert_eq!(
            s.delivery.tls_ca_file.as_deref(),
            Some(std::path::Path::new("/etc/kiln/private-ca.pem"))
        );
        assert!(!s.delivery.mta_sts);
        assert_eq!(s.dns.dnssec, crate::config::Dnssec::Resolver);
        let s = Settings::load_with(
            Some(&file),
            vec![
                ("KILN_DELIVERY__MTA_STS".into(), "true".into()),
                ("KILN_DNS__DNSSEC".into(), "off".into()),
                ("KILN_DELIVERY__TLS_REPORTS".into(), "false".into()),
            ],
        )
        .unwrap();
        assert!(s.delivery.mta_sts && !s.delivery.tls_reports);
        assert_eq!(s.dns.dnssec, crate::config::Dnssec::Off);
    }

    #[test]
    fn only_section_key_variables_are_settings_and_their_mistakes_name_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = file_with(
            &dir,
            "kiln.toml",
            "[dns]\nnameservers = [\"127.0.0.1:5353\"]\n",
        );
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        // What deploy scripts leave around is not Kiln's business.
        let s = Settings::load_with(
            Some(&file),
            env(&[
                ("KILN_BIN", "/usr/local/bin/kiln"),
                ("KILN_VERSION", "1"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(s.dns.timeout, std::time::Duration::from_secs(5));
        // Overrides, a list among them.
        let s = Settings::load_with(
            Some(&file),
            env(&[
                ("KILN_DELIVERY__MX_PORT", "2526"),
                ("KILN_QUEUE__RETRY_SCHEDULE", "5,10"),
                ("KILN_STORE__BACKEND", "redis"),
                ("KILN_HTTP__METRICS_NETWORKS", "10.1.0.0/16,192.0.2.0/24"),
                ("KILN_HTTP__METRICS", "false"),
                ("KILN_STORE__MIN_FREE_MB", "32"),
            ]),
        )
        .unwrap();
        assert_eq!(s.delivery.mx_port, 2526);
        assert_eq!(s.queue.retry_schedule, [5, 10]);
        assert_eq!(s.http.metrics_networks, ["10.1.0.0/16", "192.0.2.0/24"]);
        assert!(!s.http.metrics);
        assert_eq!(s.store.min_free_mb, 32);
        assert_eq!(
            s.store.redis_prefix, "kiln",
            "the rest of [store] as default"
        );
        assert_eq!(
            s.dns.nameservers,
            ["127.0.0.1:5353"],
            "the file still counts"
        );
        // Redis through Sentinel, from the environment: the list splits,
        // and the master's name is needed with it.
        let sentinels = "redis://10.0.0.1:26379/,redis://10.0.0.2:26379/";
        let s = Settings::load_with(
            Some(&file),
            env(&[
                ("KILN_STORE__BACKEND", "redis"),
                ("KILN_STORE__REDIS_SENTINELS", sentinels),
                ("KILN_STORE__REDIS_SENTINEL_MASTER", "mail"),
            ]),
        )
        .unwrap();
        assert_eq!(
            s.store.redis_target(),
            crate::store::redis::RedisTarget::Sentinel {
                sentinels: vec![
                    "redis://10.0.0.1:26379/".into(),
                    "redis://10.0.0.2:26379/".into()
                ],
                master: "mail".into(),
            }
        );
        let err = Settings::load_with(
            Some(&file),
            env(&[
                ("KILN_STORE__BACKEND", "redis"),
                ("KILN_STORE__REDIS_SENTINELS", "10.0.0.1:26379"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("store.redis_sentinels[0]: \"10.0.0.1:26379\" is not a redis:// URL"),
            "{err}"
        );
        assert!(err.contains("store.redis_sentinel_master: "), "{err}");
        // A Redis Cluster's seeds, from the environment; a seed without a
        // scheme named, and a store that is both cluster and Sentinel.
        let s = Settings::load_with(
            Some(&file),
            env(&[
                ("KILN_STORE__BACKEND", "redis"),
                (
                    "KILN_STORE__REDIS_CLUSTER",
                    "redis://10.0.0.1:7000/,redis://10.0.0.2:7001/",
                ),
            ]),
        )
        .unwrap();
        assert_eq!(
            s.store.redis_target(),
            crate::store::redis::RedisTarget::Cluster(vec![
                "redis://10.0.0.1:7000/".into(),
                "redis://10.0.0.2:7001/".into()
            ])
        );
        let err = Settings::load_with(
            Some(&file),
            env(&[
                ("KILN_STORE__BACKEND", "redis"),
                ("KILN_STORE__REDIS_CLUSTER", "10.0.0.1:7000"),
                ("KILN_STORE__REDIS_SENTINELS", sentinels),
                ("KILN_STORE__REDIS_SENTINEL_MASTER", "mail"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("store.redis_cluster[0]: \"10.0.0.1:7000\" is not a redis:// URL"),
            "{err}"
        );
        assert!(
            err.contains("a store is a Redis Cluster or a master Sentinel names, not both"),
            "{err}"
        );
        // Mistakes name the variable, not the file.
        for (var, value, says) in [
            (
                "KILN_DELIVERY__MX_PORT",
                "twenty-five",
                "KILN_DELIVERY__MX_PORT",
            ),
            ("KILN_DELIVERY__MX_PROT", "25", "mx_prot"),
            ("KILN_DELIVREY__MX_PORT", "25", "not a config section"),
            (
                "KILN_DELIVERY__MX_PORT",
                "0",
                "delivery.mx_port: must not be 0",
            ),
            (
                "KILN_STORE__REDIS_FAILOVER_TIMEOUT_MS",
                "15",
                "store.redis_failover_timeout_ms: 15 is not between 100 and 600000",
            ),
            (
                "KILN_STORE__REDIS_FAILOVER_TIMEOUT_MS",
                "15s",
                "KILN_STORE__REDIS_FAILOVER_TIMEOUT_MS",
            ),
            // DANE's switch takes its two words only.
            ("KILN_DNS__DNSSEC", "yes", "KILN_DNS__DNSSEC"),
            (
                "KILN_DELIVERY__TLS_REPORT_FROM",
                "postmaster",
                "delivery.tls_report_from: \"postmaster\" is not an email address",
            ),
        ] {
            let err = Settings::load_with(Some(&file), env(&[(var, value), ("KILN_BIN", "x")]))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("environment variable {var}")),
                "{var}: {err}"
            );
            assert!(err.contains(says), "{var}: {err}");
            assert!(
                !err.contains("kiln.toml"),
                "{var}: the file is not to blame: {err}"
            );
        }
        // And the file's own mistakes still name the file.
        let bad = file_with(&dir, "bad.toml", "[delivery]\nmx_port = \"x\"\n");
        let err = Settings::load_with(Some(&bad), env(&[("KILN_DNS__TIMEOUT", "3")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.toml"), "{err}");
    }
}
