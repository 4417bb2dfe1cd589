//! UNSUBSCRIBE: remove each filter; v5 answers per filter (0x00 or 0x11 no subscription).

use crate::mqtt::codec::{self, reason, Unsubscribe};
use crate::mqtt::connection::{Connection, End};
use crate::mqtt::kernel::MqttKernel;

pub fn handle<K: MqttKernel>(
    connection: &Connection<K>,
    unsubscribe: Unsubscribe,
) -> Result<(), End> {
    let codes: Vec<u8> = unsubscribe
        .filters
        .iter()
        .map(|filter| {
            if connection.engine.unsubscribe(&connection.client_id, filter) {
                reason::SUCCESS
            } else {
                reason::NO_SUBSCRIPTION_EXISTED
            }
        })
        .collect();
    let level = connection.level;
    connection
        .link
        .write(|out| codec::encode_unsuback(out, level, unsubscribe.pkid, &codes));
    Ok(())
}
