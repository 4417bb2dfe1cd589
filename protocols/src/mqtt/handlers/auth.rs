//! AUTH (v5 enhanced authentication). We offer no authentication method: a CONNECT naming one
//! is refused with 0x8C, so an AUTH afterwards is a protocol error (0x82).

use crate::mqtt::codec::reason;
use crate::mqtt::connection::{Connection, End};
use crate::mqtt::kernel::MqttKernel;

pub fn handle<K: MqttKernel>(_connection: &Connection<K>) -> Result<(), End> {
    Err(End::protocol(
        reason::PROTOCOL_ERROR,
        "AUTH without an authentication method",
    ))
}
