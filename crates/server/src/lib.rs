//! levee's IO around the pure core: the connection front, listeners, ingest, the HTTP API,
//! metrics, the web pages and the demo programme.
//!
//! [`Server::start`] binds and serves; everything runs on the caller's tokio runtime.
#![warn(missing_docs, unreachable_pub)]

pub mod api;
pub mod audience;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod counters;
pub mod demo;
pub mod endpoints;
pub mod fanout;
pub mod http1;
pub mod hub;
pub mod random;
pub mod recorder;
pub mod shield;
pub mod stage;
pub mod ws;

pub use config::Config;
pub use hub::Hub;

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Pending connections the kernel may queue before `accept` (the kernel caps it at somaxconn).
/// A join storm lands here first: a deep queue turns a burst into a short wait, not resets.
pub const LISTEN_BACKLOG: i32 = 8192;

/// A running server.
pub struct Server {
    /// The address it listens on (useful with port 0).
    pub addr: SocketAddr,
    /// Its spaces and counters.
    pub hub: Arc<Hub>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Binds `config.listen`, creates the nftables table when `config.shield.nft_table` is
    /// set (blocking: one `nft` run), and starts accepting. The error says what failed.
    pub async fn start(config: Config) -> std::io::Result<Server> {
        let listen = config.listen;
        let cannot_listen = |e: std::io::Error| {
            std::io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}"))
        };
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(listen),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .map_err(cannot_listen)?;
        socket.set_reuse_address(true).map_err(cannot_listen)?;
        if config.reuse_port {
            socket.set_reuse_port(true).map_err(cannot_listen)?;
        }
        socket.set_nonblocking(true).map_err(cannot_listen)?;
        socket.bind(&listen.into()).map_err(cannot_listen)?;
        socket.listen(LISTEN_BACKLOG).map_err(cannot_listen)?;
        let listener = TcpListener::from_std(socket.into()).map_err(cannot_listen)?;
        let addr = listener.local_addr().map_err(cannot_listen)?;
        let hub = Hub::new(config);
        hub.fanout.start()?;
        if let Some(table) = &hub.config.shield.nft_table {
            let mirror = shield::nft::Mirror::start(table, addr.port(), &hub.shield.exempt())
                .map_err(|e| {
                    hub.fanout.stop();
                    std::io::Error::other(e)
                })?;
            hub.shield.mirror_to(mirror);
        }
        recorder::start(&hub, &hub.config.record).map_err(|e| {
            hub.fanout.stop();
            hub.shield.stop_mirror();
            std::io::Error::other(e)
        })?;
        if let Some(cfg) = &hub.config.cluster {
            cluster::join(&hub, cfg).await.map_err(|e| {
                hub.fanout.stop();
                hub.shield.stop_mirror();
                std::io::Error::other(e)
            })?;
        }
        let router = api::router(hub.clone());
        let task = tokio::spawn(endpoints::front::accept_loop(listener, hub.clone(), router));
        tokio::spawn(shield_ticker(hub.clone()));
        Ok(Server { addr, hub, task })
    }

    /// Stops accepting and ends background tasks (the nftables table is deleted).
    pub fn abort(&self) {
        self.task.abort();
        self.hub.fanout.stop();
        self.hub.shield.stop_mirror();
    }

    /// Serves until the accept loop ends.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Feeds the shield's escalation once a second, node-wide and per space.
async fn shield_ticker(hub: Arc<Hub>) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let now = clock::mono_us();
        let connections = hub
            .node
            .connections
            .load(std::sync::atomic::Ordering::Relaxed);
        hub.shield.tick(connections, now);
        for space in hub.list() {
            space.shield.tick(now);
        }
        // The audience series (the same second: one walk of the spaces' list a second).
        api::audience::sample_all(&hub);
    }
}
