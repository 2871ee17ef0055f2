'use strict'
// What the bridge allows before a client has proven its token: the same rules as the
// Python reference server's rsocket.guard (docs/PROTOCOL.md, "Limits a server enforces").
// Failed hellos are counted per address and per tenant in a sliding window: an address over
// the limit is refused for `lockout` seconds, every hello for a tenant over the limit waits
// `slowDown` seconds before its token is checked, and each failed hello is answered after
// `failureDelay`. Connections that have not passed hello are capped per address and in total.

const MAX_KEYS = 10000 // addresses and tenants remembered before stale ones are swept

const DEFAULTS = {
  maxFailures: 10, window: 60, lockout: 60, slowDown: 2, failureDelay: 0.5, perAddress: 32, total: 512
}

class HelloGuard {
  constructor (config = {}, clock = () => performance.now() / 1000) {
    this.config = { ...DEFAULTS, ...config }
    this.clock = clock
    this.failures = new Map() // 'a:addr' / 't:tenant' -> [times]
    this.lockedUntil = new Map() // address -> time
    this.pendingBy = new Map() // address -> unauthenticated connections
    this.pending = 0
    this.counters = { failed_hellos: 0, locked_out: 0, slowed: 0, flood_refused: 0 }
  }

  /** A connection opens: null to serve it (unauthenticated until settled()), else why not. */
  admit (address) {
    const held = this.pendingBy.get(address) ?? 0
    let refused = null
    if (held >= this.config.perAddress) refused = `too many unauthenticated connections from ${address}`
    else if (this.pending >= this.config.total) refused = 'too many unauthenticated connections'
    if (refused) {
      this.counters.flood_refused++
      return refused
    }
    this.pendingBy.set(address, held + 1)
    this.pending++
    return null
  }

  /** An admitted connection passed hello, or ended before. */
  settled (address) {
    const held = (this.pendingBy.get(address) ?? 0) - 1
    if (held <= 0) this.pendingBy.delete(address)
    else this.pendingBy.set(address, held)
    this.pending = Math.max(0, this.pending - 1)
  }

  /** Seconds `address` is still refused (0: not locked out). */
  locked (address) {
    const until = this.lockedUntil.get(address)
    if (until === undefined) return 0
    const left = until - this.clock()
    if (left <= 0) {
      this.lockedUntil.delete(address)
      return 0
    }
    this.counters.locked_out++
    return left
  }

  /** Seconds a hello for `tenant` waits before its token is checked. */
  delay (tenant) {
    if (this._recent(`t:${tenant}`) >= this.config.maxFailures) {
      this.counters.slowed++
      return this.config.slowDown
    }
    return 0
  }

  /** A wrong token: counted, the address locked out when over the limit; returns the seconds
   * to wait before answering. `tenant` is '' for a name the bridge does not have. */
  failed (address, tenant) {
    this.counters.failed_hellos++
    const now = this.clock()
    if (this.failures.size > MAX_KEYS) {
      for (const [key, times] of this.failures) {
        if (!times.length || times[times.length - 1] < now - this.config.window) this.failures.delete(key)
      }
    }
    for (const key of tenant ? [`a:${address}`, `t:${tenant}`] : [`a:${address}`]) {
      const times = this.failures.get(key) ?? []
      times.push(now)
      this.failures.set(key, times)
    }
    if (this._recent(`a:${address}`) >= this.config.maxFailures) {
      this.lockedUntil.set(address, now + this.config.lockout)
    }
    return this.config.failureDelay
  }

  _recent (key) {
    const times = this.failures.get(key)
    if (!times) return 0
    const horizon = this.clock() - this.config.window
    while (times.length && times[0] < horizon) times.shift()
    if (!times.length) {
      this.failures.delete(key)
      return 0
    }
    return times.length
  }
}

module.exports = { HelloGuard, GUARD_DEFAULTS: DEFAULTS }
