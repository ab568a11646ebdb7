//! The join API's request body: `levee_server::api::join::parse_join_request`
//! (`POST /api/spaces/{id}/join`).
//!
//! Properties: no panic on any bytes; a body of only ASCII whitespace is the empty request;
//! an accepted body's fields, written back as JSON, parse to the same request (nothing is
//! lost or invented); a refusal has a reason.
#![no_main]

use levee_server::api::join::{parse_join_request, JoinReq};
use libfuzzer_sys::fuzz_target;
use serde_json::json;

fuzz_target!(|data: &[u8]| {
    match parse_join_request(data) {
        Ok(req) => {
            if data.iter().all(u8::is_ascii_whitespace) {
                assert_eq!(req, JoinReq::default());
            }
            let mut obj = serde_json::Map::new();
            if let Some(q) = &req.queue_token {
                obj.insert("queue_token".into(), json!(q));
            }
            if let Some(p) = &req.pow {
                obj.insert("pow".into(), json!({"seed": p.seed, "nonce": p.nonce}));
            }
            let again = serde_json::to_vec(&obj).expect("a JSON object");
            assert_eq!(parse_join_request(&again), Ok(req));
        }
        Err(why) => assert!(!why.is_empty()),
    }
});
