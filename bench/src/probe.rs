//! A stream of UDP probes from one pod to another, every `interval`, each
//! carrying its sequence number: the receiver notes which arrived, so the
//! moment a verdict changed is read off the packets themselves (the send
//! time of the first probe that got through, or of the first that did not).

use crate::env::{self, Pod};
use anyhow::{Context, Result};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Stream {
    stop: Arc<AtomicBool>,
    sent: Arc<Mutex<Vec<Instant>>>,
    /// (seq, arrival)
    received: Arc<Mutex<Vec<(u64, Instant)>>>,
    threads: Vec<std::thread::JoinHandle<Result<()>>>,
}

impl Stream {
    pub fn start(client: &Pod, server: &Pod, port: u16, interval: Duration) -> Result<Stream> {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let received = Arc::new(Mutex::new(Vec::new()));
        let rx = env::run_in(&server.netns, None, move || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)))??;
        rx.set_read_timeout(Some(Duration::from_millis(50)))?;
        let (s, r) = (stop.clone(), received.clone());
        let t1 = std::thread::spawn(move || -> Result<()> {
            let mut buf = [0u8; 64];
            while !s.load(Ordering::SeqCst) {
                if let Ok(n) = rx.recv(&mut buf)
                    && n >= 8
                {
                    let seq = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes"));
                    r.lock().expect("probe lock").push((seq, Instant::now()));
                }
            }
            Ok(())
        });
        let dst = SocketAddr::from((server.ip4, port));
        let (s, sn) = (stop.clone(), sent.clone());
        let t2 = env::spawn_in(&client.netns, None, move || -> Result<()> {
            let tx = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).context("probe socket")?;
            let mut seq = 0u64;
            let start = Instant::now();
            while !s.load(Ordering::SeqCst) {
                let due = start + interval * seq as u32;
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let t = Instant::now();
                sn.lock().expect("probe lock").push(t);
                let mut payload = [0u8; 16];
                payload[..8].copy_from_slice(&seq.to_be_bytes());
                let _ = tx.send_to(&payload, dst);
                seq += 1;
            }
            Ok(())
        });
        let t2 = std::thread::spawn(move || t2.join().map_err(|_| anyhow::anyhow!("prober panicked"))??);
        Ok(Stream { stop, sent, received, threads: vec![t1, t2] })
    }

    fn send_time(&self, seq: u64) -> Option<Instant> {
        self.sent.lock().expect("probe lock").get(seq as usize).copied()
    }

    /// First probe sent at or after `t0` that arrived: its send time - t0.
    pub fn wait_allowed(&self, t0: Instant, timeout: Duration) -> Option<Duration> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            {
                let sent = self.sent.lock().expect("probe lock");
                let rec = self.received.lock().expect("probe lock");
                let first =
                    rec.iter().filter_map(|(seq, _)| sent.get(*seq as usize).filter(|t| **t >= t0).copied()).min();
                if let Some(t) = first {
                    return Some(t - t0);
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        None
    }

    /// Once probes have stopped arriving (nothing for `quiet`): the send
    /// time of the first probe after the last one that arrived, minus t0.
    pub fn wait_denied(&self, t0: Instant, quiet: Duration, timeout: Duration) -> Option<Duration> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            let last_arrival = self.received.lock().expect("probe lock").last().map(|r| r.1);
            let now = Instant::now();
            if now - t0 < quiet || last_arrival.is_some_and(|a| now - a < quiet) {
                continue;
            }
            let last_seq = self.received.lock().expect("probe lock").iter().map(|r| r.0).max();
            let sent = self.sent.lock().expect("probe lock");
            let first_after_t0 = sent.iter().position(|t| *t >= t0)? as u64;
            let first_dropped = match last_seq {
                Some(s) if s + 1 >= first_after_t0 => s + 1,
                _ => first_after_t0,
            };
            drop(sent);
            return self.send_time(first_dropped).map(|t| t.saturating_duration_since(t0));
        }
        None
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
