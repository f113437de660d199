//! One writer per pin directory (`datapath::bpffs::hold`): two agents
//! on one set of maps would each sync against its own record of what the
//! kernel holds. A datapath opened on a directory another one holds waits
//! until that one is gone, then goes on with the same maps.

use crate::fixture::{BpfDir, settings};
use palisade::datapath::Datapath;
use std::sync::mpsc;
use std::time::Duration;

#[test]
fn a_second_datapath_on_one_directory_waits_for_the_first() {
    palisade_e2e::require_root().expect("root");
    let dir = BpfDir::new();
    let first = Datapath::open(&dir.0, &settings()).expect("the first datapath");
    let revision = first.revision();
    let (opened, seen) = mpsc::channel();
    let path = dir.0.clone();
    let second = std::thread::spawn(move || {
        let revision = Datapath::open(&path, &settings()).map(|dp| dp.revision());
        opened.send(()).expect("the test waits for it");
        revision
    });
    assert!(
        seen.recv_timeout(Duration::from_secs(2)).is_err(),
        "a second datapath opened while the first held the directory"
    );
    drop(first);
    seen.recv_timeout(Duration::from_secs(60)).expect("the second datapath opens once the first is gone");
    let second = second.join().expect("no panic").expect("the second datapath");
    // It read the first one's pinned configuration and bumped its revision.
    assert_eq!(second, revision.wrapping_add(1), "the second datapath took over the first one's maps");
}
