//! The `levee` command: CLI wiring only.

use clap::{Args, Parser, Subcommand};
use levee_server::{Config, Server};
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "levee", version, about = "Live audio spaces: publish once, every listener hears it live.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Run the server with the demo space live (a looped programme shipped with levee).
    Demo(ServeArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Base URL for absolute URLs in API answers, when clients reach the node under another name.
    #[arg(long)]
    public_url: Option<String>,
    /// Channels of every space's output stream (1 or 2).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    channels: u8,
    /// Chunks kept per space (the fan-out window).
    #[arg(long, default_value_t = 256)]
    ring_chunks: usize,
    /// Cut a listener whose write cannot complete for this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    stall_timeout: Duration,
    /// Kernel send buffer per listener socket, bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    listener_sndbuf: usize,
    /// Time allowed to send a request head.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    header_timeout: Duration,
    /// Drop a source that sends nothing for this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    source_idle_timeout: Duration,
    /// Open connections the node accepts.
    #[arg(long, default_value_t = 18_000)]
    max_connections: usize,
    /// Spaces the node holds.
    #[arg(long, default_value_t = 10_000)]
    max_spaces: usize,
    /// Shortest chunk, ms (latency floor).
    #[arg(long, default_value_t = 20)]
    chunk_min_ms: u32,
    /// Longest chunk, ms (latency ceiling under load).
    #[arg(long, default_value_t = 500)]
    chunk_max_ms: u32,
}

impl ServeArgs {
    fn config(&self) -> Config {
        let mut c = Config {
            listen: self.listen,
            public_url: self.public_url.clone(),
            channels: self.channels,
            ring_chunks: self.ring_chunks.max(2),
            stall_timeout: self.stall_timeout,
            listener_sndbuf: self.listener_sndbuf,
            header_timeout: self.header_timeout,
            source_idle_timeout: self.source_idle_timeout,
            max_connections: self.max_connections,
            max_spaces: self.max_spaces.max(1),
            ..Config::default()
        };
        c.cadence.min_ms = self.chunk_min_ms.max(1);
        c.cadence.max_ms = self.chunk_max_ms.max(c.cadence.min_ms);
        c
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "levee=info,levee_server=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let (args, demo) = match &cli.command {
            Command::Serve(a) => (a, false),
            Command::Demo(a) => (a, true),
        };
        let server = match Server::start(args.config()).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("levee: cannot listen on {}: {e}", args.listen);
                return std::process::ExitCode::FAILURE;
            }
        };
        let base = format!("http://{}", server.addr);
        let demo_space = demo.then(|| levee_server::demo::start(server.hub.clone()));
        // The first line of stdout is machine-readable: scripts and tests wait for it, and
        // everything (the demo space included) is ready when it appears.
        println!("levee listening on {base}");
        if let Some(space) = demo_space {
            let id = space.snapshot().id;
            println!("demo space live: open {base}/space/{id} (lobby: {base}/)");
            println!("listen with: ffplay {base}/live/{id}.ogg");
        }
        tokio::select! {
            _ = server.wait() => {}
            _ = tokio::signal::ctrl_c() => eprintln!("levee: shutting down"),
        }
        std::process::ExitCode::SUCCESS
    })
}
