/* spool_cli.h - `mqtt2amqp spool ...`: what is inside a spool, for a human.
 *
 *   spool stat -c FILE      segments, records, bytes, confirmed position,
 *                           age of the oldest and newest unconfirmed record,
 *                           torn tail, damaged bytes, quarantine files
 *   spool dump -c FILE [--from SEQ] [--limit N]
 *                           one JSON object a line per record
 *   spool requeue-quarantine -c FILE
 *                           the records of the quarantine files whose CRC
 *                           passes, appended to the spool again
 *
 * stat and dump only read: no lock, no write, safe next to a running bridge
 * (a segment deleted under them is skipped, a record being appended is
 * reported as a tail in flight). requeue-quarantine opens the spool as the
 * bridge does (its exclusive lock), so it refuses to run beside one.
 * Runs on the main thread of a process of its own. */
#ifndef MQTT2AMQP_SPOOL_CLI_H
#define MQTT2AMQP_SPOOL_CLI_H

/* argv[0] is "spool"; returns the process's exit code (0, 1 runtime
 * failure, 2 bad usage or configuration). default_config: the -c default. */
int m2a_spool_cli_main(int argc, char **argv, const char *default_config);

#endif
