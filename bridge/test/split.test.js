'use strict'
const test = require('node:test')
const assert = require('node:assert/strict')
const { encoder } = require('../lib/protocol')
const { splitEvent } = require('../lib/split')

const size = (value) => encoder.encode(value).byteLength
const message = (n, text = 60) => ({
  key: { remoteJid: `55119${String(n % 97).padStart(8, '0')}@s.whatsapp.net`, fromMe: false, id: `3EB0${n}` },
  message: { extendedTextMessage: { text: 'lorem ipsum '.repeat(text / 12 + 1).slice(0, text) } },
  messageTimestamp: 1733000000 + n
})

test('a small event is one part, untouched', () => {
  const data = { messages: [message(1)], type: 'notify' }
  assert.deepEqual(splitEvent('messages.upsert', data, 1 << 20), [['messages.upsert', data]])
})

test('a history set is cut into sets with its metadata on each, nothing lost or reordered', () => {
  const data = {
    chats: Array.from({ length: 300 }, (_, i) => ({ id: `${i}@s.whatsapp.net`, unreadCount: i % 5 })),
    contacts: Array.from({ length: 300 }, (_, i) => ({ id: `${i}@s.whatsapp.net`, notify: `C${i}` })),
    messages: Array.from({ length: 3000 }, (_, i) => message(i, 100 + i % 300)),
    isLatest: true,
    syncType: 2,
    progress: 40
  }
  const parts = splitEvent('messaging-history.set', data, 64 * 1024)
  assert.ok(parts.length > 8)
  for (const [name, part] of parts) {
    assert.equal(name, 'messaging-history.set')
    assert.ok(size(part) <= 64 * 1024, `part of ${size(part)} bytes`)
    assert.deepEqual(Object.keys(part), Object.keys(data))
    assert.deepEqual([part.isLatest, part.syncType, part.progress], [true, 2, 40])
  }
  for (const field of ['chats', 'contacts', 'messages']) {
    assert.deepEqual(parts.flatMap(([, part]) => part[field]), data[field])
  }
})

test('an upsert keeps its type on every part; a list is cut into lists', () => {
  const upsert = { messages: Array.from({ length: 200 }, (_, i) => message(i, 2000)), type: 'append' }
  const parts = splitEvent('messages.upsert', upsert, 50000)
  assert.ok(parts.length > 4 && parts.every(([, p]) => p.type === 'append' && p.messages.length))
  assert.deepEqual(parts.flatMap(([, p]) => p.messages), upsert.messages)
  const updates = Array.from({ length: 3000 }, (_, i) => ({ key: message(i).key, update: { status: 3 } }))
  const lists = splitEvent('messages.update', updates, 20000)
  assert.ok(lists.length > 3)
  assert.deepEqual(lists.flatMap(([, list]) => list), updates)
})

test('what cannot be split stays whole', () => {
  const one = { messages: [message(1, 300000)], type: 'notify' }
  assert.deepEqual(splitEvent('messages.upsert', one, 1000), [['messages.upsert', one]])
  const group = { id: 'g@g.us', subject: 'x'.repeat(300000) }
  assert.deepEqual(splitEvent('groups.update', group, 1000), [['groups.update', group]])
})
