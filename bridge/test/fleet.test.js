'use strict'
// Leases, the Redis auth state and the fleet balancer against a real redis-server.
const test = require('node:test')
const assert = require('node:assert/strict')

const { createBridge } = require('../lib/bridge')
const { Fleet } = require('../lib/fleet')
const { Leases } = require('../lib/leases')
const { FencedError } = require('../lib/redislog')
const { useRedisAuth } = require('../lib/redisauth')
const { startRedis, skip } = require('./redis-server')

const PREFIX = 'test'

const until = async (predicate, what, timeout = 10000) => {
  const deadline = Date.now() + timeout
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}

test('a lease is taken once, with a fencing token per take, and released by its holder only', { skip }, async (t) => {
  const server = await startRedis(t)
  const one = new Leases(server.client(), { prefix: PREFIX, url: 'ws://one', id: 'one', ttl: 5 })
  const two = new Leases(server.client(), { prefix: PREFIX, url: 'ws://two', id: 'two', ttl: 5 })
  t.after(() => { one.clear(); two.clear() })
  assert.equal(await one.take('a'), 1)
  assert.equal(await two.take('a'), null)
  assert.equal(one.token('a'), 1)
  assert.equal(await two.release('a'), false)
  assert.equal(await one.renewAll(), 1) // registered: one live bridge
  assert.equal(await two.renewAll(), 2)
  assert.equal(await one.release('a'), true)
  assert.equal(one.token('a'), null)
  assert.equal(await two.take('a'), 2)
  assert.deepEqual(await one.free(['a', 'b']), ['b'])
  const redis = server.client()
  assert.deepEqual(await redis.hgetall(`${PREFIX}:urls`), { one: 'ws://one', two: 'ws://two' })
  await one.unregister()
  assert.deepEqual(await redis.hgetall(`${PREFIX}:urls`), { two: 'ws://two' })
})

test('a lease whose renewal is refused, or not confirmed for ttl/2, is lost here', { skip }, async (t) => {
  const server = await startRedis(t)
  const redis = server.client({ timeout: 0.2 })
  const leases = new Leases(redis, { prefix: PREFIX, url: 'ws://x', id: 'x', ttl: 0.6 })
  t.after(() => leases.clear())
  const lost = []
  leases.on('lost', (account, token) => lost.push([account, token]))
  await leases.take('a')
  await leases.take('b')
  await server.client().del(`${PREFIX}:{a}:lease`) // gone from Redis (expired, or an operator)
  await leases.renewAll()
  assert.deepEqual(lost, [['a', 1]])
  server.process.kill('SIGSTOP') // Redis stops answering: no renewal confirms b
  try {
    await until(() => lost.length === 2, 'b lost at ttl/2', 5000)
  } finally {
    server.process.kill('SIGCONT')
  }
  assert.deepEqual(lost[1], ['b', 1])
  assert.equal(leases.token('b'), null)
})

test('auth state in Redis round-trips Baileys keys and refuses a stale token', { skip }, async (t) => {
  const server = await startRedis(t)
  const redis = server.client()
  const baileys = await import('baileys')
  const token = Number(await redis.incr(`${PREFIX}:{a}:fence`))
  const auth = await useRedisAuth(redis, { prefix: PREFIX, account: 'a', token }, baileys)
  const creds = auth.state.creds
  assert.ok(creds.noiseKey.public instanceof Uint8Array, 'fresh creds from initAuthCreds')
  await auth.saveCreds()
  const syncKey = { keyData: Buffer.from('k'.repeat(32)), timestamp: 1700000000 }
  await auth.state.keys.set({ 'pre-key': { 1: { public: Buffer.alloc(32, 1), private: Buffer.alloc(32, 2) }, 2: null }, 'app-state-sync-key': { AAA: syncKey } })
  const again = await useRedisAuth(redis, { prefix: PREFIX, account: 'a', token }, baileys)
  assert.deepEqual(Buffer.from(again.state.creds.noiseKey.private), Buffer.from(creds.noiseKey.private))
  const got = await again.state.keys.get('pre-key', ['1', '2'])
  assert.deepEqual(Buffer.from(got['1'].private), Buffer.alloc(32, 2))
  assert.equal(got['2'], null)
  const sync = await again.state.keys.get('app-state-sync-key', ['AAA'])
  assert.ok(sync.AAA instanceof baileys.proto.Message.AppStateSyncKeyData)
  await redis.incr(`${PREFIX}:{a}:fence`) // another bridge took the account
  await assert.rejects(auth.state.keys.set({ 'pre-key': { 1: null } }), FencedError)
  assert.ok(await redis.hget(`${PREFIX}:{a}:auth`, 'pre-key-1'), 'the stale write changed nothing')
})

test('two fleet bridges split the accounts; one closing hands its share to the other', { skip }, async (t) => {
  const server = await startRedis(t)
  const tenants = { a: 'ta', b: 'tb', c: 'tc', d: 'td' }
  const running = new Map() // account -> bridge id: never two at once
  const overlaps = []
  const start = (id) => async (account) => {
    if (running.has(account)) overlaps.push(account)
    running.set(account, id)
    return () => { if (running.get(account) === id) running.delete(account) }
  }
  const fleets = []
  for (const id of ['one', 'two']) {
    const bridge = await createBridge({ tenants, fleet: true })
    const fleet = new Fleet({ bridge, redis: server.client(), prefix: PREFIX, ttl: 1.5, id, startAccount: start(id) })
    t.after(async () => { await fleet.close(); await bridge.close() })
    fleets.push(fleet)
  }
  await fleets[0].start()
  assert.equal(fleets[0].running.size, 4, 'alone, a bridge serves every account')
  await fleets[1].start()
  // an account counts as running from its lease on, while its log still opens: wait for
  // each to be served too
  const bridge = fleets[1].bridge
  const served = () => [...fleets[1].running.keys()].every((account) => bridge.tenant(account).served)
  await until(() => fleets[0].running.size === 2 && fleets[1].running.size === 2 && served(), 'a split 2 / 2, served')
  for (const account of fleets[1].running.keys()) assert.equal(bridge.tenant(account).served, true)
  await fleets[0].close()
  await until(() => fleets[1].running.size === 4, 'the other bridge takes every account')
  assert.deepEqual(overlaps, [])
})

test('an account of a fleet keeps its keys in Redis: QR, the restart after pairing, open', { skip }, async (t) => {
  const { Account } = require('../lib/account')
  const { standIn } = require('./stand-in')
  const server = await startRedis(t)
  const redis = server.client()
  const boom = (statusCode) => Object.assign(new Error(`status ${statusCode}`), { output: { statusCode } })
  const { mod } = await standIn([[{ qr: '2@abc' }, (sock) => sock.ev.emit('creds.update', {}), { connection: 'close', lastDisconnect: { error: boom(515) } }], [{ connection: 'open' }]])
  const token = Number(await redis.incr(`${PREFIX}:{alice}:fence`))
  const account = new Account({
    name: 'alice',
    baileys: mod,
    qrTerminal: false,
    backoff: [0.01, 0.02],
    log () {},
    authState: () => useRedisAuth(redis, { prefix: PREFIX, account: 'alice', token }, mod)
  })
  t.after(() => account.stop())
  await account.start()
  await until(() => account.state === 'open', 'open')
  const creds = JSON.parse(await redis.hget(`${PREFIX}:{alice}:auth`, 'creds'), mod.BufferJSON.reviver)
  assert.deepEqual(Buffer.from(creds.noiseKey.public), Buffer.from(account.auth.state.creds.noiseKey.public))
})
