"""Partition choice: Kafka's default murmur2 for keys, round-robin without.

The gateway picks partitions itself (rather than letting librdkafka do it) so
it can extend the right per-partition hash chain before the write.

Source: org.apache.kafka.common.utils.Utils.murmur2 and
BuiltInPartitioner.partitionForKey (toPositive(murmur2(key)) % partitions).
"""

from __future__ import annotations

import itertools

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's 32-bit murmur2 of `data`, as an unsigned int."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    n4 = length & ~3
    for i in range(0, n4, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = (h * _M) & _MASK
        h ^= k
    rest = length & 3
    if rest == 3:
        h ^= data[n4 + 2] << 16
    if rest >= 2:
        h ^= data[n4 + 1] << 8
    if rest >= 1:
        h ^= data[n4]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


class Partitioner:
    """Chooses a partition for a message.

    Keyed messages: murmur2(key) & 0x7fffffff mod partitions, like the Java
    client. Keyless messages: round-robin per gateway process.
    """

    def __init__(self) -> None:
        self._rr = itertools.count()
        #: the next round-robin number (callers take it modulo the partition count)
        self.next_round_robin = self._rr.__next__

    def partition(self, key: bytes, partitions: int) -> int:
        """The partition in [0, partitions) for `key` (b"" means keyless)."""
        if partitions <= 1:
            return 0
        if key:
            return (murmur2(key) & 0x7FFFFFFF) % partitions
        return next(self._rr) % partitions
