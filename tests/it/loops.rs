//! Loop detectors through the whole gateway: a simulated Modbus DI module (a tokio-modbus RTU
//! server on a real pseudo-terminal), a counter module over Modbus TCP, and pymodbus as an
//! independent Modbus peer. Passes move the occupied count, the platform gets the free count,
//! and a restart neither forgets nor double-counts.

use crate::common;

use std::time::Duration;

use common::devices::free_port;
use common::modbus::Module;
use common::{eventually, eventually_async, start_devices_in, DeviceHarness};

const WAIT: Duration = Duration::from_secs(20);

/// Start the gateway, retrying while sled still holds the previous run's lock.
async fn start_in(
    sim: lotlink_sim::PlatformSim,
    dir: tempfile::TempDir,
    devices: &str,
) -> DeviceHarness {
    start_devices_in(sim, dir, "source = \"loops\"", devices).await
}

async fn free_count(h: &DeviceHarness, free: u64) -> bool {
    eventually(WAIT, || {
        h.sim.space_reports().last().is_some_and(|r| r.1 == free)
    })
    .await
}

async fn pulse(m: &Module, input: usize) {
    m.set_input(input, true);
    m.seen(2).await;
    m.set_input(input, false);
    m.seen(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_and_exit_loops_on_one_rtu_module_move_the_free_count_and_survive_a_restart() {
    if !common::devices::serial_ports_work(
        "entry_and_exit_loops_on_one_rtu_module_move_the_free_count_and_survive_a_restart",
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("ttyDI");
    let (ours, theirs) = tokio_serial::SerialStream::pair().expect("pty pair");
    let dev = tokio_serial::SerialPort::name(&theirs).expect("pty name");
    // Keep the device side open (never read): with no slave open, reads on the master
    // side fail with EIO and the simulated module would stop.
    let _device_side = theirs;
    std::os::unix::fs::symlink(&dev, &link).expect("symlink");
    let module = Module::new(1);
    let server =
        tokio::spawn(tokio_modbus::server::rtu::Server::new(ours).serve_forever(module.clone()));

    let devices = format!(
        r#"
[[loop]]
name = "入口地感"
lane = "in"
driver = "modbus"
port = "{p}"
slave = 1
address = 0x20
active_low = true
poll_interval = "10ms"
min_hold = "0s"

[[loop]]
name = "出口地感"
lane = "out"
driver = "modbus"
port = "{p}"
slave = 1
address = 0x21
active_low = true
poll_interval = "10ms"
min_hold = "0s"
"#,
        p = link.display()
    );
    let sim = common::sim().await;
    let h = start_in(sim, dir, &devices).await;
    assert!(free_count(&h, 100).await, "initial report: all 100 free");
    assert!(
        eventually(WAIT, || module.served() > 0).await,
        "the bus polls the module: {:?}",
        h.statuses
            .iter()
            .map(lotlink::drivers::DriverStatus::snapshot)
            .collect::<Vec<_>>()
    );
    module.seen(2).await;
    for _ in 0..10 {
        pulse(&module, 0).await;
    }
    for _ in 0..4 {
        pulse(&module, 1).await;
    }
    assert!(
        free_count(&h, 94).await,
        "10 in, 4 out: {:?}",
        h.sim.space_reports().last()
    );
    assert_eq!(h.gw.space.figures(), (100, 6, 94));

    // Restart on the same store: the count is remembered, nothing is counted again.
    let DeviceHarness { sim, dir, gw, .. } = h;
    gw.stop().await;
    let h = restart(sim, dir, &devices).await;
    module.seen(4).await;
    assert_eq!(h.gw.space.figures(), (100, 6, 94));
    pulse(&module, 0).await;
    assert!(eventually(WAIT, || h.gw.space.figures() == (100, 7, 93)).await);
    h.gw.stop().await;
    server.abort();
}

/// Start again on the same directory; sled frees its lock from a background thread, so
/// the first attempts right after a stop may find it still held.
async fn restart(
    sim: lotlink_sim::PlatformSim,
    dir: tempfile::TempDir,
    devices: &str,
) -> DeviceHarness {
    let text = common::device_config_text(
        &sim.url(),
        &dir.path().join("outbox"),
        "source = \"loops\"",
        devices,
    );
    let cfg = lotlink::testing::config::from_str(std::path::Path::new("test.toml"), &text)
        .expect("config");
    let deadline = std::time::Instant::now() + WAIT;
    let mut retry = tokio::time::interval(Duration::from_millis(20));
    loop {
        let hw = lotlink::testing::hardware::build(&cfg).expect("drivers");
        match lotlink::testing::app::Gateway::start(&cfg, hw.drivers, common::fast_options()).await
        {
            Ok(gw) => {
                return DeviceHarness {
                    sim,
                    dir,
                    gw,
                    statuses: hw.statuses,
                    http: hw.http,
                }
            }
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("restart: {e}; retrying");
                retry.tick().await;
            }
            Err(e) => panic!("restart failed: {e}"),
        }
    }
}

fn counter_loop(host: &str) -> String {
    format!(
        r#"
[[loop]]
name = "计数入口"
lane = "in"
driver = "modbus"
host = "{host}"
slave = 1
register = "holding_register"
address = 0x10
mode = "counter"
counter_bits = 16
poll_interval = "10ms"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_counter_wrapping_from_65535_to_3_counts_four_and_a_restart_counts_nothing_twice() {
    let module = Module::new(1);
    module.set_holding(0x10, 65_530);
    let (addr, server) = module.serve_tcp().await;

    let devices = counter_loop(&addr.to_string());
    let dir = tempfile::tempdir().expect("tempdir");
    let h = start_in(common::sim().await, dir, &devices).await;
    assert!(eventually(WAIT, || h.gw.space.last_counter("计数入口") == Some(65_530)).await);
    assert_eq!(h.gw.space.figures().1, 0, "the first reading is a baseline");
    module.set_holding(0x10, 65_535);
    assert!(eventually(WAIT, || h.gw.space.figures().1 == 5).await);
    module.set_holding(0x10, 3);
    assert!(
        eventually(WAIT, || h.gw.space.figures().1 == 9).await,
        "65535 → 3 is 4 passes: {:?}",
        h.gw.space.figures()
    );
    assert!(free_count(&h, 91).await);

    let DeviceHarness { sim, dir, gw, .. } = h;
    gw.stop().await;
    let h = restart(sim, dir, &devices).await;
    module.seen(5).await;
    assert_eq!(
        h.gw.space.figures().1,
        9,
        "the remembered reading is not counted again"
    );
    module.set_holding(0x10, 5);
    assert!(eventually(WAIT, || h.gw.space.figures().1 == 11).await);
    h.gw.stop().await;
    server.abort();
}

/// The pymodbus server, for both API generations of pymodbus 3: up to 3.7 a
/// `ModbusSlaveContext` that takes `zero_mode`, 3.8 without `zero_mode`, later releases the
/// same class renamed `ModbusDeviceContext` (and `ModbusServerContext(devices=…)`, so the
/// store is passed by position), and a block may no longer start at address 0 (3.16: "0 <=
/// address"), so it starts at 1. Tested with Debian's 3.0.0, pip's 3.8.6 and 3.16.1. Both
/// sides of the test address register 0x10 through the same server, so pymodbus's address
/// offset (zero-based or not) does not matter.
const PYMODBUS_SERVER: &str = r#"
import sys
import pymodbus
from pymodbus import datastore
from pymodbus.server import StartTcpServer
port = int(sys.argv[1])
Device = getattr(datastore, "ModbusDeviceContext", None) or datastore.ModbusSlaveContext
block = datastore.ModbusSequentialDataBlock(1, [0] * 256)
try:
    store = Device(hr=block, zero_mode=True)
except TypeError:
    store = Device(hr=block)
context = datastore.ModbusServerContext(store, single=True)
print("pymodbus", pymodbus.__version__, "serving on port", port, flush=True)
StartTcpServer(context=context, address=("127.0.0.1", port))
"#;

/// The pymodbus versions [`PYMODBUS_SERVER`] knows.
const PYMODBUS_ACCEPTED: &str = "pymodbus 3.x (tested: 3.0, 3.8, 3.16)";

/// What a Python says about its pymodbus: the version when `pymodbus.server` imports.
const PYMODBUS_PROBE: &str = "import pymodbus, pymodbus.server; print(pymodbus.__version__)";

/// A Python whose pymodbus can run [`PYMODBUS_SERVER`], and that pymodbus's version: the one
/// `LOTLINK_PYTHON` names, else `/usr/bin/python3` (Debian's python3-pymodbus), else the
/// `python3` on PATH. `pymodbus.server` imports serial_asyncio and pyserial, which Debian's
/// python3-pymodbus only recommends (a fresh CI box without them failed here, 20 s after the
/// server had died on the import), so the probe imports it. Err: what each candidate lacked.
fn python_with_pymodbus() -> Result<(String, String), String> {
    let candidates = match std::env::var("LOTLINK_PYTHON") {
        Ok(py) => vec![py],
        Err(_) => vec!["/usr/bin/python3".to_string(), "python3".to_string()],
    };
    let mut why = Vec::new();
    for py in candidates {
        match std::process::Command::new(&py)
            .args(["-c", PYMODBUS_PROBE])
            .output()
        {
            Err(e) => why.push(format!("{py}: {e}")),
            Ok(o) if !o.status.success() => {
                let err = String::from_utf8_lossy(&o.stderr);
                let last = err.lines().last().unwrap_or("no output");
                why.push(format!("{py}: cannot import pymodbus.server ({last})"));
            }
            Ok(o) => {
                let version = String::from_utf8_lossy(&o.stdout).trim().to_string();
                if version.starts_with("3.") {
                    return Ok((py, version));
                }
                why.push(format!("{py}: pymodbus {version}, not 3.x"));
            }
        }
    }
    Err(why.join("; "))
}

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymodbus_as_an_independent_peer_agrees_on_counter_wrap_around() {
    const TEST: &str = "pymodbus_as_an_independent_peer_agrees_on_counter_wrap_around";
    let (py, version) = match python_with_pymodbus() {
        Ok(found) => found,
        Err(why) => {
            common::gateway::skip_or_fail(
                TEST,
                &format!(
                    "it needs {PYMODBUS_ACCEPTED} with its server, found none ({why}); \
                     apt-get install python3-pymodbus python3-serial-asyncio, \
                     or set LOTLINK_PYTHON to a python that has it"
                ),
            );
            return;
        }
    };
    let port = free_port();
    let logs = tempfile::tempdir().expect("tempdir");
    let stderr_path = logs.path().join("pymodbus.stderr");
    let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
    let server = std::sync::Mutex::new(Kill(
        std::process::Command::new(&py)
            .args(["-c", PYMODBUS_SERVER, &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("pymodbus server starts"),
    ));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    // Our own writer: the test plays the vehicles by writing the counter register. Stop
    // waiting as soon as the server has died.
    let exited = || {
        server
            .lock()
            .expect("server lock")
            .0
            .try_wait()
            .ok()
            .flatten()
    };
    let listening = eventually_async(WAIT, || {
        let dead = exited().is_some();
        async move { dead || tokio_modbus::client::tcp::connect(addr).await.is_ok() }
    })
    .await
        && exited().is_none();
    assert!(
        listening,
        "the pymodbus server ({py}, pymodbus {version}) did not listen on {addr}: {}; \
         its stderr:\n{}\n(this test supports {PYMODBUS_ACCEPTED}; LOTLINK_PYTHON picks the python)",
        exited().map_or_else(|| format!("still running after {WAIT:?}"), |s| format!("it exited, {s}")),
        std::fs::read_to_string(&stderr_path).unwrap_or_default()
    );
    let mut ctx = tokio_modbus::client::tcp::connect(addr)
        .await
        .expect("connect");
    use tokio_modbus::client::Writer;
    ctx.write_single_register(0x10, 65_534)
        .await
        .expect("io")
        .expect("write");

    let h = start_in(
        common::sim().await,
        tempfile::tempdir().expect("tempdir"),
        &counter_loop(&addr.to_string()),
    )
    .await;
    assert!(eventually(WAIT, || h.gw.space.last_counter("计数入口") == Some(65_534)).await);
    // Baseline taken at 65534; then the counter wraps to 1: 3 passes.
    ctx.write_single_register(0x10, 65_535)
        .await
        .expect("io")
        .expect("write");
    assert!(eventually(WAIT, || h.gw.space.figures().1 == 1).await);
    ctx.write_single_register(0x10, 1)
        .await
        .expect("io")
        .expect("write");
    assert!(
        eventually(WAIT, || h.gw.space.figures().1 == 3).await,
        "{:?}",
        h.gw.space.figures()
    );
    h.gw.stop().await;
}
