//! UNSUBSCRIBE: remove each filter and answer UNSUBACK once every shard stopped routing the
//! removed filters here; v5 answers per filter (0x00 or 0x11 no subscription).

use crate::mqtt::codec::{self, reason, Unsubscribe};
use crate::mqtt::connection::{Connection, End};
use crate::mqtt::kernel::MqttKernel;

pub async fn handle<K: MqttKernel>(
    connection: &Connection<K>,
    unsubscribe: Unsubscribe,
) -> Result<(), End> {
    let mut waiters = Vec::new();
    let codes: Vec<u8> = unsubscribe
        .filters
        .iter()
        .map(|filter| {
            let (existed, waiter) = connection.engine.unsubscribe(&connection.client_id, filter);
            waiters.extend(waiter);
            if existed {
                reason::SUCCESS
            } else {
                reason::NO_SUBSCRIPTION_EXISTED
            }
        })
        .collect();
    for waiter in waiters {
        let _ = waiter.recv_async().await;
    }
    let level = connection.level;
    connection
        .link
        .write(|out| codec::encode_unsuback(out, level, unsubscribe.pkid, &codes));
    Ok(())
}
