'use strict'
// The built-in query methods against a fake Baileys socket that records its calls.
const test = require('node:test')
const assert = require('node:assert/strict')
const { EventEmitter } = require('node:events')
const { Readable } = require('node:stream')
const Long = require('long')
const { createBridge } = require('../lib/bridge')
const { DEFAULT_MAX_BYTES, METHODS } = require('../lib/methods')

const JID = '5511900000001@s.whatsapp.net'
const GROUP = '120363000000000001@g.us'
const KEY = { remoteJid: JID, id: 'ABC', fromMe: false }
const INCOMING = { key: KEY, message: { conversation: 'hello' }, messageTimestamp: 1 }

/** What the methods use of a Baileys socket; every call is recorded in `calls`. */
function fakeSocket ({ user = { id: '15550000000:1@s.whatsapp.net', lid: '99999@lid', name: 'Bot' }, upsert = true } = {}) {
  const emitter = new EventEmitter()
  const calls = []
  let sent = 0
  return {
    calls,
    user,
    ev: {
      process (handler) {
        emitter.on('event', handler)
        return () => emitter.off('event', handler)
      }
    },
    async sendMessage (...args) {
      calls.push(['sendMessage', ...args])
      const message = { key: { remoteJid: args[0], fromMe: true, id: `X${++sent}` }, message: { conversation: args[1].text } }
      if (upsert) process.nextTick(() => emitter.emit('event', { 'messages.upsert': { messages: [message], type: 'append' } }))
      return message
    },
    async readMessages (...args) { calls.push(['readMessages', ...args]) },
    async sendPresenceUpdate (...args) { calls.push(['sendPresenceUpdate', ...args]) },
    async groupMetadata (...args) {
      calls.push(['groupMetadata', ...args])
      return { id: args[0], subject: 'Team', participants: [{ id: JID, admin: null }], creation: Long.fromNumber(1700000000) }
    },
    async updateMediaMessage (message) { return message }
  }
}

/** A tenant as the bridge has one: its log (for send_message's seq) and name. */
function fakeTenant () {
  return { name: 't1', log: { lastSeq: 0 }, findUpsert: () => 0 }
}

/** A ctx without a bridge listening: send_message answers without a seq. */
function ctxOf (sock, bridge = { upsertOf: async () => 0 }) {
  return { tenant: fakeTenant(), sock, bridge }
}

async function rejects (promise, pattern) {
  await assert.rejects(promise, (err) => {
    assert.match(err.message, pattern)
    return true
  })
}

test('echo answers its params', async () => {
  assert.deepEqual(await METHODS.echo(ctxOf(null), { a: 1 }), { a: 1 })
})

test('every method but echo needs a Baileys socket', async () => {
  const params = {
    me: undefined,
    send_message: { jid: JID, text: 'hi' },
    read_messages: { keys: [KEY] },
    presence: { jid: JID, state: 'composing' },
    download_media: { message: { key: KEY, message: { imageMessage: { fileLength: 10 } } } },
    group_metadata: { jid: GROUP }
  }
  for (const [name, p] of Object.entries(params)) {
    await rejects(METHODS[name](ctxOf(null), p), /^tenant t1 has no Baileys socket attached$/)
  }
})

test('me: the account JID, LID and push name from sock.user', async () => {
  assert.deepEqual(await METHODS.me(ctxOf(fakeSocket())), { id: '15550000000:1@s.whatsapp.net', lid: '99999@lid', name: 'Bot' })
  const plain = fakeSocket({ user: { id: '15550000000@s.whatsapp.net' } })
  assert.deepEqual(await METHODS.me(ctxOf(plain)), { id: '15550000000@s.whatsapp.net', lid: null, name: null })
  await rejects(METHODS.me(ctxOf(fakeSocket({ user: null }))), /^me: tenant t1 is not logged in yet/)
})

test('send_message text: sock.sendMessage(jid, {text}), and {key, seq} once its upsert is in the log', () => withBridge(async (bridge) => {
  const sock = fakeSocket()
  bridge.attach('t1', sock)
  const ctx = { tenant: bridge.tenants.get('t1'), sock, bridge }
  const result = await METHODS.send_message(ctx, { jid: JID, text: 'hi' })
  assert.deepEqual(sock.calls, [['sendMessage', JID, { text: 'hi' }]]) // no options: as before
  assert.deepEqual(result, { key: { remoteJid: JID, fromMe: true, id: 'X1' }, seq: 1 })
  const quiet = fakeSocket({ upsert: false })
  bridge.attach('t1', quiet)
  assert.deepEqual(await METHODS.send_message({ ...ctx, sock: quiet }, { jid: JID, text: 'x' }),
    { key: { remoteJid: JID, fromMe: true, id: 'X1' } }) // no upsert within upsertTimeout: no seq
}))

async function withBridge (fn) {
  const bridge = await createBridge({ tenants: { t1: 'token1' }, pingInterval: null, upsertTimeout: 0.1 })
  try {
    await fn(bridge)
  } finally {
    await bridge.close()
  }
}

test('send_message: quoted is the {quoted} option, mentions go in the content', async () => {
  const sock = fakeSocket()
  await METHODS.send_message(ctxOf(sock), { jid: JID, text: 'hi @a', quoted: INCOMING, mentions: ['a@s.whatsapp.net'] })
  assert.deepEqual(sock.calls, [['sendMessage', JID, { text: 'hi @a', mentions: ['a@s.whatsapp.net'] }, { quoted: INCOMING }]])
  // null is absent (Python's None), and an empty mentions list is no mention
  sock.calls.length = 0
  await METHODS.send_message(ctxOf(sock), { jid: JID, text: 'x', quoted: null, mentions: [], media: null, reaction: null })
  assert.deepEqual(sock.calls, [['sendMessage', JID, { text: 'x' }]])
})

test('send_message message_id: the messageId option, and the same id again is not sent twice', () => withBridge(async (bridge) => {
  const sock = fakeSocket()
  bridge.attach('t1', sock)
  const ctx = { tenant: bridge.tenants.get('t1'), sock, bridge }
  const first = await METHODS.send_message(ctx, { jid: JID, text: 'hi', message_id: '3EB0ABC' })
  const again = await METHODS.send_message(ctx, { jid: JID, text: 'hi', message_id: '3EB0ABC' })
  assert.deepEqual(sock.calls, [['sendMessage', JID, { text: 'hi' }, { messageId: '3EB0ABC' }]])
  assert.deepEqual(again, first)
  await METHODS.send_message(ctx, { jid: GROUP, text: 'hi', message_id: '3EB0ABC' }) // another chat
  assert.equal(sock.calls.length, 2)
  await rejects(METHODS.send_message(ctx, { jid: JID, text: 'x', message_id: 'no spaces' }),
    /message_id must be 1-64 letters and digits$/)
}))

test('send_message reaction: {react: {key, text}} to the chat', async () => {
  const sock = fakeSocket()
  await METHODS.send_message(ctxOf(sock), { jid: JID, reaction: { key: KEY, text: '👍' } })
  await METHODS.send_message(ctxOf(sock), { jid: JID, reaction: { key: KEY, text: '' } }) // removes it
  assert.deepEqual(sock.calls, [
    ['sendMessage', JID, { react: { key: KEY, text: '👍' } }],
    ['sendMessage', JID, { react: { key: KEY, text: '' } }]
  ])
})

test('send_message media: bytes as a Buffer, a path as {url}, with caption, mimetype, fileName, ptt', async () => {
  const sock = fakeSocket()
  const bytes = new Uint8Array([0xff, 0xd8, 0xff, 1, 2])
  await METHODS.send_message(ctxOf(sock), { jid: JID, media: { kind: 'image', data: bytes, caption: 'look', mimetype: 'image/jpeg' }, quoted: INCOMING })
  await METHODS.send_message(ctxOf(sock), { jid: JID, media: { kind: 'document', path: '/tmp/report.pdf', mimetype: 'application/pdf', fileName: 'report.pdf', caption: 'the report' } })
  await METHODS.send_message(ctxOf(sock), { jid: JID, media: { kind: 'audio', data: bytes, mimetype: 'audio/ogg; codecs=opus', ptt: true } })
  await METHODS.send_message(ctxOf(sock), { jid: JID, media: { kind: 'sticker', data: Buffer.from(bytes).toString('base64') } }) // JSON: base64
  await METHODS.send_message(ctxOf(sock), { jid: JID, media: { kind: 'video', path: 'https://example.com/v.mp4' } })
  const [image, doc, audio, sticker, video] = sock.calls
  assert.ok(Buffer.isBuffer(image[2].image), 'Baileys takes a Buffer (a bare Uint8Array is not an upload)')
  assert.deepEqual([...image[2].image], [...bytes])
  assert.deepEqual({ ...image[2], image: null }, { image: null, caption: 'look', mimetype: 'image/jpeg' })
  assert.deepEqual(image[3], { quoted: INCOMING })
  assert.deepEqual(doc.slice(1), [JID, { document: { url: '/tmp/report.pdf' }, mimetype: 'application/pdf', fileName: 'report.pdf', caption: 'the report' }])
  assert.deepEqual({ ...audio[2], audio: null }, { audio: null, mimetype: 'audio/ogg; codecs=opus', ptt: true })
  assert.ok(Buffer.isBuffer(sticker[2].sticker) && sticker[2].sticker.equals(Buffer.from(bytes)))
  assert.deepEqual(video[2], { video: { url: 'https://example.com/v.mp4' } })
})

test('send_message param errors name the method and the expected params', async () => {
  const sock = fakeSocket()
  const bad = [
    [undefined, /params must be an object/],
    [{ jid: 5 }, /^send_message expects params \{jid: str, text: str\}.*jid must be a non-empty string/],
    [{ jid: JID }, /none of text, media, reaction/],
    [{ jid: JID, text: 'a', reaction: { key: KEY, text: 'x' } }, /more than one of text, media, reaction/],
    [{ jid: JID, text: 5 }, /text must be a string/],
    [{ jid: JID, text: 'a', mentions: 'x@s.whatsapp.net' }, /mentions must be a list of JIDs/],
    [{ jid: JID, text: 'a', quoted: { key: KEY } }, /quoted must be a message \{key/],
    [{ jid: JID, text: 'a', quoted: { key: { id: 'A' }, message: {} } }, /quoted must be a message/],
    [{ jid: JID, reaction: { key: KEY } }, /reaction must be \{key/],
    [{ jid: JID, reaction: { key: KEY, text: 'x' }, quoted: INCOMING }, /a reaction takes no quoted or mentions/],
    [{ jid: JID, media: 'x' }, /^send_message expects params \{jid, media: \{kind: image\|video.*media must be an object/],
    [{ jid: JID, media: { kind: 'gif', data: new Uint8Array(1) } }, /unknown media kind "gif"/],
    [{ jid: JID, media: { kind: 'image' } }, /exactly one of media.data and media.path/],
    [{ jid: JID, media: { kind: 'image', data: new Uint8Array(1), path: '/x' } }, /exactly one of media.data and media.path/],
    [{ jid: JID, media: { kind: 'image', data: 5 } }, /media.data must be bytes/],
    [{ jid: JID, media: { kind: 'image', data: new Uint8Array(0) } }, /media.data is empty/],
    [{ jid: JID, media: { kind: 'image', path: '' } }, /media.path must be a non-empty string/],
    [{ jid: JID, media: { kind: 'sticker', path: '/x', caption: 'c' } }, /a sticker has no caption/],
    [{ jid: JID, media: { kind: 'image', path: '/x', fileName: 'a.jpg' } }, /media.fileName is for a document/],
    [{ jid: JID, media: { kind: 'video', path: '/x', ptt: true } }, /media.ptt is for an audio/],
    [{ jid: JID, media: { kind: 'audio', path: '/x', ptt: 'yes' } }, /media.ptt must be a boolean/],
    [{ jid: JID, media: { kind: 'image', path: '/x', mimetype: 3 } }, /media.mimetype must be a non-empty string/]
  ]
  for (const [params, pattern] of bad) await rejects(METHODS.send_message(ctxOf(sock), params), pattern)
  assert.deepEqual(sock.calls, []) // nothing reached Baileys
})

test('read_messages: sock.readMessages(keys)', async () => {
  const sock = fakeSocket()
  const keys = [KEY, { remoteJid: GROUP, id: 'DEF', participant: JID, fromMe: false }]
  assert.equal(await METHODS.read_messages(ctxOf(sock), { keys }), null)
  assert.deepEqual(sock.calls, [['readMessages', keys]])
  for (const [params, pattern] of [
    [null, /^read_messages expects params \{keys: \[.*keys must be a list/],
    [{ keys: KEY }, /keys must be a list/],
    [{ keys: [] }, /keys is empty/],
    [{ keys: [KEY, { id: 'X' }] }, /keys\[1\] is not a message key/]
  ]) await rejects(METHODS.read_messages(ctxOf(sock), params), pattern)
  assert.equal(sock.calls.length, 1)
})

test('presence: sock.sendPresenceUpdate(state, jid)', async () => {
  const sock = fakeSocket()
  for (const state of ['composing', 'recording', 'paused', 'available', 'unavailable']) {
    assert.equal(await METHODS.presence(ctxOf(sock), { jid: JID, state }), null)
  }
  await METHODS.presence(ctxOf(sock), { state: 'available' }) // the account's own presence
  assert.deepEqual(sock.calls, [
    ['sendPresenceUpdate', 'composing', JID], ['sendPresenceUpdate', 'recording', JID],
    ['sendPresenceUpdate', 'paused', JID], ['sendPresenceUpdate', 'available', JID],
    ['sendPresenceUpdate', 'unavailable', JID], ['sendPresenceUpdate', 'available']
  ])
  for (const [params, pattern] of [
    [null, /^presence expects params \{jid: str, state: available\|unavailable\|composing\|recording\|paused\}/],
    [{ jid: JID, state: 'typing' }, /unknown state "typing"/],
    [{ state: 'composing' }, /state composing needs a chat jid/],
    [{ jid: 5, state: 'available' }, /jid must be a non-empty string/]
  ]) await rejects(METHODS.presence(ctxOf(sock), params), pattern)
  assert.equal(sock.calls.length, 6)
})

test('group_metadata: sock.groupMetadata(jid), or the bridge\'s groupCache when it has the group', async () => {
  const sock = fakeSocket()
  const metadata = await METHODS.group_metadata(ctxOf(sock), { jid: GROUP })
  assert.equal(metadata.subject, 'Team')
  assert.deepEqual(sock.calls, [['groupMetadata', GROUP]])
  const cached = { id: GROUP, subject: 'Cached' }
  const groupCache = new Map([[GROUP, cached]])
  assert.equal(await METHODS.group_metadata(ctxOf(sock, { groupCache }), { jid: GROUP }), cached)
  const asyncCache = { get: async () => cached }
  assert.equal(await METHODS.group_metadata(ctxOf(sock, { groupCache: asyncCache }), { jid: GROUP }), cached)
  const other = '120363000000000002@g.us' // not cached: asked of WhatsApp
  assert.equal((await METHODS.group_metadata(ctxOf(sock, { groupCache }), { jid: other })).id, other)
  assert.deepEqual(sock.calls, [['groupMetadata', GROUP], ['groupMetadata', other]])
  await rejects(METHODS.group_metadata(ctxOf(sock), { jid: JID }), /^group_metadata expects params \{jid: str\} \(a group, \.\.\.@g\.us\): not a group jid/)
  await rejects(METHODS.group_metadata(ctxOf(sock), null), /^group_metadata expects params/)
})

/** Baileys' downloadMediaMessage, recording its calls; it streams `chunks`. */
function fakeBaileys (chunks) {
  const calls = []
  return {
    calls,
    async downloadMediaMessage (message, type, options, ctx) {
      calls.push({ message, type, options, ctx })
      return Readable.from(chunks.map((c) => Buffer.from(c)))
    }
  }
}

const IMAGE = { key: KEY, message: { imageMessage: { url: 'https://mmg.whatsapp.net/x', mediaKey: new Uint8Array(32), fileLength: 6, mimetype: 'image/jpeg' } } }

test('download_media: the bytes through Baileys\' downloadMediaMessage, wrapped messages too', async () => {
  const sock = fakeSocket()
  const baileys = fakeBaileys([[1, 2, 3], [4, 5, 6]])
  const bridge = { baileys, logger: { info () {} } }
  const bytes = await METHODS.download_media(ctxOf(sock, bridge), { message: IMAGE })
  assert.ok(bytes instanceof Uint8Array && !Buffer.isBuffer(bytes))
  assert.deepEqual([...bytes], [1, 2, 3, 4, 5, 6])
  const [call] = baileys.calls
  assert.equal(call.message, IMAGE)
  assert.equal(call.type, 'stream')
  assert.equal(call.ctx.reuploadRequest, sock.updateMediaMessage) // expired media is asked again
  const viewOnce = { key: KEY, message: { viewOnceMessageV2: { message: { videoMessage: { fileLength: Long.fromNumber(6) } } } } }
  assert.equal((await METHODS.download_media(ctxOf(sock, bridge), { message: viewOnce, maxBytes: 6 })).length, 6)
})

test('download_media refuses a media larger than maxBytes before downloading, and cuts off a longer stream', async () => {
  const sock = fakeSocket()
  const baileys = fakeBaileys([new Uint8Array(4), new Uint8Array(4)])
  const bridge = { baileys, logger: { info () {} } }
  const big = { key: KEY, message: { documentMessage: { fileLength: DEFAULT_MAX_BYTES + 1 } } }
  await rejects(METHODS.download_media(ctxOf(sock, bridge), { message: big }), /^download_media: the media is 16777217 bytes, more than maxBytes 16777216$/)
  await rejects(METHODS.download_media(ctxOf(sock, bridge), { message: IMAGE, maxBytes: 5 }), /the media is 6 bytes, more than maxBytes 5/)
  assert.deepEqual(baileys.calls, []) // refused before any download
  // fileLength says 6, the stream brings 8: cut off at maxBytes
  await rejects(METHODS.download_media(ctxOf(sock, bridge), { message: IMAGE, maxBytes: 6 }), /^download_media: the media is more than maxBytes 6 bytes$/)
  assert.equal(baileys.calls.length, 1)
})

test('download_media param errors, and a clear error without Baileys\' downloadMediaMessage', async () => {
  const sock = fakeSocket()
  const bridge = { baileys: fakeBaileys([[1]]) }
  for (const [params, pattern] of [
    [null, /^download_media expects params \{message: \{key, message\}, maxBytes\?: int\}: params must be an object/],
    [{ message: KEY }, /message must be \{key, message\}/],
    [{ message: IMAGE, maxBytes: 0 }, /maxBytes must be a positive integer/],
    [{ message: IMAGE, maxBytes: 1.5 }, /maxBytes must be a positive integer/],
    [{ message: INCOMING }, /the message holds no image, video, audio, document or sticker/]
  ]) await rejects(METHODS.download_media(ctxOf(sock, bridge), params), pattern)
  await rejects(METHODS.download_media(ctxOf(sock, {}), { message: IMAGE }), /^download_media: the bridge has no Baileys downloadMediaMessage/)
  assert.deepEqual(bridge.baileys.calls, [])
})
