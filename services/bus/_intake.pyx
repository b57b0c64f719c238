# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled write path: a PublishStream request's bytes straight to records.

`Publisher.submit` works on decoded Envelope messages: grpc parses every
request Envelope into a upb message, the runtime walks each one for its
contract checks, and `_enqueue` reads a dozen fields through upb attribute
access and re-serializes the Envelope as the stored value's head. This
module does the same work on the request's bytes: it scans the protobuf
wire format (protobuf.dev/programming-guides/encoding), checks what the
message path checks, and writes each record's value (the client's Envelope
bytes, then the id, priority, provenance and publish_time fields the gateway
fills, as wire.py's encoding note describes) and its hash link into one C
buffer.

It takes only envelopes it understands completely. Anything else - a
malformed or unknown field, a repeated singular field, invalid UTF-8, an
unknown enum value, deep nesting, application headers, a recipient, a
client-sent provenance or publish_time, a topic or sender not validated yet,
an oversized message, a missing payload - sends the *whole request* down
the message path (`publish_run` returns -1 before it has changed anything),
whose outcome is then the gateway's answer: errors, first-use validation
and topic creation stay in one place. tests/unit/bus/test_intake.py holds
this module to the message path on generated requests, byte for byte.

Built by `make ext` (scripts/build_ext.py); `hot_path` uses it only when
its compiled-in source hash matches this file.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.memoryview cimport PyMemoryView_FromMemory
from cpython.buffer cimport PyBUF_READ
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport uint8_t, uint64_t
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy, memcmp


cdef extern from "Python.h":
    void PyObject_GC_UnTrack(void* op)

import hashlib

from agentmesh.bus.v1 import bus_pb2
from agentmesh.common.v1 import common_pb2
from agentmesh.server.bus import wire

#: Which twin this module is (hot_path.HotPath.name).
IMPLEMENTATION = "compiled"
#: sha256 of this file when it was built (scripts/build_ext.py sets it).
SOURCE_SHA256 = BUILD_SOURCE_SHA256

cdef object _sha256 = hashlib.sha256
#: Nesting deeper than this (Struct in Value in Struct ...) goes the message
#: way: upb's own limit (100) must decide, not this scanner.
cdef int MAX_DEPTH = 32
cdef int NORMAL = common_pb2.PRIORITY_NORMAL
cdef int REQUEST = bus_pb2.MESSAGE_TYPE_REQUEST

# Enum values the contract allows (request_checks refuses the others).
cdef bint PRIO_OK[64]
cdef bint MTYPE_OK[64]
for _i in range(64):
    PRIO_OK[_i] = _i in set(common_pb2.Priority.values())
    MTYPE_OK[_i] = _i in set(bus_pb2.MessageType.values())

cdef tuple ENV_HEADER = (wire.H_ENVELOPE, wire.ENVELOPE_TYPE.encode())
cdef list PRIO_HEADERS = [None] * 64
cdef list MTYPE_HEADERS = [None] * 64
for _v in common_pb2.Priority.values():
    PRIO_HEADERS[_v] = (wire.H_PRIORITY, common_pb2.Priority.Name(_v).encode())
for _v in bus_pb2.MessageType.values():
    MTYPE_HEADERS[_v] = (wire.H_MESSAGE_TYPE, bus_pb2.MessageType.Name(_v).encode())
cdef str H_ID = wire.H_ID
cdef str H_HASH = wire.H_HASH
cdef str H_CORRELATION = wire.H_CORRELATION
cdef str H_REPLY_TO = wire.H_REPLY_TO
cdef str H_SENDER = wire.H_SENDER
cdef const char* HEX = b"0123456789abcdef"


ctypedef struct Span:
    Py_ssize_t off
    Py_ssize_t n


ctypedef struct Env:
    Py_ssize_t start
    Py_ssize_t end
    Span id
    Span topic
    Span key
    Span corr
    Span sender
    Span reply_to
    int prio
    int mtype
    int topic_ix
    int has_payload


# ---- the wire format ------------------------------------------------------

cdef inline bint read_varint(const uint8_t* p, Py_ssize_t* pos, Py_ssize_t end,
                             uint64_t* out) noexcept:
    """A base-128 varint at p[pos] (at most 10 bytes); False when malformed."""
    cdef uint64_t v = 0
    cdef int shift = 0
    cdef uint8_t b
    while pos[0] < end and shift < 64:
        b = p[pos[0]]
        pos[0] += 1
        v |= (<uint64_t>(b & 0x7F)) << shift
        if b < 0x80:
            out[0] = v
            return True
        shift += 7
    return False


cdef inline bint read_len(const uint8_t* p, Py_ssize_t* pos, Py_ssize_t end,
                          Py_ssize_t* start) noexcept:
    """A length-delimited field's body: start at `start`, pos moved past it."""
    cdef uint64_t n
    if not read_varint(p, pos, end, &n) or n > <uint64_t>(end - pos[0]):
        return False
    start[0] = pos[0]
    pos[0] += <Py_ssize_t>n
    return True


cdef bint utf8_ok(const uint8_t* p, Py_ssize_t n):
    """True when p[:n] is valid UTF-8 (proto3 strings must be: upb refuses
    them otherwise). ASCII is checked here; the rest by CPython's strict
    decoder, which refuses overlong forms and surrogates as upb does."""
    cdef Py_ssize_t i
    for i in range(n):
        if p[i] >= 0x80:
            break
    else:
        return True
    try:
        PyUnicode_DecodeUTF8(<const char*>p + i, n - i, b"strict")
    except UnicodeDecodeError:
        return False
    return True


cdef bint check_timestamp(const uint8_t* p, Py_ssize_t pos, Py_ssize_t end):
    """google.protobuf.Timestamp: seconds (1) and nanos (2), varints, once each."""
    cdef uint64_t tag, v
    cdef int seen = 0
    cdef int f
    while pos < end:
        if not read_varint(p, &pos, end, &tag) or (tag & 7) != 0:
            return False
        f = <int>(tag >> 3)
        if (f != 1 and f != 2) or seen & (1 << f) or not read_varint(p, &pos, end, &v):
            return False
        seen |= 1 << f
    return True


cdef bint check_value(const uint8_t* p, Py_ssize_t pos, Py_ssize_t end, int depth):
    """google.protobuf.Value: at most one of its kinds (null 1, number 2,
    string 3, bool 4, struct 5, list 6)."""
    cdef uint64_t tag, v
    cdef Py_ssize_t s
    cdef int kinds = 0
    cdef int f, wt
    if depth > MAX_DEPTH:
        return False
    while pos < end:
        if not read_varint(p, &pos, end, &tag):
            return False
        f = <int>(tag >> 3)
        wt = <int>(tag & 7)
        kinds += 1
        if kinds > 1:
            return False
        if (f == 1 or f == 4) and wt == 0:
            if not read_varint(p, &pos, end, &v):
                return False
        elif f == 2 and wt == 1:
            if end - pos < 8:
                return False
            pos += 8
        elif f == 3 and wt == 2:
            if not read_len(p, &pos, end, &s) or not utf8_ok(p + s, pos - s):
                return False
        elif f == 5 and wt == 2:
            if not read_len(p, &pos, end, &s) or not check_struct(p, s, pos, depth + 1):
                return False
        elif f == 6 and wt == 2:
            if not read_len(p, &pos, end, &s) or not check_list(p, s, pos, depth + 1):
                return False
        else:
            return False
    return True


cdef bint check_list(const uint8_t* p, Py_ssize_t pos, Py_ssize_t end, int depth):
    """google.protobuf.ListValue: repeated Value values (1)."""
    cdef uint64_t tag
    cdef Py_ssize_t s
    if depth > MAX_DEPTH:
        return False
    while pos < end:
        if not read_varint(p, &pos, end, &tag) or tag != 0x0A:
            return False
        if not read_len(p, &pos, end, &s) or not check_value(p, s, pos, depth + 1):
            return False
    return True


cdef bint check_struct(const uint8_t* p, Py_ssize_t pos, Py_ssize_t end, int depth):
    """google.protobuf.Struct: map<string, Value> fields (1), each entry a
    key (1) and a value (2), at most once each."""
    cdef uint64_t tag
    cdef Py_ssize_t s, e, q
    cdef int seen
    if depth > MAX_DEPTH:
        return False
    while pos < end:
        if not read_varint(p, &pos, end, &tag) or tag != 0x0A:
            return False
        if not read_len(p, &pos, end, &s):
            return False
        e = pos
        seen = 0
        while s < e:
            if not read_varint(p, &s, e, &tag):
                return False
            if tag == 0x0A and not seen & 1:
                seen |= 1
                if not read_len(p, &s, e, &q) or not utf8_ok(p + q, s - q):
                    return False
            elif tag == 0x12 and not seen & 2:
                seen |= 2
                if not read_len(p, &s, e, &q) or not check_value(p, q, s, depth + 2):
                    return False
            else:
                return False
    return True


cdef int check_payload(const uint8_t* p, Py_ssize_t pos, Py_ssize_t end):
    """agentmesh.common.v1.Payload: 1 when it holds exactly one kind
    (struct_value 1, bytes_value 2) and a valid content_type (3), else 0."""
    cdef uint64_t tag
    cdef Py_ssize_t s
    cdef int seen = 0
    cdef int f
    while pos < end:
        if not read_varint(p, &pos, end, &tag) or (tag & 7) != 2:
            return 0
        f = <int>(tag >> 3)
        if f < 1 or f > 3 or seen & (1 << f) or not read_len(p, &pos, end, &s):
            return 0
        seen |= 1 << f
        if f == 1:
            if not check_struct(p, s, pos, 4):
                return 0
        elif f == 3:
            if not utf8_ok(p + s, pos - s):
                return 0
    return 1 if (seen & 6) == 2 or (seen & 6) == 4 else 0


cdef bint scan_envelope(const uint8_t* p, Py_ssize_t pos, Py_ssize_t end, Env* env):
    """Read one Envelope's fields into `env`; False when it must go the
    message way (see the module docstring)."""
    cdef uint64_t tag, v
    cdef Py_ssize_t s
    cdef int seen = 0
    cdef int f, wt
    cdef Span* span
    env.start = pos
    env.end = end
    env.id.n = env.topic.n = env.key.n = env.corr.n = env.sender.n = env.reply_to.n = 0
    env.prio = env.mtype = env.has_payload = 0
    while pos < end:
        if not read_varint(p, &pos, end, &tag):
            return False
        f = <int>(tag >> 3)
        wt = <int>(tag & 7)
        if f > 30 or seen & (1 << f):
            return False
        seen |= 1 << f
        if f == 5 or f == 14:  # priority, message_type
            if wt != 0 or not read_varint(p, &pos, end, &v) or v >= 64:
                return False
            if f == 5:
                if not PRIO_OK[v]:
                    return False
                env.prio = <int>v
            else:
                if not MTYPE_OK[v]:
                    return False
                env.mtype = <int>v
            continue
        if wt != 2 or not read_len(p, &pos, end, &s):
            return False
        if f == 4:
            if not check_payload(p, s, pos):
                return False
            env.has_payload = 1
            continue
        if f == 10:  # create_time
            if not check_timestamp(p, s, pos):
                return False
            continue
        if f == 1:
            span = &env.id
        elif f == 2:
            span = &env.topic
        elif f == 3:
            span = &env.key
        elif f == 7:
            span = &env.corr
        elif f == 8:
            span = &env.reply_to
        elif f == 12:
            span = &env.sender
        else:
            # 6 headers, 9 provenance, 11 publish_time, 13 recipient_id, unknown
            return False
        if not utf8_ok(p + s, pos - s):
            return False
        span.off = s
        span.n = pos - s
    return env.has_payload == 1 and env.topic.n > 0


cdef inline bint same(const uint8_t* p, Span a, Span b) noexcept:
    return a.n == b.n and memcmp(p + a.off, p + b.off, a.n) == 0


cdef inline object utf8(const uint8_t* p, Span s):
    return PyUnicode_DecodeUTF8(<const char*>p + s.off, s.n, NULL)


cdef inline object slice_bytes(const uint8_t* p, Span s):
    return PyBytes_FromStringAndSize(<const char*>p + s.off, s.n)


cdef inline Py_ssize_t put_varint(uint8_t* out, uint64_t v) noexcept:
    cdef Py_ssize_t n = 0
    while v >= 0x80:
        out[n] = <uint8_t>((v & 0x7F) | 0x80)
        v >>= 7
        n += 1
    out[n] = <uint8_t>v
    return n + 1


cdef inline Py_ssize_t put(uint8_t* out, object b) noexcept:
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    memcpy(out, PyBytes_AS_STRING(b), n)
    return n


cdef inline unsigned int murmur2(const uint8_t* data, Py_ssize_t length) noexcept:
    """Kafka's murmur2 (partitioner.murmur2, same source: Utils.murmur2)."""
    cdef unsigned int m = 0x5BD1E995
    cdef unsigned int h = 0x9747B28C ^ <unsigned int>length
    cdef unsigned int k
    cdef Py_ssize_t n4 = length & ~3
    cdef Py_ssize_t i = 0
    while i < n4:
        k = (<unsigned int>data[i] | (<unsigned int>data[i + 1] << 8)
             | (<unsigned int>data[i + 2] << 16) | (<unsigned int>data[i + 3] << 24))
        k *= m
        k ^= k >> 24
        k *= m
        h *= m
        h ^= k
        i += 4
    cdef Py_ssize_t rest = length & 3
    if rest == 3:
        h ^= <unsigned int>data[n4 + 2] << 16
    if rest >= 2:
        h ^= <unsigned int>data[n4 + 1] << 8
    if rest >= 1:
        h ^= data[n4]
        h *= m
    h ^= h >> 13
    h *= m
    h ^= h >> 15
    return h


# ---- the run ----------------------------------------------------------------

def publish_run(bytes data, object pub, list records, list ids, list hashes, list todo,
                object now_ms, bytes create_field, bytes publish_field):
    """Encode, chain and queue the records of one PublishStreamRequest's bytes.

    The compiled form of `Publisher.submit` + `_enqueue` for requests whose
    every Envelope is one it fully understands (module docstring).

    Args:
        data: the serialized PublishStreamRequest.
        pub: the Publisher (its validated topic and sender sets, partition
            cache, id source, partitioner and ChainWriter are used and, on
            success, advanced).
        records / ids / hashes / todo: a Pending's columns, appended to in
            write order (records: wire.OutRecord tuples).
        now_ms: publish time, ms since the epoch (the records' timestamp).
        create_field / publish_field: the encoded Provenance.create_time and
            Envelope.publish_time fields of `now_ms`.

    Returns:
        The number of envelopes queued (all of them), or -1 when the request
        must go the message way; then nothing was changed or appended.
    """
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t end = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t s
    cdef uint64_t tag
    cdef int cap = 64
    cdef int n = 0
    cdef int k, j, npart, partition
    cdef Env* envs = <Env*>malloc(cap * sizeof(Env))
    cdef Env* env
    cdef Env* grown
    cdef uint8_t* buf = NULL
    cdef Py_ssize_t buf_cap = 0
    cdef Py_ssize_t need, w, vlen, prov_len, max_bytes
    cdef uint8_t seq_b[10]
    cdef Py_ssize_t seq_n
    cdef uint8_t hexbuf[64]
    cdef const uint8_t* raw
    cdef unsigned long long seq, idn
    cdef list topics = []
    cdef list parts = []
    cdef dict topic_ix = {}
    cdef object topic, st, digest, hex_b, value, idb, kb, headers, rec
    cdef Py_ssize_t* bases = NULL
    cdef int* slot_of = NULL
    cdef unsigned long long* seqs = NULL
    cdef Py_ssize_t nslots
    cdef int slot
    cdef list states = []
    cdef list chain_fields = []
    cdef list last_raws = []
    cdef list last_hexes = []
    cdef bytes id_prefix
    cdef char idtail[24]
    cdef int idtail_n
    if envs == NULL:
        raise MemoryError()
    try:
        # Pass 1: scan and check everything, change nothing.
        valid_topics = pub._valid_topics
        valid_ids = pub._valid_ids
        cached = pub.backend.cached_partitions
        max_bytes = pub.settings.max_payload_bytes
        auth_on = pub.auth_on()
        while pos < end:
            if not read_varint(p, &pos, end, &tag) or tag != 0x0A:
                return -1
            if not read_len(p, &pos, end, &s):
                return -1
            if n == cap:
                cap *= 2
                grown = <Env*>realloc(envs, cap * sizeof(Env))
                if grown == NULL:
                    raise MemoryError()
                envs = grown
            env = &envs[n]
            if not scan_envelope(p, s, pos, env) or pos - s > max_bytes:
                return -1
            if n and same(p, env.topic, envs[n - 1].topic):
                env.topic_ix = envs[n - 1].topic_ix
            else:
                key_b = slice_bytes(p, env.topic)
                ix = topic_ix.get(key_b)
                if ix is None:
                    topic = utf8(p, env.topic)
                    if topic not in valid_topics:
                        return -1
                    npart = cached(topic) or 0
                    if npart <= 0:
                        return -1
                    ix = len(topics)
                    topics.append(topic)
                    parts.append(npart)
                    topic_ix[key_b] = ix
                env.topic_ix = ix
            if env.sender.n and (auth_on or utf8(p, env.sender) not in valid_ids):
                return -1
            if env.reply_to.n and (env.mtype != REQUEST
                                   or utf8(p, env.reply_to) not in valid_topics):
                return -1
            n += 1

        # Pass 2: values, links and records, in request order. The chains
        # this request extends are read once into slots (C sequence counters,
        # lists of hashes) and written back at the end, not per record.
        if n == 0:
            return 0
        chains = pub.chain._chains
        new_state = pub.chain._state
        nslots = 0
        bases = <Py_ssize_t*>malloc(len(topics) * sizeof(Py_ssize_t))
        if bases == NULL:
            raise MemoryError()
        for j in range(len(topics)):
            bases[j] = nslots
            nslots += <Py_ssize_t>parts[j]
        slot_of = <int*>malloc(nslots * sizeof(int))
        seqs = <unsigned long long*>malloc(nslots * sizeof(unsigned long long))
        if slot_of == NULL or seqs == NULL:
            raise MemoryError()
        for j in range(nslots):
            slot_of[j] = -1
        next_rr = pub.partitioner.next_round_robin
        next_id = pub._ids.__next__
        id_prefix = pub._id_prefix.encode()
        for k in range(n):
            env = &envs[k]
            topic = topics[env.topic_ix]
            npart = parts[env.topic_ix]
            if env.key.n:
                kb = slice_bytes(p, env.key)
                partition = <int>((murmur2(p + env.key.off, env.key.n) & 0x7FFFFFFF) % npart) \
                    if npart > 1 else 0
            else:
                kb = None
                partition = <int>(next_rr() % npart) if npart > 1 else 0
            if env.id.n:
                idb = slice_bytes(p, env.id)
            else:
                idn = next_id()
                idtail_n = 0
                j = 60
                while True:  # hex digits of the counter, no leading zeros
                    if (idn >> j) & 0xF or idtail_n or j == 0:
                        idtail[idtail_n] = HEX[(idn >> j) & 0xF]
                        idtail_n += 1
                    if j == 0:
                        break
                    j -= 4
                idb = id_prefix + PyBytes_FromStringAndSize(idtail, idtail_n)
            slot = slot_of[bases[env.topic_ix] + partition]
            if slot < 0:
                st = chains.get((topic, partition))
                if st is None:
                    st = new_state(topic, partition)
                slot = len(states)
                slot_of[bases[env.topic_ix] + partition] = slot
                states.append(st)
                seqs[slot] = st.sequence
                chain_fields.append(st.chain_id_field)
                last_raws.append(st.last_raw)
                last_hexes.append(st.last_hex)
            seq = seqs[slot] + 1
            seq_n = put_varint(seq_b, seq)
            chain_field = chain_fields[slot]
            last_hex = last_hexes[slot]
            prov_len = (PyBytes_GET_SIZE(chain_field) + 1 + seq_n + 2 + 64
                        + PyBytes_GET_SIZE(create_field))
            need = (32 + (env.end - env.start) + 12 + PyBytes_GET_SIZE(idb) + 2 + 11 + prov_len
                    + PyBytes_GET_SIZE(publish_field))
            if need > buf_cap:
                buf_cap = need * 2
                free(buf)
                buf = <uint8_t*>malloc(buf_cap)
                if buf == NULL:
                    raise MemoryError()
            # buf = previous hash (raw, 32 bytes) || value; the link's hash covers both.
            w = put(buf, last_raws[slot])
            memcpy(buf + w, p + env.start, env.end - env.start)
            w += env.end - env.start
            if not env.id.n:
                buf[w] = 0x0A  # Envelope.id
                w += 1
                w += put_varint(buf + w, PyBytes_GET_SIZE(idb))
                w += put(buf + w, idb)
            if not env.prio:
                buf[w] = 0x28  # Envelope.priority = NORMAL
                buf[w + 1] = <uint8_t>NORMAL
                w += 2
            buf[w] = 0x4A  # Envelope.provenance
            w += 1
            w += put_varint(buf + w, prov_len)
            w += put(buf + w, chain_field)
            buf[w] = 0x10  # Provenance.sequence
            w += 1
            memcpy(buf + w, seq_b, seq_n)
            w += seq_n
            buf[w] = 0x1A  # Provenance.previous_hash: 64 hex characters
            buf[w + 1] = 0x40
            w += 2
            w += put(buf + w, last_hex)
            w += put(buf + w, create_field)
            w += put(buf + w, publish_field)
            vlen = w - 32
            digest = _sha256(PyMemoryView_FromMemory(<char*>buf, w, PyBUF_READ)).digest()
            raw = <const uint8_t*>PyBytes_AS_STRING(digest)
            for j in range(32):
                hexbuf[2 * j] = HEX[raw[j] >> 4]
                hexbuf[2 * j + 1] = HEX[raw[j] & 0xF]
            hex_b = PyBytes_FromStringAndSize(<char*>hexbuf, 64)
            value = PyBytes_FromStringAndSize(<char*>buf + 32, vlen)
            seqs[slot] = seq
            last_raws[slot] = digest
            last_hexes[slot] = hex_b
            prio = env.prio or NORMAL
            if env.corr.n or env.reply_to.n or env.sender.n or env.mtype:
                headers = [ENV_HEADER, (H_ID, idb), PRIO_HEADERS[prio]]
                if env.corr.n:
                    headers.append((H_CORRELATION, slice_bytes(p, env.corr)))
                if env.reply_to.n:
                    headers.append((H_REPLY_TO, slice_bytes(p, env.reply_to)))
                if env.sender.n:
                    headers.append((H_SENDER, slice_bytes(p, env.sender)))
                if env.mtype:
                    headers.append(MTYPE_HEADERS[env.mtype])
                headers.append((H_HASH, hex_b))
            else:
                headers = [ENV_HEADER, (H_ID, idb), PRIO_HEADERS[prio], (H_HASH, hex_b)]
            # A record, its header list and tuples hold only strings, bytes
            # and ints (the list is never appended to later): they cannot be
            # part of a cycle, so the cyclic collector need not walk them.
            for j in range(len(headers)):
                PyObject_GC_UnTrack(<void*>headers[j])
            PyObject_GC_UnTrack(<void*>headers)
            rec = (topic, partition, kb, value, headers, now_ms)
            PyObject_GC_UnTrack(<void*>rec)
            records.append(rec)
            ids.append(idb)
            hashes.append(hex_b)
            todo.append(k)
        for j in range(len(states)):
            st = states[j]
            st.sequence = seqs[j]
            st.last_raw = last_raws[j]
            st.last_hex = last_hexes[j]
        return n
    finally:
        free(envs)
        free(buf)
        free(bases)
        free(slot_of)
        free(seqs)


# ---- delivery reports ---------------------------------------------------------

def encode_reports(list slots, list records, list offsets, list ids, list hashes, list todo,
                   list errors):
    """The serialized PublishStreamResponse of a settled Pending (the twin
    of publisher.encode_reports: same arguments, same bytes).

    Args:
        slots: per envelope, its encoded error report (reports field) when
            errors[i] is set, else b"".
        records / offsets / ids / hashes / todo: the Pending's columns.
        errors: per envelope, its error or None.
    """
    cdef Py_ssize_t n = len(errors)
    cdef Py_ssize_t ntodo = len(todo)
    cdef Py_ssize_t i, k = 0, w = 0, cap = 4096, need = 0, body = 0, pos_n = 0, id_n = 0
    cdef uint8_t* out = <uint8_t*>malloc(cap)
    cdef uint8_t* grown
    cdef uint8_t offb[10]
    cdef Py_ssize_t off_n
    cdef long long off
    cdef dict prefixes = {}
    cdef object rec, tp, prefix, idb, slot
    if out == NULL:
        raise MemoryError()
    try:
        for i in range(n):
            while k < ntodo and <Py_ssize_t>todo[k] < i:
                k += 1
            if errors[i] is not None:
                slot = slots[i]
                need = PyBytes_GET_SIZE(slot)
            elif k < ntodo and <Py_ssize_t>todo[k] == i:
                rec = records[k]
                tp = (rec[0], rec[1])
                prefix = prefixes.get(tp)
                if prefix is None:
                    prefix = wire.len_field(b"\x0a", rec[0].encode())
                    if rec[1]:
                        prefix += b"\x10" + wire.varint(rec[1])
                    prefixes[tp] = prefix
                off = offsets[k]
                off_n = put_varint(offb, <uint64_t>off) if off else 0
                idb = ids[k]
                id_n = PyBytes_GET_SIZE(idb)
                pos_n = PyBytes_GET_SIZE(prefix) + (1 + off_n if off_n else 0)
                body = 2 + 1 + varint_len(id_n) + id_n + 1 + varint_len(pos_n) + pos_n + 2 + 64
                need = 1 + varint_len(body) + body
            else:
                continue
            if w + need > cap:
                cap = 2 * (w + need)
                grown = <uint8_t*>realloc(out, cap)
                if grown == NULL:
                    raise MemoryError()
                out = grown
            if errors[i] is not None:
                w += put(out + w, slot)
                continue
            # status (empty: OK), id, position, hash (64 hex characters)
            out[w] = 0x0A
            w += 1
            w += put_varint(out + w, body)
            out[w] = 0x0A
            out[w + 1] = 0x00
            out[w + 2] = 0x12
            w += 3
            w += put_varint(out + w, id_n)
            w += put(out + w, idb)
            out[w] = 0x1A
            w += 1
            w += put_varint(out + w, pos_n)
            w += put(out + w, prefix)
            if off_n:
                out[w] = 0x18
                w += 1
                memcpy(out + w, offb, off_n)
                w += off_n
            out[w] = 0x22
            out[w + 1] = 0x40
            w += 2
            w += put(out + w, hashes[k])
        return PyBytes_FromStringAndSize(<char*>out, w)
    finally:
        free(out)


cdef inline Py_ssize_t varint_len(uint64_t v) noexcept:
    cdef Py_ssize_t n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n

