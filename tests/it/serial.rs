//! Serial cameras and ASCII loop detectors over real pseudo-terminals: bytes written at the
//! "device" end become records at the platform simulator; pulling the cable and plugging
//! it back in is survived without a restart.

use crate::common;

use std::time::Duration;

use common::devices::PtyCable;
use common::{delivered_plates, eventually, start_devices};

const WAIT: Duration = Duration::from_secs(20);

fn gbk(s: &str) -> Vec<u8> {
    let (bytes, _, bad) = encoding_rs::GBK.encode(s);
    assert!(!bad);
    bytes.into_owned()
}

fn line_camera(port: &std::path::Path) -> String {
    format!(
        r#"
[[camera]]
name = "出口1"
direction = "out"
driver = "serial"
port = "{}"
framing = "line"
encoding = "gbk"
fields = ["direction", "plate", "color", "time"]
"#,
        port.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gbk_lines_on_a_pty_become_records_and_survive_unplugging_the_cable() {
    if !common::devices::serial_ports_work(
        "gbk_lines_on_a_pty_become_records_and_survive_unplugging_the_cable",
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cable = PtyCable::new(dir.path(), "ttyCAM");
    // A second camera whose adapter is missing: it must not hold up the first.
    let missing = format!(
        "{}\n[[camera]]\nname = \"出口2\"\ndirection = \"out\"\ndriver = \"serial\"\nport = \"{}\"\n",
        line_camera(&cable.path),
        dir.path().join("ttyGONE").display()
    );
    let h = start_devices("", &missing).await;
    assert!(
        eventually(WAIT, || h.status("出口1").connected).await,
        "driver opened the port"
    );
    assert!(
        eventually(WAIT, || h
            .status("出口2")
            .last_problem
            .is_some_and(|p| p.contains("cannot open")))
        .await,
        "the missing port is reported: {:?}",
        h.status("出口2")
    );

    // Garbage first: the driver skips it and counts it.
    cable.write(&[0xFF, 0xFE, 0x00, 0x81, b'\r', b'\n']).await;
    cable
        .write(&gbk("OUT,晋A12345,蓝,2026-11-28 08:00:00\r\n"))
        .await;
    cable
        .write(&gbk("IN,晋B54321,黄,2026-11-28 08:00:05\r\n"))
        .await;
    assert!(
        eventually(WAIT, || h.sim.records().len() >= 2).await,
        "records arrive: {:?}",
        delivered_plates(&h.sim)
    );
    let recs = h.sim.records();
    assert_eq!(recs[0]["carNo"], "晋A12345");
    assert_eq!(recs[0]["inOutType"], "out");
    assert_eq!(recs[0]["carColor"], "蓝");
    assert_eq!(recs[0]["inOutTime"], "2026-11-28 08:00:00");
    assert_eq!(recs[0]["nodeName"], "出口1");
    // The line's own direction wins over the lane's.
    assert_eq!(recs[1]["inOutType"], "in");
    // No image on a serial line: the placeholder is sent and the remark says so.
    assert!(recs[0]["remark"].as_str().unwrap_or("").contains("占位图"));
    assert!(h.status("出口1").bad_inputs >= 1, "garbage was counted");

    // Unplug: the driver notices and says so; plug back in: it reopens by itself.
    cable.unplug();
    assert!(
        eventually(WAIT, || !h.status("出口1").connected).await,
        "unplug noticed"
    );
    cable.plug();
    assert!(
        eventually(WAIT, || h.status("出口1").connected).await,
        "port reopened"
    );
    cable
        .write(&gbk("OUT,晋C11111,白,2026-11-28 08:01:00\r\n"))
        .await;
    assert!(
        eventually(WAIT, || delivered_plates(&h.sim)
            .contains(&"晋C11111".to_string()))
        .await,
        "event after replug delivered: {:?}",
        delivered_plates(&h.sim)
    );
    assert_eq!(h.sim.records().len(), 3, "nothing twice");
    h.gw.stop().await;
    h.sim.shutdown().await;
}

/// A Vzenith binary frame: `VZ`, type, sn, big-endian length, body.
fn vz_frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![b'V', b'Z', kind, 0];
    f.extend_from_slice(&u32::try_from(body.len()).expect("small").to_be_bytes());
    f.extend_from_slice(body);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vz_frames_on_a_pty_become_records_with_their_image() {
    if !common::devices::serial_ports_work("vz_frames_on_a_pty_become_records_with_their_image") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cable = PtyCable::new(dir.path(), "ttyVZ");
    let devices = format!(
        "[[camera]]\nname = \"入口1\"\ndirection = \"in\"\ndriver = \"serial\"\nport = \"{}\"\nframing = \"vz\"\nbaud = 115200\n",
        cable.path.display()
    );
    let h = start_devices("", &devices).await;
    assert!(eventually(WAIT, || h.status("入口1").connected).await);

    let jpeg = common::small_jpeg(7);
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &jpeg);
    // Older firmware: plain-text licence in GBK inside the JSON body, ending in "\n\0".
    let json = format!(
        r#"{{"AlarmInfoPlate":{{"serialno":"vz-serial-1","result":{{"PlateResult":{{"license":"晋A88888","colorType":2,"type":3,"timeStamp":{{"Timeval":{{"sec":1764288000,"usec":0}}}},"full_image_content":"{b64}"}}}}}}}}"#
    );
    let mut body = gbk(&json);
    body.extend_from_slice(b"\n\0");
    let mut bytes = b"noise before the header".to_vec();
    bytes.extend(vz_frame(1, b"")); // heartbeat
    bytes.extend(vz_frame(0, &body));
    // Written in small pieces, as a slow UART delivers it.
    for chunk in bytes.chunks(61) {
        cable.write(chunk).await;
    }
    assert!(eventually(WAIT, || !h.sim.records().is_empty()).await);
    let rec = &h.sim.records()[0];
    assert_eq!(rec["carNo"], "晋A88888");
    assert_eq!(rec["carColor"], "黄");
    assert_eq!(rec["carStyle"], "1", "plate type 3 is a large vehicle");
    // 1764288000 is 2025-11-28 00:00:00 UTC: 08:00 in Asia/Shanghai.
    assert_eq!(rec["inOutTime"], "2025-11-28 08:00:00");
    let img = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        rec["imgData"].as_str().expect("image"),
    )
    .expect("base64");
    assert_eq!(img, jpeg, "a small camera JPEG passes through untouched");
    assert!(h.status("入口1").bad_inputs >= 1, "the noise was counted");
    h.gw.stop().await;
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ascii_detector_moves_the_free_spaces() {
    if !common::devices::serial_ports_work("an_ascii_detector_moves_the_free_spaces") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cable = PtyCable::new(dir.path(), "ttyDET");
    let devices = format!(
        "[[loop]]\nname = \"入口地感\"\nlane = \"in\"\ndriver = \"serial\"\nport = \"{}\"\nchecksum = \"ignore\"\nmin_hold = \"0s\"\nchannel = 1\n\n[[loop]]\nname = \"出口地感\"\nlane = \"out\"\ndriver = \"serial\"\nport = \"{}\"\nchecksum = \"ignore\"\nmin_hold = \"0s\"\nchannel = 2\n",
        cable.path.display(),
        cable.path.display()
    );
    let h = start_devices("", &devices).await;
    let status = h.statuses[0].clone();
    assert!(eventually(WAIT, || status.connected()).await);
    // total = 100 in the test config.
    assert!(eventually(WAIT, || h.gw.space.figures() == (100, 0, 100)).await);
    for _ in 0..3 {
        cable.write(b"$001,01,01,1,9,050,010*00\r\n").await;
        cable.write(b"$001,01,01,0,9,050,010*00\r\n").await;
    }
    cable.write(b"$001,02,01,1,9,050,010*00\r\n").await;
    cable.write(b"$001,02,01,0,9,050,010*00\r\n").await;
    cable.write(b"$001,02,01,2,9,050,010*00\r\n").await; // a fault: no pass
    assert!(
        eventually(WAIT, || h.gw.space.figures() == (100, 2, 98)).await,
        "3 in, 1 out: {:?}",
        h.gw.space.figures()
    );
    assert!(
        eventually(WAIT, || h
            .sim
            .space_reports()
            .last()
            .is_some_and(|r| r.1 == 98))
        .await,
        "the platform got the new free count"
    );
    h.gw.stop().await;
    h.sim.shutdown().await;
}

/// Resident memory of this process, bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

/// A one-route HTTP server on 127.0.0.1 that answers every request with `body` as a JPEG.
async fn snapshot_server(body: Vec<u8>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: image/jpeg\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&body).await;
            });
        }
    });
    format!("http://{addr}/snapshot.jpg")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_megabyte_of_random_serial_bytes_changes_nothing_and_later_lines_get_the_snapshot() {
    // It measures this process's memory: alone, in a process of its own.
    if common::alone_in_child(
        module_path!(),
        "a_megabyte_of_random_serial_bytes_changes_nothing_and_later_lines_get_the_snapshot",
    ) {
        return;
    }
    if !common::devices::serial_ports_work(
        "a_megabyte_of_random_serial_bytes_changes_nothing_and_later_lines_get_the_snapshot",
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cable = PtyCable::new(dir.path(), "ttyNOISE");
    let jpeg = common::small_jpeg(42);
    let url = snapshot_server(jpeg.clone()).await;
    let devices = format!(
        "{}snapshot_url = \"{url}\"\nmax_line = 256\n",
        line_camera(&cable.path)
    );
    let h = start_devices("", &devices).await;
    assert!(eventually(WAIT, || h.status("出口1").connected).await);

    let before = rss();
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
    let mut noise = Vec::with_capacity(1 << 20);
    while noise.len() < 1 << 20 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        noise.extend_from_slice(&seed.to_le_bytes());
    }
    for chunk in noise.chunks(4096) {
        cable.write(chunk).await;
    }
    // End whatever line the noise left open, then a valid line.
    cable.write(b"\r\n").await;
    cable
        .write(&gbk("OUT,晋D12345,蓝,2026-11-28 09:00:00\r\n"))
        .await;
    assert!(
        eventually(Duration::from_secs(60), || delivered_plates(&h.sim)
            .contains(&"晋D12345".to_string()))
        .await,
        "a valid line after 1 MiB of noise is delivered: {:?}",
        h.status("出口1")
    );
    let st = h.status("出口1");
    assert!(st.bad_inputs > 100, "noise counted: {st:?}");
    assert!(st.connected, "the driver kept its port");
    let grown = rss().saturating_sub(before);
    assert!(grown < 64 << 20, "memory stays flat: grew {grown} bytes");
    // Every noise line that happened to parse became a record too; the valid one carries
    // the camera's snapshot.
    let rec = h
        .sim
        .records()
        .into_iter()
        .find(|r| r["carNo"] == "晋D12345")
        .expect("record");
    let img = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        rec["imgData"].as_str().expect("image"),
    )
    .expect("base64");
    assert_eq!(img, jpeg, "the snapshot is the record's image");
    assert!(rec["remark"].as_str().unwrap_or("").contains("snapshot"));
    h.gw.stop().await;
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_with_unusable_secondary_fields_is_still_a_pass_with_its_style_mapped() {
    if !common::devices::serial_ports_work(
        "a_line_with_unusable_secondary_fields_is_still_a_pass_with_its_style_mapped",
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cable = PtyCable::new(dir.path(), "ttySTYLE");
    let devices = line_camera(&cable.path).replace(
        r#"fields = ["direction", "plate", "color", "time"]"#,
        "fields = [\"direction\", \"plate\", \"color\", \"style\", \"time\"]\nstyles = { \"货车\" = \"2\" }",
    );
    let h = start_devices("", &devices).await;
    assert!(eventually(WAIT, || h.status("出口1").connected).await);

    // devices.md §3 lines (GBK) with a `style` field: an unknown direction word and an
    // English colour; then a colour-prefixed, full-width, dotted plate, an unknown style and
    // an unreadable time. Both are passes.
    cable
        .write(&gbk("UP,晋E12345,blue,货车,2026-11-28 08:00:00\r\n"))
        .await;
    cable
        .write(&gbk("IN,蓝晋Ｆ·12345,,小车,yesterday\r\n"))
        .await;
    assert!(
        eventually(WAIT, || h.sim.records().len() >= 2).await,
        "both lines are passes: {:?} {:?}",
        delivered_plates(&h.sim),
        h.status("出口1")
    );
    let recs = h.sim.records();
    let e = recs.iter().find(|r| r["carNo"] == "晋E12345").expect("E");
    assert_eq!(e["inOutType"], "out", "the lane's direction stands in");
    assert_eq!(e["carColor"], "蓝");
    assert_eq!(e["carStyle"], "2", "the camera's styles table");
    assert_eq!(e["inOutTime"], "2026-11-28 08:00:00");
    assert!(
        e["remark"].as_str().unwrap_or("").contains("方向无效"),
        "{e}"
    );
    let f = recs.iter().find(|r| r["carNo"] == "晋F12345").expect("F");
    assert_eq!(f["inOutType"], "in");
    assert_eq!(f["carColor"], "蓝", "the stripped colour word");
    assert_eq!(f["carStyle"], "0");
    let remark = f["remark"].as_str().unwrap_or("");
    assert!(
        remark.contains("车型未知") && remark.contains("时间无效"),
        "{remark}"
    );
    assert_eq!(h.status("出口1").defaulted, 3);
    h.gw.stop().await;
    h.sim.shutdown().await;
}
