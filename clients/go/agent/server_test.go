package agent

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/agentmesh/agentmesh/clients/go/gen/agentmesh/agent/v1"
)

// A Compensate that arrives while its Execute runs waits for it and sees its output.
func TestCompensateWaitsForRunningExecute(t *testing.T) {
	s := NewServer("agent-go-test", slog.New(slog.NewJSONHandler(io.Discard, nil)))
	release := make(chan struct{})
	started := make(chan struct{})
	effects := 0
	s.Action("slow", func(context.Context, Call) (map[string]any, error) {
		close(started)
		<-release
		effects++
		return map[string]any{"done": true}, nil
	})
	var seen Call
	s.Compensation("undo", func(_ context.Context, c Call) (map[string]any, error) {
		seen = c
		return map[string]any{}, nil
	})
	ctx := context.Background()
	results := make(chan *agentv1.ExecuteResponse, 1)
	go func() {
		r, _ := s.Execute(ctx, &agentv1.ExecuteRequest{Action: "slow", IdempotencyKey: "k"})
		results <- r
	}()
	<-started
	compDone := make(chan error, 1)
	go func() {
		_, err := s.Compensate(ctx, &agentv1.CompensateRequest{Action: "undo", IdempotencyKey: "k/compensate"})
		compDone <- err
	}()
	select {
	case err := <-compDone:
		t.Fatalf("compensate returned before its Execute ended: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	if err := <-compDone; err != nil {
		t.Fatal(err)
	}
	if !seen.Executed || seen.OriginalOutput["done"] != true {
		t.Fatalf("compensation saw %+v, want the Execute's output", seen)
	}
	if r := <-results; r == nil || r.GetDeduplicated() {
		t.Fatalf("execute: %v", r)
	}
	if effects != 1 {
		t.Fatalf("effects = %d, want 1", effects)
	}
}

// Both wire styles fence: an older caller's "<K>/compensate" key, and a newer
// caller's compensated_idempotency_key (with a key of its own); the field wins.
func TestCompensateFencesByFieldOrSuffix(t *testing.T) {
	for _, tc := range []struct {
		name   string
		req    *agentv1.CompensateRequest
		fenced string
		free   string
	}{
		{"suffix", &agentv1.CompensateRequest{Action: "undo", IdempotencyKey: "sg/a/compensate"}, "sg/a", ""},
		{"field", &agentv1.CompensateRequest{Action: "undo", IdempotencyKey: "undo-1", CompensatedIdempotencyKey: "sg/b"}, "sg/b", "undo-1"},
		{"field wins", &agentv1.CompensateRequest{Action: "undo", IdempotencyKey: "sg/c/compensate", CompensatedIdempotencyKey: "sg/d"}, "sg/d", "sg/c"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewServer("agent-go-test", slog.New(slog.NewJSONHandler(io.Discard, nil)))
			runs := 0
			s.Action("do", func(context.Context, Call) (map[string]any, error) { runs++; return map[string]any{}, nil })
			s.Compensation("undo", func(context.Context, Call) (map[string]any, error) { return map[string]any{}, nil })
			ctx := context.Background()
			if _, err := s.Compensate(ctx, tc.req); err != nil {
				t.Fatal(err)
			}
			_, err := s.Execute(ctx, &agentv1.ExecuteRequest{Action: "do", IdempotencyKey: tc.fenced})
			st := status.Convert(err)
			if st.Code() != codes.Aborted || len(st.Details()) != 1 {
				t.Fatalf("execute of the fenced key: %v", err)
			}
			if info, ok := st.Details()[0].(*errdetails.ErrorInfo); !ok || info.GetReason() != "COMPENSATED" || info.GetDomain() != Domain {
				t.Fatalf("details %v", st.Details())
			}
			if tc.free != "" {
				if _, err := s.Execute(ctx, &agentv1.ExecuteRequest{Action: "do", IdempotencyKey: tc.free}); err != nil {
					t.Fatalf("an unfenced key was refused: %v", err)
				}
			}
			if want := map[bool]int{true: 1, false: 0}[tc.free != ""]; runs != want {
				t.Fatalf("runs = %d, want %d", runs, want)
			}
		})
	}
}

func TestLoadSnapshot(t *testing.T) {
	l := NewLoadTracker(2)
	t0 := l.Start()
	if got := l.Snapshot().GetQueueSize(); got != 1 {
		t.Fatalf("queue_size = %d, want 1 in flight", got)
	}
	l.Done(t0, context.Canceled)
	l.Done(l.Start(), nil)
	l.Done(l.Start(), nil) // pushes the failure out of the 2-call window
	if m := l.Snapshot(); m.GetErrorRate() != 0 || m.GetQueueSize() != 0 {
		t.Fatalf("snapshot %v", m)
	}
}
