'use strict'
// An account's login and disconnect policy against a stand-in makeWASocket that plays the
// connection.update sequences WhatsApp produces (no account, no network: every other part
// of baileys is the real one, the auth folder is real).
const test = require('node:test')
const assert = require('node:assert/strict')
const { spawn } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { Account } = require('../lib/account')
const { useAuthFolder } = require('../lib/auth')
const { standIn } = require('./stand-in')

const boom = (statusCode) => Object.assign(new Error(`status ${statusCode}`), { output: { statusCode } })
const close = (code) => ({ connection: 'close', lastDisconnect: { error: boom(code), date: new Date() } })
const OPEN = { connection: 'open' }

function fakeBridge () {
  return { attached: [], ended: [], attach (name, sock) { this.attached.push(sock) }, detach () {}, end (name, code, reason) { this.ended.push([code, reason]) } }
}

async function run (script, options = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rsocket-account-'))
  const { mod, made, fetches } = await standIn(script)
  const bridge = fakeBridge()
  const lines = []
  const account = new Account({
    name: 'alice',
    baileys: mod,
    auth: path.join(dir, 'auth'),
    qrFile: path.join(dir, 'auth', 'qr.png'),
    qrTerminal: false,
    bridge,
    backoff: [0.01, 0.02],
    log: (level, fields, msg) => lines.push({ level, msg, ...fields }),
    ...options
  })
  await account.start()
  return { account, made, bridge, lines, dir, fetches }
}

const until = async (predicate, what) => {
  for (let i = 0; i < 500 && !predicate(); i++) await new Promise((resolve) => setTimeout(resolve, 10))
  assert.ok(predicate(), `timed out waiting for ${what}`)
}

test('QR, then the restart after pairing (515) at once, then open; the QR is a 0600 PNG, never logged', async () => {
  const { account, made, lines, dir } = await run([[{ qr: '2@abc,def' }, close(515)], [OPEN]])
  await until(() => account.state === 'open', 'open')
  assert.equal(made.length, 2)
  assert.ok(made[0].ended) // the old socket ended before the new one
  assert.equal(made[1].config.markOnlineOnConnect, false)
  assert.deepEqual(made[1].config.version, [2, 3000, 1])
  const png = path.join(dir, 'auth', 'qr.png')
  assert.equal(fs.statSync(png).mode & 0o777, 0o600)
  assert.deepEqual([...fs.readFileSync(png).subarray(1, 4)].map((c) => String.fromCharCode(c)).join(''), 'PNG')
  assert.ok(!JSON.stringify(lines).includes('2@abc'))
  assert.ok(!lines.some((l) => l.msg.includes('reconnecting') && l.level === 'warn')) // no backoff
  await account.stop()
})

test('a pairing code instead of a QR when a number is configured, asked for once', async () => {
  const { account, made } = await run([[{ qr: 'x' }, { qr: 'y' }, OPEN]], { pairingNumber: '+55 11 90000-0001' })
  await until(() => account.state === 'open', 'open')
  assert.deepEqual(made[0].paired, ['5511900000001'])
  assert.ok(!fs.existsSync(account.qrFile))
  await account.stop()
})

test('405: the WhatsApp Web version is fetched again, then a reconnect', async () => {
  const { account, made, fetches } = await run([[close(405)], [OPEN]])
  await until(() => account.state === 'open', 'open')
  assert.equal(fetches(), 2)
  assert.deepEqual(made[1].config.version, [2, 3000, 2])
  await account.stop()
})

for (const [code, reason] of [[401, /logged out/], [403, /banned/], [500, /bad session/]]) {
  test(`${code} ends the account: its bots get failure{${code}}, no reconnect`, async () => {
    const { account, made, bridge } = await run([[close(code)]])
    await until(() => account.state === 'ended', 'the end')
    assert.equal(bridge.ended.length, 1)
    assert.equal(bridge.ended[0][0], code)
    assert.match(bridge.ended[0][1], reason)
    assert.equal(made.length, 1)
    await account.stop()
  })
}

test('a 401 right after the post-pairing restart says the login did not complete', async () => {
  const { account, bridge } = await run([[{ qr: 'q' }, close(515)], [close(401)]])
  await until(() => account.state === 'ended', 'the end')
  assert.equal(bridge.ended[0][0], 401)
  assert.match(bridge.ended[0][1], /login did not complete/)
  await account.stop()
})

test('repeated 440s end the account instead of two processes flapping', async () => {
  const { account, made, bridge } = await run([[close(440)], [close(440)], [close(440)], [OPEN]], { replacedLimit: 3 })
  await until(() => account.state === 'ended', 'the end')
  assert.equal(made.length, 3)
  assert.equal(bridge.ended[0][0], 440)
})

test('a second process on the same auth folder is refused', async () => {
  const { account, dir } = await run([[OPEN]])
  const other = new Account({ name: 'alice', baileys: account.baileys, auth: path.join(dir, 'auth'), log () {} })
  const child = spawn(process.execPath, ['-e', `
    const { useAuthFolder } = require(${JSON.stringify(path.join(__dirname, '..', 'lib', 'auth.js'))})
    import('baileys').then((b) => useAuthFolder(${JSON.stringify(path.join(dir, 'auth'))}, b))
      .then(() => process.exit(0), (err) => { console.error(err.name); process.exit(3) })`], { cwd: path.join(__dirname, '..'), stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  child.stderr.on('data', (d) => { stderr += d })
  assert.equal(await new Promise((resolve) => child.on('exit', resolve)), 3)
  assert.match(stderr, /AuthLockedError/)
  assert.ok(other)
  await account.stop()
})

test('a rejection inside Baileys restarts that account only; the process goes on', async () => {
  // in a child process: the test runner itself fails a test on an unhandled rejection
  const child = spawn(process.execPath, ['-e', `
    const { EventEmitter } = require('events')
    const { Account, guardProcess } = require(${JSON.stringify(path.join(__dirname, '..', 'lib', 'account.js'))})
    guardProcess((level, fields, msg) => console.log(JSON.stringify({ level, msg, ...fields })))
    import('baileys').then(async (real) => {
      let made = 0
      const makeWASocket = () => {
        const emitter = new EventEmitter()
        const n = ++made
        const ev = { on: (name, fn) => emitter.on(name, fn), process: () => () => {}, emit: (n, d) => emitter.emit(n, d) }
        setImmediate(() => {
          ev.emit('connection.update', { connection: 'open' })
          if (n === 1) Promise.reject(new Error('inside baileys')) // nobody handles it
          else setTimeout(() => { console.log(JSON.stringify({ msg: 'sockets', made })); process.exit(0) }, 50)
        })
        return { ev, end () {}, user: { id: 'me' } }
      }
      const dir = require('fs').mkdtempSync(require('path').join(require('os').tmpdir(), 'rsocket-guard-'))
      const account = new Account({ name: 'alice', auth: dir, baileys: { ...real, makeWASocket }, version: [2, 1, 1], backoff: [0.01, 0.02], log: () => {} })
      await account.start()
    })`], { cwd: path.join(__dirname, '..'), stdio: ['ignore', 'pipe', 'inherit'] })
  let out = ''
  child.stdout.on('data', (d) => { out += d })
  assert.equal(await new Promise((resolve) => child.on('exit', resolve)), 0)
  const lines = out.trim().split('\n').map((l) => JSON.parse(l))
  const rejection = lines.find((l) => l.msg === 'unhandled rejection')
  assert.equal(rejection.tenant, 'alice')
  assert.match(rejection.err, /inside baileys/)
  assert.deepEqual(lines.at(-1), { msg: 'sockets', made: 2 }) // restarted, still running
})

test('SIGKILL during creds writes leaves creds.json whole', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rsocket-auth-'))
  const child = spawn(process.execPath, ['-e', `
    const { useAuthFolder } = require(${JSON.stringify(path.join(__dirname, '..', 'lib', 'auth.js'))})
    import('baileys').then(async (b) => {
      const auth = await useAuthFolder(${JSON.stringify(dir)}, b)
      auth.state.creds.filler = 'x'.repeat(1 << 20) // a write that takes a while
      await auth.saveCreds()
      console.log('saved')
      for (let i = 0; ; i++) { auth.state.creds.n = i; await auth.saveCreds() }
    })`], { cwd: path.join(__dirname, '..'), stdio: ['ignore', 'pipe', 'inherit'] })
  await new Promise((resolve) => child.stdout.once('data', resolve))
  await new Promise((resolve) => setTimeout(resolve, 100)) // writes under way
  child.kill('SIGKILL')
  await new Promise((resolve) => child.on('exit', resolve))
  const creds = JSON.parse(fs.readFileSync(path.join(dir, 'creds.json'), 'utf8'))
  assert.equal(creds.filler.length, 1 << 20)
  assert.equal(fs.statSync(path.join(dir, 'creds.json')).mode & 0o777, 0o600)
  const again = await useAuthFolder(dir, await import('baileys')) // a stale lock and temp files are cleaned
  assert.ok(!fs.readdirSync(dir).some((f) => f.endsWith('.tmp')))
  await again.close()
})

test("Baileys' real makeWASocket against a loopback WhatsApp stand-in: reconnects, folder locked", async () => {
  // The real socket (noise handshake, its own event buffer) dials a local WebSocket server
  // in place of web.whatsapp.com, which hangs up: the account reconnects with backoff.
  const { WebSocketServer } = require('ws')
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 })
  await new Promise((resolve) => wss.once('listening', resolve))
  const handshakes = []
  wss.on('connection', (ws) => ws.once('message', (data) => { handshakes.push(data.length); ws.close() }))
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rsocket-real-'))
  const baileys = await import('baileys')
  const bridge = fakeBridge()
  const account = new Account({
    name: 'alice',
    baileys,
    auth: path.join(dir, 'auth'),
    bridge,
    version: [2, 3000, 1],
    socket: { waWebSocketUrl: `ws://127.0.0.1:${wss.address().port}/ws/chat`, connectTimeoutMs: 5000 },
    backoff: [0.05, 0.1],
    qrTerminal: false,
    log () {}
  })
  try {
    await account.start()
    await until(() => handshakes.length >= 2 && bridge.attached.length >= 2, 'a reconnect of the real socket')
    assert.ok(handshakes[0] > 0) // Baileys' noise hello reached the stand-in
    assert.equal(account.state, 'connecting') // no end: a hang-up is retried
    assert.equal(fs.statSync(path.join(dir, 'auth')).mode & 0o777, 0o700)
    assert.equal(fs.readFileSync(path.join(dir, 'auth', '.lock'), 'utf8'), String(process.pid))
  } finally {
    await account.stop()
    wss.close()
  }
  assert.ok(!fs.existsSync(path.join(dir, 'auth', '.lock'))) // released on stop
})
