//! DISCONNECT from the client: the will is dropped unless v5 reason 0x04 asks for it; a v5
//! client may change its session expiry, but not from 0 to non-zero (protocol error).

use crate::mqtt::codec::reason;
use crate::mqtt::connection::{Connection, End};
use crate::mqtt::kernel::MqttKernel;

pub fn handle<K: MqttKernel>(
    connection: &Connection<K>,
    code: u8,
    session_expiry_s: Option<u32>,
) -> Result<(), End> {
    if let Some(expiry_s) = session_expiry_s {
        if connection.session_expiry_s.get() == 0 && expiry_s != 0 {
            return Err(End::protocol(
                reason::PROTOCOL_ERROR,
                "DISCONNECT sets a session expiry after CONNECT said 0",
            ));
        }
        connection.session_expiry_s.set(expiry_s);
    }
    Err(End::Disconnect {
        with_will: code == reason::DISCONNECT_WITH_WILL,
    })
}
