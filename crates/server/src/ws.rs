//! WebSocket helpers for connections still served by tokio (hosts, refused listeners). A leaf
//! module; the writer shards have their own bounded close handshake (`fanout::shard`).

use levee_core::wsframe;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Time a peer gets to answer our close frame before the socket is dropped.
pub const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// Ends a WebSocket as RFC 6455 asks: send the close frame, stop sending (FIN), then read
/// until the peer closes too (at most [`CLOSE_LINGER`], at most 4 KiB). Dropping the socket at
/// once would reset it if the peer's answer arrived first, and the peer could lose our frame.
pub async fn ws_close(stream: &mut TcpStream, code: u16, reason: &str) {
    let frame = wsframe::close_frame(code, reason);
    let done = async {
        stream.write_all(&frame).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 512];
        let mut total = 0;
        loop {
            let n = tokio::io::AsyncReadExt::read(stream, &mut sink).await?;
            total += n;
            if n == 0 || total > 4096 {
                return Ok::<(), std::io::Error>(());
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_LINGER, done).await;
}
