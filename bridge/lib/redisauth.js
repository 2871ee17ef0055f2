'use strict'
// An account's Baileys AuthenticationState in Redis, so any bridge of a fleet can run any
// account (lib/fleet.js); the auth folder (auth.js) stays the embedded default.
//
// One hash per account (`:auth`): field `creds`, and `TYPE-ID` per signal key, each the
// JSON Baileys' BufferJSON makes (the values useMultiFileAuthState writes to its files).
// Every write is one script that checks the account's fencing token first: a bridge that
// lost the account's lease cannot overwrite the keys the new holder is using, and each
// keys.set() lands whole or not at all.

const { keyStore } = require('./auth')
const { accountKey } = require('./redis')
const { FencedError } = require('./redislog')

// KEYS: fence, auth. ARGV: token, then field, value pairs ('' deletes the field).
const WRITE = `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
for i = 2, #ARGV, 2 do
  if ARGV[i + 1] == '' then redis.call('HDEL', KEYS[2], ARGV[i])
  else redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
end
return 1
`

/**
 * Baileys' AuthenticationState for `account` in Redis: `{state, saveCreds, flush, close}`,
 * as auth.js's useAuthFolder returns, for the lease holder with fencing token `token`.
 * @param {object} redis an ioredis client
 * @param {{prefix: string, account: string, token: number}} where the account and its token
 * @param {object} baileys the loaded baileys module (BufferJSON, initAuthCreds, proto)
 */
async function useRedisAuth (redis, { prefix, account, token }, { BufferJSON, initAuthCreds, proto }) {
  const keys = [accountKey(prefix, account, 'fence'), accountKey(prefix, account, 'auth')]
  let chain = Promise.resolve() // writes land in the order they were made

  const parse = (field, text) => {
    try {
      return JSON.parse(text, BufferJSON.reviver)
    } catch (err) {
      throw new Error(`account ${account}: auth field ${field} in Redis is corrupt (${err.message}): link the account again`)
    }
  }

  function write (pairs) {
    const run = async () => {
      const result = Number(await redis.eval(WRITE, 2, ...keys, String(token), ...pairs))
      if (result === -1) throw new FencedError(account, token)
    }
    const next = chain.then(run, run)
    chain = next.catch(() => {})
    return next
  }

  const stored = await redis.hget(keys[1], 'creds')
  const creds = stored ? parse('creds', stored) : initAuthCreds()
  return {
    state: {
      creds,
      keys: keyStore(
        async (names) => names.length
          ? (await redis.hmget(keys[1], ...names)).map((text, i) => text === null ? null : parse(names[i], text))
          : [],
        (entries) => write(entries.flatMap(([name, value]) => [name, value ? JSON.stringify(value, BufferJSON.replacer) : ''])),
        proto
      )
    },
    saveCreds: () => write(['creds', JSON.stringify(creds, BufferJSON.replacer)]),
    /** Every write started so far, done. */
    flush: () => chain,
    close () { return chain }
  }
}

module.exports = { useRedisAuth }
