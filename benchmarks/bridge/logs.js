'use strict'
// Event logs of the bridge: the Redis log (a fleet's, lib/redislog.js) against the file
// log (the embedded default, lib/filelog.js), interleaved in one run, and what an
// account's log costs in Redis memory.
//
//   node benchmarks/bridge/logs.js [--events 20000] [--rounds 3] [--accounts 50]
//
// Needs redis-server on PATH (started here on a free loopback port, persistence off).
const { spawn } = require('node:child_process')
const fs = require('node:fs')
const net = require('node:net')
const os = require('node:os')
const path = require('node:path')
const { parseArgs } = require('node:util')

const bridge = path.join(__dirname, '..', '..', 'bridge')
const { FileEventLog } = require(path.join(bridge, 'lib', 'filelog'))
const { RedisEventLog } = require(path.join(bridge, 'lib', 'redislog'))
const { closeClient, createClient } = require(path.join(bridge, 'lib', 'redis'))

const { values } = parseArgs({ options: { events: { type: 'string', default: '20000' }, rounds: { type: 'string', default: '3' }, accounts: { type: 'string', default: '50' } } })
const EVENTS = Number(values.events)
const ROUNDS = Number(values.rounds)
const ACCOUNTS = Number(values.accounts)

/** An incoming text message as Baileys emits it (~400 bytes of msgpack). */
const upsert = (i) => ['messages.upsert', {
  type: 'notify',
  messages: [{
    key: { remoteJid: `55119${String(i % 1000).padStart(8, '0')}@s.whatsapp.net`, fromMe: false, id: `3EB0${i.toString(16).padStart(16, '0')}` },
    message: { extendedTextMessage: { text: `message ${i} `.repeat(12), contextInfo: { expiration: 0 } } },
    messageTimestamp: 1700000000 + i,
    pushName: 'A contact'
  }]
}]

async function freePort () {
  return new Promise((resolve) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
}

async function timeLog (log, batch) {
  const started = process.hrtime.bigint()
  for (let i = 0; i < EVENTS; i += batch) log.append(Array.from({ length: Math.min(batch, EVENTS - i) }, (_, j) => upsert(i + j)))
  await log.flush()
  return Number(process.hrtime.bigint() - started) / 1e9
}

async function main () {
  const port = await freePort()
  const redisServer = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' })
  const url = `redis://127.0.0.1:${port}/0`
  const redis = createClient(url)
  for (let i = 0; i < 100; i++) { try { await redis.ping(); break } catch { await new Promise((resolve) => setTimeout(resolve, 50)) } }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'logs-bench-'))
  try {
    const rows = []
    for (let round = 1; round <= ROUNDS; round++) {
      for (const batch of [1, 100]) {
        const file = new FileEventLog(EVENTS, { path: path.join(dir, `r${round}-${batch}.log`) })
        const fileSeconds = await timeLog(file, batch)
        await file.close()
        await redis.incr(`bench:{r${round}-${batch}}:fence`)
        const red = await RedisEventLog.open(redis, { account: `r${round}-${batch}`, token: 1, prefix: 'bench', window: EVENTS })
        const redisSeconds = await timeLog(red, batch)
        await red.close()
        rows.push({ round, batch, file: Math.round(EVENTS / fileSeconds), redis: Math.round(EVENTS / redisSeconds), ratio: +(fileSeconds / redisSeconds).toFixed(2) })
      }
    }
    console.log('events/s appended and durable (file: written + fsynced; redis: acknowledged by Redis)')
    console.table(rows)
    await redis.flushall()
    const before = Number((await redis.info('memory')).match(/used_memory:(\d+)/)[1])
    const perAccount = 1000
    let encoded = 0
    for (let a = 0; a < ACCOUNTS; a++) {
      await redis.incr(`bench:{m${a}}:fence`)
      const log = await RedisEventLog.open(redis, { account: `m${a}`, token: 1, prefix: 'bench', window: perAccount })
      const events = Array.from({ length: perAccount }, (_, i) => upsert(i))
      encoded += events.reduce((sum, e) => sum + require(path.join(bridge, 'lib', 'filelog')).encodeBody(e).length, 0)
      log.append(events)
      await log.close()
    }
    const after = Number((await redis.info('memory')).match(/used_memory:(\d+)/)[1])
    const bytes = after - before
    console.log(`Redis memory: ${ACCOUNTS} accounts x ${perAccount} retained events = ${(bytes / 1048576).toFixed(1)} MiB; ` +
      `${Math.round(bytes / ACCOUNTS / 1024)} KiB per account, ${Math.round(bytes / ACCOUNTS / perAccount)} B per event ` +
      `(${Math.round(encoded / ACCOUNTS / perAccount)} B of msgpack each: ${(bytes / encoded).toFixed(2)}x)`)
  } finally {
    await closeClient(redis)
    redisServer.kill('SIGKILL')
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

main().catch((err) => { console.error(err); process.exit(1) })
