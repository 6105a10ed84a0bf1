//! `websocket.*`: the SignalFlow websocket protocol served to clients, with its defaults and
//! checks.

use crate::settings::Problems;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The SignalFlow websocket protocol served to clients (`/v2/signalflow/connect`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebsocketSettings {
    /// `KEEP_ALIVE` to every client this often (clients give up after 60 s of silence).
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// Time for a client to `authenticate` after connecting (close 4401 after it).
    #[serde(with = "humantime_serde")]
    pub auth_timeout: Duration,
    /// Most open channels per socket (the service allows 300).
    pub max_channels_per_socket: usize,
    /// Largest request frame a client may send (close 1009 beyond).
    pub max_message_bytes: usize,
    /// Frames queued per socket before its client is disconnected as too slow.
    pub outbound_queue: usize,
    /// Longest one frame write may take before the client is presumed gone.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
}

impl Default for WebsocketSettings {
    fn default() -> Self {
        WebsocketSettings {
            keepalive_interval: Duration::from_secs(30),
            auth_timeout: Duration::from_secs(5),
            max_channels_per_socket: 300,
            max_message_bytes: 1024 * 1024,
            outbound_queue: 1024,
            write_timeout: Duration::from_secs(10),
        }
    }
}

impl WebsocketSettings {
    pub fn check(&self, problems: &mut Problems) {
        problems.positive(self.max_channels_per_socket, "websocket.max_channels_per_socket");
        problems.positive(self.max_message_bytes, "websocket.max_message_bytes");
        problems.at_least_two(self.outbound_queue, "websocket.outbound_queue");
        problems.nonzero(self.keepalive_interval, "websocket.keepalive_interval");
        problems.nonzero(self.auth_timeout, "websocket.auth_timeout");
        problems.nonzero(self.write_timeout, "websocket.write_timeout");
    }
}
