//! MQTT over WebSocket (MQTT 5 section 6, 3.1.1 section 6): every shard binds the WebSocket
//! port with SO_REUSEPORT like the TCP listener, upgrades HTTP requests for `/mqtt` (answering
//! the `mqtt` subprotocol when the client offers it) and serves the MQTT byte stream carried in
//! binary frames through the same `serve_connection` as TCP. async-tungstenite does the
//! handshake and framing over glommio's futures-io stream; `WsBytes` turns frames back into a
//! byte stream (an MQTT packet may span frames, and a frame may hold several packets).
//!
//! Concurrency contract: one task per connection on the accepting shard, like TCP.

use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use async_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::tungstenite::{Bytes, Message};
use async_tungstenite::WebSocketStream;
use futures_lite::io::{AsyncRead, AsyncWrite};
use futures_lite::{future, Stream};
use glommio::net::{TcpListener, TcpStream};
use rmq_protocols::mqtt::constants::{CONNECT_TIMEOUT_MS, MAX_PACKET_SIZE_BYTES};
use rmq_protocols::mqtt::serve_connection;
use tracing::debug;

use crate::shard::Shard;

/// The HTTP path MQTT clients connect to (Mosquitto, EMQX and the paho defaults).
pub const MQTT_WS_PATH: &str = "/mqtt";

/// The WebSocket subprotocol MQTT 3.1.1 and 5 name.
const MQTT_SUBPROTOCOL: &str = "mqtt";

/// Largest WebSocket message and frame we accept: one maximum MQTT packet (a client may split a
/// packet over frames, never needs a frame larger than the packet).
const MAX_WS_MESSAGE_BYTES: usize = MAX_PACKET_SIZE_BYTES;

/// Accepts WebSocket connections until the task is dropped (shutdown). Node shutdown closes
/// them through the shard's MQTT state, like TCP connections.
pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    let engine = super::engine(&shard);
    super::listener::accept_within_limit(&shard, listener, "mqtt-ws", move |stream, peer| {
        let engine = engine.clone();
        async move {
            match upgrade(stream).await {
                Ok(websocket) => serve_connection(engine, WsBytes::new(websocket), peer).await,
                Err(why) => debug!(%peer, why = %why, "mqtt websocket handshake failed"),
            }
        }
    })
    .await;
}

/// The HTTP upgrade, within the CONNECT deadline.
async fn upgrade(stream: TcpStream) -> Result<WebSocketStream<TcpStream>, String> {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_WS_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_WS_MESSAGE_BYTES));
    let handshake = async {
        async_tungstenite::accept_hdr_async_with_config(stream, check_request, Some(config))
            .await
            .map_err(|e| e.to_string())
    };
    future::or(handshake, async {
        glommio::timer::sleep(Duration::from_millis(CONNECT_TIMEOUT_MS)).await;
        Err("no WebSocket handshake in time".to_string())
    })
    .await
}

/// Accepts only `MQTT_WS_PATH`; picks the `mqtt` subprotocol when offered (a client that offers
/// none is served too, as Mosquitto does). The signature is tungstenite's `Callback`, whose
/// error type is a whole HTTP response.
#[allow(clippy::result_large_err)]
fn check_request(request: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    if request.uri().path() != MQTT_WS_PATH {
        let mut refusal = ErrorResponse::new(Some(format!("MQTT is served at {MQTT_WS_PATH}")));
        *refusal.status_mut() = StatusCode::NOT_FOUND;
        return Err(refusal);
    }
    let offers_mqtt = request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|name| name.trim().eq_ignore_ascii_case(MQTT_SUBPROTOCOL));
    if offers_mqtt {
        response.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(MQTT_SUBPROTOCOL),
        );
    }
    Ok(response)
}

/// A WebSocket connection as the MQTT byte stream it carries: reads yield the payloads of
/// binary messages in order (pings and pongs are answered by tungstenite and skipped here; a
/// text message is an error, MQTT section 6), each write sends one binary message.
pub struct WsBytes<S> {
    websocket: WebSocketStream<S>,
    /// The unread rest of the last binary message.
    pending: Bytes,
}

impl<S> WsBytes<S> {
    pub fn new(websocket: WebSocketStream<S>) -> WsBytes<S> {
        WsBytes {
            websocket,
            pending: Bytes::new(),
        }
    }
}

fn io_error(e: async_tungstenite::tungstenite::Error) -> io::Error {
    match e {
        async_tungstenite::tungstenite::Error::Io(e) => e,
        other => io::Error::other(other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsBytes<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            if !self.pending.is_empty() {
                let n = buf.len().min(self.pending.len());
                let chunk = self.pending.split_to(n);
                buf[..n].copy_from_slice(&chunk);
                return Poll::Ready(Ok(n));
            }
            let message = match Pin::new(&mut self.websocket).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Ok(0)),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(io_error(e))),
                Poll::Ready(Some(Ok(message))) => message,
            };
            match message {
                Message::Binary(data) => self.pending = data,
                Message::Close(_) => return Poll::Ready(Ok(0)),
                Message::Text(_) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "MQTT over WebSocket takes binary messages only",
                    )))
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsBytes<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        use futures_sink::Sink;
        let websocket = Pin::new(&mut self.websocket);
        match websocket.poll_ready(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(io_error(e))),
            Poll::Ready(Ok(())) => {}
        }
        let message = Message::Binary(Bytes::copy_from_slice(buf));
        match Pin::new(&mut self.websocket).start_send(message) {
            Ok(()) => Poll::Ready(Ok(buf.len())),
            Err(e) => Poll::Ready(Err(io_error(e))),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        use futures_sink::Sink;
        Pin::new(&mut self.websocket)
            .poll_flush(cx)
            .map_err(io_error)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        use futures_sink::Sink;
        Pin::new(&mut self.websocket)
            .poll_close(cx)
            .map_err(io_error)
    }
}
