//! The flow record's stated bound: 100,000 distinct keys (the default
//! capacity) fit in 50 MiB of heap, measured with a counting allocator,
//! and a flood of new keys beyond it keeps the record at its capacity.

use palisade::flows::{FlowKey, Record, Remote, Seen, Settings};
use palisade::policy::{Direction, Workload};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

// SAFETY: delegates to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(l.size() as isize, Ordering::Relaxed) + l.size() as isize;
        PEAK.fetch_max(now, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// A realistic key: namespaces and workload names of ordinary length,
/// a pod peer or an external address.
fn key(i: u32) -> FlowKey {
    let peer = if i.is_multiple_of(2) {
        Remote::Pod {
            namespace: format!("team-payments-{}", i % 50),
            workload: Workload { kind: "Deployment".into(), name: format!("checkout-service-{}", i % 997) },
        }
    } else {
        Remote::External { ip: std::net::IpAddr::from((0x0a00_0000u32 + i).to_be_bytes()) }
    };
    FlowKey {
        namespace: format!("team-storefront-{}", i % 40),
        workload: Workload { kind: "Deployment".into(), name: format!("frontend-web-{}", i % 1013) },
        direction: if i.is_multiple_of(3) { Direction::Ingress } else { Direction::Egress },
        peer,
        protocol: "TCP".into(),
        port: Some((i % 60000) as u16),
        port_name: i.is_multiple_of(4).then(|| "http-metrics".to_string()),
        verdict: Seen::Allowed,
    }
}

#[test]
fn a_hundred_thousand_keys_fit_in_fifty_mebibytes() {
    let settings = Settings::default();
    assert_eq!(settings.capacity, 100_000);
    let before = LIVE.load(Ordering::Relaxed);
    let r = Record::new("n1", settings, 0);
    for i in 0..100_000 {
        r.add(key(i), 1, u64::from(i));
    }
    let used = LIVE.load(Ordering::Relaxed) - before;
    assert_eq!(r.len(), 100_000);
    println!("100k flow keys: {:.1} MiB", used as f64 / (1 << 20) as f64);
    assert!(used < 50 << 20, "{used} bytes");
    // A flood of new keys: the oldest go, the record stays bounded.
    for i in 100_000..150_000 {
        r.add(key(i), 1, u64::from(i));
    }
    assert!(r.len() <= 100_000);
    assert!(r.losses().0 >= 50_000);
    let after = LIVE.load(Ordering::Relaxed) - before;
    let peak = PEAK.load(Ordering::Relaxed) - before;
    println!(
        "after a flood of 50k more: {:.1} MiB, peak {:.1} MiB",
        after as f64 / (1 << 20) as f64,
        peak as f64 / (1 << 20) as f64
    );
    assert!(after < 50 << 20, "{after} bytes after the flood");
    assert!(peak < 50 << 20, "{peak} bytes at the peak (an eviction rebuilds the table)");
}
