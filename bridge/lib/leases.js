'use strict'
// Account leases in Redis, with the rules the Python workers' leases follow
// (src/rsocket/cluster/leases.py, docs/SCALING.md), on keys of their own:
//   - take: SET NX PX, and a fencing token (INCR `:fence`) per take; the log and auth
//     writes of the account carry that token, so a bridge that lost the account is refused;
//   - renew every ttl/3 (compare-and-extend), release by compare-and-delete;
//   - a lease not confirmed for ttl/2 is given up here first ('lost'), so the account is
//     stopped before Redis can expire the lease and another bridge take it: never two
//     upstream connections for one account;
//   - each bridge registers in `prefix:bridges` (a sorted set, score = expiry) with its URL in
//     `prefix:urls`: the live count to balance on, and where bots find an account's bridge.

const crypto = require('crypto')
const { EventEmitter } = require('events')
const os = require('os')

const { accountKey } = require('./redis')

const SEP = '|'

// The scripts are rsocket/cluster/leases.py's, word for word: one lease format for both sides.

// KEYS: lease, fence. ARGV: bridge id, ttl ms. The new token, or 0 when held by another.
const TAKE = `
local cur = redis.call('GET', KEYS[1])
local mine = ARGV[1] .. '|'
if cur and string.sub(cur, 1, #mine) ~= mine then return 0 end
local token = redis.call('INCR', KEYS[2])
local value = mine .. token
if cur then
  redis.call('SET', KEYS[1], value, 'XX', 'PX', ARGV[2])
elseif not redis.call('SET', KEYS[1], value, 'NX', 'PX', ARGV[2]) then
  return 0
end
return token
`

// KEYS: lease. ARGV: value, ttl ms. Compare-and-extend.
const RENEW = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
`

// KEYS: lease. ARGV: value. Compare-and-delete.
const RELEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`

// KEYS: bridges (sorted set), urls (hash). ARGV: bridge id, ttl ms, mode (1 register, 0 count,
// -1 unregister), url. Returns the live bridges.
const BRIDGES = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #gone > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  redis.call('HDEL', KEYS[2], unpack(gone))
end
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
elseif ARGV[3] == '-1' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
end
return redis.call('ZCARD', KEYS[1])
`

function defaultBridgeId () {
  return `${os.hostname()}:${process.pid}:${crypto.randomBytes(3).toString('hex')}`
}

/**
 * This bridge's account leases. Events: 'lost' (account, token) when a lease is given up
 * (renewal refused, or not confirmed within ttl/2): stop the account at once.
 */
class Leases extends EventEmitter {
  /**
   * @param {object} redis an ioredis client
   * @param {object} options
   * @param {string} options.prefix key prefix
   * @param {string} [options.url] where bots reach this bridge (published for the resolver)
   * @param {string} [options.id] this bridge's name (default host:pid:random); no `|`
   * @param {number} [options.ttl] lease time to live, seconds
   * @param {boolean} [options.publish] register as a bridge bots can reach (false: `link`)
   * @param {object} [options.logger] pino-like
   */
  constructor (redis, { prefix, url = '', id = defaultBridgeId(), ttl = 15, publish = true, logger = null }) {
    super()
    if (!id || id.includes(SEP)) throw new Error(`a bridge id is non-empty without ${JSON.stringify(SEP)}, got ${JSON.stringify(id)}`)
    if (!(ttl > 0)) throw new Error(`lease ttl must be > 0 seconds, got ${ttl}`)
    this.redis = redis
    this.prefix = prefix
    this.url = url
    this.id = id
    this.ttl = ttl
    this.publish = publish
    this.logger = logger || { info () {}, warn () {}, error () {} }
    this.held = new Map() // account -> {token, deadline (ms, performance clock), timer}
    this.bridgesKeys = [`${prefix}:bridges`, `${prefix}:urls`]
  }

  _value (token) { return `${this.id}${SEP}${token}` }

  /** The fencing token of `account` while its lease is held and confirmed, else null. */
  token (account) {
    const lease = this.held.get(account)
    return lease && performance.now() < lease.deadline ? lease.token : null
  }

  /** Take `account`'s lease if it is free: its new fencing token, or null. */
  async take (account) {
    const sent = performance.now()
    const token = Number(await this.redis.eval(TAKE, 2, accountKey(this.prefix, account, 'lease'),
      accountKey(this.prefix, account, 'fence'), this.id, Math.round(this.ttl * 1000)))
    if (!token) return null
    this.forget(account)
    const lease = { token, deadline: 0, timer: null }
    this.held.set(account, lease)
    this._confirm(account, lease, sent)
    this.logger.info({ tenant: account, token, bridge: this.id }, 'account lease taken')
    return token
  }

  /** Register this bridge and extend every held lease, in one round trip; the live bridges. */
  async renewAll () {
    const held = [...this.held]
    const ttlMs = Math.round(this.ttl * 1000)
    const sent = performance.now()
    const pipe = this.redis.pipeline()
    pipe.eval(BRIDGES, 2, ...this.bridgesKeys, this.id, ttlMs, this.publish ? 1 : 0, this.url)
    for (const [account, lease] of held) pipe.eval(RENEW, 1, accountKey(this.prefix, account, 'lease'), this._value(lease.token), ttlMs)
    const results = await pipe.exec()
    if (results[0][0]) throw results[0][0]
    held.forEach(([account, lease], i) => {
      const [err, result] = results[i + 1]
      if (this.held.get(account) !== lease || err) return // released meanwhile, or the deadline decides
      if (Number(result) !== 1) this._lose(account, 'renewal refused: the lease is gone or not ours')
      else if (performance.now() < lease.deadline) this._confirm(account, lease, sent)
    })
    return Number(results[0][1])
  }

  /**
   * Compare-and-delete `account`'s lease (`token`: one already forgotten here); true when it
   * was ours and is now free.
   */
  async release (account, token = null) {
    const lease = this.held.get(account)
    if (token === null) {
      if (!lease) return false
      token = lease.token
    }
    if (lease?.token === token) this.forget(account)
    const deleted = Number(await this.redis.eval(RELEASE, 1, accountKey(this.prefix, account, 'lease'), this._value(token)))
    if (deleted) this.logger.info({ tenant: account, token, bridge: this.id }, 'account lease released')
    return deleted === 1
  }

  /** Which of `accounts` have no lease now (one round trip). */
  async free (accounts) {
    if (!accounts.length) return []
    const pipe = this.redis.pipeline()
    for (const account of accounts) pipe.pttl(accountKey(this.prefix, account, 'lease'))
    const results = await pipe.exec()
    return accounts.filter((_, i) => !results[i][0] && Number(results[i][1]) === -2)
  }

  /** Leave the registry (the leases are released by their owners first). */
  async unregister () {
    await this.redis.eval(BRIDGES, 2, ...this.bridgesKeys, this.id, Math.round(this.ttl * 1000), -1, this.url)
  }

  /** Stop every local timer (leases are left to expire or be released). */
  clear () {
    for (const account of [...this.held.keys()]) this.forget(account)
  }

  _confirm (account, lease, sent) {
    clearTimeout(lease.timer)
    lease.deadline = sent + this.ttl * 500 // ttl/2 after the request went out
    lease.timer = setTimeout(() => {
      if (this.held.get(account) === lease) this._lose(account, `not renewed for ${this.ttl / 2} s (ttl/2)`)
    }, Math.max(0, lease.deadline - performance.now()))
  }

  /** Stop renewing `account`'s lease here (it expires in Redis, or release() deletes it). */
  forget (account) {
    const lease = this.held.get(account)
    if (lease) clearTimeout(lease.timer)
    this.held.delete(account)
  }

  _lose (account, reason) {
    const lease = this.held.get(account)
    if (!lease) return
    this.forget(account)
    this.logger.warn({ tenant: account, token: lease.token, bridge: this.id }, `account lease lost: ${reason}`)
    this.emit('lost', account, lease.token)
  }
}

module.exports = { Leases, defaultBridgeId }
