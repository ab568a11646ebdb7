//! The generator's network and clock: one HTTP/1 client (answer heads parsed by `httparse`),
//! the join API's requests and answers, sockets bound to a source address with kernel receive
//! timestamps, and wall-clock time.

pub mod clock;
pub mod http;
pub mod join_api;
pub mod socket;
pub mod uring;
