//! The binary's commands, run as an operator would.

use crate::common;

use std::process::Command;

fn lotlink() -> Command {
    common::lotlink_command()
}

#[test]
fn check_config_refuses_the_shipped_example_until_token_and_lot_code_are_filled_in_then_says_ok() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/lotlink.toml");
    let out = lotlink()
        .args(["check-config", "--config", example])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = std::fs::read_to_string(example)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("token = "))
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!(
            "lotlink.toml:{line}: platform.token: is still the example value"
        )),
        "{err}"
    );
    assert!(
        err.contains("platform.lot_code: is still the example value"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let filled = dir.path().join("lotlink.toml");
    let text = std::fs::read_to_string(example)
        .unwrap()
        .replace(
            lotlink::testing::config::EXAMPLE_TOKEN,
            "the-token-the-platform-assigned",
        )
        .replace(lotlink::testing::config::EXAMPLE_LOT_CODE, "350");
    std::fs::write(&filled, text).unwrap();
    let out = lotlink()
        .args(["check-config", "--config"])
        .arg(&filled)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

#[test]
fn check_config_lists_every_problem_with_file_line_and_key_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "[platform]\nurl = \"x\"\nlot_code = \"350\"\ntoken = \"t\"\nmax_batch = 0\n\n[space]\ntotal = 5\n",
    )
    .unwrap();
    let out = lotlink()
        .args(["check-config", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:2: platform.url"), "{err}");
    assert!(
        err.contains("bad.toml:5: platform.max_batch: 0 is not allowed: 1..=100"),
        "{err}"
    );
}

#[test]
fn check_config_reports_unknown_keys_wrong_types_missing_keys_and_bad_values_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    let text = r#"[platform]
url = "https://platform.example.cn"
lot_code = "350"
token = 9876543210
tokne = "x"
max_batch = "100"
max_body = "2 parsecs"
timezone = "Mars/Olympus"

[space]
total = 500
colour = "red"

[status]
listen = 9870

[[camera]]
name = "入口1"
direction = "sideways"
driver = "serial"
port = "/dev/ttyUSB0"
baud = "fast"
speed = 3

[[camera]]
direction = "in"
driver = "serial"
port = "/dev/ttyUSB1"
"#;
    std::fs::write(&p, text).unwrap();
    let out = lotlink()
        .args(["check-config", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in [
        // Wrong types, unknown keys and missing keys, with the parser's line and column...
        "bad.toml:4: platform.token: wrong type: expected a string, found a whole number (line 4, column 1)",
        "bad.toml:5: platform.tokne: unknown key; allowed here: url, lot_code, token,",
        "bad.toml:6: platform.max_batch: wrong type: expected a whole number, found a string",
        "bad.toml:12: space.colour: unknown key",
        "bad.toml:15: status.listen: wrong type: expected a string, found a whole number",
        "bad.toml:22: camera.1.baud: wrong type",
        "bad.toml:23: camera.1.speed: unknown key",
        "bad.toml:25: camera.2.name: missing",
        // ...and in the same run, the values validation refuses, at their key's line.
        "bad.toml:7: platform.max_body: \"2 parsecs\"",
        "bad.toml:8: platform.timezone: \"Mars/Olympus\"",
        "bad.toml:19: camera.1.direction: \"sideways\"",
    ] {
        assert!(err.contains(expected), "{expected:?} not in:\n{err}");
    }
    // One line per problem: a key reported by the parser is not reported again by
    // validation (it held a placeholder there).
    assert_eq!(err.lines().count(), 11, "{err}");
    // The secret's value is never quoted.
    assert!(!err.contains("9876543210"), "{err}");
}

#[test]
fn check_config_never_quotes_a_malformed_secret_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "[platform]\nurl = \"https://p.example.cn\"\nlot_code = \"350\"\ntoken = \"s3cr3t-t0ken\\q\"\n\n[space]\ntotal = 5\n",
    )
    .unwrap();
    let out = lotlink()
        .args(["check-config", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:4: syntax: malformed value of `token`"),
        "{err}"
    );
    assert!(!err.contains("s3cr3t"), "{err}");
}

#[test]
fn check_config_names_a_missing_file() {
    let out = lotlink()
        .args(["check-config", "--config", "/nonexistent/lotlink.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/lotlink.toml: cannot read"));
}

#[tokio::test]
async fn send_heartbeat_and_space_print_the_platforms_answer() {
    let sim = common::sim().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        common::config_text(&sim.url(), &dir.path().join("ob"), ""),
    )
    .unwrap();
    for (what, extra) in [("heartbeat", vec![]), ("space", vec!["--surplus", "42"])] {
        let out = tokio::process::Command::from(common::lotlink_command())
            .args(["send", what, "--config"])
            .arg(&cfg)
            .args(extra)
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{what}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("answer: code 0"), "{stdout}");
        assert!(!stdout.contains(common::TOKEN));
    }
    assert_eq!(sim.stats().heartbeats_ok, 1);
    assert_eq!(sim.space_reports(), vec![(100, 42)]);
}

#[tokio::test]
async fn send_reports_an_unreachable_platform_with_exit_1() {
    let sim = common::sim().await;
    let url = sim.url();
    sim.shutdown().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, common::config_text(&url, &dir.path().join("ob"), "")).unwrap();
    let out = tokio::process::Command::from(common::lotlink_command())
        .args(["send", "heartbeat", "--config"])
        .arg(&cfg)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no answer"));
}

#[test]
fn the_demo_runs_the_pipeline_through_an_outage_and_loses_nothing() {
    // Under emulation every phase is stretched, so the same number of events fits in it.
    let ms = |n: u32| format!("{}ms", n * common::time_scale());
    let out = lotlink()
        .args([
            "demo",
            "--duration",
            &ms(9000),
            "--interval",
            &ms(500),
            "--online",
            &ms(3000),
            "--outage",
            &ms(3000),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("platform OFFLINE"), "{stdout}");
    assert!(stdout.contains("platform back ONLINE"), "{stdout}");
    assert!(stdout.contains(" 0 lost, 0 duplicates"), "{stdout}");
    let delivered = stdout
        .lines()
        .filter(|l| l.contains("platform received"))
        .count();
    assert!(delivered >= 4, "{stdout}");
}

#[test]
fn shrink_says_what_the_gateway_would_do_with_an_image_and_writes_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.jpg");
    std::fs::write(
        &big,
        lotlink::testing::imaging::synth_jpeg(1920, 1080, 5, 92),
    )
    .unwrap();
    let small = dir.path().join("small.jpg");
    let out = lotlink()
        .arg("shrink")
        .arg(&big)
        .arg("--out")
        .arg(&small)
        .args(["--repeat", "2"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("shrunk from 1920x1080"), "{text}");
    assert!(text.contains("of 2"), "timed twice: {text}");
    let written = std::fs::read(&small).unwrap();
    assert_eq!(&written[..2], &[0xFF, 0xD8], "a JPEG");
    assert!(lotlink::testing::imaging::b64_len(written.len()) <= 50_000);

    // Not an image: the placeholder, and exit 1.
    let junk = dir.path().join("junk.jpg");
    std::fs::write(&junk, b"not a picture").unwrap();
    let out = lotlink().arg("shrink").arg(&junk).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("placeholder"), "{text}");
}

/// `send space` without `--surplus` asks the daemon; with none running it exits 3 and,
/// above all, does not create the outbox (run as root before the first start, a created
/// outbox would be root's and the service could not open it).
#[tokio::test]
async fn send_space_without_a_daemon_exits_3_and_never_creates_the_outbox() {
    let sim = common::sim().await;
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("ob");
    let cfg = dir.path().join("c.toml");
    // A status port nothing listens on.
    let text = common::config_text(&sim.url(), &outbox, "").replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{}\"", common::devices::free_port()),
    );
    std::fs::write(&cfg, text).unwrap();
    let out = tokio::process::Command::from(common::lotlink_command())
        .args(["send", "space", "-c"])
        .arg(&cfg)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("not running") && stderr.contains("--surplus"),
        "{stderr}"
    );
    assert!(
        !outbox.exists(),
        "the outbox was created by an operator command"
    );
    assert!(sim.space_reports().is_empty());
}

/// The config file is `-c`, `--config` or `$LOTLINK_CONFIG`, in that order.
#[test]
fn the_config_file_comes_from_c_or_config_or_lotlink_config() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        common::config_text("http://127.0.0.1:9", &dir.path().join("ob"), ""),
    )
    .unwrap();
    let bad = dir.path().join("missing.toml");
    for args in [vec!["check-config", "-c"], vec!["check-config", "--config"]] {
        let out = lotlink().args(&args).arg(&good).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
    }
    let out = lotlink()
        .arg("check-config")
        .env("LOTLINK_CONFIG", &good)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "from LOTLINK_CONFIG");
    let out = lotlink()
        .args(["check-config", "-c"])
        .arg(&bad)
        .env("LOTLINK_CONFIG", &good)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "-c wins over LOTLINK_CONFIG");
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
    // A usage error is 2; the help lists the exit codes.
    let out = lotlink()
        .args(["check-config", "--frobnicate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = lotlink().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("3  the daemon is not running"), "{help}");
}

/// The completion scripts and the man page the .deb ships are what the command line
/// generates now (regenerate with `scripts/gen-completions` when this fails).
#[test]
fn the_shipped_completions_and_man_page_match_the_command_line() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for (args, file) in [
        (
            vec!["completions", "bash"],
            "assets/completions/lotlink.bash",
        ),
        (vec!["completions", "zsh"], "assets/completions/_lotlink"),
        (
            vec!["completions", "fish"],
            "assets/completions/lotlink.fish",
        ),
        (vec!["man"], "assets/lotlink.1"),
    ] {
        let out = lotlink().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let shipped = std::fs::read(root.join(file)).unwrap_or_default();
        assert!(
            out.stdout == shipped,
            "{file} is stale or missing: run scripts/gen-completions"
        );
    }
    let out = lotlink().arg("man").output().unwrap();
    let man = String::from_utf8_lossy(&out.stdout);
    assert!(
        man.contains(".TH lotlink") && man.contains("status"),
        "{man}"
    );
}
