'use strict'
// Events too large for one frame, split into parts of the same kind when they are
// appended to a tenant's log, so every part has its own seq and every connection
// replays the same parts (docs/PROTOCOL.md, "Frame size"; rsocket.split in Python
// does the same):
//   messaging-history.set  its chats, contacts and messages into several sets, each with
//                          the set's other fields (isLatest, syncType, progress, ...)
//   messages.upsert        its messages into several upserts of the same type
//   a list payload         (chats.upsert, messages.update, ...) into shorter lists
// The client's buffer merges the parts back as it would have merged the whole event.

const { encoder } = require('./protocol')

// Payload bytes (msgpack) above which an event is split: a quarter of the smallest frame a
// client is assumed to accept (1 MiB), so parts fit on either subprotocol (JSON carries
// bytes as base64, a third larger).
const DEFAULT_MAX_EVENT = 256 * 1024

const SPLIT_FIELDS = {
  'messaging-history.set': ['chats', 'contacts', 'messages'],
  'messages.upsert': ['messages']
}

const sizeOf = (value) => encoder.encodeSharedRef(value).byteLength // measured, not kept: no copy

/** [name, data] as parts whose payloads each encode to at most `limit` bytes, where the shape allows. */
function splitEvent (name, data, limit = DEFAULT_MAX_EVENT) {
  const splittable = SPLIT_FIELDS[name]
  const whole = [[name, data]]
  if (!splittable && !Array.isArray(data)) return whole // not even measured
  if (sizeOf(data) <= limit) return whole
  let fields, items, overhead
  if (Array.isArray(data)) {
    fields = []
    items = data.map((item) => [null, item])
    overhead = 5 // the array header, at its largest
  } else if (splittable && data && typeof data === 'object') {
    fields = splittable.filter((field) => Array.isArray(data[field]))
    items = fields.flatMap((field) => data[field].map((item) => [field, item]))
    // every part carries the other fields, the list fields' names and their headers
    const skeleton = Object.fromEntries(Object.entries(data).map(([k, v]) => [k, fields.includes(k) ? [] : v]))
    overhead = sizeOf(skeleton) + 4 * fields.length
  } else {
    return whole
  }
  const budget = limit - overhead
  const parts = []
  let current = []
  let used = 0
  for (const item of items) {
    const n = sizeOf(item[1])
    if (current.length && used + n > budget) {
      parts.push(current)
      current = []
      used = 0
    }
    current.push(item)
    used += n
  }
  if (current.length) parts.push(current)
  if (parts.length < 2) return whole
  if (!fields.length) return parts.map((part) => [name, part.map(([, item]) => item)])
  return parts.map((part) => [name, Object.fromEntries(Object.entries(data).map(([key, value]) =>
    [key, fields.includes(key) ? part.filter(([f]) => f === key).map(([, item]) => item) : value]))])
}

module.exports = { DEFAULT_MAX_EVENT, splitEvent }
