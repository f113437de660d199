use super::*;
use crate::events::wire::{self, Symbol};
use tokio::io::AsyncWriteExt;

fn pod(ns: &str, name: &str) -> Symbol {
    Symbol::Pod { namespace: ns.into(), name: name.into() }
}

fn ev(time_ns: u64, src_name: u32) -> Compact {
    Compact { time_ns, src_name, count: 1, family: palisade_common::FAMILY_V4, ..Default::default() }
}

/// An agent's frames: the symbols, then the events in one frame.
fn frames(symbols: &[(u32, Symbol)], events: &[Compact]) -> Vec<u8> {
    let mut out = Vec::new();
    for (id, s) in symbols {
        wire::symbol_frame(&mut out, *id, s);
    }
    let at = wire::begin_frame(&mut out, wire::TAG_EVENTS);
    for e in events {
        e.encode(&mut out);
    }
    wire::end_frame(&mut out, at);
    out
}

type Open = std::pin::Pin<Box<dyn Future<Output = Result<Box<dyn AsyncRead + Unpin + Send>>> + Send>>;

fn bytes(b: Vec<u8>) -> Open {
    Box::pin(async move { Ok(Box::new(std::io::Cursor::new(b)) as Box<dyn AsyncRead + Unpin + Send>) })
}

fn duplex(r: tokio::io::DuplexStream) -> Open {
    Box::pin(async move { Ok(Box::new(r) as Box<dyn AsyncRead + Unpin + Send>) })
}

fn opts(ms: u64, max_buffered: usize) -> Options {
    Options { window: Duration::from_millis(ms), max_buffered }
}

/// Every item until the stream ends.
async fn all(mut m: Merged) -> (Merged, Vec<Item>) {
    let mut items = Vec::new();
    while let Some(b) = tokio::time::timeout(Duration::from_secs(10), m.recv()).await.expect("the merge ends") {
        items.extend(b);
    }
    (m, items)
}

fn events(items: &[Item]) -> Vec<(u32, u64)> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Event { node, event } => Some((*node, event.time_ns)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn streams_merge_in_time_order_with_names_renamed() {
    // Both agents call their first pod symbol 1: the merged table tells
    // them apart.
    let a = frames(&[(1, pod("x", "a"))], &[ev(10, 1), ev(30, 1), ev(50, 1)]);
    let b = frames(&[(1, pod("y", "b"))], &[ev(20, 1), ev(40, 1), ev(60, 1)]);
    let m = merge(vec![("n1".into(), bytes(a)), ("n2".into(), bytes(b))], opts(250, 1000));
    let (m, items) = all(m).await;
    assert_eq!(events(&items), [(0, 10), (1, 20), (0, 30), (1, 40), (0, 50), (1, 60)]);
    for i in &items {
        if let Item::Event { node, event } = i {
            let want = if *node == 0 { ("x", "a") } else { ("y", "b") };
            let e = m.event(event);
            assert_eq!((e.source.namespace.as_deref(), e.source.pod.as_deref()), (Some(want.0), Some(want.1)));
        }
    }
    let gone: Vec<_> = items.iter().filter(|i| matches!(i, Item::Gone { error: None, .. })).collect();
    assert_eq!(gone.len(), 2, "both ends reported: {items:?}");
    assert_eq!(m.counters.delivered.load(Ordering::Relaxed), 6);
    assert_eq!(m.counters.late.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn events_out_of_order_within_the_window_are_reordered() {
    // One node's own events slightly out of order (several CPUs share the
    // ring), and the other node's earlier events arriving later.
    let (mut w1, r1) = tokio::io::duplex(1 << 16);
    let (mut w2, r2) = tokio::io::duplex(1 << 16);
    let mut m = merge(vec![("n1".into(), duplex(r1)), ("n2".into(), duplex(r2))], opts(300, 1000));
    w1.write_all(&frames(&[], &[ev(100, 0), ev(90, 0), ev(300, 0)])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    w2.write_all(&frames(&[], &[ev(95, 0), ev(200, 0)])).await.unwrap();
    drop((w1, w2));
    let mut items = Vec::new();
    while let Some(b) = m.recv().await {
        items.extend(b);
    }
    assert_eq!(events(&items), [(0, 90), (1, 95), (0, 100), (1, 200), (0, 300)]);
}

#[tokio::test]
async fn a_silent_node_delays_the_others_by_the_window_only() {
    let (mut w1, r1) = tokio::io::duplex(1 << 16);
    let (_silent, r2) = tokio::io::duplex(1 << 16);
    let mut m = merge(vec![("n1".into(), duplex(r1)), ("n2".into(), duplex(r2))], opts(100, 1000));
    let sent = Instant::now();
    w1.write_all(&frames(&[], &[ev(now_ns(), 0), ev(now_ns(), 0)])).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        let b = tokio::time::timeout(Duration::from_secs(2), m.recv()).await.expect("not stalled").unwrap();
        got.extend(events(&b));
    }
    let waited = sent.elapsed();
    assert!(waited >= Duration::from_millis(100), "held for the window: {waited:?}");
    assert!(waited < Duration::from_millis(600), "not much longer: {waited:?}");
    // With both nodes sending, an event leaves once both are past it.
    drop(_silent);
}

#[tokio::test]
async fn a_node_that_goes_away_is_reported_and_the_rest_go_on() {
    let (mut w1, r1) = tokio::io::duplex(1 << 16);
    let (mut w2, r2) = tokio::io::duplex(1 << 16);
    let unreachable: Open = Box::pin(async { Err(anyhow::anyhow!("no route to n3")) });
    let mut m =
        merge(vec![("n1".into(), duplex(r1)), ("n2".into(), duplex(r2)), ("n3".into(), unreachable)], opts(100, 1000));
    // n2 dies in the middle of a frame.
    let mut cut = frames(&[], &[ev(5, 0)]);
    cut.truncate(cut.len() - 10);
    w2.write_all(&cut).await.unwrap();
    drop(w2);
    let mut gone = Vec::new();
    let mut got = Vec::new();
    w1.write_all(&frames(&[], &[ev(now_ns(), 0)])).await.unwrap();
    while got.is_empty() || gone.len() < 2 {
        let b = tokio::time::timeout(Duration::from_secs(2), m.recv()).await.expect("not stalled").unwrap();
        got.extend(events(&b));
        gone.extend(b.into_iter().filter_map(|i| match i {
            Item::Gone { node, error } => Some((m.node(node).to_string(), error.is_some())),
            _ => None,
        }));
    }
    gone.sort();
    assert_eq!(gone, [("n2".to_string(), true), ("n3".to_string(), true)]);
    assert_eq!(got.len(), 1, "n1 goes on; the cut frame of n2 is not delivered");
    // n1 keeps streaming after the others went.
    w1.write_all(&frames(&[], &[ev(now_ns(), 0)])).await.unwrap();
    let b = tokio::time::timeout(Duration::from_secs(2), m.recv()).await.expect("not stalled").unwrap();
    assert_eq!(events(&b).len(), 1);
}

#[tokio::test]
async fn an_undefined_symbol_ends_that_node_with_an_error() {
    let bad = frames(&[], &[ev(1, 7)]);
    let good = frames(&[(3, pod("x", "a"))], &[ev(2, 3)]);
    let (_, items) = all(merge(vec![("n1".into(), bytes(bad)), ("n2".into(), bytes(good))], opts(50, 1000))).await;
    assert_eq!(events(&items), [(1, 2)]);
    assert!(items.iter().any(|i| matches!(i, Item::Gone { node: 0, error: Some(e) } if e.contains("never defined"))));
}

#[tokio::test]
async fn the_window_is_bounded() {
    // A silent node would hold everything for the window; beyond
    // max_buffered the oldest leave early, in order.
    let (mut w1, r1) = tokio::io::duplex(1 << 20);
    let (_silent, r2) = tokio::io::duplex(1 << 16);
    let mut m = merge(vec![("n1".into(), duplex(r1)), ("n2".into(), duplex(r2))], opts(60_000, 100));
    let t = now_ns();
    for chunk in 0..10u64 {
        let evs: Vec<Compact> = (0..100).map(|i| ev(t + chunk * 100 + i, 0)).collect();
        w1.write_all(&frames(&[], &evs)).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 900 {
        let b = tokio::time::timeout(Duration::from_secs(2), m.recv()).await.expect("released early").unwrap();
        got.extend(events(&b));
    }
    assert!(got.windows(2).all(|w| w[0].1 < w[1].1), "in order");
    let peak = m.counters.peak_buffered.load(Ordering::Relaxed) as usize;
    assert!(peak <= 100 + 100, "max_buffered and one frame: peak {peak}");
    assert!(m.counters.forced.load(Ordering::Relaxed) >= 900);
}

#[tokio::test]
async fn lagged_counts_are_passed_on() {
    let mut b = frames(&[], &[ev(1, 0)]);
    let at = wire::begin_frame(&mut b, wire::TAG_LAGGED);
    b.extend_from_slice(&42u64.to_le_bytes());
    wire::end_frame(&mut b, at);
    let (m, items) = all(merge(vec![("n1".into(), bytes(b))], opts(50, 1000))).await;
    assert!(items.contains(&Item::Lagged { node: 0, missed: 42 }));
    assert_eq!(m.counters.lagged.load(Ordering::Relaxed), 42);
}

/// The heap alone, at chosen instants: the released events' (node, time).
fn release(h: &mut Heap, now: Instant) -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    h.release(now, &mut out);
    events(&out)
}

#[test]
fn events_leave_once_every_live_node_is_past_them() {
    // A long window: only the watermark lets events out here.
    let t0 = Instant::now();
    let mut h = Heap::new(2, opts(300, 100), Arc::default());
    h.push(0, vec![ev(10, 0), ev(30, 0)], t0);
    // Node 1 has sent nothing yet: everything waits (within the window).
    assert!(release(&mut h, t0).is_empty());
    h.push(1, vec![ev(20, 0)], t0);
    // Watermark 20: 10 and 20 go, 30 waits for node 1.
    assert_eq!(release(&mut h, t0), [(0, 10), (1, 20)]);
    h.push(1, vec![ev(40, 0)], t0);
    assert_eq!(release(&mut h, t0), [(0, 30)]);
    // An idle node holds nothing back longer than the window.
    assert_eq!(release(&mut h, t0 + Duration::from_millis(300)), [(1, 40)]);
}

#[test]
fn a_gone_node_holds_nothing_back_and_a_joined_one_does() {
    let t0 = Instant::now();
    let mut h = Heap::new(2, opts(60_000, 100), Arc::default());
    h.push(0, vec![ev(5, 0), ev(1, 0), ev(3, 0)], t0);
    assert!(release(&mut h, t0).is_empty());
    h.gone(1);
    assert_eq!(release(&mut h, t0), [(0, 1), (0, 3), (0, 5)]);
    // Node 2 joins: node 0's newer events wait for it.
    h.join(2);
    h.push(0, vec![ev(9, 0)], t0);
    assert!(release(&mut h, t0).is_empty());
    h.push(2, vec![ev(7, 0), ev(12, 0)], t0);
    assert_eq!(release(&mut h, t0), [(2, 7), (0, 9)]);
    h.gone(0);
    assert_eq!(release(&mut h, t0), [(2, 12)]);
    assert!(h.heap.is_empty());
}

#[tokio::test]
async fn a_node_joins_a_running_merge_under_its_name() {
    let (mut w1, r1) = tokio::io::duplex(1 << 16);
    let (mut m, joiner) = merge_joinable(vec![("n1".into(), duplex(r1))], opts(60_000, 1000));
    let (mut w2, r2) = tokio::io::duplex(1 << 16);
    let n2 = joiner.add("n2".into(), duplex(r2));
    let unreachable: Open = Box::pin(async { Err(anyhow::anyhow!("no route to n3")) });
    let n3 = joiner.add("n3".into(), unreachable);
    assert_eq!((n2, n3), (1, 2));
    let mut items = Vec::new();
    while !items.iter().any(|i| matches!(i, Item::Gone { .. })) {
        items.extend(tokio::time::timeout(Duration::from_secs(2), m.recv()).await.expect("n3 reported").unwrap());
    }
    assert_eq!(items, [Item::Gone { node: n3, error: Some("no route to n3".into()) }]);
    assert_eq!(m.node(n3), "n3");
    // With the window a minute long, n1's event waits for n2 (which
    // joined and is live), and both leave in order once n2 is past it.
    w1.write_all(&frames(&[(1, pod("x", "a"))], &[ev(20, 1)])).await.unwrap();
    w2.write_all(&frames(&[(1, pod("y", "b"))], &[ev(10, 1), ev(30, 1)])).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        let b = tokio::time::timeout(Duration::from_secs(2), m.recv()).await.expect("released").unwrap();
        for i in &b {
            if let Item::Event { node, event } = i {
                got.push((m.node(*node).to_string(), m.event(event).source.pod.clone().unwrap_or_default()));
            }
        }
    }
    assert_eq!(got, [("n2".to_string(), "b".to_string()), ("n1".to_string(), "a".to_string())]);
    // Every node gone: the merge goes on while the joiner lives, and ends
    // when it is dropped.
    drop((w1, w2));
    let mut rest = Vec::new();
    while rest.iter().filter(|i| matches!(i, Item::Gone { .. })).count() < 2 {
        rest.extend(tokio::time::timeout(Duration::from_secs(2), m.recv()).await.expect("gone").unwrap());
    }
    assert_eq!(events(&rest), [(n2, 30)]);
    assert!(tokio::time::timeout(Duration::from_millis(200), m.recv()).await.is_err(), "ended with a joiner");
    drop(joiner);
    assert!(tokio::time::timeout(Duration::from_secs(2), m.recv()).await.expect("ends").is_none());
}
