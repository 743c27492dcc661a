//! The `kiln` command line: check-config names every problem.

use crate::harness::binary;
use std::process::Command;

#[test]
fn check_config_names_file_key_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[dns]\nnameservers = [\"8.8.8.8\"]\n[store]\nbackend = \"redis\"\nredis_url = \"http://x\"\n[delivery]\nmx_port = 0\n",
    )
    .unwrap();
    let out = Command::new(binary())
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in ["dns.nameservers[0]", "store.redis_url", "delivery.mx_port"] {
        assert!(
            err.contains(&format!("bad.toml: {key}")),
            "{key} not named in: {err}"
        );
    }

    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[delivery]\nmx_port = 2526\n").unwrap();
    let out = Command::new(binary())
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "[delivery]\nmx_prot = 25\n").unwrap();
    let out = Command::new(binary())
        .args(["check-config", "--config"])
        .arg(&typo)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("mx_prot"));
}
