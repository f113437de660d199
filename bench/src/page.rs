//! A client that polls the browser view the way its page does: twice a
//! second, `/api/flows` (the map, all namespaces) and
//! `/api/events?after=SEQ&limit=200` (the verdict tail, following its
//! sequence number), on one kept-alive HTTP/1.1 connection as a browser
//! would. The page polls one of the two per view; this polls both, the
//! dearer case. Plain `std::net`: the answers have a Content-Length.

use crate::env;
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where the agent serves the page (its default, in the node's namespace).
pub const ADDR: &str = "127.0.0.1:9470";

/// The page's refresh period.
const PERIOD: Duration = Duration::from_millis(500);

/// One poll: both requests.
#[derive(Clone, Debug)]
pub struct Poll {
    /// When the answers were in.
    pub at: Instant,
    pub error: Option<String>,
    /// Wall clock at the answer minus the newest event's time in the tail;
    /// None when the tail returned no event.
    pub lag_ms: Option<f64>,
    /// The map's edge counts, summed.
    pub edge_count: u64,
    /// The slower of the two requests, ms.
    pub request_ms: f64,
    pub bytes: usize,
}

pub struct Poller {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<Vec<Poll>>>,
}

impl Poller {
    /// Starts polling `addr` from inside namespace `ns`.
    pub fn start(ns: &str, addr: &'static str) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = env::spawn_in(ns, None, move || poll_until(addr, &s));
        Poller { stop, thread }
    }

    /// Stops polling; returns every poll made.
    pub fn stop(self) -> Result<Vec<Poll>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().map_err(|_| anyhow::anyhow!("the page poller panicked"))?
    }
}

fn poll_until(addr: &str, stop: &AtomicBool) -> Vec<Poll> {
    let mut conn: Option<Conn> = None;
    let mut seq = 0u64;
    let mut polls = Vec::new();
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let poll = match poll_once(&mut conn, addr, &mut seq) {
            Ok((lag_ms, edge_count, request_ms, bytes)) => {
                Poll { at: Instant::now(), error: None, lag_ms, edge_count, request_ms, bytes }
            }
            Err(e) => {
                conn = None;
                let request_ms = started.elapsed().as_secs_f64() * 1e3;
                Poll {
                    at: Instant::now(),
                    error: Some(format!("{e:#}")),
                    lag_ms: None,
                    edge_count: 0,
                    request_ms,
                    bytes: 0,
                }
            }
        };
        polls.push(poll);
        next += PERIOD;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    polls
}

fn poll_once(conn: &mut Option<Conn>, addr: &str, seq: &mut u64) -> Result<(Option<f64>, u64, f64, usize)> {
    if conn.is_none() {
        *conn = Some(Conn::open(addr)?);
    }
    let c = conn.as_mut().context("connection")?;
    let t = Instant::now();
    let flows = c.get("/api/flows?")?;
    let flows_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let tail = c.get(&format!("/api/events?after={seq}&limit=200&"))?;
    let tail_ms = t.elapsed().as_secs_f64() * 1e3;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64() * 1e3;
    let (flows_v, tail_v): (Value, Value) = (serde_json::from_slice(&flows)?, serde_json::from_slice(&tail)?);
    *seq = tail_v["seq"].as_u64().unwrap_or(*seq);
    let newest = tail_v["events"].as_array().and_then(|e| e.last()).and_then(|e| e["event"]["time"].as_str());
    let lag_ms = match newest {
        Some(t) => Some(now - rfc3339_ms(t).with_context(|| format!("event time {t:?}"))?),
        None => None,
    };
    let edge_count = flows_v["edges"].as_array().map_or(0, |e| e.iter().filter_map(|e| e["count"].as_u64()).sum());
    Ok((lag_ms, edge_count, flows_ms.max(tail_ms), flows.len() + tail.len()))
}

/// One kept-alive HTTP/1.1 connection.
struct Conn {
    addr: String,
    r: BufReader<TcpStream>,
}

impl Conn {
    fn open(addr: &str) -> Result<Conn> {
        let s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_nodelay(true)?;
        Ok(Conn { addr: addr.to_string(), r: BufReader::new(s) })
    }

    /// GETs `path`; returns the body of a 200.
    fn get(&mut self, path: &str) -> Result<Vec<u8>> {
        write!(self.r.get_mut(), "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: */*\r\n\r\n", self.addr)?;
        let mut line = String::new();
        self.r.read_line(&mut line)?;
        let status = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut length = None;
        loop {
            line.clear();
            if self.r.read_line(&mut line)? == 0 {
                bail!("connection closed in the headers");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = Some(v.trim().parse::<usize>()?);
            }
        }
        let mut body = vec![0; length.context("no Content-Length")?];
        self.r.read_exact(&mut body)?;
        if status != "200" {
            bail!("{path}: HTTP {status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(body)
    }
}

/// Milliseconds since the epoch of an RFC 3339 UTC time as the agent
/// writes it (`2026-01-02T03:04:05.678Z`).
fn rfc3339_ms(t: &str) -> Option<f64> {
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm) = (num(11..13)?, num(14..16)?);
    let secs: f64 = t.get(17..)?.trim_end_matches('Z').parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60) as f64 + secs) * 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_agents_times() {
        let near = |t: &str, ms: f64| (rfc3339_ms(t).unwrap() - ms).abs() < 0.5;
        assert!(near("1970-01-01T00:00:00.000Z", 0.0));
        assert!(near("2000-03-01T00:00:01.500Z", 951_868_801_500.0));
        assert!(near("2026-11-30T18:14:02.123Z", 1_796_062_442_123.0));
        assert_eq!(rfc3339_ms("garbage"), None);
    }
}
