//! `delay`: a TCP proxy that holds every chunk it forwards for a fixed time in each direction,
//! keeping their order, so that a peer on loopback (Redis) answers as if it were further away.
//! A chunk's hold starts when it arrives, so the proxy adds latency, not a cap on throughput.

use std::{io, net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    time::Instant,
};

/// Serves on `listener`, forwarding each connection to `target` with `delay` each way, until
/// `stop` resolves.
pub async fn serve_delay(
    listener: TcpListener,
    target: SocketAddr,
    delay: Duration,
    stop: impl std::future::Future<Output = ()>,
) -> io::Result<()> {
    let accept = async {
        loop {
            let (client, _) = listener.accept().await?;
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::join!(
                    pump(client_read, server_write, delay),
                    pump(server_read, client_write, delay),
                );
            });
        }
    };
    tokio::select! {
        accepted = accept => accepted,
        () = stop => Ok(()),
    }
}

/// Copies `from` to `to`, each chunk written `delay` after it was read.
async fn pump(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin + Send + 'static,
    delay: Duration,
) {
    let (chunks, mut held) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, chunk)) = held.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buffer = vec![0; 64 * 1024];
    while let Ok(read @ 1..) = from.read(&mut buffer).await {
        if chunks
            .send((Instant::now() + delay, buffer[..read].to_vec()))
            .is_err()
        {
            break;
        }
    }
    drop(chunks);
    let _ = writer.await;
}
