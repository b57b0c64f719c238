"""The Subscribe path's per-record loops, in Python.

The functions a subscription runs once per fetched, delivered or acked
record: `arrive_run` (fetched records into Msg objects, with each
partition's fetch bookkeeping), `encode_run` (a batch's ReceivedMessages as
protobuf bytes, with the bookkeeping of each delivery) and `ack_up_to` (a
cumulative ack of one partition). `_deliveries.pyx` is their compiled twin, with the same
signatures and the same effects; `hot_path` picks one. Both are checked
against each other on generated batches (tests/unit/bus/test_hot_path.py) and
the bus contract suite runs on each.

Wire format of what `encode_run` writes, per item (protobuf.dev/programming-guides/encoding):
`MessageBatch.messages` (field 1, length-delimited) holding a ReceivedMessage:
`ack_id` = 1 (string), `envelope` = 2 (the stored Envelope bytes, passed
through), `position` = 3 (RecordPosition: topic = 1, partition = 2, offset = 3),
`delivery_attempt` = 4 (varint).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

from agentmesh.server.bus import wire
from agentmesh.server.bus.backend import TopicPartition
from agentmesh.server.bus.backlog import Item

#: Which twin this module is (hot_path.HotPath.name).
IMPLEMENTATION = "python"


class Msg(Item):
    """A fetched record with its delivery state; it is its own backlog Item
    (one object per record on the hot path; the compiled twin's Msg has the
    same attributes and is not tracked by the cyclic collector). `data` holds the record's
    partition, for Backlog.remove_if on a revoke.

    Attributes:
        rec: the record.
        tp: its (topic, partition).
        env_b: the serialized Envelope a subscriber receives
            (wire.delivered_envelope_bytes), made once on arrival and reused
            by redeliveries.
        attempts: deliveries so far.
        ack_id / deadline: of the current delivery (monotonic seconds).
    """

    __slots__ = ("ack_id", "attempts", "deadline", "env_b", "last_reason", "rec", "tp")

    def __init__(
        self, seq: int, order_key: Hashable, cls: int, rec: wire.StoredRecord,
        tp: TopicPartition, env_b: bytes,
    ) -> None:
        # Plain stores instead of Item.__init__: this runs once per fetched record.
        self.seq = seq
        self.order_key = order_key
        self.cls = cls
        self.data = tp
        self.token = 0
        self.rec = rec
        self.tp = tp
        self.env_b = env_b
        self.attempts = 0
        self.ack_id = ""
        self.deadline = 0.0
        self.last_reason = ""


def encode_run(
    items: list[Any], deadline: float, ack_prefix: str, ack_n: int,
    prefixes: dict[TopicPartition, bytes], outstanding: dict[str, Any],
    by_tp: dict[TopicPartition, dict[int, Any]], parts: dict[TopicPartition, Any],
    last: dict[TopicPartition, int], touched: dict[TopicPartition, tuple[Any, int]],
    odd: list[Any], redone: list[Any],
) -> tuple[bytes, int]:
    """Encode `items` (Msg objects of either twin) as MessageBatch.messages fields and
    record each as delivered.

    Per item: a new ack id `f"{ack_prefix}{n}"` (n from `ack_n` up), its
    attempt counted (`attempts += 1`), `ack_id` and `deadline` (monotonic s)
    set, and the item stored in `outstanding[ack_id]` and
    `by_tp[tp][offset]` (when the partition has an index). The partition's
    `contig` (in `parts`, subscription._PartState) advances over a run of items at it;
    `last[tp]` becomes the highest such offset, `touched[tp]` is the
    partition's (cursor or None, contig before the batch); items not at
    `contig` go to `odd`, redeliveries (attempt > 1) to `redone`.
    `prefixes` caches each partition's serialized RecordPosition without
    its offset.

    Returns:
        (the fields' bytes, the next unused ack number).
    """
    varint = wire.varint
    small = wire.SMALL_VARINTS
    out: list[bytes] = []
    extend = out.extend
    cur: TopicPartition | None = None
    pre = b""
    offsets: dict[int, Any] | None = None
    part: Any = None
    nxt = -2  # the partition's contig while in this run
    run0 = -2  # contig at the start of the run
    for msg in items:
        tp = msg.tp
        if tp is not cur:
            if part is not None and cur is not None and nxt > run0:
                part.contig = nxt
                if last.get(cur, -1) < nxt - 1:
                    last[cur] = nxt - 1
            cur = tp
            pre = prefixes.get(tp) or b""
            if not pre:
                pre = prefixes[tp] = wire.position_bytes(tp[0], tp[1], 0)
            offsets = by_tp.get(tp)
            part = parts.get(tp)
            nxt = run0 = part.contig if part is not None else -2
            if tp not in touched:
                touched[tp] = (part, run0)
        off = msg.rec.offset
        if off == nxt:
            nxt = off + 1
        else:
            odd.append(msg)
        pos = pre + b"\x18" + (small[off] if off < 128 else varint(off)) if off else pre
        ack_id = f"{ack_prefix}{ack_n}"
        ack_n += 1
        ack_b = ack_id.encode()
        env = msg.env_b
        n_env = len(env)
        n_pos = len(pos)
        attempt = msg.attempts + 1
        msg.attempts = attempt
        if attempt > 1:
            redone.append(msg)
        msg.ack_id = ack_id
        msg.deadline = deadline
        outstanding[ack_id] = msg
        if offsets is not None:
            offsets[off] = msg
        # ReceivedMessage fields straight into the batch's parts (one join
        # for the whole batch): ack_id (ids are < 128 bytes), envelope,
        # position, delivery_attempt.
        n_ack = len(ack_b)
        l_env = small[n_env] if n_env < 128 else varint(n_env)
        l_pos = small[n_pos] if n_pos < 128 else varint(n_pos)
        att = small[attempt] if attempt < 128 else varint(attempt)
        n_rm = 5 + n_ack + len(l_env) + n_env + len(l_pos) + n_pos + len(att)
        extend((b"\x0a", small[n_rm] if n_rm < 128 else varint(n_rm),
                b"\x0a", small[n_ack], ack_b, b"\x12", l_env, env,
                b"\x1a", l_pos, pos, b"\x20", att))
    if part is not None and cur is not None and nxt > run0:
        part.contig = nxt
        if last.get(cur, -1) < nxt - 1:
            last[cur] = nxt - 1
    return b"".join(out), ack_n


def ack_up_to(offsets: dict[int, Any], outstanding: dict[str, Any], upto: int) -> list[int]:
    """Settle every delivery of one partition at or below offset `upto`:
    remove it from `offsets` (the partition's index, offset -> Msg) and
    from `outstanding` (by its ack id).

    Returns:
        the offsets settled, in the index's order (delivery order).
    """
    acked = [o for o in offsets if o <= upto]
    for o in acked:
        del outstanding[offsets.pop(o).ack_id]
    return acked


#: Msg.last_reason of a record dead-lettered on arrival.
MAX_BEFORE = "max_deliveries reached before a rebalance or restart"


def arrive_run(
    records: Sequence[wire.StoredRecord], parts: dict[TopicPartition, Any], seq_n: int,
    max_deliveries: int, dlq: list[Any],
) -> tuple[list[Any], int]:
    """Turn fetched records into Msg objects, in order (the partition looked
    up once per run of records).

    Per record of a partition in `parts` (subscription._PartState): while
    the partition's earlier deliveries are being read (`stash` not None) the
    record is stashed; a refetch below `next_fetch` is dropped; otherwise
    `skip_to` is told of a gap, `next_fetch` advances and the offset joins
    `pending`. Its backlog class and delivered Envelope bytes come from its
    headers (wire.delivery_meta, wire.delivered_envelope_bytes), its order
    key is (tp, key) or, without a key, (tp, None, offset), its seq the next
    number from `seq_n`. A record the group was sent before keeps its
    attempts (state.Prior); one with `max_deliveries` already goes to `dlq`
    (last_reason MAX_BEFORE) instead. Records of other partitions are dropped
    (revoked).

    Returns:
        (the new Msgs, the next unused seq number).
    """
    items: list[Any] = []
    append = items.append
    env_bytes = wire.delivered_envelope_bytes
    by_prio = wire.CLASS_BY_PRIORITY_B
    hash_prefix = wire.PROV_HASH64_PREFIX
    h_prio, h_hash, h_env = wire.H_PRIORITY, wire.H_HASH, wire.H_ENVELOPE
    env_type = wire.ENVELOPE_TYPE.encode()
    last_t: str | None = None
    last_p = -1
    tp: TopicPartition = ("", 0)
    st: Any = None
    stash: list[wire.StoredRecord] | None = None
    seen = -1  # offsets at or below it were delivered before
    for rec in records:
        t = rec.topic
        p = rec.partition
        if p != last_p or t != last_t:
            last_t, last_p = t, p
            tp = (t, p)
            st = parts.get(tp)
            stash = st.stash if st is not None else None
            seen = st.prior.delivered if st is not None else -1
        off = rec.offset
        if stash is not None:
            stash.append(rec)
            continue
        if st is None:
            continue  # revoked partition
        nf = st.next_fetch
        if off != nf:
            if off < nf:
                continue  # a refetch of what we hold
            st.skip_to(nf, off)  # the first record, or a hole (compaction)
        st.next_fetch = off + 1
        st.pending.append(off)
        # wire.delivery_meta and delivered_envelope_bytes, inlined for the
        # gateway's own records (an Envelope with a 64-hex am-hash).
        hdrs = rec.headers
        if hdrs:
            h = dict(hdrs)
            prio = h.get(h_prio)
            cls = by_prio.get(prio, 2) if prio else 2
            hash_b = h.get(h_hash)
            is_env = h.get(h_env) == env_type
            if is_env and hash_b is not None and len(hash_b) == 64:
                env_b = (rec.value or b"") + hash_prefix + hash_b
            else:
                env_b = env_bytes(rec, is_env, hash_b)
        else:
            cls = 2
            env_b = env_bytes(rec, False, None)
        key = rec.key
        msg = Msg(seq_n, (tp, key) if key else (tp, None, off), cls, rec, tp, env_b)
        seq_n += 1
        if off <= seen:
            msg.attempts = st.prior.attempts(off)
            if msg.attempts >= max_deliveries:
                msg.last_reason = MAX_BEFORE
                dlq.append(msg)
                continue
        append(msg)
    return items, seq_n
