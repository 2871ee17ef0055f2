#!/usr/bin/env node
'use strict'
// rsocket-bridge: serve Baileys accounts over rsocket.v1.
//
//   rsocket-bridge bridge.json          one makeWASocket per account of the config file
//   rsocket-bridge link bridge.json ACCOUNT
//                                       log one account in (QR or pairing code) and exit
//   rsocket-bridge --test-source --baileys DIR [--port 0] [--tenants JSON] [--replay-window N]
//                                       no account: Baileys' own event buffer as each
//                                       tenant's `ev`, driven by JSON lines on stdin
//                  [--redis URL [--prefix P] [--lease-ttl S] [--capacity N] [--bridge-id ID]]
//                                       one bridge of a fleet: accounts by lease, their
//                                       events from a Redis upstream (lib/test-upstream.js)
//
// bridge.json: {"host": "127.0.0.1", "port": 8765, "replayWindow": 100000,
//               "accounts": {"alice": {"token": "...", "auth": "auth/alice", "pairingNumber": "5511..."}},
//               "redis": {"url": "redis://127.0.0.1:6379/0", "publicUrl": "ws://10.0.0.5:8765"}}
//   with "redis", the bridge is one of a fleet sharing the accounts (docs/FLEET.md): leases,
//   auth state and event logs in Redis.
// or bridge.config.js (module.exports = {...}) where makeWASocket options may be functions.

const path = require('path')
const readline = require('readline')
const { parseArgs } = require('util')

const { Account, Bounded, guardProcess, loadBaileys } = require('../lib/account')
const { createBridge } = require('../lib/bridge')
const { Fleet } = require('../lib/fleet')
const { Leases, defaultBridgeId } = require('../lib/leases')
const { DEFAULT_PREFIX, closeClient, createClient } = require('../lib/redis')
const { useRedisAuth } = require('../lib/redisauth')

const USAGE = `usage: rsocket-bridge CONFIG.json|CONFIG.js
       rsocket-bridge link CONFIG.json ACCOUNT   log one account in, save its keys, exit
       rsocket-bridge --test-source --baileys DIR [--host H] [--port P] [--tenants JSON]
                      [--replay-window N] [--batch-size N] [--max-outbound N] [--ping-interval S]
                      [--log-dir DIR] [--guard JSON]
                      [--redis URL [--prefix P] [--lease-ttl S] [--capacity N] [--bridge-id ID]]`

function fail (message) {
  process.stderr.write(`rsocket-bridge: ${message}\n${USAGE}\n`)
  process.exit(2)
}

function log (level, fields, message) {
  process.stderr.write(JSON.stringify({ level, msg: message, ...fields }) + '\n')
}

const stderrLogger = {
  info: (fields, message) => log('info', fields, message),
  warn: (fields, message) => log('warn', fields, message),
  error: (fields, message) => log('error', { ...fields, err: String(fields.err?.stack || fields.err || '') }, message)
}
const quietLogger = { info () {}, warn: stderrLogger.warn, error: stderrLogger.error }

function intOption (values, name, fallback) {
  if (values[name] === undefined) return fallback
  const n = Number(values[name])
  if (!Number.isFinite(n)) fail(`--${name} must be a number, got ${values[name]}`)
  return n
}

function onShutdown (close) {
  let closing = false
  const stop = async () => {
    if (closing) return
    closing = true
    await close()
    process.exit(0)
  }
  const signal = () => closing ? process.exit(1) : stop() // a second signal: now
  process.on('SIGTERM', signal)
  process.on('SIGINT', signal)
  return stop
}

// -- production: one Baileys socket per account ------------------------------------

/** A JSON config, or a JS one (`module.exports = {...}`) whose options may be functions. */
async function loadConfig (file) {
  const resolved = path.resolve(file)
  if (/\.(c?js)$/.test(resolved)) return require(resolved)
  if (resolved.endsWith('.mjs')) return (await import(require('url').pathToFileURL(resolved).href)).default
  return JSON.parse(require('fs').readFileSync(resolved, 'utf8'))
}

function accountOptions (config, configFile, name, account, baileys, extra) {
  const base = path.dirname(path.resolve(configFile))
  const auth = path.resolve(base, account.auth || `auth/${name}`)
  return {
    name,
    baileys,
    auth,
    socket: { ...(config.socket || {}), ...(account.socket || {}) },
    version: account.version || config.version || null,
    pairingNumber: account.pairingNumber || null,
    qrFile: path.join(auth, 'qr.png'),
    replacedLimit: config.replacedLimit,
    replacedWindow: config.replacedWindow,
    log,
    ...extra
  }
}

async function runAccounts (configFile) {
  const config = await loadConfig(configFile)
  const accounts = config.accounts || {}
  if (!Object.keys(accounts).length) fail(`${configFile}: no "accounts"`)
  const baileys = await loadBaileys().catch((err) => fail(`cannot load baileys: ${err.message}`))
  guardProcess(log)
  const groups = new Bounded(1000)
  const redis = config.redis ? checkRedis(config.redis, configFile) : null
  const bridge = await createBridge({
    host: config.host ?? '127.0.0.1',
    port: config.port ?? 8765,
    replayWindow: config.replayWindow,
    tenants: Object.fromEntries(Object.entries(accounts).map(([name, a]) => [name, a.token])),
    // durable by default: on disk, or in Redis for a fleet
    logDir: redis ? null : path.resolve(path.dirname(path.resolve(configFile)), config.logDir || 'logs'),
    fleet: Boolean(redis),
    baileys,
    groupCache: groups,
    guard: config.guard, // limits on failed hellos and idle connections (lib/guard.js)
    logger: stderrLogger
  })
  if (redis) {
    return runFleet(bridge, redis, (name, token, client) => {
      const acc = new Account(accountOptions(config, configFile, name, accounts[name], baileys, {
        bridge, groups, authState: () => useRedisAuth(client, { prefix: redis.prefix, account: name, token }, baileys)
      }))
      return acc.start().then(() => () => acc.stop(), async (err) => { await acc.stop(); throw err })
    })
  }
  const running = []
  onShutdown(async () => {
    await Promise.allSettled(running.map((account) => account.stop())) // auth writes flushed
    await bridge.close()
  })
  for (const [name, account] of Object.entries(accounts)) {
    const acc = new Account(accountOptions(config, configFile, name, account, baileys, { bridge, groups }))
    running.push(acc)
    acc.start().catch((err) => { // a locked or corrupt auth folder: this account only
      log('error', { tenant: name, err: String(err?.message || err) }, 'account not started')
      bridge.end(name, 500, String(err?.message || err))
    })
  }
  log('info', { url: bridge.url, accounts: Object.keys(accounts) }, 'bridge ready')
}

/** The config's `redis` section, checked: {url, prefix, ttl, capacity, id, publicUrl, logBytes}. */
function checkRedis (section, where) {
  const { url, prefix = DEFAULT_PREFIX, ttl = 15, capacity = Infinity, id, publicUrl, logBytes = 16 * 1024 * 1024 } = typeof section === 'string' ? { url: section } : section
  if (typeof url !== 'string') fail(`${where}: redis.url must be a redis:// URL`)
  if (!(Number(ttl) > 0)) fail(`${where}: redis.ttl must be seconds > 0, got ${ttl}`)
  if (!(Number(capacity) >= 1)) fail(`${where}: redis.capacity must be >= 1, got ${capacity}`)
  if (!(Number.isSafeInteger(logBytes) && logBytes >= 1024)) fail(`${where}: redis.logBytes must be an integer >= 1024, got ${logBytes}`)
  return { url, prefix, ttl: Number(ttl), capacity: Number(capacity), id: id || defaultBridgeId(), publicUrl, logBytes }
}

/**
 * Serve as one bridge of a fleet: accounts by lease (lib/fleet.js); `start(name, token,
 * client, valid)` starts one and resolves to its stop function.
 */
async function runFleet (bridge, redis, start, { onClose = () => {}, logger = stderrLogger } = {}) {
  const client = createClient(redis.url, { timeout: Math.max(0.25, redis.ttl / 6) })
  const fleet = new Fleet({
    bridge,
    redis: client,
    prefix: redis.prefix,
    ttl: redis.ttl,
    capacity: redis.capacity,
    id: redis.id,
    url: redis.publicUrl,
    logBytes: redis.logBytes,
    logger,
    startAccount: (name, token, valid) => start(name, token, client, valid)
  })
  const stop = onShutdown(async () => {
    await fleet.close() // accounts stopped, logs written, leases released
    onClose()
    await bridge.close()
    await closeClient(client)
  })
  await fleet.start()
  logger.info({ url: bridge.url, bridge: fleet.id, accounts: bridge.tenants.size, serving: [...fleet.running.keys()] }, 'fleet bridge ready')
  return { fleet, stop }
}

/**
 * A fleet's account is linked under its lease (no bridge of the fleet may run it
 * meanwhile), its keys written to Redis: `{leases, authState, close()}`.
 */
async function linkLease (redis, name, baileys) {
  const client = createClient(redis.url, { timeout: Math.max(0.25, redis.ttl / 6) })
  const leases = new Leases(client, { prefix: redis.prefix, id: `link:${redis.id}`, ttl: redis.ttl, publish: false })
  const token = await leases.take(name)
  if (!token) {
    await closeClient(client)
    fail(`${name} is served by a bridge of the fleet now: its QR code is shown there (or stop the fleet first)`)
  }
  const renew = setInterval(() => leases.renewAll().catch(() => {}), redis.ttl * 1000 / 3)
  return {
    leases,
    authState: () => useRedisAuth(client, { prefix: redis.prefix, account: name, token }, baileys),
    async close () {
      clearInterval(renew)
      await leases.release(name).catch(() => {})
      await closeClient(client)
    }
  }
}

/** `link CONFIG ACCOUNT`: log one account in (QR or pairing code), save its keys, exit. */
async function linkAccount (configFile, name) {
  const config = await loadConfig(configFile)
  const account = (config.accounts || {})[name]
  if (!account) fail(`${configFile}: no account ${JSON.stringify(name)}`)
  const baileys = await loadBaileys().catch((err) => fail(`cannot load baileys: ${err.message}`))
  guardProcess(log)
  const fleet = config.redis ? await linkLease(checkRedis(config.redis, configFile), name, baileys) : null
  const acc = new Account(accountOptions(config, configFile, name, account, baileys, fleet ? { authState: fleet.authState } : {}))
  const done = new Promise((resolve) => {
    acc.once('open', (user) => resolve([0, `linked as ${user?.id}`]))
    acc.once('ended', (code, reason) => resolve([1, `not linked (${code}): ${reason}`]))
    fleet?.leases.once('lost', () => resolve([1, 'not linked: the account lease was lost (Redis unreachable?)']))
  })
  await acc.start()
  const [status, message] = await done
  await acc.stop()
  await fleet?.close()
  process.stderr.write(`rsocket-bridge: ${name}: ${message}\n`)
  process.exit(status)
}

// -- test mode: Baileys' event buffer, no account ---------------------------------

/** JSON with tags for what JSON cannot carry: {"$long": "123"}, {"$bytes": "<base64>"}, {"$undefined": 1}. */
function reviver (Long) {
  return (key, value) => {
    if (value === null || typeof value !== 'object' || Array.isArray(value)) return value
    if ('$bytes' in value) return Buffer.from(value.$bytes, 'base64')
    if ('$undefined' in value) return undefined
    if ('$long' in value) {
      if (!Long) throw new Error('$long needs the `long` package (npm install in bridge/)')
      return Long.fromString(String(value.$long))
    }
    return value
  }
}

async function runTestSource (values) {
  const { Faults, importMakeEventBuffer, makeTestSocket, whatsappPayloads } = require('../lib/test-source')
  if (!values.baileys) fail('--test-source needs --baileys DIR (an unpacked baileys package)')
  const makeEventBuffer = await importMakeEventBuffer(values.baileys)
  let Long = null
  try { Long = require('long') } catch {}
  const tenants = values.tenants ? JSON.parse(values.tenants) : { t1: 'token1' }
  const bridge = await createBridge({
    host: values.host ?? '127.0.0.1',
    port: intOption(values, 'port', 0),
    tenants,
    replayWindow: intOption(values, 'replay-window', 100000),
    logDir: values['log-dir'] || null,
    batchSize: intOption(values, 'batch-size', 100),
    maxOutbound: intOption(values, 'max-outbound', 100000),
    pingInterval: values['ping-interval'] === 'none' ? null : intOption(values, 'ping-interval', 20),
    guard: values.guard ? JSON.parse(values.guard) : {},
    fleet: Boolean(values.redis),
    logger: values.verbose ? stderrLogger : quietLogger
  })
  const faults = new Faults(bridge, values.verbose ? stderrLogger : quietLogger)
  const sockets = new Map()
  const attach = (name) => {
    const sock = makeTestSocket(makeEventBuffer)
    sockets.set(name, sock)
    bridge.attach(name, sock)
    return sock
  }
  let fleetStop = null
  let fleetId = null
  if (values.redis) { // one bridge of a fleet: accounts by lease, events from the Redis upstream
    const { TestUpstream } = require('../lib/test-upstream')
    const redis = checkRedis({
      url: values.redis,
      prefix: values.prefix,
      ttl: values['lease-ttl'] === undefined ? undefined : intOption(values, 'lease-ttl'),
      capacity: values.capacity === undefined ? undefined : intOption(values, 'capacity'),
      id: values['bridge-id']
    }, '--redis')
    let upstream = null
    const { fleet, stop } = await runFleet(bridge, redis, (name, token, client, valid) => {
      upstream ??= new TestUpstream({
        connect: () => createClient(redis.url, { timeout: 5 }), prefix: redis.prefix, id: redis.id, ttl: redis.ttl, bridge, logger: values.verbose ? stderrLogger : quietLogger
      })
      upstream.serve(name, token, attach(name), valid)
      return () => {
        upstream.stop(name)
        bridge.detach(name)
      }
    }, { onClose: () => upstream?.close(), logger: values.verbose ? stderrLogger : quietLogger })
    fleetStop = stop
    fleetId = fleet.id
  } else {
    for (const name of Object.keys(tenants)) attach(name)
  }

  const socketOf = (name) => {
    bridge.tenant(name) // unknown tenant: the error names it
    return sockets.get(name)
  }
  const ops = {
    /** Real-sized payloads built with Baileys' protobuf classes, emitted on the tenant's ev. */
    async whatsapp ({ tenant, kind, params }) {
      const { ev } = socketOf(tenant)
      const log = bridge.tenants.get(tenant).log
      const first = log.lastSeq + 1
      const { events, ids } = await whatsappPayloads(kind, params || {})
      for (const [name, data] of events) ev.emit(name, data)
      return { first, last: log.lastSeq, ids }
    },
    emit ({ tenant, events, buffered }) {
      const { ev } = socketOf(tenant)
      const log = bridge.tenants.get(tenant).log
      const first = log.lastSeq + 1
      if (buffered) ev.buffer()
      try {
        for (const [name, data] of events) ev.emit(name, data)
      } finally {
        if (buffered) ev.flush() // a bad event must not leave the buffer open
      }
      return { first, last: log.lastSeq }
    },
    inject ({ tenant, fault, params }) { faults.inject(tenant, fault, params || {}) },
    stats () { return { stats: bridge.stats() } },
    reset ({ tenant }) { bridge.reset(tenant) },
    retained ({ tenant }) {
      const log = bridge.tenant(tenant).log
      return { events: log.since(log.oldest) }
    },
    sent ({ tenant }) { return { sent: socketOf(tenant).sent } },
    async logout ({ tenant }) { await socketOf(tenant).logout() },
    attach ({ tenant }) { attach(tenant) },
    detach ({ tenant }) { bridge.detach(tenant) }
  }

  const parse = reviver(Long)
  const reply = (message) => process.stdout.write(JSON.stringify(message, (k, v) =>
    typeof v === 'bigint' ? v.toString() : v instanceof Uint8Array ? { $bytes: Buffer.from(v).toString('base64') } : v) + '\n')
  const stop = fleetStop || onShutdown(() => bridge.close())
  const lines = readline.createInterface({ input: process.stdin })
  let pending = Promise.resolve() // one request at a time, replies in order
  lines.on('line', (line) => {
    pending = pending.then(() => handle(line)).catch((err) => stderrLogger.error({ err }, 'control request failed'))
  })
  async function handle (line) {
    let id = null
    try {
      // tags are rare: no reviver call per value without one
      const request = line.includes('"$') ? JSON.parse(line, parse) : JSON.parse(line)
      if (request === null || typeof request !== 'object' || Array.isArray(request)) throw new Error('a request is a JSON object')
      id = request.id ?? null
      if (request.op === 'close') {
        reply({ id, ok: true })
        await stop()
        return
      }
      const op = Object.hasOwn(ops, request.op) ? ops[request.op] : null
      if (!op) throw new Error(`unknown op ${JSON.stringify(request.op)}; expected one of ${Object.keys(ops).join(', ')}, close`)
      reply({ id, ok: true, ...(await op(request)) })
    } catch (err) {
      reply({ id, ok: false, error: err.message })
    }
  }
  lines.on('close', () => { pending.then(stop) }) // the parent went away
  reply({ ready: true, url: bridge.url, port: bridge.port, ...(values.redis ? { bridge: fleetId } : {}) })
}

async function main () {
  let parsed
  try {
    parsed = parseArgs({
      allowPositionals: true,
      options: {
        'test-source': { type: 'boolean' },
        baileys: { type: 'string' },
        host: { type: 'string' },
        port: { type: 'string' },
        tenants: { type: 'string' },
        'replay-window': { type: 'string' },
        'log-dir': { type: 'string' },
        guard: { type: 'string' },
        'batch-size': { type: 'string' },
        'max-outbound': { type: 'string' },
        'ping-interval': { type: 'string' },
        redis: { type: 'string' },
        prefix: { type: 'string' },
        'lease-ttl': { type: 'string' },
        capacity: { type: 'string' },
        'bridge-id': { type: 'string' },
        verbose: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' }
      }
    })
  } catch (err) {
    fail(err.message)
  }
  const { values, positionals } = parsed
  if (values.help) {
    process.stdout.write(USAGE + '\n')
    return
  }
  if (values['test-source']) return runTestSource(values)
  if (positionals[0] === 'link') {
    if (positionals.length !== 3) fail('link: expected a config file and an account name')
    return linkAccount(positionals[1], positionals[2])
  }
  if (positionals.length !== 1) fail('expected one config file (or --test-source)')
  return runAccounts(positionals[0])
}

main().catch((err) => {
  process.stderr.write(`rsocket-bridge: ${err.stack || err}\n`)
  process.exit(1)
})
