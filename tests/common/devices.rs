//! Real peers for the device tests: an MQTT broker on 127.0.0.1 (mosquitto when installed,
//! else rumqttd in process; `LOTLINK_REQUIRE_REAL=1` makes a missing mosquitto a failure),
//! and pseudo-terminal "serial cables" that can be unplugged and plugged back.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// `LOTLINK_REQUIRE_REAL=1`: tools the tests need must be present (CI sets it).
pub fn require_real() -> bool {
    std::env::var("LOTLINK_REQUIRE_REAL").is_ok_and(|v| v == "1")
}

/// Say that `test` is skipped and why: on stderr, and as a line in the file named by
/// `LOTLINK_TEST_SKIPS` (scripts/cross-test prints that file in its summary, since cargo
/// hides a passing test's output).
pub fn skip(test: &str, why: &str) {
    eprintln!("skipped {test}: {why}");
    if let Some(file) = std::env::var_os("LOTLINK_TEST_SKIPS") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
        {
            // One write of the whole line: tests running at once append to the same file,
            // and `writeln!` writes piece by piece (seen as two reasons run together).
            let _ = f.write_all(format!("{test}: {why}\n").as_bytes());
        }
    }
}

/// Whether serial ports can be configured here; if not, `test` is skipped (see [`skip`]) and
/// the caller returns. qemu-user 7.2 (Debian 12) does not emulate the termios2 ioctls
/// (TCGETS2/TCSETS2) that serialport sets the baud rate with, so under it opening any port
/// fails with ENOSYS. A real kernel has them: anywhere else this is true.
pub fn serial_ports_work(test: &str) -> bool {
    static PROBE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let missing = PROBE.get_or_init(|| {
        // Opening the pty multiplexer as a serial port: a new pty master, closed at once.
        match tokio_serial::new("/dev/ptmx", 9600).open() {
            Err(e) if e.to_string().contains("Function not implemented") => Some(e.to_string()),
            _ => None,
        }
    });
    match missing {
        None => true,
        Some(e) => {
            skip(
                test,
                &format!("serial ports cannot be configured under this emulator ({e}: no termios2 ioctls)"),
            );
            false
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released for the peer to take).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()])
        .map(|d: PathBuf| d.join(name))
        .find(|p| p.is_file())
}

/// Which broker is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    Mosquitto,
    Rumqttd,
}

/// An MQTT broker on 127.0.0.1.
pub struct Broker {
    pub port: u16,
    pub kind: BrokerKind,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Broker {
    /// Start mosquitto if installed, else rumqttd in process (unless real tools are required).
    pub async fn start() -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        // LOTLINK_TEST_BROKER=rumqttd exercises the in-process fallback on a machine with mosquitto.
        let forced_rumqttd = std::env::var("LOTLINK_TEST_BROKER").is_ok_and(|v| v == "rumqttd");
        let mosquitto = find_tool("mosquitto").filter(|_| !forced_rumqttd);
        let mut b = if let Some(bin) = mosquitto {
            let conf = dir.path().join("mosquitto.conf");
            // Persistence on, as a site broker should run: sessions and queued messages
            // survive a restart. `user root` keeps mosquitto (started as root in CI) from
            // dropping to a user that cannot write the test's private directory; as any
            // other user it has no effect.
            std::fs::write(
                &conf,
                format!(
                    "listener {port} 127.0.0.1\nallow_anonymous true\nuser root\npersistence true\npersistence_location {}/\nmax_inflight_messages 20\nmax_queued_messages 100000\n",
                    dir.path().display()
                ),
            )
            .expect("write mosquitto.conf");
            let child = spawn_mosquitto(&bin, &conf);
            Broker {
                port,
                kind: BrokerKind::Mosquitto,
                child: Some(child),
                dir,
            }
        } else {
            assert!(
                forced_rumqttd || !require_real(),
                "LOTLINK_REQUIRE_REAL=1 but mosquitto is not installed (apt-get install mosquitto)"
            );
            eprintln!("mosquitto not installed: using rumqttd in process");
            start_rumqttd(port);
            Broker {
                port,
                kind: BrokerKind::Rumqttd,
                child: None,
                dir,
            }
        };
        b.wait_listening().await;
        b
    }

    async fn wait_listening(&mut self) {
        let port = self.port;
        let ok = super::eventually_async(Duration::from_secs(10), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        assert!(ok, "broker did not start listening on {port}");
    }

    /// Restart the broker as an operator would (`systemctl restart mosquitto`): SIGTERM, which
    /// makes mosquitto write its persistence file (sessions, subscriptions, queued messages),
    /// then start it again on the same port. `false` for rumqttd in process, which cannot be
    /// restarted.
    pub async fn restart(&mut self) -> bool {
        let Some(child) = &mut self.child else {
            return false;
        };
        let term = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(term, "SIGTERM to mosquitto");
        let _ = child.wait();
        let bin = find_tool("mosquitto").expect("mosquitto");
        self.child = Some(spawn_mosquitto(
            &bin,
            &self.dir.path().join("mosquitto.conf"),
        ));
        self.wait_listening().await;
        true
    }

    /// The broker's process id (mosquitto; `None` for rumqttd in process).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `mqtt://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The broker's scratch directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_mosquitto(bin: &Path, conf: &Path) -> Child {
    Command::new(bin)
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto starts")
}

fn start_rumqttd(port: u16) {
    use std::collections::HashMap;
    let server = rumqttd::ServerSettings {
        name: "v4".into(),
        listen: ([127, 0, 0, 1], port).into(),
        tls: None,
        next_connection_delay_ms: 1,
        connections: rumqttd::ConnectionSettings {
            connection_timeout_ms: 5000,
            max_payload_size: 4 << 20,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 100,
            max_outgoing_packet_count: 200,
            max_segment_size: 16 << 20,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: rumqttd::Strategy::default(),
        },
        v4: Some(HashMap::from([("v4".to_string(), server)])),
        ..rumqttd::Config::default()
    };
    std::thread::spawn(move || {
        let mut broker = rumqttd::Broker::new(config);
        let _ = broker.start();
    });
}

/// Poll a test-side MQTT client's event loop for the life of the task, handing every event
/// to `on_event`. After a connection error the next poll reconnects; those retries are paced
/// at 50 ms so a broker that went away is not hammered.
pub async fn drive_mqtt(mut el: rumqttc::EventLoop, mut on_event: impl FnMut(rumqttc::Event)) {
    let mut pace = tokio::time::interval(Duration::from_millis(50));
    loop {
        match el.poll().await {
            Ok(event) => on_event(event),
            Err(_) => {
                pace.tick().await;
            }
        }
    }
}

/// A test-side MQTT publisher (QoS 1, large packets allowed) that counts the broker's
/// acknowledgements (PUBACK).
pub struct Publisher {
    pub client: rumqttc::AsyncClient,
    acked: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    pub async fn connect(port: u16, id: &str) -> Publisher {
        let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
        // A persistent session, as a camera that keeps unacknowledged events would use:
        // rumqttc resends them after a reconnect only when the broker kept the session.
        o.set_clean_session(false)
            .set_max_packet_size(8 << 20, 8 << 20)
            .set_keep_alive(Duration::from_secs(30));
        let (client, el) = rumqttc::AsyncClient::new(o, 1000);
        let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = acked.clone();
        let task = tokio::spawn(drive_mqtt(el, move |event| {
            if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) = event {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }));
        Publisher {
            client,
            acked,
            task,
        }
    }

    /// Publishes the broker has acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.into())
            .await
            .expect("publish queued");
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A serial cable made of a pseudo-terminal pair: the gateway opens `path` (a symlink to the
/// pty's device), the test writes to the other end. Unplug drops our end (the device
/// vanishes); plug makes a new pair and points the symlink at it.
pub struct PtyCable {
    pub path: PathBuf,
    pub end: Option<tokio_serial::SerialStream>,
}

impl PtyCable {
    pub fn new(dir: &Path, name: &str) -> PtyCable {
        let mut c = PtyCable {
            path: dir.join(name),
            end: None,
        };
        c.plug();
        c
    }

    /// Connect a fresh pty pair behind `path`.
    pub fn plug(&mut self) {
        use tokio_serial::SerialPort;
        let (ours, theirs) = tokio_serial::SerialStream::pair().expect("pty pair");
        // Tests start the gateway as a child process: it must not inherit our end of the
        // cable, or closing it (unplug) would not hang up the gateway's side.
        {
            use std::os::fd::AsRawFd;
            let fd = ours.as_raw_fd();
            // SAFETY: fcntl on a descriptor we own, changing only its close-on-exec flag.
            let ok = unsafe {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                flags >= 0 && libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) == 0
            };
            assert!(ok, "close-on-exec on the pty master");
        }
        let dev = theirs.name().expect("pty device name");
        // The driver opens the device by path; our handle on it must go.
        drop(theirs);
        let _ = std::fs::remove_file(&self.path);
        std::os::unix::fs::symlink(&dev, &self.path).expect("symlink to the pty");
        self.end = Some(ours);
    }

    /// Pull the cable: the device disappears.
    pub fn unplug(&mut self) {
        self.end = None;
        let _ = std::fs::remove_file(&self.path);
    }

    /// Write bytes to the device side.
    pub async fn write(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let end = self.end.as_mut().expect("cable plugged");
        end.write_all(bytes).await.expect("write to pty");
        end.flush().await.expect("flush pty");
    }
}
