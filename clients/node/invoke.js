#!/usr/bin/env node
// Discover agents with a capability in the registry, then call one through
// the router's Invoke (route, call AgentService.Execute, retry, fail over).
// Prints one JSON line on stdout:
//   {"capability", "discovered": [{agent_id, endpoint, status, health_score, language}],
//    "agent_id", "output", "deduplicated", "attempts": [{agent_id, code, message}]}
//
//   node invoke.js --capability carbon.factor --action calculate_emissions \
//     --input '{"naics": "334111", "spend_usd": 1000}'
//
// Flags (env in brackets): --registry [AGENTMESH_REGISTRY_TARGET, 127.0.0.1:50053],
// --router [AGENTMESH_ROUTER_TARGET, 127.0.0.1:50052], --token [AGENTMESH_AUTH_TOKEN],
// --capability, --action, --input (JSON object), --idempotency-key, --timeout-ms (10000),
// --protos (the repo's protos/ directory).
// Exit codes: 0 ok, 2 bad flags, 3 no agent has the capability, 1 an RPC failed
// (its gRPC code and message go to stderr).

import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';

import { fromStruct, toStruct } from './struct.js';

const here = path.dirname(fileURLToPath(import.meta.url));

const { values: opts } = parseArgs({
  options: {
    registry: { type: 'string', default: process.env.AGENTMESH_REGISTRY_TARGET ?? '127.0.0.1:50053' },
    router: { type: 'string', default: process.env.AGENTMESH_ROUTER_TARGET ?? '127.0.0.1:50052' },
    token: { type: 'string', default: process.env.AGENTMESH_AUTH_TOKEN ?? '' },
    capability: { type: 'string', default: 'carbon.factor' },
    action: { type: 'string', default: 'calculate_emissions' },
    input: { type: 'string', default: '{"naics": "334111", "spend_usd": 1000}' },
    'idempotency-key': { type: 'string', default: '' },
    'timeout-ms': { type: 'string', default: '10000' },
    protos: { type: 'string', default: path.resolve(here, '../../protos') },
  },
  strict: true,
});

function fail(code, msg) {
  process.stderr.write(`invoke.js: ${msg}\n`);
  process.exit(code);
}

let input;
try {
  input = JSON.parse(opts.input);
} catch (e) {
  fail(2, `--input is not JSON: ${e.message}`);
}
if (input === null || typeof input !== 'object' || Array.isArray(input)) {
  fail(2, '--input must be a JSON object (it becomes the google.protobuf.Struct payload)');
}
const timeoutMs = Number(opts['timeout-ms']);
if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) fail(2, '--timeout-ms must be a positive number');

// includeDirs resolves agentmesh/... imports; google/protobuf/*.proto come
// bundled with protobufjs. keepCase keeps the protos' snake_case field names.
const definition = protoLoader.loadSync(
  ['agentmesh/registry/v1/registry.proto', 'agentmesh/router/v1/router.proto'],
  { includeDirs: [opts.protos], keepCase: true, longs: String, enums: String, defaults: true, oneofs: true },
);
const pkg = grpc.loadPackageDefinition(definition);
const creds = grpc.credentials.createInsecure();
const registry = new pkg.agentmesh.registry.v1.RegistryService(opts.registry, creds);
const router = new pkg.agentmesh.router.v1.RouterService(opts.router, creds);

const metadata = new grpc.Metadata();
if (opts.token) metadata.set('authorization', `Bearer ${opts.token}`);

/** Calls a unary method as a promise with a deadline of --timeout-ms. */
function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline: Date.now() + timeoutMs }, (err, resp) =>
      err ? reject(Object.assign(err, { method })) : resolve(resp));
  });
}

async function main() {
  const selector = { capabilities: [opts.capability] };
  const found = await unary(registry, 'DiscoverAgents', { selector });
  const discovered = found.agents.map((a) => ({
    agent_id: a.agent_id,
    endpoint: a.endpoint,
    status: a.status,
    health_score: a.health_score,
    language: a.metadata?.language ?? '',
  }));
  if (discovered.length === 0) {
    fail(3, `no ACTIVE or DEGRADED agent has capability ${JSON.stringify(opts.capability)}; ` +
      'start one and check it registered with the registry');
  }
  const resp = await unary(router, 'Invoke', {
    message: {
      message_type: opts.capability,
      payload: { struct_value: toStruct(input) },
      selector,
      sender_id: 'node-client',
    },
    action: opts.action,
    idempotency_key: opts['idempotency-key'],
  });
  const result = {
    capability: opts.capability,
    discovered,
    agent_id: resp.agent_id,
    output: fromStruct(resp.output),
    deduplicated: resp.deduplicated,
    attempts: resp.attempts.map((a) => ({ agent_id: a.agent_id, code: a.code, message: a.message })),
  };
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

main()
  .catch((err) => {
    const code = err.code !== undefined ? grpc.status[err.code] : 'ERROR';
    process.stderr.write(`invoke.js: ${err.method ?? 'call'} failed: ${code}: ${err.details ?? err.message}\n`);
    process.exitCode = 1;
  })
  .finally(() => {
    registry.close();
    router.close();
  });
