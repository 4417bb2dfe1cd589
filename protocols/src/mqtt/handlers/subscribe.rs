//! SUBSCRIBE: validate each filter, record it, and answer SUBACK once every shard routes the
//! new filters here (so a publish after the SUBACK is not missed); then send the matching
//! retained messages (v5 retain handling 0: always, 1: new subscriptions only, 2: never).
//! Shared subscriptions (`$share/GROUP/FILTER`) join GROUP on every shard and get no retained
//! messages (v5 section 4.8.2); one with No Local set is a protocol error (0x82).
//! A filter the ACL denies fails (3.1.1 0x80, v5 0x87 Not authorized; a shared one is checked
//! by its inner filter), and retained messages on topics the client may not subscribe to are
//! not sent (see `acl` for how filters are matched against rules).

use crate::mqtt::acl::Action;
use crate::mqtt::codec::{self, reason, Subscribe};
use crate::mqtt::connection::{Connection, End};
use crate::mqtt::constants::MAX_SUBSCRIPTIONS_PER_SESSION;
use crate::mqtt::kernel::MqttKernel;
use crate::mqtt::session::{Outgoing, Subscription};
use crate::mqtt::shared::{self, FilterKind};
use crate::mqtt::topic::valid_topic_filter;

pub async fn handle<K: MqttKernel>(
    connection: &Connection<K>,
    subscribe: Subscribe,
) -> Result<(), End> {
    let engine = &connection.engine;
    let client = &connection.client_id;
    let v5 = connection.level.is_v5();
    let failure = |v5_code: u8| {
        if v5 {
            v5_code
        } else {
            reason::V3_SUBSCRIBE_FAILURE
        }
    };
    let no_local_shared = subscribe.filters.iter().any(|request| {
        request.no_local && matches!(shared::parse(&request.filter), FilterKind::Shared { .. })
    });
    if v5 && no_local_shared {
        return Err(End::protocol(
            reason::PROTOCOL_ERROR,
            "No Local on a shared subscription",
        ));
    }
    let acl = &engine.config.acl;
    let actor = connection.actor();
    let mut codes = Vec::with_capacity(subscribe.filters.len());
    let mut waiters = Vec::new();
    let mut retained_for = Vec::new();
    for request in &subscribe.filters {
        let filter = request.filter.as_str();
        let kind = shared::parse(filter);
        let code = if !valid_topic_filter(filter) || kind == FilterKind::Invalid {
            failure(reason::TOPIC_FILTER_INVALID)
        } else if !acl.is_empty()
            && !acl.allows(actor, Action::Subscribe, acl_filter(&kind, filter))
        {
            failure(reason::NOT_AUTHORIZED)
        } else if engine.subscription_count(client) >= MAX_SUBSCRIPTIONS_PER_SESSION
            && !engine.is_subscribed(client, filter)
        {
            failure(reason::QUOTA_EXCEEDED)
        } else {
            let granted = request.qos.min(2);
            let subscription = Subscription {
                qos: granted,
                no_local: v5 && request.no_local,
                retain_as_published: v5 && request.retain_as_published,
                subscription_id: subscribe.subscription_id,
            };
            let (is_new, waiter) = engine.subscribe(client, filter, subscription);
            waiters.extend(waiter);
            let wants_retained =
                request.retain_handling == 0 || (request.retain_handling == 1 && is_new);
            if kind == FilterKind::Plain && wants_retained {
                retained_for.push((filter.to_string(), granted));
            }
            granted
        };
        codes.push(code);
    }
    for waiter in waiters {
        let _ = waiter.recv_async().await;
    }
    let level = connection.level;
    connection
        .link
        .write(|out| codec::encode_suback(out, level, subscribe.pkid, &codes));
    for (filter, granted) in retained_for {
        let messages = engine
            .retained_matching(&filter)
            .await
            .map_err(|_| End::ServerClose)?;
        for message in messages {
            if !acl.is_empty() && !acl.allows(actor, Action::Subscribe, &message.topic) {
                continue;
            }
            let outgoing = Outgoing {
                qos: granted.min(message.qos),
                retain: true,
                subscription_ids: subscribe.subscription_id.into_iter().collect(),
                message,
            };
            engine.deliver_to(client, outgoing);
        }
    }
    Ok(())
}

/// The filter the ACL judges: a shared subscription's inner filter.
fn acl_filter<'a>(kind: &FilterKind<'a>, filter: &'a str) -> &'a str {
    match kind {
        FilterKind::Shared { filter, .. } => filter,
        _ => filter,
    }
}
