//! The media endpoints: the connection front (accept, bound, read the head, route), the
//! listener endpoints that hand sockets to the fan-out engine, and the sources' ingest.

pub mod front;
pub mod ingest;
pub mod listen;
pub mod replay;
pub mod whip;
