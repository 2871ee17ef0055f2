'use strict'
// One WhatsApp account served to Python bots over rsocket.v1 on 127.0.0.1:8765.
//
//   npm install baileys                      (beside this package)
//   RSOCKET_TOKEN=secret node examples/one-account.js
//   python examples/reply_bot.py --url ws://127.0.0.1:8765 --tenants alice --token secret
//
// The first run prints a QR code string to scan in WhatsApp (Linked devices); the login
// is kept in auth/alice. Several accounts: a config file and `rsocket-bridge bridge.json`.

const { default: makeWASocket, useMultiFileAuthState, DisconnectReason } = require('baileys')
const { createBridge } = require('rsocket-bridge')

async function main () {
  const bridge = await createBridge({
    host: '127.0.0.1',
    port: Number(process.env.RSOCKET_PORT ?? 8765),
    tenants: { alice: process.env.RSOCKET_TOKEN }, // the token the bot sends in its hello
    replayWindow: 100000 // events kept for bots that reconnect (resume)
  })
  const { state, saveCreds } = await useMultiFileAuthState('auth/alice')

  function connect () {
    const sock = makeWASocket({ auth: state })
    sock.ev.on('creds.update', saveCreds) // the keys stay here: never sent to bots
    sock.ev.on('connection.update', ({ connection, lastDisconnect, qr }) => {
      if (qr) console.log('scan in WhatsApp > Linked devices:', qr)
      const code = lastDisconnect?.error?.output?.statusCode
      if (connection === 'close' && code !== DisconnectReason.loggedOut) setTimeout(connect, 1000)
    })
    bridge.attach('alice', sock) // a reconnect's new socket continues the same log
  }

  connect()
  console.log('serving alice on', bridge.url)
  process.on('SIGINT', () => bridge.close().then(() => process.exit(0)))
}

main()
