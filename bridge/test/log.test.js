'use strict'
const test = require('node:test')
const assert = require('node:assert/strict')
const { EventLog } = require('../lib/log')
const { ProtocolError } = require('../lib/protocol')

const events = (n, from = 1) => Array.from({ length: n }, (_, i) => ['chats.delete', [`c${from + i}`]])
const hello = (resume, epoch = '') => ({ op: 'hello', tenant: 't1', token: 'x', resume, epoch })

test('seqs are contiguous and the window keeps only the newest events', () => {
  const log = new EventLog(5)
  assert.equal(log.append(events(3)), 1)
  assert.equal(log.append(events(4, 4)), 4)
  assert.equal(log.lastSeq, 7)
  assert.equal(log.oldest, 3)
  assert.deepEqual(log.since(1).map(([, d]) => d[0]), ['c3', 'c4', 'c5', 'c6', 'c7'])
  assert.deepEqual(log.since(6).map(([, d]) => d[0]), ['c6', 'c7'])
})

test('the ring grows past its first allocation and trims in order', () => {
  const log = new EventLog(3000)
  for (let i = 0; i < 5; i++) log.append(events(1000, i * 1000 + 1))
  assert.equal(log.size, 3000)
  const kept = log.since(0).map(([, d]) => d[0])
  assert.equal(kept[0], 'c2001')
  assert.equal(kept.at(-1), 'c5000')
})

test('resume replays after the cursor; 0 replays everything retained and is no gap', () => {
  const log = new EventLog(10)
  log.append(events(8))
  assert.deepEqual(log.backlog(hello(5, log.session)), { resumed: true, base: 5, backlog: log.since(6) })
  const all = log.backlog(hello(0))
  assert.equal(all.resumed, true)
  assert.equal(all.backlog.length, 8)
})

test('a resume the window no longer holds is not resumed and starts at the oldest', () => {
  const log = new EventLog(4)
  log.append(events(10))
  const start = log.backlog(hello(2, log.session))
  assert.equal(start.resumed, false)
  assert.equal(start.base, 6)
  assert.equal(start.backlog.length, 4)
  assert.equal(log.backlog(hello(0)).resumed, true) // 0: never a gap
})

test('another epoch is a gap from the start; a resume above the last seq is 1002', () => {
  const log = new EventLog(10)
  log.append(events(3))
  const other = log.backlog(hello(2, 'old-epoch'))
  assert.deepEqual([other.resumed, other.base, other.backlog.length], [false, 0, 3])
  assert.throws(() => log.backlog(hello(4, log.session)), (err) => err instanceof ProtocolError && err.closeCode === 1002)
  const before = log.session
  log.reset()
  assert.notEqual(log.session, before)
  assert.equal(log.lastSeq, 0)
})
