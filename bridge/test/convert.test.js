'use strict'
const test = require('node:test')
const assert = require('node:assert/strict')
const Long = require('long')
const { convert } = require('../lib/convert')
const { codecFor } = require('../lib/protocol')
const msgpack = require('@msgpack/msgpack')

test('protobuf Longs become numbers, and 64-bit integers past 2**53 stay exact', () => {
  assert.equal(convert(Long.fromNumber(1700000000, true)), 1700000000)
  assert.equal(convert(Long.fromString('-42')), -42)
  assert.equal(convert(Long.fromString('9007199254740993')), 9007199254740993n)
})

test('Buffers become their own bytes; undefined becomes absent (null in arrays)', () => {
  const shared = Buffer.from([1, 2, 3])
  const out = convert({ a: shared, b: undefined, c: [undefined, 1], d: () => 1 })
  assert.deepEqual(Object.keys(out), ['a', 'c'])
  assert.ok(out.a instanceof Uint8Array && !Buffer.isBuffer(out.a))
  shared[0] = 9 // Baileys may reuse its buffers: the log keeps what was emitted
  assert.deepEqual([...out.a], [1, 2, 3])
  assert.deepEqual(out.c, [null, 1])
})

test('Dates, Boom errors, Maps, Sets, NaN and cycles', () => {
  const error = new Error('Connection Failure')
  error.output = { statusCode: 401 }
  error.data = { reason: '401', location: 'frc' }
  const cyclic = { name: 'x' }
  cyclic.self = cyclic
  const out = convert({
    when: new Date(Date.UTC(2026, 0, 2)),
    error,
    map: new Map([['k', 1]]),
    set: new Set(['a']),
    nan: NaN,
    cyclic
  })
  assert.equal(out.when, '2026-01-02T00:00:00.000Z')
  assert.deepEqual(out.error, { name: 'Error', message: 'Connection Failure', statusCode: 401, data: { reason: '401', location: 'frc' } })
  assert.deepEqual(out.map, { k: 1 })
  assert.deepEqual(out.set, ['a'])
  assert.equal(out.nan, null)
  assert.deepEqual(out.cyclic, { name: 'x' })
})

test('the same input converts the same way every time, through msgpack and JSON', () => {
  const message = {
    key: { remoteJid: '1@s.whatsapp.net', fromMe: false, id: 'A' },
    messageTimestamp: Long.fromNumber(1700000000, true),
    message: { imageMessage: { fileSha256: Buffer.from('abc'), caption: undefined } }
  }
  const once = convert(message)
  assert.deepEqual(convert(message), once)
  const frame = msgpack.decode(codecFor('rsocket.v1.msgpack').encode({ op: 'event', seq: 1, name: 'messages.upsert', data: once }))
  assert.equal(frame.data.messageTimestamp, 1700000000)
  assert.deepEqual([...frame.data.message.imageMessage.fileSha256], [...Buffer.from('abc')])
  const text = JSON.parse(codecFor('rsocket.v1.json').encode({ op: 'event', seq: 1, name: 'x', data: once }))
  assert.equal(text.data.message.imageMessage.fileSha256, Buffer.from('abc').toString('base64'))
})

test('lone surrogates become U+FFFD; other views are copied; a __proto__ key stays a key', () => {
  assert.equal(convert('a\ud800b'), 'a\ufffdb')
  const backing = new Uint8Array([1, 2, 3, 4])
  const view = new DataView(backing.buffer, 1, 2)
  const out = convert({ view, ['__proto__']: 1, 'x\udc00': 2 })
  backing[1] = 9
  assert.deepEqual([...out.view], [2, 3])
  assert.equal(Object.getPrototypeOf(out), Object.prototype)
  assert.deepEqual(Object.keys(out), ['view', '__proto__', 'x\ufffd'])
})

// Baileys' own protobuf classes (WAProto), from the baileys the bridge depends on
test('a decoded message key keeps fromMe (a prototype default) and its LID fields', async () => {
  const { proto } = await import('baileys')
  const bytes = proto.WebMessageInfo.encode({
    key: { remoteJid: '5511900000001@s.whatsapp.net', id: '3EB0AA' }, // fromMe unset, as WhatsApp sends it
    message: { conversation: 'hi' },
    messageTimestamp: 1733000000
  }).finish()
  const decoded = proto.WebMessageInfo.decode(bytes)
  assert.ok(!Object.hasOwn(decoded.key, 'fromMe')) // what used to be dropped
  const out = convert(decoded)
  assert.equal(out.key.fromMe, false)
  assert.equal(out.key.remoteJid, '5511900000001@s.whatsapp.net')
  assert.equal(out.messageTimestamp, 1733000000)
  const lid = convert({ key: { remoteJid: '123@lid', remoteJidAlt: '5511@s.whatsapp.net', participantAlt: '9@s.whatsapp.net', id: 'X' } })
  assert.deepEqual(lid.key, { remoteJid: '123@lid', remoteJidAlt: '5511@s.whatsapp.net', participantAlt: '9@s.whatsapp.net', id: 'X', fromMe: false })
})
