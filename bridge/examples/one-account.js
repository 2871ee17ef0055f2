'use strict'
// One WhatsApp account served to Python bots over rsocket.v1 on 127.0.0.1:8765.
//
//   npm install                              (in bridge/: baileys comes with it)
//   RSOCKET_TOKEN=secret node examples/one-account.js
//   python examples/reply_bot.py --url ws://127.0.0.1:8765 --tenants alice --token secret
//
// The first run draws a QR code on the terminal (and writes auth/alice/qr.png) to scan in
// WhatsApp > Linked devices; the login is kept in auth/alice. Several accounts: a config
// file and `rsocket-bridge bridge.json`.

const { Account, guardProcess, loadBaileys } = require('rsocket-bridge/account')
const { createBridge } = require('rsocket-bridge')

const log = (level, fields, msg) => console.error(JSON.stringify({ level, msg, ...fields }))

async function main () {
  const baileys = await loadBaileys() // yours if installed beside this script, else the bridge's
  guardProcess(log) // a rejection inside Baileys restarts that account, never the process
  const bridge = await createBridge({
    host: '127.0.0.1',
    port: Number(process.env.RSOCKET_PORT ?? 8765),
    tenants: { alice: process.env.RSOCKET_TOKEN }, // the token the bot sends in its hello
    replayWindow: 100000, // events kept for bots that reconnect (resume)
    baileys
  })
  const alice = new Account({ name: 'alice', baileys, auth: 'auth/alice', qrFile: 'auth/alice/qr.png', bridge, log })
  await alice.start() // reconnects by itself; ends on logout, ban or repeated replacement
  console.log('serving alice on', bridge.url)
  process.on('SIGINT', async () => {
    await alice.stop() // pending auth writes finish first
    await bridge.close()
    process.exit(0)
  })
}

main()
