'use strict'
// The bridge's HelloGuard: the same rules as rsocket.guard (tests/test_guard.py has the
// servers' side, against both).
const test = require('node:test')
const assert = require('node:assert/strict')
const { HelloGuard } = require('../lib/guard')

function clocked (config) {
  const clock = { now: 100 }
  return [new HelloGuard(config, () => clock.now), clock]
}

test('failed hellos from one address lock it out for a while', () => {
  const [guard, clock] = clocked({ maxFailures: 3, window: 10, lockout: 30 })
  guard.failed('a', 't1')
  guard.failed('a', 't1')
  assert.equal(guard.locked('a'), 0)
  guard.failed('a', 't1')
  assert.equal(guard.locked('a'), 30)
  assert.equal(guard.locked('b'), 0)
  clock.now += 31
  assert.equal(guard.locked('a'), 0)
})

test('a tenant under guessing slows every hello down; old failures expire', () => {
  const [guard, clock] = clocked({ maxFailures: 3, window: 10, slowDown: 2 })
  for (const address of ['a', 'b', 'c']) guard.failed(address, 't1')
  assert.equal(guard.delay('t1'), 2)
  assert.equal(guard.delay('t2'), 0)
  clock.now += 11
  assert.equal(guard.delay('t1'), 0)
})

test('unknown tenant names do not grow the table', () => {
  const [guard] = clocked({ maxFailures: 1000 })
  for (let i = 0; i < 100; i++) guard.failed('a', '')
  assert.deepEqual([...guard.failures.keys()], ['a:a'])
})

test('unauthenticated connections are capped per address and in total', () => {
  const [guard] = clocked({ perAddress: 2, total: 3 })
  assert.equal(guard.admit('a'), null)
  assert.equal(guard.admit('a'), null)
  assert.match(guard.admit('a'), /from a$/)
  assert.equal(guard.admit('b'), null)
  assert.equal(guard.admit('c'), 'too many unauthenticated connections')
  guard.settled('a')
  assert.equal(guard.admit('c'), null)
  assert.equal(guard.counters.flood_refused, 2)
})
