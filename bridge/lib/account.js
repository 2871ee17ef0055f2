'use strict'
// One WhatsApp account: its Baileys socket, login, and what to do on each disconnect.
//
// What users of Baileys-based servers hit first, handled here:
//   - login: the current WhatsApp Web version (fetched at start; 405 "version refused"
//     fetches it again), the QR code on the terminal and as a PNG file (never in a log),
//     or a pairing code; the restart WhatsApp demands after pairing (515) happens at once,
//     with the new credentials flushed first;
//   - per-code policy: 401 logged out, 403 banned and 500 bad session end the account (bots
//     get `failure{code}`); 440 replaced backs off and ends the account after `replacedLimit`
//     replacements within `replacedWindow` seconds (two processes on one account); anything
//     else reconnects with backoff and jitter;
//   - a healthy account: Baileys' cacheable signal key store, a bounded message store for
//     `getMessage` (retries, poll votes), a group metadata cache, `markOnlineOnConnect: false`
//     and a WARN-level logger per account, unless the config says otherwise;
//   - faults: every callback runs in the account's async context (`accountOf()`), so an
//     unhandled rejection or exception anywhere below it restarts this account only.

const { AsyncLocalStorage } = require('async_hooks')
const { EventEmitter } = require('events')
const fsp = require('fs/promises')

const { useAuthFolder } = require('./auth')

const context = new AsyncLocalStorage()

/**
 * The baileys module: the one installed where the process runs (the application's own)
 * first, else the bridge's dependency. Baileys 7 is ESM only, 6 is CommonJS.
 */
async function loadBaileys () {
  const resolved = require.resolve('baileys', { paths: [process.cwd(), __dirname] })
  try {
    return require(resolved)
  } catch (err) {
    if (err.code !== 'ERR_REQUIRE_ESM') throw err
    return import(require('url').pathToFileURL(resolved).href)
  }
}

/** The Account whose callbacks are running, if any (for process-wide error handlers). */
function accountOf () {
  return context.getStore() ?? null
}

const ENDS = { 401: 'logged out', 403: 'banned (forbidden)', 500: 'bad session: remove the auth folder and link again' }
const RESTART_REQUIRED = 515
const REPLACED = 440
const VERSION_REFUSED = 405

/** A bounded map, oldest entry out first (a Map keeps insertion order). */
class Bounded extends Map {
  constructor (limit) {
    super()
    this.limit = limit
  }

  set (key, value) {
    this.delete(key)
    super.set(key, value)
    if (this.size > this.limit) this.delete(this.keys().next().value)
    return this
  }
}

/** A pino-shaped logger for Baileys at `level` (default warn), as JSON lines through `log`. */
function baileysLogger (log, fields, level = 'warn') {
  const levels = ['trace', 'debug', 'info', 'warn', 'error', 'fatal']
  const min = levels.indexOf(level)
  const logger = { level, child: (more) => baileysLogger(log, { ...fields, ...more }, level) }
  for (const [i, name] of levels.entries()) {
    logger[name] = i < min
      ? () => {}
      : (obj, msg) => log(name === 'fatal' ? 'error' : name, { ...fields, ...(typeof obj === 'object' ? sanitize(obj) : {}) }, typeof obj === 'string' ? obj : msg)
  }
  return logger
}

// Baileys logs whole nodes and keys at debug; above it, keep only what is not secret.
function sanitize (obj) {
  const out = {}
  for (const [key, value] of Object.entries(obj || {})) {
    if (/key|creds|secret|qr|token|noise|identity/i.test(key)) continue
    out[key] = value instanceof Error ? String(value.stack || value) : value
  }
  return out
}

class Account extends EventEmitter {
  /**
   * @param {object} options
   * @param {string} options.name the tenant name bots use
   * @param {object} options.baileys the loaded baileys module
   * @param {string} [options.auth] the account's auth folder
   * @param {Function} [options.authState] () => Promise of {state, saveCreds, flush, close}
   *   in place of the folder (a fleet's accounts keep theirs in Redis: lib/redisauth.js)
   * @param {object} [options.bridge] the Bridge its events feed (none: `link`)
   * @param {object} [options.socket] extra makeWASocket options (functions allowed: JS config)
   * @param {number[]} [options.version] WhatsApp Web version (default: fetched, else bundled)
   * @param {string} [options.pairingNumber] log in with a pairing code for this phone number
   * @param {string} [options.qrFile] where the QR code PNG goes
   * @param {boolean} [options.qrTerminal] draw the QR code on stderr (default true)
   * @param {number} [options.replacedLimit] how many 440 closes within replacedWindow end the account
   * @param {number} [options.replacedWindow] seconds
   * @param {number[]} [options.backoff] [first, most] reconnect delay, seconds
   * @param {number} [options.messageStore] messages kept for getMessage
   * @param {Map} [options.groups] group metadata cache (shared by a process's accounts)
   * @param {Function} options.log (level, fields, message) => void
   */
  constructor ({
    name, baileys, auth = null, authState = null, bridge = null, socket = {}, version = null, pairingNumber = null,
    qrFile = null, qrTerminal = true, replacedLimit = 3, replacedWindow = 600, backoff = [1, 30],
    messageStore = 5000, groups = new Bounded(1000), log
  }) {
    super()
    this.name = name
    this.baileys = baileys
    this.authDir = auth
    this.authState = authState
    this.bridge = bridge
    this.options = socket
    this.version = version
    this.pairingNumber = pairingNumber ? String(pairingNumber).replace(/\D/g, '') : null
    this.qrFile = qrFile
    this.qrTerminal = qrTerminal
    this.replacedLimit = replacedLimit
    this.replacedWindow = replacedWindow
    this.backoff = backoff
    this.log = (level, fields, message) => log(level, { tenant: name, ...fields }, message)
    this.messages = new Bounded(messageStore) // message id -> proto.IMessage, for getMessage
    this.groups = groups // group jid -> metadata (Baileys' cachedGroupMetadata)
    this.state = 'new' // connecting, open, ended, stopped
    this.sock = null
    this.auth = null
    this.timer = null
    this.delay = backoff[0]
    this.replaced = [] // when each recent 440 came
    this.pairingRequested = false
    this.updates = Promise.resolve() // connection updates, handled in order
    this.restartedAt = 0 // when the last 515 restart happened (a 401 right after: pairing failed)
  }

  /** Open the auth folder, settle the version, connect. */
  async start () {
    this.auth = this.authState ? await this.authState() : await useAuthFolder(this.authDir, this.baileys)
    if (!this.version) await this.fetchVersion()
    this.connect()
  }

  async fetchVersion () {
    const { fetchLatestBaileysVersion } = this.baileys
    try {
      const { version, error } = await fetchLatestBaileysVersion()
      if (error) throw error
      this.version = version
      this.log('info', { version: version.join('.') }, 'using the current WhatsApp Web version')
    } catch (err) {
      this.version = null // Baileys' bundled version
      this.log('warn', { error: String(err?.message || err) }, 'could not fetch the current WhatsApp Web version: using the one bundled with Baileys (a 405 means it is refused)')
    }
  }

  /** A new Baileys socket (the old one, if any, ended first), in this account's async context. */
  connect () {
    if (this.state === 'ended' || this.state === 'stopped') return
    this.timer = null
    context.run(this, () => {
      const old = this.sock
      if (old) old.end?.(undefined)
      const { makeWASocket, makeCacheableSignalKeyStore } = this.baileys
      const make = makeWASocket || this.baileys.default?.default || this.baileys.default
      const logger = baileysLogger(this.log, {})
      const { creds, keys } = this.auth.state
      const sock = make({
        auth: { creds, keys: makeCacheableSignalKeyStore ? makeCacheableSignalKeyStore(keys, logger) : keys },
        logger,
        markOnlineOnConnect: false,
        getMessage: async (key) => this.messages.get(key.id),
        cachedGroupMetadata: async (jid) => this.groups.get(jid),
        ...(this.version ? { version: this.version } : {}),
        ...this.options
      })
      this.sock = sock
      this.state = 'connecting'
      sock.ev.on('creds.update', () => { this.auth.saveCreds().catch((err) => this.fault(err)) })
      sock.ev.on('connection.update', (update) => { // one at a time, in order
        this.updates = this.updates.then(() => this.onUpdate(sock, update)).catch((err) => this.fault(err))
      })
      sock.ev.on('messages.upsert', ({ messages }) => {
        for (const m of messages || []) if (m?.key?.id && m.message) this.messages.set(m.key.id, m.message)
      })
      sock.ev.on('groups.update', (updates) => {
        for (const u of updates || []) if (this.groups.has(u.id)) this.groups.set(u.id, { ...this.groups.get(u.id), ...u })
      })
      sock.ev.on('group-participants.update', ({ id }) => this.groups.delete(id)) // refetched when needed
      if (this.bridge) this.bridge.attach(this.name, sock) // a new socket continues the same log
    })
  }

  async onUpdate (sock, { connection, lastDisconnect, qr }) {
    if (sock !== this.sock) return
    if (qr) await this.showLogin(sock, qr)
    if (connection === 'open') {
      this.state = 'open'
      this.delay = this.backoff[0]
      this.log('info', { me: sock.user?.id }, 'WhatsApp connection open')
      this.emit('open', sock.user)
      return
    }
    if (connection !== 'close') return
    const error = lastDisconnect?.error
    const code = error?.output?.statusCode ?? error?.statusCode
    if (code === RESTART_REQUIRED) { // after pairing: restart now, with the new creds on disk
      await this.auth.flush()
      this.restartedAt = Date.now()
      this.log('info', {}, 'restart required by WhatsApp (after pairing): reconnecting now')
      this.connect()
      return
    }
    if (code === 401 && this.restartedAt && Date.now() - this.restartedAt < 60000 && this.state !== 'open') {
      return this.end(401, 'login did not complete (401 right after the post-pairing restart): link the account again')
    }
    if (ENDS[code]) return this.end(code, ENDS[code])
    if (code === REPLACED) {
      const now = Date.now()
      this.replaced = this.replaced.filter((t) => now - t < this.replacedWindow * 1000).concat(now)
      if (this.replaced.length >= this.replacedLimit) {
        return this.end(REPLACED, `replaced ${this.replaced.length} times in ${this.replacedWindow} s: another process uses this account`)
      }
    }
    if (code === VERSION_REFUSED) await this.fetchVersion()
    this.state = 'connecting'
    this.retry(code, error)
  }

  retry (code, error) {
    if (this.timer || this.state === 'ended' || this.state === 'stopped') return
    const delay = this.delay * (0.75 + Math.random() * 0.5)
    this.delay = Math.min(this.delay * 2, this.backoff[1])
    this.log('warn', { code, error: String(error?.message || error || ''), retryIn: Number(delay.toFixed(2)) }, 'WhatsApp connection closed: reconnecting')
    this.timer = setTimeout(() => this.connect(), delay * 1000) // stop() clears it
  }

  async showLogin (sock, qr) {
    if (this.pairingNumber) {
      if (this.pairingRequested) return
      this.pairingRequested = true
      const code = await sock.requestPairingCode(this.pairingNumber)
      this.emit('pairing-code', code)
      process.stderr.write(`\n${this.name}: enter this code in WhatsApp > Linked devices > Link with phone number: ${code}\n\n`)
      return
    }
    this.emit('qr', qr)
    const QRCode = require('qrcode')
    if (this.qrFile) await fsp.writeFile(this.qrFile, await QRCode.toBuffer(qr), { mode: 0o600 })
    if (this.qrTerminal) {
      process.stderr.write(`\n${this.name}: scan with WhatsApp > Linked devices\n${await QRCode.toString(qr, { type: 'terminal', small: true })}\n`)
    }
    this.log('info', { qrFile: this.qrFile }, 'QR code shown (it changes every ~20 s)')
  }

  /** The account cannot go on: its bots get `failure{code, reason}`, no reconnect. */
  end (code, reason) {
    if (this.state === 'ended' || this.state === 'stopped') return
    this.state = 'ended'
    clearTimeout(this.timer)
    this.timer = null
    this.log('error', { code }, `account ended: ${reason}`)
    if (this.bridge) this.bridge.end(this.name, code, reason)
    this.sock?.end?.(undefined)
    this.emit('ended', code, reason)
  }

  /** An error inside this account (an unhandled rejection included): restart its socket. */
  fault (err) {
    if (this.state === 'ended' || this.state === 'stopped') return
    this.log('error', { err: String(err?.stack || err) }, 'error in this account: restarting its socket')
    this.retry(null, err)
  }

  /** Stop the socket, write pending auth files, release the folder. Idempotent. */
  async stop () {
    if (this.state !== 'ended') this.state = 'stopped'
    clearTimeout(this.timer)
    this.timer = null
    const sock = this.sock
    this.sock = null
    if (this.bridge && sock) this.bridge.detach(this.name)
    try {
      await sock?.end?.(undefined)
    } catch {} // ending a socket that never opened may reject
    await this.auth?.close()
  }
}

/**
 * Unhandled rejections and exceptions: logged, and the account they came from (if any)
 * restarts its socket; the process and the other accounts go on.
 */
function guardProcess (log) {
  const handle = (kind) => (err) => {
    const account = accountOf()
    log('error', { tenant: account?.name, err: String(err?.stack || err) }, `${kind}${account ? '' : ' (no account)'}`)
    account?.fault(err)
  }
  process.on('unhandledRejection', handle('unhandled rejection'))
  process.on('uncaughtException', handle('uncaught exception'))
}

module.exports = { Account, Bounded, accountOf, baileysLogger, guardProcess, loadBaileys }
