//! Operating a fleet from one shell, against a real mosquitto and the real `lotlink`
//! binary: `lotlink push` to three running gateways (one file, `{lot_code}` filled in per
//! lot) with each outcome printed, `lotlink fleet` with one gateway offline, a push
//! captured for one lot and replayed onto another refused, secrets over a plain-text broker
//! refused, `--revert` back to the local file; and a gateway without a push key that
//! publishes its status but refuses pushes. The README's "Operating a fleet" runs the same
//! commands (`cargo test --test fleet -- --nocapture` shows what the operator sees).
#![cfg(unix)]

use crate::common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::devices::{free_port, Broker};
use common::{eventually_async, Daemon, TOKEN};
use lotlink::testing::manage::pushed_path;
use lotlink_sim::{PlatformSim, SimConfig};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(40);
const KEY: &str = "fleet-push-key-0123456789";
const LOTS: [&str; 3] = ["TY0350", "TY0351", "TY0352"];

/// What an observer on the broker saw: the last message per topic, and every message on
/// the config topics in order.
#[derive(Default)]
struct Seen {
    last: HashMap<String, Value>,
    log: Vec<(String, Vec<u8>)>,
}

struct Observer {
    client: AsyncClient,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Observer {
    async fn connect(port: u16) -> Observer {
        let mut o = MqttOptions::new(format!("observer-{}", free_port()), "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, el) = AsyncClient::new(o, 32);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (sub, into) = (client.clone(), seen.clone());
        let task = tokio::spawn(common::devices::drive_mqtt(el, move |event| match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                for t in [
                    "lotlink/+/status",
                    "lotlink/+/config/set",
                    "lotlink/+/config/result",
                ] {
                    let _ = sub.try_subscribe(t, QoS::AtLeastOnce);
                }
            }
            Event::Incoming(Packet::Publish(p)) => {
                let mut s = into.lock().expect("seen");
                if let Ok(v) = serde_json::from_slice::<Value>(&p.payload) {
                    s.last.insert(p.topic.clone(), v);
                }
                s.log.push((p.topic.clone(), p.payload.to_vec()));
            }
            _ => {}
        }));
        Observer { client, seen, task }
    }

    fn last(&self, topic: &str) -> Value {
        self.seen
            .lock()
            .expect("seen")
            .last
            .get(topic)
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// Every message seen on `topic`, in order.
    fn all(&self, topic: &str) -> Vec<Vec<u8>> {
        self.seen
            .lock()
            .expect("seen")
            .log
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, p)| p.clone())
            .collect()
    }

    async fn wait_status(&self, lot: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let topic = format!("lotlink/{lot}/status");
        assert!(
            eventually_async(WAIT, || async { ok(&self.last(&topic)) }).await,
            "{what}: {}",
            self.last(&topic)
        );
        self.last(&topic)
    }
}

/// A platform for many lots: `/{lot}/…` goes to that lot's simulator (each knows one lot).
async fn lot_router(sims: &HashMap<String, PlatformSim>) -> String {
    use http_body_util::BodyExt;
    let routes: Arc<HashMap<String, String>> =
        Arc::new(sims.iter().map(|(l, s)| (l.clone(), s.url())).collect());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let http = reqwest::Client::new();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (routes, http) = (routes.clone(), http.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (routes, http) = (routes.clone(), http.clone());
                        async move {
                            let path = req.uri().path().trim_start_matches('/').to_string();
                            let (lot, rest) = path.split_once('/').unwrap_or((&path, ""));
                            let content_type = req
                                .headers()
                                .get("content-type")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("application/json")
                                .to_string();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let (status, bytes) = match routes.get(lot) {
                                Some(base) => match http
                                    .post(format!("{base}/{rest}"))
                                    .header("content-type", content_type)
                                    .body(body)
                                    .send()
                                    .await
                                {
                                    Ok(r) => {
                                        (r.status().as_u16(), r.bytes().await.unwrap_or_default())
                                    }
                                    Err(_) => (502, bytes::Bytes::new()),
                                },
                                None => (404, bytes::Bytes::new()),
                            };
                            hyper::Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(http_body_util::Full::new(bytes))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

/// The config every gateway of the fleet runs, `{lot_code}` left for `lotlink push` (and
/// for the local files, filled in here): the token and the push key are file references, so
/// the file may cross a plain-text broker.
fn fleet_config(router: &str, dir: &Path, broker: &Broker, total: u32) -> String {
    format!(
        "[platform]\nurl = \"{router}/{{lot_code}}\"\nlot_code = \"{{lot_code}}\"\ntoken_file = \"{d}/token\"\nheartbeat_interval = \"1s\"\nrequest_timeout = \"2s\"\n\n[outbox]\npath = \"{d}/{{lot_code}}/outbox\"\n\n[status]\nlisten = \"127.0.0.1:0\"\n\n[space]\ntotal = {total}\n\n[mqtt]\nurl = \"{}\"\n\n[management]\nhmac_key_file = \"{d}/push.key\"\nwatch = \"3s\"\n",
        broker.url(),
        d = dir.display()
    )
}

/// Run `lotlink ARGS…`: (exit code, stdout, stderr).
async fn lotlink(args: Vec<String>) -> (i32, String, String) {
    let out = tokio::task::spawn_blocking(move || {
        common::lotlink_command()
            .args(&args)
            .output()
            .expect("lotlink runs")
    })
    .await
    .expect("join");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_string()).collect()
}

fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_pushes_to_three_gateways_lists_the_fleet_and_a_push_replayed_onto_another_lot_is_refused(
) {
    let broker = Broker::start().await;
    let mut sims = HashMap::new();
    for lot in LOTS {
        let sim = PlatformSim::start(SimConfig::new(lot, TOKEN))
            .await
            .expect("simulator");
        sims.insert(lot.to_string(), sim);
    }
    let router = lot_router(&sims).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).expect("token");
    let key_file = dir.path().join("push.key");
    std::fs::write(&key_file, format!("{KEY}\n")).expect("key");
    let obs = Observer::connect(broker.port).await;

    // Three gateways, each on its local file (`total = 100`).
    let mut daemons: HashMap<&str, Daemon> = HashMap::new();
    let mut locals: HashMap<&str, (PathBuf, String)> = HashMap::new();
    for lot in LOTS {
        let gw = dir.path().join(lot);
        std::fs::create_dir_all(&gw).expect("dir");
        let local = gw.join("lotlink.toml");
        let text = fleet_config(&router, dir.path(), &broker, 100).replace("{lot_code}", lot);
        std::fs::write(&local, &text).expect("config");
        std::fs::set_permissions(&local, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        daemons.insert(lot, Daemon::start(&local, &gw.join("daemon.log")));
        locals.insert(lot, (local, text));
    }
    let log_of = |lot: &str| {
        std::fs::read_to_string(dir.path().join(lot).join("daemon.log")).unwrap_or_default()
    };
    for lot in LOTS {
        obs.wait_status(lot, "online", |s| s["online"] == true)
            .await;
        let sim = &sims[lot];
        assert!(
            eventually_async(WAIT, || async { sim.stats().heartbeats_ok > 0 }).await,
            "{lot} reaches its platform through the router:\n{}",
            log_of(lot)
        );
    }

    // 1. One file, three lots (two by --lot, one from --lots-file): each outcome on its line.
    let new = dir.path().join("new.toml");
    std::fs::write(&new, fleet_config(&router, dir.path(), &broker, 200)).expect("new");
    let lots_file = dir.path().join("lots.txt");
    std::fs::write(&lots_file, "# the third lot\nTY0352\n").expect("lots");
    let broker_url = broker.url();
    let (code, out, err) = lotlink(args(&[
        "push",
        "--broker",
        &broker_url,
        "--lot",
        "TY0350",
        "--lot",
        "TY0351",
        "--lots-file",
        &path_arg(&lots_file),
        "--key-file",
        &path_arg(&key_file),
        "--timeout",
        "60s",
        &path_arg(&new),
    ]))
    .await;
    eprintln!("$ lotlink push … --lot TY0350 --lot TY0351 --lots-file lots.txt new.toml\n{out}{err}(exit {code})");
    assert_eq!(
        code,
        0,
        "stdout:\n{out}\nstderr:\n{err}\nlog:\n{}",
        log_of("TY0350")
    );
    for lot in LOTS {
        let line = out
            .lines()
            .find(|l| l.starts_with(lot))
            .unwrap_or_else(|| panic!("a line for {lot}:\n{out}"));
        assert!(line.contains("applied") && line.contains("v1"), "{line}");
        let (local, text) = &locals[lot];
        let pushed = std::fs::read_to_string(pushed_path(local)).expect("pushed file");
        assert!(
            pushed.contains("total = 200") && pushed.contains(&format!("lot_code = \"{lot}\"")),
            "{pushed}"
        );
        assert_eq!(
            &std::fs::read_to_string(local).expect("local"),
            text,
            "the local file (a dpkg conffile) is never written"
        );
    }
    for lot in LOTS {
        let s = obs
            .wait_status(lot, "the new version in the retained status", |s| {
                s["config_version"] == 1
            })
            .await;
        assert!(
            s["config_file"]
                .as_str()
                .is_some_and(|f| f.ends_with("lotlink.pushed.toml")),
            "the status says the pushed file is in effect: {s}"
        );
    }

    // 2. One gateway stops; `fleet` lists all three, that one offline, and exits 1.
    daemons.remove("TY0352").expect("daemon").stop();
    obs.wait_status("TY0352", "offline after its stop", |s| s["online"] == false)
        .await;
    let (code, out, err) = lotlink(args(&["fleet", "--broker", &broker_url, "--json"])).await;
    assert_eq!(code, 1, "one offline: exit 1\n{out}\n{err}");
    let rows: Vec<Value> = serde_json::from_str(&out).expect("a JSON array");
    assert_eq!(rows.len(), 3, "{out}");
    for r in &rows {
        let offline = r["lot"] == "TY0352";
        assert_eq!(r["online"], !offline, "{r}");
        assert_eq!(r["config_version"], 1, "{r}");
        assert_eq!(r["outbox_pending"], 0, "{r}");
        assert!(r["last_platform_success"].is_i64(), "{r}");
        assert_eq!(r["version"], env!("CARGO_PKG_VERSION"), "{r}");
        assert!(r.get("oldest_pending_s").is_some(), "{r}");
    }
    let (code, table, _) = lotlink(args(&["fleet", "--broker", &broker_url])).await;
    eprintln!("$ lotlink fleet --broker {broker_url}\n{table}(exit {code})");
    assert_eq!(code, 1);
    let offline = table
        .lines()
        .find(|l| l.starts_with("TY0352"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(offline.contains("OFFLINE"), "{table}");
    assert!(
        table
            .lines()
            .filter(|l| l.starts_with("TY035") && l.contains("yes") && l.contains("ago"))
            .count()
            == 2,
        "{table}"
    );

    // A push to the offline gateway: no answer in time, exit 2.
    let (code, out, _) = lotlink(args(&[
        "push",
        "--broker",
        &broker_url,
        "--lot",
        "TY0352",
        "--key-file",
        &path_arg(&key_file),
        "--timeout",
        "2s",
        &path_arg(&new),
    ]))
    .await;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("TY0352") && out.contains("no answer"), "{out}");

    // 3. A push made for TY0350 (v2), captured on the broker and replayed onto TY0351,
    // whose version (1) is lower: refused, nothing changes there.
    std::fs::write(&new, fleet_config(&router, dir.path(), &broker, 250)).expect("new");
    let (code, out, _) = lotlink(args(&[
        "push",
        "--broker",
        &broker_url,
        "--lot",
        "TY0350",
        "--key-file",
        &path_arg(&key_file),
        &path_arg(&new),
    ]))
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("applied") && out.contains("v2"), "{out}");
    let captured = obs
        .all("lotlink/TY0350/config/set")
        .into_iter()
        .rfind(|p| serde_json::from_slice::<Value>(p).is_ok_and(|v| v["version"] == 2))
        .expect("the v2 push was seen on the broker");
    obs.client
        .publish(
            "lotlink/TY0351/config/set",
            QoS::AtLeastOnce,
            false,
            captured,
        )
        .await
        .expect("replay");
    assert!(
        eventually_async(WAIT, || async {
            obs.last("lotlink/TY0351/config/result")["version"] == 2
        })
        .await,
        "an answer to the replay"
    );
    let r = obs.last("lotlink/TY0351/config/result");
    eprintln!("the TY0350 push replayed onto lotlink/TY0351/config/set: {r}");
    assert_eq!(r["outcome"], "rejected", "{r}");
    assert!(r["reason"].as_str().unwrap_or("").contains("hmac"), "{r}");
    let b = std::fs::read_to_string(pushed_path(&locals["TY0351"].0)).expect("pushed");
    assert!(b.contains("total = 200") && b.contains("TY0351"), "{b}");

    // 4. Secrets do not cross the plain-text broker: an inline token is refused.
    let inline = fleet_config(&router, dir.path(), &broker, 300).replace(
        &format!("token_file = \"{}/token\"", dir.path().display()),
        &format!("token = \"{TOKEN}\""),
    );
    std::fs::write(&new, inline).expect("new");
    let (code, out, _) = lotlink(args(&[
        "push",
        "--broker",
        &broker_url,
        "--lot",
        "TY0351",
        "--key-file",
        &path_arg(&key_file),
        &path_arg(&new),
    ]))
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("rejected") && out.contains("platform.token") && out.contains("plain"),
        "{out}"
    );
    assert!(!out.contains(TOKEN), "the token is not echoed: {out}");

    // 5. Back to the local file: `--revert`; the pushed file is gone.
    let (code, out, _) = lotlink(args(&[
        "push",
        "--broker",
        &broker_url,
        "--lot",
        "TY0350",
        "--key-file",
        &path_arg(&key_file),
        "--revert",
    ]))
    .await;
    assert_eq!(code, 0, "{out}\n{}", log_of("TY0350"));
    assert!(out.contains("applied") && out.contains("v3"), "{out}");
    assert!(!pushed_path(&locals["TY0350"].0).exists());
    let s = obs
        .wait_status("TY0350", "the local file in effect", |s| {
            s["config_version"] == 3
        })
        .await;
    assert!(
        s["config_file"]
            .as_str()
            .is_some_and(|f| f.ends_with("TY0350/lotlink.toml")),
        "{s}"
    );
    for (_, sim) in sims {
        sim.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_without_a_push_key_publishes_its_status_but_refuses_pushes_saying_why() {
    let broker = Broker::start().await;
    let sim = common::sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let local = dir.path().join("lotlink.toml");
    let text = |total: u32| {
        common::config_text(&sim.url(), &dir.path().join("outbox"), "")
            .replace("total = 100", &format!("total = {total}"))
            + &format!("\n[mqtt]\nurl = \"{}\"\n", broker.url())
    };
    std::fs::write(&local, text(100)).expect("config");
    let obs = Observer::connect(broker.port).await;
    let _daemon = Daemon::start(&local, &dir.path().join("daemon.log"));
    let lot = common::LOT;
    obs.wait_status(lot, "the status is published", |s| s["online"] == true)
        .await;
    let key_file = dir.path().join("push.key");
    std::fs::write(&key_file, KEY).expect("key");
    let broker_url = broker.url();

    // An invalid file is refused before anything is published (exit 1, every problem).
    let new = dir.path().join("new.toml");
    std::fs::write(&new, text(120).replace("total = 120", "total = -5")).expect("new");
    let push = |file: &Path| {
        args(&[
            "push",
            "--broker",
            &broker_url,
            "--lot",
            lot,
            "--key-file",
            &path_arg(&key_file),
            "--timeout",
            "30s",
            &path_arg(file),
        ])
    };
    let (code, out, err) = lotlink(push(&new)).await;
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("space.total") && err.contains("nothing was pushed"),
        "{err}"
    );

    // A valid one reaches the gateway, which refuses it for want of a key.
    std::fs::write(&new, text(120)).expect("new");
    let (code, out, err) = lotlink(push(&new)).await;
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        out.contains("rejected") && out.contains("no push key") && out.contains("hmac_key_file"),
        "{out}"
    );
    let sent = obs.all(&format!("lotlink/{lot}/config/set"));
    assert_eq!(sent.len(), 1, "only the valid file was published");
    assert!(
        String::from_utf8_lossy(&sent[0]).contains("total = 120"),
        "the first push published is the valid one"
    );
    assert!(!pushed_path(&local).exists());
    sim.shutdown().await;
}
