// Package agent implements agentmesh.agent.v1.AgentService in Go with the
// same contract semantics as the Python Agent SDK (libs/agentmesh/agent):
//
//   - Execute with a non-empty idempotency key takes effect once. The output of
//     every completed key is stored and returned to later calls with
//     deduplicated=true; a duplicate that arrives while the first call runs
//     waits for it and shares its outcome; failures are not stored, so a retry
//     runs again. The handler runs detached from the caller's cancellation, so
//     a caller that gives up never tears an effect in half.
//   - Compensate is idempotent by its own key. A Compensate that names the
//     Execute it undoes, <K>, fences it: in compensated_idempotency_key, or (older
//     callers, which leave that field empty) by its own key "<K>/compensate".
//     It waits for a running Execute <K>, records a tombstone for <K>,
//     and from then on an Execute <K> fails with ABORTED (ErrorInfo reason
//     COMPENSATED) without running. Compensating an action that never ran is a
//     successful no-op: the handler sees Executed=false and says so in its output.
//   - Evaluate (swarm fitness) is not implemented: UNIMPLEMENTED.
//
// Results live in process memory, unbounded and lost on restart. That is
// enough for an example agent; a production agent keeps them in a durable
// store (the Python SDK's Redis layout is am:agent:{agent_id}:idem:{x|c|t}:{key}).
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	agentv1 "github.com/agentmesh/agentmesh/clients/go/gen/agentmesh/agent/v1"
	commonv1 "github.com/agentmesh/agentmesh/clients/go/gen/agentmesh/common/v1"
)

// Domain of the google.rpc.ErrorInfo details this agent returns, as in the Python runtime.
const Domain = "agentmesh.io"

// ReasonName is the google.rpc.ErrorInfo reason string of an ErrorReason from
// the contract (agentmesh.common.v1): its name without the "ERROR_REASON_"
// prefix, e.g. ERROR_REASON_COMPENSATED travels as "COMPENSATED".
func ReasonName(r commonv1.ErrorReason) string {
	return strings.TrimPrefix(r.String(), "ERROR_REASON_")
}

// ErrorInfo reasons this agent returns, from the contract's ErrorReason enum.
var (
	// ReasonCompensated: an Execute whose key was already compensated (ABORTED).
	ReasonCompensated = ReasonName(commonv1.ErrorReason_ERROR_REASON_COMPENSATED)
	// ReasonExecuteInFlight: a Compensate whose deadline came while it waited
	// for the Execute it undoes (UNAVAILABLE; it still runs once the Execute ends).
	ReasonExecuteInFlight = ReasonName(commonv1.ErrorReason_ERROR_REASON_EXECUTE_IN_FLIGHT)
)

// compensateSuffix marks an older caller's Compensate key that undoes the
// Execute key before it; the Compensate's idempotency_key keeps it on the wire.
const compensateSuffix = "/compensate"

// FencedKey is the idempotency key of the Execute a Compensate undoes:
// compensated_idempotency_key when set, else the request's own key without
// its "/compensate" suffix (callers older than the field). ok is false when
// neither names an Execute; nothing is fenced then.
func FencedKey(req *agentv1.CompensateRequest) (key string, ok bool) {
	if k := req.GetCompensatedIdempotencyKey(); k != "" {
		return k, true
	}
	k, ok := strings.CutSuffix(req.GetIdempotencyKey(), compensateSuffix)
	return k, ok && k != ""
}

// Call is what a handler sees.
type Call struct {
	// AgentID is this agent's id.
	AgentID string
	// Action is the action (or compensation) name.
	Action string
	// Input is the request's input Struct as a map (numbers are float64).
	Input map[string]any
	// IdempotencyKey is the request's key; "" when the call is not deduplicated.
	IdempotencyKey string
	// Attempt is the attempt number, starting at 1.
	Attempt uint32
	// Metadata is the request's free-form metadata (e.g. "saga_id").
	Metadata map[string]string
	// OriginalOutput is, for a Compensate, the output of the Execute it undoes:
	// the request's original_output, else the stored output of Execute <K>.
	OriginalOutput map[string]any
	// Executed is, for a Compensate, whether the Execute it undoes completed
	// here or the caller sent its output. False means there is nothing to undo.
	Executed bool
}

// Handler runs one action or compensation. Return a gRPC status error
// (status.Error) to choose the code; other errors become INTERNAL.
type Handler func(ctx context.Context, call Call) (map[string]any, error)

type stored struct {
	action string
	output *structpb.Struct
}

// flight is one keyed call in progress; joiners wait on done.
type flight struct {
	done     chan struct{}
	output   *structpb.Struct
	err      error
	waitExec chan struct{} // for a Compensate: closed once the Execute it fences has ended
}

// Server is an AgentService with registered handlers. Create it with NewServer.
type Server struct {
	agentv1.UnimplementedAgentServiceServer

	agentID       string
	actions       map[string]Handler
	compensations map[string]Handler
	log           *slog.Logger
	Load          *LoadTracker

	mu         sync.Mutex
	executed   map[string]stored  // completed Execute keys
	compensed  map[string]stored  // completed Compensate keys
	tombstones map[string]string  // Execute key -> compensation action that fenced it
	flights    map[string]*flight // "x:"/"c:" + key -> call in progress
}

// NewServer returns a Server for agentID that logs one JSON line per call to log.
func NewServer(agentID string, log *slog.Logger) *Server {
	return &Server{
		agentID:       agentID,
		actions:       map[string]Handler{},
		compensations: map[string]Handler{},
		log:           log,
		Load:          NewLoadTracker(200),
		executed:      map[string]stored{},
		compensed:     map[string]stored{},
		tombstones:    map[string]string{},
		flights:       map[string]*flight{},
	}
}

// Action registers the Execute handler of name.
func (s *Server) Action(name string, h Handler) { s.actions[name] = h }

// Compensation registers the Compensate handler of name.
func (s *Server) Compensation(name string, h Handler) { s.compensations[name] = h }

// Actions lists the registered action names, sorted.
func (s *Server) Actions() []string { return sortedKeys(s.actions) }

// Compensations lists the registered compensation names, sorted.
func (s *Server) Compensations() []string { return sortedKeys(s.compensations) }

func sortedKeys(m map[string]Handler) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Execute implements AgentService.Execute.
func (s *Server) Execute(ctx context.Context, req *agentv1.ExecuteRequest) (*agentv1.ExecuteResponse, error) {
	t0 := s.Load.Start()
	out, dedup, err := s.execute(ctx, req)
	s.Load.Done(t0, err)
	s.logCall("execute", req.GetAction(), req.GetIdempotencyKey(), req.GetAttempt(), dedup, t0, err,
		slog.Any("output", structMap(out)))
	if err != nil {
		return nil, err
	}
	return &agentv1.ExecuteResponse{
		Output:             out,
		Deduplicated:       dedup,
		AgentId:            s.agentID,
		ProcessingDuration: durationpb.New(time.Since(t0)),
	}, nil
}

func (s *Server) execute(ctx context.Context, req *agentv1.ExecuteRequest) (*structpb.Struct, bool, error) {
	h, ok := s.actions[req.GetAction()]
	if !ok {
		return nil, false, badRequest("action", fmt.Sprintf(
			"unknown action %q; agent %s runs %v", req.GetAction(), s.agentID, s.Actions()))
	}
	call := Call{
		AgentID: s.agentID, Action: req.GetAction(), Input: req.GetInput().AsMap(),
		IdempotencyKey: req.GetIdempotencyKey(), Attempt: max(req.GetAttempt(), 1),
		Metadata: req.GetMetadata(),
	}
	key := req.GetIdempotencyKey()
	if key == "" {
		out, err := runHandler(ctx, h, call)
		return out, false, err
	}
	s.mu.Lock()
	if comp, ok := s.tombstones[key]; ok {
		s.mu.Unlock()
		return nil, false, s.compensatedError(key, comp)
	}
	if r, ok := s.executed[key]; ok {
		s.mu.Unlock()
		if r.action != req.GetAction() {
			return nil, false, keyReused(key, r.action, req.GetAction())
		}
		return r.output, true, nil
	}
	if f, ok := s.flights["x:"+key]; ok {
		s.mu.Unlock()
		return join(ctx, f)
	}
	f := &flight{done: make(chan struct{})}
	s.flights["x:"+key] = f
	s.mu.Unlock()

	// Detached: the effect finishes even when the caller gives up; its retry
	// then gets the stored output. The caller's deadline still reaches the handler.
	hctx := detach(ctx)
	go func() {
		defer hctx.cancel()
		out, err := runHandler(hctx, h, call)
		s.mu.Lock()
		if err == nil {
			s.executed[key] = stored{action: call.Action, output: out}
		}
		delete(s.flights, "x:"+key)
		f.output, f.err = out, err
		s.mu.Unlock()
		close(f.done)
	}()
	select {
	case <-f.done:
		return f.output, false, f.err
	case <-ctx.Done():
		return nil, false, status.FromContextError(ctx.Err()).Err()
	}
}

// Compensate implements AgentService.Compensate.
func (s *Server) Compensate(ctx context.Context, req *agentv1.CompensateRequest) (*agentv1.CompensateResponse, error) {
	t0 := s.Load.Start()
	out, dedup, err := s.compensate(ctx, req)
	s.Load.Done(t0, err)
	s.logCall("compensate", req.GetAction(), req.GetIdempotencyKey(), req.GetAttempt(), dedup, t0, err,
		slog.Any("output", structMap(out)))
	if err != nil {
		return nil, err
	}
	return &agentv1.CompensateResponse{Output: out, Deduplicated: dedup, AgentId: s.agentID}, nil
}

func (s *Server) compensate(ctx context.Context, req *agentv1.CompensateRequest) (*structpb.Struct, bool, error) {
	h, ok := s.compensations[req.GetAction()]
	if !ok {
		return nil, false, badRequest("action", fmt.Sprintf(
			"unknown compensation %q; agent %s compensates %v", req.GetAction(), s.agentID, s.Compensations()))
	}
	call := Call{
		AgentID: s.agentID, Action: req.GetAction(), Input: req.GetInput().AsMap(),
		IdempotencyKey: req.GetIdempotencyKey(), Attempt: max(req.GetAttempt(), 1),
		Metadata: req.GetMetadata(),
	}
	if req.GetOriginalOutput() != nil {
		call.OriginalOutput, call.Executed = req.GetOriginalOutput().AsMap(), true
	}
	key := req.GetIdempotencyKey()
	if key == "" {
		out, err := runHandler(ctx, h, call)
		return out, false, err
	}
	target, fences := FencedKey(req)
	s.mu.Lock()
	if r, ok := s.compensed[key]; ok {
		s.mu.Unlock()
		if r.action != req.GetAction() {
			return nil, false, keyReused(key, r.action, req.GetAction())
		}
		return r.output, true, nil
	}
	if f, ok := s.flights["c:"+key]; ok {
		s.mu.Unlock()
		return join(ctx, f)
	}
	f := &flight{done: make(chan struct{}), waitExec: make(chan struct{})}
	s.flights["c:"+key] = f
	s.mu.Unlock()

	hctx := detach(ctx)
	go func() {
		defer hctx.cancel()
		if fences {
			s.fence(target, &call)
		}
		close(f.waitExec)
		out, err := runHandler(hctx, h, call)
		s.mu.Lock()
		if err == nil {
			s.compensed[key] = stored{action: call.Action, output: out}
		}
		delete(s.flights, "c:"+key)
		f.output, f.err = out, err
		s.mu.Unlock()
		close(f.done)
	}()
	// Answer shortly before the caller's deadline if the Execute still runs,
	// so the caller learns why (and retries) instead of seeing a bare timeout.
	var early <-chan time.Time
	if dl, ok := ctx.Deadline(); ok {
		margin := min(time.Until(dl)/10, 100*time.Millisecond)
		timer := time.NewTimer(max(time.Until(dl)-margin, 0))
		defer timer.Stop()
		early = timer.C
	}
	for {
		select {
		case <-f.done:
			return f.output, false, f.err
		case <-early:
			select {
			case <-f.waitExec:
				early = nil // the handler runs; wait for it until the deadline
				continue
			default:
			}
			st, _ := status.New(codes.Unavailable, fmt.Sprintf(
				"execute %q is still running on agent %s; the compensation runs once it ends: retry",
				target, s.agentID)).WithDetails(&errdetails.ErrorInfo{
				Reason: ReasonExecuteInFlight, Domain: Domain,
				Metadata: map[string]string{"idempotency_key": target, "agent_id": s.agentID},
			})
			return nil, false, st.Err()
		case <-ctx.Done():
			return nil, false, status.FromContextError(ctx.Err()).Err()
		}
	}
}

// fence waits until no Execute of target runs, then records its tombstone in
// the same critical section, so no Execute of target can start in between and
// take effect after the compensation. It fills call.OriginalOutput from the
// stored Execute output when the caller sent none.
func (s *Server) fence(target string, call *Call) {
	for {
		s.mu.Lock()
		running := s.flights["x:"+target]
		if running == nil {
			s.tombstones[target] = call.Action
			if r, ok := s.executed[target]; ok && !call.Executed {
				call.OriginalOutput, call.Executed = r.output.AsMap(), true
			}
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		<-running.done
	}
}

// join waits for a call already in flight with the same key and shares its outcome.
func join(ctx context.Context, f *flight) (*structpb.Struct, bool, error) {
	select {
	case <-f.done:
		return f.output, f.err == nil, f.err
	case <-ctx.Done():
		return nil, false, status.FromContextError(ctx.Err()).Err()
	}
}

type detachedCtx struct {
	context.Context
	cancel context.CancelFunc
}

// detach keeps ctx's values and deadline but not its cancellation.
func detach(ctx context.Context) detachedCtx {
	base := context.WithoutCancel(ctx)
	if dl, ok := ctx.Deadline(); ok {
		c, cancel := context.WithDeadline(base, dl)
		return detachedCtx{c, cancel}
	}
	c, cancel := context.WithCancel(base)
	return detachedCtx{c, cancel}
}

// runHandler calls h and converts its output; panics become INTERNAL.
func runHandler(ctx context.Context, h Handler, call Call) (out *structpb.Struct, err error) {
	defer func() {
		if r := recover(); r != nil {
			out, err = nil, status.Errorf(codes.Internal, "action %q panicked: %v", call.Action, r)
		}
	}()
	m, err := h(ctx, call)
	if err != nil {
		if _, ok := status.FromError(err); ok {
			return nil, err
		}
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, status.Error(codes.DeadlineExceeded, err.Error())
		}
		return nil, status.Errorf(codes.Internal, "action %q: %v", call.Action, err)
	}
	out, err = structpb.NewStruct(m)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "action %q returned an output that is not JSON: %v", call.Action, err)
	}
	return out, nil
}

func (s *Server) compensatedError(key, comp string) error {
	st, _ := status.New(codes.Aborted, fmt.Sprintf(
		"idempotency key %q was compensated (compensation %q) on agent %s; "+
			"a late Execute must not take effect, so the action did not run", key, comp, s.agentID),
	).WithDetails(&errdetails.ErrorInfo{
		Reason: ReasonCompensated, Domain: Domain,
		Metadata: map[string]string{"idempotency_key": key, "agent_id": s.agentID},
	})
	return st.Err()
}

func keyReused(key, had, got string) error {
	return badRequest("idempotency_key", fmt.Sprintf(
		"idempotency key %q completed with action %q; it cannot be reused for %q", key, had, got))
}

// BadRequest is INVALID_ARGUMENT with one google.rpc.BadRequest field violation.
func BadRequest(field, msg string) error { return badRequest(field, msg) }

func badRequest(field, msg string) error {
	st, _ := status.New(codes.InvalidArgument, msg).WithDetails(&errdetails.BadRequest{
		FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: field, Description: msg}},
	})
	return st.Err()
}

func structMap(s *structpb.Struct) map[string]any {
	if s == nil {
		return nil
	}
	return s.AsMap()
}

func (s *Server) logCall(kind, action, key string, attempt uint32, dedup bool, t0 time.Time, err error, extra ...any) {
	attrs := []any{
		slog.String("agent_id", s.agentID), slog.String("action", action),
		slog.String("idempotency_key", key), slog.Uint64("attempt", uint64(attempt)),
		slog.Bool("deduplicated", dedup), slog.String("code", code.Code(status.Code(err)).String()), // "INVALID_ARGUMENT", as callers log it
		slog.Float64("duration_ms", float64(time.Since(t0).Microseconds())/1000),
	}
	if err != nil {
		attrs = append(attrs, slog.String("error", status.Convert(err).Message()))
	}
	s.log.Info(kind, append(attrs, extra...)...)
}
