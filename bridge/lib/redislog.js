'use strict'
// One account's event log (log.js) kept in Redis, so whichever bridge holds the account's
// lease continues the same session and seqs: bots resume with `resumed: true` after a
// takeover. The file log (filelog.js) stays the embedded default.
//
// Keys (redis.js): `:logmeta`, a hash {session, last}, and `:log`, a stream whose entry
// `SEQ-0` holds field `e`, the msgpack of event [name, data]. Every write is one script
// that first checks the account's fencing token (`:fence`, raised by each lease take):
// a bridge that lost the account can no longer write to its log.
//
// append() stays synchronous (seqs are assigned here: the lease holder is the only
// writer); the writes follow in order, and durable(seq) tells the connection when an
// event may be sent, so a bot never sees a seq a takeover could give to another event.

const { EventLog, Sizes } = require('./log')
const { decodeRecord, encodeBody, isEvent } = require('./filelog')
const { accountKey } = require('./redis')

// KEYS: fence, logmeta, log. ARGV: token, session, first seq, min id to keep, bodies...
// Returns the last seq written; -1 fenced out, -2 another session, -3 a gap.
const APPEND = `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local meta = redis.call('HMGET', KEYS[2], 'session', 'last')
if meta[1] ~= ARGV[2] then return -2 end
local last = tonumber(meta[2])
local first = tonumber(ARGV[3])
local n = #ARGV - 4
if last >= first + n - 1 then return last end
if last ~= first - 1 then return -3 end
for i = 1, n do
  redis.call('XADD', KEYS[3], (first + i - 1) .. '-0', 'e', ARGV[4 + i])
end
redis.call('HSET', KEYS[2], 'last', first + n - 1)
if ARGV[4] ~= '0' then redis.call('XTRIM', KEYS[3], 'MINID', ARGV[4]) end
return first + n - 1
`

// KEYS: fence, logmeta, log. ARGV: token, session. A new session, seqs from 1.
const RESET = `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[2], 'session', ARGV[2], 'last', 0)
return 0
`

const ARGS_BYTES = 4 * 1024 * 1024 // bytes of events per script call
const noop = () => {}

/** The account's lease was taken by another bridge: this log may not write any more. */
class FencedError extends Error {
  constructor (account, token) {
    super(`account ${account}: fencing token ${token} is stale (another bridge took the account)`)
    this.name = 'FencedError'
  }
}

class RedisEventLog extends EventLog {
  /**
   * The account's log as Redis holds it (a new session if it holds none), for the lease
   * holder with fencing token `token`.
   * @param {object} redis an ioredis client (redis.js createClient)
   * @param {object} options
   * @param {string} options.account the account (tenant) name
   * @param {number} options.token this bridge's fencing token for the account
   * @param {string} options.prefix key prefix
   * @param {number} [options.window] events retained for replay
   * @param {number} [options.maxBytes] encoded bytes retained for replay (oldest out first)
   * @param {object} [options.logger] pino-like; default silent
   */
  static async open (redis, { account, token, prefix, window = 100000, maxBytes = 16 * 1024 * 1024, logger = null }) {
    const log = new RedisEventLog(window, { redis, account, token, prefix, maxBytes, logger })
    const [session, last] = await redis.hmget(log.keys[1], 'session', 'last')
    if (!session) {
      await log._call(RESET, [log.session])
      return log
    }
    const entries = await redis.xrevrangeBuffer(log.keys[2], '+', '-', 'COUNT', window)
    const events = []
    const sizes = []
    let bytes = 0
    for (const [, fields] of entries) { // newest first
      const body = fields[1]
      if (bytes + body.length > log.maxBytes) break
      const event = decodeRecord(body)
      if (!isEvent(event)) break // an entry this bridge cannot read ends the replay window there
      events.push(event)
      sizes.push(body.length)
      bytes += body.length
    }
    log.session = session.toString()
    log.lastSeq = Number(last) - events.length
    EventLog.prototype.append.call(log, events.reverse())
    log._sizes = new Sizes(sizes.reverse())
    log._durable = log.lastSeq
    return log
  }

  constructor (window, { redis, account, token, prefix, maxBytes, logger }) {
    super(window)
    if (!(Number.isSafeInteger(maxBytes) && maxBytes >= 1024)) throw new Error(`maxBytes must be an integer >= 1024, got ${maxBytes}`)
    this.redis = redis
    this.account = account
    this.token = String(token)
    this.maxBytes = maxBytes
    this.logger = logger || { info: noop, warn: noop, error: noop }
    this.keys = ['fence', 'logmeta', 'log'].map((kind) => accountKey(prefix, account, kind))
    this.fenced = null // the FencedError once another bridge took the account
    this._sizes = new Sizes() // msgpack bytes of the retained events
    this._queue = [] // ['append', first, bodies] | ['reset', session], in order
    this._durable = 0 // seqs up to this one are in Redis
    this._waiters = [] // {seq, resolve, reject}
    this._writing = null
    this._retry = null // {resolve, timer} while the drain loop waits to retry
    this._closed = false // close() was called
    this._closedForGood = false // nothing more is written (closed, fenced out, or broken)
  }

  reset () {
    super.reset()
    if (!this.redis) return // EventLog's constructor: nothing to write yet
    this._sizes = new Sizes()
    this._queue.push(['reset', this.session])
    this._durable = 0
    this._kick()
  }

  append (events) {
    if (this._closed) throw new Error(`event log of ${this.account} is closed`)
    if (this.fenced) throw this.fenced
    const bodies = events.map((event) => {
      if (!isEvent(event)) throw new TypeError('an event is a [name, data] pair with a string name')
      return encodeBody(event) // before any change: a value msgpack cannot take throws here
    })
    const first = super.append(events)
    for (const body of bodies) this._sizes.push(body.length)
    this._sizes.trim(this, this.maxBytes, 1) // the newest stays: a takeover must find it
    if (bodies.length) {
      this._queue.push(['append', first, bodies])
      this._kick()
    }
    return first
  }

  /** Resolves once every event up to `seq` is in Redis; rejects once fenced out. */
  durable (seq) {
    if (seq <= this._durable) return Promise.resolve()
    if (this.fenced) return Promise.reject(this.fenced)
    return new Promise((resolve, reject) => this._waiters.push({ seq, resolve, reject }))
  }

  /** Everything appended so far in Redis. */
  flush () {
    return this.durable(this.lastSeq)
  }

  /** Write what is pending (at most `timeout` seconds), then stop. Idempotent. */
  async close (timeout = 5) {
    if (this._closed) return
    this._closed = true
    let timer
    const expired = new Promise((resolve) => { timer = setTimeout(resolve, timeout * 1000) })
    try {
      await Promise.race([this.flush().catch(noop), expired])
    } finally {
      clearTimeout(timer)
    }
    if (this._durable < this.lastSeq && !this.fenced) {
      this.logger.warn({ tenant: this.account, durable: this._durable, last: this.lastSeq }, 'event log closed before Redis took every event')
    }
    this._fail(new Error(`event log of ${this.account} is closed`))
  }

  _call (script, args) {
    return this.redis.eval(script, this.keys.length, ...this.keys, this.token, ...args)
  }

  _kick () {
    if (!this._writing && !this._closedForGood) this._writing = this._drain().finally(() => { this._writing = null })
  }

  /** Write the queue in order; a failed call is retried (idempotent) until it lands or we are fenced. */
  async _drain () {
    let delay = 50
    while (this._queue.length && !this.fenced && !this._closedForGood) {
      const op = this._queue[0]
      let result
      try {
        if (op[0] === 'reset') {
          result = await this._call(RESET, [op[1]])
        } else {
          const [, first, bodies] = this._merge()
          result = await this._call(APPEND, [this.session, first, this.oldest > 1 ? `${this.oldest}-0` : '0', ...bodies])
        }
      } catch (err) { // Redis restarting or unreachable: events stay queued, delivery waits
        this.logger.warn({ tenant: this.account, err: String(err?.message || err), retryIn: delay / 1000 }, 'event log write to Redis failed: retrying')
        await new Promise((resolve) => { this._retry = { resolve, timer: setTimeout(resolve, delay) } })
        this._retry = null
        delay = Math.min(delay * 2, 1000)
        continue
      }
      delay = 50
      result = Number(result)
      if (result === -1) {
        this._fail(this.fenced = new FencedError(this.account, this.token))
        this.logger.warn({ tenant: this.account }, this.fenced.message)
        return
      }
      if (result < 0) {
        this._fail(new Error(`event log of ${this.account}: Redis holds another session or a gap (${result}); the account must be reopened`))
        return
      }
      this._queue.shift()
      this._durable = op[0] === 'reset' ? 0 : result
      this._waiters = this._waiters.filter((waiter) => {
        if (waiter.seq > this._durable) return true
        waiter.resolve()
        return false
      })
    }
  }

  /** The queue's head, with the appends right behind it joined up to ARGS_BYTES. */
  _merge () {
    const head = this._queue[0]
    let bytes = head[2].reduce((sum, body) => sum + body.length, 0)
    while (this._queue.length > 1 && this._queue[1][0] === 'append' && bytes < ARGS_BYTES) {
      const next = this._queue.splice(1, 1)[0]
      for (const body of next[2]) head[2].push(body)
      bytes += next[2].reduce((sum, body) => sum + body.length, 0)
    }
    return head
  }

  _fail (err) {
    this._closedForGood = true
    if (this._retry) { // the drain loop, waiting to retry, wakes now and ends
      clearTimeout(this._retry.timer)
      this._retry.resolve()
    }
    this._queue = []
    for (const waiter of this._waiters.splice(0)) waiter.reject(err)
  }
}

module.exports = { FencedError, RedisEventLog }
