'use strict'
// Test mode: Baileys sockets with no account behind them. Their `ev` is Baileys' own
// `makeEventBuffer` (the npm package's lib/Utils/event-buffer.js, untouched), so events
// reach the bridge exactly as a real socket delivers them; `sendMessage` records the call
// and emits the sent message as Baileys does (`messages.upsert`, type `append`).
//
// The event buffer requires four helper modules whose real versions pull in protobuf and
// libsignal; they are replaced by small equivalents of the package's functions (as the
// anchor benchmark in shared/bench/node-baileys does). They only matter while the
// buffer is buffering (ev.buffer()), never for events emitted one by one.

const crypto = require('crypto')
const fs = require('fs')
const Module = require('module')
const path = require('path')

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
  const load = Module._load
  Module._load = function (request, parent, isMain) {
    if (parent && parent.filename === file && HELPERS[request]) return HELPERS[request]
    return load.apply(this, arguments)
  }
  try {
    return require(file).makeEventBuffer
  } finally {
    Module._load = load
  }
}

/** A Boom-shaped error, as Baileys puts in `lastDisconnect.error`. */
function boom (statusCode, message) {
  const error = new Error(message)
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

module.exports = { boom, importMakeEventBuffer, loadMakeEventBuffer, makeTestSocket }
