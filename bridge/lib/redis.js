'use strict'
// Redis for bridges that share accounts (docs/FLEET.md): one client per use, and the key
// layout. Every key of one account carries the account as a hash tag
// (`rsocket:bridge:{alice}:lease`, `:fence`, `:log`, `:auth`...), so on Redis Cluster an
// account's keys share one slot and the scripts that touch several of them are legal.
// ioredis is loaded only when a Redis URL is configured.

const DEFAULT_PREFIX = 'rsocket:bridge'

/** The key of `account`'s `kind` (lease, fence, log, logmeta, auth, upstream...). */
function accountKey (prefix, account, kind) {
  return `${prefix}:{${account}}:${kind}`
}

/**
 * An ioredis client for `url` (redis://host:port/db): every command bounded by `timeout`
 * seconds, so a Redis that stopped answering fails calls instead of hanging them; it
 * reconnects by itself (at most every second).
 */
function createClient (url, { timeout = 5, name = 'rsocket-bridge' } = {}) {
  if (typeof url !== 'string' || !/^rediss?:\/\//.test(url)) {
    throw new Error(`a Redis URL is redis://host:port[/db] (or rediss://), got ${JSON.stringify(url)}`)
  }
  const { Redis } = require('ioredis')
  const client = new Redis(url, {
    connectionName: name,
    commandTimeout: Math.round(timeout * 1000),
    maxRetriesPerRequest: 1,
    retryStrategy: (times) => Math.min(50 * times, 1000),
    lazyConnect: false
  })
  client.on('error', () => {}) // failures reach the caller of each command; no crash on 'error'
  return client
}

/** Close a client without waiting on a Redis that is gone. */
async function closeClient (client) {
  try {
    await Promise.race([client.quit(), new Promise((resolve) => setTimeout(resolve, 1000).unref())])
  } catch {}
  client.disconnect()
}

module.exports = { DEFAULT_PREFIX, accountKey, closeClient, createClient }
