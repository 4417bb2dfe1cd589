//! PINGREQ: answer PINGRESP (the read itself already reset the keep-alive timer).

use crate::mqtt::codec;
use crate::mqtt::connection::{Connection, End};
use crate::mqtt::kernel::MqttKernel;

pub fn handle<K: MqttKernel>(connection: &Connection<K>) -> Result<(), End> {
    connection.link.write(codec::encode_pingresp);
    Ok(())
}
