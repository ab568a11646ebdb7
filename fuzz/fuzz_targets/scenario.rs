//! `levee_storm::plan::scenario::Scenario::from_toml`: storm's TOML scenario files (as in
//! `scenarios/`), then `validate` and what a run computes from a valid one.
//!
//! Properties: no panic on any text; errors are `Err` with a reason; a scenario that
//! validates has a bounded plan (`planned_listeners` within `MAX_LISTENERS`, `run_length`
//! within `MAX_RUN`, windows in time order) and, when small, a schedule with one slot per
//! planned listener.
#![no_main]

use levee_storm::plan::scenario::{schedule, Scenario, MAX_LISTENERS, MAX_RUN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let sc = match Scenario::from_toml(text) {
        Ok(sc) => sc,
        Err(why) => {
            assert!(!why.to_string().is_empty());
            return;
        }
    };
    match sc.validate() {
        Err(why) => assert!(!why.to_string().is_empty()),
        Ok(()) => {
            let planned = sc.planned_listeners();
            assert!(planned <= MAX_LISTENERS);
            assert!(sc.run_length() <= MAX_RUN);
            let windows = sc.windows();
            assert!(windows.windows(2).all(|w| w[0].2 <= w[1].1));
            if planned <= 5_000 {
                assert_eq!(schedule(&sc).len() as u64, planned);
            }
        }
    }
});
