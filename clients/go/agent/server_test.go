package agent

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

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
