'use strict'
// An account's auth state in a folder, as Baileys' useMultiFileAuthState lays it out (the
// same file names, so an existing folder keeps working), but safe to crash in:
//   - every file is written to a temporary file, fsynced, then renamed over the old one:
//     a SIGTERM or a power cut mid-write leaves the old file or the new one, never half of
//     one (a half-written creds.json makes Baileys start a new pairing, silently);
//   - writes to one file are ordered, and flush() awaits every pending write (shutdown);
//   - the folder is 0700 and the files 0600: they hold the account's keys;
//   - a creds.json that exists but cannot be read is an error, never a fresh login;
//   - a lock file keeps a second process off the folder (two processes on one account
//     replace each other's connection every second or two, writing the same keys).

const fs = require('fs')
const fsp = require('fs/promises')
const path = require('path')

const fileName = (name) => `${name.replace(/\//g, '__').replace(/:/g, '-')}.json`

/** The folder is in use by a live process. */
class AuthLockedError extends Error {
  constructor (dir, pid) {
    super(`auth folder ${dir} is in use by process ${pid} (two processes on one account replace each other)`)
    this.name = 'AuthLockedError'
    this.pid = pid
  }
}

function alive (pid) {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return err.code === 'EPERM'
  }
}

/** Take the folder's lock file (released by `release()`); a stale lock is taken over. */
function lock (dir) {
  const file = path.join(dir, '.lock')
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      fs.writeFileSync(file, String(process.pid), { flag: 'wx', mode: 0o600 })
      return () => { try { fs.unlinkSync(file) } catch {} }
    } catch (err) {
      if (err.code !== 'EEXIST') throw err
      const pid = Number(fs.readFileSync(file, 'utf8'))
      if (pid && pid !== process.pid && alive(pid)) throw new AuthLockedError(dir, pid)
      fs.unlinkSync(file) // its process is gone
    }
  }
  throw new AuthLockedError(dir, 'unknown')
}

async function writeAtomic (file, text) {
  const tmp = `${file}.${process.pid}.tmp`
  const handle = await fsp.open(tmp, 'w', 0o600)
  try {
    await handle.writeFile(text)
    await handle.sync()
  } finally {
    await handle.close()
  }
  await fsp.rename(tmp, file)
}

/**
 * Baileys' SignalKeyStore over named values (`TYPE-ID`, as useMultiFileAuthState names its
 * files): `readMany(names)` resolves to their values (null: none), `writeMany([[name,
 * value]])` writes them (null deletes).
 */
function keyStore (readMany, writeMany, proto) {
  return {
    get: async (type, ids) => {
      const values = await readMany(ids.map((id) => `${type}-${id}`))
      const data = {}
      ids.forEach((id, i) => {
        let value = values[i]
        if (type === 'app-state-sync-key' && value) value = proto.Message.AppStateSyncKeyData.fromObject(value)
        data[id] = value
      })
      return data
    },
    set: async (data) => {
      const entries = []
      for (const type in data) {
        for (const id in data[type]) entries.push([`${type}-${id}`, data[type][id] || null])
      }
      if (entries.length) await writeMany(entries)
    }
  }
}

/**
 * Baileys' AuthenticationState in `dir`: `{state, saveCreds, flush, close}`.
 * @param {string} dir the account's folder (created 0700)
 * @param {object} baileys the loaded baileys module (BufferJSON, initAuthCreds, proto)
 */
async function useAuthFolder (dir, { BufferJSON, initAuthCreds, proto }) {
  await fsp.mkdir(dir, { recursive: true, mode: 0o700 })
  await fsp.chmod(dir, 0o700) // a folder made by an older version (0755)
  const release = lock(dir)
  const chains = new Map() // file -> its last pending write: writes to one file stay ordered

  function write (name, value) {
    const file = path.join(dir, fileName(name))
    const run = () => value === null
      ? fsp.rm(file, { force: true })
      : writeAtomic(file, JSON.stringify(value, BufferJSON.replacer))
    const next = (chains.get(file) || Promise.resolve()).then(run, run)
    chains.set(file, next)
    next.finally(() => { if (chains.get(file) === next) chains.delete(file) }).catch(() => {})
    return next
  }

  async function read (name) {
    const file = path.join(dir, fileName(name))
    let text
    try {
      text = await fsp.readFile(file, 'utf8')
    } catch (err) {
      if (err.code === 'ENOENT') return null
      throw err
    }
    try {
      return JSON.parse(text, BufferJSON.reviver)
    } catch (err) {
      throw new Error(`${file} is corrupt (${err.message}): restore it or remove the folder and link the account again`)
    }
  }

  let creds
  try {
    creds = (await read('creds')) || initAuthCreds()
  } catch (err) {
    release()
    throw err
  }
  for (const entry of await fsp.readdir(dir)) { // files of an older version, or a crash's leftovers
    const file = path.join(dir, entry)
    if (entry.endsWith('.tmp')) await fsp.rm(file, { force: true })
    else await fsp.chmod(file, 0o600)
  }
  return {
    state: {
      creds,
      keys: keyStore(
        (names) => Promise.all(names.map(read)),
        (entries) => Promise.all(entries.map(([name, value]) => write(name, value))),
        proto
      )
    },
    saveCreds: () => write('creds', creds),
    /** Every write started so far, done. */
    flush: () => Promise.allSettled([...chains.values()]).then(() => {}),
    /** Flush, then let another process have the folder. */
    close: async function () {
      await this.flush()
      release()
    }
  }
}

module.exports = { AuthLockedError, keyStore, useAuthFolder }
