'use strict'
// broker.js - aedes as a private MQTT broker for the interop tests
// (tests/integration/test_brokers.c through scripts/lib.sh m2a_aedes_exec).
//
// Usage: node broker.js PORT DBDIR [memory|level]
//
// Listens on 127.0.0.1:PORT only. Sessions (subscriptions, and the QoS 1
// messages queued for a client that is away) live in memory (aedes's own
// persistence, the default: lost when this process ends), or with `level`
// in the LevelDB DBDIR through aedes-persistence-level, which keeps them
// across a restart but loses QoS 1 messages to a connected persistent
// subscriber under a burst (README, "Brokers"). aedes speaks MQTT 3.1.1 (it
// refuses MQTT 5 with CONNACK 0x84).
// Prints "aedes VERSION listening on 127.0.0.1:PORT" once it accepts
// connections; SIGTERM or SIGINT closes the listener, the broker and the
// database, then exits 0.
const fs = require('node:fs')
const net = require('node:net')
const path = require('node:path')
const { Level } = require('level')
const { Aedes } = require('aedes')
const persistenceLevel = require('aedes-persistence-level')

function version (pkg) {
  const file = path.join(__dirname, 'node_modules', pkg, 'package.json')
  return JSON.parse(fs.readFileSync(file, 'utf8')).version
}

async function main () {
  const [port, dbdir, kind = 'memory'] = process.argv.slice(2)
  if (!port || !dbdir || !['memory', 'level'].includes(kind)) {
    console.error('usage: node broker.js PORT DBDIR [memory|level]')
    process.exit(2)
  }
  const db = kind === 'level' ? new Level(dbdir) : null
  const broker = await Aedes.createBroker(db ? { persistence: persistenceLevel(db) } : {})
  const server = net.createServer(broker.handle)
  server.on('error', (e) => {
    console.error(`aedes: ${e.message}`)
    process.exit(1)
  })
  server.listen(Number(port), '127.0.0.1', () => {
    const persistence = db ? `aedes-persistence-level ${version('aedes-persistence-level')}` : 'in memory'
    console.log(`aedes ${version('aedes')} (sessions ${persistence}) listening on 127.0.0.1:${port}`)
  })
  let stopping = false
  const stop = () => {
    if (stopping) return
    stopping = true
    server.close()
    broker.close(() => {
      if (!db) process.exit(0)
      db.close().then(() => process.exit(0), () => process.exit(1))
    })
  }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
