"""Validate a SagaDefinition and compile it into a DAG the engine can run.

`compile_definition` flattens a pipeline into steps, applies the documented
defaults (saga.proto), compiles every CEL expression and checks the DAG. Every
problem found becomes one BadRequest field violation, so a caller sees all of
them at once; a dependency cycle is named ("a -> b -> a").
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

import grpc
from google.protobuf import duration_pb2

from agentmesh.catalog import selector_violations
from agentmesh.runtime.cel import (
    LOOP_VARIABLES,
    MAP_ITEM_VARIABLES,
    REDUCE_VARIABLES,
    CelError,
    Expression,
    saga_expression,
)
from agentmesh.runtime.errors import InvalidArgument
from agentmesh.saga.v1 import saga_pb2

STEP_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,63}$")
DEFINITION_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
MAX_STEPS = 500
MAX_LOOP_ITERATIONS = 1000

DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_INITIAL_BACKOFF_MS = 100.0
DEFAULT_MULTIPLIER = 2.0
DEFAULT_MAX_BACKOFF_MS = 10_000.0
DEFAULT_STEP_TIMEOUT_MS = 30_000.0
DEFAULT_SAGA_TIMEOUT_MS = 300_000.0
DEFAULT_MAP_CONCURRENCY = 8
DEFAULT_NON_RETRYABLE = frozenset(
    {
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "FAILED_PRECONDITION",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "UNAUTHENTICATED",
    }
)
CODE_NAMES = frozenset(c.name for c in grpc.StatusCode)


def duration_ms(d: duration_pb2.Duration) -> float:
    """A Duration in milliseconds."""
    return d.seconds * 1000.0 + d.nanos / 1e6


@dataclass(frozen=True)
class Retry:
    """An effective retry policy (defaults applied).

    Attributes:
        max_attempts: attempts that may fail before the call fails for good.
        initial_backoff_ms / max_backoff_ms: waits, milliseconds.
        multiplier: growth factor of the wait.
        non_retryable: gRPC code names that end the call at once.
    """

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    initial_backoff_ms: float = DEFAULT_INITIAL_BACKOFF_MS
    multiplier: float = DEFAULT_MULTIPLIER
    max_backoff_ms: float = DEFAULT_MAX_BACKOFF_MS
    non_retryable: frozenset[str] = DEFAULT_NON_RETRYABLE

    def backoff_ms(self, *, failures: int) -> float:
        """Wait after the `failures`-th failed attempt (1-based), in milliseconds."""
        raw = self.initial_backoff_ms * self.multiplier ** max(0, failures - 1)
        return min(raw, self.max_backoff_ms)

    @classmethod
    def from_proto(cls, p: saga_pb2.RetryPolicy) -> Retry:
        """Apply the documented defaults to a RetryPolicy."""
        return cls(
            max_attempts=p.max_attempts or DEFAULT_MAX_ATTEMPTS,
            initial_backoff_ms=(
                duration_ms(p.initial_backoff)
                if p.HasField("initial_backoff")
                else DEFAULT_INITIAL_BACKOFF_MS
            ),
            multiplier=p.multiplier or DEFAULT_MULTIPLIER,
            max_backoff_ms=(
                duration_ms(p.max_backoff) if p.HasField("max_backoff") else DEFAULT_MAX_BACKOFF_MS
            ),
            non_retryable=(
                frozenset(p.non_retryable_codes) if p.non_retryable_codes else DEFAULT_NON_RETRYABLE
            ),
        )


class StepKind(enum.StrEnum):
    """What a step runs: one call, one call per map item, or one per loop iteration."""

    SINGLE = "single"
    MAP = "map"
    LOOP = "loop"


@dataclass
class StepSpec:
    """One step, compiled.

    Attributes:
        index: position in the flattened definition.
        proto: the flattened Step (depends_on includes pipeline edges).
        kind: single call, map or loop.
        retry: effective retry policy for the action and its compensation.
        timeout_ms: deadline of each attempt.
        compensation_timeout_ms: deadline of each compensation attempt (the step's
            compensation_timeout, else the definition's default_compensation_timeout,
            else `timeout_ms`).
        input_mapping: key → compiled CEL expression.
    """

    index: int
    proto: saga_pb2.Step
    kind: StepKind
    retry: Retry
    timeout_ms: float
    compensation_timeout_ms: float = 0.0
    input_mapping: dict[str, Expression] = field(default_factory=dict)
    condition: Expression | None = None
    map_items: Expression | None = None
    map_reduce: Expression | None = None
    map_concurrency: int = DEFAULT_MAP_CONCURRENCY
    loop_condition: Expression | None = None
    loop_max_iterations: int = 0

    @property
    def name(self) -> str:
        """The step name."""
        return self.proto.name

    @property
    def deps(self) -> list[str]:
        """Names of the steps it depends on."""
        return list(self.proto.depends_on)

    @property
    def compensable(self) -> bool:
        """True when the step has a compensation action."""
        return bool(self.proto.compensation_action)


@dataclass
class CompiledDefinition:
    """A validated definition.

    Attributes:
        proto: the definition as given (with defaults not filled in).
        steps: flattened steps in definition order.
        by_name: steps by name.
        dependents: step → steps that depend on it directly.
        descendants: step → steps that depend on it directly or transitively.
        pivot: the pivot step's name, or None.
        strategy: effective CompensationStrategy (UNSPECIFIED → BACKWARD).
        timeout_ms: overall saga timeout.
    """

    proto: saga_pb2.SagaDefinition
    steps: list[StepSpec]
    by_name: dict[str, StepSpec]
    dependents: dict[str, set[str]]
    descendants: dict[str, frozenset[str]]
    pivot: str | None
    strategy: int
    timeout_ms: float


class _Violations:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, path: str, msg: str) -> None:
        self.items.append((path, msg))


def _flatten(
    stage: saga_pb2.Stage,
    path: str,
    entry: list[str],
    out: list[tuple[saga_pb2.Step, str]],
    v: _Violations,
) -> list[str]:
    """Append the stage's steps to `out`; returns the names that end the stage."""
    kind = stage.WhichOneof("kind")
    if kind == "step":
        s = saga_pb2.Step()
        s.CopyFrom(stage.step)
        s.depends_on.extend(d for d in entry if d not in s.depends_on)
        out.append((s, f"{path}.step"))
        return [s.name]
    if kind in ("sequential", "parallel"):
        group = getattr(stage, kind)
        if not group.stages:
            v.add(f"{path}.{kind}.stages", "a group needs at least one stage")
            return entry
        if kind == "sequential":
            deps = entry
            for i, st in enumerate(group.stages):
                deps = _flatten(st, f"{path}.sequential.stages[{i}]", deps, out, v)
            return deps
        exits: list[str] = []
        for i, st in enumerate(group.stages):
            exits.extend(_flatten(st, f"{path}.parallel.stages[{i}]", entry, out, v))
        return exits
    v.add(path, "a stage needs one of step, sequential or parallel")
    return entry


def flatten_steps(defn: saga_pb2.SagaDefinition) -> list[saga_pb2.Step]:
    """The definition's steps in order, pipelines flattened (no validation)."""
    if defn.HasField("pipeline"):
        out: list[tuple[saga_pb2.Step, str]] = []
        _flatten(defn.pipeline, "pipeline", [], out, _Violations())
        return [s for s, _ in out]
    return list(defn.steps)


def _compile_expr(
    src: str,
    path: str,
    v: _Violations,
    *,
    extra: frozenset[str] = frozenset(),
    boolean: bool = False,
) -> Expression | None:
    """Compile one saga expression (agentmesh.runtime.cel); a failure is a violation on `path`."""
    if not src:
        return None
    try:
        return saga_expression(src, extra=extra, boolean=boolean)
    except CelError as e:
        v.add(path, str(e))
        return None


def _check_retry(p: saga_pb2.RetryPolicy, path: str, v: _Violations) -> None:
    if p.max_attempts > 100:
        v.add(f"{path}.max_attempts", "at most 100")
    if p.multiplier and p.multiplier < 1.0:
        v.add(f"{path}.multiplier", "must be 0 (default 2.0) or >= 1")
    for name in ("initial_backoff", "max_backoff"):
        if p.HasField(name) and duration_ms(getattr(p, name)) < 0:
            v.add(f"{path}.{name}", "must not be negative")
    for i, code in enumerate(p.non_retryable_codes):
        if code not in CODE_NAMES:
            v.add(f"{path}.non_retryable_codes[{i}]", f"unknown gRPC code name {code!r}")


def find_cycle(deps: dict[str, list[str]]) -> list[str] | None:
    """A dependency cycle as [a, b, ..., a], or None. Iterative DFS (no recursion limit)."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(deps, white)
    for root in deps:
        if color[root] != white:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path = [root]
        color[root] = grey
        while stack:
            node, i = stack[-1]
            edges = deps[node]
            if i < len(edges):
                stack[-1] = (node, i + 1)
                nxt = edges[i]
                if nxt not in color:
                    continue
                if color[nxt] == grey:
                    return [*path[path.index(nxt) :], nxt]
                if color[nxt] == white:
                    color[nxt] = grey
                    stack.append((nxt, 0))
                    path.append(nxt)
            else:
                color[node] = black
                stack.pop()
                path.pop()
    return None


def _closure(start: str, edges: dict[str, set[str]]) -> frozenset[str]:
    seen: set[str] = set()
    todo = list(edges.get(start, ()))
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(edges.get(n, ()))
    return frozenset(seen)


#: ExecuteRequest.metadata keys the coordinator writes itself.
RESERVED_METADATA_KEYS = frozenset({"saga_id", "step"})
MAX_STEP_METADATA = 32
MAX_METADATA_VALUE = 1024
METADATA_KEY = re.compile(r"^[a-z0-9_.-]{1,63}$")


def _check_swarm_stage(s: saga_pb2.Step, path: str, v: _Violations) -> None:
    """Field violations of a swarm step (the task itself is the swarm engine's to check)."""
    if not s.swarm.HasField("task"):
        v.add(f"{path}.swarm.task", "required")
    for name in ("action", "compensation_action"):
        if getattr(s, name):
            v.add(f"{path}.{name}", "must be empty for a swarm step")
    if s.HasField("map") or s.HasField("loop"):
        v.add(f"{path}.{'map' if s.HasField('map') else 'loop'}",
              "a swarm step cannot be a map or a loop")


def _check_step_metadata(s: saga_pb2.Step, path: str, v: _Violations) -> None:
    """Field violations of `Step.metadata` (see saga.proto for the rules)."""
    if len(s.metadata) > MAX_STEP_METADATA:
        v.add(f"{path}.metadata", f"at most {MAX_STEP_METADATA} entries")
    for key, value in s.metadata.items():
        if key in RESERVED_METADATA_KEYS:
            v.add(f"{path}.metadata[{key}]", "reserved: the coordinator sets it")
        elif not METADATA_KEY.match(key):
            v.add(f"{path}.metadata[{key}]", "key must match [a-z0-9_.-]{1,63}")
        if len(value) > MAX_METADATA_VALUE:
            v.add(f"{path}.metadata[{key}]", f"value at most {MAX_METADATA_VALUE} characters")


def compile_definition(
    defn: saga_pb2.SagaDefinition, *, field_prefix: str = "definition", require_name: bool = False
) -> CompiledDefinition:
    """Validate and compile a definition.

    Args:
        defn: the definition.
        field_prefix: prefix of field-violation paths, e.g. "definition".
        require_name: True for RegisterSagaDefinition.

    Returns:
        The compiled definition.

    Raises:
        InvalidArgument: with one field violation per problem.
    """
    v = _Violations()
    pre = f"{field_prefix}."
    if require_name and not defn.name:
        v.add(f"{pre}name", "required")
    if defn.name and not DEFINITION_NAME.match(defn.name):
        v.add(f"{pre}name", "must match [A-Za-z0-9_.-]{1,100}")
    if len(defn.description) > 2000:
        v.add(f"{pre}description", "at most 2000 characters")

    raw: list[tuple[saga_pb2.Step, str]] = []
    if defn.HasField("pipeline") and defn.steps:
        v.add(f"{pre}steps", "set steps or pipeline, not both")
    if defn.HasField("pipeline"):
        _flatten(defn.pipeline, f"{pre}pipeline", [], raw, v)
    else:
        raw = [(s, f"{pre}steps[{i}]") for i, s in enumerate(defn.steps)]
    if not raw:
        v.add(f"{pre}steps", "at least one step is required")
    if len(raw) > MAX_STEPS:
        v.add(f"{pre}steps", f"at most {MAX_STEPS} steps")

    for name in ("timeout", "default_step_timeout", "default_compensation_timeout"):
        if defn.HasField(name) and duration_ms(getattr(defn, name)) <= 0:
            v.add(f"{pre}{name}", "must be positive")
    if defn.HasField("default_retry_policy"):
        _check_retry(defn.default_retry_policy, f"{pre}default_retry_policy", v)
    default_retry = (
        Retry.from_proto(defn.default_retry_policy)
        if defn.HasField("default_retry_policy")
        else Retry()
    )
    default_timeout_ms = (
        duration_ms(defn.default_step_timeout)
        if defn.HasField("default_step_timeout")
        else DEFAULT_STEP_TIMEOUT_MS
    )
    default_comp_timeout_ms = (
        duration_ms(defn.default_compensation_timeout)
        if defn.HasField("default_compensation_timeout")
        else None
    )

    seen: dict[str, str] = {}
    specs: list[StepSpec] = []
    paths: dict[str, str] = {}
    pivots: list[str] = []
    for idx, (s, p) in enumerate(raw):
        if not STEP_NAME.match(s.name):
            v.add(f"{p}.name", "must match [A-Za-z0-9_.-]{1,63}")
        elif s.name in seen:
            v.add(f"{p}.name", f"duplicate step name {s.name!r} (also {seen[s.name]})")
        else:
            seen[s.name] = p
            paths[s.name] = p
        target = s.WhichOneof("target")
        if target is None or (target == "agent_id" and not s.agent_id):
            v.add(f"{p}.target", "set agent_id, selector or swarm")
        elif target == "selector":
            for path, msg in selector_violations(s.selector, field=f"{p}.selector"):
                v.add(path, msg)
        if target == "swarm":
            _check_swarm_stage(s, p, v)
        elif not s.action:
            v.add(f"{p}.action", "required")
        if s.HasField("retry_policy"):
            _check_retry(s.retry_policy, f"{p}.retry_policy", v)
        if s.HasField("timeout") and duration_ms(s.timeout) <= 0:
            v.add(f"{p}.timeout", "must be positive")
        if s.HasField("compensation_timeout") and duration_ms(s.compensation_timeout) <= 0:
            v.add(f"{p}.compensation_timeout", "must be positive")
        _check_step_metadata(s, p, v)
        if s.is_pivot:
            pivots.append(s.name)
            if s.compensation_action:
                v.add(f"{p}.compensation_action", "a pivot step is never compensated")
        mapping = {}
        # A map item sees `item` and `index`, a loop iteration `iteration` and `last`.
        item_vars = (MAP_ITEM_VARIABLES if s.HasField("map") else frozenset()) | (
            LOOP_VARIABLES if s.HasField("loop") else frozenset()
        )
        for key, src in s.input_mapping.items():
            expr = _compile_expr(src, f"{p}.input_mapping[{key}]", v, extra=item_vars)
            if expr is not None:
                mapping[key] = expr
        kind = StepKind.SINGLE
        timeout_ms = duration_ms(s.timeout) if s.HasField("timeout") else default_timeout_ms
        if s.HasField("compensation_timeout"):
            comp_timeout_ms = duration_ms(s.compensation_timeout)
        else:
            comp_timeout_ms = default_comp_timeout_ms or timeout_ms
        spec = StepSpec(
            index=idx,
            proto=s,
            kind=kind,
            retry=Retry.from_proto(s.retry_policy) if s.HasField("retry_policy") else default_retry,
            timeout_ms=timeout_ms,
            compensation_timeout_ms=comp_timeout_ms,
            input_mapping=mapping,
            condition=_compile_expr(s.condition, f"{p}.condition", v, boolean=True),
        )
        if s.HasField("map") and s.HasField("loop"):
            v.add(f"{p}.loop", "set at most one of map and loop")
        elif s.HasField("map"):
            spec.kind = StepKind.MAP
            if not s.map.items:
                v.add(f"{p}.map.items", "required")
            spec.map_items = _compile_expr(s.map.items, f"{p}.map.items", v)
            spec.map_reduce = _compile_expr(
                s.map.reduce, f"{p}.map.reduce", v, extra=REDUCE_VARIABLES
            )
            spec.map_concurrency = s.map.max_concurrency or DEFAULT_MAP_CONCURRENCY
        elif s.HasField("loop"):
            spec.kind = StepKind.LOOP
            if not s.loop.condition:
                v.add(f"{p}.loop.condition", "required")
            if not 1 <= s.loop.max_iterations <= MAX_LOOP_ITERATIONS:
                v.add(f"{p}.loop.max_iterations", f"must be 1..{MAX_LOOP_ITERATIONS}")
            spec.loop_condition = _compile_expr(
                s.loop.condition, f"{p}.loop.condition", v, extra=LOOP_VARIABLES, boolean=True
            )
            spec.loop_max_iterations = s.loop.max_iterations
        specs.append(spec)

    for s, p in raw:
        deps_seen: set[str] = set()
        for j, d in enumerate(s.depends_on):
            if d == s.name:
                v.add(f"{p}.depends_on[{j}]", "a step cannot depend on itself")
            elif d not in seen:
                v.add(f"{p}.depends_on[{j}]", f"unknown step {d!r}")
            elif d in deps_seen:
                v.add(f"{p}.depends_on[{j}]", f"duplicate dependency {d!r}")
            deps_seen.add(d)

    by_name = {s.name: s for s in specs if s.name in seen}
    deps = {s.name: [d for d in s.deps if d in by_name and d != s.name] for s in by_name.values()}
    dependents: dict[str, set[str]] = {n: set() for n in by_name}
    for n, ds in deps.items():
        for d in ds:
            dependents[d].add(n)
    cycle = find_cycle(deps)
    descendants: dict[str, frozenset[str]] = {}
    if cycle:
        v.add(f"{paths[cycle[0]]}.depends_on", "dependency cycle: " + " -> ".join(cycle))
    else:
        descendants = {n: _closure(n, dependents) for n in by_name}

    pivot = pivots[0] if len(pivots) == 1 else None
    if len(pivots) > 1:
        v.add(
            f"{paths.get(pivots[1], pre + 'steps')}.is_pivot", "at most one step may be the pivot"
        )
    if pivot and pivot in by_name and not cycle:
        parents = {n: set(ds) for n, ds in deps.items()}
        before = _closure(pivot, parents)
        after = descendants[pivot]
        if not after:
            v.add(
                f"{paths[pivot]}.is_pivot",
                f"no step follows the pivot {pivot!r}, so it marks nothing; "
                "make it depend-upon or drop is_pivot",
            )
        for n in by_name:
            if n != pivot and n not in before and n not in after:
                v.add(
                    f"{paths[n]}.depends_on",
                    f"step {n!r} neither precedes nor follows the pivot {pivot!r}",
                )

    strategy = defn.compensation_strategy or saga_pb2.COMPENSATION_STRATEGY_BACKWARD
    if strategy not in saga_pb2.CompensationStrategy.values():
        v.add(f"{pre}compensation_strategy", f"unknown strategy {strategy}")
    if v.items:
        raise InvalidArgument(
            f"invalid saga definition: {v.items[0][0]}: {v.items[0][1]}"
            + (f" (and {len(v.items) - 1} more)" if len(v.items) > 1 else ""),
            field_violations=v.items,
        )
    return CompiledDefinition(
        proto=defn,
        steps=specs,
        by_name=by_name,
        dependents=dependents,
        descendants=descendants,
        pivot=pivot,
        strategy=strategy,
        timeout_ms=duration_ms(defn.timeout)
        if defn.HasField("timeout")
        else DEFAULT_SAGA_TIMEOUT_MS,
    )
