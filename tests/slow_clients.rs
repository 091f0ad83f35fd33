//! Slow and abusive clients against the real binary (F-30): half-sent
//! request heads are closed after `ORCH_HTTP_HEADER_TIMEOUT_MS` while
//! `/health` keeps answering; a connection past `ORCH_HTTP_MAX_CONNECTIONS`
//! gets a 503 and is closed, and the daemon serves again once they go;
//! webhooks past `ORCH_WEBHOOK_MAX_IN_FLIGHT` are shed with a 503 and
//! `Retry-After` well before a sender's own timeout; a body trickled in is
//! cut off with 408; an unsigned webhook is refused before its body is read.

mod support;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::daemon::{Daemon, World, sample, until, world};
use support::intake_env::PSECRET;

async fn daemon_with(env: &[(&str, &str)]) -> (World, Daemon) {
    let w = world("", env).await;
    let d = w.start().await;
    (w, d)
}

/// Everything the peer sends until it closes, or `None` if it is still
/// open after `within`.
async fn until_closed(s: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(within, read).await.ok().map(|()| got)
}

fn status_of(answer: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(answer);
    text.split_whitespace().nth(1)?.parse().ok()
}

/// `/health` on a new connection: status and how long it took.
async fn health(d: &Daemon) -> (u16, Duration) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let start = Instant::now();
    let status = match client.get(d.url("/health")).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    };
    (status, start.elapsed())
}

#[tokio::test]
async fn half_sent_requests_are_closed_within_the_header_timeout_while_health_answers() {
    const CONNS: usize = 500;
    let timeout = Duration::from_millis(1000);
    let (_w, mut d) = daemon_with(&[("ORCH_HTTP_HEADER_TIMEOUT_MS", "1000")]).await;
    let started = Instant::now();
    let mut slow = Vec::with_capacity(CONNS);
    for _ in 0..CONNS {
        let mut s = TcpStream::connect(&d.addr).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Half: ")
            .await
            .unwrap();
        slow.push(s);
    }
    let opened = started.elapsed();
    // While all of them hang, /health answers, each on its own connection.
    let mut took = Vec::new();
    for _ in 0..20 {
        let (status, t) = health(&d).await;
        assert_eq!(status, 200, "/health while {CONNS} requests hang");
        took.push(t);
    }
    took.sort();
    // Every half-sent request is closed: after the timeout, with slack for
    // a loaded 2-core machine, never left open.
    let deadline = timeout + Duration::from_secs(5);
    let mut closed_at = Vec::with_capacity(CONNS);
    for s in &mut slow {
        let left = deadline.saturating_sub(started.elapsed());
        assert!(
            until_closed(s, left).await.is_some(),
            "a half-sent request was still open {} ms after it began",
            started.elapsed().as_millis()
        );
        closed_at.push(started.elapsed());
    }
    let last = closed_at.iter().max().unwrap();
    println!(
        "slow clients: {CONNS} half-sent requests opened in {} ms, all closed by {} ms after the first was opened \
         (header timeout {} ms); /health meanwhile p50 {:.2} ms, max {:.2} ms",
        opened.as_millis(),
        last.as_millis(),
        timeout.as_millis(),
        took[took.len() / 2].as_secs_f64() * 1e3,
        took[took.len() - 1].as_secs_f64() * 1e3,
    );
    assert!(d.alive());
    let (status, _) = health(&d).await;
    assert_eq!(status, 200);
    let m = d.metrics().await;
    assert!(
        sample(&m, "orchestrator_http_connections_errored_total")
            .is_some_and(|n| n >= CONNS as f64),
        "the timed-out connections are counted: {m}"
    );
    d.signal(nix::sys::signal::Signal::SIGKILL);
}

#[tokio::test]
async fn a_connection_past_the_cap_gets_503_and_the_daemon_serves_again_once_they_close() {
    let (_w, mut d) = daemon_with(&[
        ("ORCH_HTTP_MAX_CONNECTIONS", "20"),
        ("ORCH_HTTP_HEADER_TIMEOUT_MS", "60000"),
    ])
    .await;
    // The `/health` of start-up may still hold a slot for a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(&d.addr).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        held.push(s);
    }
    // Accepted in order: the next connection is the 21st.
    let mut extra = TcpStream::connect(&d.addr).await.unwrap();
    let answer = until_closed(&mut extra, Duration::from_secs(10))
        .await
        .expect("the connection past the cap is closed");
    let text = String::from_utf8_lossy(&answer).to_lowercase();
    assert_eq!(status_of(&answer), Some(503), "{text}");
    assert!(text.contains("retry-after: 1"), "{text}");
    assert!(text.contains("too many open connections"), "{text}");
    // The held ones still work: one of them finishes its request.
    let mut first = held.remove(0);
    first.write_all(b"Connection: close\r\n\r\n").await.unwrap();
    let answer = until_closed(&mut first, Duration::from_secs(10))
        .await
        .expect("a held request is answered");
    assert_eq!(status_of(&answer), Some(200));
    drop(held);
    until(
        "/health answers once the held connections are gone",
        10,
        || async { health(&d).await.0 == 200 },
    )
    .await;
    assert!(d.alive());
    d.signal(nix::sys::signal::Signal::SIGKILL);
}

/// A webhook head with a signature (any: it is checked once the body is
/// in) whose body is announced but only begun.
async fn slow_webhook(d: &Daemon) -> TcpStream {
    let mut s = TcpStream::connect(&d.addr).await.unwrap();
    s.write_all(
        b"POST /webhooks/plane HTTP/1.1\r\nHost: x\r\nX-Plane-Event: issue\r\n\
          X-Plane-Delivery: slow\r\nX-Plane-Signature: 00\r\n\
          Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"a\":",
    )
    .await
    .unwrap();
    s
}

/// A signed Plane delivery of an event the daemon ignores (so it changes
/// nothing): status, `Retry-After`, how long the answer took.
async fn ignored_webhook(d: &Daemon, n: usize) -> (u16, Option<String>, Duration) {
    let body = b"{\"event\":\"cycle\",\"action\":\"created\",\"data\":{}}";
    let start = Instant::now();
    let r = reqwest::Client::new()
        .post(d.url("/webhooks/plane"))
        .header("X-Plane-Event", "cycle")
        .header("X-Plane-Delivery", format!("d-{n}"))
        .header(
            "X-Plane-Signature",
            orchestrator::intake::sign(PSECRET.as_bytes(), body),
        )
        .header("Content-Type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (r.status().as_u16(), retry, start.elapsed())
}

#[tokio::test]
async fn webhooks_past_the_in_flight_cap_are_shed_with_retry_after_and_slow_bodies_get_408() {
    let (w, d) = daemon_with(&[
        ("ORCH_WEBHOOK_MAX_IN_FLIGHT", "2"),
        ("ORCH_WEBHOOK_SHED_AFTER_MS", "200"),
        ("ORCH_HTTP_BODY_TIMEOUT_MS", "3000"),
    ])
    .await;
    let (status, _, _) = ignored_webhook(&d, 0).await;
    assert!(
        (200..300).contains(&status),
        "a lone webhook is taken: {status}"
    );
    let began = Instant::now();
    let mut slow = vec![slow_webhook(&d).await, slow_webhook(&d).await];
    // Both slots are held by the slow bodies: the next is shed, fast.
    let mut shed = None;
    for n in 1..50 {
        let (status, retry, took) = ignored_webhook(&d, n).await;
        if status == 503 {
            shed = Some((retry, took));
            break;
        }
        assert!((200..300).contains(&status), "{status}");
    }
    let (retry, took) = shed.expect("a webhook past the cap is shed");
    assert_eq!(retry.as_deref(), Some("1"));
    assert!(
        took < Duration::from_secs(5),
        "shed after {} ms: later than Gitea waits",
        took.as_millis()
    );
    // The slow bodies are cut off with 408, which frees their slots.
    for s in &mut slow {
        let answer = until_closed(s, Duration::from_secs(15))
            .await
            .expect("a slow body is cut off");
        assert_eq!(
            status_of(&answer),
            Some(408),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
    let cut = began.elapsed();
    assert!(cut >= Duration::from_millis(2500), "cut off early: {cut:?}");
    let (status, _, _) = ignored_webhook(&d, 100).await;
    assert!((200..300).contains(&status), "taken again: {status}");
    println!(
        "webhook shedding: 503 after {} ms with 2 slots held; slow bodies cut off after {} ms",
        took.as_millis(),
        cut.as_millis()
    );
    assert!(w.log().contains("webhook shed (503)"), "{}", w.log());
    let m = d.metrics().await;
    for (outcome, at_least) in [("shed", 1.0), ("timeout", 2.0), ("ignored", 2.0)] {
        let series =
            format!(r#"orchestrator_webhooks_total{{source="plane",outcome="{outcome}"}}"#);
        assert!(
            sample(&m, &series).is_some_and(|n| n >= at_least),
            "{series} below {at_least}: {m}"
        );
    }
    d.signal(nix::sys::signal::Signal::SIGKILL);
}

#[tokio::test]
async fn an_unsigned_webhook_is_refused_before_its_body_is_read() {
    let (_w, mut d) = daemon_with(&[]).await;
    for path in ["/webhooks/plane", "/webhooks/gitea"] {
        let mut s = TcpStream::connect(&d.addr).await.unwrap();
        // A megabyte announced, not a byte of it sent.
        s.write_all(
            format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                 Content-Length: 1000000\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let answer = until_closed(&mut s, Duration::from_secs(5))
            .await
            .expect("answered without waiting for the body");
        assert_eq!(
            status_of(&answer),
            Some(401),
            "{path}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    assert!(d.alive());
    d.signal(nix::sys::signal::Signal::SIGKILL);
}
