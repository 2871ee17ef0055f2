'use strict'
// Bridge processes that share accounts through Redis (docs/FLEET.md). Every bridge of a
// fleet knows every account (one config) and serves those whose leases it holds:
//   - every ttl/3 it renews its leases, counts the live bridges and takes free accounts up
//     to its share (min(capacity, ceil(accounts / bridges))), or gives one back above it;
//   - a taken account gets the Redis event log (same session and seqs whichever bridge
//     appends) and is started (`startAccount`: a Baileys socket whose auth is in Redis, or
//     the test source), all writes fenced by the take's token;
//   - a lease given up (lost, or not confirmed for ttl/2) stops the account at once, before
//     Redis can expire the lease: its bots get stream_error{503} and find the new bridge
//     through the resolver (`prefix:urls`, rsocket.fleet.BridgeResolver on the Python side).

const { EventEmitter } = require('events')

const { Leases } = require('./leases')
const { RedisEventLog } = require('./redislog')

class Fleet extends EventEmitter {
  /**
   * @param {object} options
   * @param {object} options.bridge a listening Bridge made with `fleet: true`
   * @param {object} options.redis an ioredis client (lib/redis.js createClient)
   * @param {string} options.prefix key prefix
   * @param {Function} options.startAccount async (account, token, valid) => stop(): starts
   *   feeding bridge.attach(account, ...); stop() must end the upstream connection
   *   synchronously; valid() tells whether the lease still holds (check before acting)
   * @param {number} [options.ttl] lease time to live, seconds
   * @param {number} [options.capacity] most accounts this bridge serves
   * @param {string} [options.id] this bridge's name in Redis
   * @param {string} [options.url] the URL bots reach this bridge at (default bridge.url)
   * @param {number} [options.logBytes] encoded event bytes each account's log retains
   * @param {object} [options.logger] pino-like
   */
  constructor ({ bridge, redis, prefix, startAccount, ttl = 15, capacity = Infinity, id, url, logBytes = 16 * 1024 * 1024, logger = null }) {
    super()
    if (!(capacity >= 1)) throw new Error(`fleet capacity must be >= 1, got ${capacity}`)
    this.bridge = bridge
    this.redis = redis
    this.prefix = prefix
    this.startAccount = startAccount
    this.capacity = capacity
    this.logBytes = logBytes
    this.logger = logger || { info () {}, warn () {}, error () {} }
    this.accounts = [...bridge.tenants.keys()]
    this.leases = new Leases(redis, { prefix, url: url || bridge.url, id, ttl, logger: this.logger })
    this.leases.on('lost', (account) => { this._drop(account, 'account lease lost') })
    this.running = new Map() // account -> {token, stop} (stop null while starting)
    this.live = 0 // bridges registered, as last counted
    this.timer = null
    this.ticking = null
    this.closed = false
    this.failures = 0
  }

  get id () { return this.leases.id }

  /** Register, take a first share, then balance every ttl/3. */
  async start () {
    await this.tick()
    this._schedule()
  }

  /** One round: renew, count bridges, take or give back accounts. */
  tick () {
    if (!this.ticking) this.ticking = this._tick().finally(() => { this.ticking = null })
    return this.ticking
  }

  async _tick () {
    try {
      this.live = await this.leases.renewAll()
      if (this.failures) this.logger.info({ bridge: this.id }, 'Redis answers again')
      this.failures = 0
    } catch (err) {
      if (this.failures++ === 0) this.logger.warn({ bridge: this.id, err: String(err?.message || err) }, 'lease renewal failed: accounts stop if Redis stays away for ttl/2')
      return
    }
    const share = Math.min(this.capacity, Math.ceil(this.accounts.length / Math.max(1, this.live)))
    if (this.running.size < share) {
      const free = await this.leases.free(this.accounts.filter((a) => !this.running.has(a))).catch(() => [])
      for (const account of free.slice(0, share - this.running.size)) {
        if (this.closed) return
        await this._take(account)
      }
    } else if (this.running.size > share) { // one per round: no stampede when a bridge joins
      const account = [...this.running.keys()].pop()
      await this.giveBack(account, 'rebalanced to another bridge')
    }
  }

  async _take (account) {
    let token
    try {
      token = await this.leases.take(account)
    } catch (err) {
      this.logger.warn({ tenant: account, err: String(err?.message || err) }, 'account lease take failed')
      return
    }
    if (!token) return // another bridge was first
    const entry = { token, stop: null }
    this.running.set(account, entry)
    try {
      const log = await RedisEventLog.open(this.redis, {
        account, token, prefix: this.prefix, window: this.bridge.replayWindow, maxBytes: this.logBytes, logger: this.logger
      })
      if (this.running.get(account) !== entry) return log.close() // lost while opening
      const valid = () => this.leases.token(account) === token // the deadline itself, not its timer
      this.bridge.serve(account, log)
      const stop = await this.startAccount(account, token, valid)
      if (this.running.get(account) !== entry) return stop()
      entry.stop = stop
      this.emit('serving', account, token)
    } catch (err) {
      this.logger.error({ tenant: account, err: String(err?.stack || err) }, 'account not started: lease given back')
      await this.giveBack(account, 'start failed')
    }
  }

  /** Stop `account` and release its lease, so another bridge takes it now. */
  async giveBack (account, reason) {
    const token = this.running.get(account)?.token
    await this._drop(account, reason)
    if (token) await this.leases.release(account, token).catch(() => {})
  }

  /** Stop `account` here: its upstream at once, then its bots and its log. */
  async _drop (account, reason) {
    const entry = this.running.get(account)
    if (!entry) return
    this.running.delete(account)
    this.leases.forget(account)
    const stopped = entry.stop ? Promise.resolve().then(entry.stop) : Promise.resolve()
    await Promise.allSettled([stopped, this.bridge.unserve(account, reason)])
    this.emit('dropped', account, reason)
  }

  _schedule () {
    if (this.closed) return
    this.timer = setTimeout(() => { this.tick().finally(() => this._schedule()) }, this.leases.ttl * 1000 / 3)
  }

  /** Stop every account, release their leases, leave the registry. Idempotent. */
  async close () {
    if (this.closed) return
    this.closed = true
    clearTimeout(this.timer)
    await this.ticking
    await Promise.allSettled([...this.running.keys()].map((account) => this.giveBack(account, 'bridge closing')))
    await this.leases.unregister().catch(() => {})
    this.leases.clear()
  }
}

module.exports = { Fleet }
