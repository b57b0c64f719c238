// google.protobuf.Struct <-> plain JSON for @grpc/proto-loader messages.
//
// proto-loader hands Struct over as its message shape and protobufjs converts
// only Any specially, so JSON payloads are converted here. The mapping is the
// proto3 JSON one: numbers are doubles, null is NULL_VALUE.
//
// Mind the case: the well-known types come from protobufjs's bundled JSON
// descriptors, whose field names are camelCase (numberValue, structValue)
// even with `keepCase: true`, which applies only to the .proto files parsed
// from disk (so agentmesh messages keep snake_case: struct_value, agent_id).

/**
 * Converts a JSON value to a google.protobuf.Value message.
 * @param {unknown} v JSON value (undefined is treated as null).
 * @returns {object} Value message with exactly one kind set.
 * @throws {TypeError} for values JSON cannot hold (functions, bigint, symbols).
 */
export function toValue(v) {
  if (v === null || v === undefined) return { nullValue: 'NULL_VALUE' };
  if (typeof v === 'number') return { numberValue: v };
  if (typeof v === 'string') return { stringValue: v };
  if (typeof v === 'boolean') return { boolValue: v };
  if (Array.isArray(v)) return { listValue: { values: v.map(toValue) } };
  if (typeof v === 'object') return { structValue: toStruct(v) };
  throw new TypeError(`cannot put a ${typeof v} into a google.protobuf.Value`);
}

/**
 * Converts a JSON object to a google.protobuf.Struct message.
 * @param {Record<string, unknown>} obj
 * @returns {{fields: Record<string, object>}}
 */
export function toStruct(obj) {
  const fields = {};
  for (const [k, v] of Object.entries(obj ?? {})) fields[k] = toValue(v);
  return { fields };
}

/**
 * Converts a google.protobuf.Value message back to JSON.
 * @param {object | null | undefined} v Value as decoded with `oneofs: true`.
 * @returns {unknown}
 */
export function fromValue(v) {
  if (!v) return null;
  switch (v.kind) {
    case 'numberValue': return v.numberValue;
    case 'stringValue': return v.stringValue;
    case 'boolValue': return v.boolValue;
    case 'structValue': return fromStruct(v.structValue);
    case 'listValue': return (v.listValue?.values ?? []).map(fromValue);
    default: return null;
  }
}

/**
 * Converts a google.protobuf.Struct message back to a JSON object.
 * @param {{fields?: Record<string, object>} | null | undefined} s
 * @returns {Record<string, unknown>}
 */
export function fromStruct(s) {
  const out = {};
  for (const [k, v] of Object.entries(s?.fields ?? {})) out[k] = fromValue(v);
  return out;
}
