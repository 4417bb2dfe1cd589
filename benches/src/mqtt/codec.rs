//! MQTT 3.1.1 (v4) and 5.0 (v5) framing on mqttbytes, behind one small version-agnostic API:
//! the harness encodes the few packets a client sends and decodes what a broker sends into
//! `Incoming`. Decoding never panics: mqttbytes is called under `catch_unwind`, and every
//! failure is an `Err` the caller counts as a protocol error.

use std::panic::{catch_unwind, AssertUnwindSafe};

use anyhow::{anyhow, Result};
use bytes::{Bytes, BytesMut};
use mqttbytes::{v4, v5, QoS};

/// Largest packet accepted from the broker: the largest message plus room for the topic
/// (at most 65535 bytes) and MQTT 5 properties.
pub const MAX_PACKET_BYTES: usize = crate::workload::MAX_MESSAGE_SIZE + 128 * 1024;
/// Keep-alive announced in CONNECT, seconds. Idle connections send PINGREQ at half of it.
pub const KEEP_ALIVE_S: u16 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V4,
    V5,
}

impl Version {
    pub fn from_level(level: u8) -> Result<Self> {
        match level {
            4 => Ok(Version::V4),
            5 => Ok(Version::V5),
            l => Err(anyhow!("MQTT protocol level {l} unsupported")),
        }
    }
}

pub fn qos_of(q: u8) -> Result<QoS> {
    mqttbytes::qos(q).map_err(|e| anyhow!("{e:?}"))
}

/// What a broker sent, reduced to what the harness needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    ConnAck {
        /// Return / reason code (0 = accepted).
        code: u8,
        /// MQTT 5 Receive Maximum, if the broker announced one.
        receive_max: Option<u16>,
    },
    SubAck {
        pkid: u16,
        /// One entry per filter: the granted QoS, or None for a failure code.
        granted: Vec<Option<u8>>,
    },
    Publish {
        qos: u8,
        pkid: u16,
        payload: Bytes,
    },
    PubAck {
        pkid: u16,
        code: u8,
    },
    PubRec {
        pkid: u16,
        code: u8,
    },
    PubRel {
        pkid: u16,
    },
    PubComp {
        pkid: u16,
        code: u8,
    },
    PingResp,
    Disconnect {
        code: u8,
    },
    /// A packet a client never expects from a broker (CONNECT, SUBSCRIBE, PINGREQ, ...).
    Unexpected(&'static str),
}

/// Decode one packet from the front of `buf`. Ok(None): more bytes are needed (nothing
/// consumed). Err: malformed input; the connection should be dropped.
pub fn decode(version: Version, buf: &mut BytesMut) -> Result<Option<Incoming>> {
    let r = catch_unwind(AssertUnwindSafe(|| match version {
        Version::V4 => v4::read(buf, MAX_PACKET_BYTES).map(from_v4),
        Version::V5 => v5::read(buf, MAX_PACKET_BYTES).map(from_v5),
    }));
    match r {
        Ok(Ok(p)) => Ok(Some(p)),
        Ok(Err(mqttbytes::Error::InsufficientBytes(_))) => Ok(None),
        Ok(Err(e)) => Err(anyhow!("malformed MQTT packet: {e:?}")),
        Err(_) => Err(anyhow!("MQTT decoder panicked on broker input")),
    }
}

fn from_v4(p: v4::Packet) -> Incoming {
    use v4::Packet as P;
    match p {
        P::ConnAck(c) => Incoming::ConnAck {
            code: c.code as u8,
            receive_max: None,
        },
        P::SubAck(s) => Incoming::SubAck {
            pkid: s.pkid,
            granted: s
                .return_codes
                .iter()
                .map(|c| match c {
                    v4::SubscribeReasonCode::Success(q) => Some(*q as u8),
                    v4::SubscribeReasonCode::Failure => None,
                })
                .collect(),
        },
        P::Publish(p) => Incoming::Publish {
            qos: p.qos as u8,
            pkid: p.pkid,
            payload: p.payload,
        },
        P::PubAck(a) => Incoming::PubAck {
            pkid: a.pkid,
            code: 0,
        },
        P::PubRec(a) => Incoming::PubRec {
            pkid: a.pkid,
            code: 0,
        },
        P::PubRel(a) => Incoming::PubRel { pkid: a.pkid },
        P::PubComp(a) => Incoming::PubComp {
            pkid: a.pkid,
            code: 0,
        },
        P::PingResp => Incoming::PingResp,
        P::Disconnect => Incoming::Disconnect { code: 0 },
        P::Connect(_) => Incoming::Unexpected("CONNECT"),
        P::Subscribe(_) => Incoming::Unexpected("SUBSCRIBE"),
        P::Unsubscribe(_) => Incoming::Unexpected("UNSUBSCRIBE"),
        P::UnsubAck(_) => Incoming::Unexpected("UNSUBACK"),
        P::PingReq => Incoming::Unexpected("PINGREQ"),
    }
}

fn from_v5(p: v5::Packet) -> Incoming {
    use v5::Packet as P;
    match p {
        P::ConnAck(c) => Incoming::ConnAck {
            code: c.code as u8,
            receive_max: c.properties.and_then(|p| p.receive_max),
        },
        P::SubAck(s) => Incoming::SubAck {
            pkid: s.pkid,
            granted: s
                .return_codes
                .iter()
                .map(|c| {
                    let c = *c as u8;
                    (c <= 2).then_some(c)
                })
                .collect(),
        },
        P::Publish(p) => Incoming::Publish {
            qos: p.qos as u8,
            pkid: p.pkid,
            payload: p.payload,
        },
        P::PubAck(a) => Incoming::PubAck {
            pkid: a.pkid,
            code: a.reason as u8,
        },
        P::PubRec(a) => Incoming::PubRec {
            pkid: a.pkid,
            code: a.reason as u8,
        },
        P::PubRel(a) => Incoming::PubRel { pkid: a.pkid },
        P::PubComp(a) => Incoming::PubComp {
            pkid: a.pkid,
            code: a.reason as u8,
        },
        P::PingResp => Incoming::PingResp,
        P::Disconnect(d) => Incoming::Disconnect {
            code: d.reason_code as u8,
        },
        P::Connect(_) => Incoming::Unexpected("CONNECT"),
        P::Subscribe(_) => Incoming::Unexpected("SUBSCRIBE"),
        P::Unsubscribe(_) => Incoming::Unexpected("UNSUBSCRIBE"),
        P::UnsubAck(_) => Incoming::Unexpected("UNSUBACK"),
        P::PingReq => Incoming::Unexpected("PINGREQ"),
    }
}

fn enc(r: std::result::Result<usize, mqttbytes::Error>) -> Result<()> {
    r.map(|_| ())
        .map_err(|e| anyhow!("encoding MQTT packet: {e:?}"))
}

pub fn connect(version: Version, out: &mut BytesMut, client_id: &str) -> Result<()> {
    match version {
        Version::V4 => {
            let mut c = v4::Connect::new(client_id);
            c.keep_alive = KEEP_ALIVE_S;
            c.clean_session = true;
            enc(c.write(out))
        }
        Version::V5 => {
            let mut c = v5::Connect::new(client_id);
            c.keep_alive = KEEP_ALIVE_S;
            c.clean_session = true;
            enc(c.write(out))
        }
    }
}

pub fn subscribe(
    version: Version,
    out: &mut BytesMut,
    pkid: u16,
    filters: &[String],
    qos: u8,
) -> Result<()> {
    let q = qos_of(qos)?;
    match version {
        Version::V4 => {
            let mut s = v4::Subscribe::empty_subscribe();
            for f in filters {
                s.add(f.clone(), q);
            }
            s.pkid = pkid;
            enc(s.write(out))
        }
        Version::V5 => {
            let mut s = v5::Subscribe::empty_subscribe();
            for f in filters {
                s.add(f.clone(), q);
            }
            s.pkid = pkid;
            enc(s.write(out))
        }
    }
}

/// A reusable PUBLISH: the topic is set once, each `write` fills in pkid and payload.
pub enum PublishTemplate {
    V4(v4::Publish),
    V5(v5::Publish),
}

impl PublishTemplate {
    pub fn new(version: Version, topic: &str, qos: u8) -> Result<Self> {
        let q = qos_of(qos)?;
        Ok(match version {
            Version::V4 => PublishTemplate::V4(v4::Publish::from_bytes(topic, q, Bytes::new())),
            Version::V5 => PublishTemplate::V5(v5::Publish::from_bytes(topic, q, Bytes::new())),
        })
    }

    pub fn write(&mut self, out: &mut BytesMut, pkid: u16, payload: Bytes) -> Result<()> {
        match self {
            PublishTemplate::V4(p) => {
                p.pkid = pkid;
                p.payload = payload;
                enc(p.write(out))
            }
            PublishTemplate::V5(p) => {
                p.pkid = pkid;
                p.payload = payload;
                enc(p.write(out))
            }
        }
    }
}

pub fn puback(version: Version, out: &mut BytesMut, pkid: u16) -> Result<()> {
    match version {
        Version::V4 => enc(v4::PubAck::new(pkid).write(out)),
        Version::V5 => enc(v5::PubAck::new(pkid).write(out)),
    }
}

pub fn pubrec(version: Version, out: &mut BytesMut, pkid: u16) -> Result<()> {
    match version {
        Version::V4 => enc(v4::PubRec::new(pkid).write(out)),
        Version::V5 => enc(v5::PubRec::new(pkid).write(out)),
    }
}

pub fn pubrel(version: Version, out: &mut BytesMut, pkid: u16) -> Result<()> {
    match version {
        Version::V4 => enc(v4::PubRel::new(pkid).write(out)),
        Version::V5 => enc(v5::PubRel::new(pkid).write(out)),
    }
}

pub fn pubcomp(version: Version, out: &mut BytesMut, pkid: u16) -> Result<()> {
    match version {
        Version::V4 => enc(v4::PubComp::new(pkid).write(out)),
        Version::V5 => enc(v5::PubComp::new(pkid).write(out)),
    }
}

pub fn pingreq(version: Version, out: &mut BytesMut) -> Result<()> {
    match version {
        Version::V4 => enc(v4::PingReq.write(out)),
        Version::V5 => enc(v5::PingReq.write(out)),
    }
}

pub fn disconnect(version: Version, out: &mut BytesMut) -> Result<()> {
    match version {
        Version::V4 => enc(v4::Disconnect.write(out)),
        Version::V5 => enc(v5::Disconnect::new().write(out)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_round_trips_in_both_versions() {
        for v in [Version::V4, Version::V5] {
            for qos in 0..=2u8 {
                let mut t = PublishTemplate::new(v, "a/b/0", qos).unwrap();
                let mut out = BytesMut::new();
                let pkid = if qos == 0 { 0 } else { 7 };
                t.write(&mut out, pkid, Bytes::from_static(b"12345678payload"))
                    .unwrap();
                let got = decode(v, &mut out).unwrap().unwrap();
                assert_eq!(
                    got,
                    Incoming::Publish {
                        qos,
                        pkid,
                        payload: Bytes::from_static(b"12345678payload")
                    }
                );
                assert!(out.is_empty());
            }
        }
    }

    #[test]
    fn partial_packets_wait_for_more_bytes() {
        let mut t = PublishTemplate::new(Version::V4, "t", 1).unwrap();
        let mut full = BytesMut::new();
        t.write(&mut full, 1, Bytes::from(vec![0u8; 300])).unwrap();
        let mut part = BytesMut::from(&full[..full.len() - 1]);
        assert_eq!(decode(Version::V4, &mut part).unwrap(), None);
        assert_eq!(part.len(), full.len() - 1);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let cases: [&[u8]; 6] = [
            &[0x00, 0x00],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
            &[0x30, 0x01, 0xff],
            &[0x32, 0x03, 0x00, 0x00, 0x00],
            &[0x90, 0x02, 0x00, 0x01],
            &[0x20, 0x03, 0x00, 0x00, 0xff],
        ];
        for v in [Version::V4, Version::V5] {
            for c in cases {
                let mut b = BytesMut::from(c);
                let r = decode(v, &mut b);
                assert!(!matches!(r, Ok(Some(Incoming::Publish { .. }))), "{c:?}");
            }
            // A frame whose remaining length exceeds the cap is refused before it is buffered.
            let mut b = BytesMut::from(&[0x30u8, 0xff, 0xff, 0xff, 0x7f][..]);
            assert!(decode(v, &mut b).is_err());
        }
    }

    #[test]
    fn acks_decode() {
        for v in [Version::V4, Version::V5] {
            let mut out = BytesMut::new();
            puback(v, &mut out, 3).unwrap();
            pubrec(v, &mut out, 4).unwrap();
            pubrel(v, &mut out, 5).unwrap();
            pubcomp(v, &mut out, 6).unwrap();
            assert_eq!(
                decode(v, &mut out).unwrap(),
                Some(Incoming::PubAck { pkid: 3, code: 0 })
            );
            assert_eq!(
                decode(v, &mut out).unwrap(),
                Some(Incoming::PubRec { pkid: 4, code: 0 })
            );
            assert_eq!(
                decode(v, &mut out).unwrap(),
                Some(Incoming::PubRel { pkid: 5 })
            );
            assert_eq!(
                decode(v, &mut out).unwrap(),
                Some(Incoming::PubComp { pkid: 6, code: 0 })
            );
        }
    }
}
