'use strict'
// Baileys payloads -> plain values msgpack and JSON carry the same way every time.
//
// Baileys hands out protobuf message objects: numbers as protobufjs `Long`s, bytes as
// `Buffer`/`Uint8Array`, unset fields as `undefined`, plus `Date`s and Boom errors in
// `connection.update`. The rsocket.v1 client (Python) sees:
//   string            -> itself; a lone surrogate becomes U+FFFD (the client rejects invalid UTF-8)
//   Long              -> number (a BigInt, sent as a 64-bit integer, past 2**53)
//   Buffer/Uint8Array -> bytes (msgpack bin; base64 text in JSON, as msgspec writes bytes)
//   undefined         -> absent (object keys); null inside arrays
//   Date              -> ISO 8601 string
//   Error (Boom)      -> {name, message, statusCode?, data?}
//   Map / Set         -> object / array;  NaN, Infinity -> null
//   functions, symbols, cycles -> absent
// and what protobuf leaves implicit is made explicit where the client relies on it: a
// message key (remoteJid + id) always carries `fromMe` (a decoded key holds it only on its
// prototype when false). Other fields pass as they are, LID ones (remoteJidAlt,
// participantAlt) included.

const MAX_DEPTH = 64

function isLong (value) {
  // protobufjs Long (and the `long` package): {low, high, unsigned} with toNumber()
  return typeof value.low === 'number' && typeof value.high === 'number' &&
    typeof value.unsigned === 'boolean' && typeof value.toNumber === 'function'
}

function longToNumber (value) {
  const n = value.toNumber()
  if (Number.isSafeInteger(n)) return n
  return BigInt(value.toString())
}

/** `value` converted; nesting past MAX_DEPTH is cut (see convertCounting). */
function convert (value) {
  return walk(value, { seen: new Set(), cut: 0 }, 0)
}

/** {value, cut}: `value` converted, and how many values nested past MAX_DEPTH were cut. */
function convertCounting (value) {
  const context = { seen: new Set(), cut: 0 }
  return { value: walk(value, context, 0), cut: context.cut }
}

function walk (value, context, depth) {
  switch (typeof value) {
    case 'string':
      return value.isWellFormed() ? value : value.toWellFormed()
    case 'boolean':
      return value
    case 'number':
      return Number.isFinite(value) ? value : null
    case 'bigint':
      return Number.isSafeInteger(Number(value)) ? Number(value) : value
    case 'undefined':
    case 'function':
    case 'symbol':
      return undefined
  }
  if (value === null) return null
  if (value instanceof Uint8Array) return Uint8Array.from(value) // a Buffer's own copy
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer.slice(value.byteOffset, value.byteOffset + value.byteLength))
  if (value instanceof ArrayBuffer) return new Uint8Array(value)
  if (value instanceof Date) return Number.isNaN(value.getTime()) ? null : value.toISOString()
  if (isLong(value)) return longToNumber(value)
  const seen = context.seen
  if (seen.has(value)) return undefined // a cycle: cut it
  if (depth > MAX_DEPTH) {
    context.cut += 1 // counted: the bridge logs it with the tenant and event
    return undefined
  }
  seen.add(value)
  try {
    if (Array.isArray(value) || value instanceof Set) {
      const out = []
      for (const item of value) {
        const converted = walk(item, context, depth + 1)
        out.push(converted === undefined ? null : converted)
      }
      return out
    }
    if (value instanceof Error) {
      const out = { name: value.name, message: value.message }
      const boom = /** @type {any} */ (value) // Boom's output and data
      const status = boom.output?.statusCode
      if (typeof status === 'number') out.statusCode = status
      if (boom.data !== undefined) {
        const data = walk(boom.data, context, depth + 1)
        if (data !== undefined) out.data = data
      }
      return out
    }
    const entries = value instanceof Map ? value.entries() : Object.entries(value)
    const out = {}
    for (const [key, item] of entries) {
      const converted = walk(item, context, depth + 1)
      if (converted === undefined) continue
      const name = convert(String(key))
      if (name === '__proto__') Object.defineProperty(out, name, { value: converted, enumerable: true, writable: true, configurable: true })
      else out[name] = converted
    }
    if (typeof out.remoteJid === 'string' && typeof out.id === 'string' && typeof out.fromMe !== 'boolean') {
      out.fromMe = Boolean(value.fromMe) // a prototype default (false, or null on 7.x)
    }
    return out
  } finally {
    seen.delete(value)
  }
}

module.exports = { MAX_DEPTH, convert, convertCounting }
