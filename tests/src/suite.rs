//! A test suite sharing one expensive fixture (pods, agent) across cases:
//! built by the first case that runs, reset before each case, torn down
//! before the process exits, failed or not.

use anyhow::Result;
use libtest_mimic::{Arguments, Failed, Trial};
use std::sync::{Arc, Mutex};

/// What a suite's fixture provides.
pub trait Fixture: Sized + Send + 'static {
    fn setup() -> Result<Self>;
    /// Brings the fixture back to its base state before each case.
    fn reset(&self) -> Result<()>;
}

pub type Case<E> = (&'static str, fn(&E) -> Result<()>);

/// Runs `cases` with libtest's command line (filters, --list, ...).
pub fn run<E: Fixture>(cases: Vec<Case<E>>) -> ! {
    let args = Arguments::from_args();
    let env: Arc<Mutex<Option<Result<E, String>>>> = Arc::new(Mutex::new(None));
    let trials: Vec<Trial> = cases
        .into_iter()
        .map(|(name, case)| {
            let env = env.clone();
            Trial::test(name, move || {
                let mut guard = env.lock().unwrap_or_else(|p| p.into_inner());
                let env = guard.get_or_insert_with(|| E::setup().map_err(|e| format!("{e:#}")));
                let env = env.as_ref().map_err(|e| Failed::from(format!("setting up: {e}")))?;
                env.reset().and_then(|_| case(env)).map_err(|e| Failed::from(format!("{e:#}")))
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    // Tear down (namespaces, interfaces, agent, pins) before exiting.
    drop(env.lock().unwrap_or_else(|p| p.into_inner()).take());
    conclusion.exit()
}
