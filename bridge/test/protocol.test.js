'use strict'
const test = require('node:test')
const assert = require('node:assert/strict')
const msgpack = require('@msgpack/msgpack')
const { ProtocolError, ServerSession, closeReason } = require('../lib/protocol')

const pack = (frame) => Buffer.from(msgpack.encode(frame))
const closeCodeOf = (fn) => {
  try {
    fn()
  } catch (err) {
    assert.ok(err instanceof ProtocolError, err)
    return err.closeCode
  }
  assert.fail('no ProtocolError')
}

test('bad client frames get the close codes of rsocket.protocol', () => {
  const session = () => new ServerSession()
  assert.equal(closeCodeOf(() => session().receive(Buffer.from('{}'), false)), 1003) // text on msgpack
  assert.equal(closeCodeOf(() => session().receive(pack({ op: 'ready' }), true)), 1003) // server op
  assert.equal(closeCodeOf(() => session().receive(pack({ op: 'nope' }), true)), 1003)
  assert.equal(closeCodeOf(() => session().receive(Buffer.from([0xc1]), true)), 1007) // undecodable
  assert.equal(closeCodeOf(() => session().receive(pack([1, 2]), true)), 1007) // not a map
  assert.equal(closeCodeOf(() => session().receive(pack({ tenant: 't' }), true)), 1007) // no op
  assert.equal(closeCodeOf(() => session().receive(pack({ op: 'hello', tenant: 1, token: 'x' }), true)), 1007)
  assert.equal(closeCodeOf(() => session().receive(pack({ op: 'hello', tenant: 't', token: 'x', resume: -1 }), true)), 1007)
  assert.equal(closeCodeOf(() => new ServerSession({ maxSize: 8 }).receive(pack({ op: 'hello', tenant: 't1', token: 'x' }), true)), 1009)
  assert.equal(closeCodeOf(() => session().receive(pack({ op: 'ping', id: 1 }), true)), 1002) // not hello first
})

test('order rules: a second hello and an ack above the last sent seq are 1002', () => {
  const session = new ServerSession()
  session.receive(pack({ op: 'hello', tenant: 't1', token: 'x' }), true)
  assert.equal(closeCodeOf(() => session.receive(pack({ op: 'hello', tenant: 't1', token: 'x' }), true)), 1002)
  session.ready('s', true, 0, 0)
  session.events(1, [['chats.delete', ['a']], ['chats.delete', ['b']]])
  assert.deepEqual(session.receive(pack({ op: 'ack', seq: 2 }), true), { op: 'ack', seq: 2 })
  assert.equal(closeCodeOf(() => session.receive(pack({ op: 'ack', seq: 3 }), true)), 1002)
})

test('frames are what the Python client decodes: one event, a batch, omitted nulls', () => {
  const session = new ServerSession()
  session.receive(pack({ op: 'hello', tenant: 't1', token: 'x' }), true)
  assert.deepEqual(msgpack.decode(session.ready('s', false, 2, 4)), { op: 'ready', session: 's', resumed: false, pending: 2 })
  assert.deepEqual(session.events(5, [['chats.delete', ['a']]]).map((m) => msgpack.decode(m)), [{ op: 'event', seq: 5, name: 'chats.delete', data: ['a'] }])
  assert.deepEqual(session.events(6, [['a', 1], ['b', null]]).map((m) => msgpack.decode(m)), [{ op: 'batch', first: 6, events: [{ name: 'a', data: 1 }, { name: 'b', data: null }] }])
  assert.throws(() => session.events(9, [['a', 1]]), /does not follow 7/)
  assert.deepEqual(msgpack.decode(session.result(1, false, null, 'no')), { op: 'result', id: 1, ok: false, error: 'no' })
})

test('integers past 32 bits go out as 64-bit integers, never floats', () => {
  const session = new ServerSession()
  session.receive(pack({ op: 'hello', tenant: 't1', token: 'x' }), true)
  session.ready('s', true, 0, 0)
  const data = { ms: 1712345678901, negative: -5000000000, big: 2n ** 62n, small: 7, float: 1.5 }
  const [frame] = session.events(1, [['messages.update', data]])
  const decoded = msgpack.decode(frame, { useBigInt64: true })
  assert.deepEqual(decoded.data, { ms: 1712345678901n, negative: -5000000000n, big: 2n ** 62n, small: 7, float: 1.5 })
  assert.ok(frame.includes(Buffer.from([0xcf, 0, 0, 0x01, 0x8e, 0xaf, 0xc1, 0x84, 0x35])), 'uint64 of 1712345678901')
  assert.equal(msgpack.decode(session.pong(2 ** 32 + 5), { useBigInt64: true }).id, 2n ** 32n + 5n)
})

test('JSON frames carry 64-bit integers exactly', () => {
  const session = new ServerSession({ subprotocol: 'rsocket.v1.json' })
  session.receive(Buffer.from('{"op": "hello", "tenant": "t1", "token": "x"}'), false)
  session.ready('s', true, 0, 0)
  const [text] = session.events(1, [['x', { big: 2n ** 62n + 1n, neg: -(2n ** 60n), s: 'a\u0000rsocket' }]])
  assert.equal(text, '{"op":"event","seq":1,"name":"x","data":{"big":4611686018427387905,"neg":-1152921504606846976,"s":"a\\u0000rsocket"}}')
})

test('close reasons fit a close frame without splitting a character', () => {
  assert.equal(closeReason('short'), 'short')
  const long = closeReason('é'.repeat(100))
  assert.ok(Buffer.byteLength(long) <= 123 && long.endsWith('...') && !long.includes('\uFFFD'))
})

test('frames never exceed the client\'s max_frame; an event that cannot fit goes as oversize', () => {
  for (const subprotocol of ['rsocket.v1.msgpack', 'rsocket.v1.json']) {
    const binary = subprotocol === 'rsocket.v1.msgpack'
    const session = new ServerSession({ subprotocol })
    const hello = { op: 'hello', tenant: 't1', token: 'x', max_frame: 4000 }
    session.receive(binary ? pack(hello) : Buffer.from(JSON.stringify(hello)), binary)
    assert.equal(session.maxFrame, 4000)
    session.ready('s', true, 0, 0)
    const events = [100, 3000, 900, 5000, 10, 2500, 2500].map((n) => ['chats.delete', ['x'.repeat(n)]])
    const seen = new Map()
    for (const message of session.events(1, events)) {
      assert.ok((binary ? message.length : Buffer.byteLength(message)) <= 4000)
      const frame = binary ? msgpack.decode(message) : JSON.parse(message)
      if (frame.op === 'batch') frame.events.forEach((e, i) => seen.set(frame.first + i, e.data[0].length))
      else if (frame.op === 'event') seen.set(frame.seq, frame.data[0].length)
      else {
        assert.deepEqual([frame.op, frame.seq, frame.name], ['oversize', 4, 'chats.delete'])
        assert.ok(frame.size > 4000)
        seen.set(frame.seq, null)
      }
    }
    assert.deepEqual([...seen.keys()].sort((a, b) => a - b), [1, 2, 3, 4, 5, 6, 7])
    assert.deepEqual([1, 2, 3, 5, 6, 7].map((seq) => seen.get(seq)), [100, 3000, 900, 10, 2500, 2500])
    assert.equal(session.lastSent, 7)
  }
  const legacy = new ServerSession()
  legacy.receive(pack({ op: 'hello', tenant: 't1', token: 'x' }), true)
  assert.equal(legacy.maxFrame, 1 << 20) // a hello without max_frame: the old client's limit
})

test('a result larger than max_frame becomes an error result', () => {
  const session = new ServerSession()
  session.receive(pack({ op: 'hello', tenant: 't1', token: 'x', max_frame: 1000 }), true)
  session.ready('s', true, 0, 0)
  const frame = msgpack.decode(session.result(3, true, new Uint8Array(5000)))
  assert.deepEqual([frame.op, frame.id, frame.ok], ['result', 3, false])
  assert.match(frame.error, /exceeds the client's max_frame 1000/)
})

test('JSON frames carry any text users send exactly: no marker is ever in-band', () => {
  const session = new ServerSession({ subprotocol: 'rsocket.v1.json' })
  session.receive(Buffer.from('{"op": "hello", "tenant": "t1", "token": "x"}'), false)
  session.ready('s', true, 0, 0)
  const hostile = {
    text: '\u0000rsocket-bigint:123', // the marker the bridge once used
    '\u0000rsocket-bigint:5': 'as a key',
    big: 2n ** 63n - 1n,
    nested: [{ n: -(2n ** 62n), bytes: new Uint8Array([1, 2]), skip: undefined }],
    quote: '"}]\\'
  }
  const [text] = session.events(1, [['messages.upsert', hostile]])
  const frame = JSON.parse(text)
  assert.equal(frame.data.text, '\u0000rsocket-bigint:123')
  assert.equal(frame.data['\u0000rsocket-bigint:5'], 'as a key')
  assert.equal(frame.data.quote, '"}]\\')
  assert.ok(text.includes('"big":9223372036854775807') && text.includes('"n":-4611686018427387904'))
  assert.deepEqual(frame.data.nested[0], { n: -4611686018427387904, bytes: 'AQI=' })
})
