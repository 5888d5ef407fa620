/* app.h - the running bridge: wires config, routes, spool, the MQTT and
 * AMQP threads together and runs the main thread's loop (signals, stats).
 *
 * The main thread owns nothing on the data path: it starts the two service
 * threads, waits for signals with sigtimedwait (no asynchronous handlers),
 * logs the stats line, and on SIGTERM/SIGINT stops MQTT first, then gives
 * AMQP up to shutdown_timeout to drain confirms. */
#ifndef MQTT2AMQP_APP_H
#define MQTT2AMQP_APP_H

#include "mqtt2amqp/config.h"

/* Exit codes of the mqtt2amqp process. */
enum m2a_exit {
    M2A_EXIT_OK = 0,      /* clean shutdown */
    M2A_EXIT_RUNTIME = 1, /* could not start or keep running (spool, threads) */
    M2A_EXIT_CONFIG = 2   /* bad command line or configuration */
};

/* Runs until SIGTERM or SIGINT. cfg is borrowed for the whole run.
 * Returns an enum m2a_exit. */
int m2a_app_run(const struct m2a_config *cfg);

#endif
