'use strict'
// The bridge over real loopback WebSockets (a `ws` client speaking rsocket.v1).
const test = require('node:test')
const assert = require('node:assert/strict')
const { EventEmitter } = require('node:events')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const msgpack = require('@msgpack/msgpack')
const WebSocket = require('ws')
const { createBridge } = require('../lib')
const { boom, importMakeEventBuffer, makeTestSocket } = require('../lib/test-source')

/** What the bridge uses of a Baileys socket: `ev.process` and `sendMessage`. */
function fakeSocket () {
  const emitter = new EventEmitter()
  let sent = 0
  return {
    ev: {
      process (handler) {
        emitter.on('event', handler)
        return () => emitter.off('event', handler)
      },
      emit (name, data) { emitter.emit('event', { [name]: data }) },
      listeners: () => emitter.listenerCount('event')
    },
    async sendMessage (jid, content) {
      const message = { key: { remoteJid: jid, fromMe: true, id: `X${++sent}` }, message: { conversation: content.text } }
      if (content.text !== 'no echo') setTimeout(() => emitter.emit('event', { 'messages.upsert': { messages: [message], type: 'append' } }), 10)
      return message
    }
  }
}

class Client {
  static async open (url, protocols = 'rsocket.v1.msgpack') {
    const client = new Client(new WebSocket(url, protocols))
    await new Promise((resolve, reject) => {
      client.ws.once('open', resolve)
      client.ws.once('error', reject)
      client.ws.once('unexpected-response', (req, res) => reject(Object.assign(new Error('refused'), { status: res.statusCode })))
    })
    return client
  }

  constructor (ws) {
    this.ws = ws
    this.frames = []
    this.waiting = null
    ws.on('message', (data) => {
      this.frames.push(msgpack.decode(data, { useBigInt64: true }))
      if (this.waiting) this.waiting()
    })
    this.closed = new Promise((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })))
  }

  send (frame) { this.ws.send(msgpack.encode(frame)) }

  async next () {
    while (!this.frames.length) await new Promise((resolve) => { this.waiting = resolve })
    return this.frames.shift()
  }

  async hello (tenant = 't1', token = 'token1', resume = 0, epoch = '') {
    this.send({ op: 'hello', tenant, token, resume, epoch })
    return this.next()
  }

  /** Frames up to and including `offline`. */
  async backlog () {
    const frames = []
    for (let frame = await this.next(); ; frame = await this.next()) {
      frames.push(frame)
      if (frame.op === 'offline') return frames
    }
  }
}

async function withBridge (options, fn) {
  const bridge = await createBridge({ tenants: { t1: 'token1', t2: 'token2' }, pingInterval: null, ...options })
  try {
    await fn(bridge)
  } finally {
    await bridge.close()
  }
}

test('ready, the backlog in batches, offline, then live events', () => withBridge({ batchSize: 2 }, async (bridge) => {
  const sock = fakeSocket()
  bridge.attach('t1', sock)
  for (let i = 1; i <= 3; i++) sock.ev.emit('chats.delete', [`c${i}`])
  const client = await Client.open(bridge.url)
  const ready = await client.hello()
  assert.deepEqual(ready, { op: 'ready', session: bridge.tenants.get('t1').log.session, resumed: true, pending: 3 })
  const frames = await client.backlog()
  assert.deepEqual(frames.map((f) => f.op), ['batch', 'event', 'offline'])
  assert.equal(frames[2].count, 3)
  sock.ev.emit('messages.upsert', { messages: [], type: 'notify' })
  assert.deepEqual(await client.next(), { op: 'event', seq: 4, name: 'messages.upsert', data: { messages: [], type: 'notify' } })
  client.send({ op: 'ack', seq: 4 })
  client.send({ op: 'ping', id: 7 })
  assert.deepEqual(await client.next(), { op: 'pong', id: 7 })
  assert.equal(bridge.stats().t1.acked, 4)
  client.ws.close()
  await client.closed
}))

test('a resume replays only what follows the cursor, in the same epoch', () => withBridge({}, async (bridge) => {
  const sock = fakeSocket()
  bridge.attach('t1', sock)
  for (let i = 1; i <= 5; i++) sock.ev.emit('chats.delete', [`c${i}`])
  const client = await Client.open(bridge.url)
  const ready = await client.hello('t1', 'token1', 3, bridge.stats().t1.session)
  assert.equal(ready.pending, 2)
  const [batch] = await client.backlog()
  assert.equal(batch.first, 4)
  client.ws.close()
  await client.closed
}))

test('a second connection replaces the first: 440 "replaced", then close 1000', () => withBridge({}, async (bridge) => {
  const first = await Client.open(bridge.url)
  await first.hello()
  await first.backlog()
  const second = await Client.open(bridge.url)
  await second.hello()
  assert.deepEqual(await first.next(), { op: 'stream_error', code: 440, reason: 'replaced' })
  assert.equal((await first.closed).code, 1000)
  const stats = bridge.stats().t1
  assert.equal(stats.replaced, 1)
  assert.equal(stats.connections_total, 2)
  assert.equal(bridge.tenants.get('t1').conn.ws.readyState, WebSocket.OPEN) // the newer one stays
  second.ws.close()
  await second.closed
}))

test('a bad token and an unknown tenant get failure 401 and close 1008', () => withBridge({}, async (bridge) => {
  for (const [tenant, token] of [['t1', 'token2'], ['t9', 'token1'], ['t1', '']]) {
    const client = await Client.open(bridge.url)
    assert.deepEqual(await client.hello(tenant, token), { op: 'failure', code: 401, reason: 'bad token' })
    assert.equal((await client.closed).code, 1008)
  }
}))

test('no hello in time is 1008; a bad frame is failure 500 with its close code', () => withBridge({ helloTimeout: 0.1 }, async (bridge) => {
  const idle = await Client.open(bridge.url)
  assert.deepEqual(await idle.closed, { code: 1008, reason: 'no hello within 0.1 s' })
  const bad = await Client.open(bridge.url)
  bad.ws.send('{"op": "hello"}') // text on the msgpack subprotocol
  const failure = await bad.next()
  assert.equal(failure.op, 'failure')
  assert.equal(failure.code, 500)
  assert.equal((await bad.closed).code, 1003)
}))

test('offered subprotocols none of which is rsocket.v1 are refused with 400', () => withBridge({}, async (bridge) => {
  await assert.rejects(Client.open(bridge.url, 'chat.v2'), (err) => err.status === 400)
  const json = await Client.open(bridge.url, ['rsocket.v1.json'])
  assert.equal(json.ws.protocol, 'rsocket.v1.json')
  json.ws.close()
}))

test('detach stops the feed; attach continues the same log', () => withBridge({}, async (bridge) => {
  const first = fakeSocket()
  bridge.attach('t1', first)
  first.ev.emit('chats.delete', ['a'])
  const second = fakeSocket()
  bridge.attach('t1', second) // a reconnect's new socket
  assert.equal(first.ev.listeners(), 0)
  first.ev.emit('chats.delete', ['ignored'])
  second.ev.emit('chats.delete', ['b'])
  bridge.detach('t1')
  second.ev.emit('chats.delete', ['ignored'])
  const log = bridge.tenants.get('t1').log
  assert.deepEqual(log.since(1).map(([, data]) => data[0]), ['a', 'b'])
  assert.throws(() => bridge.attach('t1', {}), /not a Baileys socket/)
  assert.throws(() => bridge.attach('nobody', fakeSocket()), /unknown tenant "nobody"/)
}))

test('a Baileys logout: the events before it, then failure 401; later hellos are refused', () => withBridge({}, async (bridge) => {
  const seen = []
  for (const name of ['attached', 'detached', 'ended', 'logout']) bridge.on(name, (...args) => seen.push([name, ...args]))
  const sock = fakeSocket()
  bridge.attach('t1', sock)
  const client = await Client.open(bridge.url)
  await client.hello()
  await client.backlog()
  sock.ev.emit('connection.update', { connection: 'close', lastDisconnect: { error: boom(401, 'Intentional Logout'), date: new Date(0) } })
  const update = await client.next()
  assert.equal(update.name, 'connection.update')
  assert.deepEqual(update.data.lastDisconnect, { error: { name: 'Error', message: 'Intentional Logout', statusCode: 401 }, date: '1970-01-01T00:00:00.000Z' })
  assert.deepEqual(await client.next(), { op: 'failure', code: 401, reason: 'logged out' })
  assert.equal((await client.closed).code, 1000)
  const again = await Client.open(bridge.url)
  assert.deepEqual(await again.hello(), { op: 'failure', code: 401, reason: 'logged out' })
  await again.closed
  // the bridge says so to code that listens: attached, then detached, ended and logout
  assert.deepEqual(seen, [['attached', 't1', sock], ['detached', 't1'], ['ended', 't1', 401, 'logged out'], ['logout', 't1']])
}))

test('errors are emitted only to listeners: an unheard error never ends the process', () => withBridge({}, async (bridge) => {
  bridge._error({ err: new Error('first') }, 'nobody listens') // no throw
  const errors = []
  bridge.on('error', (err, fields) => errors.push([err.message, Object.keys(fields)]))
  bridge._error({ tenant: 't1', err: new Error('second') }, 'someone listens')
  assert.deepEqual(errors, [['second', ['tenant', 'err']]])
}))

test('queries: send_message calls sock.sendMessage; unknown methods and errors are error results', () => withBridge({
  methods: { boom: async () => { throw new Error('it broke') }, hang: () => new Promise(() => {}) },
  queryTimeout: 0.5,
  upsertTimeout: 0.1
}, async (bridge) => {
  const client = await Client.open(bridge.url)
  await client.hello()
  await client.backlog()
  client.send({ op: 'query', id: 1, method: 'send_message', params: { jid: 'j', text: 'hi' } })
  assert.deepEqual(await client.next(), { op: 'result', id: 1, ok: false, error: 'tenant t1 has no Baileys socket attached' })
  bridge.attach('t1', fakeSocket())
  client.send({ op: 'query', id: 2, method: 'send_message', params: { jid: 'j', text: 'hi' } })
  // Baileys' upsert of the sent message comes on a later tick: it goes first, then the result with its seq
  const upsert = await client.next()
  assert.deepEqual([upsert.op, upsert.seq, upsert.data.messages[0].key.id], ['event', 1, 'X1'])
  assert.deepEqual(await client.next(), { op: 'result', id: 2, ok: true, data: { key: { remoteJid: 'j', fromMe: true, id: 'X1' }, seq: 1 } })
  client.send({ op: 'query', id: 5, method: 'send_message', params: { jid: 'j', text: 'no echo' } })
  assert.deepEqual(await client.next(), { op: 'result', id: 5, ok: true, data: { key: { remoteJid: 'j', fromMe: true, id: 'X2' } } })
  client.send({ op: 'query', id: 6, method: 'hang', params: null })
  assert.deepEqual(await client.next(), { op: 'result', id: 6, ok: false, error: 'hang did not answer within 0.5 s' })
  client.send({ op: 'query', id: 3, method: 'toString', params: null })
  assert.deepEqual(await client.next(), { op: 'result', id: 3, ok: false, error: "unknown method 'toString'" })
  client.send({ op: 'query', id: 4, method: 'boom', params: null })
  assert.deepEqual(await client.next(), { op: 'result', id: 4, ok: false, error: 'it broke' })
  client.ws.close()
  await client.closed
}))

// Baileys' own event buffer as the socket's `ev` (an unpacked `npm pack baileys` package)
const cached = path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'rsocket', 'baileys-6.17.16', 'package')
const baileys = process.env.RSOCKET_BAILEYS || cached
const haveBaileys = fs.existsSync(path.join(baileys, 'lib', 'Utils', 'event-buffer.js'))
if (!haveBaileys && ['1', 'true', 'yes'].includes(String(process.env.CI).toLowerCase())) {
  throw new Error(`CI needs an unpacked baileys package at ${baileys} (set RSOCKET_BAILEYS)`)
}

const baileys7 = path.dirname(require.resolve('baileys/package.json', { paths: [path.join(__dirname, '..')] }))
for (const [version, dir, skip] of [['6', baileys, !haveBaileys && `no baileys package at ${baileys}`], ['7', baileys7, false]]) {
  test(`Baileys ${version}'s makeEventBuffer feeds the log, its consolidation included; creds.update stays out`, { skip }, () => withBridge({}, async (bridge) => {
    const sock = makeTestSocket(await importMakeEventBuffer(dir))
    bridge.attach('t1', sock)
    const key = { remoteJid: '1@s.whatsapp.net', fromMe: false, id: 'M1' }
    sock.ev.emit('creds.update', { me: { id: 'secret' } })
    sock.ev.emit('chats.delete', ['c1'])
    sock.ev.buffer()
    sock.ev.emit('messages.upsert', { messages: [{ key, message: { conversation: 'hi' } }], type: 'notify' })
    sock.ev.emit('messages.update', [{ key, update: { status: 4 } }])
    sock.ev.flush()
    const log = bridge.tenants.get('t1').log
    const events = log.since(1)
    const names = events.map(([name]) => name)
    assert.equal(names[0], 'chats.delete')
    assert.ok(names.includes('messages.upsert'))
    assert.ok(!names.includes('creds.update') && !names.includes('messages.update'))
    const upsert = events.find(([name]) => name === 'messages.upsert')[1]
    assert.equal(upsert.messages[0].status, 4) // merged by Baileys before release
  }))
}

test('an event that cannot be converted is logged, never thrown into Baileys; the others go on', async () => {
  const errors = []
  const logger = { info () {}, warn () {}, error: (fields, message) => errors.push([fields.event, message]) }
  await withBridge({ logger }, async (bridge) => {
    const sock = fakeSocket()
    bridge.attach('t1', sock)
    const hostile = { get id () { throw new Error('boom') } }
    assert.doesNotThrow(() => sock.ev.emit('chats.upsert', [hostile]))
    sock.ev.emit('chats.delete', ['c1'])
    assert.deepEqual(bridge.tenants.get('t1').log.since(1), [['chats.delete', ['c1']]])
    assert.deepEqual(errors, [['chats.upsert', 'Baileys event not convertible: not forwarded']])
  })
})

test('a client that resets a refused handshake does not take the process down', () => withBridge({}, async (bridge) => {
  const net = require('node:net')
  for (let i = 0; i < 5; i++) {
    const socket = net.connect(bridge.port, '127.0.0.1')
    await new Promise((resolve) => socket.once('connect', resolve))
    socket.write(`GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${Buffer.alloc(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: nope\r\n\r\n`)
    socket.resetAndDestroy()
  }
  const client = await Client.open(bridge.url) // still serving
  assert.equal((await client.hello()).op, 'ready')
  client.ws.close()
  await client.closed
}))

test('a hello after the hello timeout does not attach (nor replace the live connection)', () => withBridge({ helloTimeout: 0.1 }, async (bridge) => {
  const live = await Client.open(bridge.url)
  await live.hello()
  await live.backlog()
  const late = new WebSocket(bridge.url, 'rsocket.v1.msgpack')
  await new Promise((resolve) => late.once('open', resolve))
  const closing = new Promise((resolve) => late.once('close', resolve))
  await new Promise((resolve) => setTimeout(resolve, 150)) // the server has sent its 1008
  late.send(msgpack.encode({ op: 'hello', tenant: 't1', token: 'token1', resume: 0, epoch: '' }))
  await closing
  assert.equal(bridge.stats().t1.replaced, 0)
  assert.equal(bridge.stats().t1.connections_total, 1)
  live.ws.close()
  await live.closed
}))

test('close() ends while clients keep reconnecting', async () => {
  const bridge = await createBridge({ tenants: { t1: 'token1' }, pingInterval: null, closeTimeout: 0.5 })
  const clients = await Promise.all([1, 2].map(() => Client.open(bridge.url)))
  const state = { reconnecting: true }
  const reconnect = (async () => { // a pool that reconnects at once, over and over
    while (state.reconnecting) {
      await Client.open(bridge.url).then((c) => c.closed, () => null)
      await new Promise((resolve) => setTimeout(resolve, 5))
    }
  })()
  await bridge.close()
  state.reconnecting = false
  await reconnect
  for (const client of clients) assert.equal((await client.closed).code, 1001)
})

test('with a log folder, a restarted bridge resumes the same session and loses nothing', async () => {
  const logDir = fs.mkdtempSync(path.join(os.tmpdir(), 'rsocket-logs-'))
  const first = await createBridge({ tenants: { t1: 'token1' }, pingInterval: null, logDir })
  first.append('t1', [['chats.upsert', [{ id: 'a@s.whatsapp.net' }]], ['chats.delete', ['b@s.whatsapp.net']], ['chats.delete', ['c@s.whatsapp.net']]])
  const session = first.stats().t1.session
  await first.close() // flushed to disk
  assert.equal(fs.statSync(path.join(logDir, 't1.log')).mode & 0o777, 0o600)
  const second = await createBridge({ tenants: { t1: 'token1' }, pingInterval: null, logDir })
  try {
    assert.deepEqual([second.stats().t1.session, second.stats().t1.last_seq], [session, 3])
    const client = await Client.open(second.url)
    assert.deepEqual(await client.hello('t1', 'token1', 1, session), { op: 'ready', session, resumed: true, pending: 2 })
    const frames = await client.backlog()
    assert.deepEqual(frames.at(-1), { op: 'offline', count: 2 })
    assert.deepEqual(frames[0].events.map((e) => e.data[0]), ['b@s.whatsapp.net', 'c@s.whatsapp.net'])
    client.ws.close()
    await client.closed
  } finally {
    await second.close()
    fs.rmSync(logDir, { recursive: true, force: true })
  }
})

test('values nested past the depth limit are cut, counted and logged with tenant and event', async () => {
  const warnings = []
  const logger = { info () {}, warn: (fields, message) => warnings.push([fields, message]), error () {} }
  await withBridge({ logger }, async (bridge) => {
    const sock = fakeSocket()
    bridge.attach('t1', sock)
    let deep = { leaf: true }
    for (let i = 0; i < 80; i++) deep = { inner: deep }
    sock.ev.emit('chats.upsert', [{ id: 'a@s.whatsapp.net', deep }])
    assert.equal(bridge.stats().t1.cut_values, 1)
    const [fields, message] = warnings.find(([, m]) => m.includes('nested too deep'))
    assert.deepEqual([fields.tenant, fields.event, fields.cut], ['t1', 'chats.upsert', 1])
    assert.ok(message)
    assert.equal(bridge.tenants.get('t1').log.lastSeq, 1) // the event itself still goes
  })
})
