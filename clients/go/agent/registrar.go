package agent

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	registryv1 "github.com/agentmesh/agentmesh/clients/go/gen/agentmesh/registry/v1"
)

// Deadlines of registry calls, as in the Python SDK (agentmesh/agent/registration.py).
const (
	callTimeout       = 5 * time.Second
	registerTimeout   = 20 * time.Second // how long Register retries an unreachable registry
	deregisterTimeout = 2 * time.Second  // short, so a dead registry does not eat the drain budget
)

// Registrar keeps one agent registered: RegisterAgent, Heartbeat with load
// every interval, DeregisterAgent on shutdown.
type Registrar struct {
	client     registryv1.RegistryServiceClient
	descriptor *registryv1.Agent
	load       *LoadTracker
	log        *slog.Logger
}

// NewRegistrar registers descriptor through conn; its heartbeat_interval is
// the interval the agent promises (the registry's default when zero).
func NewRegistrar(conn grpc.ClientConnInterface, descriptor *registryv1.Agent, load *LoadTracker, log *slog.Logger) *Registrar {
	return &Registrar{client: registryv1.NewRegistryServiceClient(conn), descriptor: descriptor, load: load, log: log}
}

// Register adds the agent to the catalog, retrying UNAVAILABLE for up to 20 s.
// It returns the registry's error otherwise (e.g. INVALID_ARGUMENT with the
// field that is wrong).
func (r *Registrar) Register(ctx context.Context) error {
	deadline := time.Now().Add(registerTimeout)
	delay := 100 * time.Millisecond
	for {
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		resp, err := r.client.RegisterAgent(cctx, &registryv1.RegisterAgentRequest{Agent: r.descriptor})
		cancel()
		if err == nil {
			r.log.Info("registered", "agent_id", r.descriptor.GetAgentId(),
				"endpoint", r.descriptor.GetEndpoint(), "new_registration", resp.GetCreated(),
				"status", resp.GetAgent().GetStatus().String())
			return nil
		}
		if status.Code(err) != codes.Unavailable || time.Now().After(deadline) {
			return fmt.Errorf("register %s with the registry: %w", r.descriptor.GetAgentId(), err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*time.Second, 2*delay)
	}
}

// Heartbeat sends one heartbeat with the current load; when the registry has
// forgotten the agent (NOT_FOUND, e.g. it expired while paused) it registers
// again first. It returns the interval the registry asks for (0 if none).
func (r *Registrar) Heartbeat(ctx context.Context) (time.Duration, error) {
	req := &registryv1.HeartbeatRequest{AgentId: r.descriptor.GetAgentId(), Load: r.load.Snapshot()}
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	resp, err := r.client.Heartbeat(cctx, req)
	if status.Code(err) == codes.NotFound {
		r.log.Warn("registry forgot this agent; registering again")
		if err := r.Register(ctx); err != nil {
			return 0, err
		}
		resp, err = r.client.Heartbeat(cctx, req)
	}
	if err != nil {
		return 0, err
	}
	return resp.GetHeartbeatInterval().AsDuration(), nil
}

// HeartbeatLoop heartbeats every promised interval, or sooner when the
// registry's answer asks for it, until ctx ends. Failures are logged and retried
// on the next tick.
func (r *Registrar) HeartbeatLoop(ctx context.Context) {
	own := r.descriptor.GetHeartbeatInterval().AsDuration()
	if own <= 0 {
		own = 5 * time.Second
	}
	interval := own
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
		asked, err := r.Heartbeat(ctx)
		if err != nil {
			if ctx.Err() == nil {
				r.log.Warn("heartbeat failed", "error", err.Error())
			}
			continue
		}
		interval = own
		if asked > 0 && asked < own {
			interval = asked
		}
	}
}

// Deregister removes the agent from the catalog (best effort; errors are logged).
func (r *Registrar) Deregister(ctx context.Context, reason string) {
	cctx, cancel := context.WithTimeout(ctx, deregisterTimeout)
	defer cancel()
	_, err := r.client.DeregisterAgent(cctx, &registryv1.DeregisterAgentRequest{
		AgentId: r.descriptor.GetAgentId(), Reason: reason,
	})
	if err != nil && status.Code(err) != codes.NotFound {
		r.log.Warn("deregister failed", "code", status.Code(err).String(), "error", status.Convert(err).Message())
		return
	}
	r.log.Info("deregistered", "agent_id", r.descriptor.GetAgentId(), "reason", reason)
}
