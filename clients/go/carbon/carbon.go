// Package carbon is the Go example agent's business logic: spend-based
// emissions from US EPA supply-chain emission factors, recorded in a ledger
// that its compensation can void.
//
// Action "calculate_emissions", input {"naics": "334111", "spend_usd": 1000}:
// looks the NAICS code up in Factors, records spend_usd × factor in the
// ledger under the call's idempotency key, and returns
// {naics, title, factor_kg_co2e_per_usd, spend_usd, kg_co2e, agent_id, language: "go", source}.
// An unknown code or a missing/negative spend is INVALID_ARGUMENT.
//
// Compensation "void_emissions" removes the ledger entry of the Execute it
// undoes and returns {voided: true, kg_co2e, ...}; when that Execute never
// ran here it changes nothing and returns {voided: false, executed: false, reason}.
package carbon

import (
	"context"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/agentmesh/agentmesh/clients/go/agent"
)

// Source of the factors below.
const Source = "US EPA Supply Chain GHG Emission Factors v1.2, NAICS 2017, kg CO2e per 2021 USD, with margins"

// Factor is one row of the EPA table.
type Factor struct {
	Title    string
	KgPerUSD float64
}

// Factors is a small excerpt of the EPA table (shared/data/useeio), keyed by NAICS 2017 code.
var Factors = map[string]Factor{
	"111140": {"Wheat Farming", 3.007},
	"324110": {"Petroleum Refineries", 0.859},
	"325211": {"Plastics Material and Resin Manufacturing", 1.076},
	"334111": {"Electronic Computer Manufacturing", 0.112},
	"481111": {"Scheduled Passenger Air Transportation", 0.976},
	"541511": {"Custom Computer Programming Services", 0.097},
	"562111": {"Solid Waste Collection", 0.197},
}

// Ledger holds the recorded emissions, kg CO2e by idempotency key.
type Ledger struct {
	mu      sync.Mutex
	entries map[string]float64
	unkeyed int
}

// NewLedger returns an empty ledger.
func NewLedger() *Ledger { return &Ledger{entries: map[string]float64{}} }

// Total is the sum of all entries, kg CO2e.
func (l *Ledger) Total() float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	var t float64
	for _, v := range l.entries {
		t += v
	}
	return t
}

// Register declares the action and its compensation on s, backed by ledger.
func Register(s *agent.Server, ledger *Ledger) {
	s.Action("calculate_emissions", func(_ context.Context, c agent.Call) (map[string]any, error) {
		code, err := naics(c.Input["naics"])
		if err != nil {
			return nil, err
		}
		f := Factors[code]
		spend, ok := c.Input["spend_usd"].(float64)
		if !ok || spend < 0 || math.IsNaN(spend) || math.IsInf(spend, 0) {
			return nil, agent.BadRequest("input.spend_usd", fmt.Sprintf(
				"spend_usd must be a finite number >= 0, got %v", c.Input["spend_usd"]))
		}
		kg := spend * f.KgPerUSD
		ledger.mu.Lock()
		key := c.IdempotencyKey
		if key == "" {
			ledger.unkeyed++
			key = "unkeyed-" + strconv.Itoa(ledger.unkeyed)
		}
		ledger.entries[key] = kg
		ledger.mu.Unlock()
		return map[string]any{
			"naics": code, "title": f.Title, "factor_kg_co2e_per_usd": f.KgPerUSD,
			"spend_usd": spend, "kg_co2e": kg,
			"agent_id": c.AgentID, "language": "go", "source": Source,
		}, nil
	})
	s.Compensation("void_emissions", func(_ context.Context, c agent.Call) (map[string]any, error) {
		target := strings.TrimSuffix(c.IdempotencyKey, "/compensate")
		ledger.mu.Lock()
		kg, recorded := ledger.entries[target]
		delete(ledger.entries, target)
		ledger.mu.Unlock()
		out := map[string]any{"agent_id": c.AgentID, "language": "go", "voided_key": target}
		if !recorded {
			// Compensating an action that never ran is a successful no-op.
			out["voided"], out["executed"] = false, c.Executed
			out["reason"] = "no emissions recorded for this key: the action never ran here"
			return out, nil
		}
		out["voided"], out["executed"], out["kg_co2e"] = true, true, kg
		return out, nil
	})
}

// naics accepts the code as a string or a number (Struct numbers are floats).
func naics(v any) (string, error) {
	var code string
	switch x := v.(type) {
	case string:
		code = strings.TrimSpace(x)
	case float64:
		code = strconv.FormatFloat(x, 'f', -1, 64)
	}
	if _, ok := Factors[code]; !ok {
		return "", agent.BadRequest("input.naics", fmt.Sprintf(
			"no emission factor for NAICS code %v; this agent knows %v", v, slices.Sorted(maps.Keys(Factors))))
	}
	return code, nil
}
