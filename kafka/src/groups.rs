//! The consumer-group APIs: FindCoordinator, and the group requests answered by the
//! group's coordinator shard.

use std::time::Duration;

use kafka_protocol::ResponseError as KErr;
use kafka_protocol::messages as km;
use ringmq_shard::groups::{self, GroupOp};

use crate::group_ops;
use crate::{KafkaService, TRANSACTIONS_UNSUPPORTED, TRANSACTIONS_UNSUPPORTED_MESSAGE, s};

impl KafkaService {
    /// A single node coordinates every group (the group's shard is found inside); in a
    /// cluster the leader of the group's partition of the groups' topic does
    /// ([`KafkaService::coordinator_for`]).
    /// From v4 a request names several keys (KIP-699) and each gets its own answer.
    /// Transaction coordinators (key type 1) are refused: transactions are not
    /// supported; share groups (key type 2) neither.
    pub(crate) fn find_coordinator(
        &self,
        r: km::FindCoordinatorRequest,
        version: i16,
    ) -> km::FindCoordinatorResponse {
        let mut resp = km::FindCoordinatorResponse::default();
        let refusal = match r.key_type {
            0 => None,
            1 => Some((
                TRANSACTIONS_UNSUPPORTED,
                TRANSACTIONS_UNSUPPORTED_MESSAGE.to_string(),
            )),
            2 => Some((
                KErr::InvalidRequest.code(),
                "share groups are not supported by this broker".to_string(),
            )),
            t => Some((
                KErr::InvalidRequest.code(),
                format!("unknown coordinator key type {t}"),
            )),
        };
        if version >= 4 {
            for key in r.coordinator_keys {
                let mut c = km::find_coordinator_response::Coordinator::default();
                c.key = key;
                match &refusal {
                    Some((code, message)) => {
                        c.error_code = *code;
                        c.error_message = Some(s(message));
                        c.node_id = km::BrokerId(-1);
                        c.host = s("");
                        c.port = -1;
                    }
                    None => match self.coordinator_for(c.key.as_str()) {
                        Ok((id, host, port)) => {
                            c.node_id = km::BrokerId(id);
                            c.host = host;
                            c.port = port;
                        }
                        Err((code, message)) => {
                            c.error_code = code;
                            c.error_message = Some(s(&message));
                            c.node_id = km::BrokerId(-1);
                            c.host = s("");
                            c.port = -1;
                        }
                    },
                }
                resp.coordinators.push(c);
            }
            return resp;
        }
        if let Some((code, message)) = refusal {
            resp.error_code = code;
            if version >= 1 {
                resp.error_message = Some(s(&message));
            }
            resp.node_id = km::BrokerId(-1);
            resp.port = -1;
            return resp;
        }
        match self.coordinator_for(r.key.as_str()) {
            Ok((id, host, port)) => {
                resp.node_id = km::BrokerId(id);
                resp.host = host;
                resp.port = port;
            }
            Err((code, message)) => {
                resp.error_code = code;
                if version >= 1 {
                    resp.error_message = Some(s(&message));
                }
                resp.node_id = km::BrokerId(-1);
                resp.port = -1;
            }
        }
        resp
    }

    /// OffsetFetch from v8 names several groups; each is asked on its own shard, and
    /// the answers are put together.
    pub(crate) async fn offset_fetch_groups(
        &self,
        r: km::OffsetFetchRequest,
    ) -> km::OffsetFetchResponse {
        let mut resp = km::OffsetFetchResponse::default();
        for g in &r.groups {
            let reply = self
                .on_group_shard(group_ops::fetch_group_op(g, r.require_stable))
                .await;
            resp.groups.push(group_ops::fetch_group_response(g, reply));
        }
        resp
    }

    /// ListGroups asks every shard.
    pub(crate) async fn list_groups(
        &self,
        r: km::ListGroupsRequest,
        version: i16,
    ) -> km::ListGroupsResponse {
        let mut resp = km::ListGroupsResponse::default();
        for shard in 0..self.shard.shard_count() {
            let reply = self
                .shard
                .group_request_on(shard, GroupOp::List, Duration::ZERO)
                .await;
            match group_ops::listed_groups(reply, version) {
                Some(groups) => resp.groups.extend(groups),
                None => resp.error_code = group_ops::coordinator_not_available(),
            }
        }
        // v5 (KIP-848): every group here is a classic group.
        if !r.types_filter.is_empty()
            && !r
                .types_filter
                .iter()
                .any(|t| t.eq_ignore_ascii_case("classic"))
        {
            resp.groups.clear();
        }
        if !r.states_filter.is_empty() {
            resp.groups.retain(|g| {
                r.states_filter
                    .iter()
                    .any(|f| f.eq_ignore_ascii_case(&g.group_state))
            });
        }
        resp
    }

    /// Answers an operation on one group on the group's shard.
    pub(crate) async fn on_group_shard(&self, op: GroupOp) -> Option<groups::GroupReply> {
        self.shard.group_request(op, Duration::ZERO).await
    }

    /// DescribeGroups: each group on its own shard.
    pub(crate) async fn describe_groups(
        &self,
        r: km::DescribeGroupsRequest,
        version: i16,
    ) -> km::DescribeGroupsResponse {
        let mut resp = km::DescribeGroupsResponse::default();
        for g in &r.groups {
            let reply = self.on_group_shard(group_ops::describe_op(g)).await;
            resp.groups
                .push(group_ops::described_group(g, reply, version));
        }
        resp
    }

    /// DeleteGroups: each group on its own shard.
    pub(crate) async fn delete_groups(
        &self,
        r: km::DeleteGroupsRequest,
    ) -> km::DeleteGroupsResponse {
        let mut resp = km::DeleteGroupsResponse::default();
        for g in &r.groups_names {
            let reply = self.on_group_shard(group_ops::delete_op(g)).await;
            resp.results.push(group_ops::deleted_group(g, reply));
        }
        resp
    }
}
