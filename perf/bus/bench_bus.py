"""Bus gateway benchmark: throughput and latency against raw confluent-kafka.

Measures, in one run against one broker:
  1. throughput: PublishStream with 100-byte payloads (batches of --batch,
     pipelined) through a gateway process, vs a raw confluent-kafka producer
     (same idempotent acks=all settings) writing the same count to the same
     broker (goal >= 0.8x), and vs the raw producer writing the gateway's
     record shape (goal >= 0.5x). Gateway CPU per message from /proc.
  2. latency: publish -> subscriber at a fixed rate (--rate msg/s), through the
     gateway (Publish unary + Subscribe stream with acks), vs raw Kafka
     produce -> consume. Goal: the gateway adds <= 2 ms at p99.
  3. Subscribe throughput: the first --subscribe-messages (default 100,000)
     of the messages the gateway wrote in 1., read back through a gateway
     Subscribe stream (acking each batch), vs a raw confluent-kafka consumer
     reading as many records from the same topic; both timed from the first
     message to the last (goal >= 0.15x). Twice: acking each batch with
     Ack.up_to = MessageBatch.last_positions, then acking every ack id.
  4. scale-out (--workers-clients C, default 2; 0 skips it): PublishStream
     from C client processes at once, each on its own connection, through one
     gateway process and through `--workers 2` (each client's connection
     reaching a different worker), msg/s of the whole run and gateway CPU
     per message summed over the worker processes.
  5. 1 and 2 again on the memory backend (no Kafka; baseline still raw Kafka),
     unless --backends kafka.

Usage:
    python perf/bus/bench_bus.py [--bootstrap HOST:PORT] [--messages 100000]
        [--rate 200] [--seconds 5] [--backends kafka memory]
        [--write perf/bus/RESULTS.md] [--json PATH]

Without --bootstrap it starts a private single-node KRaft broker on free
loopback ports (tests.infra.KafkaBroker) and stops it at the end. `--json`
writes the figures for perf/run_all.py. Bounded: about 1-2 minutes with the
defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import grpc
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "libs"))

from agentmesh.bus.v1 import bus_pb2, bus_pb2_grpc  # noqa: E402
from agentmesh.common.v1 import common_pb2  # noqa: E402
from agentmesh.runtime.deps import kafka_producer_config  # noqa: E402
from agentmesh.server.bus.hot_path import load as load_hot_path  # noqa: E402
from perf.common import add_json, emit_figures  # noqa: E402
from perf.common import percentile as pct  # noqa: E402
from perf.table import Figure  # noqa: E402
from tests.infra import KafkaBroker  # noqa: E402
from tests.procs import daemon  # noqa: E402

PAYLOAD = b"x" * 100
PRODUCER_TUNING = {"linger.ms": 1, "queue.buffering.max.messages": 1_000_000,
                   "queue.buffering.max.kbytes": 1_048_576, "batch.num.messages": 10_000}
#: The gateway's per-record loops: compiled when `make ext` built them from
#: this source (then also measured against the Python twin), else python.
HOT_PATH = load_hot_path("auto").name


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=partitions,
                                  replication_factor=-1)])[topic].result(15)
    time.sleep(0.5)


# ---- raw Kafka baselines -------------------------------------------------------
def gateway_shaped_record() -> tuple[bytes, list[tuple[str, bytes]]]:
    """A value and headers the size and shape of what the gateway writes for a
    100-byte payload (Envelope with id, provenance and publish_time; 4 headers)."""
    env = envelope("bench.gwkafka.0123abcd", PAYLOAD)
    env.id = "0123456789abcdef1a2b3"
    env.priority = common_pb2.PRIORITY_NORMAL
    env.publish_time.FromMilliseconds(int(time.time() * 1000))
    env.provenance.chain_id = "bench.gwkafka.0123abcd/0/0123456789ab.0"
    env.provenance.sequence = 123_456
    env.provenance.previous_hash = "0" * 64
    env.provenance.create_time.CopyFrom(env.publish_time)
    headers = [("am-envelope", b"agentmesh.bus.v1.Envelope"), ("am-id", env.id.encode()),
               ("am-priority", b"PRIORITY_NORMAL"), ("am-hash", b"f" * 64)]
    return env.SerializeToString(), headers


def raw_throughput(bootstrap: str, topic: str, n: int, *, shaped: bool = False) -> float:
    """Raw confluent-kafka producer msg/s: 100-byte values without headers, or
    (shaped) the gateway's record shape, each produced with a delivery callback."""
    value, headers = gateway_shaped_record() if shaped else (PAYLOAD, None)
    p = Producer(kafka_producer_config(bootstrap, **PRODUCER_TUNING))
    done = [0]

    def cb(err: object, msg: object) -> None:
        if err is None:
            done[0] += 1

    p.produce(topic, PAYLOAD, on_delivery=cb)
    p.flush(10)  # connection and PID set up outside the timed part
    done[0] = 0
    start = time.perf_counter()
    for _ in range(n):
        while True:
            try:
                p.produce(topic, value, on_delivery=cb, headers=headers)  # type: ignore[arg-type]
                break
            except BufferError:
                p.poll(0.01)
        p.poll(0)
    p.flush(60)
    elapsed = time.perf_counter() - start
    assert done[0] == n, f"raw producer confirmed {done[0]}/{n}"
    return n / elapsed


def raw_latency(bootstrap: str, topic: str, rate: float, seconds: float) -> list[float]:
    create_topic(bootstrap, topic, 1)
    p = Producer(kafka_producer_config(bootstrap, **PRODUCER_TUNING))
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-" + uuid.uuid4().hex,
                  "enable.auto.commit": False, "fetch.wait.max.ms": 100})
    c.assign([TopicPartition(topic, 0, 0)])
    lat: list[float] = []
    stop = threading.Event()

    def consume() -> None:
        while not stop.is_set():
            first = c.poll(0.05)  # then drain what is there: consume() would wait 50 ms
            for m in ([first, *c.consume(99, 0)] if first is not None else []):
                if not m.error():
                    lat.append((time.perf_counter_ns() - int(m.value())) / 1e6)  # type: ignore[arg-type]

    def poll() -> None:
        while not stop.is_set():
            p.poll(0.05)

    threads = [threading.Thread(target=consume), threading.Thread(target=poll)]
    for t in threads:
        t.start()
    p.produce(topic, str(time.perf_counter_ns()).encode())  # warm-up
    time.sleep(1.0)
    lat.clear()
    n = int(rate * seconds)
    start = time.perf_counter()
    for i in range(n):
        target = start + i / rate
        delay = target - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        p.produce(topic, str(time.perf_counter_ns()).encode())
    deadline = time.monotonic() + 10
    while len(lat) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join()
    c.close()
    p.flush(5)
    return lat


def raw_consume_rate(bootstrap: str, topic: str, n: int) -> float:
    """Raw confluent-kafka consumer msg/s reading `n` records of `topic` from the
    beginning of every partition (assign, no group join), first to last record."""
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10)
    parts = [TopicPartition(topic, p, 0) for p in md.topics[topic].partitions]
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-" + uuid.uuid4().hex,
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    c.assign(parts)
    got = 0
    start = 0.0
    deadline = time.monotonic() + 60
    try:
        while got < n and time.monotonic() < deadline:
            for m in c.consume(1000, 0.1):
                if m.error():
                    continue
                if not got:
                    start = time.perf_counter()
                got += 1
        elapsed = time.perf_counter() - start
    finally:
        c.close()
    assert got >= n, f"raw consumer read {got}/{n}"
    return (got - 1) / elapsed


# ---- through the gateway ----------------------------------------------------------
def envelope(topic: str, body: bytes) -> bus_pb2.Envelope:
    return bus_pb2.Envelope(topic=topic, payload=common_pb2.Payload(bytes_value=body))


async def gateway_throughput(target: str, topic: str, n: int, batch: int) -> float:
    async with grpc.aio.insecure_channel(target) as ch:
        stub = bus_pb2_grpc.BusServiceStub(ch)
        await stub.Publish(bus_pb2.PublishRequest(message=envelope(topic, PAYLOAD)))
        req = bus_pb2.PublishStreamRequest(messages=[envelope(topic, PAYLOAD)] * batch)
        batches = n // batch

        async def reqs():
            for _ in range(batches):
                yield req

        ok = 0
        start = time.perf_counter()
        async for resp in stub.PublishStream(reqs()):
            ok += sum(1 for r in resp.reports if r.status.code == 0)
        elapsed = time.perf_counter() - start
        assert ok == batches * batch, f"gateway confirmed {ok}/{batches * batch}"
        return ok / elapsed


async def gateway_latency(target: str, topic: str, rate: float, seconds: float) -> list[float]:
    async with grpc.aio.insecure_channel(target) as ch:
        stub = bus_pb2_grpc.BusServiceStub(ch)
        await stub.CreateTopic(bus_pb2.CreateTopicRequest(
            topic=bus_pb2.Topic(name=topic, partitions=1)))
        out: asyncio.Queue[bus_pb2.SubscribeRequest] = asyncio.Queue()
        out.put_nowait(bus_pb2.SubscribeRequest(open=bus_pb2.SubscriptionOpen(
            topic_patterns=[topic], consumer_group="bench-" + uuid.uuid4().hex,
            max_unacked=1000, start_position=bus_pb2.START_POSITION_LATEST)))

        async def reqs():
            while True:
                yield await out.get()

        call = stub.Subscribe(reqs())
        await call.read()  # started
        lat: list[float] = []
        n = int(rate * seconds)
        warm = 0

        async def receive() -> None:
            nonlocal warm
            while len(lat) < n:
                resp = await call.read()
                now = time.perf_counter_ns()
                ids = []
                for m in resp.batch.messages:
                    ids.append(m.ack_id)
                    sent = int(m.envelope.payload.bytes_value)
                    if sent < 0:
                        warm += 1
                    else:
                        lat.append((now - sent) / 1e6)
                out.put_nowait(bus_pb2.SubscribeRequest(ack=bus_pb2.Ack(ack_ids=ids)))

        rx = asyncio.create_task(receive())
        # warm-up until the subscription has its partition
        while warm == 0:
            await stub.Publish(bus_pb2.PublishRequest(message=envelope(topic, b"-1")))
            await asyncio.sleep(0.2)
        pubs = []
        start = time.perf_counter()
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            body = str(time.perf_counter_ns()).encode()
            pubs.append(asyncio.ensure_future(
                stub.Publish(bus_pb2.PublishRequest(message=envelope(topic, body)))))
        await asyncio.gather(*pubs)
        await asyncio.wait_for(rx, 15)
        call.cancel()
        return lat


async def gateway_consume_rate(target: str, topic: str, n: int, *, ack: str = "ids") -> float:
    """Gateway Subscribe msg/s reading `n` messages of `topic` from the earliest
    offset in a new consumer group, acking each batch, first to last message.
    `ack`: "ids" acks every ack id, "through" acks cumulatively per partition."""
    async with grpc.aio.insecure_channel(target) as ch:
        stub = bus_pb2_grpc.BusServiceStub(ch)
        out: asyncio.Queue[bus_pb2.SubscribeRequest] = asyncio.Queue()
        out.put_nowait(bus_pb2.SubscribeRequest(open=bus_pb2.SubscriptionOpen(
            topic_patterns=[topic], consumer_group="bench-" + uuid.uuid4().hex,
            max_unacked=5000, start_position=bus_pb2.START_POSITION_EARLIEST)))

        async def reqs():
            while True:
                yield await out.get()

        call = stub.Subscribe(reqs())
        await call.read()  # started
        got = 0
        start = 0.0

        async def receive() -> None:
            nonlocal got, start
            while got < n:
                resp = await call.read()
                msgs = resp.batch.messages
                if not msgs:
                    continue
                if not got:
                    start = time.perf_counter()
                got += len(msgs)
                if ack == "through":
                    out.put_nowait(bus_pb2.SubscribeRequest(
                        ack=bus_pb2.Ack(up_to=resp.batch.last_positions)))
                else:
                    out.put_nowait(bus_pb2.SubscribeRequest(
                        ack=bus_pb2.Ack(ack_ids=[m.ack_id for m in msgs])))

        try:
            await asyncio.wait_for(receive(), 60)
        except TimeoutError:
            raise RuntimeError(f"gateway Subscribe delivered {got}/{n} messages of {topic} "
                               "in 60 s") from None
        finally:
            call.cancel()
        return (got - 1) / (time.perf_counter() - start)


async def client_throughput(target: str, topic: str, n: int, batch: int,
                            writer: str | None) -> tuple[float, float, int]:
    """One client's PublishStream run on a connection of its own, for the
    scale-out figure: connects until a Publish is answered by `writer` (the
    chain id's writer, `<instance id>-w<i>`: which worker the kernel gave
    this connection; None takes any), then streams `n` messages in batches of
    `batch`. Returns (start, end) as perf_counter seconds (CLOCK_MONOTONIC,
    comparable across processes) and the messages confirmed."""
    opts = [("grpc.use_local_subchannel_pool", 1)]  # a new TCP connection per channel
    for _ in range(64):
        ch = grpc.aio.insecure_channel(target, options=opts)
        stub = bus_pb2_grpc.BusServiceStub(ch)
        r = await stub.Publish(bus_pb2.PublishRequest(message=envelope(topic, PAYLOAD)))
        if writer is None or r.provenance.chain_id.split("/")[2].rsplit(".", 1)[0] == writer:
            break
        await ch.close()
    else:
        raise RuntimeError(f"no connection reached worker {writer} in 64 tries")
    req = bus_pb2.PublishStreamRequest(messages=[envelope(topic, PAYLOAD)] * batch)

    async def reqs():
        for _ in range(n // batch):
            yield req

    ok = 0
    start = time.perf_counter()
    async for resp in stub.PublishStream(reqs()):
        ok += sum(1 for rep in resp.reports if rep.status.code == 0)
    end = time.perf_counter()
    await ch.close()
    return start, end, ok


def run_client(target: str, topic: str, n: int, batch: int,
               writer: str | None) -> tuple[float, float, int]:
    """client_throughput in a process of its own (ProcessPoolExecutor)."""
    return asyncio.run(client_throughput(target, topic, n, batch, writer))


def scale_out(bootstrap: str, logs: Path, run_id: str, a: argparse.Namespace
              ) -> dict[str, float]:
    """PublishStream msg/s and gateway CPU us/msg from a.workers_clients client
    processes through 1 gateway process, then through `--workers 2`, in
    a.workers_rounds interleaved rounds; the medians over the rounds, and
    the 2-vs-1 ratio of each round (the spread says how noisy the machine is)."""
    c = a.workers_clients
    per_client = a.messages // c // a.batch * a.batch
    got: dict[str, list[float]] = {"w1": [], "w2": [], "w1_cpu_us": [], "w2_cpu_us": []}
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(c, mp_context=ctx) as pool:
        for workers in [1, 2] * a.workers_rounds:
            topic = f"bench.workers{workers}.{uuid.uuid4().hex[:6]}.{run_id}"
            create_topic(bootstrap, topic, 3)
            proc = daemon("bus", logs, "--backend", "kafka", "--kafka-bootstrap", bootstrap,
                          "--workers", str(workers), "--instance-id", "bench",
                          env={"AGENTMESH_KAFKA_BOOTSTRAP": ""}).start(90)
            try:
                if workers == 1:
                    pids, writers = [proc.pid], [None] * c
                else:
                    serving = next(d for d in proc._log_docs(0)
                                   if d.get("msg") == "serving" and "worker_pids" in d)
                    pids = serving["worker_pids"]
                    writers = [f"bench-w{i % workers}" for i in range(c)]
                cpu0 = sum(proc_cpu_s(p) for p in pids)
                runs = list(pool.map(run_client, [proc.target] * c, [topic] * c,
                                     [per_client] * c, [a.batch] * c, writers))
                cpu = sum(proc_cpu_s(p) for p in pids) - cpu0
            finally:
                proc.stop()
            ok = sum(r[2] for r in runs)
            assert ok == per_client * c, f"{workers} worker(s) confirmed {ok}/{per_client * c}"
            elapsed = max(r[1] for r in runs) - min(r[0] for r in runs)
            got[f"w{workers}"].append(ok / elapsed)
            # includes the warm-up Publish calls: a few per client, noise at this count
            got[f"w{workers}_cpu_us"].append(cpu * 1e6 / ok)
            print(f"PublishStream, {c} clients, {workers} gateway process(es): "
                  f"{ok / elapsed:,.0f} msg/s, {cpu * 1e6 / ok:.1f} us gateway CPU/msg",
                  flush=True)
    out = {k: statistics.median(v) for k, v in got.items()}
    ratios = [w2 / w1 for w1, w2 in zip(got["w1"], got["w2"], strict=True)]
    out.update(clients=c, rounds=a.workers_rounds, ratio_min=min(ratios),
               ratio_max=max(ratios))
    print(f"--workers 2 vs 1: median {out['w2']:,.0f} vs {out['w1']:,.0f} msg/s "
          f"(ratio {out['w2'] / out['w1']:.2f}; per round {out['ratio_min']:.2f}-"
          f"{out['ratio_max']:.2f})", flush=True)
    return out


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_gateway(backend: str, bootstrap: str, logs: Path, hot_path: str = "auto") -> object:
    flags = ["--backend", backend, "--hot-path", hot_path]
    if backend == "kafka":
        flags += ["--kafka-bootstrap", bootstrap]
    return daemon("bus", logs, *flags, env={"AGENTMESH_KAFKA_BOOTSTRAP": ""}).start(60)


def python_loops(a: argparse.Namespace, logs: Path, topic: str, n: int, run_id: str
                 ) -> dict[str, float]:
    """Through a gateway running the Python loops (`--hot-path python`):
    Subscribe read-back of the same records (cumulative acks), and
    PublishStream of a.messages messages to a topic of its own (the message
    path: requests decoded and submitted as messages)."""
    proc = run_gateway("kafka", a.bootstrap, logs, "python")
    try:
        cpu0 = proc_cpu_s(proc.pid)  # type: ignore[attr-defined]
        rate = asyncio.run(gateway_consume_rate(proc.target, topic, n, ack="through"))  # type: ignore[attr-defined]
        cpu_us = (proc_cpu_s(proc.pid) - cpu0) * 1e6 / n  # type: ignore[attr-defined]
        pub_topic = f"bench.gwpy.{run_id}"
        create_topic(a.bootstrap, pub_topic, 3)
        cpu0 = proc_cpu_s(proc.pid)  # type: ignore[attr-defined]
        tp = asyncio.run(gateway_throughput(proc.target, pub_topic, a.messages, a.batch))  # type: ignore[attr-defined]
        pub_cpu_us = (proc_cpu_s(proc.pid) - cpu0) * 1e6 / a.messages  # type: ignore[attr-defined]
    finally:
        proc.stop()  # type: ignore[attr-defined]
    print(f"Subscribe, Python loops: {rate:,.0f} msg/s acking up_to ({cpu_us:.1f} us CPU/msg)",
          flush=True)
    print(f"PublishStream, message path: {tp:,.0f} msg/s ({pub_cpu_us:.1f} us CPU/msg)",
          flush=True)
    return {"consume": rate, "cpu_us": cpu_us, "tput": tp, "publish_cpu_us": pub_cpu_us}


def figures(rows: dict[str, dict[str, float]]) -> list[Figure]:
    """The figures of one run for the benchmark table (perf/table.py)."""
    if "gateway (kafka)" not in rows:
        return []  # the figures compare the Kafka backend with raw Kafka
    raw, gw = rows["raw kafka"], rows["gateway (kafka)"]
    return [
        Figure(name="bus: PublishStream msg/s, 100-byte payloads",
               value=gw["tput"], unit="msg/s",
               baseline_name="raw confluent-kafka producer, 100-byte values",
               baseline_value=raw["tput"], goal=">= 0.8x"),
        Figure(name="bus: PublishStream msg/s vs the gateway's record shape",
               value=gw["tput"], unit="msg/s",
               baseline_name="raw confluent-kafka producer, Envelope + 4 headers",
               baseline_value=rows["raw kafka, gateway record shape"]["tput"],
               goal=">= 0.5x"),
        Figure(name="bus: PublishStream gateway CPU per message",
               value=gw["publish_cpu_us"], unit="us", better="lower"),
        Figure(name="bus: publish -> subscriber latency p99",
               value=gw["p99"], unit="ms",
               baseline_name="raw confluent-kafka produce -> consume p99",
               baseline_value=raw["p99"], better="lower", goal="<= +2 ms"),
        Figure(name=f"bus: Subscribe msg/s, reading back {gw['consume_n']:,.0f} of the "
                    "gateway's records",
               value=gw["consume"], unit="msg/s",
               baseline_name="raw confluent-kafka consumer, same records",
               baseline_value=raw["consume"], goal=">= 0.15x"),
        Figure(name="bus: Subscribe msg/s acking every ack id",
               value=gw["consume_ids"], unit="msg/s",
               baseline_name="raw confluent-kafka consumer, same records",
               baseline_value=raw["consume"]),
        Figure(name="bus: Subscribe gateway CPU per message (cumulative acks)",
               value=gw["consume_through_cpu_us"], unit="us", better="lower"),
        *([Figure(name="bus: Subscribe msg/s, compiled per-record loops (make ext)",
                  value=gw["consume"], unit="msg/s",
                  baseline_name="the same read-back with the Python loops (--hot-path python)",
                  baseline_value=py["consume"]),
           Figure(name="bus: Subscribe gateway CPU per message, compiled loops",
                  value=gw["consume_through_cpu_us"], unit="us", better="lower",
                  baseline_name="with the Python loops (--hot-path python)",
                  baseline_value=py["cpu_us"]),
           Figure(name="bus: PublishStream msg/s, compiled write path (make ext)",
                  value=gw["tput"], unit="msg/s",
                  baseline_name="the same stream through the message path (--hot-path python)",
                  baseline_value=py["tput"]),
           Figure(name="bus: PublishStream gateway CPU per message, compiled write path",
                  value=gw["publish_cpu_us"], unit="us", better="lower",
                  baseline_name="through the message path (--hot-path python)",
                  baseline_value=py["publish_cpu_us"])] if (py := rows.get("python loops"))
          else []),
        *([Figure(name=f"bus: PublishStream msg/s, {sc['clients']:.0f} clients, "
                       "--workers 2",
                  value=sc["w2"], unit="msg/s",
                  baseline_name="the same clients through one gateway process "
                                "(medians of interleaved rounds)",
                  baseline_value=sc["w1"])] if (sc := rows.get("scale-out")) else []),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", default=None,
                    help="Kafka to use; default: start a private broker on free ports")
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--subscribe-messages", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--backends", nargs="+", choices=["kafka", "memory"],
                    default=["kafka", "memory"])
    ap.add_argument("--workers-clients", type=int, default=2,
                    help="client processes of the 1-vs-2-workers figure; 0 skips it")
    ap.add_argument("--workers-rounds", type=int, default=2,
                    help="interleaved rounds of the 1-vs-2-workers figure (medians)")
    ap.add_argument("--write", type=Path, default=None)
    add_json(ap)
    a = ap.parse_args()
    with ExitStack() as stack:
        if a.bootstrap is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-bus-")))
            print("starting a private Kafka broker ...", flush=True)
            a.bootstrap = stack.enter_context(KafkaBroker(workdir=work / "kafka")).bootstrap
        rows = measure(a)
    if a.write:
        write(a, rows)
    emit_figures(figures(rows), a)


def measure(a: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Every measurement against the broker at a.bootstrap; rows by path name."""
    logs = Path("/tmp") / f"bench-bus-{uuid.uuid4().hex[:6]}"
    run_id = uuid.uuid4().hex[:8]
    rows: dict[str, dict[str, float]] = {}

    raw_topic = f"bench.raw.{run_id}"
    create_topic(a.bootstrap, raw_topic, 3)
    raw_tp = raw_throughput(a.bootstrap, raw_topic, a.messages)
    raw_lat = raw_latency(a.bootstrap, f"bench.rawlat.{run_id}", a.rate, a.seconds)
    rows["raw kafka"] = {"tput": raw_tp, "p50": pct(raw_lat, 0.5), "p99": pct(raw_lat, 0.99)}
    print(f"raw kafka: {raw_tp:,.0f} msg/s, latency p50 {rows['raw kafka']['p50']:.2f} ms "
          f"p99 {rows['raw kafka']['p99']:.2f} ms", flush=True)
    shaped_tp = raw_throughput(a.bootstrap, raw_topic, a.messages, shaped=True)
    rows["raw kafka, gateway record shape"] = {"tput": shaped_tp}
    print(f"raw kafka, gateway record shape (~{len(gateway_shaped_record()[0])} B value + "
          f"4 headers): {shaped_tp:,.0f} msg/s (ratio {shaped_tp / raw_tp:.2f})", flush=True)

    print(f"hot path: {HOT_PATH} ({load_hot_path('auto').reason})", flush=True)
    for backend in a.backends:
        proc = run_gateway(backend, a.bootstrap, logs, HOT_PATH)
        try:
            topic = f"bench.gw{backend}.{run_id}"
            if backend == "kafka":
                create_topic(a.bootstrap, topic, 3)
            cpu0 = proc_cpu_s(proc.pid)  # type: ignore[attr-defined]
            tp = asyncio.run(gateway_throughput(proc.target, topic, a.messages, a.batch))  # type: ignore[attr-defined]
            pub_cpu_us = (proc_cpu_s(proc.pid) - cpu0) * 1e6 / a.messages  # type: ignore[attr-defined]
            lat = asyncio.run(gateway_latency(proc.target, f"bench.gwlat{backend}.{run_id}",  # type: ignore[attr-defined]
                                              a.rate, a.seconds))
            row = {"tput": tp, "p50": pct(lat, 0.5), "p99": pct(lat, 0.99),
                   "publish_cpu_us": pub_cpu_us}
            if backend == "kafka":
                # Both read the same records: what the gateway just wrote.
                n_sub = min(a.subscribe_messages, a.messages)
                rows["raw kafka"]["consume"] = raw_consume_rate(a.bootstrap, topic, n_sub)
                for mode in ("through", "ids"):
                    cpu0 = proc_cpu_s(proc.pid)  # type: ignore[attr-defined]
                    row[f"consume_{mode}"] = asyncio.run(gateway_consume_rate(
                        proc.target, topic, n_sub, ack=mode))  # type: ignore[attr-defined]
                    row[f"consume_{mode}_cpu_us"] = (
                        (proc_cpu_s(proc.pid) - cpu0) * 1e6 / n_sub)  # type: ignore[attr-defined]
                row["consume"] = row["consume_through"]
                row["consume_n"] = n_sub
                if HOT_PATH == "compiled":
                    rows["python loops"] = python_loops(a, logs, topic, n_sub, run_id)
                print(f"Subscribe: gateway {row['consume_through']:,.0f} msg/s acking up_to "
                      f"({row['consume_through_cpu_us']:.1f} us CPU/msg), "
                      f"{row['consume_ids']:,.0f} msg/s acking ids "
                      f"({row['consume_ids_cpu_us']:.1f} us CPU/msg); raw consumer "
                      f"{rows['raw kafka']['consume']:,.0f} msg/s "
                      f"(ratio {row['consume'] / rows['raw kafka']['consume']:.3f})", flush=True)
        finally:
            proc.stop()  # type: ignore[attr-defined]
        rows[f"gateway ({backend})"] = row
        print(f"gateway {backend}: {tp:,.0f} msg/s (ratio {tp / raw_tp:.2f}; vs the gateway "
              f"record shape {tp / shaped_tp:.2f}; {pub_cpu_us:.1f} us CPU/msg), latency p50 "
              f"{pct(lat, 0.5):.2f} ms p99 {pct(lat, 0.99):.2f} ms (added p99 "
              f"{pct(lat, 0.99) - rows['raw kafka']['p99']:+.2f} ms; n={len(lat)}; "
              f"mean {statistics.mean(lat):.2f})", flush=True)
        if backend == "kafka" and a.workers_clients > 0:
            rows["scale-out"] = scale_out(a.bootstrap, logs, run_id, a)
    return rows


def write(a: argparse.Namespace, rows: dict[str, dict[str, float]]) -> None:
    """Write the RESULTS.md table to a.write."""
    cmd = (f"python perf/bus/bench_bus.py --messages {a.messages} "
           f"--batch {a.batch} --rate {a.rate:g} --seconds {a.seconds:g} "
           f"--write perf/bus/RESULTS.md")
    lines = [
        "# Bus gateway benchmark", "",
        f"Reproduce: `{cmd}` (starts a private broker; `--bootstrap HOST:PORT` uses yours)", "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on "
        f"{os.cpu_count()} shared CPU cores, single-node KRaft broker on loopback, "
        f"100-byte payloads, PublishStream batches of {a.batch}, latency at "
        f"{a.rate:g} msg/s for {a.seconds:g} s (1 partition).", "",
        "| path | throughput msg/s | ratio vs raw | latency p50 ms | latency p99 ms "
        "| added p99 ms | publish CPU us/msg | Subscribe msg/s (up_to / ids) "
        "| Subscribe ratio | Subscribe CPU us/msg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = rows["raw kafka"]
    for name, r in rows.items():
        if name == "scale-out":
            continue  # its own lines below the table
        cells = (f"{r['p50']:.2f} | {r['p99']:.2f} | {r['p99'] - base['p99']:+.2f}"
                 if "p50" in r else "- | - | -")
        pub_cpu = f"{r['publish_cpu_us']:.1f}" if "publish_cpu_us" in r else "-"
        if "consume_ids" in r:
            consume = (f"{r['consume_through']:,.0f} / {r['consume_ids']:,.0f} | "
                       f"{r['consume'] / base['consume']:.3f} | "
                       f"{r['consume_through_cpu_us']:.1f}")
        elif "consume" in r:
            consume = f"{r['consume']:,.0f} | 1.000 | -"
        else:
            consume = "- | - | -"
        ratio = r["tput"] / base["tput"]
        lines.append(f"| {name} | {r['tput']:,.0f} | {ratio:.2f} | {cells} | {pub_cpu} "
                     f"| {consume} |")
    lines.append("")
    lines.append(f"Load average at the end of the run: {os.getloadavg()[0]:.1f} "
                 f"(1 min) on {os.cpu_count()} cores. Subscribe: the gateway's records read "
                 "back through Subscribe (new group, earliest, acking each batch with Ack.up_to = "
                 "MessageBatch.last_positions, then again acking every ack id) vs a raw "
                 "consumer assigned the same partitions, first record to last.")
    if sc := rows.get("scale-out"):
        lines += ["", f"Scale-out: PublishStream from {sc['clients']:.0f} client processes at "
                  f"once, each on its own connection, medians of {sc['rounds']:.0f} "
                  f"interleaved rounds: one gateway process {sc['w1']:,.0f} msg/s "
                  f"({sc['w1_cpu_us']:.1f} us CPU/msg), `--workers 2` {sc['w2']:,.0f} msg/s "
                  f"({sc['w2_cpu_us']:.1f} us CPU/msg, summed over the workers), ratio "
                  f"{sc['w2'] / sc['w1']:.2f} (per round {sc['ratio_min']:.2f}-"
                  f"{sc['ratio_max']:.2f})."]
    a.write.write_text("\n".join(lines) + "\n")
    print(f"wrote {a.write}")


if __name__ == "__main__":
    main()
