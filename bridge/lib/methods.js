'use strict'
// Built-in query methods: what a bot asks of its WhatsApp account (docs/PROTOCOL.md, `query`).
//
// Each is `async ({tenant, sock, bridge}, params) -> result data`: `sock` is the tenant's
// Baileys socket (null when none is attached), what a method returns goes through
// `convert` like events do, and what it throws is the error result's text. Params are
// checked before Baileys is called, and a bad one names the method and what it expects.
//
//   echo            params                                     -> params
//   me              -                                          -> {id, lid, name}
//   send_message    {jid, text | media | reaction, quoted?, mentions?, message_id?} -> {key, seq?}
//   read_messages   {keys: [key, ...]}                         -> null
//   presence        {jid?, state}                              -> null
//   download_media  {message, maxBytes?}                       -> bytes
//   group_metadata  {jid}                                      -> Baileys' GroupMetadata

const { convert } = require('./convert')

const MEDIA_KINDS = ['image', 'video', 'audio', 'document', 'sticker']
const PRESENCES = ['available', 'unavailable', 'composing', 'recording', 'paused']
const CHAT_PRESENCES = new Set(['composing', 'recording', 'paused']) // need a chat
const DEFAULT_MAX_BYTES = 16 * 1024 * 1024
// The wrappers Baileys' normalizeMessageContent takes off (each {message}).
const WRAPPERS = ['ephemeralMessage', 'viewOnceMessage', 'documentWithCaptionMessage', 'viewOnceMessageV2',
  'viewOnceMessageV2Extension', 'editedMessage', 'associatedChildMessage', 'groupStatusMessage',
  'groupStatusMessageV2']
const MEDIA_MESSAGES = ['imageMessage', 'videoMessage', 'audioMessage', 'documentMessage', 'stickerMessage']

// (starts as it did when text was the only kind, for clients that match the old text)
const SEND_MESSAGE = 'send_message expects params {jid: str, text: str} | {jid: str, media: {kind, data | path, ...}} | ' +
  '{jid: str, reaction: {key, text}}, with quoted?: {key, message}, mentions?: [jid], message_id?: str'

function isObject (value) {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Uint8Array)
}

function isString (value) {
  return typeof value === 'string'
}

/** Absent: a key not sent, or sent as null (Python's None). */
function given (value) {
  return value !== undefined && value !== null
}

function isKey (key) {
  return isObject(key) && isString(key.id) && key.id !== '' && isString(key.remoteJid) && key.remoteJid !== ''
}

function fail (method, expected, problem) {
  return new Error(`${method} expects params ${expected}: ${problem}`)
}

const SENT_IDS_KEPT = 10000

/** A message sent with the caller's id, kept (the last SENT_IDS_KEPT) so a retry is answered, not sent. */
function rememberSent (tenant, id, result) {
  const sent = tenant.sentIds ?? (tenant.sentIds = new Map())
  sent.set(id, result)
  if (sent.size > SENT_IDS_KEPT) sent.delete(sent.keys().next().value)
}

/** Every method needs the tenant's Baileys socket (a query result says which query failed). */
function needSocket (tenant, sock) {
  if (!sock) throw new Error(`tenant ${tenant?.name} has no Baileys socket attached`)
}

/** A protobuf number as it may arrive: number, bigint, decimal string or Long. */
function toNumber (value) {
  if (typeof value === 'number') return value
  if (typeof value === 'bigint' || isString(value)) return Number(value)
  if (value && typeof value.toNumber === 'function') return value.toNumber()
  return NaN
}

/** Message content with Baileys' wrappers (ephemeral, view once, ...) taken off. */
function normalize (content) {
  for (let i = 0; i < 5 && isObject(content); i++) {
    const inner = WRAPPERS.map((name) => content[name]).find(isObject)
    if (!inner) break
    content = inner.message
  }
  return isObject(content) ? content : null
}

/** Baileys' media content of send_message's `media` param. */
function mediaContent (media) {
  const expected = '{jid, media: {kind: image|video|audio|document|sticker, data: bytes | path: str, ' +
    'mimetype?: str, caption?: str, fileName?: str, ptt?: bool}}'
  const bad = (problem) => fail('send_message', expected, problem)
  if (!isObject(media)) throw bad('media must be an object')
  const { kind, data, path, mimetype, caption, fileName, ptt } = media
  if (!MEDIA_KINDS.includes(kind)) throw bad(`unknown media kind ${JSON.stringify(kind)}`)
  if (given(data) === given(path)) throw bad('exactly one of media.data and media.path')
  let upload
  if (given(data)) {
    if (data instanceof Uint8Array) upload = Buffer.from(data.buffer, data.byteOffset, data.byteLength)
    else if (isString(data)) upload = Buffer.from(data, 'base64') // bytes over rsocket.v1.json
    else throw bad('media.data must be bytes')
    if (!upload.length) throw bad('media.data is empty')
  } else {
    if (!isString(path) || !path) throw bad('media.path must be a non-empty string')
    upload = { url: path } // a file on the bridge's host, or an http(s) URL Baileys fetches
  }
  const content = { [kind]: upload }
  if (given(mimetype)) {
    if (!isString(mimetype) || !mimetype) throw bad('media.mimetype must be a non-empty string')
    content.mimetype = mimetype
  }
  if (given(caption)) {
    if (!isString(caption)) throw bad('media.caption must be a string')
    if (kind === 'audio' || kind === 'sticker') throw bad(`a ${kind} has no caption`)
    content.caption = caption
  }
  if (given(fileName)) {
    if (!isString(fileName) || !fileName) throw bad('media.fileName must be a non-empty string')
    if (kind !== 'document') throw bad('media.fileName is for a document')
    content.fileName = fileName
  }
  if (given(ptt)) {
    if (typeof ptt !== 'boolean') throw bad('media.ptt must be a boolean')
    if (kind !== 'audio') throw bad('media.ptt is for an audio')
    content.ptt = ptt
  }
  return content
}

/**
 * send_message's params -> [jid, Baileys content, options or undefined].
 * @returns {[string, object, {messageId?: string, quoted?: object} | undefined]}
 */
function messageOf (params) {
  if (!isObject(params)) throw new Error(`${SEND_MESSAGE}: params must be an object`)
  const { jid, text, media, reaction, quoted, mentions, message_id: messageId } = params
  const bad = (problem) => new Error(`${SEND_MESSAGE}: ${problem}`)
  if (!isString(jid) || !jid) throw bad('jid must be a non-empty string')
  const kinds = [given(text), given(media), given(reaction)].filter(Boolean).length
  if (kinds !== 1) throw bad(kinds ? 'more than one of text, media, reaction' : 'none of text, media, reaction')
  let content
  if (given(text)) {
    if (!isString(text)) throw bad('text must be a string')
    content = { text }
  } else if (given(media)) {
    content = mediaContent(media)
  } else {
    if (!(isObject(reaction) && isKey(reaction.key) && isString(reaction.text))) {
      throw bad('reaction must be {key: {remoteJid, id, ...}, text: str} ("" removes it)')
    }
    if (given(quoted) || given(mentions)) throw bad('a reaction takes no quoted or mentions')
    content = { react: { key: reaction.key, text: reaction.text } }
  }
  if (given(mentions)) {
    if (!(Array.isArray(mentions) && mentions.every((m) => isString(m) && m))) throw bad('mentions must be a list of JIDs')
    if (mentions.length) content.mentions = mentions
  }
  let options
  if (given(quoted)) {
    if (!(isObject(quoted) && isKey(quoted.key) && isObject(quoted.message))) {
      throw bad('quoted must be a message {key: {remoteJid, id, ...}, message: {...}}')
    }
    options = { quoted }
  }
  if (given(messageId)) {
    // the caller's own id (e.g. derived from the message it answers): sending it again
    // is the same message, which WhatsApp delivers once
    if (!(isString(messageId) && /^[0-9A-Za-z]{1,64}$/.test(messageId))) {
      throw bad('message_id must be 1-64 letters and digits')
    }
    options = { ...options, messageId }
  }
  return [jid, content, options]
}

/** The media content (imageMessage, ...) of a message {key, message} or its content, or null. */
function mediaOf (message) {
  const content = normalize(isObject(message?.message) ? message.message : message)
  if (!content) return null
  const name = MEDIA_MESSAGES.find((n) => isObject(content[n]))
  return name ? content[name] : null
}

const METHODS = {
  echo: async (ctx, params) => params,

  me: async ({ tenant, sock }) => {
    needSocket(tenant, sock)
    const user = sock.user
    if (!user?.id) throw new Error(`me: tenant ${tenant?.name} is not logged in yet (no sock.user)`)
    return { id: user.id, lid: user.lid ?? null, name: user.name ?? null }
  },

  send_message: async ({ tenant, sock, bridge }, params) => {
    const [jid, content, options] = messageOf(params)
    needSocket(tenant, sock)
    const again = options?.messageId && tenant.sentIds?.get(`${jid}/${options.messageId}`)
    if (again) return again // sent already by this bridge: not twice
    const before = tenant.log.lastSeq
    const sent = options ? await sock.sendMessage(jid, content, options) : await sock.sendMessage(jid, content)
    const key = convert(sent?.key) ?? null
    // Baileys emits the sent message as a `messages.upsert` on a later tick: its seq (and the
    // event before the result, as the reference server sends them) when it comes in time.
    const seq = tenant.findUpsert(key?.id, before) || await bridge.upsertOf(tenant, key?.id)
    const result = seq ? { key, seq } : { key }
    if (options?.messageId) rememberSent(tenant, `${jid}/${options.messageId}`, result)
    return result
  },

  read_messages: async ({ tenant, sock }, params) => {
    const expected = '{keys: [{remoteJid: str, id: str, participant?: str, fromMe?: bool}, ...]}'
    if (!isObject(params) || !Array.isArray(params.keys)) throw fail('read_messages', expected, 'keys must be a list')
    if (!params.keys.length) throw fail('read_messages', expected, 'keys is empty')
    const badAt = params.keys.findIndex((key) => !isKey(key))
    if (badAt >= 0) throw fail('read_messages', expected, `keys[${badAt}] is not a message key`)
    needSocket(tenant, sock)
    await sock.readMessages(params.keys)
    return null
  },

  presence: async ({ tenant, sock }, params) => {
    const expected = `{jid: str, state: ${PRESENCES.join('|')}} (jid optional for available|unavailable)`
    if (!isObject(params)) throw fail('presence', expected, 'params must be an object')
    const { jid, state } = params
    if (!PRESENCES.includes(state)) throw fail('presence', expected, `unknown state ${JSON.stringify(state)}`)
    if (given(jid) && !(isString(jid) && jid)) throw fail('presence', expected, 'jid must be a non-empty string')
    if (!given(jid) && CHAT_PRESENCES.has(state)) throw fail('presence', expected, `state ${state} needs a chat jid`)
    needSocket(tenant, sock)
    if (given(jid)) await sock.sendPresenceUpdate(state, jid)
    else await sock.sendPresenceUpdate(state)
    return null
  },

  download_media: async ({ tenant, sock, bridge }, params) => {
    const expected = '{message: {key, message}, maxBytes?: int}'
    if (!isObject(params)) throw fail('download_media', expected, 'params must be an object')
    const { message } = params
    const maxBytes = params.maxBytes ?? DEFAULT_MAX_BYTES
    if (!(isObject(message) && isObject(message.message))) throw fail('download_media', expected, 'message must be {key, message}')
    if (!(Number.isSafeInteger(maxBytes) && maxBytes > 0)) throw fail('download_media', expected, 'maxBytes must be a positive integer')
    const media = mediaOf(message)
    if (!media) throw fail('download_media', expected, 'the message holds no image, video, audio, document or sticker')
    const size = toNumber(media.fileLength)
    if (size > maxBytes) throw new Error(`download_media: the media is ${size} bytes, more than maxBytes ${maxBytes}`)
    needSocket(tenant, sock)
    const download = bridge?.baileys?.downloadMediaMessage
    if (typeof download !== 'function') {
      throw new Error('download_media: the bridge has no Baileys downloadMediaMessage (set bridge.baileys to the loaded baileys module)')
    }
    const reupload = typeof sock.updateMediaMessage === 'function' // expired media: ask the sender's phone again
      ? { reuploadRequest: sock.updateMediaMessage, logger: bridge.logger }
      : undefined
    const stream = await download(message, 'stream', {}, reupload)
    const chunks = []
    let total = 0
    for await (const chunk of stream) { // leaving the loop early destroys the stream
      total += chunk.length
      if (total > maxBytes) throw new Error(`download_media: the media is more than maxBytes ${maxBytes} bytes`)
      chunks.push(chunk)
    }
    return new Uint8Array(Buffer.concat(chunks, total))
  },

  group_metadata: async ({ tenant, sock, bridge }, params) => {
    const expected = '{jid: str} (a group, ...@g.us)'
    if (!(isObject(params) && isString(params.jid) && params.jid.endsWith('@g.us'))) {
      throw fail('group_metadata', expected, `not a group jid: ${JSON.stringify(params?.jid)}`)
    }
    needSocket(tenant, sock)
    const cache = bridge?.groupCache
    if (typeof cache?.get === 'function') {
      const cached = await cache.get(params.jid) // node-cache answers at once, others with a promise
      if (given(cached)) return cached
    }
    const metadata = await sock.groupMetadata(params.jid)
    if (typeof cache?.set === 'function') cache.set(params.jid, metadata) // Baileys reads it too
    return metadata
  }
}

module.exports = { DEFAULT_MAX_BYTES, MEDIA_KINDS, METHODS, PRESENCES }
