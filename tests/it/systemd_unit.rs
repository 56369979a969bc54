//! The systemd unit the .deb installs (`systemd/lotlink.service`): systemd itself must accept
//! it (`systemd-analyze verify`), and its sandbox must stay tight (`systemd-analyze security`
//! exposure ≤ 2.5). Skipped, with the reason printed, where `systemd-analyze` is missing,
//! unless `LOTLINK_REQUIRE_REAL=1` (CI) makes that a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/lotlink.service");
const MAX_EXPOSURE: f64 = 2.5;

fn systemd_analyze() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/bin".into()])
        .map(|d: PathBuf| d.join("systemd-analyze"))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var("LOTLINK_REQUIRE_REAL").map_or(true, |v| v != "1"),
            "LOTLINK_REQUIRE_REAL=1 but systemd-analyze is missing (apt-get install systemd)"
        );
        eprintln!("skipped: systemd-analyze is not installed (Debian package systemd)");
    }
    found
}

/// The figure from the "Overall exposure level for lotlink.service: 1.6 OK" line.
fn exposure(report: &str) -> Option<f64> {
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))?;
    let after = line.rsplit_once(':')?.1;
    after.split_whitespace().next()?.parse().ok()
}

#[test]
fn the_unit_has_the_settings_the_daemon_relies_on() {
    let unit = std::fs::read_to_string(UNIT).expect("systemd/lotlink.service");
    let has = |line: &str| unit.lines().any(|l| l.trim() == line);
    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=30",
        "ExecStartPre=/usr/bin/lotlink check-config --config /etc/lotlink/lotlink.toml",
        "ExecStart=/usr/bin/lotlink run --config /etc/lotlink/lotlink.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=always",
        "User=lotlink",
        "SupplementaryGroups=dialout",
        "StateDirectory=lotlink",
        "DevicePolicy=closed",
        "DeviceAllow=char-ttyUSB rw",
        "DeviceAllow=char-ttyAMA rw",
        "DeviceAllow=char-ttyACM rw",
    ] {
        assert!(has(line), "the unit lacks `{line}`");
    }
    // PrivateDevices= would hide /dev/ttyUSB* and the serial devices with it; IPAddressDeny=
    // would cut the platform and the broker off.
    for key in ["PrivateDevices=", "IPAddressDeny=", "PrivateNetwork="] {
        assert!(
            !unit.lines().any(|l| l.trim_start().starts_with(key)),
            "the unit must not set {key}"
        );
    }
}

#[test]
fn systemd_accepts_the_unit() {
    let Some(sa) = systemd_analyze() else { return };
    // verify wants the binaries it names to exist: point them at the one cargo just built.
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = std::fs::read_to_string(UNIT)
        .expect("systemd/lotlink.service")
        .replace("/usr/bin/lotlink", env!("CARGO_BIN_EXE_lotlink"));
    let copy = dir.path().join("lotlink.service");
    std::fs::write(&copy, unit).expect("write the unit copy");
    let out = Command::new(&sa)
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Unknown or misspelt keys are only warnings (exit 0): any line about our unit fails.
    let about_ours: Vec<&str> = stderr
        .lines()
        .chain(stdout.lines())
        .filter(|l| l.contains("lotlink.service"))
        .collect();
    assert!(
        out.status.success() && about_ours.is_empty(),
        "systemd-analyze verify {}: {}\n{stdout}{stderr}",
        Path::new(&copy).display(),
        out.status
    );
}

#[test]
fn the_sandbox_exposure_is_at_most_2_5() {
    let Some(sa) = systemd_analyze() else { return };
    let out = Command::new(&sa)
        .args(["security", "--offline=true", "--no-pager", UNIT])
        .output()
        .expect("systemd-analyze runs");
    let report = String::from_utf8_lossy(&out.stdout);
    let figure = exposure(&report).unwrap_or_else(|| {
        panic!(
            "no exposure figure in the report: {}\n{report}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        figure <= MAX_EXPOSURE,
        "exposure {figure} > {MAX_EXPOSURE}:\n{report}"
    );
}

#[test]
fn the_exposure_line_parses() {
    assert_eq!(
        exposure("x\n→ Overall exposure level for lotlink.service: 1.6 OK 🙂\n"),
        Some(1.6)
    );
    assert_eq!(exposure("nothing here"), None);
}
