'use strict'
// Test mode: Baileys sockets with no account behind them. Their `ev` is Baileys' own
// `makeEventBuffer` (the npm package's lib/Utils/event-buffer.js, untouched), so events
// reach the bridge exactly as a real socket delivers them; `sendMessage` records the call
// and emits the sent message as Baileys does (`messages.upsert`, type `append`).
//
// The event buffer requires four helper modules whose real versions pull in protobuf and
// libsignal; they are replaced by small equivalents of the package's functions (as the
// anchor benchmark in benchmarks/node-baileys does). They only matter while the
// buffer is buffering (ev.buffer()), never for events emitted one by one.

const crypto = require('crypto')
const fs = require('fs')
const Module = require('module')
const path = require('path')

const { CLOSE } = require('./protocol')

const getKeyAuthor = (key) => (key?.fromMe ? 'me' : key?.participant || key?.remoteJid) || ''

const HELPERS = {
  '../Types': { WAMessageStatus: { ERROR: 0, PENDING: 1, SERVER_ACK: 2, DELIVERY_ACK: 3, READ: 4, PLAYED: 5 } },
  './generics': {
    trimUndefined: (obj) => {
      for (const k in obj) if (typeof obj[k] === 'undefined') delete obj[k]
      return obj
    }
  },
  './messages': {
    updateMessageWithReceipt: (msg, receipt) => {
      msg.userReceipt = msg.userReceipt || []
      const recp = msg.userReceipt.find((m) => m.userJid === receipt.userJid)
      if (recp) Object.assign(recp, receipt)
      else msg.userReceipt.push(receipt)
    },
    updateMessageWithReaction: (msg, reaction) => {
      const author = getKeyAuthor(reaction.key)
      const reactions = (msg.reactions || []).filter((r) => getKeyAuthor(r.key) !== author)
      if (reaction.text) reactions.push(reaction)
      msg.reactions = reactions
    }
  },
  './process-message': {
    isRealMessage: (m) => {
      let c = m.message
      for (let i = 0; i < 5 && c; i++) {
        const inner = c.ephemeralMessage || c.viewOnceMessage || c.viewOnceMessageV2 ||
          c.viewOnceMessageV2Extension || c.documentWithCaptionMessage || c.editedMessage
        if (!inner) break
        c = inner.message
      }
      const has = !!c && Object.keys(c).some((k) => k !== 'senderKeyDistributionMessage' && k !== 'messageContextInfo')
      return has && !c.protocolMessage && !c.reactionMessage && !c.pollUpdateMessage
    },
    shouldIncrementChatUnread: (m) => !m.key.fromMe && !m.messageStubType
  }
}

const noop = () => {}
const silent = { trace: noop, debug: noop, info: noop, warn: noop, error: noop, level: 'silent', child () { return silent } }

/**
 * Baileys' makeEventBuffer from a `baileys` package directory: Baileys 7 (ESM, installed
 * with its dependencies, e.g. the bridge's own node_modules/baileys) as it is; Baileys 6
 * (an unpacked `npm pack`, no dependencies) with the four helpers replaced.
 */
async function importMakeEventBuffer (baileysDir) {
  const pkg = path.resolve(baileysDir, 'package.json')
  if (fs.existsSync(pkg) && JSON.parse(fs.readFileSync(pkg, 'utf8')).type === 'module') {
    const index = path.resolve(baileysDir, 'lib', 'index.js')
    return (await import(require('url').pathToFileURL(index).href)).makeEventBuffer
  }
  return loadMakeEventBuffer(baileysDir)
}

/** Baileys 6's makeEventBuffer from an unpacked `baileys` package directory (`npm pack baileys`). */
function loadMakeEventBuffer (baileysDir) {
  const file = path.resolve(baileysDir, 'lib', 'Utils', 'event-buffer.js')
  if (!fs.existsSync(file)) {
    throw new Error(`no Baileys event buffer at ${file}: pass the directory of an unpacked baileys package ` +
      '(npm pack baileys@6.17.16 && tar xzf baileys-6.17.16.tgz: the `package` folder)')
  }
  const loader = /** @type {any} */ (Module) // Module._load: Node's internal resolver hook
  const load = loader._load
  loader._load = function (request, parent, isMain) {
    if (parent && parent.filename === file && HELPERS[request]) return HELPERS[request]
    return load.apply(this, arguments)
  }
  try {
    return require(file).makeEventBuffer
  } finally {
    loader._load = load
  }
}

/** A Boom-shaped error, as Baileys puts in `lastDisconnect.error`. */
function boom (statusCode, message) {
  const error = /** @type {any} */ (new Error(message))
  error.isBoom = true
  error.output = { statusCode, payload: { statusCode, error: http(statusCode), message } }
  return error
}

function http (status) {
  return require('http').STATUS_CODES[status] || 'Error'
}

/**
 * A socket object with what the bridge uses of a `makeWASocket` result: `ev`, `user`,
 * `sendMessage`, plus `sent` (the recorded sendMessage calls) and `logout()`, which
 * emits Baileys' logged-out `connection.update`.
 */
function makeTestSocket (makeEventBuffer, { id = '15550000000:1@s.whatsapp.net' } = {}) {
  const ev = makeEventBuffer(silent)
  const sent = []
  return {
    ev,
    user: { id },
    sent,
    async sendMessage (jid, content) {
      sent.push({ jid, content })
      const message = {
        key: { remoteJid: jid, fromMe: true, id: '3EB0' + crypto.randomBytes(8).toString('hex').toUpperCase() },
        message: { conversation: content.text },
        messageTimestamp: Math.floor(Date.now() / 1000),
        status: 1
      }
      // as Baileys does: after sendMessage returns (process.nextTick, then its processing mutex)
      process.nextTick(() => Promise.resolve().then(() => ev.emit('messages.upsert', { messages: [message], type: 'append' })))
      return message
    },
    async logout () {
      ev.emit('connection.update', { connection: 'close', lastDisconnect: { error: boom(401, 'Intentional Logout'), date: new Date() } })
    },
    end () {}
  }
}

/**
 * WhatsApp payloads at real sizes, built with Baileys' own protobuf classes (`proto`, from
 * the baileys the bridge depends on) and decoded from their wire bytes, as Baileys hands
 * them out: `Long` timestamps, `Buffer` bytes, keys whose `fromMe` is only a prototype
 * default. Returns [[event, data]] and the message ids they carry.
 *   history: a first login's `messaging-history.set` (defaults: about 5 MB)
 *   images:  a reconnect's offline images with JPEG thumbnails, one `messages.upsert`
 *   lid:     Baileys 7 LID-addressed messages (remoteJidAlt/participantAlt)
 */
async function whatsappPayloads (kind, { count = 100, chats = 500, contacts = 800, messages = 11000, thumbnail = 15000, type = 'notify' } = {}) {
  const { proto } = await import('baileys')
  const decoded = (Type, obj) => Type.decode(Type.encode(Type.fromObject(obj)).finish())
  const jid = (n) => `55119${String(n).padStart(8, '0')}@s.whatsapp.net`
  const info = (i, content, key = { remoteJid: jid(i % 97), id: `3EB0${i.toString(16).toUpperCase().padStart(16, '0')}` }) =>
    decoded(proto.WebMessageInfo, { key, message: content, messageTimestamp: 1733000000 + i, pushName: `Contact ${i % 97}`, status: 2 })
  const text = (i) => ({ extendedTextMessage: { text: 'lorem ipsum dolor sit amet '.repeat(3 + i % 8), contextInfo: { expiration: 0 } } })
  if (kind === 'history') {
    const list = Array.from({ length: messages }, (_, i) => info(i, text(i)))
    const data = {
      chats: Array.from({ length: chats }, (_, i) => decoded(proto.Conversation, { id: jid(i), conversationTimestamp: 1733000000 + i, unreadCount: i % 5, name: `Chat ${i}` })),
      contacts: Array.from({ length: contacts }, (_, i) => ({ id: jid(i), name: `Contact ${i}`, notify: `C${i}` })),
      messages: list,
      isLatest: true,
      progress: 100,
      syncType: proto.HistorySync.HistorySyncType.INITIAL_BOOTSTRAP
    }
    return { events: [['messaging-history.set', data]], ids: list.map((m) => m.key.id) }
  }
  if (kind === 'images') {
    const list = Array.from({ length: count }, (_, i) => info(i + 1e6, {
      imageMessage: {
        url: `https://mmg.whatsapp.net/v/t62.7118-24/${i}.enc`,
        mimetype: 'image/jpeg',
        caption: `photo ${i}`,
        fileSha256: crypto.randomBytes(32),
        fileLength: 184512 + i,
        height: 1280,
        width: 960,
        mediaKey: crypto.randomBytes(32),
        fileEncSha256: crypto.randomBytes(32),
        directPath: `/v/t62.7118-24/${i}.enc`,
        mediaKeyTimestamp: 1733000000 + i,
        jpegThumbnail: crypto.randomBytes(thumbnail)
      }
    }))
    return { events: [['messages.upsert', { messages: list, type }]], ids: list.map((m) => m.key.id) }
  }
  if (kind === 'lid') {
    const list = Array.from({ length: count }, (_, i) => {
      const m = info(i + 2e6, { conversation: `hi ${i}` }, { remoteJid: `${120363000000 + i}@lid`, id: `LID${i}` })
      Object.assign(m.key, { remoteJidAlt: jid(i), participantAlt: jid(i + 1) }) // Baileys 7 adds them to the decoded key
      return m
    })
    return { events: [['messages.upsert', { messages: list, type }]], ids: list.map((m) => m.key.id) }
  }
  throw new Error(`unknown payload kind ${JSON.stringify(kind)}; expected history, images or lid`)
}

const FAULTS = ['stream_error', 'failure', 'drop', 'stall']

/**
 * Test faults on a bridge's connections, as the reference server's `inject`: at once on a
 * live connection, else queued for the tenant's next one, right after its `offline`.
 */
class Faults {
  constructor (bridge, logger = null) {
    this.bridge = bridge
    this.logger = logger
    this.queued = new Map() // tenant -> [[fault, params]]
    bridge.on('live', (name, conn) => {
      const next = this.queued.get(name)?.shift()
      if (next) this._apply(conn, ...next)
    })
  }

  inject (name, fault, params = {}) {
    const tenant = this.bridge.tenant(name) // unknown tenant: the error names it
    if (!FAULTS.includes(fault)) throw new Error(`unknown fault ${JSON.stringify(fault)}; expected one of ${FAULTS.join(', ')}`)
    if (params.code !== undefined && !Number.isInteger(params.code)) throw new Error(`fault code must be an integer, got ${JSON.stringify(params.code)}`)
    if (tenant.conn && tenant.conn.live) return this._apply(tenant.conn, fault, params)
    if (!this.queued.has(name)) this.queued.set(name, [])
    this.queued.get(name).push([fault, params])
  }

  _apply (conn, fault, params) {
    this.logger?.info({ tenant: conn.tenant.name, fault, params }, 'fault injected')
    if (fault === 'drop') {
      conn.halt()
      conn.ws.terminate() // abort the TCP connection: no close frame
    } else if (fault === 'stall') {
      conn.halt()
      conn.stalled = true // nothing more is written, not even a close frame
    } else {
      const reason = String(params.reason ?? 'injected')
      const message = fault === 'stream_error'
        ? conn.session.streamError(Number(params.code ?? 503), reason)
        : conn.session.failure(Number(params.code ?? 500), reason)
      conn.end(message, CLOSE.normal, reason)
    }
  }
}

module.exports = { FAULTS, Faults, boom, importMakeEventBuffer, loadMakeEventBuffer, makeTestSocket, whatsappPayloads }
