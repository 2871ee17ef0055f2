'use strict'
// One tenant's event log (log.js) kept on disk too: after a bridge restart the session, the
// seqs and the replay window are back, so a client resuming with {resume, epoch} is
// `resumed` and gets exactly the events it missed.
//
// File format: append-only records, each a u32 big-endian length then that many bytes of
// msgpack. The first record is the header {v: 1, session, base}; each further record is one
// event [name, data], whose seq is base + its position. Whole-file rewrites (a new file,
// compaction, reset, recovery) go to `path.tmp`, are fsynced and renamed over `path`, so
// `path` always starts with a complete header; only the last records can be cut short by a
// crash, and opening drops them.

const fs = require('fs')
const nodePath = require('path')
const msgpack = require('@msgpack/msgpack')
const { EventLog, Sizes } = require('./log')
const { encoder } = require('./protocol') // integers past 32 bits stay integers, as on the wire

const VERSION = 1
const PREFIX = 4 // bytes of a record's length
const CHUNK = 1 << 20 // bytes per read and write when scanning, copying or rebuilding
const RETRY_MS = 1000 // a failed compaction or rebuild is retried no sooner, so a full disk costs little per append

// @msgpack/msgpack refuses a map key `__proto__`, which convert() keeps as an own key. Every
// map key decodes through here: `__proto__`, and any key that looks like its escaped form,
// gains a leading NUL, and revive() takes one off again.
const PROTO_LIKE = /^\0*__proto__$/
const ESCAPED = /^\0+__proto__$/
const utf8 = new TextDecoder()
const keyDecoder = {
  canBeCached: () => true,
  decode (bytes, offset, length) {
    const key = Buffer.isBuffer(bytes)
      ? bytes.toString('utf8', offset, offset + length)
      : utf8.decode(bytes.subarray(offset, offset + length))
    return key.endsWith('__proto__') && PROTO_LIKE.test(key) ? '\0' + key : key
  }
}

const decoder = new msgpack.Decoder({ useBigInt64: true, keyDecoder })

/** One record: the length prefix and the msgpack of `value`. */
function encodeRecord (value) {
  const body = encoder.encodeSharedRef(value)
  const record = Buffer.allocUnsafe(PREFIX + body.length)
  record.writeUInt32BE(body.length, 0)
  record.set(body, PREFIX)
  return record
}

/**
 * A decoded value as it was appended: int64s back to numbers when safe (the encoder made
 * them int64s; convert() makes BigInts only past 2**53), bytes as their own Uint8Array (not
 * a Buffer view keeping the whole read buffer alive), escaped `__proto__` keys restored.
 */
function revive (value) {
  if (typeof value === 'bigint') return Number.isSafeInteger(Number(value)) ? Number(value) : value
  if (value === null || typeof value !== 'object') return value
  if (value instanceof Uint8Array) return new Uint8Array(value)
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) value[i] = revive(value[i])
    return value
  }
  let escaped = false
  for (const key in value) {
    value[key] = revive(value[key])
    if (key.charCodeAt(0) === 0 && ESCAPED.test(key)) escaped = true
  }
  if (!escaped) return value
  const out = {} // rebuilt to keep the key order
  for (const [key, item] of Object.entries(value)) {
    const name = ESCAPED.test(key) ? key.slice(1) : key
    Object.defineProperty(out, name, { value: item, enumerable: true, writable: true, configurable: true })
  }
  return out
}

/** The msgpack of one event (or header), a buffer of its own. */
function encodeBody (value) {
  return Buffer.from(encoder.encode(value))
}

/** A record's body back to its value; undefined when it does not decode. */
function decodeRecord (body) {
  try {
    return revive(decoder.decode(body))
  } catch {
    return undefined
  }
}

const isEvent = (value) => Array.isArray(value) && value.length === 2 && typeof value[0] === 'string'

/** Write all of `data` at `position`; returns the position after it. */
function writeAll (fd, data, position) {
  for (let done = 0; done < data.length;) {
    done += fs.writeSync(fd, data, done, data.length - done, position + done)
  }
  return position + data.length
}

/**
 * The records of `fd` between byte offsets `start` and `end`, read in chunks: {offset,
 * length, body} (body is valid until the next step), and last {offset, truncated: true}
 * when the final record does not fit before `end`.
 */
function * readRecords (fd, start, end) {
  let buf = Buffer.allocUnsafe(Math.max(PREFIX, Math.min(CHUNK, end - start)))
  let bufStart = start // file offset of buf[0]
  let have = 0 // bytes of buf read
  let pos = start // file offset of the next record
  const ensure = (n) => { // buf holds [pos, pos + n), reading on if the file has it
    if (pos + n > end) return false
    if (pos + n <= bufStart + have) return true
    const kept = bufStart + have - pos
    const target = n > buf.length ? Buffer.allocUnsafe(Math.max(n, CHUNK)) : buf
    buf.copy(target, 0, pos - bufStart, pos - bufStart + kept)
    buf = target
    bufStart = pos
    have = kept
    const want = Math.min(buf.length, end - bufStart)
    while (have < want) {
      const got = fs.readSync(fd, buf, have, want - have, bufStart + have)
      if (got === 0) break
      have += got
    }
    return pos + n <= bufStart + have
  }
  while (pos < end) {
    if (!ensure(PREFIX)) return yield { offset: pos, truncated: true }
    const length = PREFIX + buf.readUInt32BE(pos - bufStart)
    if (!ensure(length)) return yield { offset: pos, truncated: true }
    yield { offset: pos, length, body: buf.subarray(pos - bufStart + PREFIX, pos - bufStart + length) }
    pos += length
  }
}

/** Make a rename in `dir` durable; platforms that cannot fsync a directory are let be. */
function fsyncDir (dir) {
  let fd
  try {
    fd = fs.openSync(dir, 'r')
    fs.fsyncSync(fd)
  } catch (err) {
    if (!['EISDIR', 'EPERM', 'EINVAL', 'EBADF', 'EACCES'].includes(err.code)) throw err
  } finally {
    if (fd !== undefined) fs.closeSync(fd)
  }
}

const noop = () => {}

/**
 * An EventLog whose session, seqs and retained events survive a restart: one append-only
 * file per account. append(), since(), backlog() and reset() behave as EventLog's; writes
 * go out in batches after the current tick and are fsynced at most every `fsyncInterval`
 * seconds, or when flush() asks. Retained are the newest `window` events whose records
 * total at most maxBytes / 2 (half, so compacting at maxBytes happens only after another
 * maxBytes / 2 of appends). A disk error never fails append(): it is logged, flush()
 * rejects, and the file is rebuilt from memory when the disk allows.
 */
class FileEventLog extends EventLog {
  /**
   * @param {number} window events retained for replay
   * @param {object} [options]
   * @param {string} [options.path] the account's log file, required; its directory is created if missing
   * @param {number} [options.maxBytes] the file is compacted past this size
   * @param {number} [options.fsyncInterval] seconds between background fsyncs
   * @param {object} [options.logger] pino-like ({info, warn, error}); default: silent
   */
  constructor (window = 100000, { path, maxBytes = 256 * 1024 * 1024, fsyncInterval = 0.05, logger = null } = {}) {
    super(window) // calls reset() before the file exists: see reset()
    if (typeof path !== 'string' || path === '') throw new Error('FileEventLog needs a `path`')
    if (!(Number.isSafeInteger(maxBytes) && maxBytes >= 1024)) throw new Error(`maxBytes must be an integer >= 1024, got ${maxBytes}`)
    if (!(Number.isFinite(fsyncInterval) && fsyncInterval >= 0)) throw new Error(`fsyncInterval must be a number >= 0, got ${fsyncInterval}`)
    this.path = nodePath.resolve(path) // a later chdir must not move it
    this.maxBytes = maxBytes
    this.fsyncInterval = fsyncInterval
    this.logger = logger || { info: noop, warn: noop, error: noop }
    this._retainBytes = Math.floor(maxBytes / 2)
    this._sizes = new Sizes() // record bytes of the retained events
    this._pending = [] // records appended, not yet written
    this._pendingBytes = 0
    this._fd = null
    this._fileBase = 0 // seq before the file's first event record
    this._diskBytes = 0 // bytes written to the file
    // durability, counted in append() calls: appended, written, fsynced
    this._gen = 0
    this._writtenGen = 0
    this._syncedGen = 0
    this._waiters = [] // flush() calls: {target, resolve, reject}
    this._syncing = null // the fsync in flight
    this._lastSync = 0
    this._timer = null
    this._retired = [] // fds of replaced files, closed once no fsync uses them
    this._broken = null // the error that left the file behind memory
    this._retryAt = 0
    this._closing = null

    const dir = nodePath.dirname(this.path)
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
    if (this._restore()) {
      if (this._overLimits()) this._compact()
    } else {
      this._rewrite(0, null) // the new session super() made
    }
    this._ready = true
  }

  /** Start afresh: a new session (epoch), seqs from 1 again, the file replaced. */
  reset () {
    super.reset()
    if (!this._ready) return // from EventLog's constructor: the file is set up after it
    this._checkOpen()
    this._sizes = new Sizes()
    this._pending = []
    this._pendingBytes = 0
    this._gen += 1
    try {
      this._rewrite(0, null)
      this._broken = null
    } catch (err) {
      this._fail(err, 'reset')
    }
  }

  /**
   * Append [name, data] events; returns the seq of the first. They are written (to the OS)
   * before this returns, so an event a client was sent survives a SIGKILL of the bridge;
   * fsync follows within fsyncInterval.
   */
  append (events) {
    this._checkOpen()
    const records = []
    for (const event of events) {
      if (!isEvent(event)) throw new TypeError('an event is a [name, data] pair with a string name')
      records.push(encodeRecord(event)) // before any change: a value msgpack cannot take throws here
    }
    const first = super.append(events)
    for (const record of records) this._sizes.push(record.length)
    this._sizes.trim(this, this._retainBytes)
    this._gen += 1
    if (!this._broken) {
      for (const record of records) this._pending.push(record)
      this._pendingBytes += records.reduce((sum, record) => sum + record.length, 0)
    }
    this._writeOut(false)
    return first
  }

  /** Write and fsync everything appended so far; rejects if the disk fails it. */
  async flush () {
    if (this._fd === null) return // closed: close() flushed
    const target = this._gen
    this._writeOut(true)
    if (this._broken) throw this._broken
    if (this._syncedGen >= target) return
    await new Promise((resolve, reject) => {
      this._waiters.push({ target, resolve, reject })
      this._kickSync(true)
    })
  }

  /** Flush, then close the file; later appends throw. Idempotent. */
  close () {
    if (!this._closing) this._closing = this._close()
    return this._closing
  }

  async _close () {
    let error = null
    try {
      await this.flush()
    } catch (err) {
      error = err
    }
    clearTimeout(this._timer)
    this._timer = null
    while (this._syncing) await this._syncing
    fs.closeSync(this._fd)
    this._fd = null
    this._closeRetired()
    if (error) throw error
  }

  _checkOpen () {
    if (this._closing) throw new Error(`event log ${this.path} is closed`)
  }

  _overLimits () {
    return this.lastSeq - this._fileBase > 2 * this.window || this._diskBytes > this.maxBytes
  }

  /** Open an existing file and take its state; false if there is none to take. */
  _restore () {
    let fd
    try {
      fd = fs.openSync(this.path, 'r+')
    } catch (err) {
      if (err.code === 'ENOENT') return false
      throw err
    }
    let restored = false
    try {
      restored = this._restoreFrom(fd)
    } finally {
      if (!restored) fs.closeSync(fd)
    }
    if (restored) this._fd = fd
    return restored
  }

  _restoreFrom (fd) {
    const size = fs.fstatSync(fd).size
    if (size === 0) {
      this.logger.warn({ path: this.path }, 'event log file is empty: starting a new session')
      return false
    }
    const scan = readRecords(fd, 0, size)
    const first = scan.next().value
    const header = first.truncated ? undefined : decodeRecord(first.body)
    if (header && typeof header === 'object' && !Array.isArray(header) && 'v' in header && header.v !== VERSION) {
      throw new Error(`${this.path}: event log format v${header.v}, this bridge reads v${VERSION}`)
    }
    if (!(header && typeof header === 'object' && typeof header.session === 'string' && header.session &&
      Number.isSafeInteger(header.base) && header.base >= 0)) {
      // rewrites never leave a partial header, so this is not a crash: keep the file for a look
      const aside = `${this.path}.corrupt-${Date.now()}`
      fs.renameSync(this.path, aside)
      this.logger.warn({ path: this.path, movedTo: aside }, 'event log header unreadable: file moved aside, starting a new session')
      return false
    }
    const offsets = [] // of the event records
    let end = first.offset + first.length // of the last good record
    for (const record of scan) {
      if (record.truncated || record.length === PREFIX) break // cut short, or zeros a crash left
      offsets.push(record.offset)
      end = record.offset + record.length
    }
    // the newest records that fit the window; one that does not decode ends the file there
    let from, events, lens
    for (;;) {
      const n = offsets.length
      let bytes = 0
      from = n
      while (from > 0 && n - from < this.window) {
        const length = (from === n ? end : offsets[from]) - offsets[from - 1]
        if (bytes + length > this._retainBytes) break
        bytes += length
        from -= 1
      }
      events = []
      lens = []
      let bad = -1
      for (const record of readRecords(fd, from < n ? offsets[from] : end, end)) {
        const event = decodeRecord(record.body)
        if (!isEvent(event)) {
          bad = from + events.length
          break
        }
        events.push(event)
        lens.push(record.length)
      }
      if (bad < 0) break
      end = offsets[bad]
      offsets.length = bad
    }
    if (end < size) {
      this.logger.warn({ path: this.path, offset: end, bytes: size - end, lastSeq: header.base + offsets.length },
        'event log ended in a truncated or corrupt record (a crash mid-write?): dropped it')
      fs.ftruncateSync(fd, end)
      fs.fsyncSync(fd)
    }
    this.session = header.session
    this.lastSeq = header.base + from
    EventLog.prototype.append.call(this, events) // into memory only
    this._sizes = new Sizes(lens)
    this._fileBase = header.base
    this._diskBytes = end
    return true
  }

  /**
   * Replace the file with a header (this session, `base`) and what `writeBody(fd, position)`
   * writes (returning the position after it): temp file, fsync, rename, fsync the directory.
   * Everything appended so far counts as durable afterwards, so pending records must be in it.
   */
  _rewrite (base, writeBody) {
    const tmp = this.path + '.tmp'
    const fd = fs.openSync(tmp, 'w+', 0o600)
    let size
    try {
      fs.fchmodSync(fd, 0o600) // a stale .tmp would keep its mode
      size = writeAll(fd, encodeRecord({ v: VERSION, session: this.session, base }), 0)
      if (writeBody) size = writeBody(fd, size)
      fs.fsyncSync(fd)
      fs.renameSync(tmp, this.path)
    } catch (err) {
      fs.closeSync(fd)
      fs.rmSync(tmp, { force: true })
      throw err
    }
    const old = this._fd
    this._fd = fd
    this._fileBase = base
    this._diskBytes = size
    this._writtenGen = this._syncedGen = this._gen
    if (old !== null) this._retired.push(old)
    if (!this._syncing) this._closeRetired()
    this._settle()
    fsyncDir(nodePath.dirname(this.path))
  }

  /** Keep only the retained records: they are the file's last _sizes.total bytes. */
  _compact () {
    const stop = this._diskBytes
    const start = stop - this._sizes.total
    const source = this._fd
    try {
      this._rewrite(this.oldest - 1, (fd, position) => {
        const buf = Buffer.allocUnsafe(Math.max(1, Math.min(CHUNK, stop - start)))
        for (let at = start; at < stop;) {
          const got = fs.readSync(source, buf, 0, Math.min(buf.length, stop - at), at)
          if (got === 0) throw new Error(`event log ${this.path} is shorter than written`)
          position = writeAll(fd, buf.subarray(0, got), position)
          at += got
        }
        return position
      })
    } catch (err) {
      this._retryAt = Date.now() + RETRY_MS
      this.logger.error({ err, path: this.path }, 'event log compaction failed; retrying later')
    }
  }

  /** After a failed write or fsync: a new file from the retained events in memory. */
  _rebuild () {
    const lens = []
    try {
      this._rewrite(this.oldest - 1, (fd, position) => {
        let batch = []
        let bytes = 0
        for (const event of this.since(this.oldest)) {
          const record = encodeRecord(event)
          lens.push(record.length)
          batch.push(record)
          bytes += record.length
          if (bytes >= CHUNK) {
            position = writeAll(fd, Buffer.concat(batch, bytes), position)
            batch = []
            bytes = 0
          }
        }
        return writeAll(fd, Buffer.concat(batch, bytes), position)
      })
    } catch (err) {
      this._fail(err, 'rebuild')
      return
    }
    this._broken = null
    this._sizes = new Sizes(lens) // the records just written, which compaction will copy
    this.logger.warn({ path: this.path, lastSeq: this.lastSeq }, 'event log rebuilt from memory')
  }

  _fail (err, what) {
    this._broken = err
    this._retryAt = Date.now() + RETRY_MS
    this._pending = [] // the rebuild writes them from memory
    this._pendingBytes = 0
    this.logger.error({ err, path: this.path }, `event log ${what} failed; events stay in memory`)
    this._settle()
  }

  /** Pending records to the file, compaction if due, an fsync scheduled. */
  _writeOut (force) {
    if (this._fd === null) return
    if (!this._broken && this._pending.length) {
      const data = this._pending.length === 1 ? this._pending[0] : Buffer.concat(this._pending, this._pendingBytes)
      this._pending = []
      this._pendingBytes = 0
      try {
        this._diskBytes = writeAll(this._fd, data, this._diskBytes)
        this._writtenGen = this._gen
      } catch (err) {
        this._fail(err, 'write') // a partial record may be on disk: only a rewrite is safe now
      }
    }
    if (this._broken) {
      if (force || Date.now() >= this._retryAt) this._rebuild()
      return
    }
    this._writtenGen = this._gen // appends made while broken are in the rebuilt file
    if (this._overLimits() && Date.now() >= this._retryAt) this._compact()
    this._kickSync(false)
  }

  /** fsync now, or once fsyncInterval has passed since the last. */
  _kickSync (now) {
    if (this._syncing || this._fd === null || this._syncedGen >= this._writtenGen) return
    const wait = now ? 0 : this._lastSync + this.fsyncInterval * 1000 - Date.now()
    if (wait > 0) {
      if (!this._timer) {
        this._timer = setTimeout(() => { this._timer = null; this._kickSync(true) }, wait)
        this._timer.unref()
      }
      return
    }
    clearTimeout(this._timer)
    this._timer = null
    const fd = this._fd
    const gen = this._writtenGen
    this._lastSync = Date.now()
    this._syncing = new Promise((resolve) => {
      fs.fsync(fd, (err) => { // off the event loop, unlike fsyncSync
        this._syncing = null
        this._closeRetired()
        if (!err) this._syncedGen = Math.max(this._syncedGen, gen)
        else if (fd === this._fd) this._fail(err, 'fsync') // else a rewrite made it all durable already
        this._settle()
        this._kickSync(this._waiters.length > 0) // flushes that came in during this fsync
        resolve()
      })
    })
  }

  _settle () {
    if (!this._waiters.length) return
    this._waiters = this._waiters.filter((waiter) => {
      if (waiter.target <= this._syncedGen) waiter.resolve()
      else if (this._broken) waiter.reject(this._broken)
      else return true
      return false
    })
  }

  _closeRetired () {
    for (const fd of this._retired.splice(0)) {
      try {
        fs.closeSync(fd)
      } catch (err) {
        this.logger.warn({ err, path: this.path }, 'closing a replaced event log file failed')
      }
    }
  }
}

module.exports = { FileEventLog, decodeRecord, encodeBody, isEvent }
