# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of agentmesh.server.bus.deliveries (read that module first).

Same signatures, same effects, same bytes: the Python version builds a
dozen small bytes objects per record and joins them; this one writes each
record's fields straight into one growing C buffer and keeps offsets,
lengths and counters in C integers. Built by `make ext`
(scripts/build_ext.py); `hot_path` uses it only when its recorded source hash
matches this file.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem, PyDict_DelItem
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_DecodeASCII
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy

from agentmesh.server.bus import wire

#: Which twin this module is (hot_path.HotPath.name).
IMPLEMENTATION = "compiled"
#: sha256 of this file when it was built (scripts/build_ext.py sets it).
SOURCE_SHA256 = BUILD_SOURCE_SHA256


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
