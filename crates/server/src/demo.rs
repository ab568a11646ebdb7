//! The demo programme: a short Opus clip shipped in the repository, looped in real time into a
//! space as if a host were live. It goes through the same validation and track as any source.

use crate::clock::wall_us;
use crate::endpoints::ingest::publish;
use crate::hub::{Hub, Space};
use crate::shield::Access;
use levee_core::ingest::OggIngest;
use levee_core::packet::AudioPacket;
use levee_core::space::NewSpace;
use std::sync::Arc;
use std::time::Duration;

/// The clip: Ogg/Opus, mono, 24 s.
pub const CLIP: &[u8] = include_bytes!("../../../assets/demo.opus");
/// The demo space's identifier.
pub const DEMO_ID: &str = "demo";

/// Creates the demo space and starts looping the clip into it.
pub fn start(hub: Arc<Hub>) -> Arc<Space> {
    let mut ingest = OggIngest::new();
    let mut packets = Vec::new();
    ingest
        .push(CLIP, 0, &mut packets)
        .expect("the shipped demo clip is valid Ogg/Opus");
    let req = NewSpace {
        title: "levee demo: a looped live programme".into(),
        scheduled_start: None,
    };
    let space = hub
        .create(
            req.validate().expect("valid title"),
            Access::Open,
            Some(DEMO_ID),
        )
        .unwrap_or_else(|_| hub.get(DEMO_ID).expect("demo space exists"));
    // The programme is on air from now on.
    space.go_live();
    tokio::spawn(run(hub, space.clone(), packets));
    space
}

async fn run(hub: Arc<Hub>, space: Arc<Space>, clip: Vec<AudioPacket>) {
    let generation = space.track.new_source();
    let mut next = tokio::time::Instant::now();
    for packet in clip.iter().cycle() {
        next += Duration::from_micros(packet.samples as u64 * 1_000_000 / 48_000);
        tokio::time::sleep_until(next).await;
        if !space.track.is_current_source(generation) {
            tracing::info!("demo programme yields to a live source");
            return;
        }
        let mut batch = vec![AudioPacket {
            capture_us: wall_us(),
            ..packet.clone()
        }];
        if !publish(&hub, &space, &mut batch) {
            return;
        }
    }
}
