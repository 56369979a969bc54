//! The operator commands: HTTP to the daemon's status address.

use std::net::SocketAddr;
use std::path::Path;

use serde_json::{json, Value};

use super::{CliError, DeadCommand, EXIT_FAILED, EXIT_NOT_RUNNING, EXIT_OK};
use crate::config;

/// Where the daemon's status endpoint is, and the bearer token it wants.
pub(super) struct Target {
    base: String,
    token: Option<config::Secret>,
}

/// The status address `[status] listen` has by default.
pub(super) const DEFAULT_STATUS: &str = "127.0.0.1:9870";

/// From `--url`, else the config's `[status]`; a config that cannot be read (a user
/// who may not read /etc/lotlink) falls back to the default address, saying so.
pub(super) fn address(path: &Path, url: Option<&str>) -> Result<Target, CliError> {
    // The config in effect: a pushed one may have moved the status address.
    let cfg = match crate::manage::load_in_effect(path) {
        Ok(effect) => Some(effect.config),
        Err(config::ConfigError::Read { .. }) if url.is_some() => None,
        Err(e @ config::ConfigError::Read { .. }) => {
            eprintln!("{e}; trying the default status address {DEFAULT_STATUS} (or give --url)");
            None
        }
        Err(e) if url.is_some() => {
            eprintln!("note: {e}");
            None
        }
        Err(e) => return Err(e.into()),
    };
    let token = cfg
        .as_ref()
        .and_then(|c| c.status.token.clone())
        .or_else(|| {
            std::env::var("LOTLINK_STATUS_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
                .map(config::Secret::new)
        });
    let base = match (url, &cfg) {
        (Some(u), _) => {
            let u = u.trim_end_matches('/');
            if u.contains("://") {
                u.to_string()
            } else {
                format!("http://{u}")
            }
        }
        (None, Some(cfg)) => {
            let mut addr: SocketAddr = cfg.status.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}")
        }
        (None, None) => format!("http://{DEFAULT_STATUS}"),
    };
    Ok(Target { base, token })
}

/// GET or POST; `Err(code)` when the daemon cannot be reached or refused.
pub(super) async fn call(target: &Target, path: &str, body: Option<Value>) -> Result<Value, i32> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| {
            eprintln!("http client: {e}");
            EXIT_FAILED
        })?;
    let base = &target.base;
    let url = format!("{base}{path}");
    let mut req = match body {
        Some(b) => client.post(&url).json(&b),
        None => client.get(&url),
    };
    if let Some(t) = &target.token {
        req = req.bearer_auth(t.expose());
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) if e.is_connect() => {
            eprintln!(
                "lotlink is not running (nothing answers at {base}, the [status] listen address)"
            );
            return Err(EXIT_NOT_RUNNING);
        }
        Err(e) => {
            eprintln!("{base}: {}", e.without_url());
            return Err(EXIT_FAILED);
        }
    };
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if status.is_success() {
        Ok(v)
    } else {
        let why = v["error"]
            .as_str()
            .map_or_else(|| text.trim().to_string(), str::to_string);
        eprintln!("{status}: {why}");
        Err(EXIT_FAILED)
    }
}

fn show(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// "12:04:31, 8 s ago" (local time; the date too when not today).
pub(super) fn when(ms: Option<i64>, now_ms: i64) -> String {
    use chrono::TimeZone;
    let Some(ms) = ms.filter(|m| *m > 0) else {
        return "never".into();
    };
    let Some(t) = chrono::Local.timestamp_millis_opt(ms).single() else {
        return "-".into();
    };
    let now = chrono::Local
        .timestamp_millis_opt(now_ms)
        .single()
        .unwrap_or(t);
    let clock = if t.date_naive() == now.date_naive() {
        t.format("%H:%M:%S").to_string()
    } else {
        t.format("%Y-%m-%d %H:%M:%S").to_string()
    };
    format!("{clock}, {}", ago(now_ms - ms))
}

/// "8 s ago", "37 min ago", "3 h 12 min ago" ("in the future" for a clock ahead).
pub(super) fn ago(ms: i64) -> String {
    if ms < 0 {
        return "in the future".into();
    }
    let d = std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    format!("{} ago", lotlink_drivers::outage::human_duration(d))
}

/// A duration in seconds as people say it.
fn secs(v: &Value) -> String {
    v.as_u64().map_or_else(
        || "-".into(),
        |s| lotlink_drivers::outage::human_duration(std::time::Duration::from_secs(s)),
    )
}

/// Bytes as B, KiB, MiB or GiB.
pub(super) fn size(v: &Value) -> String {
    let Some(b) = v.as_u64() else {
        return "-".into();
    };
    let f = b as f64;
    if b < 1024 {
        format!("{b} B")
    } else if b < 1 << 20 {
        format!("{:.1} KiB", f / 1024.0)
    } else if b < 1 << 30 {
        format!("{:.1} MiB", f / f64::from(1u32 << 20))
    } else {
        format!("{:.2} GiB", f / f64::from(1u32 << 30))
    }
}

/// `text` padded with spaces to `width` terminal columns (CJK characters take two).
pub(super) fn pad(text: &str, width: usize) -> String {
    let w = unicode_width::UnicodeWidthStr::width(text);
    format!("{text}{}", " ".repeat(width.saturating_sub(w)))
}

/// Rows as columns aligned by display width; the last column is not padded.
pub(super) fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|t| unicode_width::UnicodeWidthStr::width(t.as_str()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&pad(cell, widths[i]));
                line.push_str("  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub(super) async fn status(
    path: &Path,
    url: Option<&str>,
    raw: bool,
    check: bool,
) -> Result<i32, CliError> {
    let target = address(path, url)?;
    let v = match call(&target, "/status", None).await {
        Ok(v) => v,
        Err(code) => return Ok(code),
    };
    let healthy = v["healthy"].as_bool().unwrap_or(false);
    let code = if healthy { EXIT_OK } else { EXIT_FAILED };
    if check {
        if healthy {
            println!("ok");
        } else {
            for p in v["problems"].as_array().map_or(&[][..], Vec::as_slice) {
                println!("{}", p.as_str().unwrap_or_default());
            }
        }
        return Ok(code);
    }
    if raw {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(EXIT_OK);
    }
    print!("{}", render_status(&v));
    Ok(EXIT_OK)
}

/// The human form of a `/status` document.
pub(super) fn render_status(v: &Value) -> String {
    use std::fmt::Write as _;
    let now = v["taken_ms"]
        .as_i64()
        .unwrap_or_else(crate::clock::Clock::local_ms);
    let (p, o, s) = (&v["platform"], &v["outbox"], &v["spaces"]);
    let mut out = format!(
        "lotlink {}  up {}  config {}\n",
        show(v, "version"),
        secs(&v["uptime_s"]),
        show(v, "config_hash")
    );
    if v["healthy"] == true {
        out.push_str("health     ok\n");
    } else {
        for (i, prob) in v["problems"]
            .as_array()
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .enumerate()
        {
            let label = if i == 0 {
                "health     degraded: "
            } else {
                "                     "
            };
            let _ = writeln!(out, "{label}{}", prob.as_str().unwrap_or_default());
        }
    }
    let mgmt = &v["management"];
    if let Some(file) = mgmt["config_file"].as_str() {
        let _ = writeln!(out, "config file in effect: {file}");
    }
    if mgmt["enabled"] == true {
        let last = &mgmt["last_result"];
        let _ = writeln!(
            out,
            "management connected {}  config version {}  last push {}",
            show(mgmt, "connected"),
            show(mgmt, "config_version"),
            if last.is_null() {
                "-".to_string()
            } else {
                format!(
                    "v{} {} ({})",
                    show(last, "version"),
                    show(last, "outcome"),
                    show(last, "reason")
                )
            }
        );
    }
    let reach = if p["reachable"] == true {
        "reachable"
    } else {
        "NOT reachable"
    };
    let mut rows = vec![
        vec![
            "platform".to_string(),
            reach.to_string(),
            format!("last success {}", when(p["last_success_ms"].as_i64(), now)),
            format!("delivered {}", show(p, "delivered")),
        ],
        vec![
            String::new(),
            format!("clock offset {} ms", show(p, "clock_offset_ms")),
            format!(
                "last error {}",
                if p["last_error"].is_null() {
                    "-".to_string()
                } else {
                    format!(
                        "{} {}",
                        show(&p["last_error"], "code"),
                        show(&p["last_error"], "message")
                    )
                }
            ),
            format!("fault {}", show(p, "fault")),
        ],
        vec![
            "outbox".to_string(),
            format!("pending {}", show(o, "pending")),
            format!(
                "oldest {}",
                o["oldest_age_s"]
                    .as_i64()
                    .map_or_else(|| "-".into(), |s| ago(s * 1000))
            ),
            format!(
                "records {}  on disk {}  dead letters {}",
                size(&o["bytes"]),
                size(&o["size_on_disk"]),
                show(o, "dead_letters")
            ),
        ],
        vec![
            "spaces".to_string(),
            format!("free {}", show(s, "free")),
            format!("occupied {}", show(s, "occupied")),
            format!("total {}", show(s, "total")),
        ],
    ];
    out.push_str(&table(&rows));
    out.push('\n');
    rows = vec![vec![
        "driver".into(),
        "kind".into(),
        "state".into(),
        "last heard".into(),
        "events".into(),
        "bad".into(),
        "last problem".into(),
    ]];
    for d in v["drivers"].as_array().map_or(&[][..], Vec::as_slice) {
        rows.push(vec![
            show(d, "name"),
            show(d, "kind"),
            if d["connected"] == true {
                "connected"
            } else {
                "disconnected"
            }
            .into(),
            when(d["last_heard_ms"].as_i64(), now),
            show(d, "events"),
            show(d, "bad_inputs"),
            show(d, "last_problem"),
        ]);
    }
    out.push_str(&table(&rows));
    out
}

pub(super) async fn dead(cmd: DeadCommand) -> Result<i32, CliError> {
    match cmd {
        DeadCommand::List { config } => {
            let addr = address(&config, None)?;
            match call(&addr, "/api/dead", None).await {
                Ok(v) => {
                    let list = v.as_array().map_or(&[][..], Vec::as_slice);
                    if list.is_empty() {
                        println!("no dead letters");
                        return Ok(EXIT_OK);
                    }
                    let mut rows = vec![vec![
                        "id".to_string(),
                        "plate".into(),
                        "dir".into(),
                        "time".into(),
                        "lane".into(),
                        "reason".into(),
                    ]];
                    for d in list {
                        rows.push(vec![
                            show(d, "id"),
                            show(d, "carNo"),
                            show(d, "inOutType"),
                            show(d, "inOutTime"),
                            show(d, "nodeName"),
                            show(d, "reason"),
                        ]);
                    }
                    print!("{}", table(&rows));
                    Ok(EXIT_OK)
                }
                Err(code) => Ok(code),
            }
        }
        DeadCommand::Retry { which, config } => {
            let body = if which == "all" {
                json!({ "all": true })
            } else {
                match which.parse::<u64>() {
                    Ok(id) => json!({ "id": id }),
                    Err(_) => {
                        eprintln!("{which:?}: give a dead letter id or `all`");
                        return Ok(super::EXIT_USAGE);
                    }
                }
            };
            let addr = address(&config, None)?;
            match call(&addr, "/api/dead/retry", Some(body)).await {
                Ok(v) => {
                    let n = v["retried"].as_array().map_or(0, Vec::len);
                    println!("{n} dead letter(s) put back for upload");
                    Ok(EXIT_OK)
                }
                Err(code) => Ok(code),
            }
        }
        DeadCommand::Drop { id, yes, config } => {
            let addr = address(&config, None)?;
            if !yes {
                eprint!("drop dead letter {id} for good? [y/N] ");
                let mut answer = String::new();
                let _ = std::io::stdin().read_line(&mut answer);
                if !matches!(answer.trim(), "y" | "Y" | "yes") {
                    eprintln!("not dropped");
                    return Ok(EXIT_FAILED);
                }
            }
            match call(&addr, "/api/dead/drop", Some(json!({ "id": id }))).await {
                Ok(_) => {
                    println!("dead letter {id} dropped");
                    Ok(EXIT_OK)
                }
                Err(code) => Ok(code),
            }
        }
    }
}

pub(super) async fn space_set(path: &Path, occupied: u64) -> Result<i32, CliError> {
    let addr = address(path, None)?;
    match call(&addr, "/api/space", Some(json!({ "occupied": occupied }))).await {
        Ok(v) => {
            println!(
                "occupied {} of {}: {} free (reported to the platform)",
                show(&v, "occupied"),
                show(&v, "total"),
                show(&v, "free")
            );
            Ok(EXIT_OK)
        }
        Err(code) => Ok(code),
    }
}

/// The free spaces the running daemon counts (for `send space` without `--surplus`).
pub(super) async fn daemon_free(path: &Path) -> Result<Result<u64, i32>, CliError> {
    let target = address(path, None)?;
    Ok(match call(&target, "/status", None).await {
        Ok(v) => v["spaces"]["free"].as_u64().ok_or(EXIT_FAILED),
        Err(code) => Err(code),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_by_display_width_with_chinese_names() {
        let t = table(&[
            vec!["driver".into(), "kind".into()],
            vec!["出口1".into(), "serial".into()],
            vec!["entry".into(), "mqtt".into()],
        ]);
        let lines: Vec<&str> = t.lines().collect();
        let col = |l: &str| {
            let i = l
                .find("serial")
                .or_else(|| l.find("mqtt"))
                .or_else(|| l.find("kind"));
            unicode_width::UnicodeWidthStr::width(&l[..i.unwrap_or(0)])
        };
        assert_eq!(col(lines[0]), col(lines[1]), "{t}");
        assert_eq!(col(lines[1]), col(lines[2]), "{t}");
    }

    #[test]
    fn sizes_and_ages_read_as_people_say_them() {
        assert_eq!(size(&json!(512)), "512 B");
        assert_eq!(size(&json!(1536)), "1.5 KiB");
        assert_eq!(size(&json!(5 * 1024 * 1024)), "5.0 MiB");
        assert_eq!(ago(8_000), "8 s ago");
        assert_eq!(ago(37 * 60_000), "37 min ago");
        let now = chrono::Local::now().timestamp_millis();
        assert!(when(Some(now - 8_000), now).ends_with(", 8 s ago"));
        assert_eq!(when(None, now), "never");
    }
}
