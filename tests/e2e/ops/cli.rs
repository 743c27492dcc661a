//! The `kiln` command line: check-config names every problem; the
//! subcommands find their daemon.

use crate::harness::binary;
use std::path::Path;
use std::process::{Command, Output};

/// Writes `toml` to `dir/name` and runs `kiln check-config` on it.
fn check_config(dir: &Path, name: &str, toml: &str) -> Output {
    let file = dir.join(name);
    std::fs::write(&file, toml).unwrap();
    Command::new(binary())
        .args(["check-config", "--config"])
        .arg(&file)
        .output()
        .unwrap()
}

#[test]
fn check_config_names_file_key_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let out = check_config(
        dir.path(),
        "bad.toml",
        "[dns]\nnameservers = [\"8.8.8.8\"]\n[store]\nbackend = \"redis\"\nredis_url = \"http://x\"\n[delivery]\nmx_port = 0\n",
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in ["dns.nameservers[0]", "store.redis_url", "delivery.mx_port"] {
        assert!(
            err.contains(&format!("bad.toml: {key}")),
            "{key} not named in: {err}"
        );
    }

    let out = check_config(dir.path(), "good.toml", "[delivery]\nmx_port = 2526\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = check_config(dir.path(), "typo.toml", "[delivery]\nmx_prot = 25\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("mx_prot"));
}

/// The internal networks MTA-STS policy hosts and TLS report endpoints
/// may be at, as an operator gives them: in a `[delivery]` section that
/// says nothing else, or in the environment as a comma-separated list; a
/// network mistyped in either is named with its place in the list, a
/// string where a list belongs is named by its key.
#[test]
fn check_config_names_a_mistyped_https_allow_network() {
    let dir = tempfile::tempdir().unwrap();
    let good = check_config(
        dir.path(),
        "allow.toml",
        "[delivery]\nhttps_allow_networks = [\"10.0.0.0/8\", \"fd00::/8\"]\n",
    );
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );

    let out = check_config(
        dir.path(),
        "typo.toml",
        "[delivery]\nhttps_allow_networks = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n",
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("delivery.https_allow_networks[1]: \"10.0.0.0/33\" is not a CIDR network"),
        "{err}"
    );

    let out = check_config(
        dir.path(),
        "string.toml",
        "[delivery]\nhttps_allow_networks = \"10.0.0.0/8\"\n",
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("https_allow_networks"), "{err}");

    let file = dir.path().join("empty.toml");
    std::fs::write(&file, "").unwrap();
    let env = |value: &str| {
        Command::new(binary())
            .args(["check-config", "--config"])
            .arg(&file)
            .env("KILN_DELIVERY__HTTPS_ALLOW_NETWORKS", value)
            .output()
            .unwrap()
    };
    let out = env("10.0.0.0/8,172.16.0.0/12");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = env("10.0.0.0/8,172.16.0.300/12");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("delivery.https_allow_networks[1]: \"172.16.0.300/12\""),
        "{err}"
    );
}

#[test]
fn check_config_loads_the_policy_scripts() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("policy.lua");
    std::fs::write(&script, "return {\n  hooks = {\n    on_connect = function(c) return { action = 'accept' } end,\n  }\n}\n").unwrap();
    let toml = format!("[policy]\nscript = \"{}\"\n", script.display());
    let out = check_config(dir.path(), "policy.toml", &toml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A syntax error is reported with the script's file and line.
    std::fs::write(
        &script,
        "return {\n  hooks = {\n    on_connect = function(c) return { end,\n  }\n}\n",
    )
    .unwrap();
    let out = check_config(dir.path(), "policy.toml", &toml);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("policy.lua:3:"), "{err}");

    let out = check_config(
        dir.path(),
        "tz.toml",
        "[policy]\ntime_zone = \"Mars/Olympus\"\n",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("policy.time_zone"));
}

/// Three mistakes in three sections are named in one run, each as the
/// operator wrote it: the values an option takes, not a Rust type's name.
#[test]
fn check_config_names_every_section_mistake_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = check_config(
        dir.path(),
        "three.toml",
        "[[smtp.listeners]]\naddress = \"127.0.0.1:2525\"\ntls = \"startls\"\n[delivery]\nmx_port = \"x\"\n[dns]\ntimeout = \"abc\"\n",
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "three.toml: smtp.listeners[0].tls: \"startls\" is not one of: starttls, implicit, none"
        ),
        "{err}"
    );
    assert!(
        err.contains("`delivery.mx_port`") && err.contains("`dns.timeout`"),
        "{err}"
    );
    assert!(!err.contains("ListenerTls"), "{err}");
}

/// The `kiln` subcommands find the daemon as the daemon finds its
/// settings: with the daemon on other ports and the operator in another
/// directory, `KILN_CONFIG` is enough; without it the error says which
/// settings were used and what to give. Two nodes on one Redis accept
/// each other's operator tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_finds_its_daemon() {
    let e = crate::harness::env(crate::harness::Backend::Redis, |_| {}).await;
    let elsewhere = tempfile::tempdir().unwrap();
    let run = |env: Option<&Path>| {
        let mut c = Command::new(binary());
        c.args(["account", "create", "from-elsewhere"])
            .current_dir(elsewhere.path())
            .env_remove("KILN_CONFIG");
        if let Some(config) = env {
            c.env("KILN_CONFIG", config);
        }
        c.output().unwrap()
    };
    let lost = run(None);
    assert!(!lost.status.success());
    let said = String::from_utf8_lossy(&lost.stderr);
    assert!(
        said.contains("default settings: no --config, KILN_CONFIG or /etc/kiln/kiln.toml")
            && said.contains("--config or KILN_CONFIG"),
        "{said}"
    );
    let found = run(Some(&e.kiln.config));
    assert!(
        found.status.success(),
        "{}{}",
        String::from_utf8_lossy(&found.stdout),
        String::from_utf8_lossy(&found.stderr)
    );
    // A second node on the same Redis takes the first one's token.
    let b = crate::harness::second_node(&e, |_| {});
    let a_token = e.kiln.admin_token();
    assert_ne!(a_token, b.admin_token(), "each node has a token of its own");
    let asked = reqwest::Client::new()
        .get(format!("http://{}/admin/policy", b.http))
        .bearer_auth(&a_token)
        .send()
        .await
        .unwrap();
    assert!(asked.status().is_success(), "{:?}", asked.text().await);
    let wrong = reqwest::Client::new()
        .get(format!("http://{}/admin/policy", b.http))
        .bearer_auth(format!("{a_token}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
}
