//! Cameras that push over HTTP: real HTTP clients against the real camera listener on
//! 127.0.0.1 (an ephemeral port), the real pipeline behind it, and the platform simulator.
//! The bodies are written here from the documented formats (field names the vendors',
//! values invented).

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::devices::free_port;
use common::{eventually, eventually_async, Daemon, DeviceHarness};

const WAIT: Duration = Duration::from_secs(30);
const VZ_SN: &str = "33ae5105-d7732a0d";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A 1920×1080 camera picture.
fn jpeg_1080p(seed: u64) -> Vec<u8> {
    lotlink::testing::imaging::synth_jpeg(1920, 1080, seed, 90)
}

/// The full Vzenith shape: capture time, confidence, location, the scene and the crop.
fn vz_full(plate: &str, sec: i64, scene: Option<&[u8]>, crop: Option<&[u8]>) -> String {
    let mut pr = serde_json::json!({
        "license": plate, "colorType": 1, "type": 1, "confidence": 93, "triggerType": 8,
        "direction": 4, "bright": 0, "carBright": 0, "carColor": 0,
        "location": {"RECT": {"left": 812, "top": 611, "right": 968, "bottom": 660}},
        "timeStamp": {"Timeval": {"sec": sec, "usec": 250_000}},
        "timeUsed": 41,
        "imagePath": format!("%2Fmnt%2Fdb%2F{sec}_{plate}.jpg"),
    });
    if let Some(s) = scene {
        pr["imageFile"] = b64(s).into();
        pr["imageFileLen"] = s.len().into();
    }
    if let Some(c) = crop {
        pr["imageFragmentFile"] = b64(c).into();
        pr["imageFragmentFileLen"] = c.len().into();
    }
    serde_json::json!({"AlarmInfoPlate": {
        "channel": 0, "deviceName": "IVS", "ipaddr": "192.168.1.100", "serialno": VZ_SN,
        "result": {"PlateResult": pr}
    }})
    .to_string()
}

/// The short shape real cameras send: no time, no confidence, no picture.
fn vz_short(plate: &str, color: u32, kind: u32, trigger: u32, image_path: &str) -> String {
    format!(
        r#"{{"AlarmInfoPlate":{{"channel":0,"deviceName":"IVS","ipaddr":"192.168.1.100","serialno":"{VZ_SN}","result":{{"PlateResult":{{"license":"{plate}","colorType":{color},"type":{kind},"triggerType":{trigger},"direction":0,"imagePath":"{image_path}"}}}}}}}}"#
    )
}

async fn post(url: &str, content_type: &str, body: impl Into<reqwest::Body>) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("the listener answers");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

async fn listener(h: &DeviceHarness) -> SocketAddr {
    tokio::time::timeout(WAIT, h.http.as_ref().expect("an HTTP listener").wait())
        .await
        .expect("bound in time")
        .expect("bound")
}

fn record<'a>(records: &'a [Value], plate: &str) -> &'a Value {
    records
        .iter()
        .find(|r| r["carNo"] == plate)
        .unwrap_or_else(|| panic!("no record for {plate} in {records:?}"))
}

fn count(records: &[Value], plate: &str) -> usize {
    records.iter().filter(|r| r["carNo"] == plate).count()
}

/// The picture the platform received, decoded: (width, height).
fn delivered_picture(r: &Value) -> (u32, u32) {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(r["imgData"].as_str().expect("imgData"))
        .expect("Base64");
    let img = image::load_from_memory(&bytes).expect("a picture");
    (img.width(), img.height())
}

/// A 16:9 picture larger than the 96×64 crop.
fn is_scene(w: u32, h: u32) -> bool {
    w > 96 && (f64::from(w) / f64::from(h) - 16.0 / 9.0).abs() < 0.02
}

const VZ_DEVICES: &str = r#"
[http]
listen = "127.0.0.1:0"

[[camera]]
name = "入口1"
direction = "in"
driver = "http"
format = "vzenith"
path = "/push/entry1"
sn = "33ae5105-d7732a0d"

[[camera]]
name = "出口1"
direction = "out"
driver = "http"
format = "vzenith"
path = "/push/exit1"
gate = "open"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vzenith_pushes_in_both_shapes_and_gbk_reach_the_platform_once_and_heartbeats_only_prove_liveness(
) {
    let h = common::start_devices("", VZ_DEVICES).await;
    let base = format!("http://{}", listener(&h).await);
    let entry = format!("{base}/push/entry1");
    let exit = format!("{base}/push/exit1");

    // Before anything was heard the camera is not connected.
    assert!(!h.status("入口1").connected);
    let (code, body) = post(
        &entry,
        "application/json",
        format!(r#"{{"heartbeat":{{"countid":1,"timeStamp":1795824930,"serialno":"{VZ_SN}"}}}}"#),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(h.status("入口1").connected);
    assert!(h.status("入口1").last_heard_ms > 0);
    assert_eq!(h.status("入口1").events, 0);

    // The full shape with a real 1080p scene and a crop; 2026-11-28 08:15:30 in Shanghai.
    let scene = jpeg_1080p(1);
    let crop = common::small_jpeg(2);
    let full = vz_full("晋A12345", 1_795_824_930, Some(&scene), Some(&crop));
    let (code, body) = post(&entry, "application/json", full.clone()).await;
    assert_eq!(code, 200, "{body}");
    let reply: Value = serde_json::from_str(&body).expect("JSON reply");
    assert_eq!(
        reply["Response_AlarmInfoPlate"]["info"], "no",
        "lotlink does not open barriers: {body}"
    );
    // The camera did not get our answer and posts it again: still one record.
    let (code, _) = post(&entry, "application/json", full).await;
    assert_eq!(code, 200);

    // The short shape, in GBK (old firmware), declared and undeclared.
    let short = vz_short("晋B5432学", 2, 3, 1, "%2Fmnt%2Fdb%2F20261128%2F0816.jpg");
    let gbk = encoding_rs::GBK.encode(&short).0.into_owned();
    assert!(std::str::from_utf8(&gbk).is_err());
    let (code, body) = post(&entry, "application/json;charset=GBK", gbk.clone()).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = post(&entry, "application/json", gbk).await;
    assert_eq!(code, 200, "{body}");

    // Lingering is not a pass; no plate is a pass without a plate.
    let (code, _) = post(
        &entry,
        "application/json",
        vz_short("晋C11111", 1, 1, 64, "%2Fl.jpg"),
    )
    .await;
    assert_eq!(code, 200);
    let (code, _) = post(
        &exit,
        "application/json",
        vz_short("_无_", 0, 0, 1, "%2Fnoplate.jpg"),
    )
    .await;
    assert_eq!(code, 200);
    // The exit camera is configured with gate = "open".
    let (code, body) = post(
        &exit,
        "application/json",
        vz_short("晋D22222", 1, 1, 1, "%2Fd.jpg"),
    )
    .await;
    assert_eq!(code, 200);
    let reply: Value = serde_json::from_str(&body).expect("JSON reply");
    assert_eq!(reply["Response_AlarmInfoPlate"]["info"], "ok");

    // Another camera posting to this camera's path (its sn differs) is refused.
    let (code, _) = post(
        &entry,
        "application/json",
        vz_full("晋E33333", 1_795_824_931, None, None).replace(VZ_SN, "ffff0000-11112222"),
    )
    .await;
    assert_eq!(code, 403);

    assert!(
        eventually(WAIT, || h.sim.records().len() >= 4).await,
        "records: {:?}",
        h.sim.records()
    );
    let records = h.sim.records();
    assert_eq!(records.len(), 4, "{records:?}");
    let a = record(&records, "晋A12345");
    assert_eq!(a["inOutType"], "in");
    assert_eq!(a["nodeName"], "入口1");
    assert_eq!(a["inOutTime"], "2026-11-28 08:15:30");
    assert_eq!(a["carColor"], "蓝");
    assert_eq!(a["carStyle"], "0");
    let (w, hgt) = delivered_picture(a);
    assert!(is_scene(w, hgt), "the scene, not the crop: {w}x{hgt}");
    assert!(
        !a["remark"].as_str().unwrap_or("").contains("placeholder"),
        "{a}"
    );
    let b = record(&records, "晋B5432学");
    assert_eq!(
        (b["carColor"].as_str(), b["carStyle"].as_str()),
        (Some("黄"), Some("1"))
    );
    assert!(
        b["remark"].as_str().unwrap_or("").contains("placeholder"),
        "no picture came: {b}"
    );
    assert_eq!(count(&records, "晋C11111"), 0, "lingering is not a pass");
    assert_eq!(
        records
            .iter()
            .filter(|r| r["nodeName"] == "出口1" && r["inOutType"] == "out")
            .count(),
        2
    );
    let s = h.status("入口1");
    assert_eq!(s.kind, "http-camera");
    assert_eq!(s.bad_inputs, 1, "the foreign sn: {s:?}");
    assert!(s
        .last_problem
        .unwrap_or_default()
        .contains("another camera"));
    h.gw.stop().await;
}

/// A Hikvision ANPR alert (values invented; element names as ISAPI's).
fn hik_xml(plate: &str, uuid: &str, retransmission: bool, extra_anpr: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<EventNotificationAlert version="2.0" xmlns="http://www.isapi.org/ver20/XMLSchema">
<ipAddress>192.168.1.65</ipAddress>
<portNo>80</portNo>
<protocol>HTTP</protocol>
<macAddress>a4:14:37:0b:2c:9e</macAddress>
<channelID>1</channelID>
<dateTime>2026-11-28T09:15:30+09:00</dateTime>
<activePostCount>1</activePostCount>
<eventType>ANPR</eventType>
<eventState>active</eventState>
<eventDescription>ANPR</eventDescription>
<channelName>Camera 01</channelName>
<ANPR>
<country>3</country>
<licensePlate>{plate}</licensePlate>
<line>1</line>
<direction>forward</direction>
<confidenceLevel>98</confidenceLevel>
<plateType>92TypeCivil</plateType>
{extra_anpr}
<pictureInfoList>
<pictureInfo><fileName>licensePlatePicture.jpg</fileName><type>licensePlatePicture</type><dataType>0</dataType></pictureInfo>
<pictureInfo><fileName>detectionPicture.jpg</fileName><type>detectionPicture</type><dataType>0</dataType></pictureInfo>
</pictureInfoList>
</ANPR>
<UUID>{uuid}</UUID>
<picNum>2</picNum>
<isDataRetransmission>{retransmission}</isDataRetransmission>
<deviceID>PARK-E2</deviceID>
</EventNotificationAlert>"#
    )
}

fn multipart(boundary: &str, parts: &[(&str, &str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, ct, data) in parts {
        out.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
                data.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hikvision_alerts_with_pictures_or_xml_alone_reach_the_platform_once_with_plate_colour_style_and_time(
) {
    let devices = r#"
[http]
listen = "127.0.0.1:0"
allow = ["127.0.0.0/8"]

[[camera]]
name = "入口2"
direction = "in"
driver = "http"
format = "hikvision"
path = "/isapi/entry2"
sn = "PARK-E2"
"#;
    let h = common::start_devices("", devices).await;
    let url = format!("http://{}/isapi/entry2", listener(&h).await);

    // Multipart: the XML, the plate crop and the 1080p scene.
    let crop = common::small_jpeg(3);
    let scene = jpeg_1080p(4);
    let xml = hik_xml(
        "黄晋A7Q321",
        "0d6f2a1c-77e4-4b1a-9c3e-5a2b8f10e4d7",
        false,
        "<plateColor>yellow</plateColor><vehicleType>truck</vehicleType>",
    );
    let body = multipart(
        "MIME_boundary",
        &[
            ("anpr.xml", "application/xml", xml.as_bytes()),
            ("licensePlatePicture.jpg", "image/jpeg", &crop),
            ("detectionPicture.jpg", "image/jpeg", &scene),
        ],
    );
    let ct = "multipart/form-data; boundary=MIME_boundary";
    let (code, reply) = post(&url, ct, body.clone()).await;
    assert_eq!(code, 200, "{reply}");
    assert!(reply.contains("<statusString>OK</statusString>"), "{reply}");
    // The same alert again, as the camera re-sends what it could not deliver.
    let retransmitted = hik_xml(
        "黄晋A7Q321",
        "0d6f2a1c-77e4-4b1a-9c3e-5a2b8f10e4d7",
        true,
        "<plateColor>yellow</plateColor><vehicleType>truck</vehicleType>",
    );
    let body2 = multipart(
        "MIME_boundary",
        &[
            ("anpr.xml", "application/xml", retransmitted.as_bytes()),
            ("licensePlatePicture.jpg", "image/jpeg", &crop),
            ("detectionPicture.jpg", "image/jpeg", &scene),
        ],
    );
    assert_eq!(post(&url, ct, body2).await.0, 200);
    assert_eq!(post(&url, ct, body).await.0, 200);

    // The XML alone, the colour only in the plate's prefix, a bus.
    let alone = hik_xml(
        "蓝晋A12345",
        "5b1e9d3a-2c4f-4e8a-b7d6-0a9c8e7f6d5b",
        false,
        "<vehicleType>largeBus</vehicleType>",
    );
    let (code, reply) = post(&url, "application/xml", alone.clone()).await;
    assert_eq!(code, 200, "{reply}");
    assert_eq!(post(&url, "text/xml", alone).await.0, 200);

    // A heartbeat alert is liveness only.
    let hb = r#"<EventNotificationAlert version="2.0" xmlns="http://www.isapi.org/ver20/XMLSchema"><ipAddress>192.168.1.65</ipAddress><macAddress>a4:14:37:0b:2c:9e</macAddress><deviceID>PARK-E2</deviceID><dateTime>2026-11-28T09:16:00+09:00</dateTime><eventType>heartBeat</eventType><eventState>active</eventState></EventNotificationAlert>"#;
    assert_eq!(post(&url, "application/xml", hb).await.0, 200);

    // Broken multipart and a foreign device are answered and counted.
    let (code, _) = post(&url, ct, "--MIME_boundary\r\nContent-Dispo").await;
    assert_eq!(code, 400);
    let foreign = hik_xml("蓝晋A99999", "x-1", false, "").replace("PARK-E2", "PARK-X9");
    assert_eq!(post(&url, "application/xml", foreign).await.0, 403);

    assert!(
        eventually(WAIT, || h.sim.records().len() >= 2).await,
        "records: {:?}",
        h.sim.records()
    );
    let records = h.sim.records();
    assert_eq!(records.len(), 2, "{records:?}");
    let truck = record(&records, "晋A7Q321");
    assert_eq!(truck["carColor"], "黄");
    assert_eq!(truck["carStyle"], "2");
    // 09:15:30 at +09:00 is 08:15:30 in the lot's zone (Asia/Shanghai).
    assert_eq!(truck["inOutTime"], "2026-11-28 08:15:30");
    assert_eq!(truck["nodeName"], "入口2");
    let (w, hgt) = delivered_picture(truck);
    assert!(is_scene(w, hgt), "the scene, not the crop: {w}x{hgt}");
    let bus = record(&records, "晋A12345");
    assert_eq!(
        (bus["carColor"].as_str(), bus["carStyle"].as_str()),
        (Some("蓝"), Some("1"))
    );
    assert!(bus["remark"].as_str().unwrap_or("").contains("placeholder"));
    let s = h.status("入口2");
    assert!(s.connected);
    assert_eq!(s.bad_inputs, 2, "{s:?}");
    assert_eq!(s.events, 5, "stored and recognised re-posts: {s:?}");
    h.gw.stop().await;
}

/// Send raw bytes and read the answer's status code (0: the connection closed without one).
async fn raw_status(addr: SocketAddr, request: &[u8]) -> u16 {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return 0;
    };
    let _ = s.write_all(request).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await;
    std::str::from_utf8(buf.get(9..12).unwrap_or(b"000"))
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_garbage_requests_are_each_answered_and_counted_and_the_next_push_is_delivered(
) {
    let h = common::start_devices("", VZ_DEVICES).await;
    let addr = listener(&h).await;
    const N: usize = 10_000;
    const WORKERS: usize = 16;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..WORKERS {
        tasks.spawn(async move {
            let mut codes = [0usize; 5];
            for i in (w..N).step_by(WORKERS) {
                let kind = i % 5;
                let req: Vec<u8> = match kind {
                    0 => format!("POST /nope/{i} HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}").into_bytes(),
                    1 => b"GET /push/entry1 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec(),
                    2 => format!("POST /push/entry1 HTTP/1.1\r\nhost: x\r\ncontent-length: 9\r\nconnection: close\r\n\r\nnot json{}", i % 10).into_bytes(),
                    3 => b"POST /push/entry1 HTTP/1.1\r\nhost: x\r\ncontent-length: 99999999\r\nconnection: close\r\n\r\n{".to_vec(),
                    _ => b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n".to_vec(),
                };
                let want = [404, 405, 400, 413, 400][kind];
                if raw_status(addr, &req).await == want {
                    codes[kind] += 1;
                }
            }
            codes
        });
    }
    let mut answered = [0usize; 5];
    while let Some(r) = tasks.join_next().await {
        for (a, b) in answered.iter_mut().zip(r.expect("worker")) {
            *a += b;
        }
    }
    assert_eq!(answered, [N / 5; 5], "every request got its answer");
    let listener_status = h
        .statuses
        .iter()
        .map(lotlink::drivers::DriverStatus::snapshot)
        .find(|s| s.kind == "http-listener")
        .expect("listener status");
    let camera = h.status("入口1");
    // Unknown paths and bytes that are not HTTP belong to no camera.
    assert!(
        eventually(WAIT, || {
            h.statuses
                .iter()
                .map(lotlink::drivers::DriverStatus::snapshot)
                .find(|s| s.kind == "http-listener")
                .is_some_and(|s| s.bad_inputs == 2 * (N / 5) as u64)
        })
        .await,
        "listener: {listener_status:?}"
    );
    assert_eq!(camera.bad_inputs, 3 * (N / 5) as u64, "{camera:?}");
    assert_eq!(camera.events, 0);

    // The listener still serves: the next valid push is delivered.
    let url = format!("http://{addr}/push/entry1");
    let (code, body) = post(
        &url,
        "application/json",
        vz_full(
            "晋A54321",
            1_795_824_999,
            Some(&common::small_jpeg(9)),
            None,
        ),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(eventually(WAIT, || common::delivered_plates(&h.sim) == ["晋A54321"]).await);
    h.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_does_not_block_a_second_camera_and_is_cut_off_and_counted() {
    let devices = r#"
[http]
listen = "127.0.0.1:0"
read_timeout = "1s"
max_connections = 3

[[camera]]
name = "入口1"
direction = "in"
driver = "http"
format = "vzenith"
path = "/push/entry1"

[[camera]]
name = "出口1"
direction = "out"
driver = "http"
format = "vzenith"
path = "/push/exit1"
"#;
    let h = common::start_devices("", devices).await;
    let addr = listener(&h).await;
    // One client sends half its headers, another its headers and half a body; both stall.
    let mut slow_head = TcpStream::connect(addr).await.expect("connect");
    slow_head
        .write_all(b"POST /push/entry1 HTTP/1.1\r\nhost: x\r\ncontent-le")
        .await
        .expect("write");
    let mut slow_body = TcpStream::connect(addr).await.expect("connect");
    slow_body
        .write_all(b"POST /push/entry1 HTTP/1.1\r\nhost: x\r\ncontent-length: 500\r\n\r\n{\"Alarm")
        .await
        .expect("write");

    // The other camera's push goes through meanwhile.
    let (code, body) = post(
        &format!("http://{addr}/push/exit1"),
        "application/json",
        vz_full(
            "晋A13579",
            1_795_824_950,
            Some(&common::small_jpeg(5)),
            None,
        ),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(eventually(WAIT, || common::delivered_plates(&h.sim) == ["晋A13579"]).await);

    // Both slow clients are cut off after the read timeout: 408 for the body.
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, slow_body.read_to_end(&mut answer)).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(WAIT, slow_head.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the stalled headers' connection was closed");
    assert!(
        eventually(WAIT, || {
            let s = h
                .statuses
                .iter()
                .map(lotlink::drivers::DriverStatus::snapshot)
                .find(|s| s.kind == "http-listener");
            s.is_some_and(|s| s.bad_inputs >= 1)
        })
        .await
    );
    assert_eq!(h.status("入口1").bad_inputs, 1, "{:?}", h.status("入口1"));

    // Connections over max_connections are answered 503 at once, not queued.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }
    assert!(
        eventually_async(WAIT, || {
            async move {
                raw_status(
                    addr,
                    b"POST /push/exit1 HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n",
                )
                .await
                    == 503
            }
        })
        .await,
        "a connection over the limit gets 503"
    );
    drop(idle);
    h.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_stored_before_a_sigkill_and_posted_again_after_the_restart_is_one_record() {
    let sim = common::sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let status_port = free_port();
    let http_port = free_port();
    let text = common::config_text(&sim.url(), &dir.path().join("outbox"), "").replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{status_port}\""),
    ) + &format!(
        "\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n\n[[camera]]\nname = \"入口1\"\ndirection = \"in\"\ndriver = \"http\"\nformat = \"vzenith\"\npath = \"/push/entry1\"\n"
    );
    let config = dir.path().join("lotlink.toml");
    std::fs::write(&config, text).expect("config");
    let log = dir.path().join("daemon.log");
    let url = format!("http://127.0.0.1:{http_port}/push/entry1");
    let body = vz_full("晋A24680", 1_795_824_960, Some(&jpeg_1080p(6)), None);
    let heartbeat = r#"{"heartbeat":{"countid":1,"timeStamp":1795824930,"serialno":"x"}}"#;
    let up = || async {
        eventually_async(WAIT, || async {
            reqwest::Client::new()
                .post(&url)
                .body(heartbeat)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await
    };

    // -v: "event stored" is a debug line (one INFO summary a minute, issue 16).
    let mut daemon = Daemon::start_with(&config, &log, &["-v"]);
    assert!(
        up().await,
        "listening; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // The camera posts and does not wait for our answer; the daemon is killed as soon as
    // the result is on disk, whether or not its answer went out.
    let client = reqwest::Client::new();
    let posted = tokio::spawn({
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        async move {
            client
                .post(url)
                .body(body)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    });
    assert!(
        eventually(WAIT, || std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("event stored"))
        .await,
        "stored; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    sim.set_mode(lotlink_sim::Mode::Refuse);
    daemon.0.kill().expect("SIGKILL");
    let _ = daemon.0.wait();
    let _ = posted.await;

    // Restarted, the camera posts the same result again: one record at the platform.
    sim.set_mode(lotlink_sim::Mode::Up);
    let _daemon = Daemon::start(&config, &log);
    assert!(up().await, "listening again");
    let (code, reply) = post(&url, "application/json", body).await;
    assert_eq!(code, 200, "{reply}");
    let status_url = format!("http://127.0.0.1:{status_port}/status");
    assert!(
        eventually_async(WAIT, || async {
            let pending = async {
                reqwest::get(&status_url)
                    .await
                    .ok()?
                    .json::<Value>()
                    .await
                    .ok()
            }
            .await
            .and_then(|v| v["outbox"]["pending"].as_u64());
            pending == Some(0) && !sim.records().is_empty()
        })
        .await,
        "the outbox drained"
    );
    assert_eq!(common::delivered_plates(&sim), ["晋A24680"]);
}
