package agent

import (
	"sync"
	"time"

	commonv1 "github.com/agentmesh/agentmesh/clients/go/gen/agentmesh/common/v1"
)

// LoadTracker measures the load a heartbeat reports: calls in progress, and
// the error rate and mean processing time over the last `window` calls (the
// Python SDK uses the same 200-call window).
type LoadTracker struct {
	mu       sync.Mutex
	inFlight int
	window   []outcome
	next     int
	filled   bool
}

type outcome struct {
	failed bool
	ms     float64
}

// NewLoadTracker keeps the outcomes of the last window calls (window >= 1).
func NewLoadTracker(window int) *LoadTracker {
	return &LoadTracker{window: make([]outcome, max(window, 1))}
}

// Start counts a call as in progress and returns its start time for Done.
func (l *LoadTracker) Start() time.Time {
	l.mu.Lock()
	l.inFlight++
	l.mu.Unlock()
	return time.Now()
}

// Done records the outcome of a call started at t0 (err nil = success).
func (l *LoadTracker) Done(t0 time.Time, err error) {
	ms := float64(time.Since(t0).Microseconds()) / 1000
	l.mu.Lock()
	defer l.mu.Unlock()
	l.inFlight--
	l.window[l.next] = outcome{failed: err != nil, ms: ms}
	l.next = (l.next + 1) % len(l.window)
	l.filled = l.filled || l.next == 0
}

// Snapshot is the load to send with a heartbeat.
func (l *LoadTracker) Snapshot() *commonv1.LoadMetrics {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.next
	if l.filled {
		n = len(l.window)
	}
	m := &commonv1.LoadMetrics{QueueSize: uint32(max(l.inFlight, 0))}
	if n == 0 {
		return m
	}
	var failed, total float64
	for _, o := range l.window[:n] {
		total += o.ms
		if o.failed {
			failed++
		}
	}
	m.ErrorRate = failed / float64(n)
	m.ProcessingTimeMs = total / float64(n)
	m.ResponseTimeMs = m.ProcessingTimeMs
	return m
}
