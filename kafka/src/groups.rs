//! The consumer-group APIs: FindCoordinator, and the group requests answered by the
//! group's coordinator shard.

use std::time::Duration;

use kafka_protocol::ResponseError as KErr;
use kafka_protocol::messages::{self as km, RequestKind, ResponseKind};
use ringmq_shard::groups::{self, GroupRequest};

use crate::{KafkaService, NODE_ID, TRANSACTIONS_UNSUPPORTED, TRANSACTIONS_UNSUPPORTED_MESSAGE, s};

impl KafkaService {
    /// Every group's coordinator is this node (the group's shard is found inside).
    /// From v4 a request names several keys (KIP-699) and each gets its own answer.
    /// Transaction coordinators (key type 1) are refused: transactions are not
    /// supported; share groups (key type 2) neither.
    pub(crate) fn find_coordinator(
        &self,
        r: km::FindCoordinatorRequest,
        version: i16,
    ) -> km::FindCoordinatorResponse {
        let mut resp = km::FindCoordinatorResponse::default();
        let (host, port) = self.broker();
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
                    None => {
                        c.node_id = km::BrokerId(NODE_ID);
                        c.host = host.clone();
                        c.port = port;
                    }
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
        resp.node_id = km::BrokerId(NODE_ID);
        resp.host = host;
        resp.port = port;
        resp
    }

    /// OffsetFetch from v8 names several groups; each is asked on its own shard as a
    /// v7 request, and the answers are put together.
    pub(crate) async fn offset_fetch_groups(
        &self,
        r: km::OffsetFetchRequest,
        client_id: &str,
    ) -> km::OffsetFetchResponse {
        let mut resp = km::OffsetFetchResponse::default();
        for g in r.groups {
            let mut one = km::OffsetFetchRequest::default();
            one.group_id = g.group_id.clone();
            one.require_stable = r.require_stable;
            one.topics = g.topics.map(|ts| {
                ts.into_iter()
                    .map(|t| {
                        let mut q = km::offset_fetch_request::OffsetFetchRequestTopic::default();
                        q.name = t.name;
                        q.partition_indexes = t.partition_indexes;
                        q
                    })
                    .collect()
            });
            let mut gr = km::offset_fetch_response::OffsetFetchResponseGroup::default();
            gr.group_id = g.group_id.clone();
            match self
                .on_group_shard(
                    g.group_id.0.as_str(),
                    RequestKind::OffsetFetch(one),
                    7,
                    client_id,
                )
                .await
            {
                Some(ResponseKind::OffsetFetch(a)) => {
                    gr.error_code = a.error_code;
                    gr.topics = a
                        .topics
                        .into_iter()
                        .map(|t| {
                            let mut tr =
                                km::offset_fetch_response::OffsetFetchResponseTopics::default();
                            tr.name = t.name;
                            tr.partitions = t
                                .partitions
                                .into_iter()
                                .map(|p| {
                                    let mut pr = km::offset_fetch_response::OffsetFetchResponsePartitions::default();
                                    pr.partition_index = p.partition_index;
                                    pr.committed_offset = p.committed_offset;
                                    pr.committed_leader_epoch = p.committed_leader_epoch;
                                    pr.metadata = p.metadata;
                                    pr.error_code = p.error_code;
                                    pr
                                })
                                .collect();
                            tr
                        })
                        .collect();
                }
                _ => gr.error_code = groups::errors::COORDINATOR_NOT_AVAILABLE,
            }
            resp.groups.push(gr);
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
            let q = GroupRequest {
                request: RequestKind::ListGroups(r.clone()),
                version,
                client_id: String::new(),
                client_host: String::new(),
            };
            match self.shard.group_request_on(shard, q, Duration::ZERO).await {
                Some(ResponseKind::ListGroups(l)) => resp.groups.extend(l.groups),
                _ => resp.error_code = groups::errors::COORDINATOR_NOT_AVAILABLE,
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

    /// Answers a request about one group on the group's shard.
    pub(crate) async fn on_group_shard(
        &self,
        group: &str,
        request: RequestKind,
        version: i16,
        client_id: &str,
    ) -> Option<ResponseKind> {
        let q = GroupRequest {
            request,
            version,
            client_id: client_id.to_string(),
            client_host: String::new(),
        };
        let owner = groups::group_shard(group, self.shard.shard_count());
        self.shard.group_request_on(owner, q, Duration::ZERO).await
    }

    /// DescribeGroups: each group on its own shard.
    pub(crate) async fn describe_groups(
        &self,
        r: km::DescribeGroupsRequest,
        version: i16,
        client_id: String,
    ) -> km::DescribeGroupsResponse {
        let mut resp = km::DescribeGroupsResponse::default();
        for g in &r.groups {
            let mut one = r.clone();
            one.groups = vec![g.clone()];
            match self
                .on_group_shard(
                    g.0.as_str(),
                    RequestKind::DescribeGroups(one),
                    version,
                    &client_id,
                )
                .await
            {
                Some(ResponseKind::DescribeGroups(d)) => resp.groups.extend(d.groups),
                _ => {
                    let mut dg = km::describe_groups_response::DescribedGroup::default();
                    dg.group_id = g.clone();
                    dg.error_code = groups::errors::COORDINATOR_NOT_AVAILABLE;
                    resp.groups.push(dg);
                }
            }
        }
        resp
    }

    /// DeleteGroups: each group on its own shard.
    pub(crate) async fn delete_groups(
        &self,
        r: km::DeleteGroupsRequest,
        version: i16,
        client_id: String,
    ) -> km::DeleteGroupsResponse {
        let mut resp = km::DeleteGroupsResponse::default();
        for g in &r.groups_names {
            let mut one = r.clone();
            one.groups_names = vec![g.clone()];
            match self
                .on_group_shard(
                    g.0.as_str(),
                    RequestKind::DeleteGroups(one),
                    version,
                    &client_id,
                )
                .await
            {
                Some(ResponseKind::DeleteGroups(d)) => resp.results.extend(d.results),
                _ => {
                    let mut dr = km::delete_groups_response::DeletableGroupResult::default();
                    dr.group_id = g.clone();
                    dr.error_code = groups::errors::COORDINATOR_NOT_AVAILABLE;
                    resp.results.push(dr);
                }
            }
        }
        resp
    }
}
