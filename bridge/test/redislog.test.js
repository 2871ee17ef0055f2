'use strict'
const test = require('node:test')
const assert = require('node:assert/strict')

const { FencedError, RedisEventLog } = require('../lib/redislog')
const { startRedis, skip } = require('./redis-server')

const PREFIX = 'test'
const events = (n, from = 1) => Array.from({ length: n }, (_, i) => ['chats.delete', [`c${from + i}`]])
const names = (list) => list.map(([, d]) => d[0])
const hello = (resume, epoch = '') => ({ op: 'hello', tenant: 'a', token: 'x', resume, epoch })

async function fence (redis, account) { // a lease take: the next token
  return Number(await redis.incr(`${PREFIX}:{${account}}:fence`))
}

test('a Redis log continues the same session and seqs in another bridge', { skip }, async (t) => {
  const server = await startRedis(t)
  const redis = server.client()
  const one = await RedisEventLog.open(redis, { account: 'a', token: await fence(redis, 'a'), prefix: PREFIX, window: 100 })
  assert.equal(one.append(events(5)), 1)
  await one.flush()
  await one.close()
  const two = await RedisEventLog.open(server.client(), { account: 'a', token: await fence(redis, 'a'), prefix: PREFIX, window: 100 })
  assert.equal(two.session, one.session)
  assert.equal(two.lastSeq, 5)
  const start = two.backlog(hello(3, one.session))
  assert.equal(start.resumed, true)
  assert.deepEqual(names(start.backlog), ['c4', 'c5'])
  assert.equal(two.append(events(1, 6)), 6)
  await two.close()
})

test('a log whose lease was taken again is fenced out: nothing more lands, durable() rejects', { skip }, async (t) => {
  const server = await startRedis(t)
  const redis = server.client()
  const old = await RedisEventLog.open(redis, { account: 'a', token: await fence(redis, 'a'), prefix: PREFIX })
  old.append(events(2))
  await old.flush()
  const taken = await RedisEventLog.open(redis, { account: 'a', token: await fence(redis, 'a'), prefix: PREFIX })
  old.append(events(1, 3)) // the old holder, unaware
  await assert.rejects(old.durable(3), FencedError)
  assert.throws(() => old.append(events(1, 4)), FencedError)
  taken.append(events(1, 3))
  await taken.flush()
  const entries = await redis.xrange(`${PREFIX}:{a}:log`, '-', '+')
  assert.deepEqual(entries.map(([id]) => id), ['1-0', '2-0', '3-0'])
  const again = await RedisEventLog.open(redis, { account: 'a', token: await fence(redis, 'a'), prefix: PREFIX })
  assert.deepEqual(names(again.since(1)), ['c1', 'c2', 'c3'])
})

test('the window and the byte bound trim Redis too; reset starts a new session', { skip }, async (t) => {
  const server = await startRedis(t)
  const redis = server.client()
  const log = await RedisEventLog.open(redis, { account: 'a', token: await fence(redis, 'a'), prefix: PREFIX, window: 10 })
  for (let i = 0; i < 5; i++) log.append(events(10, 1 + i * 10))
  await log.flush()
  assert.equal(await redis.xlen(`${PREFIX}:{a}:log`), 10)
  const big = ['messages.upsert', { messages: [{ key: { id: 'x' }, body: 'z'.repeat(600) }], type: 'notify' }]
  const bounded = await RedisEventLog.open(redis, { account: 'b', token: await fence(redis, 'b'), prefix: PREFIX, maxBytes: 2048 })
  for (let i = 0; i < 10; i++) bounded.append([big])
  await bounded.flush()
  assert.ok(bounded.size <= 3 && bounded.size >= 2, `retained ${bounded.size}`)
  assert.equal(await redis.xlen(`${PREFIX}:{b}:log`), bounded.size)
  const before = log.session
  log.reset()
  log.append(events(1, 99))
  await log.flush()
  const reopened = await RedisEventLog.open(redis, { account: 'a', token: await fence(redis, 'a'), prefix: PREFIX })
  assert.notEqual(reopened.session, before)
  assert.equal(reopened.lastSeq, 1)
  assert.deepEqual(names(reopened.since(1)), ['c99'])
})

test('a Redis restart delays delivery, loses nothing', { skip }, async (t) => {
  const server = await startRedis(t, { persist: true })
  const redis = server.client({ timeout: 0.5 })
  const log = await RedisEventLog.open(redis, { account: 'a', token: await fence(redis, 'a'), prefix: PREFIX })
  log.append(events(3))
  await log.flush()
  await server.stop()
  log.append(events(2, 4)) // Redis is away: queued
  let done = false
  const durable = log.durable(5).then(() => { done = true })
  await new Promise((resolve) => setTimeout(resolve, 300))
  assert.equal(done, false, 'durable before Redis has the events')
  await server.start()
  await durable
  assert.deepEqual((await redis.xrange(`${PREFIX}:{a}:log`, '-', '+')).map(([id]) => id), ['1-0', '2-0', '3-0', '4-0', '5-0'])
  await log.close()
})
