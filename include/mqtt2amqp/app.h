/* app.h - the running bridge: wires the config's generation, the spool,
 * the MQTT and AMQP threads together and runs the main thread's loop
 * (signals, stats, reloads).
 *
 * The main thread owns nothing on the data path: it starts the two service
 * threads, polls a signalfd (no asynchronous handlers) and the answers of a
 * reload in flight, logs the stats line, and on SIGTERM/SIGINT stops MQTT
 * first, then gives AMQP up to shutdown_timeout to drain confirms. */
#ifndef MQTT2AMQP_APP_H
#define MQTT2AMQP_APP_H

#include "mqtt2amqp/config.h"

/* Exit codes of the mqtt2amqp process. */
enum m2a_exit {
    M2A_EXIT_OK = 0,      /* clean shutdown */
    M2A_EXIT_RUNTIME = 1, /* could not start or keep running (spool, threads) */
    M2A_EXIT_CONFIG = 2   /* bad command line or configuration */
};

/* Runs until SIGTERM or SIGINT. Takes cfg (it becomes the start
 * generation's, freed when the run ends). Returns an enum m2a_exit. */
int m2a_app_run(struct m2a_config *cfg);

#endif
