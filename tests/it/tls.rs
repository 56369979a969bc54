//! Certificates are verified: a platform (HTTPS) and a broker (MQTTS) behind a self-signed
//! certificate are refused unless the config names their CA in `ca_file`, and work with it.
//!
//! The servers are the usual real peers (the platform simulator, mosquitto or rumqttd) with a
//! TLS front on 127.0.0.1 that terminates TLS with a certificate made for this test run and
//! passes the plain bytes through.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::devices::{free_port, Broker, Publisher};
use common::{eventually, lotlink_command, sim, start_devices, LOT, TOKEN};
use lotlink_sim::Route;
use tokio::net::{TcpListener, TcpStream};

/// A CA-less self-signed certificate for 127.0.0.1 and localhost, written as PEM.
struct TestCert {
    _dir: tempfile::TempDir,
    pem: PathBuf,
    server: Arc<rustls::ServerConfig>,
}

fn test_cert() -> TestCert {
    let made =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("make a certificate");
    let dir = tempfile::tempdir().expect("tempdir");
    let pem = dir.path().join("test-ca.pem");
    std::fs::write(&pem, made.cert.pem()).expect("write the PEM");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(made.key_pair.serialize_der().into());
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(vec![made.cert.der().clone()], key)
    .expect("server certificate");
    TestCert {
        _dir: dir,
        pem,
        server: Arc::new(server),
    }
}

/// Listen on 127.0.0.1 (ephemeral port); every connection: TLS handshake with `cert`, then
/// the decrypted bytes go both ways to `backend`. Returns the TLS port.
async fn tls_front(cert: &TestCert, backend: u16) -> u16 {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let acceptor = tokio_rustls::TlsAcceptor::from(cert.server.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that refuses our certificate ends the handshake here.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(("127.0.0.1", backend)).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    port
}

fn write_config(dir: &Path, url: &str, ca_file: Option<&Path>) -> PathBuf {
    let ca = ca_file.map_or(String::new(), |p| {
        format!("ca_file = \"{}\"\n", p.display())
    });
    let text = format!(
        "[platform]\nurl = \"{url}\"\nlot_code = \"{LOT}\"\ntoken = \"{TOKEN}\"\nrequest_timeout = \"5s\"\n{ca}\n[outbox]\npath = \"{}\"\n\n[space]\ntotal = 10\n",
        dir.join("outbox").display()
    );
    let path = dir.join("lotlink.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// `lotlink send heartbeat`: exit code and everything printed.
fn send_heartbeat(config: &Path) -> (i32, String) {
    let out = lotlink_command()
        .args(["send", "heartbeat", "--config"])
        .arg(config)
        .output()
        .expect("run lotlink");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_platform_with_an_unknown_certificate_is_refused_until_its_ca_is_configured() {
    let sim = sim().await;
    let backend = sim.local_addr().port();
    let cert = test_cert();
    let port = tls_front(&cert, backend).await;
    let url = format!("https://127.0.0.1:{port}");
    let dir = tempfile::tempdir().expect("tempdir");

    // Without ca_file: the built-in web roots do not know this certificate.
    let config = write_config(dir.path(), &url, None);
    let (code, text) = tokio::task::spawn_blocking(move || send_heartbeat(&config))
        .await
        .expect("join");
    assert_eq!(code, 1, "refused: {text}");
    assert!(
        text.contains("no answer") && text.to_lowercase().contains("certificate"),
        "says why: {text}"
    );
    assert_eq!(
        sim.stats().requests_to(Route::Heartbeat),
        0,
        "nothing reached the platform"
    );

    // With the CA: the same request is answered.
    let config = write_config(dir.path(), &url, Some(&cert.pem));
    let (code, text) = tokio::task::spawn_blocking(move || send_heartbeat(&config))
        .await
        .expect("join");
    assert_eq!(code, 0, "accepted: {text}");
    assert!(
        text.contains("code 0") || text.contains("code 200"),
        "{text}"
    );
    assert_eq!(
        sim.stats().requests_to(Route::Heartbeat),
        1,
        "the heartbeat arrived"
    );

    // A ca_file that is not PEM is a config error naming the key and the file.
    let bad = dir.path().join("not-a-ca.pem");
    std::fs::write(&bad, "hello").expect("write");
    let config = write_config(dir.path(), &url, Some(&bad));
    let out = lotlink_command()
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .expect("run lotlink");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("platform.ca_file") && text.contains("not-a-ca.pem"),
        "{text}"
    );
}

fn mqtts_devices(port: u16, ca_file: Option<&Path>) -> String {
    let ca = ca_file.map_or(String::new(), |p| {
        format!("ca_file = \"{}\"\n", p.display())
    });
    format!(
        "[mqtt]\nurl = \"mqtts://127.0.0.1:{port}\"\nclient_id = \"lotlink-tls-{}\"\n{ca}\n[[camera]]\nname = \"入口1\"\ndirection = \"in\"\ndriver = \"mqtt\"\nformat = \"json\"\ntopic = \"lot/cam1\"\n",
        free_port()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtts_broker_with_an_unknown_certificate_is_refused_until_its_ca_is_configured() {
    let broker = Broker::start().await;
    let cert = test_cert();
    let port = tls_front(&cert, broker.port).await;
    let wait = Duration::from_secs(20);

    // Without ca_file (system roots): never connected, and the driver says why.
    let refused = start_devices("", &mqtts_devices(port, None)).await;
    assert!(
        eventually(wait, || refused.status("mqtt").last_problem.is_some()).await,
        "the refused connection is reported"
    );
    let snap = refused.status("mqtt");
    assert!(!snap.connected, "{snap:?}");
    assert_eq!(snap.since_ms, 0, "never connected: {snap:?}");
    refused.gw.stop().await;

    // With the CA: connected, and an event published on the plain side arrives.
    let h = start_devices("", &mqtts_devices(port, Some(&cert.pem))).await;
    assert!(
        eventually(wait, || h.status("mqtt").connected).await,
        "connected over TLS: {:?}",
        h.status("mqtt")
    );
    let p = Publisher::connect(broker.port, "camera-tls").await;
    let msg = r#"{"plate":"晋A7TLS1","id":"tls-1"}"#;
    let mut delivered = false;
    for _ in 0..50 {
        p.publish("lot/cam1", msg.as_bytes().to_vec()).await;
        if eventually(Duration::from_millis(400), || !h.sim.records().is_empty()).await {
            delivered = true;
            break;
        }
    }
    assert!(delivered, "the event crossed the TLS connection");
    assert_eq!(h.sim.records()[0]["carNo"], "晋A7TLS1");
}
