'use strict'
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { spawn } = require('node:child_process')
const msgpack = require('@msgpack/msgpack')
const { FileEventLog } = require('../lib/filelog')
const { EventLog } = require('../lib/log')
const { ProtocolError } = require('../lib/protocol')

const events = (n, from = 1) => Array.from({ length: n }, (_, i) => ['chats.delete', [`c${from + i}`]])
const hello = (resume, epoch = '') => ({ op: 'hello', tenant: 't1', token: 'x', resume, epoch })
const names = (list) => list.map(([, d]) => d[0])

/** A fresh directory for one test, removed after it. */
function tempDir (t) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'filelog-'))
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
  return dir
}

/** A logger that keeps what it is told. */
function recorder () {
  const seen = { info: [], warn: [], error: [] }
  const logger = {}
  for (const level of Object.keys(seen)) logger[level] = (obj, msg) => seen[level].push({ obj, msg })
  return { logger, seen }
}

/** The file's records, decoded with plain msgpack: [header, ...events]. */
function readFile (file) {
  const data = fs.readFileSync(file)
  const out = []
  for (let pos = 0; pos < data.length;) {
    const length = data.readUInt32BE(pos)
    out.push(msgpack.decode(data.subarray(pos + 4, pos + 4 + length), { useBigInt64: true }))
    pos += 4 + length
  }
  return out
}

// the EventLog scenarios of log.test.js

test('seqs are contiguous and the window keeps only the newest events', async (t) => {
  const log = new FileEventLog(5, { path: path.join(tempDir(t), 'a.log') })
  t.after(() => log.close())
  assert.ok(log instanceof EventLog)
  assert.equal(log.append(events(3)), 1)
  assert.equal(log.append(events(4, 4)), 4)
  assert.equal(log.lastSeq, 7)
  assert.equal(log.oldest, 3)
  assert.equal(log.size, 5)
  assert.deepEqual(names(log.since(1)), ['c3', 'c4', 'c5', 'c6', 'c7'])
  assert.deepEqual(names(log.since(6)), ['c6', 'c7'])
})

test('the ring grows past its first allocation and trims in order', async (t) => {
  const log = new FileEventLog(3000, { path: path.join(tempDir(t), 'a.log') })
  t.after(() => log.close())
  for (let i = 0; i < 5; i++) log.append(events(1000, i * 1000 + 1))
  assert.equal(log.size, 3000)
  const kept = names(log.since(0))
  assert.equal(kept[0], 'c2001')
  assert.equal(kept.at(-1), 'c5000')
})

test('resume replays after the cursor; 0 replays everything retained and is no gap', async (t) => {
  const log = new FileEventLog(10, { path: path.join(tempDir(t), 'a.log') })
  t.after(() => log.close())
  log.append(events(8))
  assert.deepEqual(log.backlog(hello(5, log.session)), { resumed: true, base: 5, backlog: log.since(6) })
  const all = log.backlog(hello(0))
  assert.equal(all.resumed, true)
  assert.equal(all.backlog.length, 8)
})

test('a resume the window no longer holds is not resumed and starts at the oldest', async (t) => {
  const log = new FileEventLog(4, { path: path.join(tempDir(t), 'a.log') })
  t.after(() => log.close())
  log.append(events(10))
  const start = log.backlog(hello(2, log.session))
  assert.equal(start.resumed, false)
  assert.equal(start.base, 6)
  assert.equal(start.backlog.length, 4)
  assert.equal(log.backlog(hello(0)).resumed, true)
})

test('another epoch is a gap from the start; a resume above the last seq is 1002', async (t) => {
  const log = new FileEventLog(10, { path: path.join(tempDir(t), 'a.log') })
  t.after(() => log.close())
  log.append(events(3))
  const other = log.backlog(hello(2, 'old-epoch'))
  assert.deepEqual([other.resumed, other.base, other.backlog.length], [false, 0, 3])
  assert.throws(() => log.backlog(hello(4, log.session)), (err) => err instanceof ProtocolError && err.closeCode === 1002)
  const before = log.session
  log.reset()
  assert.notEqual(log.session, before)
  assert.match(log.session, /^[0-9a-f]{32}$/)
  assert.equal(log.lastSeq, 0)
})

// persistence

test('a reopen restores session, lastSeq and events; a resume gets exactly the missing ones', async (t) => {
  const file = path.join(tempDir(t), 'alice.log')
  const log = new FileEventLog(100, { path: file })
  log.append(events(5))
  log.append(events(7, 6))
  const session = log.session
  await log.close()

  const again = new FileEventLog(100, { path: file })
  t.after(() => again.close())
  assert.equal(again.session, session)
  assert.equal(again.lastSeq, 12)
  assert.equal(again.oldest, 1)
  assert.deepEqual(again.since(1), events(12))
  const start = again.backlog(hello(9, session))
  assert.deepEqual(start, { resumed: true, base: 9, backlog: events(3, 10) })
  assert.equal(again.backlog(hello(3, 'another')).resumed, false)
  assert.equal(again.append(events(1, 13)), 13) // and it goes on
  await again.flush()
  assert.equal(readFile(file).length, 1 + 13)
})

test('the file is a header then one msgpack [name, data] record per event', async (t) => {
  const file = path.join(tempDir(t), 'a.log')
  const log = new FileEventLog(10, { path: file })
  log.append([['presence.update', { id: 'x@s.whatsapp.net' }], ['chats.delete', ['c1']]])
  await log.flush()
  const [header, ...records] = readFile(file)
  assert.deepEqual(header, { v: 1, session: log.session, base: 0 })
  assert.deepEqual(records, [['presence.update', { id: 'x@s.whatsapp.net' }], ['chats.delete', ['c1']]])
  await log.close()
})

test('values round-trip exactly, in memory and after a reopen', async (t) => {
  const file = path.join(tempDir(t), 'a.log')
  const proto = {}
  Object.defineProperty(proto, '__proto__', { value: { x: 1 }, enumerable: true, writable: true, configurable: true })
  const data = {
    big: 2n ** 60n,
    negBig: -(2n ** 60n),
    ms: 1733130000123, // past 32 bits: an int64 on disk, a number again
    small: -5,
    float: 3.25,
    bytes: Uint8Array.from([0, 1, 2, 254, 255]),
    empty: new Uint8Array(0),
    nested: { a: [1, [2, { b: null }]], t: true, f: false },
    text: 'héllo 👋 مرحبا 你好',
    none: null,
    proto,
    escapedLike: { '\u0000__proto__': 1 }
  }
  const log = new FileEventLog(10, { path: file })
  log.append([['messages.upsert', data], ['x', null], ['y', 'str']])
  await log.close()
  const again = new FileEventLog(10, { path: file })
  t.after(() => again.close())
  const [[name, back], second, third] = again.since(1)
  assert.equal(name, 'messages.upsert')
  assert.deepEqual(back, data)
  assert.equal(typeof back.big, 'bigint')
  assert.equal(typeof back.ms, 'number')
  assert.equal(Object.getPrototypeOf(back.bytes), Uint8Array.prototype) // not a Buffer
  assert.equal(back.bytes.buffer.byteLength, 5) // its own memory, not a view of the read buffer
  assert.equal(Object.getPrototypeOf(back.proto), Object.prototype)
  assert.deepEqual(Object.keys(back.proto), ['__proto__'])
  assert.deepEqual(back.proto.__proto__, { x: 1 }) // eslint-disable-line no-proto
  assert.deepEqual(Object.keys(back.escapedLike), ['\u0000__proto__'])
  assert.deepEqual([second, third], [['x', null], ['y', 'str']])
})

test('a truncated last record is dropped on reopen and the log goes on from the last good seq', async (t) => {
  const file = path.join(tempDir(t), 'a.log')
  const log = new FileEventLog(100, { path: file })
  const session = log.session
  log.append(events(5))
  await log.close()
  fs.truncateSync(file, fs.statSync(file).size - 3) // a crash mid-write of event 5

  const { logger, seen } = recorder()
  const again = new FileEventLog(100, { path: file, logger })
  assert.equal(seen.warn.length, 1)
  assert.match(seen.warn[0].msg, /truncated or corrupt/)
  assert.equal(again.session, session)
  assert.equal(again.lastSeq, 4)
  assert.deepEqual(again.since(1), events(4))
  assert.deepEqual(again.backlog(hello(2, session)), { resumed: true, base: 2, backlog: events(2, 3) })
  assert.equal(again.append(events(2, 5)), 5)
  await again.close()

  const third = new FileEventLog(100, { path: file, logger })
  t.after(() => third.close())
  assert.equal(seen.warn.length, 1) // nothing more to drop
  assert.equal(third.lastSeq, 6)
  assert.deepEqual(third.since(1), events(6))
})

test('a corrupt tail (garbage, or zeros a crash left) is dropped too', async (t) => {
  const dir = tempDir(t)
  for (const tail of [Buffer.from([0, 0, 0, 3, 0xc1, 0xc1, 0xc1]), Buffer.alloc(64), Buffer.from([0, 0, 0, 2, 0x92, 0x01])]) {
    const file = path.join(dir, `t${tail.length}-${tail[4]}.log`)
    const log = new FileEventLog(100, { path: file })
    log.append(events(3))
    await log.close()
    const good = fs.statSync(file).size
    fs.appendFileSync(file, tail)
    const { logger, seen } = recorder()
    const again = new FileEventLog(100, { path: file, logger })
    assert.equal(seen.warn.length, 1)
    assert.equal(fs.statSync(file).size, good) // cut back to the last good record
    assert.equal(again.lastSeq, 3)
    assert.equal(again.append(events(1, 4)), 4)
    await again.close()
    const third = new FileEventLog(100, { path: file })
    assert.deepEqual(third.since(1), events(4))
    await third.close()
  }
})

test('an unreadable header moves the file aside and starts a new session', async (t) => {
  const dir = tempDir(t)
  const file = path.join(dir, 'a.log')
  fs.writeFileSync(file, Buffer.from([0, 0, 0, 2, 0xc1, 0xc1, 0, 0]))
  const { logger, seen } = recorder()
  const log = new FileEventLog(10, { path: file, logger })
  t.after(() => log.close())
  assert.equal(log.lastSeq, 0)
  assert.equal(seen.warn.length, 1)
  assert.ok(fs.readdirSync(dir).some((name) => name.startsWith('a.log.corrupt-')))
  assert.deepEqual(readFile(file), [{ v: 1, session: log.session, base: 0 }])

  const future = path.join(dir, 'b.log') // another format version is left alone
  const body = msgpack.encode({ v: 2, session: 'abc', base: 0 })
  fs.writeFileSync(future, Buffer.concat([Buffer.from([0, 0, 0, body.length]), body]))
  assert.throws(() => new FileEventLog(10, { path: future }), /format v2/)
  assert.equal(fs.statSync(future).size, 4 + body.length)
})

test('compaction keeps the newest window events; seqs stay right across it and a reopen', async (t) => {
  const file = path.join(tempDir(t), 'a.log')
  const log = new FileEventLog(10, { path: file })
  const session = log.session
  for (let i = 1; i <= 55; i++) {
    assert.equal(log.append(events(1, i)), i)
    if (i % 3 === 0) await log.flush()
    const records = readFile(file)
    assert.ok(records.length - 1 <= 2 * 10 + 3, `file holds ${records.length - 1} events`) // 2 * window (+ a batch not yet written out)
  }
  await log.flush()
  const [header, ...records] = readFile(file)
  assert.equal(header.session, session)
  assert.equal(header.base + records.length, 55) // the base says where the records are
  assert.ok(records.length >= 10 && records.length <= 20)
  assert.deepEqual(records.slice(-10), events(10, 46))
  assert.equal(log.oldest, 46)
  await log.close()

  const again = new FileEventLog(10, { path: file })
  t.after(() => again.close())
  assert.equal(again.session, session)
  assert.equal(again.lastSeq, 55)
  assert.equal(again.oldest, 46)
  assert.deepEqual(again.since(0), events(10, 46))
  assert.deepEqual(again.backlog(hello(50, session)), { resumed: true, base: 50, backlog: events(5, 51) })
  assert.equal(again.backlog(hello(40, session)).resumed, false)
  assert.ok(!fs.existsSync(file + '.tmp'))
})

test('maxBytes bounds the file and the retained events; a reopen retains the same', async (t) => {
  const file = path.join(tempDir(t), 'a.log')
  const event = (i) => ['messages.upsert', { i, text: 'x'.repeat(200) }]
  const log = new FileEventLog(1000, { path: file, maxBytes: 4096 })
  for (let i = 1; i <= 200; i++) {
    log.append([event(i)])
    await log.flush()
    assert.ok(fs.statSync(file).size <= 4096 + 300)
  }
  assert.equal(log.lastSeq, 200)
  assert.ok(log.size < 20 && log.size > 0)
  const retained = log.since(0)
  assert.deepEqual(retained.at(-1), event(200))
  await log.close()
  const again = new FileEventLog(1000, { path: file, maxBytes: 4096 })
  t.after(() => again.close())
  assert.equal(again.lastSeq, 200)
  assert.deepEqual(again.since(0), retained)
})

test('reset starts a new session on disk as well', async (t) => {
  const file = path.join(tempDir(t), 'a.log')
  const log = new FileEventLog(10, { path: file })
  log.append(events(4))
  const before = log.session
  log.reset()
  assert.notEqual(log.session, before)
  assert.equal(log.append(events(2, 100)), 1)
  await log.close()
  const again = new FileEventLog(10, { path: file })
  t.after(() => again.close())
  assert.equal(again.session, log.session)
  assert.equal(again.lastSeq, 2)
  assert.deepEqual(again.since(0), events(2, 100))
  assert.equal(again.backlog(hello(3, before)).resumed, false)
})

test('file mode 0600, directory 0700', { skip: process.platform === 'win32' }, async (t) => {
  const dir = path.join(tempDir(t), 'logs', 'nested')
  const file = path.join(dir, 'alice.log')
  const log = new FileEventLog(2, { path: file })
  log.append(events(10)) // and a compaction's file
  await log.close()
  assert.equal(fs.statSync(file).mode & 0o777, 0o600)
  assert.equal(fs.statSync(dir).mode & 0o777, 0o700)
  assert.equal(fs.statSync(path.dirname(dir)).mode & 0o777, 0o700)
})

test('appends reach the file without flush(); close() is idempotent; appends after it throw', async (t) => {
  const file = path.join(tempDir(t), 'a.log')
  const log = new FileEventLog(10, { path: file, fsyncInterval: 0.01 })
  log.append(events(3))
  await new Promise((resolve) => setTimeout(resolve, 50))
  assert.equal(readFile(file).length, 4)
  const flushes = [log.flush(), log.flush()]
  log.append(events(1, 4))
  flushes.push(log.flush())
  await Promise.all(flushes)
  assert.equal(readFile(file).length, 5)
  const closing = log.close()
  assert.equal(log.close(), closing)
  await closing
  await log.close()
  await log.flush()
  assert.throws(() => log.append(events(1)), /closed/)
  assert.throws(() => log.reset(), /closed/)
})

test('a failing disk never fails append(): flush() rejects, then the file is rebuilt from memory', async (t) => {
  const file = path.join(tempDir(t), 'a.log')
  const { logger, seen } = recorder()
  const log = new FileEventLog(10, { path: file, logger })
  t.after(() => log.close())
  log.append(events(3))
  await log.flush()
  const good = log._fd
  log._fd = fs.openSync(file, 'r') // writes now fail with EBADF
  fs.closeSync(good)
  fs.mkdirSync(file + '.tmp') // and so does a rewrite, while this is in the way
  assert.equal(log.append(events(2, 4)), 4)
  await assert.rejects(log.flush(), { code: 'EISDIR' }) // the write failed, then the rebuild it forced
  assert.deepEqual(seen.error.map(({ obj }) => obj.err.code), ['EBADF', 'EISDIR'])
  assert.equal(log.append(events(1, 6)), 6) // memory goes on
  await assert.rejects(log.flush(), { code: 'EISDIR' })
  fs.rmdirSync(file + '.tmp')
  log.append(events(1, 7))
  await log.flush()
  assert.ok(seen.warn.some(({ msg }) => /rebuilt/.test(msg)))
  const [header, ...records] = readFile(file)
  assert.equal(header.base, 0)
  assert.deepEqual(records, events(7))
  log.append(events(1, 8))
  await log.flush()
  assert.deepEqual(readFile(file).slice(1), events(8))
})

test('bad input throws before any change', async (t) => {
  const log = new FileEventLog(10, { path: path.join(tempDir(t), 'a.log') })
  t.after(() => log.close())
  assert.throws(() => log.append([['ok', 1], 'not an event']), TypeError)
  assert.throws(() => log.append([['ok', 1], ['fn', { f: () => 1 }]]), /Unrecognized object/) // msgpack cannot take it
  assert.equal(log.lastSeq, 0)
  assert.throws(() => new FileEventLog(0, { path: path.join(os.tmpdir(), 'x.log') }), /replayWindow/)
  assert.throws(() => new FileEventLog(10, {}), /path/)
})

test('nothing flush() resolved for is lost when the process is SIGKILLed', async (t) => {
  const file = path.join(tempDir(t), 'a.log')
  const script = `
    const { FileEventLog } = require(${JSON.stringify(path.resolve(__dirname, '../lib/filelog.js'))})
    const log = new FileEventLog(1000, { path: ${JSON.stringify(file)}, fsyncInterval: 10 })
    ;(async () => {
      for (let i = 1; i <= 200; i++) {
        log.append([['messages.upsert', { i, text: 'm' + i }]])
        if (i % 20 === 0) await log.flush()
      }
      process.stdout.write('flushed ' + log.session + ' ' + log.lastSeq + '\\n')
      let i = 200
      setInterval(() => log.append([['messages.upsert', { i: ++i, text: 'm' + i }]]), 1) // unflushed, until killed
    })()
  `
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] })
  const line = await new Promise((resolve, reject) => {
    let out = ''
    child.stdout.on('data', (chunk) => {
      out += chunk
      if (out.includes('\n')) resolve(out.trim())
    })
    child.on('exit', (code) => reject(new Error(`child exited with ${code}`)))
  })
  await new Promise((resolve) => setTimeout(resolve, 30))
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve(signal)))
  child.kill('SIGKILL')
  assert.equal(await exited, 'SIGKILL')
  const [, session, flushed] = line.split(' ')
  assert.equal(flushed, '200')

  const log = new FileEventLog(1000, { path: file })
  t.after(() => log.close())
  assert.equal(log.session, session)
  assert.ok(log.lastSeq >= 200, `lastSeq ${log.lastSeq}`)
  const got = log.since(1)
  assert.equal(got.length, log.lastSeq)
  got.forEach(([, data], i) => assert.deepEqual(data, { i: i + 1, text: 'm' + (i + 1) }))
})

test('bytes per event on disk for realistic small events, which read back', async (t) => {
  const file = path.join(tempDir(t), 'a.log')
  const log = new FileEventLog(100000, { path: file })
  const jid = (n) => `4915${String(1234567 + n).padStart(9, '0')}@s.whatsapp.net`
  const made = []
  for (let i = 0; i < 300; i++) {
    switch (i % 3) {
      case 0:
        made.push(['messages.upsert', {
          messages: [{
            key: { remoteJid: jid(i % 17), fromMe: i % 2 === 0, id: `3EB0${(i * 7919).toString(16).toUpperCase().padStart(16, '0')}` },
            messageTimestamp: 1733130000 + i,
            pushName: 'Alice',
            message: { conversation: `hello number ${i}, see you at 5?` }
          }],
          type: 'notify'
        }])
        break
      case 1:
        made.push(['presence.update', { id: jid(i % 17), presences: { [jid(i % 17)]: { lastKnownPresence: 'composing' } } }])
        break
      default:
        made.push(['messages.update', [{ key: { remoteJid: jid(i % 17), fromMe: true, id: `3EB0${i}` }, update: { status: 3 } }]])
    }
  }
  for (const event of made) log.append([event])
  await log.close()
  const header = 4 + msgpack.encode({ v: 1, session: log.session, base: 0 }).length
  const perEvent = (fs.statSync(file).size - header) / made.length
  console.log(`filelog: ${perEvent.toFixed(1)} bytes per event on disk (${made.length} events: messages.upsert, presence.update, messages.update)`)
  assert.ok(perEvent < 300)

  const again = new FileEventLog(100000, { path: file })
  t.after(() => again.close())
  assert.deepEqual(again.since(0), made)
})
