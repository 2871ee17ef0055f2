'use strict'
// rsocket.v1, server side, sans I/O: the frames of docs/PROTOCOL.md, what the Python
// reference server (rsocket.protocol.ServerSession) sends and accepts, with the same
// close codes for the same violations.
//
// One WebSocket message is one frame: a map whose `op` names it. Subprotocols
// `rsocket.v1.msgpack` (binary, the default) and `rsocket.v1.json` (text).

const msgpack = require('@msgpack/msgpack')

const MSGPACK = 'rsocket.v1.msgpack'
const JSON_SUBPROTOCOL = 'rsocket.v1.json'
const SUBPROTOCOLS = [MSGPACK, JSON_SUBPROTOCOL]
const DEFAULT_MAX_SIZE = 1 << 20 // largest message accepted from a client
const LEGACY_MAX_FRAME = 1 << 20 // what a client whose hello has no max_frame accepts
const MAX_SEQ = (1n << 63n) - 1n

// WebSocket close codes
const CLOSE = {
  normal: 1000,
  goingAway: 1001,
  protocolViolation: 1002,
  unsupportedData: 1003,
  invalidPayload: 1007,
  policy: 1008,
  tooBig: 1009,
  internalError: 1011,
  tryAgain: 1013
}

const CLIENT_OPS = new Set(['hello', 'ack', 'ping', 'query'])
const SERVER_OPS = new Set(['ready', 'event', 'batch', 'oversize', 'offline', 'pong', 'result', 'stream_error', 'failure'])

class ProtocolError extends Error {
  constructor (message, closeCode = CLOSE.protocolViolation) {
    super(message)
    this.name = 'ProtocolError'
    this.closeCode = closeCode
  }
}

// With useBigInt64 (needed for Longs past 2**53), @msgpack/msgpack writes any number outside
// 32 bits as a float64; the client must get an int (Baileys' millisecond timestamps, file
// lengths, seqs past 2**32), as msgspec writes it.
// Overriding encodeNumber is the one way to do that: its typings call it private, so
// package-lock.json pins its version and test/protocol.test.js checks the bytes.
// @ts-expect-error -- encodeNumber is private in @msgpack/msgpack's typings
class IntEncoder extends msgpack.Encoder {
  encodeNumber (value) {
    if (Number.isSafeInteger(value) && (value >= 0x100000000 || value < -0x80000000)) {
      // @ts-expect-error -- private in the typings, see above
      return this.encodeBigInt64(BigInt(value))
    }
    // @ts-expect-error -- private in the typings, see above
    return super.encodeNumber(value)
  }
}

const encoder = new IntEncoder({ useBigInt64: true, ignoreUndefined: true })
const decoder = new msgpack.Decoder({ useBigInt64: true })

// JSON.stringify has no BigInt. A frame without one (nearly all) goes through it, bytes as
// base64 as msgspec writes them; one with a BigInt is written again by jsonText, which puts
// its exact digits in place. No marker ever goes in-band: whatever text users send
// round-trips as it is.
function jsonReplacer (key, value) {
  if (typeof value === 'bigint') throw BIGINT_SEEN
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('base64')
  return value
}
const BIGINT_SEEN = new Error('a BigInt: write the frame with jsonText')

/** `value` as JSON text, BigInts as their digits (undefined for what JSON leaves out). */
function jsonText (value) {
  switch (typeof value) {
    case 'string': return JSON.stringify(value)
    case 'number': return Number.isFinite(value) ? String(value) : 'null'
    case 'bigint': return value.toString()
    case 'boolean': return value ? 'true' : 'false'
    case 'undefined': case 'function': case 'symbol': return undefined
  }
  if (value === null) return 'null'
  if (value instanceof Uint8Array) return jsonText(jsonReplacer('', value))
  if (Array.isArray(value)) return '[' + value.map((item) => jsonText(item) ?? 'null').join(',') + ']'
  if (typeof value.toJSON === 'function') return jsonText(value.toJSON())
  const parts = []
  for (const key of Object.keys(value)) {
    const text = jsonText(value[key])
    if (text !== undefined) parts.push(JSON.stringify(key) + ':' + text)
  }
  return '{' + parts.join(',') + '}'
}

class Codec {
  constructor (subprotocol) {
    if (!SUBPROTOCOLS.includes(subprotocol)) {
      throw new Error(`unknown subprotocol ${subprotocol}; expected one of ${SUBPROTOCOLS}`)
    }
    this.subprotocol = subprotocol
    this.binary = subprotocol === MSGPACK
  }

  /** A frame ({op, ...fields}) -> the message to send (Buffer for msgpack, string for JSON). */
  encode (frame) {
    if (this.binary) {
      const bytes = encoder.encode(frame)
      return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
    }
    try {
      return JSON.stringify(frame, jsonReplacer)
    } catch (err) {
      if (err !== BIGINT_SEEN) throw err
      return jsonText(frame)
    }
  }

  /** A client's message -> its frame; a ProtocolError with the close code otherwise. */
  decodeClient (data, isBinary, maxSize = DEFAULT_MAX_SIZE) {
    if (!isBinary && this.binary) {
      throw new ProtocolError(`text message on ${this.subprotocol}, which uses binary messages`,
        CLOSE.unsupportedData)
    }
    if (data.length > maxSize) {
      throw new ProtocolError(`message of ${data.length} bytes exceeds the limit of ${maxSize} bytes`,
        CLOSE.tooBig)
    }
    let frame
    try {
      if (this.binary) {
        frame = decoder.decode(data)
      } else {
        const text = new TextDecoder('utf-8', { fatal: true }).decode(data)
        frame = JSON.parse(text)
      }
    } catch (err) {
      if (err instanceof TypeError && !this.binary) {
        throw new ProtocolError(`invalid UTF-8 in JSON frame: ${err.message}`, CLOSE.invalidPayload)
      }
      throw new ProtocolError(`undecodable ${this.subprotocol} frame: ${err.message}`, CLOSE.invalidPayload)
    }
    return checkClientFrame(frame)
  }
}

const codecs = Object.fromEntries(SUBPROTOCOLS.map((name) => [name, new Codec(name)]))

/** The shared codec of a subprotocol ('' or undefined: msgpack). */
function codecFor (subprotocol) {
  const codec = codecs[subprotocol || MSGPACK]
  if (!codec) throw new Error(`unknown subprotocol ${subprotocol}`)
  return codec
}

function typeName (value) {
  if (value === null) return 'null'
  if (Array.isArray(value)) return 'array'
  if (value instanceof Uint8Array) return 'bytes'
  if (typeof value === 'number') return Number.isInteger(value) ? 'int' : 'float'
  if (typeof value === 'bigint') return 'int'
  if (typeof value === 'string') return 'str'
  if (typeof value === 'boolean') return 'bool'
  return 'object'
}

/** An integer field in [min, MAX_SEQ] (bools and floats are not integers), as a BigInt or number. */
function intField (frame, op, field, { min = null, required = true, fallback = 0 } = {}) {
  if (!(field in frame)) {
    if (required) throw new ProtocolError(`invalid \`${op}\` frame: Object missing required field \`${field}\``, CLOSE.invalidPayload)
    return fallback
  }
  const value = frame[field]
  const isInt = (typeof value === 'number' && Number.isInteger(value)) || typeof value === 'bigint'
  if (!isInt) {
    throw new ProtocolError(`invalid \`${op}\` frame: Expected \`int\`, got \`${typeName(value)}\` - at \`$.${field}\``, CLOSE.invalidPayload)
  }
  const big = BigInt(value)
  if (min !== null && (big < BigInt(min) || big > MAX_SEQ)) {
    throw new ProtocolError(`invalid \`${op}\` frame: Expected \`int\` >= ${min} and <= ${MAX_SEQ} - at \`$.${field}\``, CLOSE.invalidPayload)
  }
  return Number.isSafeInteger(Number(big)) ? Number(big) : big
}

function strField (frame, op, field, { required = true, fallback = '' } = {}) {
  if (!(field in frame)) {
    if (required) throw new ProtocolError(`invalid \`${op}\` frame: Object missing required field \`${field}\``, CLOSE.invalidPayload)
    return fallback
  }
  const value = frame[field]
  if (typeof value !== 'string') {
    throw new ProtocolError(`invalid \`${op}\` frame: Expected \`str\`, got \`${typeName(value)}\` - at \`$.${field}\``, CLOSE.invalidPayload)
  }
  return value
}

/** Validate a decoded client frame: the checks and close codes of rsocket.protocol.Codec. */
function checkClientFrame (frame) {
  if (frame === null || typeof frame !== 'object' || Array.isArray(frame) || frame instanceof Uint8Array) {
    throw new ProtocolError(`frame is not a map: Expected \`object\`, got \`${typeName(frame)}\``, CLOSE.invalidPayload)
  }
  if (!('op' in frame)) throw new ProtocolError('frame has no `op` field', CLOSE.invalidPayload)
  const op = frame.op
  if (typeof op !== 'string') {
    throw new ProtocolError(`frame field \`op\` must be a str, got ${typeName(op)}`, CLOSE.invalidPayload)
  }
  if (!CLIENT_OPS.has(op)) {
    const what = SERVER_OPS.has(op) ? 'not a client op' : 'unknown'
    throw new ProtocolError(`op '${op}' is ${what}`, CLOSE.unsupportedData)
  }
  switch (op) {
    case 'hello':
      return {
        op,
        tenant: strField(frame, op, 'tenant'),
        token: strField(frame, op, 'token'),
        resume: intField(frame, op, 'resume', { min: 0, required: false }),
        epoch: strField(frame, op, 'epoch', { required: false }),
        max_frame: intField(frame, op, 'max_frame', { min: 0, required: false })
      }
    case 'ack':
      return { op, seq: intField(frame, op, 'seq', { min: 0 }) }
    case 'ping':
      return { op, id: intField(frame, op, 'id') }
    default: // query
      return {
        op,
        id: intField(frame, op, 'id'),
        method: strField(frame, op, 'method'),
        params: 'params' in frame ? frame.params : null
      }
  }
}

/**
 * Server side of one connection: connecting -> awaiting_ready -> open -> closed
 * (rsocket.protocol.ServerSession). `receive` returns the frame a client message
 * carries and enforces the order rules; the other methods return messages to send.
 */
class ServerSession {
  constructor ({ subprotocol = MSGPACK, maxSize = DEFAULT_MAX_SIZE } = {}) {
    this.codec = codecFor(subprotocol)
    this.maxSize = maxSize
    this.state = 'connecting'
    this.hello = null
    this.lastSent = 0 // acks above it are violations
    this.acked = 0
  }

  receive (data, isBinary) {
    if (this.state === 'closed') return null
    const frame = this.codec.decodeClient(data, isBinary, this.maxSize)
    if (frame.op === 'hello') {
      if (this.state !== 'connecting') throw new ProtocolError('second `hello` frame')
      this.hello = frame
      this.state = 'awaiting_ready'
    } else if (this.state === 'connecting') {
      throw new ProtocolError(`first frame must be \`hello\`, got \`${frame.op}\``)
    } else if (frame.op === 'ack') {
      if (frame.seq > this.lastSent) {
        throw new ProtocolError(`\`ack\` field \`seq\` is ${frame.seq}, above the last sent seq ${this.lastSent}`)
      }
      if (frame.seq > this.acked) this.acked = Number(frame.seq) // <= lastSent, a safe integer
    }
    return frame
  }

  ready (session, resumed, pending, baseSeq = 0) {
    if (this.state !== 'awaiting_ready') throw new Error(`cannot send \`ready\` in state ${this.state}`)
    this.state = 'open'
    this.lastSent = baseSeq
    return this.codec.encode({ op: 'ready', session, resumed, pending })
  }

  /** The largest message the client accepts (its hello's max_frame). */
  get maxFrame () {
    const max = this.hello?.max_frame
    return max ? Number(max) : LEGACY_MAX_FRAME
  }

  /**
   * The `event`/`batch` messages carrying [name, data] pairs from seq `first`, none larger
   * than the client's maxFrame: a run that does not fit is cut in halves, and an event that
   * cannot fit alone becomes `oversize{seq, name, size}` in its place.
   */
  events (first, events) {
    if (first !== this.lastSent + 1) throw new Error(`seq ${first} does not follow ${this.lastSent}`)
    if (!events.length) throw new Error('events() needs at least one event')
    const out = []
    this._fit(first, events, out)
    this.lastSent = first + events.length - 1
    return out
  }

  _fit (first, events, out) {
    const message = events.length === 1
      ? this.codec.encode({ op: 'event', seq: first, name: events[0][0], data: events[0][1] })
      : this.codec.encode({ op: 'batch', first, events: events.map(([name, data]) => ({ name, data })) })
    const size = typeof message === 'string' ? Buffer.byteLength(message) : message.length
    if (size <= this.maxFrame) {
      out.push(message)
    } else if (events.length === 1) {
      out.push(this.codec.encode({ op: 'oversize', seq: first, name: events[0][0], size }))
    } else {
      const half = events.length >> 1
      this._fit(first, events.slice(0, half), out)
      this._fit(first + half, events.slice(half), out)
    }
  }

  offline (count) { return this.codec.encode({ op: 'offline', count }) }
  pong (id) { return this.codec.encode({ op: 'pong', id }) }

  result (id, ok, data, error) {
    const frame = { op: 'result', id, ok }
    if (data !== undefined && data !== null) frame.data = data // omitted defaults, as msgspec does
    if (error !== undefined && error !== null) frame.error = error
    const message = this.codec.encode(frame)
    const size = typeof message === 'string' ? Buffer.byteLength(message) : message.length
    if (size <= this.maxFrame) return message
    // too big for the client (a large download): an error result, never a frame it refuses
    return this.codec.encode({ op: 'result', id, ok: false, error: `result of ${size} bytes exceeds the client's max_frame ${this.maxFrame}` })
  }

  streamError (code, reason = '') {
    this.state = 'closed'
    return this.codec.encode({ op: 'stream_error', code, reason })
  }

  failure (code, reason = '') {
    this.state = 'closed'
    return this.codec.encode({ op: 'failure', code, reason })
  }

  close () { this.state = 'closed' }
}

/** `text` cut to fit a close frame (123 bytes of UTF-8), as rsocket.protocol.close_reason does. */
function closeReason (text) {
  const data = Buffer.from(text)
  if (data.length <= 123) return text
  return new TextDecoder().decode(data.subarray(0, 120)).replace(/\uFFFD$/, '') + '...'
}

module.exports = {
  CLOSE,
  Codec,
  DEFAULT_MAX_SIZE,
  JSON_SUBPROTOCOL,
  LEGACY_MAX_FRAME,
  MSGPACK,
  ProtocolError,
  SUBPROTOCOLS,
  ServerSession,
  closeReason,
  codecFor,
  encoder
}
