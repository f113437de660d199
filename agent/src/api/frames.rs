//! Reading an observe stream's frames ([`crate::events::wire`]) from any
//! async byte stream: what `kubectl palisade observe` reads from each
//! agent it merges.

use crate::events::wire::{self, Compact, Symbol};
use anyhow::{Context, Result, bail};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest frame accepted (the agent writes at most ~1 MiB of events
/// per write, in frames of one batch).
const MAX_FRAME: usize = 64 << 20;
/// The largest symbol id accepted: readers index tables by id, so a bad
/// id must not size them (an agent numbers the names it has met, far
/// fewer).
const MAX_SYMBOL_ID: u32 = 1 << 24;

/// One frame, parsed.
#[derive(Debug)]
pub enum Frame {
    /// A name later events refer to by id.
    Symbol(u32, Symbol),
    Events(Vec<Compact>),
    /// This many events were missed (the client fell behind).
    Lagged(u64),
}

/// Parses a frame's payload; None for a tag this client does not know.
pub fn parse(tag: u8, payload: &[u8]) -> Result<Option<Frame>> {
    Ok(match tag {
        wire::TAG_SYMBOL if payload.len() >= 4 => {
            let id = u32::from_le_bytes(payload[..4].try_into().expect("4 bytes"));
            if id > MAX_SYMBOL_ID {
                bail!("a symbol id of {id}");
            }
            Some(Frame::Symbol(id, serde_json::from_slice(&payload[4..]).context("a symbol frame")?))
        }
        wire::TAG_EVENTS => Some(Frame::Events(
            payload
                .chunks_exact(wire::RECORD_LEN)
                .map(|r| Compact::decode(r).context("an event record"))
                .collect::<Result<_>>()?,
        )),
        wire::TAG_LAGGED if payload.len() >= 8 => {
            Some(Frame::Lagged(u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"))))
        }
        _ => None,
    })
}

/// Frames from a stream.
pub struct FrameReader<R> {
    r: R,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(r: R) -> FrameReader<R> {
        FrameReader { r, buf: Vec::new() }
    }

    /// The next frame; None at the end of the stream.
    pub async fn next(&mut self) -> Result<Option<Frame>> {
        loop {
            let mut header = [0u8; wire::HEADER_LEN];
            match self.r.read_exact(&mut header).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(e.into()),
            }
            let len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]) as usize;
            if len > MAX_FRAME {
                bail!("a frame of {len} bytes");
            }
            self.buf.resize(len, 0);
            self.r.read_exact(&mut self.buf).await.context("a truncated frame")?;
            if let Some(frame) = parse(header[0], &self.buf)? {
                return Ok(Some(frame));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_what_the_agent_writes() {
        let mut out = Vec::new();
        wire::symbol_frame(&mut out, 1, &Symbol::Pod { namespace: "x".into(), name: "a".into() });
        let at = wire::begin_frame(&mut out, wire::TAG_EVENTS);
        let ev = Compact { time_ns: 7, src_name: 1, ..Compact::default() };
        ev.encode(&mut out);
        ev.encode(&mut out);
        wire::end_frame(&mut out, at);
        let at = wire::begin_frame(&mut out, wire::TAG_LAGGED);
        out.extend_from_slice(&3u64.to_le_bytes());
        wire::end_frame(&mut out, at);
        let mut r = FrameReader::new(&out[..]);
        assert!(matches!(r.next().await.unwrap(), Some(Frame::Symbol(1, Symbol::Pod { .. }))));
        match r.next().await.unwrap() {
            Some(Frame::Events(evs)) => assert_eq!(evs, vec![ev, ev]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(r.next().await.unwrap(), Some(Frame::Lagged(3))));
        assert!(r.next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_huge_symbol_id_is_refused() {
        let mut out = Vec::new();
        wire::symbol_frame(&mut out, u32::MAX, &Symbol::Pod { namespace: "x".into(), name: "a".into() });
        let mut r = FrameReader::new(&out[..]);
        assert!(r.next().await.is_err());
    }
}
