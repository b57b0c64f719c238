// Command carbon-agent is an AgentMesh agent written in Go: it serves
// agentmesh.agent.v1.AgentService (action "calculate_emissions", compensation
// "void_emissions"; see package carbon) and grpc.health.v1, registers with the
// registry, heartbeats with its load, and on SIGTERM deregisters, reports
// NOT_SERVING and drains in-flight calls.
//
//	go run ./cmd/carbon-agent --registry-target 127.0.0.1:50053 --agent-id agent-go-carbon-1
//
// Every flag can also be set as AGENTMESH_AGENT_<FLAG> (upper case, "-" as
// "_", e.g. AGENTMESH_AGENT_REGISTRY_TARGET), as for the Python SDK's agents;
// a flag on the command line wins. Logs are JSON lines on stderr:
// {"msg":"serving","port":N} once registered and serving, then one "execute"
// or "compensate" line per call with its idempotency_key, code and output.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/agentmesh/agentmesh/clients/go/agent"
	"github.com/agentmesh/agentmesh/clients/go/carbon"
	agentv1 "github.com/agentmesh/agentmesh/clients/go/gen/agentmesh/agent/v1"
	registryv1 "github.com/agentmesh/agentmesh/clients/go/gen/agentmesh/registry/v1"
)

const envPrefix = "AGENTMESH_AGENT_"

type config struct {
	agentID           string
	agentType         string
	version           string
	capabilities      string
	tags              string
	location          string
	listen            string
	advertiseHost     string
	registryTarget    string
	token             string
	heartbeatInterval time.Duration
	gracePeriod       time.Duration
}

// env returns AGENTMESH_AGENT_<NAME> or def.
func env(name, def string) string {
	if v, ok := os.LookupEnv(envPrefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))); ok {
		return v
	}
	return def
}

func envDuration(name string, def time.Duration) time.Duration {
	raw := env(name, "")
	if raw == "" {
		return def
	}
	d, err := time.ParseDuration(raw)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s%s=%q is not a duration such as 5s or 500ms\n", envPrefix,
			strings.ToUpper(strings.ReplaceAll(name, "-", "_")), raw)
		os.Exit(2)
	}
	return d
}

func parseFlags() config {
	var c config
	flag.StringVar(&c.agentID, "agent-id", env("id", "agent-go-carbon-1"), "agent id, agent-[a-z0-9-]+ (env AGENTMESH_AGENT_ID)")
	flag.StringVar(&c.agentType, "agent-type", env("type", "go-carbon-factor"), "agent kind (env AGENTMESH_AGENT_TYPE)")
	flag.StringVar(&c.version, "version", env("version", "1.0.0"), "semantic version of the agent")
	flag.StringVar(&c.capabilities, "capabilities", env("capabilities", "carbon.factor"), "comma-separated capabilities")
	flag.StringVar(&c.tags, "tags", env("tags", "go"), "comma-separated tags")
	flag.StringVar(&c.location, "location", env("location", ""), "where the agent runs, e.g. us-east-1")
	flag.StringVar(&c.listen, "listen", env("listen", "127.0.0.1:0"), "host:port to serve AgentService on (port 0 = any free port)")
	flag.StringVar(&c.advertiseHost, "advertise-host", env("advertise-host", ""), "host in the registered endpoint (default: the listen host, 127.0.0.1 for a wildcard)")
	flag.StringVar(&c.registryTarget, "registry-target", env("registry-target", "127.0.0.1:50053"), "registry host:port (empty = do not register)")
	flag.StringVar(&c.token, "token", env("token", ""), "bearer token for registry calls (when the mesh runs with auth on)")
	flag.DurationVar(&c.heartbeatInterval, "heartbeat-interval", envDuration("heartbeat-interval", 5*time.Second), "interval the agent promises to heartbeat at")
	flag.DurationVar(&c.gracePeriod, "grace-period", envDuration("grace-period", 10*time.Second), "SIGTERM drain budget")
	flag.Parse()
	return c
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// bearer attaches `authorization: Bearer <token>` to every call.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return false }

func main() {
	cfg := parseFlags()
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil)).With("logger", "agentmesh.go.agent")
	if err := run(cfg, log); err != nil {
		log.Error("exiting", "error", err.Error())
		os.Exit(1)
	}
}

func run(cfg config, log *slog.Logger) error {
	lis, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return fmt.Errorf("listen on %s (--listen): %w", cfg.listen, err)
	}
	port := lis.Addr().(*net.TCPAddr).Port
	host := cfg.advertiseHost
	if host == "" {
		host, _, _ = net.SplitHostPort(cfg.listen)
		if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
			host = "127.0.0.1"
		}
	}
	endpoint := net.JoinHostPort(host, strconv.Itoa(port))

	srv := agent.NewServer(cfg.agentID, log)
	carbon.Register(srv, carbon.NewLedger())
	gs := grpc.NewServer()
	agentv1.RegisterAgentServiceServer(gs, srv)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	reflection.Register(gs) // so grpcurl works without the protos
	serveErr := make(chan error, 1)
	go func() { serveErr <- gs.Serve(lis) }()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	var reg *agent.Registrar
	if cfg.registryTarget != "" {
		opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
		if cfg.token != "" {
			opts = append(opts, grpc.WithPerRPCCredentials(bearer(cfg.token)))
		}
		conn, err := grpc.NewClient(cfg.registryTarget, opts...)
		if err != nil {
			return fmt.Errorf("registry target %q (--registry-target): %w", cfg.registryTarget, err)
		}
		defer conn.Close()
		reg = agent.NewRegistrar(conn, &registryv1.Agent{
			AgentId:           cfg.agentID,
			AgentType:         cfg.agentType,
			Version:           cfg.version,
			Capabilities:      splitList(cfg.capabilities),
			ServiceTypes:      []string{"computation"},
			Tags:              splitList(cfg.tags),
			Endpoint:          endpoint,
			Location:          cfg.location,
			HeartbeatInterval: durationpb.New(cfg.heartbeatInterval),
			Metadata: map[string]string{
				"language":      "go",
				"actions":       strings.Join(srv.Actions(), ","),
				"compensations": strings.Join(srv.Compensations(), ","),
				"objectives":    "",
			},
		}, srv.Load, log)
		if err := reg.Register(ctx); err != nil {
			gs.Stop()
			return err
		}
		go reg.HeartbeatLoop(ctx)
	}
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(agentv1.AgentService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	// Written only after registration, so whoever waits for it can route here.
	log.Info("serving", "port", port, "endpoint", endpoint, "agent_id", cfg.agentID,
		"capabilities", splitList(cfg.capabilities), "language", "go")

	select {
	case <-ctx.Done():
	case err := <-serveErr:
		return fmt.Errorf("gRPC server stopped: %w", err)
	}
	log.Info("draining", "grace_period_s", cfg.gracePeriod.Seconds())
	// Deregister first so no new work is routed here, then refuse health checks
	// and let in-flight calls finish within the grace period.
	if reg != nil {
		reg.Deregister(context.Background(), "shutdown")
	}
	hs.Shutdown()
	done := make(chan struct{})
	go func() { gs.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(cfg.gracePeriod):
		log.Warn("grace period over; cancelling in-flight calls")
		gs.Stop()
	}
	if err := <-serveErr; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	log.Info("stopped")
	return nil
}
