'use strict'
// A stand-in for baileys' makeWASocket that plays real `connection.update` sequences.
const { EventEmitter } = require('node:events')

/** baileys with makeWASocket playing script[i] on the i-th socket; no version fetch over the network. */
async function standIn (script, extra = {}) {
  const real = await import('baileys')
  const made = []
  let fetches = 0
  const mod = {
    ...real,
    fetchLatestBaileysVersion: async () => { fetches++; return { version: [2, 3000, fetches], isLatest: true } },
    makeWASocket (config) {
      const emitter = new EventEmitter()
      const sock = {
        config,
        user: { id: '5511900000001:1@s.whatsapp.net' },
        ev: {
          process (fn) { emitter.on('e', fn); return () => emitter.off('e', fn) },
          on (name, fn) { emitter.on('e', (map) => { if (name in map) fn(map[name]) }) },
          emit (name, data) { emitter.emit('e', { [name]: data }) }
        },
        ended: false,
        end () { sock.ended = true },
        requestPairingCode: async (number) => { sock.paired = (sock.paired || []).concat(number); return `CODE-${number}` }
      }
      const steps = script[made.length] || []
      made.push(sock)
      setImmediate(() => { for (const step of steps) typeof step === 'function' ? step(sock) : sock.ev.emit('connection.update', step) })
      return sock
    },
    ...extra
  }
  return { mod, made, fetches: () => fetches }
}

module.exports = { standIn }
