'use strict'
// One tenant's event log: seqs, the replay window, epochs and resume (docs/PROTOCOL.md),
// as the reference server's `_Tenant` keeps them.

const crypto = require('crypto')
const { ProtocolError } = require('./protocol')

class EventLog {
  /** @param {number} window events retained for replay */
  constructor (window = 100000) {
    if (!(Number.isInteger(window) && window >= 1)) throw new Error(`replayWindow must be an integer >= 1, got ${window}`)
    this.window = window
    this.reset()
  }

  /** Start afresh: a new session (epoch), seqs from 1 again. */
  reset () {
    this.session = crypto.randomBytes(16).toString('hex')
    // a ring of the last `window` events: seqs lastSeq - size + 1 .. lastSeq
    this.ring = new Array(Math.min(this.window, 1024))
    this.start = 0 // ring index of the oldest retained event
    this.size = 0
    this.lastSeq = 0
  }

  get oldest () { return this.lastSeq - this.size + 1 }

  /** Append [name, data] events; returns the seq of the first. */
  append (events) {
    const first = this.lastSeq + 1
    for (const event of events) this._push(event)
    this.lastSeq += events.length
    return first
  }

  _push (event) {
    if (this.size < this.window) {
      if (this.size === this.ring.length) this._grow()
      this.ring[(this.start + this.size) % this.ring.length] = event
      this.size += 1
    } else { // full: the oldest goes
      this.ring[this.start] = event
      this.start = (this.start + 1) % this.ring.length
    }
  }

  _grow () {
    const bigger = new Array(Math.min(this.window, this.ring.length * 2))
    for (let i = 0; i < this.size; i++) bigger[i] = this.ring[(this.start + i) % this.ring.length]
    this.ring = bigger
    this.start = 0
  }

  /** Let the oldest retained event go before the window would (a log bounded by bytes too). */
  dropOldest () {
    this.ring[this.start] = undefined
    this.start = (this.start + 1) % this.ring.length
    this.size -= 1
  }

  /** Retained events from seq `from` (>= oldest) to the last, oldest first. */
  since (from) {
    const out = []
    for (let seq = Math.max(from, this.oldest); seq <= this.lastSeq; seq++) {
      out.push(this.ring[(this.start + seq - this.oldest) % this.ring.length])
    }
    return out
  }

  /**
   * Where a connection with this hello starts: {resumed, base, backlog}; base is the
   * seq before the first replayed event.
   */
  backlog (hello) {
    let resume = hello.resume
    let resumed
    if (hello.epoch && hello.epoch !== this.session) {
      resume = 0 // the log started afresh: the client has a gap
      resumed = false
    } else if (typeof resume === 'bigint' || resume > this.lastSeq) {
      throw new ProtocolError(`\`hello\` field \`resume\` is ${resume}, above the last seq ${this.lastSeq} of session ${this.session}`)
    } else {
      resumed = true
    }
    const oldest = this.oldest
    if (resume < oldest - 1) {
      resumed = resumed && resume === 0 // resume 0 means "replay everything retained", never a gap
      resume = oldest - 1
    }
    return { resumed, base: resume, backlog: this.since(resume + 1) }
  }
}

/**
 * The encoded size of each retained event of a log bounded by bytes, oldest first, and
 * their total (filelog.js, redislog.js).
 */
class Sizes {
  constructor (sizes = []) {
    this.items = sizes
    this.head = 0
    this.total = sizes.reduce((sum, size) => sum + size, 0)
  }

  get length () { return this.items.length - this.head }

  push (size) {
    this.items.push(size)
    this.total += size
  }

  shift () {
    const size = this.items[this.head++]
    if (this.head >= 1024 && this.head * 2 >= this.items.length) { // amortised O(1)
      this.items = this.items.slice(this.head)
      this.head = 0
    }
    this.total -= size
    return size
  }

  /**
   * After `log` appended events of these sizes: follow what its window dropped, then drop
   * its oldest events until the total is at most `maxBytes`, keeping at least `keep`.
   */
  trim (log, maxBytes, keep = 0) {
    while (this.length > log.size) this.shift()
    while (this.total > maxBytes && log.size > keep) {
      log.dropOldest()
      this.shift()
    }
  }
}

module.exports = { EventLog, Sizes }
