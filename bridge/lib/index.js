'use strict'
// rsocket-bridge: serves Baileys sockets' events over rsocket.v1 (docs/PROTOCOL.md).
//
//   const { createBridge } = require('rsocket-bridge')
//   const bridge = await createBridge({ port: 8765, tenants: { alice: 'secret' } })
//   bridge.attach('alice', makeWASocket({ auth: state }))

const { Bridge, METHODS, createBridge } = require('./bridge')
const { convert } = require('./convert')
const { EventLog } = require('./log')
const { FileEventLog } = require('./filelog')
const protocol = require('./protocol')

module.exports = { Bridge, EventLog, FileEventLog, METHODS, convert, createBridge, protocol }
