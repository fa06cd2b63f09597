//! `wss://`: certificates are verified by default; a private CA is trusted only through
//! `source.ca_file`. A TLS-terminating proxy with a throw-away CA stands in front of the sim.

use voxsig_testkit::brokers;
use voxsig_testkit::rig as support;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use std::time::Duration;
use support::*;
use voxsig_sim::{Selection, SimConfig, TokenSelection};

/// Accepts TLS on a free port and forwards the plain bytes to `target`.
async fn tls_proxy(pki: &brokers::TestPki, target: std::net::SocketAddr) -> u16 {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(&pki.key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_verifies_certificates_and_trusts_a_private_ca_only_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let pki = brokers::TestPki::create(dir.path(), "voxsig");
    let sim = sim(world(1, 1, 1, 0), SimConfig::default()).await;
    let port = tls_proxy(&pki, sim.addr()).await;
    let url = format!("wss://127.0.0.1:{port}/cable");

    // Without the CA: the handshake is refused, counted, retried; nothing subscribes.
    let untrusted = rig_on(
        sim.clone(),
        TokenSelection::All,
        &format!("[source]\nurl = \"{url}\"\n"),
        "",
    )
    .await;
    eventually("failed TLS connects", Duration::from_secs(20), || {
        untrusted.metric("voxsig_bridge_connects_total", &[("result", "error")]) >= 2.0
    })
    .await;
    assert_eq!(
        untrusted.metric("voxsig_bridge_connects_total", &[("result", "ok")]),
        0.0
    );
    assert_eq!(sim.stats().subscriptions, 0);
    untrusted
        .bridge
        .unwrap()
        .shutdown(Duration::from_secs(2))
        .await;

    // With ca_file: events flow over TLS.
    let ca = pki.ca.display().to_string();
    let trusted = rig_on(
        sim,
        TokenSelection::All,
        &format!("[source]\nurl = \"{url}\"\nca_file = \"{ca}\"\n"),
        "",
    )
    .await;
    trusted.confirmed(2).await;
    trusted.sim.burst(50, &Selection::all()).await.unwrap();
    trusted.assert_exactly_once(Duration::from_secs(30)).await;
    trusted.stop().await;
}
