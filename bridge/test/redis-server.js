'use strict'
// A real redis-server on a free 127.0.0.1 port for a test file, persistence off; the tests
// that need one skip without the binary (and fail under CI, which installs it).
const { spawn, spawnSync } = require('node:child_process')
const fs = require('node:fs')
const net = require('node:net')
const os = require('node:os')
const path = require('node:path')

const { closeClient, createClient } = require('../lib/redis')

const available = spawnSync('redis-server', ['--version']).status === 0
const skip = available ? false : 'redis-server is not installed (apt-get install redis-server)'
if (!available && /^(1|true|yes)$/i.test(process.env.CI || '')) throw new Error(`CI needs a real Redis: ${skip}`)

function freePort () {
  return new Promise((resolve, reject) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    }).on('error', reject)
  })
}

async function waitReady (port, deadline) {
  for (;;) {
    try {
      await new Promise((resolve, reject) => {
        const socket = net.connect(port, '127.0.0.1', () => { socket.end(); resolve() }).on('error', reject)
      })
      return
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`redis-server did not listen on ${port}: ${err.message}`)
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
  }
}

/**
 * Start a redis-server; `{url, port, process, stop(), start(), client()}`. `persist`: its
 * data survives stop() and start() (an append-only file, fsynced on every write).
 */
async function startRedis (t, { persist = false } = {}) {
  const port = await freePort()
  const dir = persist ? fs.mkdtempSync(path.join(os.tmpdir(), 'redis-')) : null
  const args = dir ? ['--appendonly', 'yes', '--appendfsync', 'always', '--dir', dir] : ['--appendonly', 'no']
  const server = { port, url: `redis://127.0.0.1:${port}/0`, process: null, clients: [] }
  server.start = async () => {
    server.process = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', ...args], { stdio: 'ignore' })
    await waitReady(port, Date.now() + 10000)
  }
  server.stop = async () => {
    const proc = server.process
    if (!proc || proc.exitCode !== null) return
    const exited = new Promise((resolve) => proc.once('exit', resolve))
    proc.kill('SIGKILL')
    await exited
  }
  server.client = (options) => {
    const client = createClient(server.url, options)
    server.clients.push(client)
    return client
  }
  await server.start()
  t.after(async () => {
    await Promise.all(server.clients.map(closeClient))
    await server.stop()
    if (dir) fs.rmSync(dir, { recursive: true, force: true })
  })
  return server
}

module.exports = { skip, startRedis }
