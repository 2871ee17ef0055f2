'use strict'
// The account side with a stand-in for the `baileys` package (no WhatsApp account is
// reachable from the test machines): the config-file mode of bin/rsocket-bridge.js and
// examples/one-account.js start, attach their sockets, keep creds local, reconnect a
// closed socket onto the same log, and stop on a signal.
const test = require('node:test')
const assert = require('node:assert/strict')
const { spawn } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const msgpack = require('@msgpack/msgpack')
const WebSocket = require('ws')

const ROOT = path.resolve(__dirname, '..')

// The real baileys (the bridge's dependency) with makeWASocket replaced: an `ev` with
// process/on/emit that emits a chat and creds, records itself in STUB_LOG so the test can
// count (re)connects, and closes (428) the first time. fetchLatestBaileysVersion answers
// at once (no network here).
const REAL = require.resolve('baileys', { paths: [ROOT] })
const STUB = `
import fs from 'fs'
import { EventEmitter } from 'events'
export * from ${JSON.stringify(REAL)}
const record = (line) => fs.appendFileSync(process.env.STUB_LOG, line + '\\n')
export const fetchLatestBaileysVersion = async () => ({ version: [2, 3000, 1], isLatest: true })
export const makeWASocket = (config) => {
  const emitter = new EventEmitter()
  const ev = {
    process (handler) { emitter.on('event', handler); return () => emitter.off('event', handler) },
    on (name, fn) { emitter.on('event', (map) => { if (name in map) fn(map[name]) }) },
    emit (name, data) { emitter.emit('event', { [name]: data }) }
  }
  const n = fs.readFileSync(process.env.STUB_LOG, 'utf8').split('\\n').filter((l) => l.startsWith('socket')).length + 1
  record('socket ' + n + ' ' + (config.markOnlineOnConnect === false ? 'offline' : 'online'))
  setTimeout(() => {
    config.auth.creds.me = { id: 'secret-key-material' }
    ev.emit('creds.update', { me: config.auth.creds.me })
    ev.emit('chats.upsert', [{ id: 'chat' + n + '@s.whatsapp.net' }])
    if (n === 1) {
      const error = Object.assign(new Error('Connection Closed'), { output: { statusCode: 428 } })
      ev.emit('connection.update', { connection: 'close', lastDisconnect: { error, date: new Date() } })
    }
  }, 50)
  return { ev, end () {} }
}
export default makeWASocket
`

function stubBaileys () {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rsocket-bridge-'))
  const pkg = path.join(dir, 'node_modules', 'baileys')
  fs.mkdirSync(pkg, { recursive: true })
  fs.writeFileSync(path.join(pkg, 'package.json'), '{"name": "baileys", "type": "module", "main": "index.js"}')
  fs.writeFileSync(path.join(pkg, 'index.js'), STUB)
  const log = path.join(dir, 'stub.log')
  fs.writeFileSync(log, '')
  return { dir, log, lines: () => fs.readFileSync(log, 'utf8').split('\n').filter(Boolean) }
}

/** Start `args` with node; resolves {child, url} once `pattern` shows the url on `stream`. */
function start (args, { cwd, env, stream, pattern }) {
  const child = spawn(process.execPath, args, { cwd, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  return new Promise((resolve, reject) => {
    let seen = ''
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`not listening after 10 s:\n${seen}`))
    }, 10000)
    child[stream].on('data', (chunk) => {
      seen += chunk
      const match = seen.match(pattern)
      if (match) {
        clearTimeout(timer)
        resolve({ child, url: match[1] })
      }
    })
    child.on('exit', (code) => reject(new Error(`exited ${code} before listening:\n${seen}`)))
  })
}

async function until (predicate, what, timeout = 10000) {
  const deadline = Date.now() + timeout
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

/** hello on a new connection; the events of its backlog. */
async function backlog (url, tenant, token) {
  const ws = new WebSocket(url, 'rsocket.v1.msgpack')
  const frames = []
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject) })
  const done = new Promise((resolve) => ws.on('message', (data) => {
    const frame = msgpack.decode(data)
    frames.push(frame)
    if (frame.op === 'offline' || frame.op === 'failure') resolve()
  }))
  ws.send(msgpack.encode({ op: 'hello', tenant, token, resume: 0, epoch: '' }))
  await done
  ws.close()
  assert.equal(frames[0].op, 'ready', JSON.stringify(frames[0]))
  return frames.flatMap((f) => f.op === 'event' ? [[f.name, f.data]] : f.op === 'batch' ? f.events.map((e) => [e.name, e.data]) : [])
}

async function stop (child) {
  const exited = new Promise((resolve) => child.on('exit', (code) => resolve(code)))
  child.kill('SIGTERM')
  assert.equal(await exited, 0)
}

test('rsocket-bridge CONFIG: one socket per account, reconnected onto the same log, creds kept local', async () => {
  const stub = stubBaileys()
  fs.writeFileSync(path.join(stub.dir, 'bridge.json'), JSON.stringify({
    port: 0, accounts: { alice: { token: 'a-token', auth: 'auth/alice' }, bob: { token: 'b-token' } }
  }))
  const { child, url } = await start([path.join(ROOT, 'bin', 'rsocket-bridge.js'), 'bridge.json'], {
    cwd: stub.dir, env: { STUB_LOG: stub.log }, stream: 'stderr', pattern: /"msg":"bridge ready","url":"(ws:[^"]+)"/
  })
  try {
    // alice's first socket closes (428): a new one is made and attached after ~1 s
    await until(() => stub.lines().filter((l) => l.startsWith('socket')).length === 3, 'the reconnect')
    assert.ok(stub.lines().every((l) => !l.startsWith('socket') || l.endsWith('offline'))) // markOnlineOnConnect: false
    const creds = path.join(stub.dir, 'auth', 'alice', 'creds.json')
    await until(() => fs.existsSync(creds) && fs.readFileSync(creds, 'utf8').includes('secret-key-material'), 'creds saved')
    assert.equal(fs.statSync(creds).mode & 0o777, 0o600)
    assert.equal(fs.statSync(path.dirname(creds)).mode & 0o777, 0o700)
    let events
    const chats = () => events.filter(([name]) => name === 'chats.upsert').map(([, data]) => data[0].id)
    for (let i = 0; i < 100 && (!events || chats().length < 2); i++) events = await backlog(url, 'alice', 'a-token')
    const names = events.map(([name]) => name)
    assert.ok(!names.includes('creds.update'), names)
    assert.deepEqual(chats(), ['chat1@s.whatsapp.net', 'chat3@s.whatsapp.net']) // both sockets, one log
    assert.ok(names.includes('connection.update'))
    assert.ok(fs.existsSync(path.join(stub.dir, 'auth', 'bob', 'creds.json')))
    assert.deepEqual((await backlog(url, 'bob', 'b-token')).map(([name]) => name), ['chats.upsert'])
  } finally {
    await stop(child)
  }
})

test('examples/one-account.js runs as written', async () => {
  const stub = stubBaileys()
  const { child, url } = await start([path.join(ROOT, 'examples', 'one-account.js')], {
    cwd: stub.dir,
    env: { STUB_LOG: stub.log, RSOCKET_TOKEN: 'secret', RSOCKET_PORT: '0', NODE_PATH: path.join(stub.dir, 'node_modules') },
    stream: 'stdout',
    pattern: /serving alice on (ws:\S+)/
  })
  try {
    await until(() => stub.lines().filter((l) => l.startsWith('socket')).length === 2, 'the reconnect')
    let ids = []
    for (let i = 0; i < 100 && ids.length < 2; i++) {
      ids = (await backlog(url, 'alice', 'secret')).filter(([name]) => name === 'chats.upsert').map(([, d]) => d[0].id)
    }
    assert.deepEqual(ids, ['chat1@s.whatsapp.net', 'chat2@s.whatsapp.net'])
  } finally {
    const exited = new Promise((resolve) => child.on('exit', resolve))
    child.kill('SIGINT')
    assert.equal(await exited, 0)
  }
})
