# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of agentmesh.server.bus.deliveries (read that module first).

Same signatures, same effects, same bytes: the Python version builds a
dozen small bytes objects per record and joins them; this one writes each
record's fields straight into one growing C buffer and keeps offsets,
lengths and counters in C integers. Its Msg is an extension type outside
the cyclic collector (`cython.no_gc`: a Msg refers to its record, partition
and bytes, never to a container of Msgs, so it cannot be part of a cycle),
which keeps a subscription's outstanding deliveries out of every collection. Built by `make ext`
(scripts/build_ext.py); `hot_path` uses it only when its recorded source hash
matches this file.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem, PyDict_DelItem
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_DecodeASCII
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy

from agentmesh.server.bus import wire
from agentmesh.server.bus.deliveries import MAX_BEFORE

#: Which twin this module is (hot_path.HotPath.name).
IMPLEMENTATION = "compiled"
#: sha256 of this file when it was built (scripts/build_ext.py sets it).
SOURCE_SHA256 = BUILD_SOURCE_SHA256


@cython.no_gc
@cython.final
cdef class Msg:
    """deliveries.Msg's twin: the same attributes (backlog.Item's seq,
    order_key, cls, data, token, and the delivery's rec, tp, env_b,
    attempts, ack_id, deadline, last_reason)."""

    cdef public object seq, order_key, data, rec, tp, env_b, ack_id, last_reason
    cdef public long long cls, token, attempts
    cdef public double deadline

    def __init__(self, seq, order_key, long long cls, rec, tp, bytes env_b):
        fill(self, seq, order_key, cls, rec, tp, env_b)


cdef inline void fill(Msg m, object seq, object order_key, long long cls, object rec, object tp,
                      bytes env_b) noexcept:
    """A new delivery's attributes (deliveries.Msg.__init__)."""
    m.seq = seq
    m.order_key = order_key
    m.cls = cls
    m.data = tp
    m.token = 0
    m.rec = rec
    m.tp = tp
    m.env_b = env_b
    m.attempts = 0
    m.ack_id = ""
    m.deadline = 0.0
    m.last_reason = ""


cdef struct Buf:
    char* data
    Py_ssize_t size
    Py_ssize_t cap


cdef int buf_reserve(Buf* b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t need = b.size + extra
    cdef Py_ssize_t cap
    cdef char* grown
    if need <= b.cap:
        return 0
    cap = b.cap * 2 if b.cap else 65536
    while cap < need:
        cap *= 2
    grown = <char*>realloc(b.data, cap)
    if grown == NULL:
        raise MemoryError()
    b.data = grown
    b.cap = cap
    return 0


cdef inline Py_ssize_t put_varint(char* p, unsigned long long n) noexcept:
    """Base-128 varint of n at p; returns its length (1..10)."""
    cdef Py_ssize_t i = 0
    while n >= 0x80:
        p[i] = <char>((n & 0x7F) | 0x80)
        n >>= 7
        i += 1
    p[i] = <char>n
    return i + 1


cdef inline Py_ssize_t varint_len(unsigned long long n) noexcept:
    cdef Py_ssize_t i = 1
    while n >= 0x80:
        n >>= 7
        i += 1
    return i


cdef inline Py_ssize_t put_decimal(char* p, unsigned long long n) noexcept:
    """Decimal digits of n at p; returns their count."""
    cdef char tmp[24]
    cdef Py_ssize_t k = 0, i
    if n == 0:
        p[0] = b'0'
        return 1
    while n:
        tmp[k] = <char>(48 + n % 10)
        n //= 10
        k += 1
    for i in range(k):
        p[i] = tmp[k - 1 - i]
    return k


def encode_run(list items, double deadline, str ack_prefix, long long ack_n,
               dict prefixes, dict outstanding, dict by_tp, dict parts,
               dict last, dict touched, list odd, list redone):
    """See deliveries.encode_run."""
    cdef bytes prefix_b = ack_prefix.encode("ascii")
    cdef const char* prefix_c = prefix_b
    cdef Py_ssize_t n_prefix = len(prefix_b)
    cdef Buf b
    b.data = NULL
    b.size = 0
    b.cap = 0
    cdef Py_ssize_t i, n = PyList_GET_SIZE(items)
    cdef object msg, tp, cur = None, part = None, offsets = None, off_o
    cdef PyObject* found
    cdef bytes pre = b"", env
    cdef const char* pre_c = NULL
    cdef const char* env_c
    cdef Py_ssize_t n_pre = 0, n_env, n_pos, n_ack, n_rm, n_digits
    cdef long long off, nxt = -2, run0 = -2, attempt
    cdef char ack_buf[160]
    cdef char* p
    cdef object deadline_o = deadline
    cdef str ack_id
    if n_prefix > 128:
        raise ValueError("ack id prefix too long")
    memcpy(ack_buf, prefix_c, n_prefix)
    try:
        for i in range(n):
            msg = <object>PyList_GET_ITEM(items, i)
            tp = msg.tp
            if tp is not cur:
                if part is not None and cur is not None and nxt > run0:
                    part.contig = nxt
                    if last.get(cur, -1) < nxt - 1:
                        last[cur] = nxt - 1
                cur = tp
                found = PyDict_GetItem(prefixes, tp)
                pre = <bytes><object>found if found != NULL else b""
                if not pre:
                    pre = wire.position_bytes(tp[0], tp[1], 0)
                    prefixes[tp] = pre
                pre_c = pre
                n_pre = len(pre)
                found = PyDict_GetItem(by_tp, tp)
                offsets = <object>found if found != NULL else None
                found = PyDict_GetItem(parts, tp)
                part = <object>found if found != NULL else None
                nxt = run0 = part.contig if part is not None else -2
                if tp not in touched:
                    touched[tp] = (part, run0)
            off_o = msg.rec.offset
            off = off_o
            if off == nxt:
                nxt = off + 1
            else:
                odd.append(msg)
            n_digits = put_decimal(ack_buf + n_prefix, <unsigned long long>ack_n)
            n_ack = n_prefix + n_digits
            ack_n += 1
            ack_id = PyUnicode_DecodeASCII(ack_buf, n_ack, NULL)
            env = msg.env_b
            env_c = env
            n_env = len(env)
            n_pos = n_pre + (1 + varint_len(<unsigned long long>off) if off else 0)
            attempt = msg.attempts + 1
            msg.attempts = attempt
            if attempt > 1:
                redone.append(msg)
            msg.ack_id = ack_id
            msg.deadline = deadline_o
            PyDict_SetItem(outstanding, ack_id, msg)
            if offsets is not None:
                PyDict_SetItem(offsets, off_o, msg)
            n_rm = (5 + n_ack + varint_len(n_env) + n_env + varint_len(n_pos) + n_pos
                    + varint_len(<unsigned long long>attempt))
            buf_reserve(&b, 1 + varint_len(n_rm) + n_rm)
            p = b.data + b.size
            p[0] = b'\x0a'
            p += 1
            p += put_varint(p, n_rm)
            p[0] = b'\x0a'
            p[1] = <char>n_ack
            p += 2
            memcpy(p, ack_buf, n_ack)
            p += n_ack
            p[0] = b'\x12'
            p += 1
            p += put_varint(p, n_env)
            memcpy(p, env_c, n_env)
            p += n_env
            p[0] = b'\x1a'
            p += 1
            p += put_varint(p, n_pos)
            memcpy(p, pre_c, n_pre)
            p += n_pre
            if off:
                p[0] = b'\x18'
                p += 1
                p += put_varint(p, <unsigned long long>off)
            p[0] = b'\x20'
            p += 1
            p += put_varint(p, <unsigned long long>attempt)
            b.size = p - b.data
        if part is not None and cur is not None and nxt > run0:
            part.contig = nxt
            if last.get(cur, -1) < nxt - 1:
                last[cur] = nxt - 1
        return PyBytes_FromStringAndSize(b.data, b.size), ack_n
    finally:
        free(b.data)


def ack_up_to(dict offsets, dict outstanding, long long upto):
    """See deliveries.ack_up_to."""
    cdef list acked = []
    cdef object o
    for o in offsets:
        if <long long>o <= upto:
            acked.append(o)
    for o in acked:
        msg = offsets.pop(o)
        PyDict_DelItem(outstanding, msg.ack_id)
    return acked


def arrive_run(records, dict parts, long long seq_n, long long max_deliveries, list dlq):
    """See deliveries.arrive_run."""
    cdef list items = []
    cdef object env_bytes = wire.delivered_envelope_bytes
    cdef dict by_prio = wire.CLASS_BY_PRIORITY_B
    cdef bytes hash_prefix = wire.PROV_HASH64_PREFIX
    cdef str h_prio = wire.H_PRIORITY, h_hash = wire.H_HASH, h_env = wire.H_ENVELOPE
    cdef bytes env_type = wire.ENVELOPE_TYPE.encode()
    cdef object last_t = None, t, rec, st = None, stash = None, tp = None, pending_append = None
    cdef object hdrs, hd, k, prio, hash_b, env_v, value, key, off_o, cls_o
    cdef long long last_p = -1, p, off, nf, seen = -1, cls
    cdef Py_ssize_t n_hdr, j, n_val, n_pre
    cdef bint is_env
    cdef bytes env_b
    cdef char* w
    cdef Msg msg
    cdef PyObject* found
    n_pre = PyBytes_GET_SIZE(hash_prefix)
    for rec in records:
        t = rec.topic
        p = rec.partition
        if p != last_p or t != last_t:
            last_t = t
            last_p = p
            tp = (t, p)
            found = PyDict_GetItem(parts, tp)
            st = <object>found if found != NULL else None
            stash = st.stash if st is not None else None
            seen = st.prior.delivered if st is not None else -1
            pending_append = st.pending.append if st is not None else None
        off_o = rec.offset
        off = off_o
        if stash is not None:
            stash.append(rec)
            continue
        if st is None:
            continue  # revoked partition
        nf = st.next_fetch
        if off != nf:
            if off < nf:
                continue  # a refetch of what we hold
            st.skip_to(nf, off_o)  # the first record, or a hole (compaction)
        st.next_fetch = off + 1
        pending_append(off_o)
        hdrs = rec.headers
        if hdrs:
            # dict(hdrs).get(...) for three names: the last value of each wins.
            prio = None
            hash_b = None
            env_v = None
            for hd in hdrs:
                k = hd[0]
                if k == h_prio:
                    prio = hd[1]
                elif k == h_hash:
                    hash_b = hd[1]
                elif k == h_env:
                    env_v = hd[1]
            if prio:
                cls_o = by_prio.get(prio, 2)
                cls = cls_o
            else:
                cls = 2
            is_env = env_v == env_type
            value = rec.value or b""
            if is_env and type(hash_b) is bytes and len(hash_b) == 64 and type(value) is bytes:
                n_val = PyBytes_GET_SIZE(value)
                env_b = PyBytes_FromStringAndSize(NULL, n_val + n_pre + 64)
                w = PyBytes_AS_STRING(env_b)
                memcpy(w, PyBytes_AS_STRING(value), n_val)
                memcpy(w + n_val, PyBytes_AS_STRING(hash_prefix), n_pre)
                memcpy(w + n_val + n_pre, PyBytes_AS_STRING(hash_b), 64)
            else:
                env_b = env_bytes(rec, is_env, hash_b)
        else:
            cls = 2
            env_b = env_bytes(rec, False, None)
        key = rec.key
        msg = Msg.__new__(Msg)  # no __init__ call: fill() in C
        fill(msg, seq_n, (tp, key) if key else (tp, None, off_o), cls, rec, tp, env_b)
        seq_n += 1
        if off <= seen:
            msg.attempts = st.prior.attempts(off_o)
            if msg.attempts >= max_deliveries:
                msg.last_reason = MAX_BEFORE
                dlq.append(msg)
                continue
        items.append(msg)
    return items, seq_n
