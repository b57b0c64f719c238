package carbon_test

import (
	"context"
	"io"
	"log/slog"
	"math"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/agentmesh/agentmesh/clients/go/agent"
	"github.com/agentmesh/agentmesh/clients/go/carbon"
	agentv1 "github.com/agentmesh/agentmesh/clients/go/gen/agentmesh/agent/v1"
)

func newAgent(t *testing.T) (*agent.Server, *carbon.Ledger) {
	t.Helper()
	s := agent.NewServer("agent-go-test", slog.New(slog.NewJSONHandler(io.Discard, nil)))
	l := carbon.NewLedger()
	carbon.Register(s, l)
	return s, l
}

func input(t *testing.T, m map[string]any) *structpb.Struct {
	t.Helper()
	s, err := structpb.NewStruct(m)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func execute(s *agent.Server, key string, in *structpb.Struct) (*agentv1.ExecuteResponse, error) {
	return s.Execute(context.Background(), &agentv1.ExecuteRequest{
		Action: "calculate_emissions", Input: in, IdempotencyKey: key, Attempt: 1,
	})
}

func compensate(s *agent.Server, key string) (*agentv1.CompensateResponse, error) {
	return s.Compensate(context.Background(), &agentv1.CompensateRequest{
		Action: "void_emissions", IdempotencyKey: key, Attempt: 1,
	})
}

func TestExecuteTakesEffectOncePerKey(t *testing.T) {
	s, ledger := newAgent(t)
	in := input(t, map[string]any{"naics": "334111", "spend_usd": 1000})
	first, err := execute(s, "saga-1/a", in)
	if err != nil {
		t.Fatal(err)
	}
	out := first.GetOutput().AsMap()
	if got := out["kg_co2e"].(float64); math.Abs(got-112) > 1e-9 {
		t.Fatalf("kg_co2e = %v, want 1000 * 0.112", got)
	}
	if out["language"] != "go" || first.GetDeduplicated() {
		t.Fatalf("first call: %v deduplicated=%v", out, first.GetDeduplicated())
	}
	again, err := execute(s, "saga-1/a", input(t, map[string]any{"naics": "111140", "spend_usd": 5}))
	if err != nil {
		t.Fatal(err)
	}
	if !again.GetDeduplicated() || again.GetOutput().AsMap()["naics"] != "334111" {
		t.Fatalf("retry should return the stored output: %v", again)
	}
	if math.Abs(ledger.Total()-112) > 1e-9 {
		t.Fatalf("ledger total %v: the retry took effect again", ledger.Total())
	}
}

func TestBadInputIsInvalidArgumentAndNotStored(t *testing.T) {
	s, ledger := newAgent(t)
	_, err := execute(s, "saga-2/a", input(t, map[string]any{"naics": "999999", "spend_usd": 1}))
	st := status.Convert(err)
	if st.Code() != codes.InvalidArgument {
		t.Fatalf("code %v, want INVALID_ARGUMENT", st.Code())
	}
	br, ok := st.Details()[0].(*errdetails.BadRequest)
	if !ok || br.GetFieldViolations()[0].GetField() != "input.naics" {
		t.Fatalf("details %v, want a BadRequest violation on input.naics", st.Details())
	}
	// Failures are not stored: a retry with good input runs.
	resp, err := execute(s, "saga-2/a", input(t, map[string]any{"naics": 541511, "spend_usd": 100}))
	if err != nil || resp.GetDeduplicated() || math.Abs(ledger.Total()-9.7) > 1e-9 {
		t.Fatalf("retry: %v %v, ledger %v", resp, err, ledger.Total())
	}
}

func TestCompensateVoidsOnceAndFencesLateExecute(t *testing.T) {
	s, ledger := newAgent(t)
	if _, err := execute(s, "saga-3/a", input(t, map[string]any{"naics": "324110", "spend_usd": 10})); err != nil {
		t.Fatal(err)
	}
	c, err := compensate(s, "saga-3/a/compensate")
	if err != nil {
		t.Fatal(err)
	}
	if out := c.GetOutput().AsMap(); out["voided"] != true || ledger.Total() != 0 {
		t.Fatalf("compensation %v, ledger %v", out, ledger.Total())
	}
	again, err := compensate(s, "saga-3/a/compensate")
	if err != nil || !again.GetDeduplicated() {
		t.Fatalf("second compensate: %v %v", again, err)
	}
	_, err = execute(s, "saga-3/a", input(t, map[string]any{"naics": "324110", "spend_usd": 10}))
	st := status.Convert(err)
	if st.Code() != codes.Aborted {
		t.Fatalf("late execute: code %v, want ABORTED", st.Code())
	}
	if info, ok := st.Details()[0].(*errdetails.ErrorInfo); !ok || info.GetReason() != agent.ReasonCompensated {
		t.Fatalf("late execute details %v", st.Details())
	}
}

func TestCompensateOfNeverExecutedStepIsANoOp(t *testing.T) {
	s, ledger := newAgent(t)
	if _, err := execute(s, "saga-4/a", input(t, map[string]any{"naics": "562111", "spend_usd": 100})); err != nil {
		t.Fatal(err)
	}
	c, err := compensate(s, "saga-4/b/compensate")
	if err != nil {
		t.Fatalf("compensating a step that never ran must succeed: %v", err)
	}
	if out := c.GetOutput().AsMap(); out["voided"] != false || out["executed"] != false {
		t.Fatalf("output %v, want voided=false executed=false", out)
	}
	if math.Abs(ledger.Total()-19.7) > 1e-9 {
		t.Fatalf("ledger %v: a no-op compensation changed another step", ledger.Total())
	}
}

func TestUnknownActionAndEvaluate(t *testing.T) {
	s, _ := newAgent(t)
	_, err := s.Execute(context.Background(), &agentv1.ExecuteRequest{Action: "nope"})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("unknown action: %v", err)
	}
	_, err = s.Evaluate(context.Background(), &agentv1.EvaluateRequest{Objective: "sphere"})
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("evaluate: %v", err)
	}
}
