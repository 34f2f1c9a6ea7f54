//! `tokenproxy-bench-tlsload --dial ADDR [--proxy] --host NAME:PORT --ca PEM --path /small
//! --connections N --seconds S`: N keep-alive HTTP/1.1 connections over TLS (SNI and
//! certificate check for NAME), each sending GET requests back to back for S seconds. With
//! `--proxy`, ADDR is an HTTP proxy and each connection first opens a `CONNECT NAME:PORT`
//! tunnel. Prints one JSON line: requests, errors, req/s, p50 and p99 in microseconds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Args {
    dial: String,
    proxy: bool,
    host: String,
    ca: String,
    path: String,
    connections: usize,
    seconds: u64,
}

fn args() -> Args {
    let mut args = Args {
        dial: String::new(),
        proxy: false,
        host: String::new(),
        ca: String::new(),
        path: "/small".into(),
        connections: 16,
        seconds: 5,
    };
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        let mut value = || given.next().expect("a value after the flag");
        match flag.as_str() {
            "--dial" => args.dial = value(),
            "--proxy" => args.proxy = true,
            "--host" => args.host = value(),
            "--ca" => args.ca = value(),
            "--path" => args.path = value(),
            "--connections" => args.connections = value().parse().unwrap(),
            "--seconds" => args.seconds = value().parse().unwrap(),
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Arc::new(args());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&args.ca).expect("the CA file") {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.connections {
        let (args, connector) = (Arc::clone(&args), connector.clone());
        tasks.push(tokio::spawn(connection(args, connector, until)));
    }
    let (mut latencies, mut errors) = (Vec::new(), 0u64);
    for task in tasks {
        let (mut these, failed) = task.await.unwrap();
        latencies.append(&mut these);
        errors += failed;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{{\"requests\":{},\"errors\":{},\"rps\":{:.0},\"p50_us\":{},\"p99_us\":{}}}",
        latencies.len(),
        errors,
        latencies.len() as f64 / elapsed,
        at(0.50),
        at(0.99)
    );
}



/// One connection's requests until `until`: each one's latency in microseconds, and how
/// many failed (a failed connection is opened again).
async fn connection(
    args: Arc<Args>,
    connector: tokio_rustls::TlsConnector,
    until: Instant,
) -> (Vec<u64>, u64) {
    let (mut latencies, mut errors) = (Vec::new(), 0);
    while Instant::now() < until {
        let Ok(mut sender) = open(&args, &connector).await else {
            errors += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        while Instant::now() < until {
            let request = http::Request::get(args.path.as_str())
                .header(http::header::HOST, args.host.as_str())
                .body(Empty::<bytes::Bytes>::new())
                .unwrap();
            let sent = Instant::now();
            let answered = match sender.send_request(request).await {
                Ok(response) if response.status().is_success() => {
                    response.into_body().collect().await.is_ok()
                }
                _ => false,
            };
            if !answered {
                errors += 1;
                break;
            }
            latencies.push(sent.elapsed().as_micros() as u64);
        }
    }
    (latencies, errors)
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>;

async fn open(
    args: &Args,
    connector: &tokio_rustls::TlsConnector,
) -> Result<Sender, Box<dyn std::error::Error>> {
    let mut stream = TcpStream::connect(&args.dial).await?;
    stream.set_nodelay(true)?;
    if args.proxy {
        let host = &args.host;
        stream
            .write_all(format!("CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .await?;
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            if stream.read(&mut byte).await? == 0 {
                return Err("the proxy closed the connection".into());
            }
            head.push(byte[0]);
        }
        if !head.starts_with(b"HTTP/1.1 200") {
            return Err(String::from_utf8_lossy(&head).into_owned().into());
        }
    }
    let name = args.host.rsplit_once(':').map_or(args.host.as_str(), |(name, _)| name);
    let tls = connector
        .connect(ServerName::try_from(name.to_owned())?, stream)
        .await?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(connection);
    Ok(sender)
}
