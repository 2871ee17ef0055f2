'use strict'
// Test mode for fleets: WhatsApp's side of each account, played through Redis, so a fleet
// can be killed and taken over with nothing real behind it (the bridge's --test-source
// --redis, and `rsocket demo --bridge --bridges M`).
//
// A producer appends events to the account's stream `:upstream` (fields `e`: JSON
// [name, data]). The bridge serving the account reads them from its acknowledged
// position (`:upstream-ack`), emits them on the account's Baileys event buffer, and moves
// the position once the bridge's log holds them (durable in Redis): what a takeover finds
// unacknowledged is delivered again, as WhatsApp redelivers what a device did not ack.
// So events are at least once across a takeover; bots dedupe by message id.
//
// Each serving bridge also marks itself connected in `:upstream-conns` (a sorted set whose
// score is the latest moment it may still be connected: renewal time + ttl/2), and the
// most it ever saw at once goes to `prefix:upstream-max` (account -> count): the demo's
// `max_concurrent`, which must stay 1.

const { accountKey, closeClient } = require('./redis')

// KEYS: fence, ack. ARGV: token, id. Fenced move of the acknowledged position.
const ACK = `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('SET', KEYS[2], ARGV[2])
return 1
`

// KEYS: conns, max. ARGV: bridge id, ms connected from now, account, mode (1 connect/renew, -1 leave).
const CONNECT = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[4] == '-1' then redis.call('ZREM', KEYS[1], ARGV[1]) return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local n = redis.call('ZCARD', KEYS[1])
if n > tonumber(redis.call('HGET', KEYS[2], ARGV[3]) or '0') then redis.call('HSET', KEYS[2], ARGV[3], n) end
return n
`

class TestUpstream {
  /**
   * @param {object} options
   * @param {Function} options.connect () => a new ioredis client (each account blocks on its own)
   * @param {string} options.prefix key prefix
   * @param {string} options.id this bridge's id
   * @param {number} options.ttl the lease ttl, seconds
   * @param {object} options.bridge the Bridge (its tenants' logs)
   * @param {object} [options.logger] pino-like
   */
  constructor ({ connect, prefix, id, ttl, bridge, logger = null }) {
    this.connect = connect
    this.prefix = prefix
    this.id = id
    this.ttl = ttl
    this.bridge = bridge
    this.logger = logger || { info () {}, warn () {}, error () {} }
    this.readers = new Map() // account -> {client, stopped}
  }

  /**
   * Feed `sock.ev` from the account's upstream until stop(account), or until `valid()`
   * (the lease still holds) says no: checked before each read is used, as a frozen
   * process wakes with its reads before its timers.
   */
  serve (account, token, sock, valid = () => true) {
    const reader = { client: this.connect(), stopped: false, valid }
    this.readers.set(account, reader)
    this._read(account, String(token), sock, reader).catch((err) => {
      if (!reader.stopped) this.logger.error({ tenant: account, err: String(err?.stack || err) }, 'test upstream failed')
    })
  }

  /** The upstream connection ends now (synchronously), as a closed WhatsApp socket. */
  stop (account) {
    const reader = this.readers.get(account)
    if (!reader) return
    this.readers.delete(account)
    reader.stopped = true
    reader.client.disconnect()
    const client = this.connect() // leave the connection set at once (a kill leaves it to expire)
    client.eval(CONNECT, 2, this._key(account, 'upstream-conns'), `${this.prefix}:upstream-max`, this.id, 0, account, -1)
      .catch(() => {}).finally(() => closeClient(client))
  }

  _key (account, kind) { return accountKey(this.prefix, account, kind) }

  async _read (account, token, sock, reader) {
    const { client } = reader
    const stream = this._key(account, 'upstream')
    const ackKeys = [this._key(account, 'fence'), this._key(account, 'upstream-ack')]
    const connKeys = [this._key(account, 'upstream-conns'), `${this.prefix}:upstream-max`]
    const window = Math.round(this.ttl * 500)
    let position = (await client.get(ackKeys[1])) || '0-0'
    let renewed = 0
    const live = () => !reader.stopped && reader.valid()
    while (live()) {
      if (Date.now() - renewed > window / 4) { // renewed well within the window it claims
        renewed = Date.now()
        await client.eval(CONNECT, 2, ...connKeys, this.id, window, account, 1)
      }
      const got = await client.xread('COUNT', 500, 'BLOCK', 100, 'STREAMS', stream, position)
      if (!live() || !got) continue
      const entries = got[0][1]
      sock.ev.buffer()
      try {
        for (const [, fields] of entries) {
          const [name, data] = JSON.parse(fields[1])
          sock.ev.emit(name, data)
        }
      } finally {
        sock.ev.flush()
      }
      position = entries[entries.length - 1][0]
      const log = this.bridge.tenant(account).log
      await log.durable?.(log.lastSeq)
      if (!live()) return
      if (Number(await client.eval(ACK, 2, ...ackKeys, token, position)) === -1) return // taken over
    }
  }

  /** Stop every reader. */
  close () {
    for (const account of [...this.readers.keys()]) this.stop(account)
  }
}

module.exports = { TestUpstream }
