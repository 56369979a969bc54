//! Crash safety: a child process submitting events is killed with SIGKILL at random moments.
//! After every kill, every event whose `submit` had returned is still in the outbox, and no
//! event is stored twice; at the end everything is delivered to the platform exactly once.
//!
//! The child is this same test binary, re-run with `LOTLINK_CRASH_CHILD` set, so the test
//! needs nothing but itself.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lotlink::testing::outbox::{Outbox, OutboxOptions, Submitted};
use rand::Rng;

const ROUNDS: usize = 24;
const SUBMITTERS: u64 = 8;

/// The child: submit events from `start` on, with 8 concurrent submitters, printing
/// `ACK n` after each submit returned. Re-submits the previous round's last keys first,
/// as an MQTT broker would re-deliver them.
fn child_main(dir: &str, start: u64) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let (ob, _) = Outbox::open(Path::new(dir), OutboxOptions::default()).expect("open");
        let image = Arc::new(common::small_jpeg(1));
        let next = Arc::new(AtomicU64::new(start.saturating_sub(10).max(1)));
        let mut tasks = Vec::new();
        for _ in 0..SUBMITTERS {
            let (ob, image, next) = (ob.clone(), image.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    let r = ob
                        .submit(common::new_record(n, &image))
                        .await
                        .expect("submit");
                    let line = match r {
                        Submitted::Stored(_) => format!("ACK {n}\n"),
                        Submitted::Duplicate => format!("DUP {n}\n"),
                    };
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(line.as_bytes());
                    let _ = out.flush();
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

#[test]
fn crash_child_entry() {
    // Only does something when re-run by the crash test below.
    if let (Ok(dir), Ok(start)) = (
        std::env::var("LOTLINK_CRASH_DIR"),
        std::env::var("LOTLINK_CRASH_START"),
    ) {
        child_main(&dir, start.parse().expect("start"));
    }
}

/// `ACK n` or `DUP n`: the child's acknowledgement of event n.
fn parse_ack(line: &str) -> Option<u64> {
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some("ACK" | "DUP"), Some(n)) => n.parse().ok(),
        _ => None,
    }
}

fn open_with_retry(path: &Path) -> Outbox {
    Outbox::open(path, OutboxOptions::default())
        .expect("reopen after crash")
        .0
}

#[test]
fn events_acknowledged_before_a_sigkill_survive_it_and_are_delivered_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("outbox");
    let exe = std::env::current_exe().unwrap();
    let mut acked: HashSet<u64> = HashSet::new();
    let mut next_start = 1u64;
    let mut rng = rand::thread_rng();
    for round in 0..ROUNDS {
        let kill_after: usize = if round % 6 == 0 {
            0
        } else {
            rng.gen_range(1..300)
        };
        let mut child = common::target_command(&exe)
            .args([
                "--exact",
                "crash::crash_child_entry",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("LOTLINK_CRASH_DIR", &store)
            .env("LOTLINK_CRASH_START", next_start.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().unwrap();
        let mut seen = 0usize;
        let mut max_n = next_start;
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        while seen < kill_after {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            if let Some(n) = parse_ack(&line) {
                acked.insert(n);
                max_n = max_n.max(n);
                seen += 1;
            }
        }
        child.kill().expect("SIGKILL");
        // Lines the child wrote before it died are acknowledgements too.
        let _ = child.wait();
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut reader, &mut rest);
        for n in rest.lines().filter_map(parse_ack) {
            acked.insert(n);
            max_n = max_n.max(n);
        }
        next_start = max_n + 1;
        eprintln!(
            "round {round}: killed after {seen} lines, {} acknowledged so far",
            acked.len()
        );

        // After each kill: every acknowledged event is there, none twice.
        let ob = open_with_retry(&store);
        let all = ob.peek(usize::MAX, u64::MAX).unwrap();
        assert_eq!(
            all.len() as u64,
            ob.len(),
            "round {round}: counter matches the records"
        );
        let mut count: HashMap<String, u32> = HashMap::new();
        for r in &all {
            *count.entry(r.meta.car_no.clone().unwrap()).or_default() += 1;
        }
        for n in &acked {
            assert_eq!(
                count.get(&format!("K{n}")).copied(),
                Some(1),
                "round {round}: K{n} acknowledged but not stored exactly once"
            );
        }
        assert!(
            count.values().all(|c| *c == 1),
            "round {round}: a key stored twice"
        );
        drop(all);
        drop(ob);
    }
    assert!(
        acked.len() > 100,
        "the rounds acknowledged enough events: {}",
        acked.len()
    );

    // Deliver what survived: every acknowledged event reaches the platform exactly once.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let sim = common::sim().await;
        let text = common::config_text(&sim.url(), &store, "");
        let cfg = lotlink::testing::config::from_str(Path::new("t.toml"), &text).unwrap();
        let gw = lotlink::testing::app::Gateway::start(&cfg, vec![], common::fast_options())
            .await
            .unwrap();
        assert!(common::eventually(Duration::from_secs(60), || gw.outbox.is_empty()).await);
        let plates = common::delivered_plates(&sim);
        let unique: HashSet<&String> = plates.iter().collect();
        assert_eq!(unique.len(), plates.len(), "no event delivered twice");
        for n in &acked {
            assert!(
                unique.contains(&format!("K{n}")),
                "K{n} acknowledged but never delivered"
            );
        }
        gw.stop().await;
    });
}
