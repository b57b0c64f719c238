// node --test: the Struct conversion round-trips JSON through the real
// protobufjs encoder (so a wrong field name would drop data, not pass).
import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

import protobuf from 'protobufjs';

import { fromStruct, toStruct } from './struct.js';

const here = path.dirname(fileURLToPath(import.meta.url));

test('JSON survives toStruct -> wire -> fromStruct', async () => {
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) =>
    target.startsWith('google/') ? target : path.resolve(here, '../../protos', target);
  await root.load('agentmesh/common/v1/common.proto', { keepCase: true });
  const Payload = root.lookupType('agentmesh.common.v1.Payload');
  const doc = { naics: '334111', spend_usd: 1000.5, ok: true, none: null, rows: [1, 'two', { three: 3 }] };
  const wire = Payload.encode(Payload.fromObject({ struct_value: toStruct(doc) })).finish();
  const back = Payload.toObject(Payload.decode(wire), { oneofs: true, enums: String });
  assert.deepEqual(fromStruct(back.struct_value), doc);
});
