//! The real `lotlink run` binary as a child process, with the config the fault-injection
//! suites (tests/it/chaos.rs, tests/it/powercut.rs, tests/it/diskfull.rs) give it: the platform
//! simulator, an MQTT camera through the site broker (JSON format, `QoS` 1, persistent
//! session), optionally a serial camera and two Modbus loops, and the status endpoint on a
//! known port.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use lotlink_sim::PlatformSim;
use serde_json::Value;

use super::devices::{free_port, Broker};
use super::{lotlink_command, LOT, TOKEN};

/// `[space] total`.
pub const TOTAL: i64 = 100;
/// The MQTT camera's name (the platform's nodeName) and topic.
pub const MQTT_CAMERA: &str = "入口1";
pub const CAMERA_TOPIC: &str = "chaos/cam1";
pub const SERIAL_CAMERA: &str = "出口2";
pub const LOOP_IN: &str = "计数入口";
pub const LOOP_OUT: &str = "计数出口";
/// Holding registers of the entry and exit counters.
pub const REG_IN: u16 = 0x10;
pub const REG_OUT: u16 = 0x11;
/// Debian's libfaketime (package `faketime`), the multi-threaded variant.
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// The gateway process (SIGKILLed on drop).
pub struct Gateway {
    pub child: Option<Child>,
    pub config: PathBuf,
    pub status_port: u16,
    /// libfaketime's offset file, when the gateway runs under it.
    pub faketime: Option<PathBuf>,
    /// Where the gateway's log goes (appended across restarts).
    pub log: Option<PathBuf>,
}

impl Gateway {
    /// A gateway (not started yet) on `config`, logging into `log`.
    pub fn new(config: PathBuf, status_port: u16, log: Option<PathBuf>) -> Gateway {
        Gateway {
            child: None,
            config,
            status_port,
            faketime: None,
            log,
        }
    }

    pub fn start(&mut self) {
        self.start_with_env(&[]);
    }

    /// Start with extra environment variables.
    pub fn start_with_env(&mut self, env: &[(&str, &std::ffi::OsStr)]) {
        assert!(self.child.is_none());
        let mut cmd = lotlink_command();
        cmd.args(["run", "--config"])
            .arg(&self.config)
            // LOTLINK_CHAOS_LOG=info (or a filter) makes the gateway's log in a failure
            // report more talkative.
            .env(
                "RUST_LOG",
                std::env::var("LOTLINK_CHAOS_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(match &self.log {
                Some(p) => std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_or_else(|_| Stdio::null(), Stdio::from),
                None => Stdio::null(),
            });
        if let Some(f) = &self.faketime {
            // Only the wall clock moves (as with NTP); the monotonic clock is left alone.
            cmd.env("LD_PRELOAD", LIBFAKETIME)
                .env("FAKETIME_TIMESTAMP_FILE", f)
                .env("FAKETIME_CACHE_DURATION", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("lotlink starts"));
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Send `signal` to the running gateway (e.g. `libc::SIGSTOP`); `false` if it is not
    /// running or the signal could not be sent.
    pub fn signal(&self, signal: libc::c_int) -> bool {
        let Some(pid) = self
            .child
            .as_ref()
            .and_then(|c| libc::pid_t::try_from(c.id()).ok())
        else {
            return false;
        };
        // SAFETY: kill(2) on our own child's pid (not yet reaped, so not reused).
        unsafe { libc::kill(pid, signal) == 0 }
    }

    /// How the gateway exited, if it did (`None` while it runs or when not started).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Until `/status` answers (the outbox is open and the drivers started); `false` after
    /// 30 s (scaled) or as soon as the process has exited.
    pub async fn try_wait_ready(&mut self, http: &reqwest::Client) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(30) * super::time_scale();
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            if self.status(http).await.is_some() {
                return true;
            }
            if self.exited().is_some() || std::time::Instant::now() >= deadline {
                return false;
            }
            tick.tick().await;
        }
    }

    /// Until `/status` answers; panics with the log's tail if it does not.
    pub async fn wait_ready(&mut self, http: &reqwest::Client) {
        let ok = self.try_wait_ready(http).await;
        if !ok {
            let exit = self.exited();
            panic!(
                "the gateway did not come up (exit: {exit:?}); {}",
                self.log_tail()
            );
        }
    }

    /// The last lines the gateway logged, newest first.
    pub fn log_tail(&self) -> String {
        let log = self
            .log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        format!("gateway log, newest first:\n{}", tail.join("\n"))
    }

    /// `GET /status`, if the gateway answers.
    pub async fn status(&self, http: &reqwest::Client) -> Option<Value> {
        let url = format!("http://127.0.0.1:{}/status", self.status_port);
        let r = http.get(&url).send().await.ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }

    /// `GET /healthz`: the HTTP status and the body, if the gateway answers.
    pub async fn healthz(&self, http: &reqwest::Client) -> Option<(u16, String)> {
        let url = format!("http://127.0.0.1:{}/healthz", self.status_port);
        let r = http.get(&url).send().await.ok()?;
        let code = r.status().as_u16();
        Some((code, r.text().await.unwrap_or_default()))
    }

    /// One driver's entry in `/status`.
    pub async fn driver(&self, http: &reqwest::Client, name: &str) -> Option<Value> {
        let s = self.status(http).await?;
        s["drivers"]
            .as_array()?
            .iter()
            .find(|d| d["name"] == name)
            .cloned()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The optional parts of a fault-injection config.
#[derive(Default)]
pub struct Extras<'a> {
    pub serial_port: Option<&'a Path>,
    pub modbus: Option<SocketAddr>,
    pub max_disk: Option<&'a str>,
    /// `[outbox] path` (default: `outbox` beside the config).
    pub outbox: Option<&'a Path>,
    /// `[mqtt] max_packet` (default: the gateway's).
    pub max_packet: Option<&'a str>,
}

/// Write `lotlink.toml` into `dir` and return its path.
pub fn write_config(
    dir: &Path,
    sim: &PlatformSim,
    broker: &Broker,
    status_port: u16,
    extras: &Extras,
) -> PathBuf {
    let outbox = extras
        .outbox
        .map_or_else(|| dir.join("outbox"), Path::to_path_buf);
    let mut text = format!(
        "[platform]\nurl = \"{}\"\nlot_code = \"{LOT}\"\ntoken = \"{TOKEN}\"\nrequest_timeout = \"1s\"\nretry_max = \"2s\"\n\n[outbox]\npath = \"{}\"\n{}\n[status]\nlisten = \"127.0.0.1:{status_port}\"\n\n[space]\ntotal = {TOTAL}\n{}\n[mqtt]\nurl = \"{}\"\nclient_id = \"lotlink-chaos-{}\"\n{}\n[[camera]]\nname = \"{MQTT_CAMERA}\"\ndirection = \"in\"\ndriver = \"mqtt\"\nformat = \"json\"\ntopic = \"{CAMERA_TOPIC}\"\n",
        sim.url(),
        outbox.display(),
        extras
            .max_disk
            .map_or(String::new(), |m| format!("max_disk = \"{m}\"\n")),
        if extras.modbus.is_some() {
            "source = \"loops\"\n"
        } else {
            ""
        },
        broker.url(),
        free_port(),
        extras
            .max_packet
            .map_or(String::new(), |m| format!("max_packet = \"{m}\"\n")),
    );
    if let Some(port) = extras.serial_port {
        text += &format!(
            "\n[[camera]]\nname = \"{SERIAL_CAMERA}\"\ndirection = \"out\"\ndriver = \"serial\"\nport = \"{}\"\nframing = \"line\"\nencoding = \"gbk\"\nfields = [\"direction\", \"plate\", \"color\", \"time\"]\n",
            port.display()
        );
    }
    if let Some(addr) = extras.modbus {
        for (name, lane, reg) in [(LOOP_IN, "in", REG_IN), (LOOP_OUT, "out", REG_OUT)] {
            text += &format!(
                "\n[[loop]]\nname = \"{name}\"\nlane = \"{lane}\"\ndriver = \"modbus\"\nhost = \"{addr}\"\nslave = 1\nregister = \"holding_register\"\naddress = {reg}\nmode = \"counter\"\ncounter_bits = 16\npoll_interval = \"50ms\"\ntimeout = \"300ms\"\n"
            );
        }
    }
    let path = dir.join("lotlink.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// carNo → how many times the platform stored it, and its direction as stored.
pub fn delivered(sim: &PlatformSim) -> HashMap<String, (u64, String)> {
    let mut out: HashMap<String, (u64, String)> = HashMap::new();
    for r in sim.records() {
        let plate = r["carNo"].as_str().unwrap_or_default().to_owned();
        let dir = r["inOutType"].as_str().unwrap_or_default().to_owned();
        let e = out.entry(plate).or_insert((0, dir));
        e.0 += 1;
    }
    out
}

/// Run an outside tool to completion; its trimmed stdout, or what went wrong (with stderr).
pub fn tool(program: &str, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "{program} {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether this process runs as root (mounts and loop devices need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The tools in `tools` that cannot be found.
pub fn missing_tools(tools: &[&str]) -> Vec<String> {
    tools
        .iter()
        .filter(|t| super::devices::find_tool(t).is_none())
        .map(|t| (*t).to_owned())
        .collect()
}

/// A temporary path as the `&str` a tool's argument list takes.
pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

/// Skip `test` with `why` (see [`super::devices::skip`]), or fail under
/// `LOTLINK_REQUIRE_REAL=1`.
pub fn skip_or_fail(test: &str, why: &str) {
    assert!(
        !super::devices::require_real(),
        "LOTLINK_REQUIRE_REAL=1 but {test} cannot run: {why}"
    );
    super::devices::skip(test, why);
}

/// Bytes an unprivileged writer may still write on the file system holding `path`.
pub fn free_bytes(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path without NUL");
    // SAFETY: statvfs writes only into the struct it is given; `c` is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    assert_eq!(rc, 0, "statvfs {}", path.display());
    // u64 here, narrower on 32-bit targets.
    #[allow(clippy::useless_conversion)]
    let free = u64::from(st.f_bavail) * u64::from(st.f_frsize);
    free
}
