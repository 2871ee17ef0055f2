'use strict'
// The bridge: a WebSocket server speaking rsocket.v1 (docs/PROTOCOL.md) whose tenants'
// event logs are fed by Baileys sockets. Per tenant: token auth (constant-time), a seq
// log with a replay window, epochs and resume, `offline` after the backlog, acks,
// ping/pong, one connection (the older one gets 440), close codes for bad frames and
// `stream_error`/`failure` frames, as the Python reference server (rsocket.testing.reference) does.

const crypto = require('crypto')
const { EventEmitter } = require('events')
const http = require('http')
const path = require('path')
const { WebSocketServer, WebSocket } = require('ws')

const { MAX_DEPTH, convert, convertCounting } = require('./convert')
const { METHODS } = require('./methods')
const { EventLog } = require('./log')
const { FileEventLog } = require('./filelog')
const { HelloGuard } = require('./guard')
const { DEFAULT_MAX_EVENT, splitEvent } = require('./split')
const { CLOSE, DEFAULT_MAX_SIZE, ProtocolError, SUBPROTOCOLS, ServerSession, closeReason } = require('./protocol')

// Baileys' `creds.update` carries the account's keys: it never leaves the process.
const PRIVATE_EVENTS = new Set(['creds.update'])
const LOGGED_OUT = 401 // Baileys' DisconnectReason.loggedOut

function digest (text) {
  return crypto.createHash('sha256').update(text, 'utf8').digest()
}

/** One account: its token, event log, connection and counters. */
class Tenant {
  constructor (name, token, log) {
    this.name = name
    this.token = digest(token)
    this.log = log
    this.served = log !== null // a fleet's account is served by the bridge holding its lease
    if (!log) this.log = new EventLog(1) // a placeholder, until serve()
    this.conn = null
    this.sock = null
    this.unsubscribe = null
    this.ended = null // {code, reason} once the account ended (logged out, banned, ...)
    this.upsertWaiters = new Map() // message id -> resolve(seq): send_message results
    this.sentIds = null // jid/message_id -> send_message result (methods.js), made when used
    this.open = this.connectionsTotal = this.replaced = this.maxConcurrent = 0
    this.sent = this.slow = this.acked = 0
    this.cut = 0 // values cut for nesting past MAX_DEPTH
  }

  reset () {
    this.log.reset()
    this.acked = 0
  }

  /** The seq of the `messages.upsert` holding message `id` appended after seq `after`, or 0. */
  findUpsert (id, after) {
    if (!id) return 0
    const events = this.log.since(after + 1)
    for (let i = 0; i < events.length; i++) {
      const [name, data] = events[i]
      if (name === 'messages.upsert' && data?.messages?.some((m) => m?.key?.id === id)) {
        return this.log.lastSeq - events.length + 1 + i
      }
    }
    return 0
  }

  stats () {
    return {
      connections: this.open,
      connections_total: this.connectionsTotal,
      replaced: this.replaced,
      max_concurrent: this.maxConcurrent,
      sent: this.sent,
      acked: this.acked,
      last_seq: this.log.lastSeq,
      session: this.log.session,
      slow_consumers: this.slow,
      attached: this.sock !== null,
      served: this.served,
      logged_out: this.ended?.code === LOGGED_OUT,
      ended: this.ended?.code ?? null,
      cut_values: this.cut
    }
  }
}

/** One authenticated connection: a writer loop fed by an outbound queue. */
class Connection {
  constructor (bridge, tenant, ws, session) {
    this.bridge = bridge
    this.tenant = tenant
    this.ws = ws
    this.session = session
    this.queue = [] // ['events', first, events] | ['pong', id] | ['result', id, ok, data, error] | ['failure', code, reason]
    this.head = 0
    this.queued = 0 // live events in the queue
    this.wake = null
    this.blocked = false // the writer waits for the client to read
    this.offlineSent = false
    this.halted = false // nothing more is written (stall, drop or ending)
    this.stalled = false
    this.ending = false
    this.closed = false
  }

  /** Past its offline and not going away: faults apply at once. */
  get live () {
    return this.offlineSent && !this.ending && this.ws.readyState === WebSocket.OPEN
  }

  push (item, events = 0) {
    if (this.halted) return
    this.queue.push(item)
    this.queued += events
    this._wakeUp()
    // Only a queue that grows while the client is not reading is a slow consumer.
    if (this.blocked && this.queued > this.bridge.maxOutbound) this.bridge.slowConsumer(this)
  }

  halt () {
    this.halted = true
    this.queue = []
    this.head = 0
    this.queued = 0
    this._wakeUp()
  }

  _wakeUp () {
    const wake = this.wake
    this.wake = null
    if (wake) wake()
  }

  /** Send ready, the backlog, offline, then whatever is queued. */
  async write (resumed, base, backlog) {
    const { session, tenant } = this
    if (!await this._durable(base + backlog.length)) return
    await this._send(session.ready(tenant.log.session, resumed, backlog.length, base))
    const size = this.bridge.batchSize
    for (let i = 0; i < backlog.length; i += size) {
      if (this.halted) return
      for (const message of this._events(base + 1 + i, backlog.slice(i, i + size))) await this._send(message)
    }
    const count = backlog.length
    backlog = null // let the log trim what it no longer retains
    if (this.halted) return
    await this._send(session.offline(count))
    this.offlineSent = true
    this.bridge.emit('live', tenant.name, this)
    for (;;) {
      while (this.head === this.queue.length) {
        if (this.halted) return
        this.queue = []
        this.head = 0
        await new Promise((resolve) => { this.wake = resolve })
      }
      if (this.halted) return
      if (this.head > 1024 && this.head * 2 > this.queue.length) { // a queue that never drains
        this.queue = this.queue.slice(this.head)
        this.head = 0
      }
      const [kind, ...args] = this.queue[this.head]
      this.queue[this.head++] = undefined
      if (kind === 'events') {
        // Baileys emits one event at a time: what queued up meanwhile goes as one batch.
        let [first, events] = args
        for (let next; (next = this.queue[this.head]) && next[0] === 'events' &&
            events.length + next[2].length <= this.bridge.batchSize; this.head++) {
          events = events.concat(next[2])
          this.queue[this.head] = undefined
        }
        this.queued -= events.length
        if (!await this._durable(first + events.length - 1)) return
        for (const message of this._events(first, events)) await this._send(message)
      } else if (kind === 'pong') {
        await this._send(session.pong(...args))
      } else if (kind === 'result') {
        await this._send(session.result(...args))
      } else { // 'failure': the last frame, after everything queued before it
        const [code, reason] = args
        this.end(session.failure(code, reason), CLOSE.normal, reason)
        return
      }
    }
  }

  /**
   * A log kept in Redis (redislog.js) sends an event only once Redis has it, so a seq a bot
   * saw is never given to another event after a takeover. False: the log can no longer
   * write (the account moved), and this connection ends.
   */
  async _durable (seq) {
    if (!this.tenant.log.durable) return true
    try {
      await this.tenant.log.durable(seq)
      return !this.halted
    } catch (err) {
      this.end(this.session.streamError(503, `account moved: ${err.message}`), CLOSE.normal, 'account moved')
      return false
    }
  }

  /** The frames of `events`, each within the client's max_frame. */
  _events (first, events) {
    this.tenant.sent += events.length
    return this.session.events(first, events)
  }

  /** Hand a message to the socket; resolves at once unless the client is not reading. */
  _send (message) {
    if (this.ws.readyState !== WebSocket.OPEN) {
      this.halt()
      return Promise.resolve()
    }
    if (this.ws.bufferedAmount < this.bridge.writeLimit) {
      this.ws.send(message)
      return Promise.resolve()
    }
    this.blocked = true
    return new Promise((resolve) => {
      this.ws.send(message, () => {
        this.blocked = false
        resolve()
      })
    })
  }

  /** Send a last frame (unless stalled), then close; aborted after closeTimeout. */
  end (message, code, reason) {
    if (this.ending) return
    this.ending = true
    this.halt()
    const ws = this.ws
    if (ws.readyState === WebSocket.OPEN) {
      if (message && !this.stalled) ws.send(message)
      ws.close(code, closeReason(reason))
    }
    this.bridge._abortLater(ws)
  }

  /** The socket closed: stop the writer. */
  stop () {
    this.closed = true
    this.halt()
    this.session.close()
  }
}

/**
 * The rsocket.v1 server of Baileys sockets. It reports through its logger and, for code
 * that reacts, as an EventEmitter: `attached` (name, sock), `detached` (name), `live`
 * (name, connection: past its `offline`), `ended` (name, code, reason: the account is
 * gone), `logout` (name: ended with 401), and `error`
 * (err, fields) for what it logs at error level (only when someone listens: an unheard
 * 'error' would end the process).
 */
class Bridge extends EventEmitter {
  /**
   * @param {object} [options]
   * @param {Object<string,string>} [options.tenants] tenant name -> token (required: none is an error)
   * @param {string} [options.host] interface to bind (default 127.0.0.1)
   * @param {number} [options.port] TCP port; 0 picks a free one (see `url`)
   * @param {number} [options.replayWindow] events retained per tenant for replay
   * @param {number} [options.batchSize] most events per `batch` frame
   * @param {number} [options.maxOutbound] live events queued for a client that is
   *   not reading before it gets `stream_error{503, "slow consumer"}`
   * @param {number} [options.maxSize] largest message accepted, in bytes (1009 above)
   * @param {number} [options.maxEvent] payload bytes above which an appended event is split
   *   into parts of the same kind (lib/split.js), each with its own seq
   * @param {number} [options.helloTimeout] seconds a connection has to send `hello` (1008 after)
   * @param {object} [options.guard] limits on failed hellos and unauthenticated connections
   *   ({maxFailures, window, lockout, slowDown, failureDelay, perAddress, total}: lib/guard.js)
   * @param {number} [options.closeTimeout] seconds to wait for a closing handshake
   * @param {number} [options.writeLimit] bytes buffered per connection before writing waits
   * @param {number|null} [options.pingInterval] WebSocket-level keepalive, seconds (null: off)
   * @param {number} [options.queryTimeout] seconds a query method has before its error result
   * @param {number} [options.upsertTimeout] seconds send_message waits for Baileys' upsert of
   *   the sent message (to answer with its seq) before it answers without
   * @param {Object<string,Function>} [options.methods] query methods added to the built-in ones
   * @param {string} [options.logDir] keep each tenant's log in `logDir/NAME.log` (durable
   *   across restarts); none: in memory
   * @param {object} [options.baileys] the loaded baileys module (download_media needs it)
   * @param {{get: Function}} [options.groupCache] group metadata by jid, read by group_metadata
   * @param {object} [options.logger] pino-like ({info, warn, error}); default: silent
   * @param {boolean} [options.fleet] the tenants are served only between serve() and
   *   unserve() (a fleet's lease holder, lib/fleet.js); a hello before gets 503
   */
  constructor ({
    tenants, host = '127.0.0.1', port = 0, replayWindow = 100000, batchSize = 100,
    maxOutbound = 100000, maxSize = DEFAULT_MAX_SIZE, maxEvent = DEFAULT_MAX_EVENT, helloTimeout = 10, closeTimeout = 5,
    writeLimit = 64 * 1024, pingInterval = 20, queryTimeout = 60, upsertTimeout = 5, methods = {},
    logDir = null, baileys = null, groupCache = null, logger = null, guard = {}, fleet = false
  } = {}) {
    super()
    if (!tenants || typeof tenants !== 'object' || !Object.keys(tenants).length) {
      throw new Error('createBridge: `tenants` must map at least one tenant name to its token')
    }
    if (fleet && logDir) throw new Error('createBridge: a fleet keeps its logs in Redis: no `logDir`')
    for (const [name, token] of Object.entries(tenants)) {
      if (typeof token !== 'string' || !token) throw new Error(`createBridge: tenant ${name}: token must be a non-empty string`)
    }
    for (const [name, value] of Object.entries({ batchSize, maxOutbound, maxSize, maxEvent })) {
      if (!(Number.isInteger(value) && value >= 1)) throw new Error(`createBridge: ${name} must be an integer >= 1, got ${value}`)
    }
    this.host = host
    this.port = port
    this.batchSize = batchSize
    this.maxOutbound = maxOutbound
    this.maxSize = maxSize
    this.maxEvent = maxEvent
    this.helloTimeout = helloTimeout
    this.closeTimeout = closeTimeout
    this.writeLimit = writeLimit
    this.pingInterval = pingInterval
    this.queryTimeout = queryTimeout
    this.upsertTimeout = upsertTimeout
    this.methods = { ...METHODS, ...methods }
    this.baileys = baileys
    this.groupCache = groupCache
    const noop = () => {}
    this.logger = logger || { info: noop, warn: noop, error: noop }
    // on disk (one append-only file per account) when there is a folder for it: a restarted
    // bridge then serves `resumed: true` and loses nothing Baileys already acknowledged
    const logOf = (name) => fleet
      ? null
      : logDir
        ? new FileEventLog(replayWindow, { path: path.join(logDir, `${encodeURIComponent(name)}.log`) })
        : new EventLog(replayWindow)
    this.replayWindow = replayWindow
    this.tenants = new Map(Object.entries(tenants).map(([name, token]) => [name, new Tenant(name, token, logOf(name))]))
    this.dummyToken = digest(crypto.randomBytes(16).toString('hex'))
    this.guard = new HelloGuard(guard)
    this.refusals = new Map() // kind -> {at, repeats}: refusal lines, rate-limited
    this.http = null
    this.wss = null
    this.timers = new Set()
    this.pinger = null
  }

  /** ws://host:port of the server. */
  get url () {
    const host = this.host.includes(':') ? `[${this.host}]` : this.host
    return `ws://${host}:${this.port}`
  }

  async listen () {
    if (this.http) throw new Error('bridge already listening')
    this.wss = new WebSocketServer({
      noServer: true,
      maxPayload: this.maxSize,
      perMessageDeflate: false,
      // the client's first choice among ours, as the reference server picks
      handleProtocols: (offered) => [...offered].find((p) => SUBPROTOCOLS.includes(p)) ?? false
    })
    this.http = http.createServer((req, res) => {
      res.writeHead(426, { 'Content-Type': 'text/plain' })
      res.end('rsocket.v1 bridge: connect with a WebSocket client\n')
    })
    this.http.on('upgrade', (req, socket, head) => this._upgrade(req, socket, head))
    await new Promise((resolve, reject) => {
      this.http.once('error', reject)
      this.http.listen(this.port, this.host, () => {
        this.http.off('error', reject)
        resolve()
      })
    })
    this.port = /** @type {import('net').AddressInfo} */ (this.http.address()).port
    this.http.on('error', (err) => this._error({ err }, 'listening socket error')) // e.g. EMFILE on accept
    if (this.pingInterval) {
      this.pinger = setInterval(() => this._pingAll(), this.pingInterval * 1000)
      this.pinger.unref()
    }
    this.logger.info({ url: this.url }, 'bridge listening')
    return this
  }

  /** Close every connection (1001 going away), detach every socket, stop listening. */
  async close () {
    const server = this.http
    if (!server) return
    this.http = null // upgrades from now on are refused
    const stopped = new Promise((resolve) => server.close(resolve)) // no new TCP connection
    server.closeIdleConnections()
    clearInterval(this.pinger)
    for (const tenant of this.tenants.values()) {
      this.detach(tenant.name)
      for (const settle of tenant.upsertWaiters.values()) settle(0)
    }
    const closed = []
    for (const ws of this.wss.clients) {
      closed.push(new Promise((resolve) => ws.once('close', resolve)))
      ws.close(CLOSE.goingAway, '')
      this._abortLater(ws)
    }
    await Promise.all(closed)
    for (const timer of this.timers) clearTimeout(timer)
    this.timers.clear()
    this.wss.close()
    server.closeAllConnections() // upgrade requests still mid-handshake
    await stopped
    await Promise.all([...this.tenants.values()].map((tenant) => tenant.log.close?.())) // flushed to disk
    this.logger.info({ url: this.url }, 'bridge closed')
  }

  // -- Baileys sockets ---------------------------------------------------------

  /**
   * Feed `name`'s log from a Baileys socket (a `makeWASocket` result): every event it
   * emits is appended as it arrives, except `creds.update`. A socket attached in place
   * of an earlier one (a reconnect) continues the same log.
   */
  attach (name, sock) {
    const tenant = this.tenant(name)
    if (!sock || !sock.ev || typeof sock.ev.process !== 'function') {
      throw new Error(`attach(${name}): not a Baileys socket (no ev.process)`)
    }
    this.detach(name)
    tenant.sock = sock
    tenant.ended = null
    tenant.unsubscribe = sock.ev.process((events) => {
      if (tenant.sock !== sock) return
      const batch = []
      for (const [event, data] of Object.entries(events)) {
        if (PRIVATE_EVENTS.has(event)) continue
        try {
          const { value, cut } = convertCounting(data)
          if (cut) this._cut(tenant, event, cut)
          batch.push([event, value])
        } catch (err) { // never throw into Baileys' emitter: say which event could not be carried
          this._error({ tenant: name, event, err }, 'Baileys event not convertible: not forwarded')
        }
      }
      if (batch.length) this.append(name, batch)
      const update = events['connection.update']
      if (update?.connection === 'close' && statusOf(update.lastDisconnect?.error) === LOGGED_OUT) {
        this.end(name, LOGGED_OUT, 'logged out')
      }
    })
    this.emit('attached', name, sock)
  }

  /** Stop feeding `name`'s log from its socket; its log and connection stay. */
  detach (name) {
    const tenant = this.tenant(name)
    const unsubscribe = tenant.unsubscribe
    const attached = tenant.sock !== null
    tenant.sock = null
    tenant.unsubscribe = null
    if (typeof unsubscribe === 'function') unsubscribe()
    if (attached) this.emit('detached', name)
  }

  // -- a fleet's accounts (lib/fleet.js) ----------------------------------------

  /** Serve `name` from `log` (its lease was taken): hellos are taken, appends go to `log`. */
  serve (name, log) {
    const tenant = this.tenant(name)
    if (tenant.served) throw new Error(`serve(${name}): already served`)
    tenant.log = log
    tenant.served = true
    tenant.ended = null
    tenant.acked = 0
  }

  /**
   * Stop serving `name` (its lease is gone or given back): its socket detached, its bot
   * told `stream_error{503}` (it reconnects to whichever bridge serves the account next),
   * its log closed once written. Resolves when the log is closed.
   */
  async unserve (name, reason = 'account moved to another bridge') {
    const tenant = this.tenant(name)
    if (!tenant.served) return
    tenant.served = false
    this.detach(name)
    for (const settle of tenant.upsertWaiters.values()) settle(0)
    const conn = tenant.conn
    if (conn && !conn.ending) conn.end(conn.stalled ? null : conn.session.streamError(503, reason), CLOSE.normal, reason)
    const log = tenant.log
    tenant.log = new EventLog(1)
    await log.close?.()
  }

  // -- the log ---------------------------------------------------------------

  /**
   * Append [name, data] events to `name`'s log (data already plain); returns their first seq.
   * An event larger than maxEvent is appended as several parts, each with its own seq.
   */
  append (name, events) {
    const tenant = this.tenant(name)
    if (!tenant.served) throw new Error(`append(${name}): the account is not served by this bridge`)
    events = events.flatMap(([event, data]) => splitEvent(event, data ?? null, this.maxEvent)) // msgpack has no undefined
    const first = tenant.log.append(events)
    if (tenant.upsertWaiters.size) this._settleUpserts(tenant, first, events)
    const conn = tenant.conn
    if (conn && events.length) {
      for (let i = 0; i < events.length; i += this.batchSize) {
        const chunk = events.slice(i, i + this.batchSize)
        conn.push(['events', first + i, chunk], chunk.length)
      }
    }
    return first
  }

  /** Start `name`'s log afresh (new session); a live connection gets stream_error{515}. */
  reset (name) {
    const tenant = this.tenant(name)
    const conn = tenant.conn
    if (conn && !conn.ending) {
      conn.end(conn.stalled ? null : conn.session.streamError(515, 'log reset'), CLOSE.normal, 'log reset')
    }
    tenant.reset()
  }

  stats () {
    return Object.fromEntries([...this.tenants].map(([name, tenant]) => [name, tenant.stats()]))
  }

  // -- for the connections, the query methods and the bin ------------------------

  /** The tenant called `name` (an Error naming it when there is none). */
  tenant (name) {
    const tenant = this.tenants.get(name)
    if (!tenant) throw new Error(`unknown tenant ${JSON.stringify(name)}`)
    return tenant
  }

  /** The seq of the upsert of message `id` once appended; 0 after upsertTimeout. */
  upsertOf (tenant, id) {
    if (!id || !this.http) return 0
    return new Promise((resolve) => {
      const timer = setTimeout(() => settle(0), this.upsertTimeout * 1000)
      const settle = (seq) => {
        clearTimeout(timer)
        tenant.upsertWaiters.delete(id)
        resolve(seq)
      }
      tenant.upsertWaiters.set(id, settle)
    })
  }

  _settleUpserts (tenant, first, events) {
    events.forEach(([name, data], i) => {
      if (name !== 'messages.upsert' || !Array.isArray(data?.messages)) return
      for (const message of data.messages) tenant.upsertWaiters.get(message?.key?.id)?.(first + i)
    })
  }

  /**
   * The account is gone (401 logged out, 403 banned, ...): the live connection ends with
   * `failure{code, reason}` after the events before it, and every later hello is refused
   * with it, until a socket is attached again.
   */
  end (name, code, reason) {
    const tenant = this.tenant(name)
    if (tenant.ended) return
    this.logger.warn({ tenant: name, code, reason }, 'account ended: bots get failure')
    tenant.ended = { code, reason }
    this.detach(name)
    const conn = tenant.conn
    if (conn && !conn.ending) conn.push(['failure', code, reason])
    this.emit('ended', name, code, reason)
    if (code === LOGGED_OUT) this.emit('logout', name)
  }

  /** Logged at error level, and emitted as 'error' when someone listens. */
  _error (fields, message) {
    this.logger.error(fields, message)
    if (this.listenerCount('error')) this.emit('error', fields.err ?? new Error(message), fields)
  }

  /** Values nested deeper than MAX_DEPTH were cut from an event: counted, and logged. */
  _cut (tenant, event, cut) {
    tenant.cut += cut
    this.logger.warn({ tenant: tenant.name, event, cut, depth: MAX_DEPTH }, 'values nested too deep cut from an event')
  }

  _abortLater (ws) {
    const timer = setTimeout(() => {
      this.timers.delete(timer)
      ws.terminate()
    }, this.closeTimeout * 1000)
    this.timers.add(timer)
    ws.once('close', () => {
      clearTimeout(timer)
      this.timers.delete(timer)
    })
  }

  _pingAll () {
    for (const ws of this.wss.clients) {
      if (ws.awaitingPong) { // no pong since the last ping
        ws.close(CLOSE.internalError, 'keepalive ping timeout')
        this._abortLater(ws)
        continue
      }
      ws.awaitingPong = true
      ws.ping()
    }
  }

  /** A connection whose client stopped reading past `maxOutbound`: `stream_error{503}`. */
  slowConsumer (conn) {
    conn.tenant.slow += 1
    this.logger.warn({ tenant: conn.tenant.name, queued: conn.queued }, 'slow consumer disconnected')
    conn.end(conn.session.streamError(503, 'slow consumer'), CLOSE.normal, 'slow consumer')
  }

  _upgrade (req, socket, head) {
    socket.on('error', () => {}) // a client that resets mid-handshake is not our error
    if (!this.http) { // closing: no new connection
      socket.destroy()
      return
    }
    // Offered subprotocols none of which we speak: refuse the handshake (none offered: msgpack).
    const header = req.headers['sec-websocket-protocol']
    if (header) {
      const offered = header.split(',').map((p) => p.trim()).filter(Boolean)
      if (!offered.some((p) => SUBPROTOCOLS.includes(p))) {
        const body = `unsupported subprotocols ${JSON.stringify(offered)}; expected one of ${JSON.stringify(SUBPROTOCOLS)}\n`
        socket.end(`HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`)
        return
      }
    }
    this.wss.handleUpgrade(req, socket, head, (ws) => this._accept(ws, req))
  }

  _accept (ws, req) {
    const remote = req.socket.remoteAddress
    const refused = this.guard.admit(remote)
    if (refused) { // a flood of idle connections: keep descriptors for tenants
      this._refusal('connection refused', remote, null, refused)
      ws.close(CLOSE.tryAgain, refused)
      this._abortLater(ws)
      return
    }
    let unsettled = true
    const settle = () => {
      if (unsettled) this.guard.settled(remote)
      unsettled = false
    }
    const session = new ServerSession({ subprotocol: ws.protocol, maxSize: this.maxSize })
    let conn = null
    let waiting = false // a hello is being held back (a tenant under guessing, a failure)
    ws.on('pong', () => { ws.awaitingPong = false })
    ws.on('error', () => {}) // the 'close' that follows does the bookkeeping
    const helloTimer = setTimeout(() => {
      session.close() // a late hello must not attach (and replace the live connection)
      this.logger.info({ remote }, 'no hello')
      ws.close(CLOSE.policy, `no hello within ${this.helloTimeout} s`)
      this._abortLater(ws)
    }, this.helloTimeout * 1000)
    ws.on('close', (code) => {
      clearTimeout(helloTimer)
      settle()
      if (conn) this._detachConnection(conn, code)
    })
    const hello = (frame) => {
      clearTimeout(helloTimer)
      const wait = this._helloWait(ws, session, frame, remote)
      if (wait === null) return settle()
      const check = () => {
        waiting = false
        if (ws.readyState !== WebSocket.OPEN) return
        settle()
        conn = this._hello(ws, session, frame, remote)
      }
      if (!wait) return check()
      waiting = true
      this._later(check, wait)
    }
    ws.on('message', (data, isBinary) => {
      if (ws.readyState !== WebSocket.OPEN || waiting) return // closing, or a hello held back
      try {
        this._receive(ws, session, conn, data, isBinary, hello, remote) // a hello sets conn
      } catch (err) { // a bug of ours: this connection ends, the process and the others go on
        this._error({ remote, tenant: conn?.tenant.name, err }, 'internal error')
        if (conn) conn.end(null, CLOSE.internalError, 'internal error')
        else ws.close(CLOSE.internalError, 'internal error')
        this._abortLater(ws)
      }
    })
  }

  /** One client message (a hello goes to `hello`, which attaches the connection). */
  _receive (ws, session, conn, data, isBinary, hello, remote) {
    if (Array.isArray(data)) data = Buffer.concat(data)
    let frame
    try {
      frame = session.receive(data, isBinary)
    } catch (err) {
      if (!(err instanceof ProtocolError)) throw err
      this.logger.info({ remote, tenant: conn?.tenant.name, error: err.message }, 'protocol error')
      this._refuse(conn, ws, session.failure(500, err.message), err.closeCode, err.message)
      return conn
    }
    if (frame === null) return conn // closed: nothing more is read
    if (frame.op === 'hello') {
      hello(frame)
      return conn
    }
    if (frame.op === 'ack') {
      if (frame.seq > conn.tenant.acked) conn.tenant.acked = frame.seq
    } else if (frame.op === 'ping') {
      conn.push(['pong', frame.id])
    } else {
      this._query(conn, frame)
    }
    return conn
  }

  /** A refused connection or hello, logged at WARNING at most once a minute per kind. */
  _refusal (kind, remote, tenant, reason) {
    const now = performance.now()
    const last = this.refusals.get(kind)
    if (last && now - last.at < 60000) {
      last.repeats++
      return
    }
    const repeats = last?.repeats ?? 0
    this.refusals.set(kind, { at: now, repeats: 0 })
    this.logger.warn({ remote, tenant, repeats }, `${kind}: ${reason}${repeats ? ` (and ${repeats} time(s) since the last report)` : ''}`)
  }

  /** fn() after `seconds`, on a timer close() clears. */
  _later (fn, seconds) {
    const timer = setTimeout(() => {
      this.timers.delete(timer)
      fn()
    }, seconds * 1000)
    this.timers.add(timer)
  }

  _refuse (conn, ws, message, code, reason) {
    if (conn) {
      conn.end(message, code, reason)
      return
    }
    ws.send(message)
    ws.close(code, closeReason(reason))
    this._abortLater(ws)
  }

  /** Before a hello's token is checked: null when refused (an address locked out after
   * failed hellos), else the seconds it waits (a tenant under guessing: every hello waits). */
  _helloWait (ws, session, hello, remote) {
    const locked = this.guard.locked(remote)
    if (locked) {
      const reason = `too many failed hellos from this address: retry in ${Math.ceil(locked)} s`
      this._refusal('hello refused', remote, hello.tenant, reason)
      this._refuse(null, ws, session.failure(429, reason), CLOSE.policy, reason)
      return null
    }
    return this.tenants.has(hello.tenant) ? this.guard.delay(hello.tenant) : 0
  }

  _hello (ws, session, hello, remote) {
    const tenant = this.tenants.get(hello.tenant)
    // Compare even for an unknown tenant, so timing tells nothing.
    const ok = crypto.timingSafeEqual(digest(hello.token), tenant ? tenant.token : this.dummyToken)
    if (!ok || !tenant) {
      this._refusal('bad token', remote, hello.tenant, 'bad token')
      const wait = this.guard.failed(remote, tenant ? tenant.name : '')
      this._later(() => {
        if (ws.readyState === WebSocket.OPEN) this._refuse(null, ws, session.failure(401, 'bad token'), CLOSE.policy, 'bad token')
      }, wait)
      return null
    }
    if (!tenant.served) { // a fleet account another bridge holds, or none yet: the bot asks again
      const reason = 'account not served by this bridge'
      this._refuse(null, ws, session.streamError(503, reason), CLOSE.normal, reason)
      return null
    }
    if (tenant.ended) {
      const { code, reason } = tenant.ended
      this._refuse(null, ws, session.failure(code, reason), CLOSE.policy, reason)
      return null
    }
    let start
    try {
      start = tenant.log.backlog(hello)
    } catch (err) {
      if (!(err instanceof ProtocolError)) throw err
      this._refuse(null, ws, session.failure(500, err.message), err.closeCode, err.message)
      return null
    }
    const conn = new Connection(this, tenant, ws, session)
    this._attachConnection(conn)
    this.logger.info({ remote, tenant: tenant.name, resume: hello.resume, resumed: start.resumed, pending: start.backlog.length }, 'connection open')
    conn.write(start.resumed, start.base, start.backlog).catch((err) => {
      this._error({ tenant: tenant.name, err }, 'connection writer failed')
      conn.end(null, CLOSE.normal, 'internal error')
    })
    return conn
  }

  _query (conn, query) {
    const method = Object.hasOwn(this.methods, query.method) ? this.methods[query.method] : null
    if (!method) {
      conn.push(['result', query.id, false, null, `unknown method '${query.method}'`])
      return
    }
    const tenant = conn.tenant
    let timer
    const timeout = new Promise((resolve, reject) => {
      timer = setTimeout(() => reject(new Error(`${query.method} did not answer within ${this.queryTimeout} s`)),
        this.queryTimeout * 1000)
    })
    const call = Promise.resolve().then(() => method({ tenant, sock: tenant.sock, bridge: this }, query.params))
    Promise.race([call, timeout])
      .then((data) => convert(data) ?? null) // a result that cannot be carried is an error result
      .then(
        (data) => conn.push(['result', query.id, true, data, null]),
        (err) => conn.push(['result', query.id, false, null, String(err?.message || err)])
      )
      .finally(() => clearTimeout(timer))
  }

  _attachConnection (conn) {
    const tenant = conn.tenant
    const old = tenant.conn
    tenant.conn = conn
    tenant.open += 1
    tenant.connectionsTotal += 1
    tenant.maxConcurrent = Math.max(tenant.maxConcurrent, tenant.open)
    if (old && !old.ending) {
      tenant.replaced += 1
      this.logger.info({ tenant: tenant.name }, 'connection replaced')
      old.end(old.stalled ? null : old.session.streamError(440, 'replaced'), CLOSE.normal, 'replaced')
    }
  }

  _detachConnection (conn, code) {
    conn.stop()
    const tenant = conn.tenant
    tenant.open -= 1
    if (tenant.conn === conn) tenant.conn = null
    this.logger.info({ tenant: tenant.name, code }, 'connection closed')
  }
}

function statusOf (error) {
  return error?.output?.statusCode ?? error?.statusCode
}

/** Create a bridge and start listening; resolves to it (see `bridge.url`). */
async function createBridge (options) {
  return new Bridge(options).listen()
}

module.exports = { Bridge, METHODS, createBridge }
