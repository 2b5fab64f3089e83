//! The second ingest ceiling of the benchmarks (`cargo xtask bench`): a plain rumqttc
//! QoS 1 subscriber that acknowledges every message at once (rumqttc's automatic
//! acks, written in bulk per read) and does nothing else.
//!
//! ```text
//! mqttsub --port P --topic 'ceil/#' --messages N [--client-id ID] [--timeout SECS]
//! ```
//!
//! Prints `ready` on stderr once subscribed, then one JSON line when N messages
//! arrived: `end_unix_ms`. Exit code 1 on timeout or connection failure.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

fn usage() -> ! {
    eprintln!(
        "usage: mqttsub --port P --topic FILTER --messages N [--client-id ID] [--timeout SECS]"
    );
    std::process::exit(2);
}

fn main() -> std::process::ExitCode {
    let (mut port, mut topic, mut n, mut id, mut timeout) =
        (0u16, String::new(), 0u64, "mqttsub".to_string(), 600u64);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--port" => port = v.parse().unwrap_or_else(|_| usage()),
            "--topic" => topic = v,
            "--messages" => n = v.parse().unwrap_or_else(|_| usage()),
            "--client-id" => id = v,
            "--timeout" => timeout = v.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    if port == 0 || topic.is_empty() || n == 0 {
        usage();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result: Result<u64, String> = rt.block_on(async {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(60))
            .set_clean_session(true)
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut el) = AsyncClient::new(o, 16);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let mut got = 0u64;
        loop {
            let ev = tokio::select! {
                ev = el.poll() => ev,
                _ = tokio::time::sleep_until(deadline) => return Err(format!("timed out after {got} of {n}")),
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => client
                    .subscribe(topic.clone(), QoS::AtLeastOnce)
                    .await
                    .map_err(|e| e.to_string())?,
                Ok(Event::Incoming(Packet::SubAck(_))) => eprintln!("ready"),
                Ok(Event::Incoming(Packet::Publish(_))) => {
                    got += 1;
                    if got == n {
                        return Ok(SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .map(|d| d.as_millis() as u64)
                            .unwrap_or(0));
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(format!("connection failed after {got} of {n}: {e}")),
            }
        }
    });
    match result {
        Ok(end) => {
            println!(
                "{}",
                serde_json::json!({ "messages": n, "end_unix_ms": end })
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mqttsub: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
