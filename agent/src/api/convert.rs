//! Conversions between etcd protobuf messages and store types.

use etcd_client::proto::{
    PbCompare, PbDeleteRequest, PbDeleteResponse, PbEvent, PbKeyValue, PbPutRequest, PbPutResponse,
    PbRangeRequest, PbRangeResponse, PbResponseHeader, PbResponseOp, PbTargetUnion, PbTxnOpRequest,
    PbTxnOpResponse, PbTxnRequest, PbTxnResponse,
};
use tonic::Status;

use crate::store::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse, Event,
    EventKind, KeyRange, KeyValue, PutRequest, PutResponse, RangeRequest, RangeResponse, SortOrder,
    SortTarget, TxnOp, TxnOpResponse, TxnRequest, TxnResponse,
};

/// etcd's limit on operations in one transaction.
const MAX_TXN_OPS: usize = 128;
/// etcd's default `--max-request-bytes`: a larger write is refused before
/// it reaches consensus. (gRPC itself stops messages at this plus
/// [`GRPC_OVERHEAD_BYTES`], as etcd's server does.)
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

fn size_checked(message: &impl prost::Message) -> Result<(), Status> {
    if message.encoded_len() > MAX_REQUEST_BYTES {
        return Err(Status::invalid_argument("etcdserver: request is too large"));
    }
    Ok(())
}

fn key_required(key: &[u8]) -> Result<(), Status> {
    if key.is_empty() {
        return Err(Status::invalid_argument("etcdserver: key is not provided"));
    }
    Ok(())
}

pub fn kv_to_pb(kv: KeyValue) -> PbKeyValue {
    PbKeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

pub fn range_from_pb(req: PbRangeRequest) -> Result<RangeRequest, Status> {
    key_required(&req.key)?;
    let sort_order = match req.sort_order {
        0 => SortOrder::None,
        1 => SortOrder::Ascend,
        2 => SortOrder::Descend,
        other => {
            return Err(Status::invalid_argument(format!(
                "unknown sort order {other}"
            )))
        }
    };
    let sort_target = match req.sort_target {
        0 => SortTarget::Key,
        1 => SortTarget::Version,
        2 => SortTarget::Create,
        3 => SortTarget::Mod,
        4 => SortTarget::Value,
        other => {
            return Err(Status::invalid_argument(format!(
                "unknown sort target {other}"
            )))
        }
    };
    if req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0
    {
        return Err(Status::unimplemented(
            "edgeconf does not support min/max revision filters on a range inside a txn yet",
        ));
    }
    Ok(RangeRequest {
        range: KeyRange::from_etcd(req.key, req.range_end),
        limit: req.limit,
        revision: req.revision,
        keys_only: req.keys_only,
        count_only: req.count_only,
        sort_order,
        sort_target,
    })
}

/// A Range's revision filters (`min_mod_revision` ...; 0: none), which
/// etcd applies to the keys found before `limit`, leaving `count` as it
/// was (what etcd's concurrency package waits on: the newest contender
/// created before its own).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevisionFilters {
    pub min_mod: i64,
    pub max_mod: i64,
    pub min_create: i64,
    pub max_create: i64,
}

impl RevisionFilters {
    pub fn keeps(&self, kv: &crate::store::KeyValue) -> bool {
        let within = |value: i64, min: i64, max: i64| {
            (min == 0 || value >= min) && (max == 0 || value <= max)
        };
        within(kv.mod_revision, self.min_mod, self.max_mod)
            && within(kv.create_revision, self.min_create, self.max_create)
    }
}

/// A top-level Range: the request, with its revision filters apart (the
/// store reads with no limit when there are some).
pub fn filtered_range_from_pb(
    mut req: PbRangeRequest,
) -> Result<(RangeRequest, Option<RevisionFilters>), Status> {
    let filters = RevisionFilters {
        min_mod: req.min_mod_revision,
        max_mod: req.max_mod_revision,
        min_create: req.min_create_revision,
        max_create: req.max_create_revision,
    };
    if [
        filters.min_mod,
        filters.max_mod,
        filters.min_create,
        filters.max_create,
    ]
    .iter()
    .any(|r| *r < 0)
    {
        return Err(Status::invalid_argument(
            "etcdserver: revision filters must not be negative",
        ));
    }
    if filters == RevisionFilters::default() {
        return Ok((range_from_pb(req)?, None));
    }
    req.min_mod_revision = 0;
    req.max_mod_revision = 0;
    req.min_create_revision = 0;
    req.max_create_revision = 0;
    Ok((range_from_pb(req)?, Some(filters)))
}

pub fn range_to_pb(resp: RangeResponse, header: PbResponseHeader) -> PbRangeResponse {
    PbRangeResponse {
        header: Some(header),
        kvs: resp.kvs.into_iter().map(kv_to_pb).collect(),
        more: resp.more,
        count: resp.count,
    }
}

pub fn put_from_pb(req: PbPutRequest) -> Result<PutRequest, Status> {
    key_required(&req.key)?;
    size_checked(&req)?;
    Ok(PutRequest {
        key: req.key,
        value: req.value,
        lease: req.lease,
        prev_kv: req.prev_kv,
        ignore_value: req.ignore_value,
        ignore_lease: req.ignore_lease,
    })
}

pub fn put_to_pb(resp: PutResponse, header: PbResponseHeader) -> PbPutResponse {
    PbPutResponse {
        header: Some(header),
        prev_kv: resp.prev_kv.map(kv_to_pb),
    }
}

pub fn delete_from_pb(req: PbDeleteRequest) -> Result<DeleteRangeRequest, Status> {
    key_required(&req.key)?;
    Ok(DeleteRangeRequest {
        range: KeyRange::from_etcd(req.key, req.range_end),
        prev_kv: req.prev_kv,
    })
}

pub fn delete_to_pb(resp: DeleteRangeResponse, header: PbResponseHeader) -> PbDeleteResponse {
    PbDeleteResponse {
        header: Some(header),
        deleted: resp.deleted,
        prev_kvs: resp.prev_kvs.into_iter().map(kv_to_pb).collect(),
    }
}

pub fn txn_from_pb(req: PbTxnRequest) -> Result<TxnRequest, Status> {
    size_checked(&req)?;
    if req.compare.len() > MAX_TXN_OPS
        || req.success.len() > MAX_TXN_OPS
        || req.failure.len() > MAX_TXN_OPS
    {
        return Err(Status::invalid_argument(
            "etcdserver: too many operations in txn request",
        ));
    }
    let ops = |ops: Vec<etcd_client::proto::PbTxnRequestOp>| -> Result<Vec<TxnOp>, Status> {
        ops.into_iter()
            .map(|op| match op.request {
                Some(PbTxnOpRequest::RequestRange(r)) => Ok(TxnOp::Range(range_from_pb(r)?)),
                Some(PbTxnOpRequest::RequestPut(p)) => Ok(TxnOp::Put(put_from_pb(p)?)),
                Some(PbTxnOpRequest::RequestDeleteRange(d)) => {
                    Ok(TxnOp::DeleteRange(delete_from_pb(d)?))
                }
                Some(PbTxnOpRequest::RequestTxn(_)) => Err(Status::unimplemented(
                    "edgeconf does not support nested transactions yet",
                )),
                None => Err(Status::invalid_argument(
                    "etcdserver: txn operation is empty",
                )),
            })
            .collect()
    };
    Ok(TxnRequest {
        compare: req
            .compare
            .into_iter()
            .map(compare_from_pb)
            .collect::<Result<_, _>>()?,
        success: ops(req.success)?,
        failure: ops(req.failure)?,
    })
}

fn compare_from_pb(c: PbCompare) -> Result<Compare, Status> {
    key_required(&c.key)?;
    let result = match c.result {
        0 => CompareResult::Equal,
        1 => CompareResult::Greater,
        2 => CompareResult::Less,
        3 => CompareResult::NotEqual,
        other => {
            return Err(Status::invalid_argument(format!(
                "unknown compare result {other}"
            )))
        }
    };
    // The union carries the operand; `target` says which field to compare.
    let target = match (c.target, c.target_union) {
        (0, Some(PbTargetUnion::Version(v))) => CompareTarget::Version(v),
        (1, Some(PbTargetUnion::CreateRevision(v))) => CompareTarget::Create(v),
        (2, Some(PbTargetUnion::ModRevision(v))) => CompareTarget::Mod(v),
        (3, Some(PbTargetUnion::Value(v))) => CompareTarget::Value(v),
        (4, Some(PbTargetUnion::Lease(v))) => CompareTarget::Lease(v),
        // proto3 drops zero operands: an absent union means 0 / empty.
        (0, None) => CompareTarget::Version(0),
        (1, None) => CompareTarget::Create(0),
        (2, None) => CompareTarget::Mod(0),
        (3, None) => CompareTarget::Value(Vec::new()),
        (4, None) => CompareTarget::Lease(0),
        (target, _) => {
            return Err(Status::invalid_argument(format!(
                "compare target {target} does not match its operand"
            )))
        }
    };
    Ok(Compare {
        range: KeyRange::from_etcd(c.key, c.range_end),
        result,
        target,
    })
}

pub fn txn_to_pb(resp: TxnResponse, header: PbResponseHeader) -> PbTxnResponse {
    let responses = resp
        .responses
        .into_iter()
        .map(|r| PbResponseOp {
            response: Some(match r {
                TxnOpResponse::Range(r) => PbTxnOpResponse::ResponseRange(range_to_pb(r, header)),
                TxnOpResponse::Put(p) => PbTxnOpResponse::ResponsePut(put_to_pb(p, header)),
                TxnOpResponse::DeleteRange(d) => {
                    PbTxnOpResponse::ResponseDeleteRange(delete_to_pb(d, header))
                }
            }),
        })
        .collect();
    PbTxnResponse {
        header: Some(header),
        succeeded: resp.succeeded,
        responses,
    }
}

pub fn event_to_pb(event: Event, with_prev_kv: bool) -> PbEvent {
    PbEvent {
        r#type: match event.kind {
            EventKind::Put => 0,
            EventKind::Delete => 1,
        },
        kv: Some(kv_to_pb(event.kv)),
        prev_kv: event.prev_kv.filter(|_| with_prev_kv).map(kv_to_pb),
    }
}
