//! RPC frames and wire structs: round trips of every message openraft sends (all response
//! variants included), rejection of corrupt frames, and a real server that answers an unknown
//! group with an error and closes a connection that sends a corrupt frame.

use super::{produced_batch, run};
use crate::constants::RPC_ENTRY_OVERHEAD_BYTES;
use crate::rpc::client::entries_in_budget;
use crate::rpc::frame::{encode_frame, read_frame, FrameError, FrameKind, FRAME_HEADER_BYTES};
use crate::rpc::wire::{
    decode_request, decode_response, encode_hello, encode_request, encode_response,
    PartitionSnapshot, WireHello, RPC_PROTOCOL_VERSION,
};
use crate::rpc::{FaultCode, RaftGroups, RpcClient, RpcFault, RpcRequest, RpcResponse, RpcServer};
use crate::{
    DigestStateMachine, Membership, PartitionEntry, PartitionLogId, PartitionPayload,
    PartitionVote, RecordBatch, StoredMembership,
};
use futures_lite::future::block_on;
use futures_lite::io::Cursor;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderError,
    TransferLeaderRequest, VoteRequest, VoteResponse,
};
use openraft::storage::Snapshot;
use openraft::type_config::alias::SnapshotMetaOf;
use openraft::{BasicNode, RaftNetworkFactory, RaftNetworkV2};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

fn membership() -> Membership {
    let nodes: BTreeMap<u64, BasicNode> = (1..=4)
        .map(|id| {
            (
                id,
                BasicNode {
                    addr: format!("127.0.0.1:{}", 9000 + id),
                },
            )
        })
        .collect();
    Membership::new(
        vec![BTreeSet::from([1, 2, 3]), BTreeSet::from([1, 2, 4])],
        nodes,
    )
    .expect("membership")
}

/// A request's frame, read back and decoded.
fn frame_round_trip(request: &RpcRequest) -> RpcRequest {
    let (kind, payload) = encode_request(request).expect("encode");
    let bytes = encode_frame(kind, 7, 42, &payload).expect("frame");
    let frame = block_on(read_frame(&mut Cursor::new(bytes)))
        .expect("read")
        .expect("a frame");
    assert_eq!(
        (frame.kind, frame.correlation_id, frame.group_id),
        (kind, 7, 42)
    );
    decode_request(frame.kind, &frame.payload).expect("decode")
}

fn response_round_trip(response: Result<RpcResponse, RpcFault>) {
    let (kind, payload) = encode_response(&response).expect("encode");
    let bytes = encode_frame(kind, 9, 1, &payload).expect("frame");
    let frame = block_on(read_frame(&mut Cursor::new(bytes)))
        .expect("read")
        .expect("a frame");
    assert_eq!(
        decode_response(frame.kind, &frame.payload).expect("decode"),
        response
    );
}

#[test]
fn rpc_wire_round_trips_every_message() {
    let vote = PartitionVote::new(5, 2);
    let committed_vote = PartitionVote::new_committed(6, 3);
    let log_id = PartitionLogId::new_term_index(4, 17);
    for leadership_transfer in [false, true] {
        for last_log_id in [None, Some(log_id)] {
            let request = VoteRequest {
                vote,
                last_log_id,
                leadership_transfer,
            };
            match frame_round_trip(&RpcRequest::Vote(request.clone())) {
                RpcRequest::Vote(decoded) => assert_eq!(decoded, request),
                other => panic!("decoded {other:?}"),
            }
            match frame_round_trip(&RpcRequest::PreVote(request.clone())) {
                RpcRequest::PreVote(decoded) => assert_eq!(decoded, request),
                other => panic!("decoded {other:?}"),
            }
        }
    }

    let batch = RecordBatch::new(produced_batch(3, 0xab)).expect("batch");
    let entries = vec![
        PartitionEntry {
            log_id: PartitionLogId::new_term_index(4, 18),
            payload: PartitionPayload::Blank,
        },
        PartitionEntry {
            log_id: PartitionLogId::new_term_index(4, 19),
            payload: PartitionPayload::Normal(batch.clone()),
        },
        PartitionEntry {
            log_id: PartitionLogId::new_term_index(5, 20),
            payload: PartitionPayload::Membership(membership()),
        },
    ];
    let request = AppendEntriesRequest {
        vote: committed_vote,
        prev_log_id: Some(log_id),
        entries: entries.clone(),
        leader_commit: Some(PartitionLogId::new_term_index(4, 16)),
    };
    match frame_round_trip(&RpcRequest::AppendEntries(request)) {
        RpcRequest::AppendEntries(decoded) => {
            assert_eq!(decoded.vote, committed_vote);
            assert_eq!(decoded.prev_log_id, Some(log_id));
            assert_eq!(
                decoded.leader_commit,
                Some(PartitionLogId::new_term_index(4, 16))
            );
            assert_eq!(decoded.entries, entries);
            match &decoded.entries[1].payload {
                PartitionPayload::Normal(decoded_batch) => {
                    assert_eq!(decoded_batch.bytes(), batch.bytes())
                }
                other => panic!("payload {other:?}"),
            }
        }
        other => panic!("decoded {other:?}"),
    }
    // A heartbeat: no entries, nothing committed yet.
    let heartbeat = AppendEntriesRequest {
        vote,
        prev_log_id: None,
        entries: Vec::new(),
        leader_commit: None,
    };
    match frame_round_trip(&RpcRequest::AppendEntries(heartbeat)) {
        RpcRequest::AppendEntries(decoded) => {
            assert_eq!(
                (decoded.vote, decoded.prev_log_id, decoded.leader_commit),
                (vote, None, None)
            );
            assert!(decoded.entries.is_empty());
        }
        other => panic!("decoded {other:?}"),
    }

    let snapshot: PartitionSnapshot = Snapshot {
        meta: SnapshotMetaOf::<crate::PartitionRaft> {
            last_log_id: Some(log_id),
            last_membership: StoredMembership::new(
                Some(PartitionLogId::new_term_index(3, 2)),
                membership(),
            ),
        },
        snapshot: vec![1, 2, 3, 4, 5],
    };
    match frame_round_trip(&RpcRequest::InstallSnapshot {
        vote: committed_vote,
        snapshot: snapshot.clone(),
    }) {
        RpcRequest::InstallSnapshot {
            vote: decoded_vote,
            snapshot: decoded,
        } => {
            assert_eq!(decoded_vote, committed_vote);
            assert_eq!(decoded.meta, snapshot.meta);
            assert_eq!(decoded.snapshot, snapshot.snapshot);
        }
        other => panic!("decoded {other:?}"),
    }

    for granted in [false, true] {
        response_round_trip(Ok(RpcResponse::Vote(VoteResponse {
            vote: committed_vote,
            vote_granted: granted,
            last_log_id: Some(log_id),
        })));
    }
    for response in [
        AppendEntriesResponse::Success,
        AppendEntriesResponse::PartialSuccess(None),
        AppendEntriesResponse::PartialSuccess(Some(log_id)),
        AppendEntriesResponse::Conflict,
        AppendEntriesResponse::HigherVote(committed_vote),
    ] {
        response_round_trip(Ok(RpcResponse::AppendEntries(response)));
    }
    response_round_trip(Ok(RpcResponse::InstallSnapshot(SnapshotResponse {
        vote: committed_vote,
    })));
    for last_log_id in [None, Some(log_id)] {
        let request = TransferLeaderRequest::new(committed_vote, 3, last_log_id);
        match frame_round_trip(&RpcRequest::TransferLeader(request.clone())) {
            RpcRequest::TransferLeader(decoded) => assert_eq!(decoded, request),
            other => panic!("decoded {other:?}"),
        }
    }
    for response in [
        Ok(()),
        Err(TransferLeaderError::VoteChanged {
            expected: committed_vote,
            actual: vote,
        }),
        Err(TransferLeaderError::LogNotFlushed {
            expected: Some(log_id),
            actual: None,
        }),
    ] {
        response_round_trip(Ok(RpcResponse::TransferLeader(response)));
    }
    for code in [
        FaultCode::UnknownGroup,
        FaultCode::Raft,
        FaultCode::BadRequest,
    ] {
        response_round_trip(Err(RpcFault::new(code, "why")));
    }
    // The embedder's forwarded bytes travel as they are, empty or not.
    for bytes in [Vec::new(), b"propose this".to_vec()] {
        match frame_round_trip(&RpcRequest::Forward(bytes.clone())) {
            RpcRequest::Forward(got) => assert_eq!(got, bytes),
            other => panic!("forward came back as {other:?}"),
        }
        response_round_trip(Ok(RpcResponse::Forward(bytes)));
    }
}

#[test]
fn rpc_append_entries_split_to_the_frame_budget() {
    let batch = RecordBatch::new(produced_batch(2, 1)).expect("batch");
    let entry_bytes = RPC_ENTRY_OVERHEAD_BYTES + batch.bytes().len();
    let entries: Vec<PartitionEntry> = (1..=10)
        .map(|index| PartitionEntry {
            log_id: PartitionLogId::new_term_index(1, index),
            payload: PartitionPayload::Normal(batch.clone()),
        })
        .collect();
    assert_eq!(entries_in_budget(&entries, 10 * entry_bytes), 10);
    assert_eq!(entries_in_budget(&entries, 3 * entry_bytes), 3);
    assert_eq!(entries_in_budget(&entries, 3 * entry_bytes + 1), 3);
    // One entry always goes, even above the budget (the frame limit allows a maximum entry).
    assert_eq!(entries_in_budget(&entries, 1), 1);
    assert_eq!(entries_in_budget(&[], 1), 0);
}

#[test]
fn rpc_frame_rejects_corrupt_frames() {
    let request = RpcRequest::Vote(VoteRequest::new(PartitionVote::new(1, 1), None));
    let (kind, payload) = encode_request(&request).expect("encode");
    let good = encode_frame(kind, 1, 1, &payload).expect("frame");
    let read = |bytes: Vec<u8>| block_on(read_frame(&mut Cursor::new(bytes)));

    // A flipped payload bit fails the CRC.
    let mut corrupt = good.clone();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x01;
    assert!(matches!(read(corrupt), Err(FrameError::BadCrc { .. })));

    // Lengths below the header or above the limit.
    for length in [0u32, 20, u32::MAX] {
        let mut bad = good.clone();
        bad[..4].copy_from_slice(&length.to_be_bytes());
        assert!(
            matches!(read(bad), Err(FrameError::BadLength(got)) if got == length),
            "length {length}"
        );
    }

    let mut unknown = good.clone();
    unknown[4] = 0x77;
    assert!(matches!(read(unknown), Err(FrameError::UnknownKind(0x77))));

    // Truncated header and truncated payload.
    assert!(matches!(read(good[..10].to_vec()), Err(FrameError::Io(_))));
    assert!(matches!(
        read(good[..good.len() - 1].to_vec()),
        Err(FrameError::Io(_))
    ));
    // A clean end of stream is not an error.
    assert!(matches!(read(Vec::new()), Ok(None)));

    // A well-framed payload that is not the archive its kind names.
    let garbage = encode_frame(FrameKind::AppendEntries, 1, 1, &[0xff; 40]).expect("frame");
    let frame = read(garbage).expect("framing is fine").expect("a frame");
    assert!(decode_request(frame.kind, &frame.payload).is_err());
    // A response kind is not a request, and vice versa.
    assert!(decode_request(FrameKind::VoteResponse, &frame.payload).is_err());
    assert!(decode_response(FrameKind::Vote, &frame.payload).is_err());
    // The encoder refuses payloads above the limit instead of writing a frame the peer drops.
    assert!(encode_frame(
        FrameKind::AppendEntries,
        1,
        1,
        &vec![0; crate::constants::RPC_FRAME_MAX_BYTES]
    )
    .is_none());
    assert_eq!(good.len(), FRAME_HEADER_BYTES + payload.len());
}

#[test]
fn rpc_server_answers_unknown_group_and_closes_on_corrupt_frame() {
    run("rpc-server", |_dir| async move {
        let groups: Rc<RaftGroups<DigestStateMachine>> = Rc::new(RaftGroups::default());
        let server = RpcServer::bind("127.0.0.1:0", 1, groups, None).expect("bind");
        let addr = server.local_addr();

        // Through the client: an unknown group is an error (Unreachable, so openraft backs
        // off), not a hang.
        let client = RpcClient::new(2, None);
        let mut network = client
            .network_factory(77)
            .new_client(
                1,
                &BasicNode {
                    addr: addr.to_string(),
                },
            )
            .await;
        let error = network
            .vote(
                VoteRequest::new(PartitionVote::new(1, 2), None),
                RPCOption::new(Duration::from_secs(5)),
            )
            .await
            .expect_err("no group 77 on the server");
        assert!(
            matches!(&error, openraft::errors::RPCError::Unreachable(_)),
            "{error:?}"
        );
        assert!(error.to_string().contains("UnknownGroup"), "{error}");
        client.shutdown();

        // By hand: hello, a request for an unknown group (its answer carries our correlation
        // id), then a corrupt frame, after which the server closes the connection.
        let mut stream = glommio::net::TcpStream::connect(addr)
            .await
            .expect("connect");
        let hello = encode_hello(&WireHello {
            protocol_version: RPC_PROTOCOL_VERSION,
            node_id: 3,
        })
        .expect("hello");
        let request = RpcRequest::Vote(VoteRequest::new(PartitionVote::new(1, 3), None));
        let (kind, payload) = encode_request(&request).expect("encode");
        let mut bytes = encode_frame(FrameKind::Hello, 0, 3, &hello).expect("frame");
        bytes.extend(encode_frame(kind, 1234, 99, &payload).expect("frame"));
        stream.write_all(&bytes).await.expect("write");
        let frame = read_frame(&mut stream)
            .await
            .expect("read")
            .expect("a response");
        assert_eq!(
            (frame.kind, frame.correlation_id, frame.group_id),
            (FrameKind::Error, 1234, 99)
        );
        match decode_response(frame.kind, &frame.payload).expect("decode") {
            Err(fault) => assert_eq!(fault.code, FaultCode::UnknownGroup),
            Ok(response) => panic!("answered {response:?}"),
        }
        let mut corrupt = encode_frame(kind, 1235, 99, &payload).expect("frame");
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        stream.write_all(&corrupt).await.expect("write");
        let mut rest = Vec::new();
        let read = stream.read_to_end(&mut rest).await;
        assert!(
            read.is_err() || rest.is_empty(),
            "no answer to a corrupt frame"
        );
        server.shutdown();
    });
}
