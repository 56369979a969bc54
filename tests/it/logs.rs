//! What an operator's journal gets during a long outage: every lasting fault is logged when
//! it starts, summarised now and then, and never once per retry. One hour of everything
//! down (the platform, the MQTT broker, a serial port that never existed, a Modbus TCP bus)
//! on tokio's paused clock, the real gateway and drivers, the log captured and counted.

use crate::common;

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::devices::free_port;
use lotlink::testing::app::{Gateway, RunOptions};

/// The captured log, shared with the subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

fn outage_config(outbox: &Path) -> String {
    // Ports nothing listens on, on loopback: every connection is refused.
    let platform = free_port();
    let broker = free_port();
    let modbus = free_port();
    common::config_text(&format!("http://127.0.0.1:{platform}"), outbox, "")
        + &format!(
            "\n[mqtt]\nurl = \"mqtt://127.0.0.1:{broker}\"\n\
             \n[[camera]]\nname = \"入口1\"\ndirection = \"in\"\ndriver = \"mqtt\"\nformat = \"json\"\ntopic = \"lotlink/cam/entry1\"\n\
             \n[[camera]]\nname = \"出口1\"\ndirection = \"out\"\ndriver = \"serial\"\nport = \"/dev/lotlink-test-no-such-port\"\n\
             \n[[loop]]\nname = \"入口地感\"\nlane = \"in\"\ndriver = \"modbus\"\nhost = \"127.0.0.1:{modbus}\"\nslave = 1\nregister = \"discrete_input\"\naddress = 0\n"
        )
}

#[test]
fn an_hour_of_everything_down_writes_a_handful_of_lines_per_fault() {
    let log = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(log.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (during, total) = rt.block_on(async {
        let text = outage_config(&dir.path().join("outbox"));
        let cfg = lotlink::testing::config::from_str(Path::new("outage.toml"), &text)
            .expect("valid config");
        let hw = lotlink::testing::hardware::build(&cfg).expect("drivers");
        let (feed, driver) = common::feed();
        let mut drivers = hw.drivers;
        drivers.push(driver);
        let gw = Gateway::start(
            &cfg,
            drivers,
            RunOptions {
                driver_status: hw.statuses,
                ..RunOptions::default()
            },
        )
        .await
        .expect("gateway starts");
        // Something to deliver, so the records stream retries too.
        feed.send(common::plate("k1", "晋A12345", None))
            .await
            .expect("stored");
        let before = log.text().lines().count();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let during = log
            .text()
            .lines()
            .skip(before)
            .map(str::to_string)
            .collect::<Vec<_>>();
        gw.stop().await;
        (during, log.text())
    });
    let shown = || {
        format!(
            "{} lines in the hour:\n{}\n--- whole log:\n{total}",
            during.len(),
            during.join("\n")
        )
    };
    // Each fault: its start, then summaries at 5, 15 and 35 min: four lines an hour.
    for start in [
        "platform unreachable (",
        "MQTT broker 127.0.0.1:",
        "serial port /dev/lotlink-test-no-such-port",
        "modbus bus ",
    ] {
        let lines = total.lines().filter(|l| l.contains(start)).count();
        assert!(
            (1..=5).contains(&lines),
            "{start:?}: {lines} lines; {}",
            shown()
        );
    }
    assert!(
        total
            .lines()
            .any(|l| l.contains("platform still unreachable for 3") && l.contains(" attempts")),
        "the third summary says how long and how many attempts: {}",
        shown()
    );
    assert!(during.len() <= 24, "{}", shown());
    // `cargo test --test logs -- --nocapture` shows what an operator would read.
    eprintln!("{}", shown());
}
